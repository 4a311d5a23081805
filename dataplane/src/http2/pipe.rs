//! In-memory connections between the HTTP/2 layer and the proxy core.
//!
//! Each HTTP/2 stream the gateway serves, and each stream it opens to an
//! h2c backend, reaches the core as a [`Pipe`]: HTTP/1.1 bytes one way and
//! the other, with the same end-of-stream and reset signals a socket gives.
//! [`Mux`] is the core's [`Transport`]: sockets go to the driver's
//! transport, pipes stay here.

use crate::config::BackendProtocol;
use crate::proxy::{ConnectionGone, ReadOutcome, Transport};
use slab::Slab;
use std::net::SocketAddr;

/// A connection handle as the core sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conn<C> {
    /// A socket of the driver's transport.
    Net(C),
    /// A pipe to the HTTP/2 layer.
    Pipe(usize),
}

/// What the core did with its end of a pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreEnd {
    Open,
    /// Closed after everything written (a finished response or request).
    Closed,
    /// Dropped: the stream must be reset.
    Aborted,
}

/// Which side of the HTTP/2 layer a pipe belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeKind {
    /// A client's stream.
    Inbound,
    /// Requests from the core to an h2c backend endpoint.
    Outbound { endpoint: SocketAddr },
}

/// One in-memory connection.
#[derive(Debug)]
pub struct Pipe {
    pub kind: PipeKind,
    /// HTTP/1.1 bytes for the core to read.
    pub to_core: Vec<u8>,
    /// Nothing more will be added to `to_core` (the core reads `Closed`).
    pub fin: bool,
    /// The HTTP/2 side failed (stream reset, connection lost): the core
    /// reads `Failed` and its writes fail.
    pub reset: bool,
    /// HTTP/1.1 bytes the core wrote.
    pub from_core: Vec<u8>,
    pub core: CoreEnd,
    /// The HTTP/2 side is done with the pipe; it is freed once the core is
    /// too.
    pub released: bool,
}

/// Every pipe of a worker, and what changed on them.
#[derive(Debug)]
pub struct Pipes {
    pipes: Slab<Pipe>,
    /// Bytes buffered per direction before the writer is held back.
    pub capacity: usize,
    /// Pipes the core read from, wrote to, opened or closed.
    pub touched: Vec<usize>,
    /// Pipes with news for the core (bytes, end, reset).
    pub ready: Vec<usize>,
    /// New inbound streams for the core to accept: pipe, client address,
    /// listener port.
    pub accepted: Vec<(usize, SocketAddr, u16)>,
}

impl Pipes {
    pub fn new(capacity: usize) -> Self {
        Self {
            pipes: Slab::new(),
            capacity,
            touched: Vec::new(),
            ready: Vec::new(),
            accepted: Vec::new(),
        }
    }

    pub fn open(&mut self, kind: PipeKind) -> usize {
        self.pipes.insert(Pipe {
            kind,
            to_core: Vec::new(),
            fin: false,
            reset: false,
            from_core: Vec::new(),
            core: CoreEnd::Open,
            released: false,
        })
    }

    pub fn get(&self, id: usize) -> Option<&Pipe> {
        self.pipes.get(id)
    }

    pub fn get_mut(&mut self, id: usize) -> Option<&mut Pipe> {
        self.pipes.get_mut(id)
    }

    /// The HTTP/2 side fails the pipe.
    pub fn reset(&mut self, id: usize) {
        if let Some(pipe) = self.pipes.get_mut(id) {
            pipe.reset = true;
            self.ready.push(id);
        }
    }

    /// The HTTP/2 side is done with `id`; free it if the core is too.
    pub fn release(&mut self, id: usize) {
        if let Some(pipe) = self.pipes.get_mut(id) {
            pipe.released = true;
            if pipe.core != CoreEnd::Open {
                self.pipes.remove(id);
            } else {
                // The core still holds it: it must see the end.
                pipe.reset |= !pipe.fin;
                self.ready.push(id);
            }
        }
    }

    fn core_end(&mut self, id: usize, end: CoreEnd) {
        if let Some(pipe) = self.pipes.get_mut(id) {
            pipe.core = end;
            if pipe.released {
                self.pipes.remove(id);
            } else {
                self.touched.push(id);
            }
        }
    }
}

/// The core's transport: the driver's sockets and this worker's pipes.
pub struct Mux<'a, T> {
    pub net: &'a mut T,
    pub pipes: &'a mut Pipes,
}

impl<T: Transport> Transport for Mux<'_, T> {
    type Conn = Conn<T::Conn>;

    fn read(&mut self, conn: Self::Conn, buf: &mut [u8]) -> ReadOutcome {
        let id = match conn {
            Conn::Net(c) => return self.net.read(c, buf),
            Conn::Pipe(id) => id,
        };
        let Some(pipe) = self.pipes.pipes.get_mut(id) else {
            return ReadOutcome::Failed;
        };
        if pipe.reset {
            return ReadOutcome::Failed;
        }
        if pipe.to_core.is_empty() {
            return if pipe.fin {
                ReadOutcome::Closed
            } else {
                ReadOutcome::WouldBlock
            };
        }
        let n = buf.len().min(pipe.to_core.len());
        buf[..n].copy_from_slice(&pipe.to_core[..n]);
        pipe.to_core.drain(..n);
        // Room freed: the HTTP/2 side may move more.
        self.pipes.touched.push(id);
        ReadOutcome::Data(n)
    }

    fn write(&mut self, conn: Self::Conn, data: &[u8]) -> Result<usize, ConnectionGone> {
        let id = match conn {
            Conn::Net(c) => return self.net.write(c, data),
            Conn::Pipe(id) => id,
        };
        let capacity = self.pipes.capacity;
        let pipe = self.pipes.pipes.get_mut(id).ok_or(ConnectionGone)?;
        if pipe.reset || pipe.released {
            return Err(ConnectionGone);
        }
        let n = data
            .len()
            .min(capacity.saturating_sub(pipe.from_core.len()));
        if n > 0 {
            pipe.from_core.extend_from_slice(&data[..n]);
            self.pipes.touched.push(id);
        }
        Ok(n)
    }

    fn connect(&mut self, to: SocketAddr, protocol: BackendProtocol) -> Option<Self::Conn> {
        match protocol {
            BackendProtocol::Http1 => self.net.connect(to, protocol).map(Conn::Net),
            BackendProtocol::H2c => {
                let id = self.pipes.open(PipeKind::Outbound { endpoint: to });
                Some(Conn::Pipe(id))
            }
        }
    }

    fn close(&mut self, conn: Self::Conn) {
        match conn {
            Conn::Net(c) => self.net.close(c),
            Conn::Pipe(id) => self.pipes.core_end(id, CoreEnd::Closed),
        }
    }

    fn abort(&mut self, conn: Self::Conn) {
        match conn {
            Conn::Net(c) => self.net.abort(c),
            Conn::Pipe(id) => self.pipes.core_end(id, CoreEnd::Aborted),
        }
    }
}
