//! `rauta probe`: the userspace stack with echo services on real AF_XDP
//! sockets, with per-queue counters every second and on exit.

use anyhow::{bail, Context, Result};
use rauta_dataplane::{run_probe, Probe, ProbeConfig};
use rauta_netstack::smoltcp::time::Instant;
use rauta_netstack::smoltcp::wire::Ipv4Cidr;
use rauta_netstack::umem::HugePagePolicy;
use rauta_netstack::{link, IdlePolicy, XdpDevice, XskConfig, XskSet};
use rauta_xdp::{AttachMethod, AttachMode, XdpProgram};
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Everything `rauta probe` needs, validated.
pub struct ProbeOptions {
    pub iface: String,
    pub address: Ipv4Cidr,
    pub queues: u32,
    pub xdp_mode: AttachMode,
    pub xdp_attach: AttachMethod,
    pub xsk: XskConfig,
    pub idle: IdlePolicy,
    pub report_every: Duration,
}

/// Parse `ADDR/PREFIX`.
pub fn parse_cidr(text: &str) -> Result<Ipv4Cidr> {
    let (addr, len) = text
        .split_once('/')
        .with_context(|| format!("--address {text:?}: expected ADDR/PREFIX, e.g. 198.18.0.1/24"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .with_context(|| format!("--address {text:?}: {addr:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (1..=32).contains(l))
        .with_context(|| format!("--address {text:?}: prefix must be 1..=32"))?;
    Ok(Ipv4Cidr::new(addr, len))
}

pub fn run(options: ProbeOptions, hugepages: bool) -> Result<()> {
    let ProbeOptions {
        iface,
        address,
        queues,
        xdp_mode,
        xdp_attach,
        mut xsk,
        idle,
        report_every,
    } = options;
    if !hugepages {
        xsk.hugepages = HugePagePolicy::Never;
    }
    let mac = link::mac_address(&iface)?;
    let mtu = link::mtu(&iface)?;
    let available = link::rx_queues(&iface)?;
    if queues == 0 || queues > available {
        bail!("--queues {queues}: {iface} has {available} RX queue(s)");
    }
    let queue_ids: Vec<u32> = (0..queues).collect();

    // Sockets first: without privileges this fails before anything is
    // attached to the interface.
    let xsks = XskSet::open(&iface, &queue_ids, &xsk)?;
    let mut program = XdpProgram::attach(&iface, address.address(), xdp_mode, xdp_attach)?;
    for queue in xsks.queues() {
        program.register_socket(queue.queue_id(), queue.fd())?;
    }
    let backing = xsks.area().backing();
    let mut device = XdpDevice::new(xsks, mtu);

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }

    let mut probe = Probe::new(ProbeConfig::new(address, mac), &mut device, Instant::now());
    println!(
        "rauta probe: {address} on {iface} ({} XDP, {queues} queue(s), UMEM on {backing:?}); \
         ARP, ICMP echo, UDP and TCP echo on port 7. Ctrl-C or SIGTERM stops.",
        program.running_mode()
    );
    let _ = std::io::stdout().flush();

    run_probe(
        &mut device,
        &mut probe,
        &stop,
        idle,
        |d: &XdpDevice| d.fds(),
        report_every,
        |d, p| report(d, p, &program, "tick"),
    );
    report(&device, &probe, &program, "exit");
    // Detach before the sockets close, so no frame is redirected into a
    // closing socket.
    drop(program);
    drop(device);
    println!("rauta probe: stopped; XDP program detached from {iface}");
    Ok(())
}

fn report(device: &XdpDevice, probe: &Probe, program: &XdpProgram, when: &str) {
    let traffic = device.traffic();
    let stats = device.statistics();
    let mut out = std::io::stdout().lock();
    for ((queue, t), s) in device.queues().iter().zip(&traffic).zip(&stats) {
        let q = queue.queue_id();
        let xdp = program.counters(q).unwrap_or_default();
        let s = s.as_ref().copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "{when} queue={q} frames_in={} frames_out={} tx_kicks={} xdp_redirected={} xdp_passed={} \
             ring_full={} fill_empty={} rx_dropped={} rx_invalid={} tx_invalid={}",
            t.frames_in,
            t.frames_out,
            t.tx_wakeups,
            xdp.redirected,
            xdp.passed,
            s.rx_ring_full,
            s.rx_fill_ring_empty,
            s.rx_dropped,
            s.rx_invalid,
            s.tx_invalid,
        );
    }
    let c = probe.counters();
    let _ = writeln!(
        out,
        "{when} total connections={} tcp_accepted={} tcp_closed={} tcp_bytes={} udp_datagrams={}",
        probe.connections(),
        c.tcp_accepted,
        c.tcp_closed,
        c.tcp_bytes,
        c.udp_datagrams
    );
    let _ = out.flush();
}
