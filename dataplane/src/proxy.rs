//! The HTTP/1.1 reverse proxy, one core for both transports.
//!
//! [`Proxy`] owns no socket and no clock: a driver (the AF_XDP worker on the
//! userspace stack, or the kernel-socket worker) implements [`Transport`],
//! tells the proxy which connections may have progressed
//! ([`Proxy::on_io`]), accepted ([`Proxy::accept`]) and what time it is
//! ([`Proxy::tick`]). Everything between — framing, routing, filters,
//! backend pools, timeouts, error responses — happens here, once.
//!
//! Each client connection is an [`Exchange`]: at most one request in flight
//! at a time (pipelined requests wait in the buffer and are answered in
//! order), its body streamed to one backend connection and the response
//! streamed back, with bounded buffers on both legs so a slow side holds
//! the other back instead of growing memory.

use crate::config::{Backend, BackendProtocol, GatewayConfig, HeaderModifier, RuleAction};
use crate::error::{Cause, Phase, Replay};
use crate::http1::{
    self, reason_phrase, BodyFraming, Chunk, ChunkedDecoder, HttpError, Limits, RequestHead,
    ResponseFraming, ResponseHead, Version,
};
use crate::metrics::{ProxyMetrics, StatusClass};
use crate::routes::{host_without_port, PathMatch, RequestView};
use arc_swap::ArcSwap;
use foldhash::{HashMap, HashMapExt};
use slab::Slab;
use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a read from a connection gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Bytes were read into the buffer.
    Data(usize),
    /// Nothing now; the driver reports the connection again when there is.
    WouldBlock,
    /// The peer finished sending (FIN).
    Closed,
    /// The connection failed (reset, refused, timed out).
    Failed,
}

/// A write found the connection closed or reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionGone;

/// Socket operations a driver provides.
pub trait Transport {
    /// A connection handle.
    type Conn: Copy + Eq + Hash + Debug;

    fn read(&mut self, conn: Self::Conn, buf: &mut [u8]) -> ReadOutcome;
    /// Bytes accepted (0: no room now, or not connected yet).
    fn write(&mut self, conn: Self::Conn, data: &[u8]) -> Result<usize, ConnectionGone>;
    /// Start a connection to a backend that speaks `protocol`; `None` when
    /// no connection can be opened now (no ports, no memory). A socket
    /// transport opens a TCP connection whatever the protocol; the HTTP/2
    /// layer's transport opens a stream on its pooled connections instead.
    fn connect(&mut self, to: SocketAddr, protocol: BackendProtocol) -> Option<Self::Conn>;
    /// Close after what was written is delivered (FIN), and forget it.
    fn close(&mut self, conn: Self::Conn);
    /// Drop at once (RST), and forget it.
    fn abort(&mut self, conn: Self::Conn);
}

/// How often a driver calls [`Proxy::tick`]: the resolution of every
/// timeout.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// How long each phase of an exchange may take; every expiry releases both
/// legs and is counted by its [`Phase`]. Defaults after Envoy's edge-proxy
/// guidance and nginx's defaults (docs/operations.md lists them side by
/// side).
#[derive(Clone, Debug)]
pub struct Deadlines {
    /// A request head, from its first byte (Envoy's
    /// `request_headers_timeout` at the edge: 10 s); also the HTTP/2
    /// preface and first SETTINGS frame, from the connection's start.
    pub request_head: Duration,
    /// The longest pause between request body bytes, also while a body is
    /// discarded after a local answer (nginx `client_body_timeout`).
    pub request_body: Duration,
    /// Opening a backend connection (Envoy's `connect_timeout`).
    pub connect: Duration,
    /// From the end of the request (its last byte delivered to the
    /// backend) to the response head.
    pub response_head: Duration,
    /// The longest pause in relaying a response: the backend silent or the
    /// client not reading (nginx `proxy_read_timeout` / `send_timeout`).
    pub response_body: Duration,
    /// An HTTP/1.1 connection between requests (nginx `keepalive_timeout`
    /// is 75 s).
    pub keep_alive: Duration,
    /// An HTTP/2 connection with no open stream (nginx
    /// `http2_idle_timeout`: 3 min).
    pub http2_idle: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            request_head: Duration::from_secs(10),
            request_body: Duration::from_secs(60),
            connect: Duration::from_secs(5),
            response_head: Duration::from_secs(30),
            response_body: Duration::from_secs(60),
            keep_alive: Duration::from_secs(60),
            http2_idle: Duration::from_secs(180),
        }
    }
}

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub limits: Limits,
    pub deadlines: Deadlines,
    /// Idle pooled backend connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per endpoint.
    pub pool_max_idle: usize,
    /// Buffered bytes per direction and leg before reading pauses.
    pub buffer: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            deadlines: Deadlines::default(),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 1024,
            buffer: 64 * 1024,
        }
    }
}

/// Idle backend connections are kept per endpoint and protocol: one
/// address may serve HTTP/1.1 and h2c on the same port.
type PoolKey = (SocketAddr, BackendProtocol);

/// One step of [`Proxy::drive`].
#[derive(Clone, Copy)]
enum Step {
    FlushClient,
    FlushBackend,
    ReadClient,
    AdvanceRequest,
    ReadBackend,
    AdvanceResponse,
    FinishRequest,
}

/// Where a connection belongs.
#[derive(Clone, Copy, Debug)]
enum Role {
    Client(usize),
    Backend(usize),
    Idle(PoolKey),
}

/// How a body is being consumed.
#[derive(Debug)]
enum BodyReader {
    /// Bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the sender closes.
    UntilClose,
    Done,
}

impl BodyReader {
    fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }
}

/// How a body is written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyWriter {
    Raw,
    Chunked,
    /// Chunked, past the last chunk: writing trailer fields.
    ChunkedTrailers,
}

/// The backend side of a request.
struct BackendLeg<C> {
    conn: C,
    endpoint: SocketAddr,
    protocol: BackendProtocol,
    /// From the pool: may have been closed by the backend meanwhile.
    reused: bool,
    rx: Vec<u8>,
    tx: Vec<u8>,
    eof: bool,
    /// Any response byte seen.
    answered: bool,
    /// When the connection was asked for (the connect deadline's start).
    opened: Instant,
    /// A byte went through it: it is open (pooled ones are).
    connected: bool,
    /// The last time bytes came from the backend.
    heard: Instant,
    /// The last time bytes were written to the backend.
    sent: Instant,
}

/// The response being relayed.
enum ResponseState {
    /// Waiting for the backend's head.
    Head,
    Body {
        reader: BodyReader,
        writer: BodyWriter,
        backend_keep_alive: bool,
    },
    /// Done relaying; the exchange may finish.
    Done,
}

/// One request in flight.
struct InFlight<C> {
    method: String,
    version: Version,
    keep_alive: bool,
    started: Instant,
    body: BodyReader,
    body_writer: BodyWriter,
    /// Response header changes (rule, then backend).
    response_headers: Vec<HeaderModifier>,
    backend: Option<BackendLeg<C>>,
    response: ResponseState,
    /// The request head as sent to the backend, kept while a retry on a
    /// fresh connection is still possible (no body, reused connection).
    replay: Option<Vec<u8>>,
    /// The last time request body bytes came from the client.
    body_moved: Instant,
    /// When the whole request reached the backend: the response head's
    /// deadline runs from here.
    request_end: Option<Instant>,
    /// The matched route and chosen backend, for metrics.
    route: Option<Arc<str>>,
    backend_name: Option<Arc<str>>,
}

/// A client connection.
struct Exchange<C> {
    client: C,
    peer: SocketAddr,
    local_port: u16,
    rx: Vec<u8>,
    tx: Vec<u8>,
    eof: bool,
    /// Close once `tx` is flushed: no further requests.
    closing: bool,
    /// A request was read: the connection speaks HTTP/1.x and is no longer
    /// a candidate for HTTP/2.
    served: bool,
    /// A stream of the HTTP/2 layer, not a connection of its own.
    is_stream: bool,
    request: Option<InFlight<C>>,
    /// Since when the connection has had no request (keep-alive idle).
    idle_since: Instant,
    /// When the first byte of the request head now being read came.
    head_started: Option<Instant>,
    /// The last time bytes were written to the client.
    written: Instant,
}

/// The proxy core.
pub struct Proxy<C> {
    settings: ProxySettings,
    config: Arc<ArcSwap<GatewayConfig>>,
    metrics: Arc<ProxyMetrics>,
    roles: HashMap<C, Role>,
    exchanges: Slab<Exchange<C>>,
    /// Idle backend connections per endpoint, with when they went idle.
    pool: HashMap<PoolKey, Vec<(C, Instant)>>,
    /// Client connections found to speak HTTP/2, for that layer to take.
    handoffs: Vec<Handoff<C>>,
    cursors: Cursors,
    scratch: Vec<u8>,
}

/// Where this worker's round robins stand, per rule and per backend of the
/// configuration in force: upstream state is the worker's, the published
/// table holds only configuration (DESIGN.md decision 2).
#[derive(Default)]
struct Cursors {
    /// The configuration the positions belong to (its address; the
    /// positions start over when another is published).
    config: usize,
    /// Requests so far, by the address of the `Backends` or `Backend` in
    /// that configuration.
    turns: HashMap<usize, usize>,
}

impl Cursors {
    /// The next turn of `item`, which lives in `config`.
    fn turn<T>(&mut self, config: &GatewayConfig, item: &T) -> usize {
        let config = config as *const GatewayConfig as usize;
        if config != self.config {
            self.config = config;
            self.turns.clear();
        }
        let turn = self.turns.entry(item as *const T as usize).or_default();
        let this = *turn;
        *turn = turn.wrapping_add(1);
        this
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection that turned out to speak HTTP/2: with prior
/// knowledge (it opened with the preface) or by `Upgrade: h2c`. The proxy
/// has forgotten it without closing it.
#[derive(Debug)]
pub struct Handoff<C> {
    pub conn: C,
    pub peer: SocketAddr,
    pub local_port: u16,
    /// What was read and not consumed: the preface and what followed it,
    /// or whatever followed the upgrade request.
    pub buffered: Vec<u8>,
    /// The HTTP/1.1 request that asked for the upgrade; it becomes stream 1.
    pub upgrade: Option<RequestHead>,
}

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    pub fn new(
        settings: ProxySettings,
        config: Arc<ArcSwap<GatewayConfig>>,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        let scratch = vec![0; settings.buffer];
        Self {
            settings,
            config,
            metrics,
            roles: HashMap::new(),
            exchanges: Slab::new(),
            pool: HashMap::new(),
            handoffs: Vec::new(),
            cursors: Cursors::default(),
            scratch,
        }
    }

    /// Client connections open.
    pub fn clients(&self) -> usize {
        self.exchanges.len()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.exchanges
            .iter()
            .filter(|(_, e)| e.request.is_some())
            .count()
    }

    /// Whether `conn` is one the proxy knows.
    pub fn knows(&self, conn: C) -> bool {
        self.roles.contains_key(&conn)
    }

    /// A client connected to `local_port` from `peer`.
    pub fn accept<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        conn: C,
        peer: SocketAddr,
        local_port: u16,
        now: Instant,
    ) {
        self.metrics.connection_opened();
        self.open_exchange(io, conn, peer, local_port, false, now);
    }

    /// A request arrived on a stream of the HTTP/2 layer: `conn` carries it
    /// as HTTP/1.1, and carries one request only.
    pub fn accept_stream<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        conn: C,
        peer: SocketAddr,
        local_port: u16,
        now: Instant,
    ) {
        self.open_exchange(io, conn, peer, local_port, true, now);
    }

    fn open_exchange<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        conn: C,
        peer: SocketAddr,
        local_port: u16,
        is_stream: bool,
        now: Instant,
    ) {
        let id = self.exchanges.insert(Exchange {
            client: conn,
            peer,
            local_port,
            rx: Vec::new(),
            tx: Vec::new(),
            eof: false,
            closing: false,
            served: is_stream,
            is_stream,
            request: None,
            idle_since: now,
            head_started: None,
            written: now,
        });
        self.roles.insert(conn, Role::Client(id));
        self.drive(io, id, now);
    }

    /// Client connections to hand to the HTTP/2 layer.
    pub fn take_handoffs(&mut self) -> Vec<Handoff<C>> {
        std::mem::take(&mut self.handoffs)
    }

    /// Forget a client connection without closing it: it speaks HTTP/2.
    fn hand_off(&mut self, id: usize, upgrade: Option<RequestHead>) {
        let Some(exchange) = self.exchanges.try_remove(id) else {
            return;
        };
        // Still open: the HTTP/2 layer counts it closed when it is.
        self.roles.remove(&exchange.client);
        self.handoffs.push(Handoff {
            conn: exchange.client,
            peer: exchange.peer,
            local_port: exchange.local_port,
            buffered: exchange.rx,
            upgrade,
        });
    }

    /// `conn` may be readable, writable, connected or closed.
    pub fn on_io<T: Transport<Conn = C>>(&mut self, io: &mut T, conn: C, now: Instant) {
        match self.roles.get(&conn).copied() {
            Some(Role::Client(id)) | Some(Role::Backend(id)) => self.drive(io, id, now),
            Some(Role::Idle(key)) => self.check_idle(io, conn, key),
            None => {}
        }
    }

    /// Timeouts; call every [`TICK_INTERVAL`].
    pub fn tick<T: Transport<Conn = C>>(&mut self, io: &mut T, now: Instant) {
        let ids: Vec<usize> = self.exchanges.iter().map(|(id, _)| id).collect();
        for id in ids {
            let Some(exchange) = self.exchanges.get(id) else {
                continue;
            };
            match overdue(exchange, &self.settings.deadlines, now) {
                Some(Overdue::Idle) => {
                    self.metrics.timeout(Phase::KeepAlive);
                    self.close_exchange(io, id, false);
                }
                Some(Overdue::Failed(cause)) => self.expire(io, id, cause, now),
                None => {}
            }
        }
        let idle = self.settings.pool_idle_timeout;
        let mut expired = Vec::new();
        for (&(_, protocol), conns) in self.pool.iter_mut() {
            conns.retain(|&(conn, since)| {
                let keep = now.duration_since(since) < idle;
                if !keep {
                    expired.push((conn, protocol));
                }
                keep
            });
        }
        for (conn, protocol) in expired {
            self.let_go_backend(io, conn, protocol, false);
        }
        self.pool.retain(|_, c| !c.is_empty());
        self.metrics
            .set_pool_idle(self.pool.values().map(Vec::len).sum());
    }

    /// End what `cause`, a deadline's expiry, leaves of the exchange.
    fn expire<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        cause: Cause,
        now: Instant,
    ) {
        let exchange = &self.exchanges[id];
        tracing::debug!(peer = %exchange.peer, %cause, "deadline expired");
        match &exchange.request {
            Some(request) if !matches!(request.response, ResponseState::Done) => {
                self.fail_request(io, id, cause, now);
                self.drive(io, id, now);
            }
            // Answered already: what is left is a body to discard or a
            // response the client does not take.
            Some(_) => {
                self.metrics.failure(cause);
                let abort = cause == Cause::ClientNotReading;
                self.close_exchange(io, id, abort);
            }
            None if cause == Cause::RequestHeadTimeout => {
                let seen = exchange.rx.len().min(HTTP2_PREFACE.len());
                if exchange.rx[..seen] == HTTP2_PREFACE[..seen] {
                    // Half an HTTP/2 preface: nothing HTTP/1.1 to answer.
                    self.metrics.timeout(Phase::Http2Preface);
                } else {
                    self.metrics.failure(cause);
                    self.answer_and_close(id, cause.status());
                    self.flush_client(io, id, now);
                }
                self.close_exchange(io, id, false);
            }
            None => {
                self.metrics.failure(cause);
                self.close_exchange(io, id, true);
            }
        }
    }

    /// Close every client connection that has no request in flight and
    /// every idle backend connection, and stop taking new requests on the
    /// others (graceful drain). Returns whether any request is still in
    /// flight.
    pub fn drain<T: Transport<Conn = C>>(&mut self, io: &mut T, now: Instant) -> bool {
        // Idle backend connections are closed politely, so the backends do
        // not hold them open after the gateway is gone.
        let pooled: Vec<_> = self.pool.drain().collect();
        for ((_, protocol), conns) in pooled {
            for (conn, _) in conns {
                self.let_go_backend(io, conn, protocol, false);
            }
        }
        let ids: Vec<usize> = self.exchanges.iter().map(|(id, _)| id).collect();
        for id in ids {
            let Some(exchange) = self.exchanges.get_mut(id) else {
                continue;
            };
            exchange.closing = true;
            if exchange.request.is_none() {
                self.drive(io, id, now);
            }
        }
        self.in_flight() > 0
    }

    /// A pooled connection reported activity: anything but a would-block
    /// read means it is no longer usable.
    fn check_idle<T: Transport<Conn = C>>(&mut self, io: &mut T, conn: C, key: PoolKey) {
        let mut byte = [0u8; 1];
        if io.read(conn, &mut byte) != ReadOutcome::WouldBlock {
            if let Some(conns) = self.pool.get_mut(&key) {
                conns.retain(|&(c, _)| c != conn);
            }
            self.let_go_backend(io, conn, key.1, true);
        }
    }

    /// Close (FIN) or abort (RST) a backend connection and forget it.
    fn let_go_backend<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        conn: C,
        protocol: BackendProtocol,
        abort: bool,
    ) {
        self.roles.remove(&conn);
        if abort {
            io.abort(conn);
        } else {
            io.close(conn);
        }
        // h2c requests ride on streams of the HTTP/2 layer's own pool.
        if protocol == BackendProtocol::Http1 {
            self.metrics.backend_connection_closed();
        }
    }

    /// Make all the progress the exchange can make now.
    fn drive<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize, now: Instant) {
        // Every step may end the exchange (a reset seen on a write or a
        // read, a malformed body): the next step must not run on it.
        const STEPS: [Step; 7] = [
            Step::FlushClient,
            Step::FlushBackend,
            Step::ReadClient,
            Step::AdvanceRequest,
            Step::ReadBackend,
            Step::AdvanceResponse,
            Step::FinishRequest,
        ];
        for _ in 0..64 {
            let mut progress = false;
            for step in STEPS {
                if !self.exchanges.contains(id) {
                    return;
                }
                progress |= match step {
                    Step::FlushClient => self.flush_client(io, id, now),
                    Step::FlushBackend => self.flush_backend(io, id, now),
                    Step::ReadClient => self.read_client(io, id, now),
                    Step::AdvanceRequest => self.advance_request(io, id, now),
                    Step::ReadBackend => self.read_backend(io, id, now),
                    Step::AdvanceResponse => self.advance_response(io, id, now),
                    Step::FinishRequest => self.finish_request(io, id, now),
                };
            }
            if !progress {
                break;
            }
        }
        self.note_request_end(id, now);
        self.maybe_close(io, id);
    }

    /// The whole request reached the backend: the response head's clock
    /// starts.
    fn note_request_end(&mut self, id: usize, now: Instant) {
        let Some(request) = self.exchanges.get_mut(id).and_then(|e| e.request.as_mut()) else {
            return;
        };
        if request.request_end.is_some() || !request.body.is_done() {
            return;
        }
        if let Some(leg) = &request.backend {
            if leg.connected && leg.tx.is_empty() {
                request.request_end = Some(now);
            }
        }
    }

    fn flush_client<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let Some(exchange) = self.exchanges.get_mut(id) else {
            return false;
        };
        if exchange.tx.is_empty() {
            return false;
        }
        match io.write(exchange.client, &exchange.tx) {
            Ok(0) => false,
            Ok(n) => {
                exchange.tx.drain(..n);
                exchange.written = now;
                true
            }
            Err(ConnectionGone) => {
                self.client_gone(io, id);
                true
            }
        }
    }

    fn flush_backend<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let Some(leg) = self
            .exchanges
            .get_mut(id)
            .and_then(|e| e.request.as_mut())
            .and_then(|r| r.backend.as_mut())
        else {
            return false;
        };
        if leg.tx.is_empty() {
            return false;
        }
        match io.write(leg.conn, &leg.tx) {
            Ok(0) => false,
            Ok(n) => {
                leg.tx.drain(..n);
                leg.connected = true;
                leg.sent = now;
                true
            }
            // Seen again on the read side as a failure.
            Err(ConnectionGone) => {
                leg.eof = true;
                true
            }
        }
    }

    fn read_client<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize, now: Instant) -> bool {
        let cap = self
            .settings
            .buffer
            .max(self.settings.limits.max_head_bytes + 1);
        let exchange = &mut self.exchanges[id];
        if exchange.eof || exchange.rx.len() >= cap {
            return false;
        }
        let room = (cap - exchange.rx.len()).min(self.scratch.len());
        match io.read(exchange.client, &mut self.scratch[..room]) {
            ReadOutcome::Data(n) => {
                exchange.rx.extend_from_slice(&self.scratch[..n]);
                match exchange.request.as_mut() {
                    Some(request) => request.body_moved = now,
                    None => {
                        exchange.head_started.get_or_insert(now);
                    }
                }
                true
            }
            ReadOutcome::WouldBlock => false,
            ReadOutcome::Closed => {
                exchange.eof = true;
                true
            }
            ReadOutcome::Failed => {
                self.client_gone(io, id);
                true
            }
        }
    }

    fn read_backend<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let cap = self
            .settings
            .buffer
            .max(self.settings.limits.max_head_bytes + 1);
        let Some(leg) = self.exchanges[id]
            .request
            .as_mut()
            .and_then(|r| r.backend.as_mut())
        else {
            return false;
        };
        if leg.eof || leg.rx.len() >= cap {
            return false;
        }
        let room = (cap - leg.rx.len()).min(self.scratch.len());
        match io.read(leg.conn, &mut self.scratch[..room]) {
            ReadOutcome::Data(n) => {
                leg.rx.extend_from_slice(&self.scratch[..n]);
                leg.answered = true;
                leg.connected = true;
                leg.heard = now;
                true
            }
            ReadOutcome::WouldBlock => false,
            ReadOutcome::Closed => {
                leg.eof = true;
                true
            }
            ReadOutcome::Failed => {
                leg.eof = true;
                leg.rx.clear();
                self.backend_failed(io, id, now);
                true
            }
        }
    }

    /// Parse the next request head and start it, or move request body bytes
    /// toward the backend.
    fn advance_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let exchange = &mut self.exchanges[id];
        if exchange.request.is_none() {
            if exchange.closing || exchange.rx.is_empty() || !exchange.tx.is_empty() {
                return false;
            }
            if !exchange.served {
                let seen = exchange.rx.len().min(HTTP2_PREFACE.len());
                if exchange.rx[..seen] == HTTP2_PREFACE[..seen] {
                    if seen == HTTP2_PREFACE.len() {
                        self.hand_off(id, None);
                        return true;
                    }
                    if !exchange.eof {
                        return false;
                    }
                }
            }
            return match http1::parse_request(&exchange.rx, &self.settings.limits) {
                Ok(None) => {
                    if exchange.eof {
                        // A partial head and the client is gone.
                        exchange.rx.clear();
                        exchange.closing = true;
                    }
                    false
                }
                Ok(Some(head)) => {
                    exchange.rx.drain(..head.head_len);
                    self.start_request(io, id, head, now);
                    true
                }
                Err(error) => {
                    self.reject(id, &error);
                    true
                }
            };
        }
        match self.pump_request_body(id) {
            Ok(progress) => progress,
            Err(error) => {
                // A body that breaks its own framing: the backend got part
                // of it and is dropped; the client gets the 4xx and the
                // connection ends.
                tracing::debug!(%error, "bad request body");
                let exchange = &mut self.exchanges[id];
                exchange.rx.clear();
                exchange.eof = true;
                exchange.closing = true;
                let cause = Cause::BadRequest {
                    status: error.status(),
                };
                self.fail_request(io, id, cause, now);
                true
            }
        }
    }

    /// Answer a request the client got wrong, and end the connection: after
    /// a framing error the next request's start is unknowable.
    fn reject(&mut self, id: usize, error: &HttpError) {
        tracing::debug!(%error, "bad request");
        let exchange = &mut self.exchanges[id];
        exchange.rx.clear();
        exchange.eof = true;
        let status = error.status();
        self.metrics.response(StatusClass::of(status));
        self.metrics.failure(Cause::BadRequest { status });
        self.answer_and_close(id, status);
    }

    fn start_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        head: RequestHead,
        now: Instant,
    ) {
        let exchange = &mut self.exchanges[id];
        if !std::mem::replace(&mut exchange.served, true) && http1::is_h2c_upgrade(&head) {
            self.hand_off(id, Some(head));
            return;
        }
        let config = self.config.load();
        let exchange = &mut self.exchanges[id];
        let (path, query) = head
            .target
            .split_once('?')
            .map_or((head.target.as_str(), ""), |(p, q)| (p, q));
        let host = head
            .values("host")
            .next()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        let headers: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let query_pairs = parse_query(query);
        let view = RequestView {
            host: &host,
            method: &head.method,
            path,
            query: &query_pairs,
            headers: &headers,
        };
        let keep_alive = head.keep_alive && !exchange.closing;
        let body = match head.framing {
            BodyFraming::Empty => BodyReader::Done,
            BodyFraming::Length(n) => BodyReader::Length(n),
            BodyFraming::Chunked => {
                BodyReader::Chunked(ChunkedDecoder::new(self.settings.limits.clone()))
            }
        };
        let mut request = InFlight {
            method: head.method.clone(),
            version: head.version,
            keep_alive,
            started: now,
            body,
            body_writer: BodyWriter::Raw,
            response_headers: Vec::new(),
            backend: None,
            response: ResponseState::Head,
            replay: None,
            body_moved: now,
            request_end: None,
            route: None,
            backend_name: None,
        };
        exchange.head_started = None;
        if !keep_alive {
            exchange.closing = true;
        }
        let listener = config.listener(exchange.local_port, &host);
        let hit = listener.and_then(|l| l.routes.find(&view));
        let Some(hit) = hit else {
            exchange.request = Some(request);
            self.refuse(id, Cause::NoRoute);
            return;
        };
        let action: &RuleAction = hit.action;
        request.route = Some(action.route.clone());
        let matched_prefix = match &hit.matched.path {
            PathMatch::Prefix(p) => Some(p.as_str()),
            _ => None,
        };
        if let Some(redirect) = &action.redirect {
            let scheme = redirect.scheme.as_deref().unwrap_or("http");
            let hostname = redirect
                .hostname
                .clone()
                .unwrap_or_else(|| host_without_port(&host).to_owned());
            let port = match (redirect.port, &redirect.scheme) {
                (Some(p), _) => Some(p),
                (None, Some(_)) => None,
                (None, None) => Some(exchange.local_port),
            };
            let port = port.filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
            let new_path = redirect
                .path
                .as_ref()
                .map_or_else(|| path.to_owned(), |m| m.apply(path, matched_prefix));
            let mut location = format!("{scheme}://{hostname}");
            if let Some(port) = port {
                location.push_str(&format!(":{port}"));
            }
            location.push_str(&new_path);
            if !query.is_empty() {
                location.push('?');
                location.push_str(query);
            }
            request
                .response_headers
                .push(action.response_headers.clone());
            exchange.request = Some(request);
            self.local_response(id, redirect.status, "", &[("Location", location)]);
            return;
        }
        if let Some(why) = &action.invalid {
            tracing::debug!(route = %action.route, why, "rule cannot be served");
            exchange.request = Some(request);
            self.refuse(id, Cause::RuleNotServable);
            return;
        }
        let turn = self.cursors.turn(&config, &action.backends);
        let Some(backend) = action.backends.pick(turn) else {
            exchange.request = Some(request);
            self.refuse(id, Cause::BackendNotResolved);
            return;
        };
        if backend.invalid.is_some() {
            exchange.request = Some(request);
            self.refuse(id, Cause::BackendNotResolved);
            return;
        }
        let turn = self.cursors.turn(&config, backend);
        let Some(endpoint) = backend.endpoint(turn) else {
            exchange.request = Some(request);
            self.refuse(id, Cause::NoReadyEndpoint);
            return;
        };
        request
            .response_headers
            .push(action.response_headers.clone());
        request
            .response_headers
            .push(backend.response_headers.clone());
        request.backend_name = Some(backend.name.clone());

        // The request as the backend sees it.
        let (mut target, mut host_out) = (head.target.clone(), host.clone());
        if let Some(rewrite) = &action.rewrite {
            if let Some(h) = &rewrite.hostname {
                host_out = h.clone();
            }
            if let Some(m) = &rewrite.path {
                target = m.apply(path, matched_prefix);
                if !query.is_empty() {
                    target.push('?');
                    target.push_str(query);
                }
            }
        }
        let out_head =
            backend_request_head(&head, &target, &host_out, exchange.peer, action, backend);
        request.body_writer = match head.framing {
            BodyFraming::Chunked => BodyWriter::Chunked,
            _ => BodyWriter::Raw,
        };
        if head.expect_continue && !request.body.is_done() {
            exchange
                .tx
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let no_body = request.body.is_done();
        exchange.request = Some(request);
        let protocol = backend.protocol;
        drop(config);
        match self.backend_conn(io, id, endpoint, protocol) {
            Some((conn, reused)) => {
                let request = self.exchanges[id].request.as_mut().expect("just set");
                if reused && no_body {
                    request.replay = Some(out_head.clone());
                }
                request.backend = Some(BackendLeg {
                    conn,
                    endpoint,
                    protocol,
                    reused,
                    rx: Vec::new(),
                    tx: out_head,
                    eof: false,
                    answered: false,
                    opened: now,
                    connected: reused,
                    heard: now,
                    sent: now,
                });
                self.metrics.backend_request();
            }
            None => self.refuse(id, Cause::ConnectFailed),
        }
    }

    /// A pooled connection to `endpoint`, or a new one.
    fn backend_conn<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        endpoint: SocketAddr,
        protocol: BackendProtocol,
    ) -> Option<(C, bool)> {
        if let Some(conns) = self.pool.get_mut(&(endpoint, protocol)) {
            if let Some((conn, _)) = conns.pop() {
                self.roles.insert(conn, Role::Backend(id));
                return Some((conn, true));
            }
        }
        let conn = io.connect(endpoint, protocol)?;
        self.roles.insert(conn, Role::Backend(id));
        if protocol == BackendProtocol::Http1 {
            self.metrics.backend_connection_opened();
        }
        Some((conn, false))
    }

    /// Move request body bytes from the client buffer toward the backend.
    fn pump_request_body(&mut self, id: usize) -> Result<bool, HttpError> {
        let cap = self.settings.buffer;
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return Ok(false);
        };
        let Some(leg) = request.backend.as_mut() else {
            // Answered locally: swallow the body so the next request can be
            // read (up to the limit; the connection closes anyway if not).
            return Ok(discard_body(
                &mut request.body,
                &mut exchange.rx,
                &mut exchange.closing,
            ));
        };
        let mut progress = false;
        while !request.body.is_done() && leg.tx.len() < cap && !exchange.rx.is_empty() {
            match &mut request.body {
                BodyReader::Length(left) => {
                    let n = (exchange.rx.len() as u64).min(*left) as usize;
                    let n = n.min(cap - leg.tx.len());
                    leg.tx.extend_from_slice(&exchange.rx[..n]);
                    exchange.rx.drain(..n);
                    *left -= n as u64;
                    if *left == 0 {
                        request.body = BodyReader::Done;
                    }
                    progress = true;
                }
                BodyReader::Chunked(decoder) => match decoder.decode(&exchange.rx) {
                    Ok((0, None)) => break,
                    Ok((used, chunk)) => {
                        let writer = &mut request.body_writer;
                        match chunk {
                            Some(Chunk::Data(data)) => write_chunk(&mut leg.tx, data),
                            Some(Chunk::Trailer(line)) => emit_trailer(&mut leg.tx, writer, line),
                            Some(Chunk::End) => {
                                emit_end(&mut leg.tx, writer);
                                request.body = BodyReader::Done;
                            }
                            None => {}
                        }
                        exchange.rx.drain(..used);
                        progress = true;
                    }
                    Err(error) => return Err(error),
                },
                BodyReader::UntilClose | BodyReader::Done => break,
            }
        }
        if !request.body.is_done() && exchange.eof && exchange.rx.is_empty() {
            // The client stopped halfway through its body.
            exchange.closing = true;
            request.keep_alive = false;
            request.body = BodyReader::Done;
            leg.eof = true;
            progress = true;
        }
        Ok(progress)
    }

    /// Parse the backend's response head, then relay body bytes.
    fn advance_response<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let cap = self.settings.buffer;
        let limits = self.settings.limits.clone();
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return false;
        };
        let Some(leg) = request.backend.as_mut() else {
            return false;
        };
        match &mut request.response {
            ResponseState::Done => false,
            ResponseState::Head => {
                let head = match http1::parse_response(&leg.rx, &request.method, &limits) {
                    Ok(Some(head)) => head,
                    Ok(None) if leg.eof => {
                        self.backend_failed(io, id, now);
                        return true;
                    }
                    Ok(None) => return false,
                    Err(error) => {
                        tracing::debug!(%error, endpoint = %leg.endpoint, "bad backend response");
                        self.fail_request(io, id, Cause::UpstreamProtocol, now);
                        return true;
                    }
                };
                leg.rx.drain(..head.head_len);
                if (100..200).contains(&head.status) {
                    // Interim responses (we already answered 100 ourselves).
                    return true;
                }
                let status = head.status;
                let (bytes, reader, writer) = client_response_head(
                    &head,
                    request.version,
                    request.keep_alive && !exchange.closing,
                    &request.response_headers,
                );
                if writer == BodyWriter::Raw && matches!(reader, BodyReader::UntilClose) {
                    request.keep_alive = false;
                    exchange.closing = true;
                }
                if !request.keep_alive {
                    exchange.closing = true;
                }
                exchange.tx.extend_from_slice(&bytes);
                self.metrics.response(StatusClass::of(status));
                if let Some(route) = &request.route {
                    let backend = request.backend_name.as_ref();
                    self.metrics
                        .route_response(route, backend, StatusClass::of(status));
                }
                self.metrics
                    .observe_latency(now.duration_since(request.started));
                request.replay = None;
                request.response = ResponseState::Body {
                    reader,
                    writer,
                    backend_keep_alive: head.keep_alive,
                };
                true
            }
            ResponseState::Body {
                reader,
                writer,
                backend_keep_alive,
            } => {
                let mut progress = false;
                while !reader.is_done() && exchange.tx.len() < cap {
                    match reader {
                        BodyReader::Length(left) => {
                            if leg.rx.is_empty() {
                                break;
                            }
                            let n = (leg.rx.len() as u64).min(*left) as usize;
                            let n = n.min(cap - exchange.tx.len());
                            exchange.tx.extend_from_slice(&leg.rx[..n]);
                            leg.rx.drain(..n);
                            *left -= n as u64;
                            if *left == 0 {
                                *reader = BodyReader::Done;
                            }
                            progress = true;
                        }
                        BodyReader::Chunked(decoder) => match decoder.decode(&leg.rx) {
                            Ok((0, None)) => break,
                            Ok((used, chunk)) => {
                                match chunk {
                                    Some(Chunk::Data(data)) => {
                                        emit_body(&mut exchange.tx, *writer, data)
                                    }
                                    Some(Chunk::Trailer(line)) => {
                                        emit_trailer(&mut exchange.tx, writer, line)
                                    }
                                    Some(Chunk::End) => {
                                        emit_end(&mut exchange.tx, writer);
                                        *reader = BodyReader::Done;
                                    }
                                    None => {}
                                }
                                leg.rx.drain(..used);
                                progress = true;
                            }
                            Err(_) => {
                                // A broken body from the backend: the client
                                // cannot be told cleanly any more.
                                self.metrics.failure(Cause::UpstreamProtocol);
                                self.close_exchange(io, id, true);
                                return true;
                            }
                        },
                        BodyReader::UntilClose => {
                            if leg.rx.is_empty() {
                                if leg.eof {
                                    emit_end(&mut exchange.tx, writer);
                                    *reader = BodyReader::Done;
                                    *backend_keep_alive = false;
                                    progress = true;
                                }
                                break;
                            }
                            let n = leg.rx.len().min(cap - exchange.tx.len());
                            emit_body(&mut exchange.tx, *writer, &leg.rx[..n]);
                            leg.rx.drain(..n);
                            progress = true;
                        }
                        BodyReader::Done => break,
                    }
                }
                if !reader.is_done() && leg.eof && leg.rx.is_empty() {
                    // The backend closed mid-body: the client's response is
                    // truncated; the only honest signal left is to abort.
                    self.metrics.failure(Cause::ResetDuringResponse);
                    self.close_exchange(io, id, true);
                    return true;
                }
                if reader.is_done() {
                    let reusable = *backend_keep_alive && leg.rx.is_empty() && !leg.eof;
                    request.response = ResponseState::Done;
                    let reusable = reusable && request.body.is_done();
                    if let Some(leg) = request.backend.take() {
                        self.release_backend(io, leg, reusable, now);
                    }
                    return true;
                }
                progress
            }
        }
    }

    /// The backend connection failed or closed before a complete response
    /// head: retry once on a fresh connection if the request may be
    /// replayed, else answer 502.
    fn backend_failed<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize, now: Instant) {
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        let leg = request.backend.as_ref().expect("backend leg");
        let cause = if leg.connected {
            Cause::ResetBeforeResponse
        } else {
            Cause::ConnectRefused
        };
        // A pooled connection the backend closed while it sat idle: the
        // request (no body, so still at hand) goes again on a new one —
        // the one retry a keep-alive race deserves.
        if leg.reused && !leg.answered && cause.replay() != Replay::Never {
            if let Some(replay) = request.replay.take() {
                let (endpoint, protocol, old) = (leg.endpoint, leg.protocol, leg.conn);
                request.backend = None;
                request.request_end = None;
                self.let_go_backend(io, old, protocol, true);
                match io.connect(endpoint, protocol) {
                    Some(conn) => {
                        self.roles.insert(conn, Role::Backend(id));
                        if protocol == BackendProtocol::Http1 {
                            self.metrics.backend_connection_opened();
                        }
                        let request = self.exchanges[id].request.as_mut().expect("in flight");
                        request.backend = Some(BackendLeg {
                            conn,
                            endpoint,
                            protocol,
                            reused: false,
                            rx: Vec::new(),
                            tx: replay,
                            eof: false,
                            answered: false,
                            opened: now,
                            connected: false,
                            heard: now,
                            sent: now,
                        });
                    }
                    None => self.refuse(id, Cause::ConnectFailed),
                }
                return;
            }
        }
        self.fail_request(io, id, cause, now);
    }

    /// The request cannot complete for `cause`: answer its status if
    /// nothing was sent yet, otherwise abort the client connection.
    fn fail_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        cause: Cause,
        _now: Instant,
    ) {
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return;
        };
        tracing::debug!(%cause, route = ?request.route, "request failed");
        self.metrics.failure(cause);
        let status = cause.status();
        if let Some(leg) = request.backend.take() {
            self.let_go_backend(io, leg.conn, leg.protocol, true);
        }
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("checked");
        if matches!(request.response, ResponseState::Head) {
            // The client's body may be half sent: do not try to find the
            // next request after it.
            if !request.body.is_done() {
                exchange.closing = true;
                exchange.eof = true;
                exchange.rx.clear();
            }
            self.local_response(id, status, &error_body(status), &[]);
        } else {
            self.close_exchange(io, id, true);
        }
    }

    /// Answer the in-flight request with the status of `cause`, counted.
    fn refuse(&mut self, id: usize, cause: Cause) {
        self.metrics.failure(cause);
        let status = cause.status();
        self.local_response(id, status, &error_body(status), &[]);
    }

    /// Answer the in-flight request from the gateway itself.
    fn local_response(&mut self, id: usize, status: u16, body: &str, extra: &[(&str, String)]) {
        self.metrics.response(StatusClass::of(status));
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("in flight");
        if let Some(route) = &request.route {
            let backend = request.backend_name.as_ref();
            self.metrics
                .route_response(route, backend, StatusClass::of(status));
        }
        let close = !request.keep_alive || exchange.closing;
        let modifiers = std::mem::take(&mut request.response_headers);
        request.response = ResponseState::Done;
        let is_head = request.method.eq_ignore_ascii_case("HEAD");
        let mut headers = plain_headers(extra);
        for m in &modifiers {
            m.apply(&mut headers);
        }
        write_response(
            &mut exchange.tx,
            status,
            &headers,
            if is_head { "" } else { body },
            body.len(),
            close,
        );
        if close {
            exchange.closing = true;
        }
    }

    /// An error outside any request (a bad request head, a head that
    /// never completed), after which the connection closes.
    fn answer_and_close(&mut self, id: usize, status: u16) {
        let exchange = &mut self.exchanges[id];
        let body = error_body(status);
        write_response(
            &mut exchange.tx,
            status,
            &plain_headers(&[]),
            &body,
            body.len(),
            true,
        );
        exchange.closing = true;
    }

    /// Both directions of the in-flight request are done: release it.
    fn finish_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return false;
        };
        if !matches!(request.response, ResponseState::Done) {
            return false;
        }
        if !request.body.is_done() {
            // Answered before the body ended (an error, a redirect): the
            // rest of the body must still be read past, or the connection
            // closed.
            if request.backend.is_none() {
                discard_body(&mut request.body, &mut exchange.rx, &mut exchange.closing);
            }
            if !request.body.is_done() {
                if exchange.closing {
                    exchange.rx.clear();
                    exchange.eof = true;
                    request.body = BodyReader::Done;
                } else {
                    return false;
                }
            }
        }
        let request = exchange.request.take().expect("checked");
        exchange.idle_since = now;
        // A pipelined request already waiting starts its head clock now.
        exchange.head_started = (!exchange.rx.is_empty()).then_some(now);
        if let Some(leg) = request.backend {
            self.release_backend(io, leg, false, now);
        }
        true
    }

    /// Return a backend connection to the pool, or close it.
    fn release_backend<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        leg: BackendLeg<C>,
        reusable: bool,
        now: Instant,
    ) {
        let idle = self.pool.entry((leg.endpoint, leg.protocol)).or_default();
        if reusable && leg.tx.is_empty() && idle.len() < self.settings.pool_max_idle {
            self.roles
                .insert(leg.conn, Role::Idle((leg.endpoint, leg.protocol)));
            idle.push((leg.conn, now));
        } else {
            self.let_go_backend(io, leg.conn, leg.protocol, false);
        }
    }

    /// Close the client connection once it has nothing left to do.
    fn maybe_close<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize) {
        let Some(exchange) = self.exchanges.get(id) else {
            return;
        };
        let done = exchange.request.is_none() && exchange.tx.is_empty();
        let client_gone = exchange.eof && exchange.rx.is_empty();
        if done && (exchange.closing || client_gone) {
            self.close_exchange(io, id, false);
        }
    }

    /// The client connection failed (reset): what it had in flight ends.
    fn client_gone<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize) {
        if self.exchanges[id].request.is_some() {
            self.metrics.failure(Cause::ClientGone);
        }
        self.close_exchange(io, id, true);
    }

    fn close_exchange<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize, abort: bool) {
        let Some(exchange) = self.exchanges.try_remove(id) else {
            return;
        };
        self.roles.remove(&exchange.client);
        if abort {
            io.abort(exchange.client);
        } else {
            io.close(exchange.client);
        }
        if let Some(leg) = exchange.request.and_then(|r| r.backend) {
            self.let_go_backend(io, leg.conn, leg.protocol, true);
        }
        if !exchange.is_stream {
            self.metrics.connection_closed();
        }
    }
}

/// What an exchange has waited too long for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overdue {
    /// A kept-alive connection with nothing to do: close it quietly.
    Idle,
    Failed(Cause),
}

/// Which deadline of `exchange`, if any, has passed at `now`. Each phase's
/// clock starts where that phase does, so a long upload never eats into
/// the response head's time, and a slow but steady body never expires.
fn overdue<C>(exchange: &Exchange<C>, d: &Deadlines, now: Instant) -> Option<Overdue> {
    let past = |since: Instant, limit: Duration| now.saturating_duration_since(since) >= limit;
    let failed = |cause| Some(Overdue::Failed(cause));
    let Some(request) = &exchange.request else {
        if !exchange.tx.is_empty() && past(exchange.written, d.response_body) {
            return failed(Cause::ClientNotReading);
        }
        return match exchange.head_started {
            Some(start) if past(start, d.request_head) => failed(Cause::RequestHeadTimeout),
            Some(_) => None,
            None if !exchange.is_stream
                && exchange.tx.is_empty()
                && past(exchange.idle_since, d.keep_alive) =>
            {
                Some(Overdue::Idle)
            }
            None => None,
        };
    };
    let body_open = !request.body.is_done();
    match (&request.response, &request.backend) {
        (ResponseState::Head, Some(leg)) => {
            if !leg.connected {
                return past(leg.opened, d.connect)
                    .then_some(Overdue::Failed(Cause::ConnectTimeout));
            }
            match request.request_end {
                Some(end) => past(end, d.response_head)
                    .then_some(Overdue::Failed(Cause::ResponseHeadTimeout)),
                // Still sending: a pause is the client's, unless the
                // backend holds bytes it does not take.
                None => {
                    let moved = request.body_moved.max(leg.sent);
                    if !past(moved, d.request_body) {
                        None
                    } else if leg.tx.is_empty() && body_open {
                        failed(Cause::RequestBodyIdle)
                    } else {
                        failed(Cause::ResponseHeadTimeout)
                    }
                }
            }
        }
        (ResponseState::Body { .. }, Some(leg)) => {
            let mut moved = leg.heard.max(exchange.written);
            if body_open {
                moved = moved.max(request.body_moved);
            }
            if !past(moved, d.response_body) {
                None
            } else if exchange.tx.is_empty() {
                failed(Cause::ResponseBodyIdle)
            } else {
                failed(Cause::ClientNotReading)
            }
        }
        _ => {
            if !exchange.tx.is_empty() && past(exchange.written, d.response_body) {
                failed(Cause::ClientNotReading)
            } else if body_open && past(request.body_moved, d.request_body) {
                failed(Cause::RequestBodyIdle)
            } else {
                None
            }
        }
    }
}

/// Read past a body nobody forwards; too much of it closes the connection.
fn discard_body(body: &mut BodyReader, rx: &mut Vec<u8>, closing: &mut bool) -> bool {
    let before = rx.len();
    match body {
        BodyReader::Length(left) => {
            let n = (rx.len() as u64).min(*left) as usize;
            rx.drain(..n);
            *left -= n as u64;
            if *left == 0 {
                *body = BodyReader::Done;
            }
        }
        BodyReader::Chunked(decoder) => loop {
            match decoder.decode(rx) {
                Ok((0, None)) => break,
                Ok((used, chunk)) => {
                    let end = chunk == Some(Chunk::End);
                    rx.drain(..used);
                    if end {
                        *body = BodyReader::Done;
                        break;
                    }
                }
                Err(_) => {
                    rx.clear();
                    *closing = true;
                    *body = BodyReader::Done;
                    break;
                }
            }
        },
        BodyReader::UntilClose | BodyReader::Done => {}
    }
    rx.len() != before
}

fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn emit_body(out: &mut Vec<u8>, writer: BodyWriter, data: &[u8]) {
    match writer {
        BodyWriter::Raw => out.extend_from_slice(data),
        BodyWriter::Chunked | BodyWriter::ChunkedTrailers => write_chunk(out, data),
    }
}

/// A trailer field passes through to a chunked body; a body sent with a
/// length or until close has nowhere to carry it.
fn emit_trailer(out: &mut Vec<u8>, writer: &mut BodyWriter, line: &[u8]) {
    match writer {
        BodyWriter::Raw => return,
        BodyWriter::Chunked => {
            out.extend_from_slice(b"0\r\n");
            *writer = BodyWriter::ChunkedTrailers;
        }
        BodyWriter::ChunkedTrailers => {}
    }
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// The end of a body: the last chunk (if no trailer wrote it) and the
/// empty line.
fn emit_end(out: &mut Vec<u8>, writer: &mut BodyWriter) {
    match writer {
        BodyWriter::Raw => {}
        BodyWriter::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        BodyWriter::ChunkedTrailers => out.extend_from_slice(b"\r\n"),
    }
}

/// The request head the backend gets: hop-by-hop fields dropped, filters
/// applied, X-Forwarded-For/-Proto added, framing restated.
fn backend_request_head(
    head: &RequestHead,
    target: &str,
    host: &str,
    peer: SocketAddr,
    action: &RuleAction,
    backend: &Backend,
) -> Vec<u8> {
    let connection = http1::connection_tokens(&head.headers).unwrap_or_default();
    let mut headers: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .filter(|(n, _)| {
            !http1::is_hop_by_hop(n, &connection)
                && !n.eq_ignore_ascii_case("content-length")
                && !n.eq_ignore_ascii_case("expect")
                && !n.eq_ignore_ascii_case("host")
        })
        .cloned()
        .collect();
    headers.insert(0, ("Host".into(), host.as_bytes().to_vec()));
    let peer_ip = peer.ip().to_string();
    match headers
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
    {
        Some((_, v)) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer_ip.as_bytes());
        }
        None => headers.push(("X-Forwarded-For".into(), peer_ip.into_bytes())),
    }
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("x-forwarded-proto"));
    headers.push(("X-Forwarded-Proto".into(), b"http".to_vec()));
    if http1::accepts_trailers(head) {
        // gRPC servers want it; trailers are relayed.
        headers.push(("TE".into(), b"trailers".to_vec()));
    }
    action.request_headers.apply(&mut headers);
    backend.request_headers.apply(&mut headers);
    let mut out = Vec::with_capacity(256 + target.len());
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &headers {
        push_field(&mut out, name, value);
    }
    match head.framing {
        BodyFraming::Empty => {
            if !matches!(head.method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS") {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
        BodyFraming::Length(n) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The response head the client gets, and how the body is carried.
fn client_response_head(
    head: &ResponseHead,
    client_version: Version,
    keep_alive: bool,
    modifiers: &[HeaderModifier],
) -> (Vec<u8>, BodyReader, BodyWriter) {
    let connection = http1::connection_tokens(&head.headers).unwrap_or_default();
    let mut headers: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .filter(|(n, _)| {
            !http1::is_hop_by_hop(n, &connection) && !n.eq_ignore_ascii_case("content-length")
        })
        .cloned()
        .collect();
    for m in modifiers {
        m.apply(&mut headers);
    }
    let (reader, writer, framing) = match head.framing {
        ResponseFraming::Empty => {
            // HEAD and 304 keep the backend's Content-Length as metadata.
            let length = head
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| format!("Content-Length: {}\r\n", String::from_utf8_lossy(v)));
            let framing = match (length, head.status) {
                (Some(l), _) => l,
                (None, 204 | 304) => String::new(),
                (None, _) => "Content-Length: 0\r\n".into(),
            };
            (BodyReader::Done, BodyWriter::Raw, framing)
        }
        ResponseFraming::Length(n) => (
            BodyReader::Length(n),
            BodyWriter::Raw,
            format!("Content-Length: {n}\r\n"),
        ),
        ResponseFraming::Chunked | ResponseFraming::UntilClose => {
            let reader = match head.framing {
                ResponseFraming::Chunked => BodyReader::Chunked(ChunkedDecoder::new(Limits {
                    max_body: u64::MAX,
                    ..Limits::default()
                })),
                _ => BodyReader::UntilClose,
            };
            if client_version == Version::Http11 {
                (
                    reader,
                    BodyWriter::Chunked,
                    "Transfer-Encoding: chunked\r\n".into(),
                )
            } else {
                (reader, BodyWriter::Raw, String::new())
            }
        }
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", head.status, head.reason).as_bytes());
    for (name, value) in &headers {
        push_field(&mut out, name, value);
    }
    out.extend_from_slice(framing.as_bytes());
    let close = !keep_alive
        || (client_version == Version::Http10
            && writer == BodyWriter::Raw
            && matches!(reader, BodyReader::UntilClose | BodyReader::Chunked(_)));
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, reader, writer)
}

/// The fields of a response the gateway writes itself: `extra`, then a
/// plain-text content type.
fn plain_headers(extra: &[(&str, String)]) -> Vec<(String, Vec<u8>)> {
    extra
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .chain([("Content-Type".to_string(), b"text/plain".to_vec())])
        .collect()
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(String, Vec<u8>)],
    body: &str,
    length: usize,
    close: bool,
) {
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    for (name, value) in headers {
        push_field(out, name, value);
    }
    out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// The short body of an error the gateway answers itself: the reason, no
/// internal detail.
fn error_body(status: u16) -> String {
    format!("{}\n", reason_phrase(status).to_ascii_lowercase())
}

/// Query parameters in order, percent-decoded (`+` stays as sent: the
/// Gateway API compares values as sent).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
