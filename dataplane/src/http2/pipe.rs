//! Message queues between the HTTP/2 layer and the proxy core.
//!
//! Each HTTP/2 stream the gateway serves, and each stream it opens to an
//! h2c backend, reaches the core as a [`Pipe`]: the head and body events of
//! the message model ([`crate::message`]) one way and the other, each
//! direction bounded in body bytes so a slow side holds the other back.
//! Nothing on a pipe is serialised: the `h2` crate's heads and data frames
//! pass through as they are.
//!
//! A mirrored copy of a request (RequestMirror) is a pipe too, with no
//! HTTP/2 side: the core feeds it the body of the request it copies
//! ([`Pipes::feed`]) and what it sends back is dropped.

use crate::message::{BodyEvent, Request, Response};
use slab::Slab;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// One item on a pipe.
#[derive(Debug)]
pub enum Message {
    Request(Box<Request>),
    Response(Box<Response>),
    Body(BodyEvent),
}

impl Message {
    fn len(&self) -> usize {
        match self {
            Self::Body(event) => event.len(),
            Self::Request(_) | Self::Response(_) => 0,
        }
    }
}

/// What the core did with its end of a pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreEnd {
    Open,
    /// Done: everything it sent is the whole message.
    Closed,
    /// Gave up: the stream must be reset.
    Aborted,
}

/// Which side of the HTTP/2 layer a pipe belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeKind {
    /// A client's stream.
    Inbound,
    /// A request from the core to an h2c backend endpoint.
    Outbound { endpoint: SocketAddr },
    /// A mirrored copy of a request: fed by the core, answers dropped.
    Mirror,
}

/// A bounded queue of messages, one direction.
#[derive(Debug, Default)]
pub struct Queue {
    items: VecDeque<Message>,
    /// Body bytes queued.
    bytes: usize,
}

impl Queue {
    pub fn push(&mut self, message: Message) {
        self.bytes += message.len();
        self.items.push_back(message);
    }

    pub fn pop(&mut self) -> Option<Message> {
        let message = self.items.pop_front()?;
        self.bytes -= message.len();
        Some(message)
    }

    /// Put back what was taken and could not be passed on yet.
    pub fn unpop(&mut self, message: Message) {
        self.bytes += message.len();
        self.items.push_front(message);
    }

    /// The next message is the end of a body (no trailers).
    pub fn next_ends_body(&self) -> bool {
        matches!(self.items.front(), Some(Message::Body(BodyEvent::End)))
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One stream's two queues.
#[derive(Debug)]
pub struct Pipe {
    pub kind: PipeKind,
    /// For the core.
    pub to_core: Queue,
    /// The HTTP/2 side failed (stream reset, connection lost): the core
    /// sees the stream gone.
    pub reset: bool,
    /// It failed before its request went out (no connection, or one that
    /// ended before the stream opened): the backend saw nothing of it.
    pub unsent: bool,
    /// From the core.
    pub from_core: Queue,
    pub core: CoreEnd,
    /// The HTTP/2 side is done with the pipe; it is freed once the core is
    /// too.
    pub released: bool,
}

/// The stream behind a pipe is gone (reset, or its connection lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamGone;

/// Every pipe of a worker, and what changed on them.
#[derive(Debug)]
pub struct Pipes {
    pipes: Slab<Pipe>,
    /// Body bytes queued per direction before the sender is held back.
    pub capacity: usize,
    /// Pipes the core put messages on, took from, opened or closed.
    pub touched: Vec<usize>,
    /// Pipes with news for the core (messages, reset).
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
        let id = self.pipes.insert(Pipe {
            kind,
            to_core: Queue::default(),
            reset: false,
            unsent: false,
            from_core: Queue::default(),
            core: CoreEnd::Open,
            released: false,
        });
        self.touched.push(id);
        id
    }

    pub fn get(&self, id: usize) -> Option<&Pipe> {
        self.pipes.get(id)
    }

    pub fn get_mut(&mut self, id: usize) -> Option<&mut Pipe> {
        self.pipes.get_mut(id)
    }

    /// The pipe fails.
    pub fn reset(&mut self, id: usize) {
        if let Some(pipe) = self.pipes.get_mut(id) {
            pipe.reset = true;
            self.ready.push(id);
        }
    }

    /// The HTTP/2 side fails the pipe before its request went out.
    pub fn reset_unsent(&mut self, id: usize) {
        if let Some(pipe) = self.pipes.get_mut(id) {
            pipe.unsent = true;
        }
        self.reset(id);
    }

    /// Whether `id` failed before its request went out (so another
    /// endpoint may have it, as a refused connect's).
    pub fn unsent(&self, id: usize) -> bool {
        self.pipes.get(id).is_some_and(|p| p.unsent)
    }

    /// The HTTP/2 side is done with `id`; free it if the core is too.
    pub fn release(&mut self, id: usize) {
        if let Some(pipe) = self.pipes.get_mut(id) {
            pipe.released = true;
            if pipe.core != CoreEnd::Open {
                self.pipes.remove(id);
            } else {
                self.ready.push(id);
            }
        }
    }

    // The core's end.

    /// The next message for the core; `Ok(None)`: none yet.
    pub fn take(&mut self, id: usize) -> Result<Option<Message>, StreamGone> {
        let pipe = self.pipes.get_mut(id).ok_or(StreamGone)?;
        if pipe.reset {
            return Err(StreamGone);
        }
        let message = pipe.to_core.pop();
        if message.is_some() {
            // Room freed: the HTTP/2 side may move more.
            self.touched.push(id);
        } else if pipe.released {
            return Err(StreamGone);
        }
        Ok(message)
    }

    /// Whether the stream behind `id` is gone: reset, or let go by the
    /// HTTP/2 side before the core was done with it.
    pub fn gone(&self, id: usize) -> bool {
        self.pipes.get(id).is_none_or(|p| p.reset || p.released)
    }

    /// Queue a message from the core (on a mirror's pipe: dropped).
    pub fn send(&mut self, id: usize, message: Message) -> Result<(), StreamGone> {
        let pipe = self.pipes.get_mut(id).ok_or(StreamGone)?;
        if pipe.reset || pipe.released {
            return Err(StreamGone);
        }
        if pipe.kind == PipeKind::Mirror {
            return Ok(());
        }
        pipe.from_core.push(message);
        self.touched.push(id);
        Ok(())
    }

    /// Body bytes the core may still queue on `id`.
    pub fn room(&self, id: usize) -> usize {
        self.pipes
            .get(id)
            .map_or(0, |p| self.capacity.saturating_sub(p.from_core.bytes()))
    }

    /// Bytes the core queued that the HTTP/2 side has not taken.
    pub fn backlog(&self, id: usize) -> usize {
        self.pipes.get(id).map_or(0, |p| p.from_core.bytes())
    }

    /// Give a mirror's pipe the next message of the request it copies;
    /// `Err` when it holds more than its capacity already (the mirror
    /// falls behind: the caller lets it go).
    pub fn feed(&mut self, id: usize, message: Message) -> Result<(), StreamGone> {
        let capacity = self.capacity;
        let pipe = self.pipes.get_mut(id).ok_or(StreamGone)?;
        if pipe.reset || pipe.to_core.bytes() > capacity {
            return Err(StreamGone);
        }
        pipe.to_core.push(message);
        self.ready.push(id);
        Ok(())
    }

    pub fn core_end(&mut self, id: usize, end: CoreEnd) {
        if let Some(pipe) = self.pipes.get_mut(id) {
            pipe.core = end;
            if pipe.released || pipe.kind == PipeKind::Mirror {
                self.pipes.remove(id);
            } else {
                self.touched.push(id);
            }
        }
    }
}
