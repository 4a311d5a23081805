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

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub limits: Limits,
    /// Opening a backend connection.
    pub connect_timeout: Duration,
    /// From the request's end to the response head.
    pub response_timeout: Duration,
    /// A client connection with no request in flight, and a whole request
    /// head, must arrive within this.
    pub client_idle_timeout: Duration,
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
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            client_idle_timeout: Duration::from_secs(60),
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
    deadline: Instant,
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
    /// For the idle/head timeout.
    idle_since: Instant,
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
            let Some(exchange) = self.exchanges.get_mut(id) else {
                continue;
            };
            match &exchange.request {
                Some(request) if now >= request.deadline => {
                    let status = 504;
                    if matches!(request.response, ResponseState::Head) {
                        tracing::debug!(route = ?request.route, "backend timed out");
                        self.fail_request(io, id, status, now);
                        self.drive(io, id, now);
                    }
                }
                None if now.duration_since(exchange.idle_since)
                    >= self.settings.client_idle_timeout =>
                {
                    let partial = !exchange.rx.is_empty();
                    if partial {
                        // A head that never completed: tell the client.
                        self.answer_and_close(id, 408);
                        self.flush_client(io, id);
                    }
                    self.close_exchange(io, id, false);
                }
                _ => {}
            }
        }
        let idle = self.settings.pool_idle_timeout;
        for conns in self.pool.values_mut() {
            conns.retain(|&(conn, since)| {
                let keep = now.duration_since(since) < idle;
                if !keep {
                    io.close(conn);
                    self.roles.remove(&conn);
                }
                keep
            });
        }
        self.pool.retain(|_, c| !c.is_empty());
        self.metrics
            .set_pool_idle(self.pool.values().map(Vec::len).sum());
    }

    /// Close every client connection that has no request in flight and
    /// every idle backend connection, and stop taking new requests on the
    /// others (graceful drain). Returns whether any request is still in
    /// flight.
    pub fn drain<T: Transport<Conn = C>>(&mut self, io: &mut T, now: Instant) -> bool {
        // Idle backend connections are closed politely, so the backends do
        // not hold them open after the gateway is gone.
        for (_, conns) in self.pool.drain() {
            for (conn, _) in conns {
                self.roles.remove(&conn);
                io.close(conn);
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
            self.roles.remove(&conn);
            io.abort(conn);
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
                    Step::FlushClient => self.flush_client(io, id),
                    Step::FlushBackend => self.flush_backend(io, id),
                    Step::ReadClient => self.read_client(io, id),
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
        self.maybe_close(io, id);
    }

    fn flush_client<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize) -> bool {
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
                true
            }
            Err(ConnectionGone) => {
                self.close_exchange(io, id, true);
                true
            }
        }
    }

    fn flush_backend<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize) -> bool {
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
                true
            }
            // Seen again on the read side as a failure.
            Err(ConnectionGone) => {
                leg.eof = true;
                true
            }
        }
    }

    fn read_client<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize) -> bool {
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
                true
            }
            ReadOutcome::WouldBlock => false,
            ReadOutcome::Closed => {
                exchange.eof = true;
                true
            }
            ReadOutcome::Failed => {
                self.close_exchange(io, id, true);
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
                self.fail_request(io, id, error.status(), now);
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
            deadline: now + self.settings.response_timeout,
            route: None,
            backend_name: None,
        };
        if !keep_alive {
            exchange.closing = true;
        }
        let listener = config.listener(exchange.local_port, &host);
        let hit = listener.and_then(|l| l.routes.find(&view));
        let Some(hit) = hit else {
            exchange.request = Some(request);
            self.local_response(id, 404, "no route\n", &[]);
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
            self.local_response(id, 500, "route not servable\n", &[]);
            return;
        }
        let Some(backend) = action.backends.pick() else {
            exchange.request = Some(request);
            self.local_response(id, 500, "no backend\n", &[]);
            return;
        };
        if backend.invalid.is_some() {
            exchange.request = Some(request);
            self.local_response(id, 500, "backend not resolved\n", &[]);
            return;
        }
        let Some(endpoint) = backend.endpoint() else {
            exchange.request = Some(request);
            self.local_response(id, 503, "no healthy endpoint\n", &[]);
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
        match self.backend_conn(io, id, endpoint, protocol, now) {
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
                });
                self.metrics.backend_request();
            }
            None => {
                self.local_response(id, 503, "backend unavailable\n", &[]);
            }
        }
    }

    /// A pooled connection to `endpoint`, or a new one.
    fn backend_conn<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        endpoint: SocketAddr,
        protocol: BackendProtocol,
        now: Instant,
    ) -> Option<(C, bool)> {
        if let Some(conns) = self.pool.get_mut(&(endpoint, protocol)) {
            if let Some((conn, _)) = conns.pop() {
                self.roles.insert(conn, Role::Backend(id));
                return Some((conn, true));
            }
        }
        let conn = io.connect(endpoint, protocol)?;
        self.roles.insert(conn, Role::Backend(id));
        let request = self.exchanges[id].request.as_mut()?;
        request.deadline = now + self.settings.connect_timeout + self.settings.response_timeout;
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
                        self.fail_request(io, id, 502, now);
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
        if leg.reused && !leg.answered {
            if let Some(replay) = request.replay.take() {
                let (endpoint, protocol) = (leg.endpoint, leg.protocol);
                let old = leg.conn;
                self.roles.remove(&old);
                io.abort(old);
                request.backend = None;
                // A stale pooled connection: the request never reached a
                // backend; send it again on a new one.
                if let Some(conn) = io.connect(endpoint, protocol) {
                    self.roles.insert(conn, Role::Backend(id));
                    let request = self.exchanges[id].request.as_mut().expect("in flight");
                    request.deadline =
                        now + self.settings.connect_timeout + self.settings.response_timeout;
                    request.backend = Some(BackendLeg {
                        conn,
                        endpoint,
                        protocol,
                        reused: false,
                        rx: Vec::new(),
                        tx: replay,
                        eof: false,
                        answered: false,
                    });
                    return;
                }
                self.local_response(id, 502, "backend unavailable\n", &[]);
                return;
            }
        }
        self.fail_request(io, id, 502, now);
    }

    /// The request cannot complete: answer `status` if nothing was sent
    /// yet, otherwise abort the client connection.
    fn fail_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        status: u16,
        _now: Instant,
    ) {
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return;
        };
        if let Some(leg) = request.backend.take() {
            self.roles.remove(&leg.conn);
            io.abort(leg.conn);
        }
        if status >= 500 {
            self.metrics.backend_error();
        }
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
            self.roles.remove(&leg.conn);
            io.close(leg.conn);
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
            self.roles.remove(&leg.conn);
            io.abort(leg.conn);
        }
        if !exchange.is_stream {
            self.metrics.connection_closed();
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
