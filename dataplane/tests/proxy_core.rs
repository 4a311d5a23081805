//! The proxy core in memory: a fake transport stands in for sockets, the
//! test plays client and backend byte by byte.

use arc_swap::ArcSwap;
use rauta_dataplane::config::BackendProtocol;
use rauta_dataplane::config::{
    ActiveHealthCheck, Backend, Backends, CheckProbe, Cors, GatewayConfig, HashOn, Listener,
    Mirror, OutlierDetection, PortListeners, RetryPolicy, RouteTimeouts, RuleAction,
    SessionCarrier, SessionPersistence, TrafficPolicy,
};
use rauta_dataplane::error::Cause;
use rauta_dataplane::http2::Http2Settings;
use rauta_dataplane::metrics::{EjectionCause, MetricsSnapshot, ProxyMetrics};
use rauta_dataplane::proxy::{
    ConnectionGone, LoadBalancing, ProxySettings, ReadOutcome, RetryBudgetSettings, Transport,
};
use rauta_dataplane::routes::{PathMatch, Route, RouteMatch, RouteTable};
use rauta_dataplane::service::HttpService;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default, Debug)]
struct FakeConn {
    /// What the peer sent, not yet read by the proxy.
    inbox: Vec<u8>,
    /// What the proxy wrote.
    outbox: Vec<u8>,
    peer_finished: bool,
    failed: bool,
    /// Takes no bytes: not connected yet, or a peer that does not read.
    stalled: bool,
    /// Closed (FIN) or aborted (RST) by the proxy.
    closed: Option<&'static str>,
}

#[derive(Default)]
struct FakeIo {
    conns: HashMap<u32, FakeConn>,
    next: u32,
    /// Backend connections opened, in order.
    connects: Vec<(u32, SocketAddr)>,
    /// New backend connections never finish connecting.
    connects_hang: bool,
    /// Connections to this address are refused.
    refusing: Option<SocketAddr>,
}

impl FakeIo {
    fn open(&mut self) -> u32 {
        self.next += 1;
        self.conns.insert(self.next, FakeConn::default());
        self.next
    }

    fn take_output(&mut self, id: u32) -> String {
        String::from_utf8_lossy(&std::mem::take(
            &mut self.conns.get_mut(&id).unwrap().outbox,
        ))
        .into_owned()
    }
}

impl Transport for FakeIo {
    type Conn = u32;

    fn read(&mut self, conn: u32, buf: &mut [u8]) -> ReadOutcome {
        let c = self.conns.get_mut(&conn).unwrap();
        if c.failed {
            return ReadOutcome::Failed;
        }
        if c.inbox.is_empty() {
            return if c.peer_finished {
                ReadOutcome::Closed
            } else {
                ReadOutcome::WouldBlock
            };
        }
        let n = buf.len().min(c.inbox.len());
        buf[..n].copy_from_slice(&c.inbox[..n]);
        c.inbox.drain(..n);
        ReadOutcome::Data(n)
    }

    fn write(&mut self, conn: u32, data: &[u8]) -> Result<usize, ConnectionGone> {
        let c = self.conns.get_mut(&conn).unwrap();
        if c.failed || c.closed.is_some() {
            return Err(ConnectionGone);
        }
        if c.stalled {
            return Ok(0);
        }
        c.outbox.extend_from_slice(data);
        Ok(data.len())
    }

    fn connect(&mut self, to: SocketAddr, _: BackendProtocol) -> Option<u32> {
        let id = self.open();
        let c = self.conns.get_mut(&id).unwrap();
        c.stalled = self.connects_hang;
        c.failed = self.refusing == Some(to);
        self.connects.push((id, to));
        Some(id)
    }

    fn established(&mut self, conn: u32) -> bool {
        let c = &self.conns[&conn];
        !c.failed && !c.stalled
    }

    fn close(&mut self, conn: u32) {
        self.conns.get_mut(&conn).unwrap().closed = Some("fin");
    }

    fn abort(&mut self, conn: u32) {
        self.conns.get_mut(&conn).unwrap().closed = Some("rst");
    }
}

const BACKEND: &str = "10.0.0.1:8080";

fn config() -> GatewayConfig {
    config_with(&[BACKEND])
}

/// `/app` to one backend with `endpoints`.
fn config_with(endpoints: &[&str]) -> GatewayConfig {
    config_where(endpoints, |_| {})
}

/// `/app` to one backend with `endpoints`, its rule as `configure` leaves
/// it.
fn config_where(endpoints: &[&str], configure: impl FnOnce(&mut RuleAction)) -> GatewayConfig {
    let backend = || {
        Backends::new(vec![Backend::new(
            "ns/svc:80",
            1,
            endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        )])
    };
    let routes = RouteTable::new(vec![Route {
        name: "ns/route".into(),
        created: 0,
        hostnames: vec![],
        rules: vec![(
            vec![RouteMatch {
                path: PathMatch::Prefix("/app".into()),
                ..RouteMatch::default()
            }],
            {
                let mut action = RuleAction {
                    route: "ns/route".into(),
                    backends: backend(),
                    ..RuleAction::default()
                };
                configure(&mut action);
                action
            },
        )],
    }]);
    let mut ports = BTreeMap::new();
    ports.insert(
        80,
        PortListeners::new(vec![Listener {
            name: "ns/gw/http".into(),
            hostname: None,
            routes,
        }]),
    );
    GatewayConfig { ports }
}

struct Harness {
    io: FakeIo,
    proxy: HttpService<FakeIo>,
    client: u32,
    now: Instant,
    metrics: Arc<ProxyMetrics>,
}

impl Harness {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(config: GatewayConfig) -> Self {
        Self::with_settings(config, ProxySettings::default())
    }

    /// Endpoints picked in turn (round robin), so a test knows which
    /// comes next.
    fn in_turn(config: GatewayConfig) -> Self {
        let settings = ProxySettings {
            load_balancing: LoadBalancing::RoundRobin,
            ..ProxySettings::default()
        };
        Self::with_settings(config, settings)
    }

    fn with_settings(config: GatewayConfig, settings: ProxySettings) -> Self {
        let mut io = FakeIo::default();
        let metrics = Arc::new(ProxyMetrics::default());
        let mut proxy = HttpService::new(
            settings,
            Http2Settings::default(),
            Arc::new(ArcSwap::from_pointee(config)),
            metrics.clone(),
        );
        let client = io.open();
        let now = Instant::now();
        proxy.accept(&mut io, client, "192.0.2.7:40000".parse().unwrap(), 80, now);
        proxy.flush(&mut io, now);
        Self {
            io,
            proxy,
            client,
            now,
            metrics,
        }
    }

    /// What a worker does after a batch of events: flush, and flush again
    /// while work is left that no event will announce (the transport here
    /// reports a connection once per batch, as an edge-triggered socket
    /// does).
    fn events_done(&mut self) {
        self.proxy.flush(&mut self.io, self.now);
        for _ in 0..10_000 {
            if !self.proxy.has_work() {
                return;
            }
            self.proxy.flush(&mut self.io, self.now);
        }
        panic!("the proxy still has work after 10,000 flushes");
    }

    /// `seconds` pass; the proxy's tick runs.
    fn wait(&mut self, seconds: u64) {
        self.now += Duration::from_secs(seconds);
        self.proxy.tick(&mut self.io, self.now);
    }

    /// `millis` pass; what the proxy's timers hold for then runs.
    fn advance(&mut self, millis: u64) {
        self.now += Duration::from_millis(millis);
        self.proxy.run_timers(&mut self.io, self.now);
    }

    /// Failures counted for `cause` so far.
    fn failures(&self, cause: Cause) -> u64 {
        let mut snapshot = MetricsSnapshot::default();
        self.metrics.add_to(&mut snapshot);
        snapshot.errors[cause.index()]
    }

    fn closed(&self, conn: u32) -> Option<&'static str> {
        self.io.conns[&conn].closed
    }

    fn client_sends(&mut self, bytes: &str) {
        self.io
            .conns
            .get_mut(&self.client)
            .unwrap()
            .inbox
            .extend_from_slice(bytes.as_bytes());
        self.proxy.on_io(&mut self.io, self.client, self.now);
        self.events_done();
    }

    /// A second client connects from `peer` and sends `bytes`.
    fn another_client(&mut self, peer: &str, bytes: &str) -> u32 {
        let conn = self.io.open();
        self.proxy
            .accept(&mut self.io, conn, peer.parse().unwrap(), 80, self.now);
        self.io
            .conns
            .get_mut(&conn)
            .unwrap()
            .inbox
            .extend_from_slice(bytes.as_bytes());
        self.proxy.on_io(&mut self.io, conn, self.now);
        self.events_done();
        conn
    }

    fn backend_sends(&mut self, backend: u32, bytes: &str) {
        self.io
            .conns
            .get_mut(&backend)
            .unwrap()
            .inbox
            .extend_from_slice(bytes.as_bytes());
        self.proxy.on_io(&mut self.io, backend, self.now);
        self.events_done();
    }

    fn snapshot(&self) -> MetricsSnapshot {
        let mut snapshot = MetricsSnapshot::default();
        self.metrics.add_to(&mut snapshot);
        snapshot
    }

    /// The backend connection a request just went out on (taken), and
    /// where to.
    fn request_out(&mut self) -> (u32, String) {
        let (conn, to) = self
            .io
            .connects
            .iter()
            .map(|&(c, to)| (c, to.to_string()))
            .find(|(c, _)| !self.io.conns[c].outbox.is_empty())
            .expect("the request went out");
        self.io.take_output(conn);
        (conn, to)
    }

    /// Ejections counted for `cause` so far.
    fn ejections(&self, cause: EjectionCause) -> u64 {
        self.snapshot().ejections[cause as usize]
    }

    /// The last backend connection opened, and where to.
    fn last_connect(&self) -> (u32, String) {
        let (conn, to) = self.io.connects.last().expect("a backend connection");
        (*conn, to.to_string())
    }

    /// Backend connection `conn` fails: refused if it had not connected
    /// yet, reset if it had.
    fn fail_backend(&mut self, conn: u32) {
        self.io.conns.get_mut(&conn).unwrap().failed = true;
        self.proxy.on_io(&mut self.io, conn, self.now);
        self.events_done();
    }

    fn last_backend(&self) -> u32 {
        self.io.connects.last().expect("a backend connection").0
    }

    fn client_got(&mut self) -> String {
        self.io.take_output(self.client)
    }
}

#[test]
fn forwards_with_forwarding_headers_and_reuses_the_backend_connection() {
    let mut h = Harness::new();
    h.client_sends("GET /app/x?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n");
    let backend = h.last_backend();
    let request = h.io.take_output(backend);
    assert!(
        request.starts_with("GET /app/x?q=1 HTTP/1.1\r\nhost: example.com\r\n"),
        "{request}"
    );
    assert!(
        request.contains("x-forwarded-for: 192.0.2.7\r\n"),
        "{request}"
    );
    assert!(request.contains("x-forwarded-proto: http\r\n"), "{request}");
    assert!(
        !request.contains("X-Hop"),
        "hop-by-hop field named by Connection forwarded: {request}"
    );
    h.backend_sends(backend, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(
        h.client_got(),
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    );

    h.client_sends("GET /app/y HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(h.io.connects.len(), 1, "the pooled connection is reused");
    assert!(h.io.take_output(backend).starts_with("GET /app/y "));
}

#[test]
fn pipelined_requests_are_answered_in_order_and_chunked_bodies_re_framed() {
    let mut h = Harness::new();
    h.client_sends(
        "POST /app/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /app/b HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    let backend = h.last_backend();
    let first = h.io.take_output(backend);
    assert!(
        first.contains("transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        "{first}"
    );
    assert!(
        !first.contains("/app/b"),
        "the second request waits for the first response"
    );
    // A response without a length, until close: re-framed as chunked.
    h.backend_sends(backend, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello");
    h.io.conns.get_mut(&backend).unwrap().peer_finished = true;
    h.proxy.on_io(&mut h.io, backend, h.now);
    h.proxy.flush(&mut h.io, h.now);
    let got = h.client_got();
    assert!(
        got.starts_with(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        "{got}"
    );
    // Then the pipelined second request goes out on a new connection.
    let second = h.last_backend();
    assert_ne!(second, backend);
    assert!(h.io.take_output(second).starts_with("GET /app/b "));
    h.backend_sends(second, "HTTP/1.1 204 No Content\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 204 No Content\r\n"));
}

#[test]
fn no_route_is_404_and_smuggling_is_400_with_the_connection_closed() {
    let mut h = Harness::new();
    h.client_sends("GET /elsewhere HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 404 Not Found\r\n"));
    assert!(h.io.connects.is_empty());
    h.client_sends("POST /app HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let got = h.client_got();
    assert!(
        got.starts_with("HTTP/1.1 400 Bad Request\r\n") && got.contains("connection: close"),
        "{got}"
    );
    assert!(
        h.io.connects.is_empty(),
        "nothing after the bad request was forwarded"
    );
    assert_eq!(h.io.conns[&h.client].closed, Some("fin"));
}

#[test]
fn a_backend_reset_before_answering_is_503_and_a_stale_pooled_connection_is_retried() {
    let mut h = Harness::new();
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let first = h.last_backend();
    h.io.conns.get_mut(&first).unwrap().failed = true;
    h.proxy.on_io(&mut h.io, first, h.now);
    h.proxy.flush(&mut h.io, h.now);
    let got = h.client_got();
    assert!(
        got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{got}"
    );
    assert!(!got.contains("rror"), "no internal error text: {got}");

    // A pooled connection the backend closed while idle: the request is
    // sent again on a fresh one, the client never notices.
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let second = h.last_backend();
    h.io.take_output(second);
    h.backend_sends(second, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.client_got();
    h.client_sends("GET /app/again HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.last_backend(), second, "reused from the pool");
    h.io.conns.get_mut(&second).unwrap().peer_finished = true;
    h.proxy.on_io(&mut h.io, second, h.now);
    h.proxy.flush(&mut h.io, h.now);
    let third = h.last_backend();
    assert_ne!(third, second, "retried on a new connection");
    assert!(h.io.take_output(third).starts_with("GET /app/again "));
    h.backend_sends(third, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200 OK"));
}

const SECOND: &str = "10.0.0.2:8080";
const THIRD: &str = "10.0.0.3:8080";

#[test]
fn a_refused_connect_is_tried_on_the_next_endpoint_and_the_client_never_notices() {
    let mut h = Harness::in_turn(config_with(&[BACKEND, SECOND, THIRD]));
    // Writes are not taken until a connection is up: nothing reaches a
    // backend that refuses.
    h.io.connects_hang = true;
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let (first, to) = h.last_connect();
    assert_eq!(to, BACKEND);
    h.io.connects_hang = false;
    h.fail_backend(first);
    assert_eq!(h.closed(first), Some("rst"));
    let (second, to) = h.last_connect();
    assert_eq!(to, SECOND, "the next endpoint");
    assert!(h
        .io
        .take_output(second)
        .starts_with("GET /app HTTP/1.1\r\n"));
    h.backend_sends(second, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let got = h.client_got();
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("ok"),
        "{got}"
    );
    assert_eq!(h.failures(Cause::ConnectRefused), 1, "counted");
    assert_eq!(h.snapshot().retries, 1);
}

#[test]
fn a_refusing_endpoint_leaves_the_rotation_until_its_ejection_ends() {
    let mut h = Harness::in_turn(config_with(&[BACKEND, SECOND]));
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    h.io.connects_hang = true;
    h.client_sends("GET /app/1 HTTP/1.1\r\nHost: h\r\n\r\n");
    let (first, _) = h.last_connect();
    h.io.connects_hang = false;
    h.fail_backend(first);
    let (second, to) = h.last_connect();
    assert_eq!(to, SECOND);
    h.io.take_output(second);
    h.backend_sends(second, ok);
    assert!(h.client_got().starts_with("HTTP/1.1 200"));
    assert_eq!(h.ejections(EjectionCause::Connect), 1);
    // Its turns go to the other endpoint, on the pooled connection.
    for n in 2..=3 {
        h.client_sends(&format!("GET /app/{n} HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert_eq!(h.io.connects.len(), 2, "request {n}: no new connection");
        assert!(h
            .io
            .take_output(second)
            .starts_with(&format!("GET /app/{n} ")));
        h.backend_sends(second, ok);
        assert!(h.client_got().starts_with("HTTP/1.1 200"));
    }
    // A second on: back in the rotation, tried again.
    h.wait(1);
    for n in 4..=5 {
        h.client_sends(&format!("GET /app/{n} HTTP/1.1\r\nHost: h\r\n\r\n"));
        let (conn, to) = h.last_connect();
        if to == BACKEND {
            assert!(h
                .io
                .take_output(conn)
                .starts_with(&format!("GET /app/{n} ")));
            return;
        }
        h.io.take_output(second);
        h.backend_sends(second, ok);
        h.client_got();
    }
    panic!("the ejected endpoint never came back: {:?}", h.io.connects);
}

#[test]
fn a_reset_before_any_answer_resends_a_get_to_the_next_endpoint_but_never_a_post() {
    let mut h = Harness::in_turn(config_with(&[BACKEND, SECOND]));
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let (first, _) = h.last_connect();
    assert!(h.io.take_output(first).starts_with("GET /app "), "sent");
    h.fail_backend(first);
    let (second, to) = h.last_connect();
    assert_eq!(to, SECOND);
    assert!(h.io.take_output(second).starts_with("GET /app "));
    h.backend_sends(second, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200"));
    assert_eq!(h.failures(Cause::ResetBeforeResponse), 1);
    assert_eq!(
        h.ejections(EjectionCause::Connect),
        0,
        "a reset is no connect failure"
    );

    let mut h = Harness::in_turn(config_with(&[BACKEND, SECOND]));
    h.client_sends("POST /app HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx");
    let (first, _) = h.last_connect();
    assert!(h.io.take_output(first).starts_with("POST /app "), "sent");
    h.fail_backend(first);
    assert_eq!(
        h.io.connects.len(),
        1,
        "a POST the backend may have seen is not sent again"
    );
    assert!(h
        .client_got()
        .starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
}

#[test]
fn every_endpoint_refusing_is_502_after_each_was_tried_once() {
    let mut h = Harness::in_turn(config_with(&[BACKEND, SECOND]));
    h.io.connects_hang = true;
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let (first, _) = h.last_connect();
    h.fail_backend(first);
    let (second, to) = h.last_connect();
    assert_eq!(to, SECOND);
    h.fail_backend(second);
    assert_eq!(h.io.connects.len(), 2, "not the first one again");
    assert!(h.client_got().starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
    assert_eq!(h.failures(Cause::ConnectRefused), 2);
}

#[test]
fn a_connect_timeout_moves_on_to_the_next_endpoint() {
    let mut h = Harness::in_turn(config_with(&[BACKEND, SECOND]));
    h.io.connects_hang = true;
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let (first, _) = h.last_connect();
    h.io.connects_hang = false;
    h.wait(5);
    assert_eq!(h.closed(first), Some("rst"));
    let (second, to) = h.last_connect();
    assert_eq!(to, SECOND);
    assert!(h
        .io
        .take_output(second)
        .starts_with("GET /app HTTP/1.1\r\n"));
    h.backend_sends(second, "HTTP/1.1 204 No Content\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 204 No Content\r\n"));
    assert_eq!(h.failures(Cause::ConnectTimeout), 1);
}

#[test]
fn a_silent_backend_times_out_with_504_and_an_idle_client_is_closed() {
    let mut h = Harness::new();
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let later = h.now + Duration::from_secs(40);
    h.proxy.tick(&mut h.io, later);
    assert!(h
        .client_got()
        .starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
    let much_later = later + Duration::from_secs(61);
    h.proxy.tick(&mut h.io, much_later);
    assert_eq!(h.io.conns[&h.client].closed, Some("fin"));
    assert_eq!(h.proxy.clients(), 0);
}

#[test]
fn expect_continue_is_answered_before_the_body() {
    let mut h = Harness::new();
    h.client_sends(
        "PUT /app HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(h.client_got(), "HTTP/1.1 100 Continue\r\n\r\n");
    h.client_sends("data");
    let backend = h.last_backend();
    let request = h.io.take_output(backend);
    assert!(!request.contains("Expect"), "{request}");
    assert!(
        request.ends_with("content-length: 4\r\n\r\ndata"),
        "{request}"
    );
}

#[test]
fn a_client_that_resets_mid_response_ends_only_its_own_exchange() {
    let mut h = Harness::new();
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let backend = h.last_backend();
    // The client is gone by the time the response arrives.
    h.io.conns.get_mut(&h.client).unwrap().failed = true;
    h.backend_sends(backend, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(h.proxy.clients(), 0);

    // A neighbour on the same proxy is served as before.
    let other = h.another_client("192.0.2.8:40001", "GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let next = h.last_backend();
    h.backend_sends(next, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.io.take_output(other).starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn a_drain_closes_idle_backend_connections_and_finishes_requests_in_flight() {
    let mut h = Harness::new();
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let pooled = h.last_backend();
    h.backend_sends(pooled, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.client_got();
    h.client_sends("GET /app/slow HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(h.proxy.drain(&mut h.io, h.now), "a request is in flight");
    // The pooled connection was reused for the request in flight; a second
    // client's finished exchange left another one idle in the pool.
    h.another_client("192.0.2.9:40002", "GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let idle = h.last_backend();
    h.backend_sends(idle, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.proxy.drain(&mut h.io, h.now));
    assert_eq!(
        h.io.conns[&idle].closed,
        Some("fin"),
        "idle pooled connection closed"
    );
    h.backend_sends(pooled, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let got = h.client_got();
    assert!(
        got.starts_with("HTTP/1.1 200 OK") && got.contains("connection: close"),
        "{got}"
    );
    assert!(!h.proxy.drain(&mut h.io, h.now), "nothing left in flight");
    assert_eq!(h.proxy.clients(), 0);
}

#[test]
fn a_request_head_must_complete_in_time_from_its_first_byte() {
    let mut h = Harness::new();
    h.wait(50);
    assert_eq!(h.closed(h.client), None, "no byte yet: keep-alive time");
    h.client_sends("GET /app HTTP/1.1\r\nHo");
    h.wait(9);
    h.client_sends("st");
    assert_eq!(h.closed(h.client), None);
    h.wait(1);
    assert!(h
        .client_got()
        .starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    assert_eq!(h.closed(h.client), Some("fin"));
    assert_eq!(h.failures(Cause::RequestHeadTimeout), 1);
}

#[test]
fn an_upload_longer_than_the_response_timeout_is_served() {
    let mut h = Harness::new();
    h.client_sends("PUT /app HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n");
    let backend = h.last_backend();
    // 40 s of body, a byte every 5 s: each pause is short, the whole is
    // longer than the 30 s response timeout.
    for _ in 0..8 {
        h.wait(5);
        h.client_sends("x");
    }
    h.client_sends("y");
    h.wait(29);
    assert_eq!(
        h.closed(backend),
        None,
        "the response clock starts at the end"
    );
    h.backend_sends(backend, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert!(h.client_got().starts_with("HTTP/1.1 200 OK"));
    assert!(h.io.take_output(backend).ends_with("xxxxxxxxy"));
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    h.wait(30);
    assert!(h.client_got().starts_with("HTTP/1.1 504 Gateway Timeout"));
    assert_eq!(h.failures(Cause::ResponseHeadTimeout), 1);
}

#[test]
fn a_stalled_request_body_gets_408_and_releases_the_backend() {
    let mut h = Harness::new();
    h.client_sends("PUT /app HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc");
    let backend = h.last_backend();
    h.wait(59);
    assert_eq!(h.closed(backend), None);
    h.wait(1);
    assert!(h.client_got().starts_with("HTTP/1.1 408 Request Timeout"));
    assert_eq!(h.closed(backend), Some("rst"));
    assert_eq!(h.closed(h.client), Some("fin"));
    assert_eq!(h.failures(Cause::RequestBodyIdle), 1);
}

#[test]
fn a_connect_that_never_completes_is_504_after_the_connect_timeout() {
    let mut h = Harness::new();
    h.io.connects_hang = true;
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let backend = h.last_backend();
    h.wait(4);
    assert_eq!(h.client_got(), "");
    h.wait(1);
    assert!(h.client_got().starts_with("HTTP/1.1 504 Gateway Timeout"));
    assert_eq!(h.closed(backend), Some("rst"));
    assert_eq!(h.failures(Cause::ConnectTimeout), 1);
}

/// A client asks for a large body and stops reading; the backend answers
/// with the head and `first` bytes of it. Returns the backend connection.
fn big_response_to_a_stalled_client(h: &mut Harness, first: usize) -> u32 {
    h.client_sends("GET /app/big HTTP/1.1\r\nHost: h\r\n\r\n");
    let backend = h.last_backend();
    h.io.conns.get_mut(&h.client).unwrap().stalled = true;
    h.backend_sends(
        backend,
        "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n",
    );
    h.backend_sends(backend, &"z".repeat(first));
    backend
}

#[test]
fn a_response_larger_than_one_drive_moves_reaches_the_client_whole_after_one_event() {
    let mut h = Harness::new();
    h.client_sends("GET /app/big HTTP/1.1\r\nHost: h\r\n\r\n");
    let backend = h.last_backend();
    // All of it is there at once, and said once: far more than one drive
    // of an exchange moves.
    let body = 16 << 20;
    h.backend_sends(
        backend,
        &format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {body}\r\n\r\n{}",
            "z".repeat(body)
        ),
    );
    let got = h.client_got();
    let (head, relayed) = got.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(relayed.len(), body, "the body relayed whole");
    assert!(!h.proxy.has_work());
}

#[test]
fn a_client_that_stops_reading_loses_both_legs() {
    let mut h = Harness::new();
    let backend = big_response_to_a_stalled_client(&mut h, 100_000);
    h.wait(59);
    assert_eq!(h.closed(backend), None);
    h.wait(1);
    assert_eq!(h.closed(h.client), Some("rst"));
    assert_eq!(h.closed(backend), Some("rst"));
    assert_eq!(h.proxy.clients(), 0);
    assert_eq!(h.failures(Cause::ClientNotReading), 1);
}

#[test]
fn a_client_that_stops_reading_is_timed_by_its_reading_while_the_backend_still_sends() {
    let mut h = Harness::new();
    let backend = big_response_to_a_stalled_client(&mut h, 1_000);
    h.wait(30);
    // Bytes from the backend half-way: not the client's reading.
    h.backend_sends(backend, &"z".repeat(1_000));
    h.wait(29);
    assert_eq!(h.closed(backend), None);
    h.wait(1);
    assert_eq!(h.closed(h.client), Some("rst"));
    assert_eq!(h.closed(backend), Some("rst"));
    assert_eq!(h.failures(Cause::ClientNotReading), 1);
}

#[test]
fn a_body_announced_after_a_local_answer_must_still_come_in_time() {
    let mut h = Harness::new();
    h.client_sends("POST /elsewhere HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 404 Not Found"));
    h.wait(59);
    assert_eq!(h.closed(h.client), None);
    h.wait(1);
    assert_eq!(h.closed(h.client), Some("fin"));
    assert!(h.io.connects.is_empty(), "no backend was involved");
    assert_eq!(h.failures(Cause::RequestBodyIdle), 1);
    assert_eq!(h.failures(Cause::NoRoute), 1);
}

fn retry_on(codes: &[u16], attempts: u8) -> RetryPolicy {
    RetryPolicy {
        codes: codes.to_vec(),
        attempts,
        backoff: Duration::from_millis(100),
    }
}

#[test]
fn a_route_retry_sends_a_retried_status_again_after_its_backoff_body_and_all() {
    let policy = retry_on(&[503], 2);
    let mut h = Harness::with(config_where(&[BACKEND], |a| a.retry = Some(policy)));
    h.client_sends("POST /app HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
    let backend = h.last_backend();
    assert!(h.io.take_output(backend).ends_with("\r\n\r\nhello"));
    h.backend_sends(
        backend,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    );
    assert_eq!(h.client_got(), "", "a retried answer is not relayed");
    h.advance(99);
    assert_eq!(h.io.take_output(backend), "", "not before the back-off");
    h.advance(1);
    let again = h.io.take_output(backend);
    assert!(
        again.starts_with("POST /app HTTP/1.1\r\n") && again.ends_with("\r\n\r\nhello"),
        "the whole request again: {again:?}"
    );
    assert_eq!(
        h.io.connects.len(),
        1,
        "the answer was read whole: its connection went back to the pool"
    );
    // The second retry's back-off is doubled; the backend still fails
    // and the policy has no third: the last answer is relayed.
    h.backend_sends(
        backend,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    );
    h.advance(150);
    assert_eq!(h.io.take_output(backend), "");
    h.advance(50);
    assert!(h.io.take_output(backend).starts_with("POST /app "));
    h.backend_sends(
        backend,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    );
    let got = h.client_got();
    assert!(
        got.starts_with("HTTP/1.1 503 ") && got.ends_with("busy"),
        "{got}"
    );
    assert_eq!(h.snapshot().retries, 2);
}

#[test]
fn a_status_the_policy_does_not_name_is_relayed_at_once() {
    let policy = retry_on(&[500], 3);
    let mut h = Harness::with(config_where(&[BACKEND], |a| a.retry = Some(policy)));
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let backend = h.last_backend();
    h.backend_sends(
        backend,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(h.client_got().starts_with("HTTP/1.1 503 "));
    assert_eq!(h.snapshot().retries, 0);
}

#[test]
fn a_spent_retry_budget_relays_the_answer_and_is_counted() {
    let settings = ProxySettings {
        retry_budget: RetryBudgetSettings {
            ratio: 0.0,
            min_per_second: 0,
        },
        ..ProxySettings::default()
    };
    let policy = retry_on(&[503], 3);
    let config = config_where(&[BACKEND], |a| a.retry = Some(policy));
    let mut h = Harness::with_settings(config, settings);
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let backend = h.last_backend();
    h.backend_sends(
        backend,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(h.client_got().starts_with("HTTP/1.1 503 "));
    let snapshot = h.snapshot();
    assert_eq!(
        (snapshot.retries, snapshot.retries_budget_exhausted),
        (0, 1)
    );
}

#[test]
fn a_route_request_timeout_answers_504_and_releases_the_backend() {
    let timeouts = RouteTimeouts {
        request: Some(Duration::from_millis(500)),
        backend_request: None,
    };
    let mut h = Harness::with(config_where(&[BACKEND], |a| a.timeouts = timeouts));
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let backend = h.last_backend();
    h.advance(499);
    assert_eq!(h.client_got(), "");
    h.advance(1);
    assert!(h
        .client_got()
        .starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
    assert_eq!(h.closed(backend), Some("rst"));
    assert_eq!(h.failures(Cause::RequestTimeout), 1);
}

#[test]
fn a_backend_request_timeout_is_retried_under_the_policy_on_a_new_connection() {
    let mut h = Harness::with(config_where(&[BACKEND], |a| {
        a.retry = Some(retry_on(&[], 1));
        a.timeouts.backend_request = Some(Duration::from_millis(200));
    }));
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let first = h.last_backend();
    h.advance(200);
    assert_eq!(h.closed(first), Some("rst"), "the slow attempt is let go");
    assert_eq!(h.client_got(), "", "and the client waits for the next");
    h.advance(100);
    let second = h.last_backend();
    assert_ne!(first, second);
    assert!(h.io.take_output(second).starts_with("GET /app "));
    h.backend_sends(second, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert!(h.client_got().starts_with("HTTP/1.1 200 OK"));
    assert_eq!(h.failures(Cause::BackendRequestTimeout), 1);
}

#[test]
fn a_reset_is_retried_under_the_policy_on_the_only_endpoint() {
    let mut h = Harness::with(config_where(&[BACKEND], |a| {
        a.retry = Some(retry_on(&[], 2))
    }));
    h.client_sends("POST /app HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx");
    let first = h.last_backend();
    assert!(h.io.take_output(first).starts_with("POST /app "));
    h.fail_backend(first);
    assert_eq!(h.client_got(), "");
    h.advance(100);
    let second = h.last_backend();
    assert_ne!(first, second);
    assert!(
        h.io.take_output(second).ends_with("\r\n\r\nx"),
        "a POST too, under a policy"
    );
    h.backend_sends(second, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200 OK"));
}

const MIRROR: &str = "10.0.0.9:8080";

/// `/app` to [`BACKEND`], every request copied to [`MIRROR`].
fn mirrored() -> GatewayConfig {
    config_where(&[BACKEND], |a| {
        a.mirrors.push(Mirror {
            action: Arc::new(RuleAction {
                route: "ns/route".into(),
                backends: Backends::new(vec![Backend::new(
                    "ns/mirror:80",
                    1,
                    vec![MIRROR.parse().unwrap()],
                )]),
                ..RuleAction::default()
            }),
            numerator: 1,
            denominator: 1,
        })
    })
}

/// The backend connection opened to `to`.
fn connection_to(h: &Harness, to: &str) -> u32 {
    h.io.connects
        .iter()
        .find(|(_, addr)| addr.to_string() == to)
        .map(|(conn, _)| *conn)
        .unwrap_or_else(|| panic!("no connection to {to}"))
}

#[test]
fn a_mirrored_request_reaches_the_mirror_body_and_all_and_its_answer_is_dropped() {
    let mut h = Harness::with(mirrored());
    h.client_sends("POST /app HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel");
    h.client_sends("lo");
    let (main, copy) = (connection_to(&h, BACKEND), connection_to(&h, MIRROR));
    let sent = h.io.take_output(main);
    let copied = h.io.take_output(copy);
    assert!(
        sent.starts_with("POST /app ") && sent.ends_with("hello"),
        "{sent:?}"
    );
    assert!(
        copied.starts_with("POST /app ") && copied.ends_with("hello"),
        "{copied:?}"
    );
    h.backend_sends(
        copy,
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(h.client_got(), "", "the mirror's answer is nobody's");
    h.backend_sends(main, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(
        h.client_got(),
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    );
    let snapshot = h.snapshot();
    assert_eq!(snapshot.mirrors, 1);
    assert_eq!(
        snapshot.responses.iter().sum::<u64>(),
        1,
        "one response counted"
    );
}

#[test]
fn a_mirror_that_falls_behind_is_let_go_and_the_request_goes_on() {
    let mut h = Harness::with(mirrored());
    let body = 400 * 1024;
    h.client_sends(&format!(
        "POST /app HTTP/1.1\r\nHost: h\r\nContent-Length: {body}\r\n\r\n"
    ));
    let (main, copy) = (connection_to(&h, BACKEND), connection_to(&h, MIRROR));
    h.io.conns.get_mut(&copy).unwrap().stalled = true;
    let chunk = "x".repeat(16 * 1024);
    let mut forwarded = h.io.take_output(main).len();
    for _ in 0..body / chunk.len() {
        h.client_sends(&chunk);
        forwarded += h.io.take_output(main).len();
        h.proxy.on_io(&mut h.io, main, h.now);
        h.proxy.flush(&mut h.io, h.now);
    }
    forwarded += h.io.take_output(main).len();
    assert!(
        forwarded > body,
        "the whole body went to the backend: {forwarded}"
    );
    assert_eq!(h.closed(copy), Some("rst"), "the stalled mirror was let go");
    h.backend_sends(main, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn a_cors_preflight_is_answered_by_the_gateway_and_an_actual_request_gets_its_fields() {
    let cors = Cors {
        allow_origins: vec!["https://*.example.com".into()],
        allow_methods: vec!["*".into()],
        allow_headers: vec!["x-a".into()],
        expose_headers: vec![],
        allow_credentials: true,
        max_age: 60,
    };
    let mut h = Harness::with(config_where(&[BACKEND], |a| a.cors = Some(cors)));
    h.client_sends(
        "OPTIONS /app HTTP/1.1\r\nHost: h\r\nOrigin: https://web.example.com\r\n\
         Access-Control-Request-Method: PUT\r\n\r\n",
    );
    let got = h.client_got();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    for field in [
        "access-control-allow-origin: https://web.example.com\r\n",
        "access-control-allow-methods: PUT\r\n",
        "access-control-allow-headers: x-a\r\n",
        "access-control-allow-credentials: true\r\n",
        "access-control-max-age: 60\r\n",
    ] {
        assert!(got.contains(field), "{field:?} missing: {got}");
    }
    assert!(h.io.connects.is_empty(), "no backend saw the preflight");
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\nOrigin: https://web.example.com\r\n\r\n");
    let backend = h.last_backend();
    h.backend_sends(backend, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let got = h.client_got();
    assert!(
        got.contains("access-control-allow-origin: https://web.example.com\r\n"),
        "{got}"
    );
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\nOrigin: https://evil.test\r\n\r\n");
    h.backend_sends(backend, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let got = h.client_got();
    assert!(
        !got.contains("access-control"),
        "no CORS fields for a stranger: {got}"
    );
}

#[test]
fn least_request_sends_new_requests_away_from_a_busy_endpoint() {
    let mut h = Harness::with(config_with(&[BACKEND, SECOND]));
    // The first request stays unanswered: its endpoint has one outstanding.
    h.client_sends("GET /app HTTP/1.1\r\nHost: h\r\n\r\n");
    let (_, busy) = h.last_connect();
    // Every other client goes to the idle endpoint (the two are always
    // the two drawn, and the idle one is cheaper).
    for n in 0..8 {
        h.another_client(
            &format!("192.0.2.9:{}", 41000 + n),
            "GET /app HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        let (conn, to) = h.last_connect();
        assert_ne!(to, busy, "request {n} went to the busy endpoint");
        h.backend_sends(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
}

/// `n` requests one after another, BACKEND answering each it gets with
/// 503 and any other endpoint with 200: where each went.
fn where_requests_go_while_backend_fails(h: &mut Harness, n: usize) -> Vec<String> {
    where_requests_go(h, n, |to| {
        if to == BACKEND {
            (
                0,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            )
        } else {
            (0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        }
    })
}

/// `n` requests one after another, each endpoint answering after the
/// milliseconds and with the bytes `answer` gives for it: where each went.
fn where_requests_go(
    h: &mut Harness,
    n: usize,
    answer: impl Fn(&str) -> (u64, &'static str),
) -> Vec<String> {
    let mut seen = Vec::new();
    for n in 0..n {
        h.client_sends(&format!("GET /app/{n} HTTP/1.1\r\nHost: h\r\n\r\n"));
        let (conn, to) = h.request_out();
        let (after, bytes) = answer(&to);
        h.advance(after);
        h.backend_sends(conn, bytes);
        h.client_got();
        seen.push(to);
    }
    seen
}

/// `/app` to one backend with `endpoints` under `traffic` (a
/// BackendTrafficPolicy's settings).
fn config_under(endpoints: &[&str], traffic: TrafficPolicy) -> GatewayConfig {
    let traffic = Arc::new(traffic);
    config_where(endpoints, move |action| {
        for backend in &mut action.backends.backends {
            backend.traffic = traffic.clone();
        }
    })
}

#[test]
fn a_policy_sets_the_ejection_threshold_and_the_balancing() {
    // One 503 ejects, and endpoints are taken in turn although the
    // gateway's default is least-request.
    let traffic = TrafficPolicy {
        balancing: Some(LoadBalancing::RoundRobin),
        outlier: OutlierDetection {
            consecutive_errors: 1,
            ..OutlierDetection::default()
        },
        ..TrafficPolicy::default()
    };
    let mut h = Harness::with_settings(
        config_under(&[BACKEND, SECOND], traffic),
        ProxySettings::default(),
    );
    let seen = where_requests_go_while_backend_fails(&mut h, 6);
    assert_eq!(seen[0], BACKEND, "{seen:?}");
    assert!(seen[1..].iter().all(|to| to == SECOND), "{seen:?}");
    assert_eq!(h.ejections(EjectionCause::Errors), 1);
}

/// A second passes; each health check that went out in it is answered:
/// BACKEND's with `backend_status`, any other endpoint's with 200.
fn checks_answered(h: &mut Harness, backend_status: u16) -> usize {
    let before = h.io.connects.len();
    h.wait(1);
    let checks: Vec<(u32, SocketAddr)> = h.io.connects[before..].to_vec();
    for &(conn, to) in &checks {
        let request = h.io.take_output(conn);
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\nHost: "),
            "{request}"
        );
        let status = if to.to_string() == BACKEND {
            backend_status
        } else {
            200
        };
        h.backend_sends(
            conn,
            &format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_eq!(
            h.closed(conn),
            Some("fin"),
            "a check's connection is its own"
        );
    }
    checks.len()
}

#[test]
fn active_checks_take_a_failing_endpoint_out_and_bring_it_back() {
    let traffic = TrafficPolicy {
        balancing: Some(LoadBalancing::RoundRobin),
        active: Some(Arc::new(ActiveHealthCheck {
            probe: CheckProbe::Http {
                path: "/healthz".into(),
                host: None,
                expected_statuses: Vec::new(),
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        })),
        ..TrafficPolicy::default()
    };
    let mut h = Harness::with_settings(
        config_under(&[BACKEND, SECOND], traffic),
        ProxySettings::default(),
    );
    assert_eq!(checks_answered(&mut h, 503), 2, "one check per endpoint");
    // One failure is not yet the threshold: both still serve.
    let seen = where_requests_go_while_backend_fails(&mut h, 2);
    assert!(seen.contains(&BACKEND.to_string()), "{seen:?}");
    assert_eq!(checks_answered(&mut h, 503), 2);
    let seen = where_requests_go_while_backend_fails(&mut h, 4);
    assert!(seen.iter().all(|to| to == SECOND), "out after 2: {seen:?}");
    assert_eq!(h.snapshot().health_checks, [2, 2]);
    // Passing once brings it back.
    checks_answered(&mut h, 200);
    let seen = where_requests_go_while_backend_fails(&mut h, 4);
    assert!(seen.contains(&BACKEND.to_string()), "back: {seen:?}");
}

#[test]
fn a_tcp_check_passes_on_the_connection_alone_and_fails_on_a_refusal() {
    let traffic = TrafficPolicy {
        balancing: Some(LoadBalancing::RoundRobin),
        active: Some(Arc::new(ActiveHealthCheck {
            probe: CheckProbe::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        })),
        ..TrafficPolicy::default()
    };
    let mut h = Harness::with_settings(
        config_under(&[BACKEND, SECOND], traffic),
        ProxySettings::default(),
    );
    h.wait(1);
    let checks = h.io.connects.clone();
    assert_eq!(checks.len(), 2, "one check per endpoint");
    for (conn, _) in &checks {
        assert_eq!(h.closed(*conn), Some("fin"), "closed once up");
        assert!(h.io.conns[conn].outbox.is_empty(), "nothing sent");
    }
    assert_eq!(h.snapshot().health_checks, [2, 0]);
    h.io.refusing = Some(BACKEND.parse().unwrap());
    h.wait(1);
    assert_eq!(h.snapshot().health_checks, [3, 1]);
    let seen = where_requests_go_while_backend_fails(&mut h, 4);
    assert!(seen.iter().all(|to| to == SECOND), "out: {seen:?}");
    h.io.refusing = None;
    h.wait(1);
    let seen = where_requests_go_while_backend_fails(&mut h, 4);
    assert!(seen.contains(&BACKEND.to_string()), "back: {seen:?}");
}

#[test]
fn a_check_unanswered_in_time_fails() {
    let traffic = TrafficPolicy {
        active: Some(Arc::new(ActiveHealthCheck {
            probe: CheckProbe::Http {
                path: "/healthz".into(),
                host: Some("health.local".into()),
                expected_statuses: vec![204],
            },
            interval: Duration::from_secs(10),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        })),
        ..TrafficPolicy::default()
    };
    let mut h = Harness::with_settings(config_under(&[BACKEND], traffic), ProxySettings::default());
    h.wait(1);
    let (conn, _) = h.io.connects[0];
    assert!(h
        .io
        .take_output(conn)
        .contains("\r\nHost: health.local\r\n"));
    h.wait(1);
    assert_eq!(h.closed(conn), Some("rst"), "cut at its timeout");
    assert_eq!(h.snapshot().health_checks, [0, 1]);
}

#[test]
fn consistent_hashing_sends_a_key_to_one_endpoint() {
    let endpoints = [
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "10.0.0.3:8080",
        "10.0.0.4:8080",
    ];
    let traffic = TrafficPolicy {
        hash_on: Some(HashOn::Header(http::HeaderName::from_static("x-user"))),
        ..TrafficPolicy::default()
    };
    let mut h = Harness::with_settings(config_under(&endpoints, traffic), ProxySettings::default());
    let to_of = |h: &mut Harness, user: &str| {
        h.client_sends(&format!(
            "GET /app HTTP/1.1\r\nHost: h\r\nX-User: {user}\r\n\r\n"
        ));
        let (conn, to) =
            h.io.connects
                .iter()
                .copied()
                .find(|(c, _)| !h.io.conns[c].outbox.is_empty())
                .expect("the request went out");
        h.io.take_output(conn);
        h.backend_sends(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        h.client_got();
        to
    };
    let first: Vec<SocketAddr> = (0..8)
        .map(|u| to_of(&mut h, &format!("user-{u}")))
        .collect();
    for _ in 0..3 {
        let again: Vec<SocketAddr> = (0..8)
            .map(|u| to_of(&mut h, &format!("user-{u}")))
            .collect();
        assert_eq!(again, first, "a user's requests stay on one endpoint");
    }
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert!(distinct.len() >= 2, "8 users on one endpoint: {first:?}");
}

/// A client's `/app/1` goes to a backend and stays in flight; a second
/// client's `/app/2` gets 503 at once, counted as an overflow. The first's
/// backend connection.
fn one_in_flight_and_the_next_refused(h: &mut Harness) -> u32 {
    h.client_sends("GET /app/1 HTTP/1.1\r\nHost: h\r\n\r\n");
    let backend = h.last_backend();
    assert!(h.io.take_output(backend).starts_with("GET /app/1 "));
    let other = h.another_client("192.0.2.8:40001", "GET /app/2 HTTP/1.1\r\nHost: h\r\n\r\n");
    let refused = h.io.take_output(other);
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    assert_eq!(h.failures(Cause::Overflow), 1);
    backend
}

#[test]
fn a_policy_limits_requests_to_the_whole_backend() {
    let traffic = TrafficPolicy {
        max_requests: Some(1),
        ..TrafficPolicy::default()
    };
    let mut h = Harness::with_settings(
        config_under(&[BACKEND, SECOND], traffic),
        ProxySettings::default(),
    );
    // A second endpoint is idle, but the backend has its one request.
    let backend = one_in_flight_and_the_next_refused(&mut h);
    h.backend_sends(backend, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200"));
}

#[test]
fn the_connection_limit_reuses_or_makes_room_and_else_answers_503() {
    let traffic = TrafficPolicy {
        balancing: Some(LoadBalancing::RoundRobin),
        max_connections: Some(1),
        ..TrafficPolicy::default()
    };
    let mut h = Harness::with_settings(
        config_under(&[BACKEND, SECOND], traffic),
        ProxySettings::default(),
    );
    // The one connection is in use: the next request has no room.
    let first = one_in_flight_and_the_next_refused(&mut h);
    h.backend_sends(first, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200"));
    // The refused one had SECOND's turn; the next is BACKEND's, on the
    // pooled connection.
    h.client_sends("GET /app/3 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.request_out().0, first);
    h.backend_sends(first, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200"));
    assert_eq!(h.io.connects.len(), 1);
    // Pooled again, it is closed to make room for one to SECOND.
    h.client_sends("GET /app/4 HTTP/1.1\r\nHost: h\r\n\r\n");
    let (second, to) = h.request_out();
    assert_ne!(second, first);
    assert_ne!(to, h.io.connects[0].1.to_string(), "the other endpoint");
    assert_eq!(h.closed(first), Some("fin"));
    h.backend_sends(second, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200"));
}

#[test]
fn the_pending_limit_answers_503_while_connections_are_still_opening() {
    let traffic = TrafficPolicy {
        max_pending_requests: Some(1),
        ..TrafficPolicy::default()
    };
    let mut h = Harness::with_settings(
        config_under(&[BACKEND, SECOND], traffic),
        ProxySettings::default(),
    );
    h.io.connects_hang = true;
    h.client_sends("GET /app/1 HTTP/1.1\r\nHost: h\r\n\r\n");
    let opening = h.last_backend();
    let other = h.another_client("192.0.2.8:40001", "GET /app/2 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(h.io.take_output(other).starts_with("HTTP/1.1 503 "));
    assert_eq!(h.failures(Cause::Overflow), 1);
    assert_eq!(h.io.connects.len(), 1, "no second connection opened");
    // Connected, it is pending no more: room for another.
    h.io.conns.get_mut(&opening).unwrap().stalled = false;
    h.proxy.on_io(&mut h.io, opening, h.now);
    assert!(h.io.take_output(opening).starts_with("GET /app/1 "));
    h.another_client("192.0.2.8:40002", "GET /app/3 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.io.connects.len(), 2);
    assert_eq!(h.failures(Cause::Overflow), 1);
}

#[test]
fn five_5xx_answers_in_a_row_eject_an_endpoint() {
    let mut h = Harness::in_turn(config_with(&[BACKEND, SECOND]));
    let seen = where_requests_go_while_backend_fails(&mut h, 14);
    // In turn until the fifth 503 (the ninth request), then only SECOND.
    let failing = seen.iter().filter(|to| *to == BACKEND).count();
    assert_eq!(failing, 5, "{seen:?}");
    assert!(seen[9..].iter().all(|to| to == SECOND), "{seen:?}");
    assert_eq!(h.ejections(EjectionCause::Errors), 1);
}

#[test]
fn an_endpoint_far_slower_than_the_others_is_ejected_longer_each_time_it_is_still_slow() {
    let mut h = Harness::in_turn(config_with(&[BACKEND, SECOND, THIRD]));
    let slow = std::cell::Cell::new(true);
    // How many of `n` requests BACKEND gets, answering in 50 ms while
    // slow (the others in 1 ms).
    let to_backend = |h: &mut Harness, n| {
        let seen = where_requests_go(h, n, |to| {
            let after = if to == BACKEND && slow.get() { 50 } else { 1 };
            (after, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        });
        seen.iter().filter(|to| *to == BACKEND).count()
    };
    // Its first answer has nothing to compare with; its second is 50 ms
    // against the others' 1 ms.
    assert_eq!(to_backend(&mut h, 6), 2);
    assert_eq!(h.ejections(EjectionCause::Latency), 1);
    assert_eq!(to_backend(&mut h, 9), 0, "ejected for a second");
    h.wait(1);
    assert_eq!(to_backend(&mut h, 3), 1, "back, and still slow");
    assert_eq!(h.ejections(EjectionCause::Latency), 2);
    h.wait(1);
    assert_eq!(to_backend(&mut h, 6), 0, "the second ejection lasts two");
    // Fast again: its first answer after the return clears its record.
    slow.set(false);
    h.wait(1);
    assert_eq!(to_backend(&mut h, 9), 3);
    assert_eq!(h.ejections(EjectionCause::Latency), 2);
    assert_eq!(h.ejections(EjectionCause::Errors), 0);
}

#[test]
fn a_session_cookie_keeps_a_client_on_its_endpoint_until_it_is_ejected() {
    let config = config_where(&[BACKEND, SECOND, THIRD], |action| {
        action.session = Some(SessionPersistence {
            carrier: SessionCarrier::Cookie {
                path: "/app".into(),
                permanent: false,
            },
            name: "sticky".into(),
            absolute_timeout: None,
            idle_timeout: None,
        });
    });
    // In turn, unless a session says otherwise.
    let mut h = Harness::in_turn(config);
    let set_cookie = |answer: &str| {
        answer.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie:")
                .then(|| l[11..].trim().to_owned())
        })
    };
    let exchange = |h: &mut Harness, cookie: &str, status: &str| {
        h.client_sends(&format!(
            "GET /app HTTP/1.1\r\nHost: h\r\nCookie: theme=dark; {cookie}\r\n\r\n"
        ));
        let (conn, to) = h.request_out();
        h.backend_sends(
            conn,
            &format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n"),
        );
        (to, h.client_got())
    };
    let (first, answer) = exchange(&mut h, "", "200 OK");
    let cookie = set_cookie(&answer).expect("a session cookie");
    assert!(
        cookie.starts_with("sticky=") && cookie.ends_with("; Path=/app; HttpOnly"),
        "{cookie}"
    );
    let token = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..5 {
        let (to, answer) = exchange(&mut h, &token, "200 OK");
        assert_eq!(to, first, "the session's endpoint");
        assert_eq!(
            set_cookie(&answer),
            None,
            "the session holds: no new cookie"
        );
    }
    // Its endpoint fails (five 503s eject it): the session moves, with a
    // new cookie, and stays on the new endpoint.
    for _ in 0..5 {
        assert_eq!(exchange(&mut h, &token, "503 Service Unavailable").0, first);
    }
    let (moved, answer) = exchange(&mut h, &token, "200 OK");
    assert_ne!(moved, first);
    let token = set_cookie(&answer).expect("a new cookie");
    let token = token.split(';').next().unwrap();
    for _ in 0..3 {
        assert_eq!(exchange(&mut h, token, "200 OK").0, moved);
    }
}

#[test]
fn the_circuit_breaker_answers_503_at_once_past_the_endpoint_limit() {
    let settings = ProxySettings {
        max_requests_per_endpoint: 1,
        ..ProxySettings::default()
    };
    let mut h = Harness::with_settings(config(), settings);
    // The endpoint has one request in flight: a second client's is refused.
    let backend = one_in_flight_and_the_next_refused(&mut h);
    assert_eq!(h.io.connects.len(), 1, "nothing else went to the backend");
    // Once the first is answered, the endpoint takes requests again.
    h.backend_sends(backend, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.client_got().starts_with("HTTP/1.1 200"));
    h.client_sends("GET /app/3 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(h.io.take_output(backend).starts_with("GET /app/3 "));
}
