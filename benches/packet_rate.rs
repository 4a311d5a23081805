//! Packet-rate lab benchmark (root; run by hand, not by CI):
//!
//! frames per second that `rauta probe` answers on one core, beside the
//! kernel answering the same traffic on the same veth, beside the veth's
//! XDP_DROP rate (the lab's physical limit).
//!
//! Traffic: 60-byte ICMP echo requests from trafgen (netsniff-ng; this
//! kernel has no pktgen, see benches/pktgen.sh for kernels that do) in the
//! client namespace, through the lab's bridge, to the gateway's veth.
//! Answered frames are counted on the client's veth (echo replies); dropped
//! frames on the gateway's veth (`ethtool -S` xdp drops). Rounds alternate
//! probe / kernel / xdp-drop; medians of the rounds and ratios go to
//! `benches/results/packet_rate.json`.
//!
//! Pinning: trafgen on CPU 0, the probe on CPU 1. The kernel's answers run
//! in softirq on whichever CPU the veth delivers on (CPU 0 here, beside
//! trafgen): that is the kernel path's real cost, and the report says so.
//!
//! Environment: RAUTA_BENCH_ROUNDS (3), RAUTA_BENCH_PACKETS (2,000,000 per
//! run), RAUTA_BENCH_RATE (trafgen -b, e.g. 400000pps; unset = flat out).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{env_or, invoked_as_bench, median, require_root, run, ChildGuard, LabGuard, RAUTA};

const PREFIX: &str = "rauta-pr";
const GATEWAY: &str = "198.18.0.1";

fn ns(role: &str) -> String {
    format!("{PREFIX}-{role}")
}

fn in_ns(role: &str, args: &[&str]) -> String {
    let ns = ns(role);
    let mut full = vec!["ip", "netns", "exec", ns.as_str()];
    full.extend_from_slice(args);
    run(&full)
}

fn read_counter(role: &str, iface: &str, counter: &str) -> u64 {
    in_ns(
        role,
        &[
            "cat",
            &format!("/sys/class/net/{iface}/statistics/{counter}"),
        ],
    )
    .trim()
    .parse()
    .unwrap()
}

fn xdp_drops(iface: &str) -> u64 {
    in_ns("gw", &["ethtool", "-S", iface])
        .lines()
        .filter(|l| l.contains("xdp_drops"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

fn mac(role: &str, iface: &str) -> [u8; 6] {
    let text = in_ns(role, &["cat", &format!("/sys/class/net/{iface}/address")]);
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 60-byte Ethernet frame carrying an ICMP echo request, as a trafgen
/// configuration.
fn trafgen_config(dst: [u8; 6], src: [u8; 6]) -> String {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(&[0x5a; 18]);
    let c = checksum(&icmp).to_be_bytes();
    icmp[2..4].copy_from_slice(&c);
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[198, 18, 0, 10, 198, 18, 0, 1]);
    let c = checksum(&ip).to_be_bytes();
    ip[10..12].copy_from_slice(&c);
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    assert_eq!(frame.len(), 60);
    let bytes: Vec<String> = frame.iter().map(|b| format!("{b:#04x}")).collect();
    format!("{{ {} }}\n", bytes.join(", "))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Probe,
    Kernel,
    XdpDrop,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Probe => "rauta-probe",
            Mode::Kernel => "kernel",
            Mode::XdpDrop => "xdp-drop",
        }
    }
}

/// One measured run: (frames handled per second, frames offered per second).
fn measure(
    mode: Mode,
    config: &str,
    drop_obj: &str,
    packets: u64,
    rate: Option<&str>,
) -> (f64, f64) {
    let gw = format!("{PREFIX}-gw");
    let cl = format!("{PREFIX}-cl");
    let cidr = format!("{GATEWAY}/24");
    let mut server = None;
    match mode {
        Mode::Probe => {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns("gw"),
                    "taskset",
                    "-c",
                    "1",
                    RAUTA,
                    "probe",
                ])
                .args([
                    "--iface",
                    &gw,
                    "--address",
                    &cidr,
                    "--queues",
                    "1",
                    "--report-every",
                    "60",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            server = Some(ChildGuard(child));
        }
        Mode::Kernel => {
            in_ns("gw", &["ip", "addr", "add", &cidr, "dev", &gw]);
        }
        Mode::XdpDrop => {
            in_ns(
                "gw",
                &[
                    "ip", "link", "set", "dev", &gw, "xdpdrv", "obj", drop_obj, "sec", "xdp",
                ],
            );
        }
    }
    // Let ARP settle both ways and the server come up.
    let deadline = Instant::now() + Duration::from_secs(10);
    if mode != Mode::XdpDrop {
        while Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns("client"),
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                GATEWAY,
            ])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "{} never answered ping",
                mode.name()
            );
        }
    }

    let replies_before = read_counter("client", &cl, "rx_packets");
    let drops_before = xdp_drops(&gw);
    let packets_arg = packets.to_string();
    let mut args = vec![
        "timeout",
        "60",
        "taskset",
        "-c",
        "0",
        "trafgen",
        "--dev",
        &cl,
        "--conf",
        config,
        "--cpus",
        "1",
        "-n",
        &packets_arg,
        "-q",
    ];
    if let Some(rate) = rate {
        args.extend_from_slice(&["-b", rate]);
    }
    let start = Instant::now();
    in_ns("client", &args);
    // Replies still in flight when trafgen returns.
    std::thread::sleep(Duration::from_millis(200));
    let elapsed = start.elapsed().as_secs_f64() - 0.2;
    let handled = match mode {
        Mode::XdpDrop => xdp_drops(&gw) - drops_before,
        _ => read_counter("client", &cl, "rx_packets") - replies_before,
    };

    drop(server);
    match mode {
        Mode::Probe => {}
        Mode::Kernel => {
            in_ns("gw", &["ip", "addr", "del", &cidr, "dev", &gw]);
        }
        Mode::XdpDrop => {
            in_ns("gw", &["ip", "link", "set", "dev", &gw, "xdpdrv", "off"]);
        }
    }
    (handled as f64 / elapsed, packets as f64 / elapsed)
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    require_root("the packet-rate benchmark");
    let rounds: usize = env_or("RAUTA_BENCH_ROUNDS", 3);
    let packets: u64 = env_or("RAUTA_BENCH_PACKETS", 2_000_000);
    let rate = std::env::var("RAUTA_BENCH_RATE").ok();

    let tmp = std::env::temp_dir().join(format!("rauta-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let drop_obj = tmp.join("xdp_drop.o");
    let bench_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches");
    run(&[
        "clang",
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-I/usr/include/x86_64-linux-gnu",
        "-c",
        &format!("{bench_dir}/xdp_drop.c"),
        "-o",
        drop_obj.to_str().unwrap(),
    ]);

    let _lab = LabGuard::up(PREFIX, 1);
    let gw = format!("{PREFIX}-gw");
    let cl = format!("{PREFIX}-cl");
    let config = tmp.join("icmp.cfg");
    std::fs::write(&config, trafgen_config(mac("gw", &gw), mac("client", &cl))).unwrap();

    let modes = [Mode::Probe, Mode::Kernel, Mode::XdpDrop];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut offered = Vec::new();
    for round in 1..=rounds {
        for (i, &mode) in modes.iter().enumerate() {
            let (fps, sent) = measure(
                mode,
                config.to_str().unwrap(),
                drop_obj.to_str().unwrap(),
                packets,
                rate.as_deref(),
            );
            eprintln!(
                "round {round}/{rounds} {:<12} {:>10.0} frames/s handled ({sent:.0}/s offered)",
                mode.name(),
                fps
            );
            results[i].push(fps.round());
            offered.push(sent.round());
        }
    }
    let medians: Vec<f64> = results.iter().map(|r| median(r.clone())).collect();
    let report = serde_json::json!({
        "benchmark": "packet_rate",
        "date": run(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]).trim(),
        "what": "frames/s answered (probe, kernel: ICMP echo replies seen by the client) or dropped (xdp_drop)",
        "frame_bytes": 60,
        "packets_per_run": packets,
        "offered_rate_limit": rate.as_deref().unwrap_or("none"),
        "offered_frames_per_s_median": median(offered),
        "rounds": rounds,
        "pinning": "trafgen on CPU 0, probe on CPU 1; the kernel answers in softirq where the veth delivers",
        "runs_frames_per_s": {
            "rauta_probe": results[0],
            "kernel": results[1],
            "xdp_drop": results[2],
        },
        "median_frames_per_s": {
            "rauta_probe": medians[0],
            "kernel": medians[1],
            "xdp_drop": medians[2],
        },
        "ratio_probe_to_kernel": (medians[0] / medians[1] * 1000.0).round() / 1000.0,
        "ratio_probe_to_xdp_drop": (medians[0] / medians[2] * 1000.0).round() / 1000.0,
    });
    let report = serde_json::to_string_pretty(&report).unwrap() + "\n";
    let out_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results");
    std::fs::create_dir_all(out_dir).unwrap();
    std::fs::write(format!("{out_dir}/packet_rate.json"), &report).unwrap();
    print!("{report}");
    let _ = std::fs::remove_dir_all(&tmp);
}
