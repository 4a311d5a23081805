//! Lab tests of `rauta run` (root), on both transports: real clients (curl,
//! h2load, wrk, raw sockets) in the client namespace, `rauta echo` backends
//! in the backend namespace, the example routes of `examples/gateway`.

use crate::common::{serial, Lab, Process, GATEWAY, GATEWAY6, GATEWAY_NODE, GATEWAY_NODE6, RAUTA};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Io {
    Xdp,
    Kernel,
}

/// A lab with two echo backends and the gateway running on it.
pub(crate) struct GatewayLab {
    pub(crate) lab: Lab,
    pub(crate) io: Io,
    pub(crate) config: PathBuf,
    /// Where `rauta run` takes its routes: `--config DIR` or `--kubernetes …`.
    source: Vec<String>,
    run: RunWith,
    pub(crate) gateway: Option<Process>,
    pub(crate) backends: Vec<Option<Process>>,
}

pub(crate) const BACKEND: &str = "198.18.0.20";

/// How `rauta run` starts beyond the defaults.
#[derive(Clone, Default)]
pub(crate) struct RunWith {
    /// `NAME=value` pairs for the gateway's environment alone.
    pub(crate) env: Vec<String>,
    /// More flags (timeouts, limits).
    pub(crate) flags: Vec<String>,
    /// On `--io xdp`: share the gateway node's own address with its kernel
    /// (`--address-mode node`) rather than own one of its own.
    pub(crate) node_address: bool,
    /// Dual stack: serve on an IPv6 address as well (`--address6`).
    pub(crate) ipv6: bool,
    /// The MTU of the segment's client, backend and gateway links, set
    /// before the gateway starts (default: the veths' 1500).
    pub(crate) mtu: Option<u32>,
}

impl GatewayLab {
    pub(crate) fn start(prefix: &str, io: Io) -> Self {
        Self::start_with(prefix, io, &[])
    }

    /// With `extra` manifests (file name, text) beside the examples.
    pub(crate) fn start_with(prefix: &str, io: Io, extra: &[(&str, &str)]) -> Self {
        Self::start_with_run(prefix, io, extra, RunWith::default())
    }

    /// With `extra` manifests, `rauta run` started as `run` says.
    pub(crate) fn start_with_run(
        prefix: &str,
        io: Io,
        extra: &[(&str, &str)],
        run: RunWith,
    ) -> Self {
        let lab = Lab::up(prefix, 2);
        let config = std::env::temp_dir().join(format!("{prefix}-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&config);
        std::fs::create_dir_all(&config).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway");
        for entry in std::fs::read_dir(examples).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, config.join(path.file_name().unwrap())).unwrap();
        }
        for (name, text) in extra {
            std::fs::write(config.join(name), text).unwrap();
        }
        let source = vec!["--config".to_owned(), config.to_string_lossy().into_owned()];
        Self::launch(lab, io, config, source, run)
    }

    /// Both backends, then the gateway with its routes from `source`.
    fn launch(lab: Lab, io: Io, config: PathBuf, source: Vec<String>, run: RunWith) -> Self {
        let mut this = Self {
            lab,
            io,
            config,
            source,
            run,
            gateway: None,
            backends: vec![None, None],
        };
        if let Some(mtu) = this.run.mtu {
            this.lab.segment_mtu(mtu);
        }
        this.start_backend(0);
        this.start_backend(1);
        this.start_gateway();
        this
    }

    /// A lab whose gateway takes its routes from a Kubernetes API: `api`
    /// starts one for the lab and returns it with a kubeconfig reaching it
    /// from the gateway's namespace.
    pub(crate) fn start_kubernetes<T>(
        prefix: &str,
        io: Io,
        api: impl FnOnce(&Lab) -> (T, PathBuf),
    ) -> (Self, T) {
        let lab = Lab::up(prefix, 2);
        let (server, kubeconfig) = api(&lab);
        let config = std::env::temp_dir().join(format!("{prefix}-config-{}", std::process::id()));
        std::fs::create_dir_all(&config).unwrap();
        let source = [
            "--kubernetes",
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--identity",
            "lab-gateway-0",
            "--lease-namespace",
            "rauta-system",
        ]
        .map(str::to_owned)
        .to_vec();
        (
            Self::launch(lab, io, config, source, RunWith::default()),
            server,
        )
    }

    pub(crate) fn start_backend(&mut self, index: usize) {
        let listen = format!("{BACKEND}:{}", 3000 + index);
        let pod = format!("echo-v{}-lab-0", index + 1);
        self.backends[index] = Some(self.spawn_echo(&pod, &listen));
    }

    /// `rauta echo` as pod `pod` on `listen` in the backend namespace,
    /// once it listens.
    pub(crate) fn spawn_echo(&self, pod: &str, listen: &str) -> Process {
        self.spawn_echo_with(pod, listen, &[])
    }

    /// `rauta echo` with `extra` flags (its faults: `--fail-every`,
    /// `--delay`).
    pub(crate) fn spawn_echo_with(&self, pod: &str, listen: &str, extra: &[&str]) -> Process {
        self.spawn_echo_on("backend", pod, listen, extra)
    }

    /// `rauta echo` on lab host `host` (`backend`, or `lpod`: the pod on
    /// the gateway's own node).
    pub(crate) fn spawn_echo_on(
        &self,
        host: &str,
        pod: &str,
        listen: &str,
        extra: &[&str],
    ) -> Process {
        let pod = format!("POD_NAME={pod}");
        let mut args = vec![
            "env",
            &pod,
            "NAMESPACE=default",
            RAUTA,
            "echo",
            "--listen",
            listen,
        ];
        args.extend_from_slice(extra);
        let p = self.lab.spawn(host, &args);
        p.wait_for_line(
            |l| l.starts_with("rauta echo: listening"),
            Duration::from_secs(10),
        );
        p
    }

    pub(crate) fn start_gateway(&mut self) {
        let iface = self.lab.gw_iface();
        let address = format!("{GATEWAY}/24");
        let node_address = self.run.node_address;
        let address6 = format!("{GATEWAY6}/64");
        let mut args = Vec::new();
        if !self.run.env.is_empty() {
            // `env` execs the gateway: the process's PID stays the gateway's.
            args.push("env");
            args.extend(self.run.env.iter().map(String::as_str));
        }
        args.extend([RAUTA, "run", "--admin", "127.0.0.1:9901"]);
        args.extend(self.source.iter().map(String::as_str));
        args.extend(self.run.flags.iter().map(String::as_str));
        match self.io {
            Io::Xdp if node_address => args.extend([
                "--io",
                "xdp",
                "--iface",
                &iface,
                "--address-mode",
                "node",
                "--address",
                GATEWAY_NODE,
                "--queues",
                "2",
            ]),
            Io::Xdp => args.extend([
                "--io",
                "xdp",
                "--iface",
                &iface,
                "--address",
                &address,
                "--queues",
                "2",
            ]),
            Io::Kernel => args.extend([
                "--io",
                "kernel",
                "--address",
                GATEWAY_NODE,
                "--workers",
                "2",
            ]),
        }
        if self.run.ipv6 {
            match self.io {
                Io::Xdp if !node_address => args.extend(["--address6", &address6]),
                Io::Xdp | Io::Kernel => args.extend(["--address6", GATEWAY_NODE6]),
            }
        }
        let p = self.lab.spawn("gw", &args);
        p.wait_for_line(
            |l| l.starts_with("rauta run: serving"),
            Duration::from_secs(15),
        );
        self.gateway = Some(p);
    }

    /// The address clients use.
    pub(crate) fn target(&self) -> &'static str {
        match self.io {
            Io::Xdp if !self.run.node_address => GATEWAY,
            Io::Xdp | Io::Kernel => GATEWAY_NODE,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.target())
    }

    /// The IPv6 address clients use (with [`RunWith::ipv6`]).
    pub(crate) fn target6(&self) -> &'static str {
        match self.io {
            Io::Xdp if !self.run.node_address => GATEWAY6,
            Io::Xdp | Io::Kernel => GATEWAY_NODE6,
        }
    }

    pub(crate) fn url6(&self, path: &str) -> String {
        format!("http://[{}]{path}", self.target6())
    }

    /// curl from the client namespace: (status, headers and body as text).
    pub(crate) fn curl(&self, args: &[&str]) -> String {
        let mut all = vec!["curl", "-s", "-i", "-m", "20"];
        all.extend_from_slice(args);
        self.lab.exec_ok("client", &all)
    }

    /// The status code of `GET path` from the client namespace, within
    /// `seconds` (`000` when none came).
    pub(crate) fn status(&self, path: &str, seconds: u32) -> String {
        self.status_from("client", &self.url(path), seconds)
    }

    /// The status code of `GET url` from `host`'s namespace, within
    /// `seconds` (`000` when none came).
    pub(crate) fn status_from(&self, host: &str, url: &str, seconds: u32) -> String {
        let out = self.lab.exec(
            host,
            &[
                "curl",
                "-g",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                &seconds.to_string(),
                url,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How long after `since` `GET path` first answers `code`, asked every
    /// 10 ms with `per_try` seconds for each answer; fails past `within`.
    pub(crate) fn until_status(
        &self,
        path: &str,
        code: &str,
        per_try: u32,
        since: Instant,
        within: Duration,
    ) -> Duration {
        loop {
            let last = self.status(path, per_try);
            if last == code {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < within,
                "{path} never answered {code} within {within:?} (last {last})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send raw bytes from the client namespace and return everything the
    /// gateway answered before closing (or 5 s passed).
    pub(crate) fn raw(&self, request: &[u8]) -> String {
        let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
        let script = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.sendall(bytes.fromhex(sys.argv[2]))
out = b''
end = time.time() + 5
while time.time() < end:
    try:
        d = s.recv(65536)
    except socket.timeout:
        break
    if not d:
        break
    out += d
sys.stdout.write(out.decode('latin-1'))
"#;
        self.lab
            .exec_ok("client", &["python3", "-c", script, self.target(), &hex])
    }

    pub(crate) fn admin(&self, path: &str) -> String {
        self.lab.exec_ok(
            "gw",
            &[
                "curl",
                "-s",
                "-m",
                "5",
                &format!("http://127.0.0.1:9901{path}"),
            ],
        )
    }
}

impl Drop for GatewayLab {
    fn drop(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            if std::thread::panicking() {
                eprintln!("gateway output:\n{}", g.output().join("\n"));
            }
            g.kill();
        }
        let _ = std::fs::remove_dir_all(&self.config);
    }
}

/// The status codes of the responses in a raw exchange, in order (a
/// response may follow a body without a line break).
fn status_of(response: &str) -> Vec<&str> {
    response
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| response.get(at + 9..at + 12))
        .collect()
}

/// Everything a client sees through the gateway on one transport.
fn serves_http(io: Io, prefix: &str) {
    let _serial = serial();
    let gw = GatewayLab::start(prefix, io);

    // Routing, filters, redirects, rewrites.
    let r = gw.curl(&[&gw.url("/hello?x=1")]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("x-served-by: rauta"), "{r}");
    assert!(r.contains("\"X-Forwarded-For\":[\"198.18.0.10\"]"), "{r}");
    assert!(r.contains("\"X-Forwarded-Proto\":[\"http\"]"), "{r}");
    let r = gw.curl(&["-H", "X-Canary: yes", &gw.url("/")]);
    assert!(r.contains("\"pod\":\"echo-v2-lab-0\""), "{r}");
    let r = gw.curl(&[&gw.url("/old/page?q=1")]);
    assert!(r.starts_with("HTTP/1.1 301"), "{r}");
    assert!(
        r.contains(&format!("location: http://{}/new/page?q=1", gw.target())),
        "{r}"
    );
    let r = gw.curl(&[&gw.url("/api/items")]);
    assert!(r.contains("\"path\":\"/items\""), "{r}");
    let r = gw.curl(&["-H", "Host: other.example", &gw.url("/x")]);
    assert!(
        r.starts_with("HTTP/1.1 200"),
        "any host matches a listener without hostname: {r}"
    );

    // 100,000 requests, 64 connections, keep-alive: none may fail.
    let out = gw.lab.exec_ok(
        "client",
        &[
            "h2load",
            "--h1",
            "-n",
            "100000",
            "-c",
            "64",
            "-t",
            "1",
            &gw.url("/"),
        ],
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_default();
    assert!(
        line.contains("100000 succeeded, 0 failed, 0 errored"),
        "h2load: {line}\n{out}"
    );
    let status = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_default();
    assert!(status.starts_with("status codes: 100000 2xx"), "{status}");

    // 1 MiB up and down, byte-exact, with Content-Length and chunked both
    // ways (the backend echoes the body; `?chunked` makes it chunk its
    // answer).
    let dir = std::env::temp_dir().join(format!("{prefix}-bodies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sent = dir.join("sent.bin");
    let body: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&sent, &body).unwrap();
    let sent_arg = format!("@{}", sent.display());
    for (i, (extra, path)) in [
        (vec![], "/echo-body"),
        (
            vec!["-H", "Transfer-Encoding: chunked"],
            "/echo-body?chunked",
        ),
        (vec!["-H", "Expect: 100-continue"], "/echo-body"),
    ]
    .into_iter()
    .enumerate()
    {
        let got = dir.join(format!("got-{i}.bin"));
        let got_s = got.to_string_lossy().into_owned();
        let url = gw.url(path);
        let mut args = vec![
            "curl",
            "-s",
            "-m",
            "30",
            "-o",
            &got_s,
            "-w",
            "%{http_code}",
            "--data-binary",
            &sent_arg,
        ];
        args.extend(extra.iter().copied());
        args.push(&url);
        let code = gw.lab.exec_ok("client", &args);
        assert_eq!(code, "200", "{path} {extra:?}");
        let received = std::fs::read(&got).unwrap();
        assert!(
            received == body,
            "{path} {extra:?}: {} bytes back, not the {} sent",
            received.len(),
            body.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    // Pipelining: three requests in one write, the second chunked, answered
    // in order.
    let pipelined = b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\n\
POST /p2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
GET /p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let r = gw.raw(pipelined);
    assert_eq!(status_of(&r), vec!["200", "200", "200"], "{r}");
    let (p1, p2, p3) = (
        r.find("\"/p1\"").unwrap(),
        r.find("\"/p2\"").unwrap(),
        r.find("\"/p3\"").unwrap(),
    );
    assert!(p1 < p2 && p2 < p3, "{r}");

    // Request smuggling and malformed requests: 400 and the connection ends
    // (nothing after the 400, though a valid request follows).
    let next = "GET /after HTTP/1.1\r\nHost: a\r\n\r\n";
    let vectors: [(&str, String); 7] = [
        ("CL and TE", format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{next}")),
        ("two CLs", format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab{next}")),
        ("invalid CL", format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\na{next}")),
        ("bad chunk size", format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{next}")),
        ("obs-fold", format!("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n{next}")),
        ("bare CR", format!("GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n{next}")),
        ("TE not chunked last", format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{next}")),
    ];
    for (name, request) in vectors {
        let r = gw.raw(request.as_bytes());
        assert_eq!(status_of(&r), vec!["400"], "{name}: {r}");
        assert!(
            !r.contains("/after"),
            "{name}: a request after the bad one was served: {r}"
        );
    }
    // The gateway's neighbours never noticed: a normal request still works.
    let r = gw.curl(&[&gw.url("/still")]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // The admin server: health, readiness, metrics and the active table.
    assert_eq!(gw.admin("/healthz"), "ok\n");
    assert_eq!(gw.admin("/readyz"), "ready\n");
    let metrics = gw.admin("/metrics");
    assert!(
        metrics.contains("rauta_route_responses_total{route=\"default/echo\",backend=\"default/echo-v1:80\",class=\"2xx\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rauta_response_latency_seconds_bucket"),
        "{metrics}"
    );
    if io == Io::Xdp {
        assert!(
            metrics.contains("rauta_xsk_frames_in_total{queue=\"1\"}"),
            "{metrics}"
        );
    }
    let config = gw.admin("/config");
    assert!(config.contains("\"default/lab/http\""), "{config}");
    assert!(config.contains("198.18.0.20:3000"), "{config}");
}

#[test]
fn gateway_serves_http_on_xdp() {
    serves_http(Io::Xdp, "rtg-a");
}

#[test]
fn gateway_serves_http_on_kernel() {
    serves_http(Io::Kernel, "rtg-b");
}

/// The value of the unlabelled series `name` in a Prometheus text page.
pub(crate) fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Wait for a wrk run (of seconds) to end; assert it made real load and
/// saw no failure `during` what the test did meanwhile. Its request count.
pub(crate) fn wrk_ends_without_failures(load: &mut Process, during: &str) -> u64 {
    load.wait(Duration::from_secs(20));
    let (requests, failures) = wrk_summary(&load.output().join("\n"));
    assert!(
        requests > 1000,
        "wrk made {requests} requests:\n{}",
        load.output().join("\n")
    );
    assert!(
        failures.is_empty(),
        "requests failed during {during}: {failures:?}"
    );
    requests
}

/// wrk's summary: (requests, the lines where it reports failures).
fn wrk_summary(out: &str) -> (u64, Vec<String>) {
    let failures = out
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .map(str::to_owned)
        .collect();
    (wrk_counts(out).0, failures)
}

/// wrk's summary as numbers: requests made, and those that failed
/// (non-2xx/3xx responses and socket errors of every kind).
pub(crate) fn wrk_counts(out: &str) -> (u64, u64) {
    let number = |s: &str| s.trim().trim_end_matches(',').parse::<u64>().unwrap_or(0);
    let mut requests = 0;
    let mut failed = 0;
    for line in out.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            requests = number(n);
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            failed += number(n);
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 0"
            failed += errors
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .map(number)
                .sum::<u64>();
        }
    }
    (requests, failed)
}

/// A route file edited under load: no request fails and the new route
/// answers within a second; a broken edit is rejected while the last good
/// table keeps serving; SIGTERM drains uploads in flight (HTTP/1.1, and
/// HTTP/2 after its GOAWAY), then detaches.
#[test]
fn gateway_reloads_routes_under_load_and_drains_on_sigterm() {
    let _serial = serial();
    let mut gw = GatewayLab::start("rtg-c", Io::Xdp);
    let url = gw.url("/new-route");
    let before = gw.curl(&[&url]);
    assert!(
        before.contains("x-served-by: rauta") && !before.contains("x-route: new"),
        "{before}"
    );

    let target = gw.url("/");
    let load = gw
        .lab
        .spawn("client", &["wrk", "-t1", "-c32", "-d4s", &target]);
    std::thread::sleep(Duration::from_millis(1000));
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: new-route, namespace: default}\nspec:\n  parentRefs: [{name: lab}]\n  rules:\n  - matches: [{path: {type: Exact, value: /new-route}}]\n    filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {set: [{name: X-Route, value: new}]}\n    backendRefs: [{name: echo-v2, port: 80}]\n";
    let tmp = gw.config.join(".new-route.tmp");
    std::fs::write(&tmp, route).unwrap();
    let edited = Instant::now();
    std::fs::rename(&tmp, gw.config.join("new-route.yaml")).unwrap();
    let took = loop {
        let r = gw.curl(&[&url]);
        if r.contains("x-route: new") {
            break edited.elapsed();
        }
        assert!(
            edited.elapsed() < Duration::from_secs(5),
            "new route never answered: {r}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(took < Duration::from_secs(1), "the new route took {took:?}");

    // A broken edit: rejected with file, object and field; old table serves.
    std::fs::write(
        gw.config.join("broken.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken, namespace: default}\nspec:\n  rules:\n  - matches: [{path: {type: Sideways, value: /}}]\n",
    )
    .unwrap();
    let mut rejected = String::new();
    for _ in 0..100 {
        rejected = gw.admin("/config");
        if rejected.contains("broken.yaml") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        rejected.contains("broken.yaml:1 (document 1): HTTPRoute default/broken: field `spec.rules[0].matches[0].path.type`"),
        "{rejected}"
    );
    assert!(
        gw.curl(&[&url]).contains("x-route: new"),
        "the last good table stopped serving"
    );

    let mut load = load;
    wrk_ends_without_failures(&mut load, "the reload");

    // SIGTERM with a slow upload in flight: it completes, then the
    // gateway exits and detaches.
    let dir = std::env::temp_dir().join(format!("rtg-c-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sent = dir.join("sent.bin");
    std::fs::write(&sent, vec![b'x'; 512 * 1024]).unwrap();
    let got = dir.join("got.bin");
    let (sent_arg, got_arg, body_url) = (
        format!("@{}", sent.display()),
        got.to_string_lossy().into_owned(),
        gw.url("/echo-body"),
    );
    let mut upload = gw.lab.spawn(
        "client",
        &[
            "curl",
            "-s",
            "-m",
            "30",
            "--limit-rate",
            "200k",
            "-o",
            &got_arg,
            "-w",
            "%{http_code}",
            "--data-binary",
            &sent_arg,
            &body_url,
        ],
    );
    // The same over HTTP/2 to the h2c backend: the drain's GOAWAY must let
    // the stream finish.
    let got_h2 = dir.join("got-h2.bin");
    let (got_h2_arg, h2_url) = (
        got_h2.to_string_lossy().into_owned(),
        gw.url("/h2c/echo-body"),
    );
    let mut upload_h2 = gw.lab.spawn(
        "client",
        &[
            "curl",
            "-s",
            "-m",
            "30",
            "--http2-prior-knowledge",
            "--limit-rate",
            "200k",
            "-o",
            &got_h2_arg,
            "-w",
            "%{http_code}",
            "--data-binary",
            &sent_arg,
            &h2_url,
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    let mut gateway = gw.gateway.take().unwrap();
    let status = gateway.terminate();
    assert!(
        status.success(),
        "gateway exit: {status:?}\n{}",
        gateway.output().join("\n")
    );
    upload.wait(Duration::from_secs(30));
    assert_eq!(
        upload.output().join(""),
        "200",
        "the upload in flight did not complete"
    );
    assert_eq!(std::fs::read(&got).unwrap().len(), 512 * 1024);
    upload_h2.wait(Duration::from_secs(30));
    assert_eq!(
        upload_h2.output().join(""),
        "200",
        "the HTTP/2 upload in flight did not complete"
    );
    assert_eq!(std::fs::read(&got_h2).unwrap(), vec![b'x'; 512 * 1024]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(gw.lab.xdp_program().is_none(), "XDP program left attached");
    gateway.line_starting("rauta run: drained and stopped; XDP program detached");
    // The host network is intact: the node address answers ping.
    gw.lab
        .exec_ok("client", &["ping", "-c", "1", "-W", "2", GATEWAY_NODE]);
}

/// A backend that dies: its requests get 502, others are unaffected, and
/// when it comes back the pool recovers.
#[test]
fn gateway_survives_a_backend_dying_and_recovers() {
    let _serial = serial();
    let mut gw = GatewayLab::start("rtg-d", Io::Xdp);
    let canary = |gw: &GatewayLab| gw.curl(&["-H", "X-Canary: yes", &gw.url("/")]);
    // Warm the pool to v2.
    for _ in 0..5 {
        assert!(canary(&gw).starts_with("HTTP/1.1 200"));
    }
    gw.backends[1].take().unwrap().kill();
    for _ in 0..5 {
        let r = canary(&gw);
        assert!(r.starts_with("HTTP/1.1 502"), "{r}");
        assert!(
            !r.contains("refused") && !r.contains("Error("),
            "no internal error text: {r}"
        );
    }
    // v1 keeps serving meanwhile.
    let r = gw.curl(&["-H", "X-Canary: no", &gw.url("/api/x")]);
    assert!(r.contains("echo-v1-lab-0"), "{r}");
    gw.start_backend(1);
    let back = Instant::now();
    loop {
        let r = canary(&gw);
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "never recovered: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
