//! The gateway against nginx and HAProxy, lab benchmark (root; run by hand,
//! not by CI): `sudo cargo bench --bench http_gateway` for HTTP/1.1 clients,
//! `sudo RAUTA_BENCH_PROTOCOL=http2 cargo bench --bench http_gateway` for
//! HTTP/2 (h2c, prior knowledge) clients.
//!
//! Same lab, same backend (nginx in the backend namespace answering a fixed
//! 200 over HTTP/1.1, upstream keep-alive everywhere), same load generator
//! (HTTP/1.1: wrk at 64 and 1,000 connections; HTTP/2: h2load with 10 and
//! 100 clients of 10 concurrent streams each), rounds alternating rauta --io
//! xdp, rauta --io kernel, nginx, HAProxy. The gateway under test runs one worker pinned to
//! CPU 1; wrk and the backend share CPU 0. Reported per peer and connection
//! count: requests/s, p50/p99 latency (wrk), and whole-machine CPU time per
//! request (/proc/stat deltas over the run, so softirq work the kernel path
//! causes is counted), medians over the rounds, and rauta-xdp's ratios to
//! each peer. JSON and an SVG chart go to `benches/results/`.
//!
//! Also per run: the gateway's own CPU per request (its processes' user +
//! system time), and frames the kernel's receive backlog dropped. The
//! backlog (`net.core.netdev_max_backlog`, global) is raised to 16,384 for
//! the run and restored after: at the default 1,000, veth delivery drops
//! frames at 1,000 connections and the kernel-socket peers stall on
//! retransmissions.
//!
//! h2load reports no percentiles: HTTP/2 latency is its mean and maximum.
//!
//! Environment: RAUTA_BENCH_PROTOCOL (http1 | http2), RAUTA_BENCH_ROUNDS
//! (3), RAUTA_BENCH_SECONDS (5), RAUTA_BENCH_BACKLOG (16384),
//! RAUTA_BENCH_PEERS (comma-separated peer names; the four above by
//! default). `rauta-xdp-kernel-legs` is rauta-xdp with every backend
//! connection on a kernel socket (`--backend-legs kernel`): what a pod on
//! the gateway's own node costs, against rauta-xdp's all-userspace legs.
//! A run with other peers than the default writes its results under a
//! name that lists them, beside the default run's.

#[path = "support/peer.rs"]
mod peer;
mod support;
#[path = "support/wrk.rs"]
mod wrk;

use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{env_or, invoked_as_bench, median, require_root, run, ChildGuard, LabGuard, RAUTA};
use wrk::{duration_us, WrkReport};

const PREFIX: &str = "rauta-hb";
const GATEWAY: &str = "198.18.0.1";
const NODE: &str = "198.18.0.2";
const BACKEND: &str = "198.18.0.20:8080";
/// Concurrent HTTP/2 streams per h2load client.
const STREAMS: usize = 10;

/// What the clients speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    Http1,
    /// h2c with prior knowledge.
    Http2,
}

impl Protocol {
    fn from_env() -> Self {
        match std::env::var("RAUTA_BENCH_PROTOCOL").as_deref() {
            Ok("http2") => Self::Http2,
            Ok("http1") | Err(_) => Self::Http1,
            Ok(other) => panic!("RAUTA_BENCH_PROTOCOL={other}: http1 or http2"),
        }
    }

    /// The load points: connections (HTTP/1.1) or clients (HTTP/2).
    fn points(self) -> [usize; 2] {
        match self {
            Self::Http1 => [64, 1000],
            Self::Http2 => [10, 100],
        }
    }

    fn point_label(self, n: usize) -> String {
        match self {
            Self::Http1 => format!("{n} connections"),
            Self::Http2 => format!("{n} clients x {STREAMS} streams"),
        }
    }

    fn results_name(self) -> &'static str {
        match self {
            Self::Http1 => "http_gateway",
            Self::Http2 => "http2_gateway",
        }
    }

    /// curl's flag to reach a peer the way the load does.
    fn curl_flag(self) -> &'static str {
        match self {
            Self::Http1 => "--http1.1",
            Self::Http2 => "--http2-prior-knowledge",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    RautaXdp,
    RautaXdpKernelLegs,
    RautaKernel,
    Nginx,
    Haproxy,
}

impl Peer {
    /// The default run's peers.
    const DEFAULT: [Peer; 4] = [
        Peer::RautaXdp,
        Peer::RautaKernel,
        Peer::Nginx,
        Peer::Haproxy,
    ];
    const EVERY: [Peer; 5] = [
        Peer::RautaXdp,
        Peer::RautaXdpKernelLegs,
        Peer::RautaKernel,
        Peer::Nginx,
        Peer::Haproxy,
    ];

    fn name(self) -> &'static str {
        match self {
            Peer::RautaXdp => "rauta-xdp",
            Peer::RautaXdpKernelLegs => "rauta-xdp-kernel-legs",
            Peer::RautaKernel => "rauta-kernel",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Peer::RautaXdp | Peer::RautaXdpKernelLegs => GATEWAY,
            _ => NODE,
        }
    }

    /// The peers RAUTA_BENCH_PEERS names (rauta-xdp, the one every ratio
    /// is of, always among them), or the default run's.
    fn selected() -> Vec<Peer> {
        let Ok(names) = std::env::var("RAUTA_BENCH_PEERS") else {
            return Self::DEFAULT.to_vec();
        };
        let mut peers = vec![Peer::RautaXdp];
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let peer = Self::EVERY
                .into_iter()
                .find(|p| p.name() == name)
                .unwrap_or_else(|| panic!("RAUTA_BENCH_PEERS: no peer {name:?}"));
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
        peers
    }
}

/// One wrk run.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
    cpu_us_per_request: f64,
    /// The gateway's own processes only (user + system time).
    gateway_cpu_us_per_request: f64,
    errors: u64,
    /// Frames the kernel's receive backlogs dropped during the run.
    backlog_drops: u64,
}

fn in_ns(role: &str, args: &[&str]) -> Command {
    peer::in_ns(PREFIX, role, args)
}

/// Busy and total jiffies of the whole machine.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    (total - idle, total)
}

/// User + system jiffies of `pid` and its children (nginx's workers).
fn process_jiffies(pid: u32) -> u64 {
    let times = |stat: &str| -> Option<(u32, u64)> {
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some((
            f.get(1)?.parse().ok()?,
            f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
        ))
    };
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(n) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some((ppid, jiffies)) = std::fs::read_to_string(format!("/proc/{n}/stat"))
            .ok()
            .as_deref()
            .and_then(times)
        else {
            continue;
        };
        if n == pid || ppid == pid {
            total += jiffies;
        }
    }
    total
}

/// One load run at `n` connections or clients, with the machine's and the
/// peer's CPU time over it.
fn load(protocol: Protocol, peer: Peer, pid: u32, n: usize, seconds: u64) -> Sample {
    let url = format!("http://{}/", peer.target());
    let tool = match protocol {
        Protocol::Http1 => format!("wrk -t1 -c{n} -d{seconds}s --latency {url}"),
        Protocol::Http2 => format!("h2load -t1 -c{n} -m{STREAMS} -D{seconds} {url}"),
    };
    let script = format!(
        "ulimit -n 20000 2>/dev/null || ulimit -n $(ulimit -Hn); exec timeout {} taskset -c 0 {tool}",
        seconds + 30
    );
    let drops0 = backlog_drops();
    let (busy0, _) = cpu_jiffies();
    let own0 = process_jiffies(pid);
    let out = in_ns("client", &["sh", "-c", &script]).output().unwrap();
    let (busy1, _) = cpu_jiffies();
    let own1 = process_jiffies(pid);
    let drops = backlog_drops() - drops0;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{tool} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Summary {
        mut sample,
        requests,
    } = match protocol {
        Protocol::Http1 => wrk_summary(&text),
        Protocol::Http2 => h2load_summary(&text),
    };
    let jiffy_us = 1e6 / 100.0;
    sample.cpu_us_per_request = (busy1 - busy0) as f64 * jiffy_us / requests.max(1.0);
    sample.gateway_cpu_us_per_request = (own1 - own0) as f64 * jiffy_us / requests.max(1.0);
    sample.backlog_drops = drops;
    sample
}

/// What a load tool reported, before CPU accounting.
struct Summary {
    sample: Sample,
    requests: f64,
}

fn wrk_summary(text: &str) -> Summary {
    let report = WrkReport::parse(text);
    Summary {
        sample: Sample {
            rps: report.rps,
            p50_us: report.p50_us,
            p99_us: report.p99_us,
            mean_us: report.mean_us,
            max_us: report.max_us,
            errors: report.failed(),
            ..Sample::default()
        },
        requests: report.requests,
    }
}

/// h2load's summary: requests/s, outcomes, status codes, and the "time for
/// request" line (min, max, mean, sd).
fn h2load_summary(text: &str) -> Summary {
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_default()
    };
    let count = |line: &str, what: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or(0)
    };
    let rps = line("finished in")
        .split(',')
        .nth(1)
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let requests = line("requests:");
    let statuses = line("status codes:");
    let done = count(&requests, "done");
    let non_2xx = count(&statuses, "3xx") + count(&statuses, "4xx") + count(&statuses, "5xx");
    let errors = count(&requests, "failed")
        + count(&requests, "errored")
        + count(&requests, "timeout")
        + non_2xx;
    let times: Vec<f64> = line("time for request:")
        .split_whitespace()
        .take(3)
        .map(duration_us)
        .collect();
    let time = |i: usize| times.get(i).copied().unwrap_or(f64::NAN);
    Summary {
        sample: Sample {
            rps,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            mean_us: time(2),
            max_us: time(1),
            errors,
            ..Sample::default()
        },
        requests: done as f64,
    }
}

fn write_configs(dir: &Path, protocol: Protocol) {
    // nginx 1.22 and HAProxy 2.6 take h2c with prior knowledge on a
    // listener marked for it; Rauta tells the protocols apart itself.
    // nginx ends an HTTP/2 connection after `keepalive_requests` (1,000)
    // requests with GOAWAY, and h2load does not reconnect: raised for
    // HTTP/2, where the other peers keep connections open.
    let (nginx_h2, nginx_requests, haproxy_h2) = match protocol {
        Protocol::Http1 => ("", "", ""),
        Protocol::Http2 => (" http2", "\n    keepalive_requests 1000000;", " proto h2"),
    };
    std::fs::write(
        dir.join("routes.yaml"),
        format!(
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
  rules: [{{backendRefs: [{{name: backend, port: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec: {{ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend-1, namespace: default, labels: {{kubernetes.io/service-name: backend}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints: [{{addresses: [{}]}}]
",
            BACKEND.split(':').next().unwrap()
        ),
    )
    .unwrap();
    let common = "worker_processes 1; daemon off; pid {dir}/{name}.pid; error_log stderr error;";
    let nginx_proxy = format!(
        "{}
events {{ worker_connections 8192; }}
http {{
  access_log off;
  upstream backend {{ server {BACKEND}; keepalive 1024; }}
  server {{
    listen {NODE}:80 backlog=4096{nginx_h2};{nginx_requests}
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }}
  }}
}}
",
        common
            .replace("{dir}", &dir.to_string_lossy())
            .replace("{name}", "proxy")
    );
    std::fs::write(dir.join("nginx-proxy.conf"), nginx_proxy).unwrap();
    let nginx_backend = format!(
        "{}
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen {BACKEND} backlog=4096;
    location / {{ return 200 \"ok\\n\"; }}
  }}
}}
",
        common
            .replace("{dir}", &dir.to_string_lossy())
            .replace("{name}", "backend")
    );
    std::fs::write(dir.join("nginx-backend.conf"), nginx_backend).unwrap();
    let haproxy = format!(
        "global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind {NODE}:80{haproxy_h2}
  default_backend be
backend be
  server b1 {BACKEND}
"
    );
    std::fs::write(dir.join("haproxy.cfg"), haproxy).unwrap();
}

/// Start `peer` pinned to CPU 1 and wait until it answers.
fn start(peer: Peer, dir: &Path, protocol: Protocol) -> ChildGuard {
    let d = dir.to_string_lossy();
    let config = d.to_string();
    let nginx_conf = format!("{d}/nginx-proxy.conf");
    let haproxy_cfg = format!("{d}/haproxy.cfg");
    let iface = format!("{PREFIX}-gw");
    let address = format!("{GATEWAY}/24");
    let mut args: Vec<&str> = match peer {
        Peer::RautaXdp | Peer::RautaXdpKernelLegs => vec![
            "taskset",
            "-c",
            "1",
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
            "--config",
            &config,
            "--admin",
            "off",
        ],
        Peer::RautaKernel => vec![
            "taskset",
            "-c",
            "1",
            RAUTA,
            "run",
            "--io",
            "kernel",
            "--address",
            NODE,
            "--workers",
            "1",
            "--config",
            &config,
            "--admin",
            "off",
        ],
        Peer::Nginx => vec!["taskset", "-c", "1", "nginx", "-c", &nginx_conf, "-p", &d],
        Peer::Haproxy => vec!["taskset", "-c", "1", "haproxy", "-f", &haproxy_cfg],
    };
    if peer == Peer::RautaXdpKernelLegs {
        args.extend(["--backend-legs", "kernel"]);
    }
    let log = dir.join(format!("{}.log", peer.name()));
    let url = format!("http://{}/", peer.target());
    peer::start_answering(PREFIX, &args, &log, &url, &[protocol.curl_flag()])
}

/// A chart panel: its title and the value it plots.
type Panel = (&'static str, fn(&Sample) -> f64);

fn chart(path: &Path, peers: &[Peer], medians: &[(Peer, usize, Sample)], protocol: Protocol) {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let areas = root.split_evenly((1, 2));
    let panels: [Panel; 2] = [
        ("requests/s (higher is better)", |s| s.rps),
        (
            "CPU µs per request, whole machine (lower is better)",
            |s| s.cpu_us_per_request,
        ),
    ];
    for (area, (title, value)) in areas.iter().zip(panels) {
        let max = medians.iter().map(|(_, _, s)| value(s)).fold(0.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..(peers.len() * 3) as f64, 0f64..max.max(1.0))
            .unwrap();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .draw()
            .unwrap();
        let colours = [RGBColor(31, 119, 180), RGBColor(255, 127, 14)];
        for (p, peer) in peers.iter().enumerate() {
            for (c, conns) in protocol.points().iter().enumerate() {
                let Some((_, _, s)) = medians.iter().find(|(mp, mc, _)| mp == peer && mc == conns)
                else {
                    continue;
                };
                let x = (p * 3 + c) as f64 + 0.1;
                chart
                    .draw_series([Rectangle::new(
                        [(x, 0.0), (x + 0.8, value(s))],
                        colours[c].filled(),
                    )])
                    .unwrap();
            }
            chart
                .draw_series([Text::new(
                    peer.name(),
                    ((p * 3) as f64 + 0.2, max * 0.03),
                    ("sans-serif", 12),
                )])
                .unwrap();
        }
        for (c, conns) in protocol.points().iter().enumerate() {
            chart
                .draw_series([Rectangle::new(
                    [
                        (
                            (peers.len() * 3) as f64 - 2.6,
                            max * (0.95 - c as f64 * 0.06),
                        ),
                        (
                            (peers.len() * 3) as f64 - 2.3,
                            max * (0.92 - c as f64 * 0.06),
                        ),
                    ],
                    colours[c].filled(),
                )])
                .unwrap();
            chart
                .draw_series([Text::new(
                    protocol.point_label(*conns),
                    (
                        (peers.len() * 3) as f64 - 2.2,
                        max * (0.955 - c as f64 * 0.06),
                    ),
                    ("sans-serif", 12),
                )])
                .unwrap();
        }
    }
    root.present().unwrap();
}

/// The kernel's per-CPU receive backlog (`net.core.netdev_max_backlog`,
/// 1,000 by default, global): veth delivery queues every frame there, and
/// at 1,000 connections the kernel-socket peers lose frames to it
/// (`/proc/net/softnet_stat`) and stall on retransmissions, a lab artefact
/// rather than a property of the proxies. Raised for the run, restored after.
struct BacklogGuard(String);

impl BacklogGuard {
    const KEY: &'static str = "/proc/sys/net/core/netdev_max_backlog";

    fn raise(to: u32) -> Self {
        let old = std::fs::read_to_string(Self::KEY)
            .unwrap()
            .trim()
            .to_owned();
        std::fs::write(Self::KEY, to.to_string()).unwrap();
        Self(old)
    }
}

impl Drop for BacklogGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KEY, &self.0);
    }
}

/// Frames the kernel dropped from full receive backlogs so far, all CPUs.
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    require_root("the HTTP gateway benchmark");
    let protocol = Protocol::from_env();
    for tool in ["wrk", "h2load", "nginx", "haproxy", "curl", "taskset"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is needed: run scripts/setup --bench"
        );
    }
    let rounds: usize = env_or("RAUTA_BENCH_ROUNDS", 3);
    let seconds: u64 = env_or("RAUTA_BENCH_SECONDS", 5);
    let dir: PathBuf = std::env::temp_dir().join(format!("rauta-hb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_configs(&dir, protocol);
    let _backlog = BacklogGuard::raise(env_or("RAUTA_BENCH_BACKLOG", 16_384));
    // Two veth queues: native XDP on veth feeds each queue through a fixed
    // 256-entry ring, and one ring overflows under a burst of 1,000
    // requests (see docs/performance.md). One worker serves both.
    let _lab = LabGuard::up(PREFIX, 2);
    let backend_conf = format!("{}/nginx-backend.conf", dir.display());
    let d = dir.to_string_lossy().into_owned();
    let _backend = peer::spawn(
        in_ns(
            "backend",
            &[
                "sh",
                "-c",
                "ulimit -n 20000 2>/dev/null; exec taskset -c 0 nginx -c \"$0\" -p \"$1\"",
                &backend_conf,
                &d,
            ],
        ),
        &dir.join("backend.log"),
    );
    std::thread::sleep(Duration::from_millis(500));
    run(&[
        "ip",
        "netns",
        "exec",
        &format!("{PREFIX}-client"),
        "curl",
        "-sf",
        "-m",
        "2",
        &format!("http://{BACKEND}/"),
    ]);

    let peers = Peer::selected();
    let mut samples: Vec<(Peer, usize, Sample)> = Vec::new();
    for round in 1..=rounds {
        for &peer in &peers {
            let guard = start(peer, &dir, protocol);
            // Warm up: pools filled, caches hot.
            let pid = guard.0.id();
            load(protocol, peer, pid, protocol.points()[0], 1);
            for connections in protocol.points() {
                let s = load(protocol, peer, pid, connections, seconds);
                eprintln!(
                    "round {round}/{rounds} {:<13} {:>24}: {:>9.0} req/s  p50 {:>8.0} us  p99 {:>8.0} us  mean {:>8.0} us  max {:>8.0} us  {:>6.1} CPU-us/req (gateway {:>5.1})  errors {}  backlog drops {}",
                    peer.name(),
                    protocol.point_label(connections),
                    s.rps,
                    s.p50_us,
                    s.p99_us,
                    s.mean_us,
                    s.max_us,
                    s.cpu_us_per_request,
                    s.gateway_cpu_us_per_request,
                    s.errors,
                    s.backlog_drops
                );
                samples.push((peer, connections, s));
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    let mut medians = Vec::new();
    for &peer in &peers {
        for connections in protocol.points() {
            let runs: Vec<Sample> = samples
                .iter()
                .filter(|(p, c, _)| *p == peer && *c == connections)
                .map(|(_, _, s)| *s)
                .collect();
            let m = |f: fn(&Sample) -> f64| median(runs.iter().map(f).collect());
            let s = Sample {
                rps: m(|s| s.rps),
                p50_us: m(|s| s.p50_us),
                p99_us: m(|s| s.p99_us),
                mean_us: m(|s| s.mean_us),
                max_us: m(|s| s.max_us),
                cpu_us_per_request: m(|s| s.cpu_us_per_request),
                gateway_cpu_us_per_request: m(|s| s.gateway_cpu_us_per_request),
                errors: runs.iter().map(|s| s.errors).sum(),
                backlog_drops: runs.iter().map(|s| s.backlog_drops).sum(),
            };
            medians.push((peer, connections, s));
        }
    }
    let get = |peer: Peer, c: usize| {
        medians
            .iter()
            .find(|(p, mc, _)| *p == peer && *mc == c)
            .map(|(_, _, s)| *s)
            .unwrap()
    };
    let mut ratios = Vec::new();
    for connections in protocol.points() {
        let xdp = get(Peer::RautaXdp, connections);
        for &peer in peers.iter().filter(|&&p| p != Peer::RautaXdp) {
            let other = get(peer, connections);
            let r = serde_json::json!({
                "load": protocol.point_label(connections),
                "connections": connections,
                "versus": peer.name(),
                "rps_ratio": xdp.rps / other.rps,
                "cpu_per_request_ratio": xdp.cpu_us_per_request / other.cpu_us_per_request,
                "gateway_cpu_per_request_ratio": xdp.gateway_cpu_us_per_request / other.gateway_cpu_us_per_request,
                "p99_ratio": xdp.p99_us / other.p99_us,
                "mean_latency_ratio": xdp.mean_us / other.mean_us,
            });
            eprintln!("{:>24}: rauta-xdp / {:<12} rps x{:.2}, CPU/request x{:.2} (gateway alone x{:.2}), p99 x{:.2}, mean latency x{:.2}", protocol.point_label(connections), peer.name(), xdp.rps / other.rps, xdp.cpu_us_per_request / other.cpu_us_per_request, xdp.gateway_cpu_us_per_request / other.gateway_cpu_us_per_request, xdp.p99_us / other.p99_us, xdp.mean_us / other.mean_us);
            ratios.push(r);
        }
    }
    let results: Vec<serde_json::Value> = medians
        .iter()
        .map(|(peer, connections, s)| {
            let runs: Vec<serde_json::Value> = samples
                .iter()
                .filter(|(p, c, _)| p == peer && c == connections)
                .map(|(_, _, s)| serde_json::json!({"rps": s.rps, "p50_us": s.p50_us, "p99_us": s.p99_us, "mean_us": s.mean_us, "max_us": s.max_us, "cpu_us_per_request": s.cpu_us_per_request, "gateway_cpu_us_per_request": s.gateway_cpu_us_per_request, "errors": s.errors, "backlog_drops": s.backlog_drops}))
                .collect();
            serde_json::json!({
                "peer": peer.name(),
                "load": protocol.point_label(*connections),
                "connections": connections,
                "median": {"rps": s.rps, "p50_us": s.p50_us, "p99_us": s.p99_us, "mean_us": s.mean_us, "max_us": s.max_us, "cpu_us_per_request": s.cpu_us_per_request, "gateway_cpu_us_per_request": s.gateway_cpu_us_per_request},
                "errors": s.errors,
                "runs": runs,
            })
        })
        .collect();
    let load_tool = match protocol {
        Protocol::Http1 => "wrk -t1 --latency".to_string(),
        Protocol::Http2 => format!("h2load -t1 -m{STREAMS} over h2c with prior knowledge (nginx `listen http2`, HAProxy `proto h2`)"),
    };
    let name = if peers == Peer::DEFAULT {
        protocol.results_name().to_owned()
    } else {
        let names: Vec<&str> = peers.iter().map(|p| p.name()).collect();
        format!("{}-{}", protocol.results_name(), names.join("+"))
    };
    let report = serde_json::json!({
        "benchmark": name,
        "method": format!("veth lab (2 queues; rauta-xdp: one worker on both); backend nginx (fixed 200, HTTP/1.1 keep-alive) in the backend namespace on CPU 0; {load_tool} in the client namespace on CPU 0; the peer pinned to CPU 1 with one worker; rounds alternate peers; CPU per request from /proc/stat (whole machine) and from the peer's own processes over each run; net.core.netdev_max_backlog raised to 16384 for the run"),
        "rounds": rounds,
        "seconds": seconds,
        "results": results,
        "ratios": ratios,
    });
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&report).unwrap() + "\n",
    )
    .unwrap();
    chart(
        &out_dir.join(format!("{name}.svg")),
        &peers,
        &medians,
        protocol,
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("results: benches/results/{name}.json, benches/results/{name}.svg");
}
