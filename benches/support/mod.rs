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
