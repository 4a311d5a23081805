//! Lab tests of `rauta probe` (root): real veths, a real XDP program, real
//! AF_XDP sockets, the kernel's own ping and TCP stack as the peer.

use crate::common::{field, serial, Lab, GATEWAY, GATEWAY_NODE, RAUTA};
use std::time::Duration;

/// What `rauta echo-client` sends, from the client namespace.
struct EchoRun<'a> {
    target: String,
    /// Before the command, e.g. `taskset -c 1`.
    prefix: &'a [&'a str],
    bytes: usize,
    count: usize,
    timeout_s: u32,
    /// After the command, e.g. `--udp`.
    extra: &'a [&'a str],
}

impl Default for EchoRun<'_> {
    fn default() -> Self {
        Self {
            target: format!("{GATEWAY}:7"),
            prefix: &[],
            bytes: 1,
            count: 1,
            timeout_s: 60,
            extra: &[],
        }
    }
}

/// Run `rauta echo-client` as `run` says; its output.
fn echo_client(lab: &Lab, run: EchoRun<'_>) -> String {
    let (bytes, count) = (run.bytes.to_string(), run.count.to_string());
    let timeout = run.timeout_s.to_string();
    let mut args = run.prefix.to_vec();
    args.extend_from_slice(&[RAUTA, "echo-client", "--target", &run.target]);
    args.extend_from_slice(&["--bytes", &bytes, "--count", &count, "--timeout", &timeout]);
    args.extend_from_slice(run.extra);
    lab.exec_ok("client", &args)
}

fn echo(lab: &Lab, bytes: usize, count: usize, extra: &[&str]) -> String {
    echo_client(
        lab,
        EchoRun {
            bytes,
            count,
            extra,
            ..Default::default()
        },
    )
}

/// Pinned to `cpu`, so XPS puts the flows on that CPU's queue.
fn echo_from_cpu(lab: &Lab, cpu: &str, bytes: usize, count: usize) -> String {
    let prefix = ["taskset", "-c", cpu];
    echo_client(
        lab,
        EchoRun {
            prefix: &prefix,
            bytes,
            count,
            ..Default::default()
        },
    )
}

#[test]
fn probe_answers_arp_ping_udp_and_tcp_echo_on_two_queues() {
    let _serial = serial();
    let lab = Lab::up("rtp-a", 2);
    let mut probe = lab.start_probe(2, &[]);

    // The gateway's kernel does not hold the address: the userspace stack
    // answers ARP and ping alone.
    let addrs = lab.exec_ok("gw", &["ip", "-4", "addr", "show"]);
    assert!(!addrs.contains(GATEWAY), "kernel holds {GATEWAY}: {addrs}");
    let ping = lab.exec_ok(
        "client",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", GATEWAY],
    );
    assert!(ping.contains("3 received"), "{ping}");
    let neigh = lab.exec_ok("client", &["ip", "neigh", "show", GATEWAY]);
    let mac = lab.exec_ok(
        "gw",
        &["cat", &format!("/sys/class/net/{}/address", lab.gw_iface())],
    );
    assert!(
        neigh.contains(mac.trim()),
        "ARP did not resolve {GATEWAY} to the gateway's MAC {}: {neigh}",
        mac.trim()
    );

    // TCP echo, byte-exact, for 1 B, 64 KiB and 1 MiB.
    for bytes in [1, 64 * 1024, 1024 * 1024] {
        let out = echo(&lab, bytes, 1, &[]);
        assert!(out.contains("all byte-exact"), "{out}");
    }
    let out = echo(&lab, 1400, 20, &["--udp"]);
    assert!(out.contains("all byte-exact"), "{out}");

    // Flows from senders on each CPU land on both queues; all are served.
    for cpu in ["0", "1"] {
        let out = echo_from_cpu(&lab, cpu, 65536, 16);
        assert!(out.contains("all byte-exact"), "{out}");
    }

    assert!(probe.terminate().success(), "{:?}", probe.output());
    for q in [0, 1] {
        let line = probe.line_starting(&format!("exit queue={q} "));
        assert!(
            field(&line, "frames_in") > 0,
            "queue {q} saw no flows: {line}"
        );
        assert!(
            field(&line, "frames_out") > 0,
            "queue {q} sent nothing: {line}"
        );
        assert_eq!(
            field(&line, "xdp_redirected"),
            field(&line, "frames_in"),
            "{line}"
        );
    }
    let total = probe.line_starting("exit total");
    assert_eq!(field(&total, "tcp_accepted"), 3 + 32, "{total}");
    assert_eq!(field(&total, "connections"), 0, "{total}");
    assert_eq!(lab.xdp_program(), None, "XDP program left after SIGTERM");
}

#[test]
fn host_traffic_passes_while_the_probe_runs() {
    let _serial = serial();
    let lab = Lab::up("rtp-b", 2);
    // A kernel TCP echo server on the gateway node's own address.
    let server = format!(
        "import socket,threading\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{GATEWAY_NODE}', 8080)); s.listen(16); print('listening', flush=True)\n\
         def serve(c):\n  while True:\n    d=c.recv(65536)\n    if not d: break\n    c.sendall(d)\n  c.close()\n\
         while True:\n  c,_=s.accept(); threading.Thread(target=serve,args=(c,),daemon=True).start()\n"
    );
    let _kernel_server = {
        let p = lab.spawn("gw", &["python3", "-c", &server]);
        p.wait_for_line(|l| l == "listening", Duration::from_secs(10));
        p
    };
    let mut probe = lab.start_probe(2, &[]);
    let out = echo_client(
        &lab,
        EchoRun {
            target: format!("{GATEWAY_NODE}:8080"),
            bytes: 65536,
            count: 4,
            ..Default::default()
        },
    );
    assert!(out.contains("all byte-exact"), "host traffic broken: {out}");
    let ping = lab.exec_ok(
        "client",
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", GATEWAY_NODE],
    );
    assert!(ping.contains("2 received"), "{ping}");
    // And the gateway's own address is still served meanwhile.
    let out = echo(&lab, 4096, 2, &[]);
    assert!(out.contains("all byte-exact"), "{out}");
    assert!(probe.terminate().success());
    let passed: u64 = probe
        .output()
        .iter()
        .filter(|l| l.starts_with("exit queue="))
        .map(|l| field(l, "xdp_passed"))
        .sum();
    assert!(passed > 0, "the XDP program passed no host traffic");
}

#[test]
fn sigkill_leaves_nothing_stale_that_the_next_start_or_detach_cannot_remove() {
    let _serial = serial();
    let lab = Lab::up("rtp-c", 1);

    // Default BPF link: the kernel detaches when the process dies, however.
    let mut probe = lab.start_probe(1, &[]);
    assert!(lab.xdp_program().is_some());
    probe.kill();
    assert_eq!(
        lab.xdp_program(),
        None,
        "link-attached program survived SIGKILL"
    );

    // Legacy netlink attach survives SIGKILL: a stale program.
    let mut probe = lab.start_probe(1, &["--xdp-attach", "netlink"]);
    probe.kill();
    let (stale_id, name) = lab
        .xdp_program()
        .expect("netlink program should stay after SIGKILL");
    assert_eq!(name, "rauta_xdp");
    // The stale program passes traffic to the kernel: host network intact.
    let ping = lab.exec_ok("client", &["ping", "-c", "1", "-W", "2", GATEWAY_NODE]);
    assert!(ping.contains("1 received"), "{ping}");

    // The next start replaces it and serves.
    let mut probe = lab.start_probe(1, &[]);
    let (id, _) = lab.xdp_program().expect("probe attached");
    assert_ne!(id, stale_id, "stale program not replaced");
    let out = echo(&lab, 1000, 1, &[]);
    assert!(out.contains("all byte-exact"), "{out}");
    assert!(probe.terminate().success());
    assert_eq!(lab.xdp_program(), None);

    // `rauta xdp detach` removes a stale one.
    let mut probe = lab.start_probe(1, &["--xdp-attach", "netlink"]);
    probe.kill();
    assert!(lab.xdp_program().is_some());
    let out = lab.exec_ok("gw", &[RAUTA, "xdp", "detach", &lab.gw_iface()]);
    assert!(out.contains("detached"), "{out}");
    assert_eq!(lab.xdp_program(), None);
    let out = lab.exec_ok("gw", &[RAUTA, "xdp", "detach", &lab.gw_iface()]);
    assert!(out.contains("no XDP program"), "{out}");
}

#[test]
fn without_root_or_interface_it_fails_with_one_line_and_leaves_nothing() {
    let _serial = serial();
    let lab = Lab::up("rtp-d", 1);
    let iface = lab.gw_iface();
    let address = format!("{GATEWAY}/24");
    let probe_args = [RAUTA, "probe", "--iface", &iface, "--address", &address];

    let mut unprivileged = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    unprivileged.extend_from_slice(&probe_args);
    let out = lab.exec("gw", &unprivileged);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains("root"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(lab.xdp_program(), None);

    let out = lab.exec(
        "gw",
        &[
            RAUTA,
            "probe",
            "--iface",
            "rauta-nope0",
            "--address",
            &address,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.contains("rauta-nope0") && stderr.contains("does not exist"),
        "{stderr}"
    );

    let out = lab.exec(
        "gw",
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            RAUTA,
            "lab",
            "up",
            "--prefix",
            "rtp-x",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains("root"), "{stderr}");
}

#[test]
fn an_idle_probe_uses_under_five_percent_of_a_core() {
    let _serial = serial();
    let lab = Lab::up("rtp-e", 2);
    let mut probe = lab.start_probe(2, &[]);
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", probe.pid())).unwrap();
        // Fields after the command name (which is in parentheses).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let hz: f64 = String::from_utf8(
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before = ticks();
    let start = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let used = (ticks() - before) as f64 / hz;
    let share = used / start.elapsed().as_secs_f64();
    assert!(
        share < 0.05,
        "idle probe used {:.1}% of a core",
        share * 100.0
    );
    assert!(probe.terminate().success());
}

/// Reserves 2 MiB hugepages for the test and gives them back on drop.
struct HugePages {
    before: String,
}

impl HugePages {
    const PATH: &'static str = "/proc/sys/vm/nr_hugepages";

    fn reserve_extra(pages: u64) -> Self {
        let before = std::fs::read_to_string(Self::PATH)
            .unwrap()
            .trim()
            .to_owned();
        let want = before.parse::<u64>().unwrap() + pages;
        std::fs::write(Self::PATH, want.to_string()).unwrap();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let free: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        let guard = Self { before };
        assert!(free >= pages, "could reserve only {free} hugepages");
        guard
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.before);
    }
}

#[test]
fn umem_sits_on_hugepages_when_the_host_has_them_and_plain_pages_otherwise() {
    let _serial = serial();
    let lab = Lab::up("rtp-f", 2);
    {
        // 2 queues x 8192 frames x 4 KiB = 64 MiB = 32 hugepages.
        let _pages = HugePages::reserve_extra(32);
        let mut probe = lab.start_probe(2, &[]);
        let banner = probe.line_starting("rauta probe:");
        assert!(banner.contains("UMEM on HugePages"), "{banner}");
        let out = echo(&lab, 256 * 1024, 4, &[]);
        assert!(out.contains("all byte-exact"), "{out}");
        assert!(probe.terminate().success());
    }
    let mut probe = lab.start_probe(2, &["--no-hugepages"]);
    let banner = probe.line_starting("rauta probe:");
    assert!(banner.contains("UMEM on Pages"), "{banner}");
    let out = echo(&lab, 256 * 1024, 4, &[]);
    assert!(out.contains("all byte-exact"), "{out}");
    assert!(probe.terminate().success());
}

#[test]
fn generic_xdp_mode_serves_too() {
    let _serial = serial();
    let lab = Lab::up("rtp-g", 1);
    let mut probe = lab.start_probe(1, &["--xdp-mode", "generic"]);
    let banner = probe.line_starting("rauta probe:");
    assert!(banner.contains("(generic XDP"), "{banner}");
    let ping = lab.exec_ok(
        "client",
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", GATEWAY],
    );
    assert!(ping.contains("2 received"), "{ping}");
    let out = echo(&lab, 64 * 1024, 2, &[]);
    assert!(out.contains("all byte-exact"), "{out}");
    assert!(probe.terminate().success());
    assert_eq!(lab.xdp_program(), None);
}

/// `rauta echo-load` in the client namespace, with the fd limit raised for
/// many connections; its report line.
fn echo_load(lab: &Lab, connections: usize, extra: &str) -> String {
    let script = format!(
        "ulimit -n 20000 2>/dev/null || ulimit -n $(ulimit -Hn); \
         [ $(ulimit -n) -gt {connections} ] || {{ echo 'fd limit too low for {connections} connections' >&2; exit 1; }}; \
         exec timeout 120 {RAUTA} echo-load --target {GATEWAY}:7 --connections {connections} {extra}"
    );
    lab.exec_ok("client", &["sh", "-c", &script])
}

fn report_field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn ten_thousand_concurrent_connections_all_echo_and_then_close() {
    let _serial = serial();
    let lab = Lab::up("rtp-h", 2);
    let mut probe = lab.start_probe(2, &["--workers", "2"]);
    let small = echo_load(&lab, 100, "--duration 2");
    let large = echo_load(&lab, 10_000, "--duration 3 --connect-burst 1000");
    for line in [&small, &large] {
        assert!(line.contains("errors=0"), "{line}");
        assert!(report_field(line, "round_trips") > 0.0, "{line}");
    }
    // Every connection closed with FIN: the count returns to zero.
    let mark = probe.mark();
    probe.wait_for_line_after(
        mark,
        |l| l.starts_with("tick total connections=0 "),
        Duration::from_secs(30),
    );
    // Reset by the client (SO_LINGER 0): freed as well.
    let rst = echo_load(&lab, 2_000, "--duration 1 --close rst");
    assert!(rst.contains("errors=0"), "{rst}");
    let mark = probe.mark();
    probe.wait_for_line_after(
        mark,
        |l| l.starts_with("tick total connections=0 "),
        Duration::from_secs(30),
    );
    assert!(probe.terminate().success());
    let total = probe.line_starting("exit total");
    assert_eq!(
        field(&total, "tcp_accepted"),
        100 + 10_000 + 2_000,
        "{total}"
    );
    eprintln!("100 connections: {small}\n10,000 connections: {large}");
}

#[test]
fn a_burst_of_a_thousand_connects_gets_no_reset() {
    let _serial = serial();
    let lab = Lab::up("rtp-i", 2);
    let mut probe = lab.start_probe(2, &[]);
    // All 1,000 connects in flight at once; a reset would fail the connect.
    let line = echo_load(&lab, 1_000, "--duration 1 --connect-burst 1000");
    assert!(line.contains("errors=0"), "{line}");
    assert!(probe.terminate().success());
}

#[test]
fn a_gibibyte_echoes_byte_exact() {
    let _serial = serial();
    let lab = Lab::up("rtp-j", 2);
    let mut probe = lab.start_probe(2, &[]);
    let out = echo_client(
        &lab,
        EchoRun {
            bytes: 1 << 30,
            timeout_s: 300,
            ..Default::default()
        },
    );
    eprintln!("{out}");
    assert!(out.contains("all byte-exact"), "{out}");
    assert!(out.contains("checksum"), "{out}");
    assert!(probe.terminate().success());
}

#[test]
fn flows_on_the_wrong_queue_are_handed_to_their_owner_both_ways() {
    let _serial = serial();
    let lab = Lab::up("rtp-k", 2);
    let mut probe = lab.start_probe(2, &["--workers", "2"]);
    // XPS picks the gateway's queue by the sending CPU: pinning the client
    // to each CPU in turn sends every flow to one queue, then the other.
    // Flow ownership is by hash, so about half of each run lands on the
    // wrong worker.
    for cpu in ["0", "1"] {
        let out = echo_from_cpu(&lab, cpu, 20000, 64);
        assert!(out.contains("all byte-exact"), "{out}");
    }
    assert!(probe.terminate().success());
    for worker in 0..2 {
        let line = &probe.line_starting(&format!("exit worker={worker} "));
        assert!(
            field(line, "handed_off") > 0,
            "worker {worker} handed nothing off: {line}"
        );
        assert!(
            field(line, "handed_in") > 0,
            "worker {worker} got nothing handed in: {line}"
        );
        assert!(field(line, "tcp_accepted") > 0, "{line}");
    }
    for q in 0..2 {
        let line = &probe.line_starting(&format!("exit queue={q} "));
        assert!(
            field(line, "frames_in") > 0,
            "queue {q} got no frames: {line}"
        );
    }
}
