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
//!
//! The phases, a module each, in the order a request meets them:
//! [`decode`] (the next head, or the hand-over to HTTP/2) → [`route`]
//! (listener and rule; redirects and refusals answered here) → request
//! filters ([`filters`]) → upstream selection and connect or pool checkout
//! ([`upstream`]) → [`forward`] (bodies both ways) → response filters
//! ([`filters`]) → back to the client. What the gateway answers itself is
//! in [`answer`], every failure named by its [`Cause`]; every phase has a
//! deadline ([`deadline`]). This module holds the state and the driver:
//! the socket steps and the loop that runs them.

mod answer;
mod deadline;
mod decode;
mod filters;
mod forward;
mod route;
mod upstream;

pub use deadline::Deadlines;
use deadline::{overdue, Overdue};
use filters::{client_response_head, plain_headers, push_field};
use forward::{BodyReader, BodyWriter};
use route::Routed;
use upstream::{Cursors, PoolKey};

use crate::config::{BackendProtocol, GatewayConfig, HeaderModifier};
use crate::error::{Cause, Phase};
use crate::http1::{self, BodyFraming, ChunkedDecoder, Limits, RequestHead, Version};
use crate::metrics::ProxyMetrics;
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

impl<C> BackendLeg<C> {
    /// A leg about to carry `head` (and the body after it); a pooled
    /// connection (`reused`) is connected already.
    fn new(
        conn: C,
        endpoint: SocketAddr,
        protocol: BackendProtocol,
        reused: bool,
        head: Vec<u8>,
        now: Instant,
    ) -> Self {
        Self {
            conn,
            endpoint,
            protocol,
            reused,
            rx: Vec::new(),
            tx: head,
            eof: false,
            answered: false,
            opened: now,
            connected: reused,
            heard: now,
            sent: now,
        }
    }
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

impl<C> InFlight<C> {
    /// A request whose head just arrived, before any phase ran.
    fn new(head: &RequestHead, keep_alive: bool, limits: &Limits, now: Instant) -> Self {
        let body = match head.framing {
            BodyFraming::Empty => BodyReader::Done,
            BodyFraming::Length(n) => BodyReader::Length(n),
            BodyFraming::Chunked => BodyReader::Chunked(ChunkedDecoder::new(limits.clone())),
        };
        Self {
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
        }
    }
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

    /// A request head arrived: the phases that start it — route match,
    /// upstream selection, request filters, connect or pool checkout.
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
        let host = head
            .values("host")
            .next()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        let keep_alive = head.keep_alive && !exchange.closing;
        exchange.head_started = None;
        exchange.closing |= !keep_alive;
        let mut request = InFlight::new(&head, keep_alive, &self.settings.limits, now);
        let config = self.config.load();
        let matched = match route::route(&config, &head, &host, exchange.local_port) {
            Routed::Forward(matched) => matched,
            Routed::Redirect {
                route,
                status,
                location,
                response_headers,
            } => {
                request.route = Some(route.clone());
                request.response_headers.push(response_headers.clone());
                exchange.request = Some(request);
                self.local_response(id, status, "", &[("Location", location)]);
                return;
            }
            Routed::Refused { route, cause } => {
                request.route = route.cloned();
                exchange.request = Some(request);
                self.refuse(id, cause);
                return;
            }
        };
        let action = matched.action;
        request.route = Some(action.route.clone());
        exchange.request = Some(request);
        let (backend, endpoint) = match self.cursors.select(&config, action) {
            Ok(chosen) => chosen,
            Err(cause) => {
                self.refuse(id, cause);
                return;
            }
        };
        let exchange = &mut self.exchanges[id];
        let out_head = filters::request_to_backend(&head, &host, exchange.peer, &matched, backend);
        let request = exchange.request.as_mut().expect("just set");
        request
            .response_headers
            .push(action.response_headers.clone());
        request
            .response_headers
            .push(backend.response_headers.clone());
        request.backend_name = Some(backend.name.clone());
        if head.framing == BodyFraming::Chunked {
            request.body_writer = BodyWriter::Chunked;
        }
        if head.expect_continue && !request.body.is_done() {
            exchange
                .tx
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let protocol = backend.protocol;
        drop(config);
        self.open_leg(io, id, endpoint, protocol, out_head, now);
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
        self.expire_idle_pool(io, now);
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
