//! HTTP/2 on both sides of the gateway, driven by the polling worker.
//!
//! The `h2` crate does the protocol: framing, HPACK, flow control, stream
//! states. It runs here without a runtime: each connection's bytes sit in
//! an [`io::H2Io`] the worker fills from and empties into its socket, and
//! `h2`'s wakers name the connection or stream to poll next
//! ([`io::WakeList`]). Streams reach the proxy core as messages — heads
//! and body events ([`crate::message`]) — on in-memory pipes ([`pipe`]),
//! decoded and encoded by [`codec`], so routing, filters, timeouts, pools
//! and error responses are the core's, once, whatever the protocols on
//! either side.

pub mod codec;
pub mod inbound;
pub mod io;
pub mod outbound;
pub mod pipe;
pub mod window;

use crate::gate::ConnectionGate;
use crate::metrics::ProxyMetrics;
use crate::proxy::{Deadlines, Handoff, ReadOutcome, Transport};
use inbound::Inbound;
use io::{H2Io, Rounds, Task, TaskKind, WakeList};
use outbound::Outbound;
use pipe::{PipeKind, Pipes};
use std::collections::BTreeSet;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// HTTP/2 settings, client and backend side.
#[derive(Clone, Debug)]
pub struct Http2Settings {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Decoded header list size, both sides (SETTINGS_MAX_HEADER_LIST_SIZE);
    /// also what bounds a CONTINUATION sequence.
    pub max_header_list_size: u32,
    /// HPACK dynamic table (SETTINGS_HEADER_TABLE_SIZE).
    pub header_table_size: u32,
    /// The most the receive windows grow to. They start at the spec's
    /// 65,535 bytes and grow with the measured bandwidth-delay product
    /// ([`window::Bdp`]).
    pub max_window: u32,
    /// Client stream resets per connection and second before GOAWAY.
    pub max_resets_per_second: u32,
    /// Streams a client may reset before the gateway accepted them.
    pub max_pending_accept_reset_streams: usize,
    /// Connections per h2c backend endpoint.
    pub backend_connections: usize,
    /// Streams per backend connection before another is opened.
    pub backend_streams: usize,
    /// Socket bytes buffered per connection, each way.
    pub read_buffer: usize,
    pub write_buffer: usize,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            max_header_list_size: 64 * 1024,
            header_table_size: 8 * 1024,
            max_window: 16 * 1024 * 1024,
            max_resets_per_second: 200,
            max_pending_accept_reset_streams: 20,
            backend_connections: 8,
            backend_streams: 500,
            read_buffer: 256 * 1024,
            write_buffer: 256 * 1024,
        }
    }
}

/// Read, poll and write rounds of one connection per service call; a
/// connection with more to do is woken for the next.
const PASSES: usize = 16;

/// A connection's receive-window estimate and the PING handle it uses.
struct Windows {
    bdp: window::Bdp,
    ping: Option<h2::PingPong>,
}

impl Windows {
    fn new(max: u32) -> Self {
        Self {
            bdp: window::Bdp::new(max),
            ping: None,
        }
    }

    /// After a read and a poll of the connection: start a measurement, or
    /// finish one. Returns a new window size to apply.
    fn update(&mut self, io: &H2Io, cx: &mut Context<'_>, now: Instant) -> Option<u32> {
        let (received, data) = {
            let mut b = io.buffers();
            (std::mem::take(&mut b.received), std::mem::take(&mut b.data))
        };
        let ping = self.ping.as_mut()?;
        if self.bdp.on_bytes(received, data, now) && ping.send_ping(h2::Ping::opaque()).is_err() {
            return None;
        }
        if self.bdp.measuring() {
            if let Poll::Ready(Ok(_)) = ping.poll_pong(cx) {
                return self.bdp.on_pong(now);
            }
        }
        None
    }
}

/// What the socket under a connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetState {
    Open,
    /// The peer finished sending.
    Eof,
    Failed,
}

/// The socket under an HTTP/2 connection and the buffers `h2` reads and
/// writes.
struct Link<C> {
    net: C,
    io: H2Io,
    state: NetState,
}

impl<C: Copy> Link<C> {
    fn new(net: C, io: H2Io) -> Self {
        Self {
            net,
            io,
            state: NetState::Open,
        }
    }

    /// Read what the socket has (up to `limit` buffered). Returns whether
    /// `h2` has more to read than before: bytes arrived, or the buffer is
    /// full and the socket may hold more (an edge-triggered socket will not
    /// say so again).
    fn fill<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        scratch: &mut [u8],
        limit: usize,
    ) -> bool {
        let mut b = self.io.buffers();
        let mut read = false;
        while self.state == NetState::Open && b.rx.len() < limit {
            let room = (limit - b.rx.len()).min(scratch.len());
            match net.read(self.net, &mut scratch[..room]) {
                ReadOutcome::Data(n) => {
                    b.rx.extend_from_slice(&scratch[..n]);
                    b.received += n;
                    read = true;
                }
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Closed => {
                    self.state = NetState::Eof;
                    b.eof = true;
                    read = true;
                }
                ReadOutcome::Failed => {
                    self.state = NetState::Failed;
                    b.eof = true;
                    read = true;
                }
            }
        }
        read || (self.state == NetState::Open && b.rx.len() >= limit)
    }

    /// Write what `h2` produced, as far as the socket takes it. Returns
    /// whether `h2` was held back by a full buffer that now has room: it
    /// must be polled again, as no socket event will come for it.
    fn flush<T: Transport<Conn = C>>(&mut self, net: &mut T) -> bool {
        let mut b = self.io.buffers();
        let was_full = b.tx.len() >= b.tx_limit;
        while !b.tx.is_empty() && self.state != NetState::Failed {
            match net.write(self.net, &b.tx) {
                Ok(0) => break,
                Ok(n) => {
                    b.tx.drain(..n);
                }
                Err(_) => self.state = NetState::Failed,
            }
        }
        b.trim();
        was_full && b.tx.len() < b.tx_limit
    }

    fn flushed(&self) -> bool {
        self.io.buffers().tx.is_empty()
    }

    /// Close the socket: politely, unless it failed.
    fn close<T: Transport<Conn = C>>(&self, net: &mut T) {
        if self.state == NetState::Failed {
            net.abort(self.net);
        } else {
            net.close(self.net);
        }
    }
}

/// The HTTP/2 layer of one worker.
pub struct Http2<C> {
    inbound: Inbound<C>,
    outbound: Outbound<C>,
    wakes: WakeList,
    /// The tasks of one [`Http2::run`], kept for their capacity.
    tasks: Vec<Task>,
    rounds: Rounds,
}

impl<C: Copy + Eq + Hash> Http2<C> {
    pub fn new(settings: Http2Settings, deadlines: Deadlines, gate: Arc<ConnectionGate>) -> Self {
        Self {
            inbound: Inbound::new(settings.clone(), deadlines, gate),
            outbound: Outbound::new(settings),
            wakes: WakeList::default(),
            tasks: Vec::new(),
            rounds: Rounds::default(),
        }
    }

    /// Whether `net` is one of this layer's sockets.
    pub fn owns(&self, net: C) -> bool {
        self.inbound.owns(net).is_some() || self.outbound.owns(net).is_some()
    }

    /// HTTP/2 client connections open.
    pub fn clients(&self) -> usize {
        self.inbound.connections()
    }

    pub fn backend_connections(&self) -> usize {
        self.outbound.connections()
    }

    pub fn adopt(&mut self, handoff: Handoff<C>, metrics: &ProxyMetrics, now: Instant) {
        self.inbound.adopt(handoff, &self.wakes, metrics, now);
    }

    /// The client connections' deadlines; call every
    /// [`crate::proxy::TICK_INTERVAL`].
    pub fn tick<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        pipes: &mut Pipes,
        metrics: &ProxyMetrics,
        now: Instant,
    ) {
        self.inbound.tick(net, pipes, &self.wakes, metrics, now);
    }

    /// A socket of this layer may have progressed.
    pub fn on_net(&mut self, net_conn: C) {
        if let Some(key) = self.inbound.owns(net_conn) {
            self.wakes.push(Task::Inbound(key));
        } else if let Some(key) = self.outbound.owns(net_conn) {
            self.wakes.push(Task::Outbound(key));
        }
    }

    /// Poll whatever was woken or touched by the core. Returns whether
    /// anything was.
    pub fn run<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        pipes: &mut Pipes,
        metrics: &ProxyMetrics,
        now: Instant,
    ) -> bool {
        let mut tasks = std::mem::take(&mut self.tasks);
        self.wakes.take_into(&mut tasks);
        tasks.extend(pipes.touched.drain(..).map(Task::Stream));
        if tasks.is_empty() {
            self.tasks = tasks;
            return false;
        }
        // Streams first: what they queue, their connection then sends.
        // Each task once, however often it was woken.
        let round = self.rounds.begin();
        for kind in [TaskKind::Stream, TaskKind::Inbound, TaskKind::Outbound] {
            for &task in &tasks {
                if task.kind() != kind || !self.rounds.first_in_round(task, round) {
                    continue;
                }
                match task {
                    Task::Inbound(key) => {
                        self.inbound
                            .service(net, pipes, key, &self.wakes, metrics, now)
                    }
                    Task::Outbound(key) => {
                        self.outbound.service(net, key, &self.wakes, metrics, now)
                    }
                    Task::Stream(pipe) => match pipes.get(pipe).map(|p| p.kind) {
                        Some(PipeKind::Inbound) => {
                            self.inbound
                                .service_stream(pipes, pipe, &self.wakes, metrics, now)
                        }
                        Some(PipeKind::Outbound { endpoint }) => self.outbound.service_pipe(
                            net,
                            pipes,
                            pipe,
                            endpoint,
                            &self.wakes,
                            metrics,
                        ),
                        Some(PipeKind::Mirror) | None => {}
                    },
                }
            }
        }
        tasks.clear();
        self.tasks = tasks;
        true
    }

    /// Keep a pool of connections open to every h2c endpoint in
    /// `endpoints`.
    pub fn prewarm<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        endpoints: &BTreeSet<SocketAddr>,
        metrics: &ProxyMetrics,
    ) {
        self.outbound.prewarm(net, endpoints, &self.wakes, metrics);
    }

    /// GOAWAY to every client; backend connections close when idle.
    pub fn drain(&mut self, now: Instant) {
        self.inbound.drain(&self.wakes, now);
        self.outbound.drain(&self.wakes);
    }
}
