//! Instructions the gateway executes per request, counted by callgrind over
//! the in-memory harness (`benches/support/inmemory.rs`): a client, the
//! gateway (`HttpService`) and a backend in one process, no sockets, no
//! kernel, virtual time. A count of instructions does not move with the
//! machine's load or frequency, so it shows what a change to the core costs
//! or saves where a requests/s figure would drown it in noise.
//!
//!     cargo bench --profile ci --bench core_instructions [-- PAIRING...]
//!
//! The counts depend on the build profile (inlining, LTO): compare figures
//! of one profile only; the results file names it.
//!
//! PAIRING is `h1-h1`, `h1-h2c`, `h2-h1` or `h2-h2c` (client protocol →
//! backend protocol); all four by default. Each pairing runs twice as a
//! child of this binary under `valgrind --tool=callgrind
//! --collect-atstart=no --toggle-collect=*gateway_turn*`, which counts only
//! the one function every call into the gateway goes through: once for
//! [`WARMUP`] requests, once for [`WARMUP`] + [`MEASURED`]. The difference
//! divided by [`MEASURED`] is the figure: start-up, the first connections
//! and the h2c pool's handshakes are in both runs and cancel out, leaving
//! the steady state of keep-alive requests. With all four pairings, the
//! results go to `benches/results/core_instructions.json`.
//!
//! `core_instructions --run PAIRING REQUESTS` is the child: one run of the
//! harness, without valgrind unless run under it. It runs the gateway as
//! `rauta` does: jemalloc as the allocator, and a tracing subscriber at
//! `rauta`'s default level (`warn`). Without a subscriber, tracing's `log`
//! feature (which kube-client turns on) sends every span of the `h2` crate
//! through `log`, a cost `rauta` never pays (about a tenth of the count).

#[path = "support/inmemory.rs"]
mod inmemory;

use inmemory::{Pairing, H2_STREAMS_IN_FLIGHT};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The allocator `rauta` runs with: allocation is part of the gateway's
/// cost.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Requests before the measured ones, in both runs.
const WARMUP: usize = 1_000;
/// Requests the figure is taken over.
const MEASURED: usize = 10_000;
/// Which function callgrind counts: `gateway_turn` and all it calls.
const TOGGLE: &str = "*gateway_turn*";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--run") {
        run_child(&args[1..]);
        return;
    }
    // cargo bench passes `--bench`; anything else must name a pairing.
    let mut pairings = Vec::new();
    for arg in args.iter().filter(|a| *a != "--bench") {
        let pairing = Pairing::from_name(arg).unwrap_or_else(|| {
            panic!(
                "unknown argument {arg:?}; usage: core_instructions [--bench] [PAIRING...] \
                 (PAIRING: h1-h1, h1-h2c, h2-h1, h2-h2c)"
            )
        });
        pairings.push(pairing);
    }
    if pairings.is_empty() {
        pairings = Pairing::ALL.to_vec();
    }
    let valgrind = valgrind_version();
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let mut figures = serde_json::Map::new();
    let mut totals = serde_json::Map::new();
    for pairing in &pairings {
        let warmup = count_instructions(&exe, *pairing, WARMUP);
        let both = count_instructions(&exe, *pairing, WARMUP + MEASURED);
        assert!(
            both > warmup,
            "{}: {both} instructions for {} requests, not more than {warmup} for {WARMUP}",
            pairing.name(),
            WARMUP + MEASURED
        );
        let per_request = (both - warmup) as f64 / MEASURED as f64;
        println!(
            "core_instructions: {} instructions_per_request={per_request:.0}",
            pairing.name()
        );
        figures.insert(
            pairing.name().into(),
            serde_json::json!(per_request.round() as u64),
        );
        totals.insert(
            pairing.name().into(),
            serde_json::json!({
                "warmup_run": warmup,
                "warmup_and_measured_run": both,
            }),
        );
    }
    if pairings.len() < Pairing::ALL.len() {
        println!("core_instructions: a subset of pairings; results file left as it was");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let report = serde_json::json!({
        "benchmark": "core_instructions",
        "date": command_output(root, &["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "method": format!(
            "callgrind Ir inside gateway_turn (every HttpService accept/on_io/tick call and \
             the in-memory transport reads and writes they make); (Ir for {} requests - Ir for \
             {WARMUP}) / {MEASURED}, each run a separate process on one keep-alive client \
             connection; HTTP/1.1 client one request at a time, HTTP/2 client \
             {H2_STREAMS_IN_FLIGHT} streams in flight",
            WARMUP + MEASURED
        ),
        "toggle_collect": TOGGLE,
        "profile": build_profile(&exe),
        "valgrind": valgrind,
        "requests": MEASURED,
        "warmup_requests": WARMUP,
        "git_commit": command_output(root, &["git", "rev-parse", "HEAD"]),
        // The figures describe the commit's gateway only if its sources
        // were as committed.
        "gateway_sources_modified": command_output(
            root,
            &["git", "status", "--porcelain", "--", "dataplane", "netstack", "Cargo.lock"],
        )
        .map(|changes| !changes.is_empty()),
        "instructions_per_request": figures,
        "instructions_total": totals,
    });
    let text = serde_json::to_string_pretty(&report).expect("JSON") + "\n";
    let out_dir = root.join("benches/results");
    std::fs::create_dir_all(&out_dir).expect("benches/results");
    std::fs::write(out_dir.join("core_instructions.json"), &text)
        .expect("writing core_instructions.json");
    print!("{text}");
}

/// `--run PAIRING REQUESTS`: one run of the harness.
fn run_child(args: &[String]) {
    let [name, requests] = args else {
        panic!("usage: core_instructions --run PAIRING REQUESTS");
    };
    let pairing = Pairing::from_name(name).unwrap_or_else(|| panic!("unknown pairing {name:?}"));
    let requests: usize = requests
        .parse()
        .unwrap_or_else(|_| panic!("REQUESTS must be a count, not {requests:?}"));
    // As `rauta` sets it up (src/main.rs), at its default level.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let summary = inmemory::run(pairing, requests);
    eprintln!(
        "{}: {} responses, {} rounds, {} backend connections",
        pairing.name(),
        summary.responses,
        summary.rounds,
        summary.backend_connections
    );
}

/// `valgrind --version`, or a panic that says what is missing.
fn valgrind_version() -> String {
    let out = Command::new("valgrind")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "core_instructions counts instructions with valgrind's callgrind, and running \
                 `valgrind` failed ({e}); install it (apt-get install valgrind, or \
                 scripts/setup --bench)"
            )
        });
    assert!(out.status.success(), "valgrind --version failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Run `pairing` for `requests` under callgrind; the instructions counted
/// inside `gateway_turn`.
fn count_instructions(exe: &Path, pairing: Pairing, requests: usize) -> u64 {
    let out_file: PathBuf = std::env::temp_dir().join(format!(
        "core_instructions.{}.{}.{requests}.callgrind",
        std::process::id(),
        pairing.name()
    ));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect={TOGGLE}"))
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(exe)
        .args(["--run", pairing.name(), &requests.to_string()])
        .output()
        .expect("starting valgrind");
    assert!(
        out.status.success(),
        "{} for {requests} requests failed under callgrind:\n{}",
        pairing.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let profile = std::fs::read_to_string(&out_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", out_file.display()));
    let total = callgrind_total(&profile)
        .unwrap_or_else(|| panic!("no summary or totals line in {}", out_file.display()));
    assert!(
        total > 0,
        "callgrind counted nothing in {TOGGLE} ({}): was gateway_turn inlined or renamed?",
        out_file.display()
    );
    std::fs::remove_file(&out_file).ok();
    total
}

/// The `Ir` total of a callgrind profile: the first count of its
/// `summary:` (or `totals:`) line, `Ir` being the first event (the only one
/// by default).
fn callgrind_total(profile: &str) -> Option<u64> {
    let events = profile.lines().find_map(|l| l.strip_prefix("events:"))?;
    assert_eq!(
        events.split_whitespace().next(),
        Some("Ir"),
        "callgrind's first event is not Ir: {events}"
    );
    profile
        .lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|counts| counts.split_whitespace().next()?.parse().ok())
}

/// The cargo profile this binary was built with: the name of the folder
/// above `deps/` (`target/ci/deps/core_instructions-…`).
fn build_profile(exe: &Path) -> Option<String> {
    let profile_dir = exe.parent()?.parent()?;
    Some(profile_dir.file_name()?.to_string_lossy().into_owned())
}

/// A command's trimmed stdout, or `None` if it cannot run or fails.
fn command_output(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
