//! What hostile connections cost the gateway in memory (lab benchmark,
//! root; run by hand: `sudo cargo bench --bench adversarial_memory`).
//!
//! For each transport, the gateway (`rauta run --config examples/gateway`)
//! is started fresh and its resident set (`VmRSS`) read; then a Python
//! client in the client namespace opens N connections of one kind and
//! holds them, the resident set is read again once it settles, and a
//! legitimate `curl` must still get 200. The kinds:
//!
//! - `slow-headers`: a request head that never ends (1 KiB of a field, then
//!   silence): held until the request-head deadline;
//! - `window0-streams`: HTTP/2 with SETTINGS_INITIAL_WINDOW_SIZE 0 and the
//!   most streams the gateway allows (256), each asking for a 64 KiB
//!   response it can never send: what the gateway buffers per stream;
//! - `oversized-upgrade`: an `Upgrade: h2c` request whose HTTP2-Settings
//!   fills the head to 15 KiB, and then no HTTP/2 preface;
//! - `pipelined-heads`: 64 pipelined requests for 16 KiB responses, none
//!   of them read.
//!
//! Reported per transport and kind: the bytes per connection (resident
//! growth / N), whether the legitimate client was served, and the stated
//! budget per connection (BUDGETS) with pass or fail. Medians of the
//! rounds; JSON to `benches/results/adversarial_memory.json`.
//!
//! Environment: RAUTA_BENCH_ROUNDS (3), RAUTA_BENCH_CONNECTIONS (200).

#[path = "support/peer.rs"]
mod peer;
mod support;

use std::path::Path;
use std::time::Duration;
use support::{env_or, invoked_as_bench, median, require_root, run, LabGuard, RAUTA};

const PREFIX: &str = "rauta-am";
const GATEWAY: &str = "198.18.0.1";
const NODE: &str = "198.18.0.2";
const BACKEND: &str = "198.18.0.20";

/// The budget per connection each kind is held to, bytes.
const BUDGETS: [(&str, u64); 4] = [
    ("slow-headers", 64 << 10),
    ("window0-streams", 20 << 20),
    ("oversized-upgrade", 128 << 10),
    ("pipelined-heads", 512 << 10),
];

/// Opens argv[3] connections of kind argv[2] to argv[1]:80 and holds
/// them; prints `ready` with how many stayed open, then waits for stdin to
/// close.
const ADVERSARY: &str = r#"
import base64, socket, struct, sys, time
host, kind, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def frame(t, flags, stream, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([t, flags]) + struct.pack('>I', stream) + payload
def literal(name, value):
    return b'\x00' + bytes([len(name)]) + name + bytes([len(value)]) + value
socks = []
for i in range(count):
    s = socket.create_connection((host, 80), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if kind == 'slow-headers':
        s.sendall(b'GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ' + b'x' * 1024)
    elif kind == 'window0-streams':
        out = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + frame(4, 0, 0, struct.pack('>HI', 4, 0))
        for n in range(256):
            block = literal(b':method', b'GET') + literal(b':scheme', b'http') + literal(b':path', b'/bytes?n=65536') + literal(b':authority', host.encode())
            out += frame(1, 0x5, 1 + 2 * n, block)
        s.sendall(out)
    elif kind == 'oversized-upgrade':
        settings = base64.urlsafe_b64encode(b'\0' * 11000).rstrip(b'=')
        s.sendall(b'GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: ' + settings + b'\r\n\r\n')
    elif kind == 'pipelined-heads':
        s.sendall(b'GET /bytes?n=16384 HTTP/1.1\r\nHost: a\r\n\r\n' * 64)
    socks.append(s)
time.sleep(2)
alive = 0
for s in socks:
    s.setblocking(False)
    try:
        alive += 1 if s.recv(1, socket.MSG_PEEK) != b'' else 0
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print('ready', alive, flush=True)
sys.stdin.read()
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Xdp,
    Kernel,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Xdp => "rauta-xdp",
            Transport::Kernel => "rauta-kernel",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Transport::Xdp => GATEWAY,
            Transport::Kernel => NODE,
        }
    }
}

/// One kind's figures in one round.
#[derive(Clone, Debug, Default)]
struct Outcome {
    per_connection: f64,
    held: f64,
    served: bool,
}

fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn attack(transport: Transport, kind: &str, connections: usize, logs: &Path) -> Outcome {
    let iface = format!("{PREFIX}-gw");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway");
    let config = config.to_string_lossy();
    let mut args = vec![
        RAUTA,
        "run",
        "--config",
        &config,
        "--admin",
        "127.0.0.1:9901",
    ];
    let address = format!("{GATEWAY}/24");
    match transport {
        Transport::Xdp => args.extend([
            "--io",
            "xdp",
            "--iface",
            &iface,
            "--address",
            &address,
            "--queues",
            "2",
        ]),
        Transport::Kernel => args.extend(["--io", "kernel", "--address", NODE, "--workers", "2"]),
    }
    let target = transport.target();
    let url = format!("http://{target}/");
    let log = logs.join(format!("{}-{kind}.log", transport.name()));
    let gateway = peer::start_answering(PREFIX, &args, &log, &url, &[]);
    let pid = gateway.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let before = resident(pid);
    let count = connections.to_string();
    let mut adversary = peer::in_ns(
        PREFIX,
        "client",
        &["python3", "-c", ADVERSARY, target, kind, &count],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("starting the adversary");
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = adversary.stdout.as_mut().expect("piped");
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    }
    let held: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    std::thread::sleep(Duration::from_millis(500));
    let after = resident(pid);
    let status = run(&[
        "ip",
        "netns",
        "exec",
        &format!("{PREFIX}-client"),
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-m",
        "5",
        &url,
    ]);
    drop(adversary.stdin.take());
    let _ = adversary.wait();
    Outcome {
        per_connection: after.saturating_sub(before) as f64 / connections as f64,
        held,
        served: status.trim() == "200",
    }
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    require_root("the adversarial memory benchmark");
    let rounds: usize = env_or("RAUTA_BENCH_ROUNDS", 3);
    let connections: usize = env_or("RAUTA_BENCH_CONNECTIONS", 200);
    let logs = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let _lab = LabGuard::up(PREFIX, 2);
    let _backend = peer::spawn(
        peer::in_ns(
            PREFIX,
            "backend",
            &[
                RAUTA,
                "echo",
                "--listen",
                &format!("{BACKEND}:3000"),
                "--listen",
                &format!("{BACKEND}:3001"),
            ],
        ),
        &logs.join("backend.log"),
    );
    let mut json = Vec::new();
    println!(
        "\nadversarial connections, {connections} of each kind, medians of {rounds}:\n{:<14} {:<18} {:>14} {:>8} {:>7} {:>12} {:>6}",
        "transport", "kind", "bytes/conn", "held", "served", "budget", "ok"
    );
    for transport in [Transport::Xdp, Transport::Kernel] {
        for (kind, budget) in BUDGETS {
            let outcomes: Vec<Outcome> = (0..rounds)
                .map(|_| attack(transport, kind, connections, &logs))
                .collect();
            let per_connection = median(outcomes.iter().map(|o| o.per_connection).collect());
            let held = median(outcomes.iter().map(|o| o.held).collect());
            let served = outcomes.iter().all(|o| o.served);
            let ok = served && per_connection <= budget as f64;
            println!(
                "{:<14} {:<18} {:>14.0} {:>8.0} {:>7} {:>12} {:>6}",
                transport.name(),
                kind,
                per_connection,
                held,
                served,
                budget,
                if ok { "pass" } else { "FAIL" }
            );
            json.push(serde_json::json!({
                "transport": transport.name(),
                "kind": kind,
                "connections": connections,
                "bytes_per_connection": per_connection,
                "held": held,
                "legitimate_client_served": served,
                "budget_per_connection": budget,
                "within_budget": ok,
            }));
        }
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/adversarial_memory.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
    println!("\nwritten: {}", out.display());
}
