//! Backends failing under load: the gateway against nginx and HAProxy, each
//! with its own passive/active health and retries (lab benchmark, root;
//! run by hand: `sudo cargo bench --bench failures`).
//!
//! Endpoints are `rauta echo` pods in the backend namespace
//! (198.18.0.20–23, port 3000, on CPU 0 with wrk); the peer under test runs
//! one worker on CPU 1. Each scenario starts fresh endpoints and a fresh
//! peer, warms up for a second, then runs `wrk -t1 -c64 --latency` while
//! the scenario breaks something:
//!
//! 1. `kill`: one of two endpoints SIGKILLed 2 s into a 6 s run;
//! 2. `slow`: one of three endpoints answers 20 ms late (a run with all
//!    three fast first, for the p99 to compare with);
//! 3. `half-503`: one of three endpoints answers 503 to every second
//!    request, with a retry on 503 configured;
//! 4. `restarts`: one of two endpoints SIGKILLed and started again 10 times
//!    in a row; the time from each start to its first answer;
//! 5. `rolling`: two endpoints replaced by two new ones: the new ones
//!    start, the old ones go `terminating` (rauta; nginx and HAProxy reload
//!    a configuration without them), and 1 s later get SIGTERM and leave.
//!
//! Rauta (`--io xdp`, defaults) takes the endpoints from a directory of
//! manifests; nginx 1.22 uses `least_conn`, `max_fails=1 fail_timeout=1s`
//! and `proxy_next_upstream`; HAProxy 2.6 `balance leastconn`, HTTP checks
//! every 500 ms, `observe layer7`, `retry-on` and `redispatch`.
//! Reported per scenario and peer: requests, failed requests (non-2xx and
//! socket errors), p99, and what the scenario is about (a slow endpoint's
//! share, the extra load retries made, recovery times), medians over the
//! rounds where several. JSON goes to `benches/results/failures.json`.
//!
//! Environment: RAUTA_BENCH_ROUNDS (1), RAUTA_BENCH_SCENARIOS (all, or a
//! comma-separated list of the names above), RAUTA_BENCH_PEERS (all, or a
//! list of rauta-xdp, nginx, haproxy).

#[path = "support/peer.rs"]
mod peer;
mod support;
#[path = "support/wrk.rs"]
mod wrk;

use rauta_testkit::fake_apiserver::FakeApiServer;
use rauta_testkit::netns::in_netns;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{env_or, invoked_as_bench, median, require_root, run, ChildGuard, LabGuard, RAUTA};
use wrk::WrkReport;

const PREFIX: &str = "rauta-fb";
const GATEWAY: &str = "198.18.0.1";
const NODE: &str = "198.18.0.2";
/// Endpoint hosts in the backend namespace; every one serves port 3000.
const HOSTS: [&str; 4] = ["198.18.0.20", "198.18.0.21", "198.18.0.22", "198.18.0.23"];
const PORT: u16 = 3000;
const CONNECTIONS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    /// Endpoints from a directory of manifests.
    RautaXdp,
    /// Endpoints from the fake Kubernetes API server (`rolling` only).
    RautaXdpApi,
    Nginx,
    Haproxy,
}

impl Peer {
    const ALL: [Peer; 4] = [
        Peer::RautaXdp,
        Peer::RautaXdpApi,
        Peer::Nginx,
        Peer::Haproxy,
    ];

    fn name(self) -> &'static str {
        match self {
            Peer::RautaXdp => "rauta-xdp",
            Peer::RautaXdpApi => "rauta-xdp-api",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Peer::RautaXdp | Peer::RautaXdpApi => GATEWAY,
            _ => NODE,
        }
    }

    /// Whether this peer runs `scenario`: the API source only changes how
    /// a rolling update arrives.
    fn runs(self, scenario: Scenario) -> bool {
        self != Peer::RautaXdpApi || scenario == Scenario::Rolling
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Kill,
    Slow,
    Half503,
    Restarts,
    Rolling,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Kill,
        Scenario::Slow,
        Scenario::Half503,
        Scenario::Restarts,
        Scenario::Rolling,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Slow => "slow",
            Scenario::Half503 => "half-503",
            Scenario::Restarts => "restarts",
            Scenario::Rolling => "rolling",
        }
    }

    /// Whether the peer is told to retry 503s.
    fn retries_503(self) -> bool {
        self == Scenario::Half503
    }
}

/// How an endpoint is in the peer's configuration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Ready,
    /// Still serving, but on its way out (EndpointSlice `terminating`).
    Terminating,
}

fn in_ns(role: &str, args: &[&str]) -> Command {
    peer::in_ns(PREFIX, role, args)
}

fn signal(child: &ChildGuard, name: &str) {
    run(&["kill", &format!("-{name}"), &child.0.id().to_string()]);
}

/// Requests endpoint `i` has answered since it started, `None` while it
/// does not listen.
fn answered(i: usize) -> Option<u64> {
    let url = format!("http://{}:{PORT}/echo-stats", HOSTS[i]);
    let out = in_ns("backend", &["curl", "-s", "-m", "1", &url])
        .output()
        .ok()?;
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    stats["requests"].as_u64()
}

/// The lab's endpoints, each a `rauta echo` pod while it runs.
struct Endpoints {
    dir: PathBuf,
    pods: [Option<ChildGuard>; 4],
}

impl Endpoints {
    /// Start endpoint `i` with `faults` (`rauta echo` flags); returns once
    /// it answers.
    fn start(&mut self, i: usize, faults: &[&str]) {
        self.pods[i] = None;
        let listen = format!("{}:{PORT}", HOSTS[i]);
        let pod = format!("POD_NAME=endpoint-{i}");
        let mut args = vec![
            "env", &pod, "taskset", "-c", "0", RAUTA, "echo", "--listen", &listen,
        ];
        args.extend_from_slice(faults);
        let log = self.dir.join(format!("endpoint-{i}.log"));
        self.pods[i] = Some(peer::spawn(in_ns("backend", &args), &log));
        let deadline = Instant::now() + Duration::from_secs(5);
        while answered(i).is_none() {
            assert!(
                Instant::now() < deadline,
                "endpoint {i} did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, i: usize, how: &str) {
        if let Some(pod) = self.pods[i].take() {
            signal(&pod, how);
            drop(pod);
        }
    }

    fn stop_all(&mut self) {
        for i in 0..self.pods.len() {
            self.pods[i] = None;
        }
    }
}

/// Rauta's GatewayClass, as a cluster has it.
const GATEWAY_CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: rauta}
spec: {controllerName: rauta.dev/gateway-controller}
";

/// Write what `peer` reads (or hand it to `api`, which rauta-xdp-api
/// watches): `endpoints` (index, state) behind one route.
fn write_config(
    dir: &Path,
    peer: Peer,
    scenario: Scenario,
    endpoints: &[(usize, State)],
    api: Option<&FakeApiServer>,
) {
    let address = |i: usize| format!("{}:{PORT}", HOSTS[i]);
    match peer {
        Peer::RautaXdp | Peer::RautaXdpApi => {
            let retry = if scenario.retries_503() {
                "\n    retry: {codes: [503], attempts: 2, backoff: 5ms}"
            } else {
                ""
            };
            let listed: String = endpoints
                .iter()
                .map(|&(i, state)| {
                    let conditions = match state {
                        State::Ready => "{ready: true, serving: true, terminating: false}",
                        State::Terminating => "{ready: false, serving: true, terminating: true}",
                    };
                    format!("- addresses: [{}]\n  conditions: {conditions}\n", HOSTS[i])
                })
                .collect();
            let routes = format!(
                "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  gatewayClassName: rauta
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bench, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  rules:
  - backendRefs: [{{name: backend, port: 80}}]{retry}
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec: {{ports: [{{port: 80, targetPort: {PORT}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend-1, namespace: default, labels: {{kubernetes.io/service-name: backend}}}}
addressType: IPv4
ports: [{{port: {PORT}}}]
endpoints:
{listed}"
            );
            if let Some(api) = api {
                api.apply(&routes);
                return;
            }
            // Replaced whole (a rename), so the watcher never reads half.
            let routes_dir = dir.join("routes");
            std::fs::create_dir_all(&routes_dir).unwrap();
            let staged = dir.join("routes.yaml.new");
            std::fs::write(&staged, routes).unwrap();
            std::fs::rename(&staged, routes_dir.join("routes.yaml")).unwrap();
        }
        Peer::Nginx => {
            let next = if scenario.retries_503() {
                "error timeout http_503"
            } else {
                "error timeout"
            };
            let servers: String = endpoints
                .iter()
                .filter(|(_, state)| *state == State::Ready)
                .map(|&(i, _)| format!("    server {} max_fails=1 fail_timeout=1s;\n", address(i)))
                .collect();
            let conf = format!(
                "worker_processes 1; daemon off; pid {dir}/nginx.pid; error_log stderr error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  upstream backend {{
    least_conn;
{servers}    keepalive 1024;
  }}
  server {{
    listen {NODE}:80 backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_connect_timeout 1s;
      proxy_next_upstream {next};
      proxy_next_upstream_tries 3;
    }}
  }}
}}
",
                dir = dir.display()
            );
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        }
        Peer::Haproxy => {
            let retry_on = if scenario.retries_503() {
                "conn-failure empty-response response-timeout 503"
            } else {
                "conn-failure empty-response response-timeout"
            };
            let servers: String = endpoints
                .iter()
                .filter(|(_, state)| *state == State::Ready)
                .map(|&(i, _)| format!("  server e{i} {}\n", address(i)))
                .collect();
            let conf = format!(
                "global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
  retries 2
  option redispatch 1
  retry-on {retry_on}
frontend fe
  bind {NODE}:80
  default_backend be
backend be
  balance leastconn
  option httpchk GET /healthz
  default-server check inter 500ms fall 2 rise 1 observe layer7 error-limit 5 on-error mark-down
{servers}"
            );
            std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
        }
    }
}

/// Start `peer` pinned to CPU 1 and wait until it answers; rauta-xdp-api
/// reaches its API server through `kubeconfig`.
fn start(peer: Peer, dir: &Path, kubeconfig: Option<&Path>) -> ChildGuard {
    let d = dir.to_string_lossy().into_owned();
    let routes = format!("{d}/routes");
    let nginx_conf = format!("{d}/nginx.conf");
    let haproxy_cfg = format!("{d}/haproxy.cfg");
    let iface = format!("{PREFIX}-gw");
    let address = format!("{GATEWAY}/24");
    let kubeconfig = kubeconfig.map(|k| k.to_string_lossy().into_owned());
    let rauta = [
        RAUTA,
        "run",
        "--io",
        "xdp",
        "--iface",
        &iface,
        "--address",
        &address,
        "--queues",
        "2",
        "--workers",
        "1",
        "--admin",
        "off",
    ];
    let args: Vec<&str> = match peer {
        Peer::RautaXdp => [&rauta[..], &["--config", &routes]].concat(),
        Peer::RautaXdpApi => [
            &rauta[..],
            &[
                "--kubernetes",
                "--kubeconfig",
                kubeconfig
                    .as_deref()
                    .expect("a kubeconfig for rauta-xdp-api"),
                "--identity",
                "bench-0",
                "--lease-namespace",
                "rauta-system",
            ],
        ]
        .concat(),
        Peer::Nginx => vec!["nginx", "-c", &nginx_conf, "-p", &d],
        // Master-worker, so SIGUSR2 reloads.
        Peer::Haproxy => vec!["haproxy", "-W", "-f", &haproxy_cfg],
    };
    let args = [&["taskset", "-c", "1"][..], &args].concat();
    let log = dir.join(format!("{}.log", peer.name()));
    let url = format!("http://{}/", peer.target());
    peer::start_answering(PREFIX, &args, &log, &url, &[])
}

/// Tell a running peer its configuration changed (rauta watches its
/// directory itself).
fn reload(peer: Peer, guard: &ChildGuard) {
    match peer {
        Peer::RautaXdp | Peer::RautaXdpApi => {}
        Peer::Nginx => signal(guard, "HUP"),
        Peer::Haproxy => signal(guard, "USR2"),
    }
}

/// wrk against `peer` for `seconds`, in the background.
fn spawn_wrk(peer: Peer, seconds: u64) -> std::process::Child {
    let url = format!("http://{}/", peer.target());
    let script = format!(
        "ulimit -n 20000 2>/dev/null; exec timeout {} taskset -c 0 wrk -t1 -c{CONNECTIONS} -d{seconds}s --timeout 3s --latency {url}",
        seconds + 30
    );
    in_ns("client", &["sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wrk")
}

fn finish_wrk(child: std::process::Child) -> WrkReport {
    let out = child.wait_with_output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    WrkReport::parse(&text)
}

/// One scenario's result for one peer.
#[derive(Clone, Debug, Default)]
struct Outcome {
    report: WrkReport,
    /// Scenario-specific figures, by name.
    figures: Vec<(&'static str, f64)>,
}

impl Outcome {
    fn failed_ratio(&self) -> f64 {
        self.report.failed() as f64 / self.report.requests.max(1.0)
    }
}

/// Sum of what `endpoints` have answered (those that listen).
fn answered_by(endpoints: &[usize]) -> u64 {
    endpoints.iter().filter_map(|&i| answered(i)).sum()
}

/// A fake API server the gateway's namespace reaches, with Rauta's
/// GatewayClass, and a kubeconfig for it.
fn api_server() -> (FakeApiServer, PathBuf) {
    let listener = in_netns(&format!("{PREFIX}-gw"), || {
        std::net::TcpListener::bind("127.0.0.1:0").expect("binding in the gateway's namespace")
    })
    .join()
    .unwrap();
    let server = FakeApiServer::serve(listener, &["bench"]);
    server.apply(GATEWAY_CLASS);
    let kubeconfig = server.kubeconfig("bench");
    (server, kubeconfig)
}

fn run_scenario(scenario: Scenario, peer: Peer, dir: &Path) -> Outcome {
    let api = (peer == Peer::RautaXdpApi).then(api_server);
    let api_server = api.as_ref().map(|(server, _)| server);
    let kubeconfig = api.as_ref().map(|(_, k)| k.as_path());
    let write_config = |peer, scenario, endpoints: &[(usize, State)]| {
        write_config(dir, peer, scenario, endpoints, api_server)
    };
    let start = |peer| start(peer, dir, kubeconfig);
    let mut pods = Endpoints {
        dir: dir.to_path_buf(),
        pods: [None, None, None, None],
    };
    let ready =
        |ids: &[usize]| -> Vec<(usize, State)> { ids.iter().map(|&i| (i, State::Ready)).collect() };
    let warm_up = |peer: Peer| finish_wrk(spawn_wrk(peer, 1));
    let outcome = match scenario {
        Scenario::Kill => {
            pods.start(0, &[]);
            pods.start(1, &[]);
            write_config(peer, scenario, &ready(&[0, 1]));
            let gateway = start(peer);
            warm_up(peer);
            let load = spawn_wrk(peer, 6);
            std::thread::sleep(Duration::from_secs(2));
            pods.kill(1, "KILL");
            let report = finish_wrk(load);
            drop(gateway);
            Outcome {
                report,
                figures: Vec::new(),
            }
        }
        Scenario::Slow => {
            for i in 0..3 {
                pods.start(i, &[]);
            }
            write_config(peer, scenario, &ready(&[0, 1, 2]));
            let gateway = start(peer);
            warm_up(peer);
            let fast = finish_wrk(spawn_wrk(peer, 5));
            pods.start(2, &["--delay", "20ms"]);
            // The restarted endpoint is known to every peer again before
            // the measured run (nginx and HAProxy may have marked it down).
            std::thread::sleep(Duration::from_secs(2));
            warm_up(peer);
            let before = answered_by(&[0, 1, 2]);
            let slow_before = answered(2).unwrap_or(0);
            let report = finish_wrk(spawn_wrk(peer, 5));
            let total = answered_by(&[0, 1, 2]) - before;
            let slow = answered(2).unwrap_or(0) - slow_before;
            drop(gateway);
            Outcome {
                figures: vec![
                    ("slow_endpoint_share", slow as f64 / total.max(1) as f64),
                    ("all_fast_p99_us", fast.p99_us),
                    ("p99_vs_all_fast", report.p99_us / fast.p99_us),
                ],
                report,
            }
        }
        Scenario::Half503 => {
            pods.start(0, &[]);
            pods.start(1, &[]);
            pods.start(2, &["--fail-every", "2"]);
            write_config(peer, scenario, &ready(&[0, 1, 2]));
            let gateway = start(peer);
            warm_up(peer);
            let before = answered_by(&[0, 1, 2]);
            let report = finish_wrk(spawn_wrk(peer, 6));
            let attempts = answered_by(&[0, 1, 2]) - before;
            drop(gateway);
            Outcome {
                figures: vec![
                    (
                        "client_503_ratio",
                        report.non_2xx as f64 / report.requests.max(1.0),
                    ),
                    (
                        "extra_load_ratio",
                        attempts as f64 / report.requests.max(1.0) - 1.0,
                    ),
                ],
                report,
            }
        }
        Scenario::Restarts => {
            pods.start(0, &[]);
            pods.start(1, &[]);
            write_config(peer, scenario, &ready(&[0, 1]));
            let gateway = start(peer);
            warm_up(peer);
            let load = spawn_wrk(peer, 30);
            std::thread::sleep(Duration::from_secs(1));
            let mut recoveries = Vec::new();
            for _ in 0..10 {
                pods.kill(1, "KILL");
                std::thread::sleep(Duration::from_millis(300));
                pods.start(1, &[]);
                // `start` returns once it answers its own probe, which the
                // counter does not count: the first count is the peer's.
                let up = Instant::now();
                let mut recovered = None;
                while up.elapsed() < Duration::from_secs(5) {
                    if answered(1).is_some_and(|n| n > 0) {
                        recovered = Some(up.elapsed().as_secs_f64() * 1e3);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                recoveries.push(recovered.unwrap_or(f64::INFINITY));
                std::thread::sleep(Duration::from_millis(1500));
            }
            let report = finish_wrk(load);
            drop(gateway);
            let worst = recoveries.iter().copied().fold(0.0, f64::max);
            eprintln!("  {}: recovery ms {recoveries:.0?}", peer.name());
            Outcome {
                figures: vec![
                    ("recovery_ms_median", median(recoveries.clone())),
                    ("recovery_ms_max", worst),
                ],
                report,
            }
        }
        Scenario::Rolling => {
            pods.start(0, &[]);
            pods.start(1, &[]);
            write_config(peer, scenario, &ready(&[0, 1]));
            let gateway = start(peer);
            warm_up(peer);
            let load = spawn_wrk(peer, 8);
            std::thread::sleep(Duration::from_secs(2));
            pods.start(2, &[]);
            pods.start(3, &[]);
            let flipped = [
                (0, State::Terminating),
                (1, State::Terminating),
                (2, State::Ready),
                (3, State::Ready),
            ];
            write_config(peer, scenario, &flipped);
            reload(peer, &gateway);
            std::thread::sleep(Duration::from_secs(1));
            pods.kill(0, "TERM");
            pods.kill(1, "TERM");
            // The pods are gone: the slice drops them.
            write_config(peer, scenario, &ready(&[2, 3]));
            reload(peer, &gateway);
            let report = finish_wrk(load);
            let served_new = answered_by(&[2, 3]);
            drop(gateway);
            Outcome {
                figures: vec![("requests_by_new_endpoints", served_new as f64)],
                report,
            }
        }
    };
    pods.stop_all();
    outcome
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    require_root("the failure benchmark");
    for tool in ["wrk", "nginx", "haproxy", "curl", "taskset"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is needed: run scripts/setup --bench"
        );
    }
    let rounds: usize = env_or("RAUTA_BENCH_ROUNDS", 1);
    let wanted: String = env_or("RAUTA_BENCH_SCENARIOS", "all".to_string());
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| wanted == "all" || wanted.split(',').any(|w| w == s.name()))
        .collect();
    assert!(
        !scenarios.is_empty(),
        "RAUTA_BENCH_SCENARIOS={wanted}: none of {:?}",
        Scenario::ALL.map(Scenario::name)
    );
    let wanted_peers: String = env_or("RAUTA_BENCH_PEERS", "all".to_string());
    let peers: Vec<Peer> = Peer::ALL
        .into_iter()
        .filter(|p| wanted_peers == "all" || wanted_peers.split(',').any(|w| w == p.name()))
        .collect();
    let dir: PathBuf = std::env::temp_dir().join(format!("rauta-fb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _lab = LabGuard::up(PREFIX, 2);
    let be = format!("{PREFIX}-be");
    for host in &HOSTS[1..] {
        run(&[
            "ip",
            "netns",
            "exec",
            &format!("{PREFIX}-backend"),
            "ip",
            "addr",
            "add",
            &format!("{host}/24"),
            "dev",
            &be,
        ]);
    }

    let mut samples: Vec<(Scenario, Peer, Outcome)> = Vec::new();
    for round in 1..=rounds {
        for &scenario in &scenarios {
            for &peer in peers.iter().filter(|p| p.runs(scenario)) {
                let o = run_scenario(scenario, peer, &dir);
                eprintln!(
                    "round {round}/{rounds} {:<9} {:<10} {:>8.0} requests  {:>6} failed ({:.4}%)  p99 {:>8.0} us  {}",
                    scenario.name(),
                    peer.name(),
                    o.report.requests,
                    o.report.failed(),
                    o.failed_ratio() * 100.0,
                    o.report.p99_us,
                    o.figures
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.3}"))
                        .collect::<Vec<_>>()
                        .join("  ")
                );
                samples.push((scenario, peer, o));
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    let mut results = Vec::new();
    for &scenario in &scenarios {
        for &peer in peers.iter().filter(|p| p.runs(scenario)) {
            let runs: Vec<&Outcome> = samples
                .iter()
                .filter(|(s, p, _)| *s == scenario && *p == peer)
                .map(|(_, _, o)| o)
                .collect();
            let m = |f: &dyn Fn(&Outcome) -> f64| median(runs.iter().map(|o| f(o)).collect());
            let mut figures = serde_json::Map::new();
            for (k, _) in &runs[0].figures {
                let v = m(&|o: &Outcome| {
                    o.figures
                        .iter()
                        .find(|(name, _)| name == k)
                        .map_or(f64::NAN, |(_, v)| *v)
                });
                figures.insert((*k).to_owned(), serde_json::json!(v));
            }
            results.push(serde_json::json!({
                "scenario": scenario.name(),
                "peer": peer.name(),
                "median": {
                    "requests": m(&|o| o.report.requests),
                    "failed": m(&|o| o.report.failed() as f64),
                    "failed_ratio": m(&|o| o.failed_ratio()),
                    "p50_us": m(&|o| o.report.p50_us),
                    "p99_us": m(&|o| o.report.p99_us),
                    "mean_us": m(&|o| o.report.mean_us),
                    "max_us": m(&|o| o.report.max_us),
                    "rps": m(&|o| o.report.rps),
                },
                "figures": figures,
                "runs": runs.iter().map(|o| serde_json::json!({
                    "requests": o.report.requests,
                    "failed": o.report.failed(),
                    "p99_us": o.report.p99_us,
                    "figures": o.figures.iter().map(|(k, v)| ((*k).to_owned(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
            }));
        }
    }
    let report = serde_json::json!({
        "benchmark": "failures",
        "method": "veth lab (2 queues); endpoints are `rauta echo` pods in the backend namespace on CPU 0 with wrk -t1 -c64 --timeout 3s --latency (client namespace); the peer on CPU 1 with one worker; fresh endpoints and peer per scenario; rauta --io xdp with defaults; nginx least_conn, max_fails=1 fail_timeout=1s, proxy_next_upstream (error timeout [http_503]) tries 3; HAProxy balance leastconn, httpchk every 500 ms (fall 2 rise 1), observe layer7 error-limit 5, retries 2, redispatch, retry-on conn-failure empty-response response-timeout [503]",
        "rounds": rounds,
        "results": results,
    });
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("failures.json"),
        serde_json::to_string_pretty(&report).unwrap() + "\n",
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("results: benches/results/failures.json");
}
