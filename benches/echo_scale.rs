//! Echo at scale, lab benchmark (root; run by hand, not by CI):
//! round trips per second and latency through `rauta probe --queues 2
//! --workers 2` at 100 and at 10,000 concurrent connections, alternating,
//! and the probe's memory with 10,000 idle connections.
//!
//! Load: `rauta echo-load` (64-byte messages, one outstanding per
//! connection) in the client namespace on CPU 0; the probe's workers float.
//! Rounds alternate 100 / 10,000; medians and the ratio go to
//! `benches/results/echo_scale.json`.
//!
//! Environment: RAUTA_BENCH_ROUNDS (3), RAUTA_BENCH_SECONDS (5).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{env_or, invoked_as_bench, median, require_root, run, ChildGuard, LabGuard, RAUTA};

const PREFIX: &str = "rauta-es";

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn load_command(connections: usize, seconds: f64, hold: f64) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &format!("{PREFIX}-client"), "sh", "-c"]);
    command.arg(format!(
        "ulimit -n 20000 2>/dev/null || ulimit -n $(ulimit -Hn); exec timeout 180 taskset -c 0 \
         {RAUTA} echo-load --target 198.18.0.1:7 --connections {connections} \
         --duration {seconds} --hold {hold} --connect-burst 1000"
    ));
    command
}

fn echo_load(connections: usize, seconds: f64) -> String {
    let out = load_command(connections, seconds, 0.0).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "echo-load failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_owned()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    require_root("the echo-scale benchmark");
    let rounds: usize = env_or("RAUTA_BENCH_ROUNDS", 3);
    let seconds: f64 = env_or("RAUTA_BENCH_SECONDS", 5.0);

    let _lab = LabGuard::up(PREFIX, 2);
    let probe = Command::new("ip")
        .args(["netns", "exec", &format!("{PREFIX}-gw"), RAUTA, "probe"])
        .args([
            "--iface",
            &format!("{PREFIX}-gw"),
            "--address",
            "198.18.0.1/24",
        ])
        .args(["--queues", "2", "--workers", "2", "--report-every", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = probe.id();
    let _probe = ChildGuard(probe);
    std::thread::sleep(Duration::from_secs(1));

    // Memory: the probe idle, then holding 10,000 idle connections.
    let idle_kib = rss_kib(pid);
    let mut holder = load_command(10_000, 0.0, 8.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut held_kib = 0;
    while started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        held_kib = held_kib.max(rss_kib(pid));
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    assert!(
        holder.wait().unwrap().success(),
        "holding 10,000 connections failed"
    );
    eprintln!("RSS: idle {idle_kib} KiB, with 10,000 idle connections {held_kib} KiB");

    let sizes = [100usize, 10_000];
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); sizes.len()];
    for round in 1..=rounds {
        for (i, &n) in sizes.iter().enumerate() {
            let line = echo_load(n, seconds);
            let r = (
                field(&line, "rps"),
                field(&line, "p50_us"),
                field(&line, "p99_us"),
            );
            eprintln!("round {round}/{rounds} {n:>6} connections: {line}");
            results[i].push(r);
        }
    }
    let summary: Vec<serde_json::Value> = sizes
        .iter()
        .zip(&results)
        .map(|(n, runs)| {
            serde_json::json!({
                "connections": n,
                "runs": runs.iter().map(|(rps, p50, p99)| serde_json::json!({"rps": rps, "p50_us": p50, "p99_us": p99})).collect::<Vec<_>>(),
                "median_rps": median(runs.iter().map(|r| r.0).collect()),
                "median_p50_us": median(runs.iter().map(|r| r.1).collect()),
                "median_p99_us": median(runs.iter().map(|r| r.2).collect()),
            })
        })
        .collect();
    let ratio =
        summary[1]["median_rps"].as_f64().unwrap() / summary[0]["median_rps"].as_f64().unwrap();
    let report = serde_json::json!({
        "benchmark": "echo_scale",
        "date": run(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]).trim(),
        "setup": "rauta probe --queues 2 --workers 2 on the lab veth; rauta echo-load on CPU 0, 64-byte messages, one outstanding per connection",
        "seconds_per_run": seconds,
        "rounds": rounds,
        "results": summary,
        "ratio_rps_10000_to_100": (ratio * 1000.0).round() / 1000.0,
        "rss_kib": { "idle": idle_kib, "with_10000_idle_connections": held_kib,
                     "per_connection_bytes": ((held_kib.saturating_sub(idle_kib)) * 1024) / 10_000 },
    });
    let text = serde_json::to_string_pretty(&report).unwrap() + "\n";
    let out_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results");
    std::fs::create_dir_all(out_dir).unwrap();
    std::fs::write(format!("{out_dir}/echo_scale.json"), &text).unwrap();
    print!("{text}");
}
