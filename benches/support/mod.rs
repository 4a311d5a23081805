//! What the lab benchmarks share: running commands, root, medians.

use std::process::Command;

/// Run a command to completion; its stdout. Panics with its output if it
/// fails: a benchmark has no partial result worth keeping.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fail at once without root: the lab needs namespaces, XDP and AF_XDP.
pub fn require_root(what: &str) {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    assert!(root, "{what} needs root (veth lab, XDP, AF_XDP)");
}

/// Whether cargo runs this as a benchmark (a plain `cargo test` build of
/// the target must not start the lab).
pub fn invoked_as_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `rauta` binary cargo built for this benchmark.
pub const RAUTA: &str = env!("CARGO_BIN_EXE_rauta");

/// `key` from the environment, parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A lab built with `rauta lab up`, removed on drop (also after a panic).
pub struct LabGuard {
    prefix: &'static str,
}

impl LabGuard {
    pub fn up(prefix: &'static str, queues: u32) -> Self {
        run(&[
            RAUTA,
            "lab",
            "up",
            "--prefix",
            prefix,
            "--queues",
            &queues.to_string(),
        ]);
        Self { prefix }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(RAUTA)
            .args(["lab", "down", "--prefix", self.prefix])
            .output();
    }
}

/// A process we started, stopped by PID on drop: SIGTERM, then SIGKILL if
/// it has not exited within 10 s.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        let _ = self.0.wait();
    }
}
