//! The reverse proxy, one core for both transports and both protocols.
//!
//! [`Proxy`] owns no socket and no clock: a driver (the AF_XDP worker on the
//! userspace stack, or the kernel-socket worker) implements [`Transport`],
//! tells the proxy which connections may have progressed
//! ([`Proxy::on_io`]), accepted ([`Proxy::accept`]) and what time it is
//! ([`Proxy::tick`]). Everything between — framing, routing, filters,
//! backend pools, timeouts, error responses — happens here, once.
//!
//! Each client connection (or HTTP/2 stream) is an [`Exchange`]: at most
//! one request in flight at a time (pipelined requests wait in the buffer
//! and are answered in order), its body streamed to one backend and the
//! response streamed back, with bounded buffers on both legs so a slow
//! side holds the other back instead of growing memory. Every phase works
//! on the message model ([`crate::message`]): the HTTP/1.1 codec
//! ([`h1`], [`body`]) decodes sockets' bytes into it and encodes it back,
//! and HTTP/2 streams arrive as messages on pipes ([`crate::http2::pipe`]).
//!
//! The phases, a module each, in the order a request meets them:
//! [`decode`] (the next head, or the hand-over to HTTP/2) → [`admit`]
//! (the head in canonical form: path, field names, forwarding) → [`route`]
//! (listener and rule; redirects and refusals answered here) → request
//! filters ([`filters`]) → upstream selection and connect or pool checkout
//! ([`upstream`]) → [`forward`] (bodies both ways) → response filters
//! ([`filters`]) → back to the client. What the gateway answers itself is
//! in [`answer`], every failure named by its [`Cause`]; every phase has a
//! deadline ([`deadline`]). This module holds the state and the driver:
//! the socket steps and the loop that runs them.

mod admit;
mod affinity;
mod answer;
mod attempt;
mod balance;
mod body;
mod budget;
mod checks;
mod cors;
mod deadline;
mod decode;
mod filters;
mod forward;
mod h1;
mod health;
mod mirror;
mod route;
mod session;
mod upstream;

use admit::Admitted;
pub use admit::{AdmitSettings, ForwardedPolicy, UnderscoreHeaders};
use attempt::{Attempt, KeptMessage, Resend, Upstream};
use balance::Load;
pub use balance::LoadBalancing;
use body::{BodyReader, ReadError};
use budget::RetryBudget;
pub use budget::RetryBudgetSettings;
use checks::ActiveChecks;
pub use deadline::Deadlines;
use deadline::{overdue, Overdue};
use h1::{ClientFraming, Coding};
use health::PassiveHealth;
use route::Routed;
use upstream::{Cursors, PoolKey, Selected};

use crate::config::{Backend, BackendProtocol, GatewayConfig};
use crate::error::{Cause, Phase};
use crate::gate::ConnectionGate;
use crate::http1::{Limits, RequestHead};
use crate::http2::pipe::{CoreEnd, Message, Pipes, StreamGone};
use crate::message::{BodyEvent, BodyLength, Request, Response};
use crate::metrics::{OutOfRotation, ProxyMetrics};
use arc_swap::ArcSwap;
use bytes::BytesMut;
use foldhash::{HashMap, HashMapExt};
use http::Method;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
    /// Whether the connection's handshake completed (and it was not
    /// reset since): what a TCP health check asks.
    fn established(&mut self, conn: Self::Conn) -> bool;
    /// Close after what was written is delivered (FIN), and forget it.
    fn close(&mut self, conn: Self::Conn);
    /// Drop at once (RST), and forget it.
    fn abort(&mut self, conn: Self::Conn);
}

/// How often a driver calls [`Proxy::tick`]: the resolution of every
/// timeout.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// Rounds of flush, read and advance per drive of one exchange.
const DRIVE_ROUNDS: usize = 64;

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
    /// Attempts a request may make, the first included, when a backend
    /// refuses or times out a connection or resets one before answering
    /// (nginx's `proxy_next_upstream error timeout`, bounded).
    pub max_attempts: u8,
    /// The most of a request (head and body) kept to send again under a
    /// route's `retry`; a larger request is not retried.
    pub retry_buffer: usize,
    pub retry_budget: RetryBudgetSettings,
    /// How an endpoint is picked among a backend's.
    pub load_balancing: LoadBalancing,
    /// Circuit breaker: requests a worker has in flight to one endpoint
    /// at most; a request finding every endpoint at it gets 503 at once.
    pub max_requests_per_endpoint: u32,
    /// What a request head must be, or is made, before route match.
    pub admit: AdmitSettings,
    /// Client connection limits and the memory budget, shared by every
    /// worker.
    pub gate: Arc<ConnectionGate>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            deadlines: Deadlines::default(),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 1024,
            buffer: 64 * 1024,
            max_attempts: 3,
            retry_buffer: 64 * 1024,
            retry_budget: RetryBudgetSettings::default(),
            load_balancing: LoadBalancing::default(),
            max_requests_per_endpoint: 1024,
            admit: AdmitSettings::default(),
            gate: Arc::default(),
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

/// What carries one side of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wire<C> {
    /// A socket of the driver's transport, speaking HTTP/1.x.
    Socket(C),
    /// A pipe to an HTTP/2 stream.
    Pipe(usize),
}

/// Where a connection or pipe belongs.
#[derive(Clone, Copy, Debug)]
enum Role {
    Client(usize),
    Backend(usize),
    Idle(PoolKey),
}

/// How a body is written to the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyWriter {
    /// As HTTP/1.1 bytes on a socket.
    Bytes(Coding),
    /// As events on a pipe.
    Events,
    /// Not at all (a response to HEAD, a head with no body).
    Nothing,
}

impl BodyWriter {
    fn of(coding: Coding) -> Self {
        match coding {
            Coding::Nothing => Self::Nothing,
            coding => Self::Bytes(coding),
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
    method: Method,
    /// What the client's connection allows the response (HTTP/1.x).
    framing: ClientFraming,
    started: Instant,
    /// The request body from the client.
    body: BodyReader,
    /// The request body to the backend.
    body_writer: BodyWriter,
    /// The rule and backend, once matched and chosen.
    upstream: Option<Upstream>,
    /// The live attempt at an endpoint.
    attempt: Option<Attempt<C>>,
    /// Attempts begun, the live one included.
    attempts: u8,
    /// Endpoints this request failed on: another attempt avoids them.
    failed: Vec<SocketAddr>,
    /// The next attempt, waiting for its back-off.
    pending: Option<attempt::Retry>,
    response: ResponseState,
    /// The request as sent to the backend (its head, and under a route's
    /// `retry` its body so far), kept while another attempt could send it
    /// again ([`Self::keep_for_replay`], [`Self::keep_message_for_replay`]).
    replay: Option<Resend>,
    /// How much of a request is kept for replay: 0 keeps bodyless heads
    /// only; a route's `retry` raises it to
    /// [`ProxySettings::retry_buffer`], bodies included.
    replay_limit: usize,
    /// The route's request timeout, from the request head.
    deadline: Option<Instant>,
    /// Pipes of mirrored copies still to be fed this request's body.
    mirrors: Vec<usize>,
    /// The request's `Origin`, when the rule's CORS filter allows it: the
    /// response gets the CORS fields.
    cors_origin: Option<http::HeaderValue>,
    /// The last time request body bytes came from the client.
    body_moved: Instant,
    /// When the whole request reached the backend: the response head's
    /// deadline runs from here.
    request_end: Option<Instant>,
}

impl<C> InFlight<C> {
    /// Keep the request as `sent` (its head, or all of it so far) while
    /// another attempt could send it again: under a route's `retry`, any
    /// request within the replay limit (the body is added as it goes);
    /// else only one without a body, and with an idempotent method or on a
    /// pooled connection (which may turn out closed).
    fn keep_for_replay(&mut self, sent: &[u8], reused: bool) {
        let keep = if self.replay_limit > 0 {
            sent.len() <= self.replay_limit
        } else {
            self.body.is_done() && (reused || self.method.is_idempotent())
        };
        self.replay = keep.then(|| Resend::Bytes(sent.to_vec()));
    }

    /// Keep `request`, going out on an h2c stream, while another attempt
    /// could send it again: under a route's `retry`, with its body as it
    /// goes (within the replay limit); else only one without a body. (A
    /// stream that fails unsent may go to another endpoint whatever its
    /// method: [`attempt`] decides.)
    fn keep_message_for_replay(&mut self, request: &Request) {
        let keep = self.replay_limit > 0 || self.body.is_done();
        self.replay = keep.then(|| {
            Resend::Message(Box::new(KeptMessage {
                head: attempt::copy_head(&request.head),
                length: request.body,
                body: Vec::new(),
                ended: request.body == BodyLength::None,
            }))
        });
    }

    /// The backend chosen (none before it is).
    fn backend(&self) -> Option<&Backend> {
        self.upstream.as_ref().and_then(Upstream::backend)
    }

    /// Whether something of this request is due at `at`.
    fn armed_at(&self, at: Instant) -> bool {
        self.deadline == Some(at)
            || self.pending.as_ref().is_some_and(|p| p.at == at)
            || self
                .attempt
                .as_ref()
                .is_some_and(|a| a.deadline == Some(at))
    }

    /// A request whose head just arrived, before any phase ran.
    fn new(method: Method, framing: ClientFraming, body: BodyReader, now: Instant) -> Self {
        Self {
            method,
            framing,
            started: now,
            body,
            body_writer: BodyWriter::Nothing,
            upstream: None,
            attempt: None,
            attempts: 0,
            failed: Vec::new(),
            pending: None,
            response: ResponseState::Head,
            replay: None,
            replay_limit: 0,
            deadline: None,
            mirrors: Vec::new(),
            cors_origin: None,
            body_moved: now,
            request_end: None,
        }
    }
}

/// Body going to the backend — `bytes` as a socket took them, or `event`
/// on a pipe — kept with the request in `replay` too, while `limit`
/// allows (past it, or with trailers on a pipe, nothing is kept: the
/// request will not go again).
fn keep_body_for_replay(
    replay: &mut Option<Resend>,
    limit: usize,
    bytes: &[u8],
    event: Option<&BodyEvent>,
) {
    let kept = match (replay.as_mut(), event) {
        (None, _) => return,
        (Some(Resend::Bytes(kept)), _) => {
            let fits = limit > 0 && kept.len() + bytes.len() <= limit;
            if fits {
                kept.extend_from_slice(bytes);
            }
            fits
        }
        (Some(Resend::Message(message)), Some(event)) => match event {
            BodyEvent::Data(data) if limit > 0 && message.body.len() + data.len() <= limit => {
                message.body.extend_from_slice(data);
                true
            }
            BodyEvent::End => {
                message.ended = true;
                true
            }
            BodyEvent::Data(_) | BodyEvent::Trailers(_) => false,
        },
        (Some(Resend::Message(_)), None) => true,
    };
    if !kept {
        *replay = None;
    }
}

/// A client connection, or an HTTP/2 stream.
struct Exchange<C> {
    client: Wire<C>,
    peer: SocketAddr,
    local_port: u16,
    /// A socket's bytes, each way.
    rx: BytesMut,
    tx: Vec<u8>,
    eof: bool,
    /// Close once `tx` is flushed: no further requests.
    closing: bool,
    /// A request was read: the connection speaks HTTP/1.x and is no longer
    /// a candidate for HTTP/2.
    served: bool,
    /// A mirrored copy ([`mirror`]): nobody reads its answer, which
    /// is not counted as a response.
    mirror: bool,
    request: Option<InFlight<C>>,
    /// Since when the connection has had no request (keep-alive idle).
    idle_since: Instant,
    /// When the first byte of the request head now being read came.
    head_started: Option<Instant>,
    /// The last time bytes were written to the client.
    written: Instant,
}

impl<C> Exchange<C> {
    fn is_stream(&self) -> bool {
        matches!(self.client, Wire::Pipe(_))
    }
}

/// The proxy core.
pub struct Proxy<C> {
    settings: ProxySettings,
    config: Arc<ArcSwap<GatewayConfig>>,
    metrics: Arc<ProxyMetrics>,
    roles: HashMap<Wire<C>, Role>,
    exchanges: Slab<Exchange<C>>,
    /// Idle backend connections per endpoint, with when they went idle.
    pool: HashMap<PoolKey, Vec<(C, Instant)>>,
    /// Client connections found to speak HTTP/2, for that layer to take.
    handoffs: Vec<Handoff<C>>,
    /// The HTTP/2 layer's streams, as the core sees them.
    pub pipes: Pipes,
    cursors: Cursors,
    health: PassiveHealth,
    checks: ActiveChecks<C>,
    budget: RetryBudget,
    /// When an exchange has something due sooner than the next tick (a
    /// retry's back-off, a route's timeout), earliest first. An entry may
    /// be stale: what is due is checked when it comes up.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Exchanges whose drive ran out of rounds with progress still being
    /// made. An edge-triggered socket that was not read to `WouldBlock`
    /// will not report its bytes again, so these are driven again at the
    /// next [`Self::resume_unfinished`] whatever the events say.
    unfinished: Vec<usize>,
    /// Outstanding requests and latency per endpoint; the random draws.
    load: Load,
    scratch: Vec<u8>,
    /// HTTP/1.1 backend connections open (in use or pooled): their
    /// endpoint, and whether the handshake completed — what the circuit
    /// breaker's connection and pending limits count.
    backend_conns: HashMap<C, (SocketAddr, bool)>,
    /// What this worker last published as out of its rotation.
    out_of_rotation: Vec<(SocketAddr, OutOfRotation)>,
    /// Unix time at an instant: session tokens carry wall-clock times, so
    /// that every replica reads them alike.
    wall: (Instant, u64),
}

/// Backend connection `conn` completed its handshake: no longer pending.
fn established<C: Eq + Hash>(conns: &mut HashMap<C, (SocketAddr, bool)>, load: &mut Load, conn: C) {
    if let Some((endpoint, up)) = conns.get_mut(&conn) {
        if !*up {
            *up = true;
            load.established(*endpoint);
        }
    }
}

/// Unix seconds at `now`, by `wall` (an instant and its Unix time).
fn unix_time((at, unix): (Instant, u64), now: Instant) -> u64 {
    unix + now.saturating_duration_since(at).as_secs()
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
        // Workers draw differently: seeded by where each one's buffer lives.
        let load = Load::new(
            0x9e37_79b9_7f4a_7c15 ^ (scratch.as_ptr() as u64),
            settings.load_balancing,
            settings.max_requests_per_endpoint,
        );
        Self {
            pipes: Pipes::new(settings.buffer),
            budget: RetryBudget::new(settings.retry_budget),
            load,
            settings,
            config,
            metrics,
            roles: HashMap::new(),
            exchanges: Slab::new(),
            pool: HashMap::new(),
            handoffs: Vec::new(),
            cursors: Cursors::default(),
            health: PassiveHealth::default(),
            checks: ActiveChecks::default(),
            timers: BinaryHeap::new(),
            unfinished: Vec::new(),
            scratch,
            out_of_rotation: Vec::new(),
            backend_conns: HashMap::new(),
            wall: (
                Instant::now(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
        }
    }

    /// Client connections open.
    pub fn clients(&self) -> usize {
        self.exchanges
            .iter()
            .filter(|(_, e)| !e.is_stream())
            .count()
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
        self.roles.contains_key(&Wire::Socket(conn)) || self.checks.owns(conn)
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
        if let Err(refusal) = self.settings.gate.admit(local_port) {
            // Reset, not closed: no TIME_WAIT is left for a connection
            // that never began.
            io.abort(conn);
            self.metrics.connection_refused(refusal);
            return;
        }
        self.metrics.connection_opened();
        self.open_exchange(io, Wire::Socket(conn), peer, local_port, now);
    }

    /// A request arrived on a stream of the HTTP/2 layer: pipe `pipe`
    /// carries it, and carries one request only.
    pub fn accept_stream<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        pipe: usize,
        peer: SocketAddr,
        local_port: u16,
        now: Instant,
    ) {
        self.open_exchange(io, Wire::Pipe(pipe), peer, local_port, now);
    }

    fn open_exchange<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        client: Wire<C>,
        peer: SocketAddr,
        local_port: u16,
        now: Instant,
    ) {
        let is_stream = matches!(client, Wire::Pipe(_));
        let id = self.exchanges.insert(Exchange {
            client,
            peer,
            local_port,
            rx: BytesMut::new(),
            tx: Vec::new(),
            eof: false,
            closing: is_stream,
            served: false,
            mirror: false,
            request: None,
            idle_since: now,
            head_started: None,
            written: now,
        });
        self.roles.insert(client, Role::Client(id));
        self.drive(io, id, now);
    }

    /// A request head arrived: the phases that start it — route match,
    /// upstream selection, request filters, connect or pool checkout.
    fn start_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        mut request: Request,
        mut in_flight: InFlight<C>,
        expect_continue: bool,
        now: Instant,
    ) {
        let exchange = &mut self.exchanges[id];
        exchange.head_started = None;
        exchange.closing |= !in_flight.framing.keep_alive;
        match admit::admit(&mut request.head, exchange.peer.ip(), &self.settings.admit) {
            Admitted::Route => {}
            Admitted::Redirect(location) => {
                exchange.request = Some(in_flight);
                self.local_response(id, 307, "", &[("location", location)]);
                return;
            }
            Admitted::Refuse(what) => {
                tracing::debug!(what, "request refused before routing");
                exchange.request = Some(in_flight);
                self.refuse(id, Cause::BadRequest { status: 400 });
                return;
            }
        }
        let config = self.config.load();
        let host = request
            .head
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let matched = match route::route(&config, &request.head, &host, exchange.local_port) {
            Routed::Forward(matched) => matched,
            Routed::Answer {
                rule,
                status,
                fields,
            } => {
                in_flight.upstream = Some(Upstream::new(rule));
                exchange.request = Some(in_flight);
                self.local_response(id, status, "", &fields);
                return;
            }
            Routed::Refused { rule, cause } => {
                in_flight.upstream = rule.map(Upstream::new);
                exchange.request = Some(in_flight);
                self.refuse(id, cause);
                return;
            }
        };
        let action = matched.action;
        in_flight.upstream = Some(Upstream::new(action));
        if let Some(cors) = &action.cors {
            in_flight.cors_origin = cors::allowed_origin(cors, &request.head);
        }
        if action.retry.is_some() {
            in_flight.replay_limit = self.settings.retry_buffer;
        }
        in_flight.deadline = action.timeouts.request.map(|t| in_flight.started + t);
        let deadline = in_flight.deadline;
        exchange.request = Some(in_flight);
        self.budget.request(now);
        if let Some(at) = deadline {
            self.arm(id, at);
        }
        let peer = self.exchanges[id].peer;
        let session = action.session.as_ref().and_then(|rule| {
            session::carried(
                rule,
                &request.head,
                &action.backends,
                unix_time(self.wall, now),
            )
        });
        let key_of = |backend: &Backend| {
            let on = backend.traffic.hash_on.as_ref()?;
            affinity::key(on, &request.head, peer)
        };
        let selected = match session
            .and_then(|s| Selected::by_session(action, s, &self.health, &self.load, now))
        {
            Some(selected) => Ok(selected),
            None => self
                .cursors
                .select(&config, action, key_of, &self.health, &mut self.load, now),
        };
        let (index, endpoint, key) = match selected {
            Ok(chosen) => (chosen.backend, chosen.endpoint, chosen.key),
            Err(cause) => {
                self.refuse(id, cause);
                return;
            }
        };
        let backend = &action.backends.backends[index];
        if let Some(redirect) = &backend.redirect {
            // The backendRef's RequestRedirect answers for it.
            let target = route::Target::of(&request.head.uri);
            let port = self.exchanges[id].local_port;
            let location = route::location(redirect, &target, &host, port, matched.prefix);
            let status = redirect.status;
            if let Some(upstream) = self.exchanges[id]
                .request
                .as_mut()
                .and_then(|r| r.upstream.as_mut())
            {
                upstream.backend = Some(index);
            }
            self.local_response(id, status, "", &[("location", location)]);
            return;
        }
        let exchange = &mut self.exchanges[id];
        let forwarded = self.settings.admit.forwarded;
        filters::request_to_backend(
            &mut request,
            &host,
            exchange.peer,
            &matched,
            backend,
            forwarded,
        );
        let in_flight = exchange.request.as_mut().expect("just set");
        if let Some(upstream) = &mut in_flight.upstream {
            upstream.backend = Some(index);
            upstream.key = key;
            upstream.session = session;
        }
        if expect_continue && !in_flight.body.is_done() {
            exchange
                .tx
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let protocol = backend.protocol;
        if !action.mirrors.is_empty() {
            let action = action.clone();
            drop(config);
            self.start_mirrors(io, id, &action.mirrors, &request, now);
        } else {
            drop(config);
        }
        self.open_attempt(io, id, endpoint, protocol, request, now);
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
        let Wire::Socket(conn) = exchange.client else {
            return;
        };
        // Still open: the HTTP/2 layer counts it closed when it is.
        self.roles.remove(&exchange.client);
        self.handoffs.push(Handoff {
            conn,
            peer: exchange.peer,
            local_port: exchange.local_port,
            buffered: exchange.rx.to_vec(),
            upgrade,
        });
    }

    /// `conn` may be readable, writable, connected or closed.
    pub fn on_io<T: Transport<Conn = C>>(&mut self, io: &mut T, conn: C, now: Instant) {
        self.on_wire(io, Wire::Socket(conn), now);
    }

    /// Pipe `pipe` has news from the HTTP/2 layer.
    pub fn on_pipe<T: Transport<Conn = C>>(&mut self, io: &mut T, pipe: usize, now: Instant) {
        self.on_wire(io, Wire::Pipe(pipe), now);
    }

    fn on_wire<T: Transport<Conn = C>>(&mut self, io: &mut T, wire: Wire<C>, now: Instant) {
        match self.roles.get(&wire).copied() {
            Some(Role::Client(id)) | Some(Role::Backend(id)) => self.drive(io, id, now),
            Some(Role::Idle(key)) => {
                if let Wire::Socket(conn) = wire {
                    self.check_idle(io, conn, key);
                }
            }
            None => {
                // A health check's, or nothing (`on_io` knows which).
                if let Wire::Socket(conn) = wire {
                    self.checks.on_io(io, conn, &mut self.health, &self.metrics);
                }
            }
        }
    }

    /// Timeouts; call every [`TICK_INTERVAL`].
    pub fn tick<T: Transport<Conn = C>>(&mut self, io: &mut T, now: Instant) {
        let ids: Vec<usize> = self.exchanges.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.check_due(io, id, now);
        }
        self.run_timers(io, now);
        self.expire_idle_pool(io, now);
        let config = self.config.load_full();
        self.checks.follow(&config, &mut self.health, now);
        self.checks.run(io, &mut self.health, &self.metrics, now);
        self.health.expire(now);
        self.load.expire(now);
        let out = self.health.out_of_rotation(now);
        if out != self.out_of_rotation {
            self.metrics.set_out_of_rotation(out.clone());
            self.out_of_rotation = out;
        }
    }

    /// When [`Self::run_timers`] has something to do next, if sooner than
    /// the next tick matters: a driver sleeps no longer than this.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// What is due by `now` among the exchanges' own timers (retries
    /// after their back-off, route timeouts), at the time it is due rather
    /// than at the next tick.
    pub fn run_timers<T: Transport<Conn = C>>(&mut self, io: &mut T, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.check_due(io, id, now);
        }
    }

    /// Have `run_timers` look at exchange `id` at `at`. Entries whose
    /// exchange moved on are dropped once they outnumber the live ones, so
    /// the heap stays the size of what is armed.
    fn arm(&mut self, id: usize, at: Instant) {
        self.timers.push(Reverse((at, id)));
        if self.timers.len() > 4 * self.exchanges.len() + 64 {
            let exchanges = &self.exchanges;
            self.timers.retain(|&Reverse((at, id))| {
                exchanges
                    .get(id)
                    .and_then(|e| e.request.as_ref())
                    .is_some_and(|r| r.armed_at(at))
            });
        }
    }

    /// Start the exchange's waiting attempt if its back-off is over, and
    /// end what has passed its deadline.
    fn check_due<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize, now: Instant) {
        let Some(exchange) = self.exchanges.get(id) else {
            return;
        };
        let retry_due = exchange
            .request
            .as_ref()
            .and_then(|r| r.pending.as_ref())
            .is_some_and(|p| p.at <= now);
        if retry_due {
            self.start_pending(io, id, now);
            self.drive(io, id, now);
        }
        let Some(exchange) = self.exchanges.get(id) else {
            return;
        };
        let backlog = self.client_backlog(exchange);
        match overdue(exchange, backlog, &self.settings.deadlines, now) {
            Some(Overdue::Idle) => {
                self.metrics.timeout(Phase::KeepAlive);
                self.close_exchange(io, id, false);
            }
            Some(Overdue::Failed(cause)) => self.expire(io, id, cause, now),
            None => {}
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
        for (_, conns) in pooled {
            for (conn, _) in conns {
                self.let_go_backend(io, Wire::Socket(conn), false);
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

    /// Drive again the exchanges whose last drive ran out of rounds.
    pub fn resume_unfinished<T: Transport<Conn = C>>(&mut self, io: &mut T, now: Instant) {
        let mut ids = std::mem::take(&mut self.unfinished);
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.drive(io, id, now);
        }
    }

    /// Whether an exchange waits for [`Self::resume_unfinished`]: a
    /// driver must not sleep on its events until it has run.
    pub fn has_unfinished(&self) -> bool {
        !self.unfinished.is_empty()
    }

    /// Make all the progress the exchange can make now, up to
    /// [`DRIVE_ROUNDS`] rounds: one busy exchange does not hold up the
    /// rest of the batch, and what it has left is remembered.
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
        let mut settled = false;
        for _ in 0..DRIVE_ROUNDS {
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
                settled = true;
                break;
            }
        }
        if !settled && self.exchanges.contains(id) {
            self.unfinished.push(id);
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
        let Wire::Socket(conn) = exchange.client else {
            return false;
        };
        if exchange.tx.is_empty() {
            return false;
        }
        match io.write(conn, &exchange.tx) {
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
            .and_then(|r| r.attempt.as_mut())
        else {
            return false;
        };
        let Wire::Socket(conn) = leg.wire else {
            return false;
        };
        if leg.tx.is_empty() {
            return false;
        }
        match io.write(conn, &leg.tx) {
            Ok(0) => false,
            Ok(n) => {
                leg.tx.drain(..n);
                if !leg.connected {
                    leg.connected = true;
                    established(&mut self.backend_conns, &mut self.load, conn);
                }
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

    /// How much a socket's receive buffer holds before reading pauses.
    fn read_cap(&self) -> usize {
        self.settings
            .buffer
            .max(self.settings.limits.max_head_bytes + 1)
    }

    fn read_client<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize, now: Instant) -> bool {
        let cap = self.read_cap();
        let exchange = &mut self.exchanges[id];
        let conn = match exchange.client {
            Wire::Socket(conn) => conn,
            // A stream's messages are taken where they are used; only its
            // end is looked for here.
            Wire::Pipe(pipe) if self.pipes.gone(pipe) => {
                self.client_gone(io, id);
                return true;
            }
            Wire::Pipe(_) => return false,
        };
        if exchange.eof || exchange.rx.len() >= cap {
            return false;
        }
        let room = (cap - exchange.rx.len()).min(self.scratch.len());
        match io.read(conn, &mut self.scratch[..room]) {
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
        let cap = self.read_cap();
        let Some(leg) = self.exchanges[id]
            .request
            .as_mut()
            .and_then(|r| r.attempt.as_mut())
        else {
            return false;
        };
        let Wire::Socket(conn) = leg.wire else {
            return false;
        };
        if leg.eof || leg.rx.len() >= cap {
            return false;
        }
        let room = (cap - leg.rx.len()).min(self.scratch.len());
        match io.read(conn, &mut self.scratch[..room]) {
            ReadOutcome::Data(n) => {
                leg.rx.extend_from_slice(&self.scratch[..n]);
                leg.answered = true;
                if !leg.connected {
                    leg.connected = true;
                    established(&mut self.backend_conns, &mut self.load, conn);
                }
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
                self.attempt_failed(io, id, now);
                true
            }
        }
    }

    /// Bytes or events sent toward the client and not yet taken by it.
    fn client_backlog(&self, exchange: &Exchange<C>) -> bool {
        match exchange.client {
            Wire::Socket(_) => !exchange.tx.is_empty(),
            Wire::Pipe(pipe) => self.pipes.backlog(pipe) > 0,
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
        self.drop_mirrors(id);
        let Some(exchange) = self.exchanges.try_remove(id) else {
            return;
        };
        self.roles.remove(&exchange.client);
        match (exchange.client, abort) {
            (Wire::Socket(conn), true) => io.abort(conn),
            (Wire::Socket(conn), false) => io.close(conn),
            (Wire::Pipe(pipe), true) => self.pipes.core_end(pipe, CoreEnd::Aborted),
            (Wire::Pipe(pipe), false) => self.pipes.core_end(pipe, CoreEnd::Closed),
        }
        let is_stream = exchange.is_stream();
        if let Some(leg) = exchange.request.and_then(|r| r.attempt) {
            self.load.end(leg.endpoint);
            self.let_go_backend(io, leg.wire, true);
        }
        if !is_stream {
            self.metrics.connection_closed();
            self.settings.gate.release(exchange.local_port);
        }
    }

    /// Send a response head to the client of exchange `id`, whose request
    /// is in flight; returns how its body goes.
    fn send_response_head(&mut self, id: usize, mut response: Response) -> BodyWriter {
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("in flight");
        match exchange.client {
            Wire::Socket(_) => {
                request.framing.keep_alive &= !exchange.closing;
                let (coding, close) =
                    h1::encode_response(&response, request.framing, &mut exchange.tx);
                if close {
                    request.framing.keep_alive = false;
                    exchange.closing = true;
                }
                BodyWriter::of(coding)
            }
            Wire::Pipe(pipe) => {
                if request.framing.head_request {
                    if let crate::message::BodyLength::Exactly(n) = response.body {
                        response
                            .head
                            .headers
                            .insert(http::header::CONTENT_LENGTH, n.into());
                    }
                    response.body = crate::message::BodyLength::None;
                }
                let writer = match response.body {
                    crate::message::BodyLength::None => BodyWriter::Nothing,
                    _ => BodyWriter::Events,
                };
                // A stream gone is seen on the next read of it.
                let _ = self.pipes.send(pipe, Message::Response(Box::new(response)));
                writer
            }
        }
    }
}

/// Write a body event to a wire: as bytes into `tx`, or onto the pipe.
fn write_event<C>(
    pipes: &mut Pipes,
    wire: Wire<C>,
    tx: &mut Vec<u8>,
    writer: BodyWriter,
    event: BodyEvent,
) -> Result<(), StreamGone> {
    match (writer, wire) {
        (BodyWriter::Nothing, _) => Ok(()),
        (BodyWriter::Bytes(coding), _) => {
            body::write_bytes(coding, &event, tx);
            Ok(())
        }
        (BodyWriter::Events, Wire::Pipe(pipe)) => pipes.send(pipe, Message::Body(event)),
        (BodyWriter::Events, Wire::Socket(_)) => Err(StreamGone),
    }
}

/// Body bytes a wire takes now.
fn room<C>(pipes: &Pipes, wire: Wire<C>, tx: &[u8], cap: usize) -> usize {
    match wire {
        Wire::Socket(_) => cap.saturating_sub(tx.len()),
        Wire::Pipe(pipe) => pipes.room(pipe),
    }
}

/// The next body event from a wire: decoded from `rx`, or off the pipe;
/// `to`: the wire it goes to.
fn read_event<C>(
    pipes: &mut Pipes,
    wire: Wire<C>,
    to: Wire<C>,
    reader: &mut BodyReader,
    rx: &mut BytesMut,
    eof: bool,
    max: usize,
) -> Result<Option<BodyEvent>, ReadError> {
    match wire {
        Wire::Socket(_) => {
            let queued = matches!(to, Wire::Pipe(_));
            reader
                .next_from_bytes(rx, eof, max, queued)
                .map_err(ReadError::Framing)
        }
        Wire::Pipe(pipe) => reader.next_from_pipe(pipes, pipe),
    }
}
