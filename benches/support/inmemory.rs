//! A client, the gateway and a backend in one process, joined by in-memory
//! connections: the harness that `benches/core_instructions.rs` counts the
//! gateway's instructions on, and that `tests/inmemory_pairings.rs` checks.
//!
//! The gateway is [`HttpService`] over [`MemoryNet`], a [`Transport`] whose
//! connections are pairs of byte buffers. Its peers are plain code:
//!
//! - HTTP/1.1 client: one keep-alive connection, one request at a time
//!   (pipeline depth 1, a closed loop like one wrk connection). The proxy
//!   core answers pipelined requests one after another anyway, so a deeper
//!   pipeline would only batch reads differently.
//! - HTTP/2 client: the `h2` crate's client with prior knowledge (the
//!   gateway detects the preface), one connection,
//!   [`H2_STREAMS_IN_FLIGHT`] requests in flight (like `h2load -m10`).
//! - HTTP/1.1 backend: answers every request head with [`RESPONSE`],
//!   keep-alive.
//! - h2c backend: the `h2` crate's server, the same status and body.
//!
//! Everything runs in one loop without a runtime: the client runs until it
//! can do nothing, then the gateway is told about every connection with
//! news, then the backend runs, and again, until the requests asked for
//! are answered. The `h2` peers are polled with a no-op waker on every
//! round, which is simpler than tracking their wakes and costs nothing the
//! benchmark counts. Time is virtual ([`ROUND_TIME`] a round), so a run is
//! the same run every time. Every response must be a 200 with the expected
//! body, and the backend must have served exactly as many requests as the
//! client sent; anything else panics, because a benchmark that quietly
//! measures errors measures nothing.
//!
//! Every call into the gateway goes through one function,
//! [`gateway_turn`], so that callgrind can count the gateway alone.

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::{client, server, RecvStream};
use http::{Request, Response};
use rauta_dataplane::config::{
    Backend, BackendProtocol, Backends, GatewayConfig, Listener, PortListeners, RuleAction,
};
use rauta_dataplane::http2::Http2Settings;
use rauta_dataplane::metrics::ProxyMetrics;
use rauta_dataplane::proxy::{ConnectionGone, ProxySettings, ReadOutcome, Transport};
use rauta_dataplane::routes::{PathMatch, Route, RouteMatch, RouteTable};
use rauta_dataplane::service::HttpService;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the HTTP/1.1 client sends, every time.
const REQUEST: &[u8] = b"GET /app/x HTTP/1.1\r\nHost: bench\r\n\r\n";
/// The URI the HTTP/2 client asks for: the same request.
const H2_URI: &str = "http://bench/app/x";
/// What the HTTP/1.1 backend answers, every time.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
/// The body of every response, whatever the protocols.
const BODY: &[u8] = b"ok";
/// The one backend endpoint `/app` routes to.
const BACKEND: &str = "10.0.0.1:8080";
/// Where the client connects from, and the listener port it connects to.
const CLIENT: &str = "192.0.2.7:40000";
const LISTENER_PORT: u16 = 80;
/// Requests the HTTP/2 client keeps in flight on its connection.
pub const H2_STREAMS_IN_FLIGHT: usize = 10;
/// Virtual time per round of the loop. Nothing in a run waits on time (no
/// timeout is near, `tick` runs once), but the gateway sees time pass, as
/// it would on a live worker.
const ROUND_TIME: Duration = Duration::from_micros(10);

/// Client protocol → backend protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairing {
    H1ToH1,
    H1ToH2c,
    H2ToH1,
    H2ToH2c,
}

impl Pairing {
    pub const ALL: [Pairing; 4] = [
        Pairing::H1ToH1,
        Pairing::H1ToH2c,
        Pairing::H2ToH1,
        Pairing::H2ToH2c,
    ];

    /// The name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Pairing::H1ToH1 => "h1-h1",
            Pairing::H1ToH2c => "h1-h2c",
            Pairing::H2ToH1 => "h2-h1",
            Pairing::H2ToH2c => "h2-h2c",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    fn client_speaks_h2(self) -> bool {
        matches!(self, Pairing::H2ToH1 | Pairing::H2ToH2c)
    }

    fn backend_protocol(self) -> BackendProtocol {
        match self {
            Pairing::H1ToH1 | Pairing::H2ToH1 => BackendProtocol::Http1,
            Pairing::H1ToH2c | Pairing::H2ToH2c => BackendProtocol::H2c,
        }
    }
}

/// What a finished run saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSummary {
    /// Responses the client received, every one a 200 with the body.
    pub responses: usize,
    /// Rounds of the loop (client, gateway, backend).
    pub rounds: usize,
    /// Connections the gateway opened to the backend.
    pub backend_connections: usize,
}

/// Run `pairing` until `requests` requests have been answered. Panics
/// with what went wrong on any error response, stall or miscount.
pub fn run(pairing: Pairing, requests: usize) -> RunSummary {
    let mut gateway = HttpService::new(
        ProxySettings::default(),
        Http2Settings::default(),
        Arc::new(ArcSwap::from_pointee(gateway_config(
            pairing.backend_protocol(),
        ))),
        Arc::new(ProxyMetrics::default()),
    );
    let mut net = MemoryNet::default();
    let mut now = Instant::now();
    let (client_conn, client_socket) = net.open();
    let mut client = if pairing.client_speaks_h2() {
        Client::Http2(Http2Client::new(client_socket, requests))
    } else {
        Client::Http1(Http1Client::new(client_socket, requests))
    };
    let mut backend = match pairing.backend_protocol() {
        BackendProtocol::Http1 => BackendPeer::Http1(Http1Backend::default()),
        BackendProtocol::H2c => BackendPeer::H2c(H2cBackend::default()),
    };
    let backend_addr: SocketAddr = BACKEND.parse().expect("backend address");
    // A driver ticks at start: that opens the h2c backend pool.
    let mut events = vec![
        GatewayEvent::Tick,
        GatewayEvent::Accept {
            conn: client_conn,
            peer: CLIENT.parse().expect("client address"),
        },
    ];
    gateway_turn(&mut gateway, &mut net, &events, now);
    let mut cx = Context::from_waker(Waker::noop());
    let mut rounds = 0;
    let mut backend_connections = 0;
    while client.responses() < requests {
        rounds += 1;
        now += ROUND_TIME;
        let moved_before = net.shared.peer_bytes.get();
        let client_progress = client.turn(&mut cx);
        events.clear();
        events.extend(net.take_news().into_iter().map(GatewayEvent::Io));
        // Work left over from a turn is done without a new event, as the
        // workers do.
        let left_over = gateway.has_work();
        if !events.is_empty() || left_over {
            gateway_turn(&mut gateway, &mut net, &events, now);
        }
        let dialled = std::mem::take(&mut net.dialled);
        let opened = dialled.len();
        backend_connections += opened;
        for (socket, to, protocol) in dialled {
            assert_eq!(to, backend_addr, "{}: connected to {to}", pairing.name());
            assert_eq!(
                protocol,
                pairing.backend_protocol(),
                "{}: connected with the wrong protocol",
                pairing.name()
            );
            backend.take(socket);
        }
        let backend_progress = backend.turn(&mut cx);
        // Nobody moved a byte, nothing was opened, the gateway had nothing
        // to hear: the next round would be this one again.
        let idle = !client_progress
            && !backend_progress
            && events.is_empty()
            && !left_over
            && opened == 0
            && net.shared.peer_bytes.get() == moved_before;
        assert!(
            !idle,
            "{}: stalled after {} of {requests} responses ({} requests sent, {} served by the backend)",
            pairing.name(),
            client.responses(),
            client.sent(),
            backend.served(),
        );
    }
    assert_eq!(
        (client.sent(), client.responses(), backend.served()),
        (requests, requests, requests),
        "{}: requests sent, responses received and requests the backend served must all be {requests}",
        pairing.name()
    );
    RunSummary {
        responses: client.responses(),
        rounds,
        backend_connections,
    }
}

/// One thing for the gateway to hear about.
#[derive(Clone, Copy, Debug)]
enum GatewayEvent {
    /// Timers, and the h2c backend pools kept warm.
    Tick,
    /// A client connected.
    Accept { conn: u32, peer: SocketAddr },
    /// A connection may have progressed.
    Io(u32),
}

/// Every call into the gateway, and nothing else: callgrind counts this
/// function and what it calls (`--toggle-collect=*gateway_turn*`), i.e. the
/// gateway's work plus the in-memory transport's reads and writes, the
/// stand-in for socket calls.
#[inline(never)]
fn gateway_turn(
    gateway: &mut HttpService<MemoryNet>,
    net: &mut MemoryNet,
    events: &[GatewayEvent],
    now: Instant,
) {
    for event in events {
        match *event {
            GatewayEvent::Tick => gateway.tick(net, now),
            GatewayEvent::Accept { conn, peer } => {
                gateway.accept(net, conn, peer, LISTENER_PORT, now)
            }
            GatewayEvent::Io(conn) => gateway.on_io(net, conn, now),
        }
    }
    gateway.flush(net, now);
}

/// `/app` on port 80 to the one backend, speaking `protocol`.
fn gateway_config(protocol: BackendProtocol) -> GatewayConfig {
    let mut backend = Backend::new(
        "bench/backend:8080",
        1,
        vec![BACKEND.parse().expect("backend address")],
    );
    backend.protocol = protocol;
    let routes = RouteTable::new(vec![Route {
        name: "bench/route".into(),
        created: 0,
        hostnames: vec![],
        rules: vec![(
            vec![RouteMatch {
                path: PathMatch::Prefix("/app".into()),
                ..RouteMatch::default()
            }],
            RuleAction {
                route: "bench/route".into(),
                backends: Backends::new(vec![backend]),
                ..RuleAction::default()
            },
        )],
    }]);
    let mut ports = BTreeMap::new();
    ports.insert(
        LISTENER_PORT,
        PortListeners::new(vec![Listener {
            name: "bench/gateway/http".into(),
            hostname: None,
            routes,
        }]),
    );
    GatewayConfig { ports }
}

/// One connection: what each end wrote and the other has not read yet.
#[derive(Debug, Default)]
struct Wire {
    to_gateway: Vec<u8>,
    to_peer: Vec<u8>,
    /// The peer will send nothing more (FIN).
    peer_finished: bool,
    /// The gateway closed or aborted it, and forgot it.
    gateway_closed: bool,
    /// On the news list already: the gateway hears about it once a round.
    reported: bool,
}

/// What every peer socket shares with the net.
#[derive(Clone, Debug, Default)]
struct Shared {
    /// Connections with news for the gateway, in the order they got it.
    news: Rc<RefCell<Vec<u32>>>,
    /// Bytes the peers have read and written: how the loop tells a round
    /// that moved something from one that did not.
    peer_bytes: Rc<Cell<u64>>,
}

/// The gateway's transport: every connection in memory, by index.
#[derive(Default)]
struct MemoryNet {
    wires: Vec<Rc<RefCell<Wire>>>,
    shared: Shared,
    /// Connections the gateway opened, for the backend to take.
    dialled: Vec<(PeerSocket, SocketAddr, BackendProtocol)>,
}

impl MemoryNet {
    /// A new connection: the gateway's handle and the peer's end.
    fn open(&mut self) -> (u32, PeerSocket) {
        let conn = u32::try_from(self.wires.len()).expect("fewer than 2^32 connections");
        let wire = Rc::new(RefCell::new(Wire::default()));
        self.wires.push(wire.clone());
        let socket = PeerSocket {
            conn,
            wire,
            shared: self.shared.clone(),
        };
        (conn, socket)
    }

    fn take_news(&mut self) -> Vec<u32> {
        let news = std::mem::take(&mut *self.shared.news.borrow_mut());
        for &conn in &news {
            self.wires[conn as usize].borrow_mut().reported = false;
        }
        news
    }
}

impl Transport for MemoryNet {
    type Conn = u32;

    fn read(&mut self, conn: u32, buf: &mut [u8]) -> ReadOutcome {
        let mut wire = self.wires[conn as usize].borrow_mut();
        if wire.to_gateway.is_empty() {
            return if wire.peer_finished {
                ReadOutcome::Closed
            } else {
                ReadOutcome::WouldBlock
            };
        }
        let n = buf.len().min(wire.to_gateway.len());
        buf[..n].copy_from_slice(&wire.to_gateway[..n]);
        wire.to_gateway.drain(..n);
        ReadOutcome::Data(n)
    }

    fn write(&mut self, conn: u32, data: &[u8]) -> Result<usize, ConnectionGone> {
        let mut wire = self.wires[conn as usize].borrow_mut();
        if wire.gateway_closed {
            return Err(ConnectionGone);
        }
        wire.to_peer.extend_from_slice(data);
        Ok(data.len())
    }

    fn connect(&mut self, to: SocketAddr, protocol: BackendProtocol) -> Option<u32> {
        let (conn, socket) = self.open();
        self.dialled.push((socket, to, protocol));
        Some(conn)
    }

    fn established(&mut self, conn: u32) -> bool {
        !self.wires[conn as usize].borrow().gateway_closed
    }

    fn close(&mut self, conn: u32) {
        self.wires[conn as usize].borrow_mut().gateway_closed = true;
    }

    fn abort(&mut self, conn: u32) {
        self.wires[conn as usize].borrow_mut().gateway_closed = true;
    }
}

/// A peer's end of a connection; also what the `h2` peers read and write.
#[derive(Clone, Debug)]
struct PeerSocket {
    conn: u32,
    wire: Rc<RefCell<Wire>>,
    shared: Shared,
}

impl PeerSocket {
    fn send(&self, bytes: &[u8]) {
        let mut wire = self.wire.borrow_mut();
        if wire.gateway_closed {
            return;
        }
        wire.to_gateway.extend_from_slice(bytes);
        self.moved(bytes.len());
        if !wire.reported {
            wire.reported = true;
            self.shared.news.borrow_mut().push(self.conn);
        }
    }

    /// Append what the gateway wrote to `into`.
    fn receive(&self, into: &mut Vec<u8>) {
        let mut wire = self.wire.borrow_mut();
        self.moved(wire.to_peer.len());
        into.append(&mut wire.to_peer);
    }

    /// Closed by the gateway, and everything it wrote read.
    fn ended(&self) -> bool {
        let wire = self.wire.borrow();
        wire.gateway_closed && wire.to_peer.is_empty()
    }

    fn moved(&self, bytes: usize) {
        let total = &self.shared.peer_bytes;
        total.set(total.get() + bytes as u64);
    }
}

impl AsyncRead for PeerSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut wire = self.wire.borrow_mut();
        if wire.to_peer.is_empty() {
            // Closed: a read of nothing is the end. Otherwise the loop
            // polls again next round.
            return if wire.gateway_closed {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        let n = buf.remaining().min(wire.to_peer.len());
        buf.put_slice(&wire.to_peer[..n]);
        wire.to_peer.drain(..n);
        self.moved(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PeerSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.wire.borrow().gateway_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut wire = self.wire.borrow_mut();
        wire.peer_finished = true;
        if !wire.reported {
            wire.reported = true;
            self.shared.news.borrow_mut().push(self.conn);
        }
        Poll::Ready(Ok(()))
    }
}

enum Client {
    Http1(Http1Client),
    Http2(Http2Client),
}

impl Client {
    /// Run until nothing more can happen now; whether anything did.
    fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Client::Http1(c) => c.turn(),
            Client::Http2(c) => c.turn(cx),
        }
    }

    fn sent(&self) -> usize {
        match self {
            Client::Http1(c) => c.sent,
            Client::Http2(c) => c.sent,
        }
    }

    fn responses(&self) -> usize {
        match self {
            Client::Http1(c) => c.responses,
            Client::Http2(c) => c.responses,
        }
    }
}

/// One keep-alive connection, one request at a time.
struct Http1Client {
    socket: PeerSocket,
    rx: Vec<u8>,
    requests: usize,
    sent: usize,
    responses: usize,
}

impl Http1Client {
    fn new(socket: PeerSocket, requests: usize) -> Self {
        Self {
            socket,
            rx: Vec::new(),
            requests,
            sent: 0,
            responses: 0,
        }
    }

    fn turn(&mut self) -> bool {
        let mut progress = false;
        self.socket.receive(&mut self.rx);
        while let Some(length) = complete_response(&self.rx, self.responses) {
            self.rx.drain(..length);
            self.responses += 1;
            progress = true;
        }
        assert!(
            self.rx.is_empty() || self.sent > self.responses,
            "bytes after response {}: {:?}",
            self.responses,
            String::from_utf8_lossy(&self.rx)
        );
        assert!(
            !self.socket.ended() || self.sent == self.responses,
            "the gateway closed the client connection after {} responses",
            self.responses
        );
        if self.sent == self.responses && self.sent < self.requests {
            self.socket.send(REQUEST);
            self.sent += 1;
            progress = true;
        }
        progress
    }
}

/// The length of the complete response at the start of `rx`, which must
/// be a 200 with [`BODY`] framed by Content-Length; `None` while it is
/// incomplete.
fn complete_response(rx: &[u8], index: usize) -> Option<usize> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut fields);
    let head = match response.parse(rx) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "response {index} does not parse ({e}): {:?}",
            String::from_utf8_lossy(rx)
        ),
    };
    let text = || String::from_utf8_lossy(rx).into_owned();
    assert_eq!(response.code, Some(200), "response {index}: {}", text());
    let length: usize = response
        .headers
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("content-length"))
        .and_then(|f| std::str::from_utf8(f.value).ok()?.parse().ok())
        .unwrap_or_else(|| panic!("response {index} has no Content-Length: {}", text()));
    if rx.len() < head + length {
        return None;
    }
    assert_eq!(
        &rx[head..head + length],
        BODY,
        "response {index}: {}",
        text()
    );
    Some(head + length)
}

type ClientHandshake = Pin<
    Box<
        dyn Future<
            Output = Result<
                (
                    client::SendRequest<Bytes>,
                    client::Connection<PeerSocket, Bytes>,
                ),
                h2::Error,
            >,
        >,
    >,
>;

enum H2ClientState {
    Handshake(ClientHandshake),
    Ready {
        sender: client::SendRequest<Bytes>,
        connection: Box<client::Connection<PeerSocket, Bytes>>,
    },
}

/// A request of the HTTP/2 client in flight.
enum H2Exchange {
    Waiting(client::ResponseFuture),
    Body(RecvStream, Vec<u8>),
}

/// One prior-knowledge connection, [`H2_STREAMS_IN_FLIGHT`] requests in
/// flight.
struct Http2Client {
    state: H2ClientState,
    in_flight: Vec<H2Exchange>,
    requests: usize,
    sent: usize,
    responses: usize,
}

impl Http2Client {
    fn new(socket: PeerSocket, requests: usize) -> Self {
        Self {
            state: H2ClientState::Handshake(Box::pin(client::Builder::new().handshake(socket))),
            in_flight: Vec::new(),
            requests,
            sent: 0,
            responses: 0,
        }
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            let moved = self.pass(cx);
            if !moved {
                return progress;
            }
            progress = true;
        }
    }

    /// Poll the connection, every exchange, and open what may be opened.
    fn pass(&mut self, cx: &mut Context<'_>) -> bool {
        let (sender, connection) = match &mut self.state {
            H2ClientState::Handshake(handshake) => match handshake.as_mut().poll(cx) {
                Poll::Ready(Ok((sender, connection))) => {
                    self.state = H2ClientState::Ready {
                        sender,
                        connection: Box::new(connection),
                    };
                    return true;
                }
                Poll::Ready(Err(e)) => panic!("HTTP/2 client handshake: {e}"),
                Poll::Pending => return false,
            },
            H2ClientState::Ready { sender, connection } => (sender, connection),
        };
        let before = (self.sent, self.responses, progress_marks(&self.in_flight));
        let mut moved_bytes = false;
        if let Poll::Ready(result) = Pin::new(&mut **connection).poll(cx) {
            panic!(
                "the gateway ended the HTTP/2 client connection after {} responses: {result:?}",
                self.responses
            );
        }
        let mut i = 0;
        while i < self.in_flight.len() {
            let index = self.responses;
            match poll_exchange(&mut self.in_flight[i], cx, index, &mut moved_bytes) {
                true => {
                    self.in_flight.swap_remove(i);
                    self.responses += 1;
                }
                false => i += 1,
            }
        }
        while self.in_flight.len() < H2_STREAMS_IN_FLIGHT && self.sent < self.requests {
            match sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => panic!("HTTP/2 client: {e}"),
                Poll::Pending => break,
            }
            let request = Request::get(H2_URI).body(()).expect("request");
            let (response, _) = sender
                .send_request(request, true)
                .unwrap_or_else(|e| panic!("HTTP/2 client request {}: {e}", self.sent));
            self.in_flight.push(H2Exchange::Waiting(response));
            self.sent += 1;
        }
        moved_bytes || before != (self.sent, self.responses, progress_marks(&self.in_flight))
    }
}

/// How many exchanges have their response head: a change is progress.
fn progress_marks(in_flight: &[H2Exchange]) -> usize {
    in_flight
        .iter()
        .filter(|e| matches!(e, H2Exchange::Body(..)))
        .count()
}

/// Advance one exchange; whether it finished (a 200 with [`BODY`]).
fn poll_exchange(
    exchange: &mut H2Exchange,
    cx: &mut Context<'_>,
    index: usize,
    moved_bytes: &mut bool,
) -> bool {
    if let H2Exchange::Waiting(response) = exchange {
        match Pin::new(response).poll(cx) {
            Poll::Ready(Ok(response)) => {
                assert_eq!(
                    response.status(),
                    200,
                    "HTTP/2 response {index}: {response:?}"
                );
                *exchange = H2Exchange::Body(response.into_body(), Vec::new());
            }
            Poll::Ready(Err(e)) => panic!("HTTP/2 response {index}: {e}"),
            Poll::Pending => return false,
        }
    }
    let H2Exchange::Body(body, received) = exchange else {
        return false;
    };
    loop {
        match body.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = body.flow_control().release_capacity(data.len());
                received.extend_from_slice(&data);
                *moved_bytes = true;
            }
            Poll::Ready(Some(Err(e))) => panic!("HTTP/2 response {index} body: {e}"),
            Poll::Ready(None) => {
                assert_eq!(received.as_slice(), BODY, "HTTP/2 response {index} body");
                return true;
            }
            Poll::Pending => return false,
        }
    }
}

enum BackendPeer {
    Http1(Http1Backend),
    H2c(H2cBackend),
}

impl BackendPeer {
    /// A connection the gateway opened.
    fn take(&mut self, socket: PeerSocket) {
        match self {
            BackendPeer::Http1(b) => b.conns.push((socket, Vec::new())),
            BackendPeer::H2c(b) => {
                b.conns
                    .push(H2cConnection::Handshake(Box::pin(server::handshake(
                        socket,
                    ))))
            }
        }
    }

    /// Run until nothing more can happen now; whether anything did.
    fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            BackendPeer::Http1(b) => b.turn(),
            BackendPeer::H2c(b) => b.turn(cx),
        }
    }

    fn served(&self) -> usize {
        match self {
            BackendPeer::Http1(b) => b.served,
            BackendPeer::H2c(b) => b.served,
        }
    }
}

/// Answers every request head on every connection with [`RESPONSE`].
#[derive(Default)]
struct Http1Backend {
    /// Each connection and what it received and has not answered.
    conns: Vec<(PeerSocket, Vec<u8>)>,
    served: usize,
}

impl Http1Backend {
    fn turn(&mut self) -> bool {
        let mut progress = false;
        for (socket, rx) in &mut self.conns {
            socket.receive(rx);
            while let Some(length) = complete_request(rx, self.served) {
                rx.drain(..length);
                socket.send(RESPONSE);
                self.served += 1;
                progress = true;
            }
        }
        // The gateway closed pooled connections it no longer wants.
        self.conns.retain(|(socket, _)| !socket.ended());
        progress
    }
}

/// The length of the complete bodiless `GET /app/x` at the start of `rx`;
/// `None` while it is incomplete.
fn complete_request(rx: &[u8], index: usize) -> Option<usize> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut fields);
    let head = match request.parse(rx) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "backend request {index} does not parse ({e}): {:?}",
            String::from_utf8_lossy(rx)
        ),
    };
    let text = || String::from_utf8_lossy(&rx[..head]).into_owned();
    assert_eq!(
        (request.method, request.path),
        (Some("GET"), Some("/app/x")),
        "backend request {index}: {}",
        text()
    );
    let has_body = request.headers.iter().any(|f| {
        f.name.eq_ignore_ascii_case("transfer-encoding")
            || (f.name.eq_ignore_ascii_case("content-length") && f.value != b"0")
    });
    assert!(!has_body, "backend request {index} has a body: {}", text());
    Some(head)
}

type ServerHandshake = Pin<Box<server::Handshake<PeerSocket, Bytes>>>;

enum H2cConnection {
    Handshake(ServerHandshake),
    Serving {
        connection: Box<server::Connection<PeerSocket, Bytes>>,
        /// Requests whose body has not ended yet.
        pending: Vec<(RecvStream, server::SendResponse<Bytes>)>,
    },
    Ended,
}

/// The `h2` server on every connection of the gateway's pool.
#[derive(Default)]
struct H2cBackend {
    conns: Vec<H2cConnection>,
    served: usize,
}

impl H2cBackend {
    fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            let served = self.served;
            let mut moved = false;
            for conn in &mut self.conns {
                moved |= serve_h2c(conn, cx, &mut self.served);
            }
            if !moved && served == self.served {
                break;
            }
            progress = true;
        }
        self.conns.retain(|c| !matches!(c, H2cConnection::Ended));
        progress
    }
}

/// Poll one backend connection: accept streams, answer those whose request
/// ended. Returns whether anything changed.
fn serve_h2c(conn: &mut H2cConnection, cx: &mut Context<'_>, served: &mut usize) -> bool {
    if let H2cConnection::Handshake(handshake) = conn {
        match handshake.as_mut().poll(cx) {
            Poll::Ready(Ok(connection)) => {
                *conn = H2cConnection::Serving {
                    connection: Box::new(connection),
                    pending: Vec::new(),
                };
                return true;
            }
            Poll::Ready(Err(e)) => panic!("h2c backend handshake: {e}"),
            Poll::Pending => return false,
        }
    }
    let H2cConnection::Serving {
        connection,
        pending,
    } = conn
    else {
        return false;
    };
    let mut changed = false;
    loop {
        match connection.poll_accept(cx) {
            Poll::Ready(Some(Ok((request, respond)))) => {
                assert_eq!(
                    (request.method(), request.uri().path()),
                    (&http::Method::GET, "/app/x"),
                    "h2c backend request {served}: {request:?}"
                );
                pending.push((request.into_body(), respond));
                changed = true;
            }
            Poll::Ready(Some(Err(e))) => panic!("h2c backend connection: {e}"),
            Poll::Ready(None) => {
                // The gateway closed a pooled connection it no longer wants.
                *conn = H2cConnection::Ended;
                return true;
            }
            Poll::Pending => break,
        }
    }
    let mut i = 0;
    while i < pending.len() {
        // The request's end: the gateway forwards GET without a body.
        let ended = match pending[i].0.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                panic!("h2c backend request {served} has a body: {data:?}")
            }
            Poll::Ready(Some(Err(e))) => panic!("h2c backend request {served}: {e}"),
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        if !ended {
            i += 1;
            continue;
        }
        let (_, mut respond) = pending.swap_remove(i);
        let response = Response::builder()
            .status(200)
            .header("content-length", BODY.len())
            .body(())
            .expect("response");
        let mut send = respond
            .send_response(response, false)
            .unwrap_or_else(|e| panic!("h2c backend response {served}: {e}"));
        send.send_data(Bytes::from_static(BODY), true)
            .unwrap_or_else(|e| panic!("h2c backend body {served}: {e}"));
        *served += 1;
        changed = true;
    }
    changed
}
