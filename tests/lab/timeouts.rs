//! The timeout matrix (root), on both transports: clients that stall the
//! gateway in every phase of an exchange — a response never read (HTTP/1.1
//! socket unread, HTTP/2 stream or connection window at 0), a body announced
//! after a local answer and never sent, an idle keep-alive or HTTP/2
//! connection, half a preface, an oversized first frame after `Upgrade: h2c`,
//! a slowloris head — and a 40 s upload under a 30 s response timeout that
//! must not be cut. Each case checks the client saw the gateway let go within
//! its bound + 1 s, that the backend connections were released as well (the
//! gauges and `ss` in both namespaces agree), that the matching
//! `rauta_timeouts_total{phase}` moved, and at the end that the gateway's
//! RSS is no more than 5% above its value after warm-up (traffic like the
//! cases', then the uploads started and, beside them, two rounds of the two
//! stalls that buffer the most; jemalloc runs without decay here, so RSS is what the gateway holds, not what its
//! allocator caches).
//!
//! The clients are `timeouts_client.py` (raw sockets: the test needs to
//! control SETTINGS, windows and timing byte by byte) and curl; they report
//! epoch times, compared with the test's own samples of both legs (`ss` in
//! the client, gateway and backend namespaces, the gauges). Every case runs
//! and prints one line of measured times; the failures are reported together
//! at the end.

use crate::common::{serial, Process};
use crate::gateway::{GatewayLab, Io, RunWith};
use serde_json::Value;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CLIENT: &str = include_str!("timeouts_client.py");

/// The bounds the gateway runs with, seconds.
const REQUEST_HEAD: f64 = 2.0;
const REQUEST_BODY: f64 = 2.0;
const RESPONSE_BODY: f64 = 2.0;
const IDLE: f64 = 2.0;
const H2_IDLE: f64 = 2.0;
const RESPONSE: f64 = 30.0;
/// How late past its bound a release may come.
const SLACK: f64 = 1.0;

/// The gateway's allocator (tikv-jemallocator reads its own variable)
/// without decay: freed pages go back to the system as they are freed.
const ALLOCATOR_RETURNS_AT_ONCE: &str = "_RJEM_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0";

/// `rauta_timeouts_total` phases.
const PHASES: [&str; 10] = rauta_dataplane::error::Phase::LABELS;

/// A route whose backend does not exist: the gateway answers 500 itself.
const NO_BACKEND: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: no-backend, namespace: default}
spec:
  parentRefs: [{name: lab}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /no-backend}}]
    backendRefs: [{name: missing, port: 80}]
";

/// `/bytes` to the first backend only: every slow reader's HTTP/1.1 backend
/// connection is then at port 3000, which carries HTTP/1.1 alone (3001
/// serves h2c too), and one with response bytes the gateway does not take
/// is a stalled response.
const BYTES_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bytes, namespace: default}
spec:
  parentRefs: [{name: lab}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /bytes}}]
    backendRefs: [{name: echo-v1, port: 80}]
";

/// A response larger than every buffer on the path (client, gateway,
/// backend socket buffers and the gateway's own).
const LARGE: u64 = 64 << 20;

/// The upload of case 6: 4,000 KiB at 100 KiB/s, 40 s.
const UPLOAD_BYTES: usize = 4000 * 1024;

/// Writes the file argv[1] to stdout in 400 equal steps 0.1 s apart: a
/// steady 40 s body for `curl -T -`. (curl's `--limit-rate` would pace the
/// download too, and an HTTP/2 client pausing its reads for seconds is a
/// slow reader the response-body bound rightly cuts.)
const FEEDER: &str = "
import sys, time
data, out = open(sys.argv[1], 'rb').read(), sys.stdout.buffer
step, start = len(data) // 400, time.time()
for i in range(400):
    out.write(data[i * step:(i + 1) * step])
    out.flush()
    time.sleep(max(0.0, start + (i + 1) * 0.1 - time.time()))
out.write(data[400 * step:])
";

#[test]
fn timeouts_release_both_legs_on_xdp() {
    timeout_matrix(Io::Xdp, "rtt-x");
}

#[test]
fn timeouts_release_both_legs_on_kernel() {
    timeout_matrix(Io::Kernel, "rtt-k");
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A connection at a backend, as `ss` shows it there.
#[derive(Clone, Debug)]
struct BackendConn {
    port: u16,
    peer: String,
    /// Bytes the backend wrote that the gateway has not taken (Send-Q).
    unsent: bool,
}

/// One look at both legs: `ss` in the client and backend namespaces, the
/// gateway's gauges, its RSS.
#[derive(Clone, Debug)]
struct Sample {
    at: f64,
    /// ESTABLISHED client connections to the gateway's port 80.
    client: i64,
    /// ESTABLISHED connections at the backends' ports 3000 and 3001.
    backend: Vec<BackendConn>,
    open: f64,
    h2_open: f64,
    backend_open: f64,
    pool_idle: f64,
    h2_backend_open: f64,
    /// Kernel transport: bytes in the gateway's own socket send buffer, by
    /// client port (empty on XDP, whose stack is the gateway's own).
    gw_unsent: BTreeMap<u16, u64>,
    rss_kb: u64,
}

impl Sample {
    /// The client leg is back to `base`: client connections (by `ss` and
    /// by the gauges), HTTP/2 connections.
    fn client_released(&self, base: &Sample) -> bool {
        self.client <= base.client && self.open <= base.open && self.h2_open <= base.h2_open
    }

    /// Connections to the HTTP/1.1-only backend port (3000) whose response
    /// bytes the gateway is not taking: a response in flight, not an idle
    /// pooled connection.
    fn stuck(&self) -> impl Iterator<Item = &str> {
        self.backend
            .iter()
            .filter(|c| c.port == 3000 && c.unsent)
            .map(|c| c.peer.as_str())
    }

    /// The gauges say what `ss` sees.
    fn agrees(&self) -> bool {
        self.client as f64 == self.open
            && self.backend.len() as f64 == self.backend_open + self.h2_backend_open
    }

    fn legs(&self) -> String {
        format!(
            "client ss {} = open {} (h2 {}), backend ss {} = h1 {} + h2c {} (pool gauge {}, {} stuck)",
            self.client,
            self.open,
            self.h2_open,
            self.backend.len(),
            self.backend_open,
            self.h2_backend_open,
            self.pool_idle,
            self.stuck().count()
        )
    }
}

/// What the samples of a case say about its legs, times relative to the
/// case's reference (when its bound started to run).
struct Release {
    /// Last seen held: a client connection beyond the baseline, or a backend
    /// connection that carried a stalled response still ESTABLISHED.
    held_at: Option<f64>,
    /// First seen released for good (None: still held at the end).
    released_at: Option<f64>,
    /// Most backend connections carrying stalled responses at once.
    stuck_peak: usize,
}

impl Release {
    fn of(samples: &[Sample], base: &Sample, reference: f64) -> Self {
        // Every port-3000 connection seen with unsent response bytes in two
        // samples in a row (a response stalled, not one passing through):
        // all must go, as one cut mid-response cannot be pooled.
        let mut stalled = std::collections::BTreeSet::new();
        for pair in samples.windows(2) {
            let before: std::collections::BTreeSet<&str> = pair[0].stuck().collect();
            stalled.extend(pair[1].stuck().filter(|peer| before.contains(peer)));
        }
        let carrying = |s: &Sample| {
            s.backend
                .iter()
                .filter(|c| c.port == 3000 && stalled.contains(c.peer.as_str()))
                .count()
        };
        let held = |s: &Sample| !s.client_released(base) || carrying(s) > 0;
        let last_held = samples.iter().rposition(held);
        let released = last_held.map_or(Some(0), |i| (i + 1 < samples.len()).then_some(i + 1));
        Self {
            held_at: last_held.map(|i| samples[i].at - reference),
            released_at: released.map(|i| samples[i].at - reference),
            stuck_peak: samples.iter().map(carrying).max().unwrap_or(0),
        }
    }

    fn describe(&self) -> String {
        format!(
            "legs last held at {}, released by {}",
            secs(self.held_at),
            secs(self.released_at)
        )
    }

    /// Released, and not seen held past `bound` + 1 s.
    fn assert_within(&self, bound: f64, samples: &[Sample]) {
        let last = samples.last().unwrap();
        assert!(
            self.released_at.is_some(),
            "legs never released: {}",
            last.legs()
        );
        if let Some(held_at) = self.held_at {
            assert!(
                held_at < bound + SLACK,
                "legs still held {held_at:.2} s after the bound started (bound {bound} s + {SLACK} s)"
            );
        }
    }
}

fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn gauge(metrics: &str, name: &str) -> f64 {
    series(metrics, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The gateway under test and what the cases share.
struct Matrix {
    gw: GatewayLab,
    /// The gateway's own PID (`ip netns exec` execs it).
    pid: u32,
}

impl Matrix {
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the gateway's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// The gateway's RSS under light traffic: a reading every ~0.3 s until
    /// `enough`, or three in a row within 0.5% of each other, or 5 s.
    fn quiet_rss(&self, enough: impl Fn(u64) -> bool) -> u64 {
        let start = Instant::now();
        let url = self.gw.url("/quiet");
        let mut readings = Vec::new();
        loop {
            for args in [
                &["h2load", "--h1", "-n", "100", "-c", "2", "-t", "1", &url][..],
                &[
                    "h2load", "-n", "100", "-c", "1", "-m", "10", "-t", "1", &url,
                ],
            ] {
                let mut all = vec!["timeout", "10"];
                all.extend_from_slice(args);
                self.gw.lab.exec_ok("client", &all);
            }
            let rss = self.rss_kb();
            readings.push(rss);
            let last = &readings[readings.len().saturating_sub(3)..];
            let steady = last.len() == 3
                && last.iter().max().unwrap() * 1000 <= last.iter().min().unwrap() * 1005;
            if enough(rss) || steady || start.elapsed() > Duration::from_secs(5) {
                return rss;
            }
        }
    }

    fn ss(&self, role: &str, filter: &[&str]) -> Vec<Vec<String>> {
        let mut args = vec!["ss", "-Htn", "state", "established"];
        args.extend_from_slice(filter);
        let out = self.gw.lab.exec_ok(role, &args);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    fn sample(&self) -> Sample {
        let at = now();
        let backend = self
            .ss(
                "backend",
                &["(", "sport", "=", ":3000", "or", "sport", "=", ":3001", ")"],
            )
            .into_iter()
            .map(|w| BackendConn {
                port: w[2].rsplit(':').next().unwrap().parse().unwrap(),
                peer: w[3].clone(),
                unsent: w[1] != "0",
            })
            .collect::<Vec<_>>();
        let client = self.ss("client", &["(", "dport", "=", ":80", ")"]).len() as i64;
        let gw_unsent = self
            .ss("gw", &["(", "sport", "=", ":80", ")"])
            .into_iter()
            .filter_map(|w| Some((w[3].rsplit(':').next()?.parse().ok()?, w[1].parse().ok()?)))
            .collect();
        let metrics = self.gw.admin("/metrics");
        let h2_backend_open = gauge(&metrics, "rauta_http2_backend_connections_open");
        Sample {
            at,
            client,
            open: gauge(&metrics, "rauta_connections_open"),
            h2_open: gauge(&metrics, "rauta_http2_connections_open"),
            // New with the timeouts: NaN (never agreeing) until it exists;
            // the end of the test names it if missing.
            backend_open: series(&metrics, "rauta_backend_connections_open").unwrap_or(f64::NAN),
            pool_idle: gauge(&metrics, "rauta_pool_idle_connections"),
            h2_backend_open,
            backend,
            gw_unsent,
            rss_kb: self.rss_kb(),
        }
    }

    /// `rauta_timeouts_total` by phase (0 for a phase not shown yet; the
    /// end of the test checks the family exists).
    fn counters(&self) -> BTreeMap<&'static str, f64> {
        let metrics = self.gw.admin("/metrics");
        PHASES
            .iter()
            .map(|&phase| {
                let name = format!("rauta_timeouts_total{{phase=\"{phase}\"}}");
                (phase, series(&metrics, &name).unwrap_or(0.0))
            })
            .collect()
    }

    /// How much each phase's counter moved since `before`.
    fn moved(&self, before: &BTreeMap<&'static str, f64>) -> BTreeMap<&'static str, f64> {
        self.counters()
            .into_iter()
            .map(|(phase, n)| (phase, n - before[phase]))
            .collect()
    }

    /// A `timeouts_client.py` client in the client namespace.
    fn client(&self, mode: &str, args: &[&str]) -> Process {
        let mut all = vec!["python3", "-c", CLIENT, self.gw.target(), mode];
        all.extend_from_slice(args);
        self.gw.lab.spawn("client", &all)
    }

    /// Sample both legs until every client has exited and the legs are
    /// back to `base`, or `limit` passed.
    fn watch(&self, clients: &mut [Process], base: &Sample, limit: Duration) -> Vec<Sample> {
        let start = Instant::now();
        let mut samples = Vec::new();
        loop {
            let sample = self.sample();
            let released = sample.client_released(base) && sample.stuck().count() == 0;
            samples.push(sample);
            let exited = clients.iter_mut().all(|c| c.try_exited());
            if (exited && released) || start.elapsed() > limit {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for client in clients.iter_mut() {
            if !client.try_exited() {
                client.kill();
            }
        }
        samples
    }

    /// A sample where the gauges agree with `ss` (polled: the two are read
    /// a few milliseconds apart), or why not.
    fn agreeing(&self) -> Result<Sample, String> {
        let start = Instant::now();
        loop {
            let sample = self.sample();
            if sample.agrees() {
                return Ok(sample);
            }
            if start.elapsed() > Duration::from_secs(3) {
                return Err(format!("the gauges disagree with ss: {}", sample.legs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of a case: the gauges agree with `ss`.
    /// Both legs let go within `bound` + [`SLACK`] of `reference`
    /// (asserted): how, then the legs once settled.
    fn released(&self, samples: &[Sample], base: &Sample, reference: f64, bound: f64) -> String {
        let release = Release::of(samples, base, reference);
        release.assert_within(bound, samples);
        format!("{}; {}", release.describe(), self.settled().legs())
    }

    fn settled(&self) -> Sample {
        self.agreeing().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The start of a case. A disagreement left by the previous case has
    /// failed that case already: take the sample anyway.
    fn baseline(&self) -> Sample {
        self.agreeing().unwrap_or_else(|_| self.sample())
    }
}

/// The JSON reports a client printed; fails showing its output if there
/// are not `n`.
fn reports(client: &Process, n: usize) -> Vec<Value> {
    let out = client.output();
    let reports: Vec<Value> = out
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a client's JSON report"))
        .collect();
    assert_eq!(
        reports.len(),
        n,
        "expected {n} reports from the client:\n{}",
        out.join("\n")
    );
    reports
}

fn num(report: &Value, key: &str) -> Option<f64> {
    report.get(key).and_then(Value::as_f64)
}

fn text(report: &Value, key: &str) -> String {
    match report.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// Seconds from `ref` to `closed` in a report (None: never closed).
fn waited(report: &Value) -> Option<f64> {
    Some(num(report, "closed")? - num(report, "ref")?)
}

fn secs(t: Option<f64>) -> String {
    t.map_or("never".to_owned(), |t| format!("{t:.2} s"))
}

/// The longest of `waits`; None if one never ended.
fn longest(waits: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    waits
        .into_iter()
        .try_fold(f64::MIN, |w, t| t.map(|t| w.max(t)))
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_owned())
}

fn timeout_matrix(io: Io, prefix: &str) {
    let _serial = serial();
    let started = Instant::now();
    let bounds = [
        ("--request-head-timeout", REQUEST_HEAD),
        ("--request-body-timeout", REQUEST_BODY),
        ("--response-body-timeout", RESPONSE_BODY),
        ("--idle-timeout", IDLE),
        ("--h2-idle-timeout", H2_IDLE),
        ("--response-timeout", RESPONSE),
    ]
    .map(|(flag, value)| [flag.to_owned(), value.to_string()]);
    let run = RunWith {
        // jemalloc hands freed pages back at once, not over ~10 s as
        // allocations go on: RSS then measures what the gateway holds.
        env: vec![ALLOCATOR_RETURNS_AT_ONCE.to_owned()],
        flags: bounds.into_iter().flatten().collect(),
        ..RunWith::default()
    };
    let gw = GatewayLab::start_with_run(
        prefix,
        io,
        &[("no-backend.yaml", NO_BACKEND), ("bytes.yaml", BYTES_ROUTE)],
        run,
    );
    let pid = gw.gateway.as_ref().unwrap().pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "rauta", "PID {pid} is not the gateway itself");
    let m = Matrix { gw, pid };

    warm_up(&m);
    let mut failures = Vec::new();
    // The uploads run through every other case (40 s each, both client
    // protocols, to HTTP/1.1 and h2c backends). They start before the
    // baseline is taken: the cases then run beside them, and the working
    // size the RSS is compared with is that of the same concurrency.
    let uploads = std::panic::catch_unwind(AssertUnwindSafe(|| Uploads::start(&m)));
    let uploads = match uploads {
        Ok(u) => Some(u),
        Err(e) => {
            failures.push(format!("6 uploads: could not start: {}", panic_text(e)));
            None
        }
    };
    // Rounds of the stalls with the most buffered (60 streams and
    // connections each holding a full relay buffer, and the oversized
    // frames), beside the uploads: the allocator keeps some of that first
    // peak as its own high-water mark, which belongs to the working size.
    // The check at the end then catches what stalls leave behind and
    // accumulates.
    // Two rounds: the first peak's high-water mark is where the allocator
    // starts from, the second is where it settles.
    for _ in 0..2 {
        oversized_first_frame(&m);
        slow_reader(&m);
    }
    let rss_start = m.quiet_rss(|_| false);
    let counters_start = m.counters();
    let tag = format!("timeouts[{io:?}]");
    println!(
        "{tag} warm-up done ({:.1} s in): rss {rss_start} kB",
        started.elapsed().as_secs_f64()
    );

    let mut run = |name: &str, case: &dyn Fn(&Matrix) -> String| {
        let t = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(|| case(&m))) {
            Ok(line) => println!(
                "{tag} {name} ({:.1} s): {line}; rss {} kB",
                t.elapsed().as_secs_f64(),
                m.rss_kb()
            ),
            Err(e) => {
                let why = panic_text(e);
                println!(
                    "{tag} {name} ({:.1} s): FAILED: {why}",
                    t.elapsed().as_secs_f64()
                );
                failures.push(format!("{name}: {why}"));
            }
        }
    };

    run("5 oversized first frame", &oversized_first_frame);
    run("1 slow reader", &slow_reader);
    run("2 body never sent", &body_never_sent);
    run("3 idle connections", &idle_connections);
    run("4 preface", &partial_preface);
    run("7 slowloris", &slowloris);
    if let Some(uploads) = uploads {
        run("6 40 s uploads", &|m| uploads.finish(m));
    }

    run("metrics", &|m| {
        let metrics = m.gw.admin("/metrics");
        let missing: Vec<&str> = ["rauta_timeouts_total", "rauta_backend_connections_open"]
            .into_iter()
            .filter(|name| !metrics.contains(name))
            .collect();
        assert!(missing.is_empty(), "not in /metrics: {missing:?}");
        "rauta_timeouts_total and rauta_backend_connections_open shown".to_owned()
    });
    // Nothing waited on a backend: the bounds on connect and the response
    // head never fired (the uploads were answered 30 s+ after they began).
    let moved = m.moved(&counters_start);
    run("timeouts never due", &|_| {
        let line = format!("all phases moved: {moved:?}");
        assert_eq!(moved["connect"], 0.0, "{line}");
        assert_eq!(moved["response_head"], 0.0, "{line}");
        line
    });
    // Memory came back: RSS within 5% of its value after warm-up.
    run("rss", &|m| {
        let limit = rss_start + rss_start / 20;
        let rss = m.quiet_rss(|rss| rss <= limit);
        let line = format!(
            "{rss} kB at the end, {rss_start} kB after warm-up ({:+.1}%)",
            (rss as f64 / rss_start as f64 - 1.0) * 100.0
        );
        assert!(rss <= limit, "{line}");
        line
    });
    println!(
        "{tag} took {:.1} s, {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Traffic like the cases' (large responses over HTTP/1.1 and 40 HTTP/2
/// streams at once, to both kinds of backend; uploads; an `Upgrade: h2c`;
/// local answers), so the RSS taken after it is the gateway's working size.
fn warm_up(m: &Matrix) {
    let gw = &m.gw;
    let url = gw.url("/bytes?n=1048576");
    let h2c = gw.url("/h2c/bytes?n=1048576");
    for args in [
        &["h2load", "--h1", "-n", "16", "-c", "8", "-t", "1", &url][..],
        &["h2load", "-n", "40", "-c", "4", "-m", "10", "-t", "1", &url],
        &["h2load", "-n", "20", "-c", "2", "-m", "10", "-t", "1", &h2c],
    ] {
        let mut all = vec!["timeout", "60"];
        all.extend_from_slice(args);
        let out = gw.lab.exec_ok("client", &all);
        assert!(
            out.lines()
                .any(|l| l.starts_with("requests:") && l.contains(" 0 failed, 0 errored")),
            "warm-up {args:?}:\n{out}"
        );
    }
    for args in [
        &["--http1.1", "-d", "warm", &gw.url("/echo-body")][..],
        &[
            "--http2-prior-knowledge",
            "-d",
            "warm",
            &gw.url("/h2c/echo-body"),
        ],
        &["--http2", &gw.url("/upgraded")],
        &[&gw.url("/old/warm")],
        &["--http2-prior-knowledge", &gw.url("/no-backend")],
    ] {
        let r = gw.curl(args);
        assert!(r.starts_with("HTTP/"), "{r}");
    }
    std::thread::sleep(Duration::from_secs(1));
}

/// Case 1: responses never read. HTTP/1.1 clients leave their socket
/// unread; HTTP/2 clients announce INITIAL_WINDOW_SIZE=0 (40 streams, and 10
/// to the h2c backend) or let the connection window run out (10 streams).
/// Every client leg is let go (HTTP/1.1: connection reset or closed;
/// HTTP/2: RST_STREAM per stream, or the connection closed) within the
/// response-body bound + 1 s of its last progress, and with it the backend
/// connections.
fn slow_reader(m: &Matrix) -> String {
    let base = m.baseline();
    let before = m.counters();
    let (large, large_h2c) = (format!("/bytes?n={LARGE}"), format!("/h2c/bytes?n={LARGE}"));
    let mut clients = vec![
        m.client("h1-slow-reader", &["4", &large, "8"]),
        m.client("h1-slow-reader", &["2", &large_h2c, "8"]),
        m.client("h2-slow-reader", &["40", &large, "stream", "8"]),
        m.client("h2-slow-reader", &["10", &large, "connection", "8"]),
        m.client("h2-slow-reader", &["10", &large_h2c, "stream", "8"]),
    ];
    let samples = m.watch(&mut clients, &base, Duration::from_secs(15));
    let h1: Vec<Value> = [(0, 4), (1, 2)]
        .iter()
        .flat_map(|&(i, n)| reports(&clients[i], n))
        .collect();
    let h2: Vec<Value> = (2..5).flat_map(|i| reports(&clients[i], 1)).collect();
    // An HTTP/1.1 reader stops taking bytes when its socket buffer is full;
    // the gateway's relay stalls when its own is full too (kernel transport:
    // its Send-Q stops growing; XDP: its stack's buffer is small). The bound
    // runs from the later of the two.
    let h1_stalls: Vec<(f64, Option<f64>)> = h1
        .iter()
        .map(|r| {
            let port = num(r, "port").unwrap_or(0.0) as u16;
            let gateway_full = samples
                .windows(2)
                .rev()
                .find(
                    |w| match (w[0].gw_unsent.get(&port), w[1].gw_unsent.get(&port)) {
                        (Some(a), Some(b)) => a != b,
                        _ => false,
                    },
                )
                .map(|w| w[1].at);
            let client = num(r, "ref").unwrap_or(f64::MAX);
            (client.max(gateway_full.unwrap_or(f64::MIN)), gateway_full)
        })
        .collect();
    let h1_waits: Vec<Option<f64>> = h1
        .iter()
        .zip(&h1_stalls)
        .map(|(r, (stall, _))| num(r, "closed").map(|c| c - stall))
        .collect();
    let reference = h1_stalls
        .iter()
        .map(|(stall, _)| *stall)
        .chain(h2.iter().filter_map(|r| num(r, "ref")))
        .fold(f64::MIN, f64::max);
    let h1_states: Vec<String> = h1.iter().map(|r| text(r, "state")).collect();
    let h2_summary: Vec<String> = h2
        .iter()
        .map(|r| {
            format!(
                "{} {} window: {}/{} heads, {} reset codes {}, {} B data, worst {}",
                text(r, "path").split('?').next().unwrap_or(""),
                text(r, "window"),
                text(r, "heads"),
                text(r, "streams"),
                text(r, "reset"),
                text(r, "codes"),
                text(r, "data"),
                secs(num(r, "worst"))
            )
        })
        .collect();
    let release = Release::of(&samples, &base, reference);
    let moved = m.moved(&before);
    let h1_worst = longest(h1_waits.iter().copied());
    let gateway_full = h1_stalls
        .iter()
        .zip(&h1)
        .filter_map(|((_, full), r)| Some(full.as_ref()? - num(r, "ref")?))
        .fold(None, |w: Option<f64>, t| Some(w.map_or(t, |w| w.max(t))));
    let gateway_full = match gateway_full {
        Some(t) => format!("gateway's socket buffer full up to {t:.2} s after the client's"),
        None => "no kernel socket buffer at the gateway".to_owned(),
    };
    let line = format!(
        "HTTP/1.1 let go {} after the relay stalled ({gateway_full}; states {h1_states:?}); \
         HTTP/2 [{}]; backend connections carrying them: {} at most, {}; \
         timeouts response_body +{}",
        secs(h1_worst),
        h2_summary.join("; "),
        release.stuck_peak,
        release.describe(),
        moved["response_body"],
    );
    println!("  {line}");
    for (r, t) in h1.iter().zip(&h1_waits) {
        assert_eq!(text(r, "status"), "200", "the response started: {r}");
        let t = t.unwrap_or_else(|| panic!("HTTP/1.1 slow reader never let go: {r}"));
        assert!(
            t <= RESPONSE_BODY + SLACK,
            "HTTP/1.1 slow reader let go after {t:.2} s: {r}"
        );
    }
    for r in &h2 {
        assert_eq!(
            text(r, "heads"),
            text(r, "streams"),
            "every stream got its head: {r}"
        );
        assert_eq!(text(r, "statuses"), "[\"200\"]", "{r}");
        assert_eq!(text(r, "ended"), "0", "no response could have ended: {r}");
        let t = num(r, "worst").filter(|_| num(r, "closed").is_some());
        let t = t.unwrap_or_else(|| panic!("HTTP/2 streams never let go: {r}"));
        assert!(
            t <= RESPONSE_BODY + SLACK,
            "HTTP/2 streams let go after {t:.2} s: {r}"
        );
    }
    // 54 exchanges to the HTTP/1.1 backend (4 HTTP/1.1 clients, 50 HTTP/2
    // streams): most of them seen at once.
    assert!(
        release.stuck_peak >= 27,
        "backend connections were never seen carrying the responses (peak {}): the case proved nothing",
        release.stuck_peak
    );
    release.assert_within(RESPONSE_BODY, &samples);
    let end = m.settled();
    assert!(moved["response_body"] >= 1.0, "{moved:?}");
    format!("{line}; {}", end.legs())
}

/// Case 2: a request the gateway answers itself (a redirect, a 500 for a
/// missing backend) announcing a body of 100,000 bytes that never comes:
/// the answer, then the connection (HTTP/2: the stream) closed within the
/// request-body bound + 1 s.
fn body_never_sent(m: &Matrix) -> String {
    let base = m.baseline();
    let before = m.counters();
    let mut clients = vec![
        m.client("h1-local-answer", &["/old/page", "100000", "6"]),
        m.client("h1-local-answer", &["/no-backend", "100000", "6"]),
        m.client("h2-local-answer", &["/old/page", "100000", "6"]),
        m.client("h2-local-answer", &["/no-backend", "100000", "6"]),
    ];
    let samples = m.watch(&mut clients, &base, Duration::from_secs(10));
    let all: Vec<Value> = clients.iter().map(|c| reports(c, 1).remove(0)).collect();
    let reference = all
        .iter()
        .filter_map(|r| num(r, "ref"))
        .fold(f64::MIN, f64::max);
    let moved = m.moved(&before);
    let line = format!(
        "{}; timeouts request_body +{}",
        all.iter()
            .map(|r| format!(
                "{} {} {} closed after {} ({})",
                text(r, "kind"),
                text(r, "path"),
                text(r, "status"),
                secs(waited(r)),
                if text(r, "kind").starts_with("h2") {
                    format!("rst code {}", text(r, "code"))
                } else {
                    text(r, "how")
                }
            ))
            .collect::<Vec<_>>()
            .join(", "),
        moved["request_body"]
    );
    println!("  {line}");
    for r in &all {
        let expected = if text(r, "path") == "/old/page" {
            "301"
        } else {
            "500"
        };
        assert_eq!(text(r, "status"), expected, "{r}");
        let t = waited(r).unwrap_or_else(|| panic!("never closed: {r}"));
        assert!(t <= REQUEST_BODY + SLACK, "closed after {t:.2} s: {r}");
    }
    let released = m.released(&samples, &base, reference, REQUEST_BODY);
    // A gateway that waited out the body counted it.
    let waited_out = all
        .iter()
        .any(|r| waited(r).is_some_and(|t| t >= REQUEST_BODY - 0.25));
    if waited_out {
        assert!(moved["request_body"] >= 1.0, "{moved:?}");
    }
    format!("{line}; {released}")
}

/// Case 3: connections with nothing open. HTTP/1.1 keep-alive after one
/// exchange (closed within the idle bound + 1 s); HTTP/2 with prior
/// knowledge and no stream, after one stream, and after an `Upgrade: h2c`
/// whose stream 1 was answered: GOAWAY and closed within the h2-idle bound
/// + 1 s.
fn idle_connections(m: &Matrix) -> String {
    let base = m.baseline();
    let before = m.counters();
    let mut clients = vec![
        m.client("h1-idle", &["6"]),
        m.client("h2-idle", &["none", "6"]),
        m.client("h2-idle", &["one", "6"]),
        m.client("h2-idle", &["upgrade", "6"]),
    ];
    let samples = m.watch(&mut clients, &base, Duration::from_secs(10));
    let all: Vec<Value> = clients.iter().map(|c| reports(c, 1).remove(0)).collect();
    let moved = m.moved(&before);
    let line = format!(
        "{}; timeouts keep_alive +{} h2_idle +{}",
        all.iter()
            .map(|r| {
                let goaway = match num(r, "goaway").zip(num(r, "ref")) {
                    Some((g, at)) => format!(" GOAWAY {} at {:.2} s,", text(r, "code"), g - at),
                    None if text(r, "kind") == "h2-idle" => " no GOAWAY,".to_owned(),
                    None => String::new(),
                };
                format!(
                    "{}{} (status {}){goaway} closed {}",
                    text(r, "kind"),
                    r.get("how")
                        .map(|h| format!(" {}", h.as_str().unwrap_or("")))
                        .unwrap_or_default(),
                    text(r, "status"),
                    secs(waited(r))
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        moved["keep_alive"],
        moved["h2_idle"]
    );
    println!("  {line}");
    let reference = all
        .iter()
        .filter_map(|r| num(r, "ref"))
        .fold(f64::MIN, f64::max);
    for r in &all {
        let status = match text(r, "how").as_str() {
            "none" => "",
            "upgrade" => "101",
            _ => "200",
        };
        assert_eq!(text(r, "status").trim(), status, "{r}");
        let t = waited(r).unwrap_or_else(|| panic!("never closed: {r}"));
        let bound = if text(r, "kind") == "h1-idle" {
            IDLE
        } else {
            H2_IDLE
        };
        assert!(t <= bound + SLACK, "closed after {t:.2} s: {r}");
        if text(r, "kind") == "h2-idle" {
            assert!(num(r, "goaway").is_some(), "closed without GOAWAY: {r}");
            assert_eq!(text(r, "streams_left"), "0", "{r}");
        }
    }
    let released = m.released(&samples, &base, reference, H2_IDLE.max(IDLE));
    assert!(moved["keep_alive"] >= 1.0, "{moved:?}");
    assert!(moved["h2_idle"] >= 3.0, "{moved:?}");
    format!("{line}; {released}")
}

/// Case 4: half the preface; the preface and no SETTINGS; an `Upgrade:
/// h2c` answered 101 and then silence. Closed within the request-head
/// bound + 1 s of the connection's start (of the 101); half a preface gets
/// no HTTP/1.1 answer.
fn partial_preface(m: &Matrix) -> String {
    let base = m.baseline();
    let before = m.counters();
    let mut clients = vec![
        m.client("preface", &["partial", "6"]),
        m.client("preface", &["no-settings", "6"]),
        m.client("preface", &["upgrade-silent", "6"]),
    ];
    let samples = m.watch(&mut clients, &base, Duration::from_secs(10));
    let all: Vec<Value> = clients.iter().map(|c| reports(c, 1).remove(0)).collect();
    let moved = m.moved(&before);
    let line = format!(
        "{}; timeouts h2_preface +{} request_head +{}",
        all.iter()
            .map(|r| {
                let goaway = match num(r, "goaway").zip(num(r, "ref")) {
                    Some((g, at)) => format!(", GOAWAY {} at {:.2} s", text(r, "code"), g - at),
                    None => String::new(),
                };
                format!(
                    "{} closed after {} ({}{goaway}, got {:?})",
                    text(r, "how"),
                    secs(waited(r)),
                    text(r, "why"),
                    text(r, "received")
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        moved["h2_preface"],
        moved["request_head"]
    );
    println!("  {line}");
    let reference = all
        .iter()
        .filter_map(|r| num(r, "ref"))
        .fold(f64::MIN, f64::max);
    for r in &all {
        let t = waited(r).unwrap_or_else(|| panic!("never closed: {r}"));
        assert!(t <= REQUEST_HEAD + SLACK, "closed after {t:.2} s: {r}");
        match text(r, "how").as_str() {
            "partial" => assert!(
                text(r, "http1") == "false",
                "half a preface is just closed, not answered as HTTP/1.1: {r}"
            ),
            "upgrade-silent" => assert!(text(r, "head").starts_with("HTTP/1.1 101"), "{r}"),
            _ => {}
        }
    }
    let released = m.released(&samples, &base, reference, REQUEST_HEAD);
    assert!(moved["h2_preface"] >= 1.0, "{moved:?}");
    assert!(
        moved["h2_preface"] + moved["request_head"] >= 3.0,
        "{moved:?}"
    );
    format!("{line}; {released}")
}

/// Case 5: the first frame announces 16 MiB - 1 (after `Upgrade: h2c`, and
/// with prior knowledge), or is not SETTINGS: closed at once (< 1 s) while
/// the client keeps sending, and the gateway's RSS does not grow by the
/// frame it was promised.
fn oversized_first_frame(m: &Matrix) -> String {
    let mut parts = Vec::new();
    let mut failures = Vec::new();
    for how in ["upgrade", "prior", "headers"] {
        let base = m.baseline();
        let rss_before = m.rss_kb();
        let mut clients = vec![m.client("oversized", &[how, "5"])];
        let samples = m.watch(&mut clients, &base, Duration::from_secs(10));
        let r = reports(&clients[0], 1).remove(0);
        let growth = samples
            .iter()
            .map(|s| s.rss_kb.saturating_sub(rss_before))
            .max()
            .unwrap_or(0);
        let t = waited(&r);
        parts.push(format!(
            "{how}{} closed after {} ({}, {} B sent), rss +{growth} kB",
            if how == "upgrade" {
                format!(" ({})", text(&r, "head"))
            } else {
                String::new()
            },
            secs(t),
            text(&r, "why"),
            text(&r, "sent")
        ));
        if how == "upgrade" && !text(&r, "head").starts_with("HTTP/1.1 101") {
            failures.push(format!("{how}: no 101: {r}"));
        }
        match t {
            Some(t) if t < 1.0 => {}
            _ => failures.push(format!("{how}: not closed within 1 s: {r}")),
        }
        if growth >= 2048 {
            failures.push(format!("{how}: RSS grew by {growth} kB"));
        }
        let released = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Release::of(&samples, &base, num(&r, "ref").unwrap_or(0.0))
                .assert_within(0.0, &samples);
            m.settled()
        }));
        if let Err(e) = released {
            failures.push(format!("{how}: {}", panic_text(e)));
        }
    }
    let line = parts.join(", ");
    println!("  {line}");
    assert!(failures.is_empty(), "{}", failures.join("; "));
    line
}

/// Case 7: a request head at one byte every 0.5 s, never finished: 408 or
/// closed within the request-head bound + 1 s of its first byte.
fn slowloris(m: &Matrix) -> String {
    let base = m.baseline();
    let before = m.counters();
    let mut clients = vec![m.client("slowloris", &["8"])];
    let samples = m.watch(&mut clients, &base, Duration::from_secs(12));
    let r = reports(&clients[0], 1).remove(0);
    let moved = m.moved(&before);
    let line = format!(
        "closed after {} ({}, status {:?}, {} bytes sent); timeouts request_head +{}",
        secs(waited(&r)),
        text(&r, "why"),
        text(&r, "status"),
        text(&r, "sent"),
        moved["request_head"]
    );
    println!("  {line}");
    assert!(
        ["408", ""].contains(&text(&r, "status").as_str()),
        "a slow head gets 408 or nothing: {r}"
    );
    let t = waited(&r).unwrap_or_else(|| panic!("never closed: {r}"));
    assert!(t <= REQUEST_HEAD + SLACK, "closed after {t:.2} s: {r}");
    let released = m.released(&samples, &base, num(&r, "ref").unwrap(), REQUEST_HEAD);
    assert!(moved["request_head"] >= 1.0, "{moved:?}");
    format!("{line}; {released}")
}

/// Case 6: uploads of 40 s, under the 30 s response timeout (which now
/// starts at the request's last byte), over every protocol pairing at
/// once: all 200 and byte-exact.
struct Uploads {
    dir: PathBuf,
    body: Vec<u8>,
    runs: Vec<(&'static str, Process, PathBuf)>,
    started: Instant,
}

impl Uploads {
    fn start(m: &Matrix) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "{}-uploads-{}",
            m.gw.lab.prefix,
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let body: Vec<u8> = (0..UPLOAD_BYTES as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let sent = dir.join("sent.bin");
        std::fs::write(&sent, &body).unwrap();
        let sent = sent.to_string_lossy().into_owned();
        let mut runs = Vec::new();
        for (name, client, path) in [
            ("HTTP/1.1 to HTTP/1.1", "--http1.1", "/echo-body"),
            (
                "HTTP/2 to HTTP/1.1",
                "--http2-prior-knowledge",
                "/echo-body",
            ),
            ("HTTP/2 to h2c", "--http2-prior-knowledge", "/h2c/echo-body"),
            ("HTTP/1.1 to h2c", "--http1.1", "/h2c/echo-body"),
        ] {
            let out = dir.join(format!("got-{}.bin", runs.len()));
            let out_arg = out.to_string_lossy().into_owned();
            let url = m.gw.url(path);
            // bash execs curl (the PID a drop kills), fed by the paced
            // writer; HTTP/1.1 sends it chunked.
            let p = m.gw.lab.spawn(
                "client",
                &[
                    "bash",
                    "-c",
                    "exec curl \"${@:3}\" < <(exec python3 -c \"$1\" \"$2\")",
                    "upload",
                    FEEDER,
                    &sent,
                    "-s",
                    "-m",
                    "90",
                    client,
                    "-H",
                    "Expect:",
                    "-X",
                    "POST",
                    "-T",
                    "-",
                    "-o",
                    &out_arg,
                    "-w",
                    "%{http_code} %{time_total}",
                    &url,
                ],
            );
            runs.push((name, p, out));
        }
        // The other cases' baselines include the uploads' connections.
        std::thread::sleep(Duration::from_millis(1000));
        Self {
            dir,
            body,
            runs,
            started: Instant::now(),
        }
    }

    fn finish(&self, _m: &Matrix) -> String {
        let mut parts = Vec::new();
        let mut failures = Vec::new();
        for (name, process, out) in &self.runs {
            let deadline = self.started + Duration::from_secs(80);
            // `wait` needs &mut: poll through the output instead.
            while !process
                .output()
                .iter()
                .any(|l| l.split_whitespace().count() == 2)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            let result = process.output().join(" ");
            let mut words = result.split_whitespace();
            let code = words.next().unwrap_or("none").to_owned();
            let took: f64 = words.next().and_then(|t| t.parse().ok()).unwrap_or(0.0);
            let got = std::fs::read(out).unwrap_or_default();
            parts.push(format!(
                "{name}: {code} in {took:.1} s, {} B back",
                got.len()
            ));
            if code != "200" {
                failures.push(format!("{name}: status {code}"));
            } else if got != self.body {
                failures.push(format!(
                    "{name}: {} bytes back, not the {} sent",
                    got.len(),
                    self.body.len()
                ));
            }
            if took <= RESPONSE + SLACK {
                failures.push(format!(
                    "{name}: took {took:.1} s, not longer than the response timeout: proves nothing"
                ));
            }
        }
        let line = parts.join(", ");
        println!("  {line}");
        assert!(failures.is_empty(), "{}", failures.join("; "));
        line
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
