//! `rauta probe`: the userspace stack with echo services on real AF_XDP
//! sockets, with per-queue counters every second and on exit.

use anyhow::{bail, Context, Result};
use rauta_dataplane::{run_probe, Probe, ProbeConfig, SharedReport, WorkerReport};
use rauta_netstack::flow::FlowOwnership;
use rauta_netstack::handoff;
use rauta_netstack::smoltcp::time::Instant;
use rauta_netstack::smoltcp::wire::Ipv4Cidr;
use rauta_netstack::umem::HugePagePolicy;
use rauta_netstack::{link, IdlePolicy, StackConfig, TcpConfig, XdpDevice, XskConfig, XskSet};
use rauta_xdp::{AttachMethod, AttachMode, XdpProgram};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Per-worker connection limits.
pub struct Limits {
    pub max_connections: usize,
    pub max_half_open: usize,
    pub spare_sockets: usize,
}

/// Everything `rauta probe` needs, validated.
pub struct ProbeOptions {
    pub iface: String,
    pub address: Ipv4Cidr,
    pub queues: u32,
    pub workers: u32,
    pub limits: Limits,
    pub xdp_mode: AttachMode,
    pub xdp_attach: AttachMethod,
    pub xsk: XskConfig,
    pub tcp: TcpConfig,
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
        workers,
        limits,
        xdp_mode,
        xdp_attach,
        mut xsk,
        tcp,
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
    if workers == 0 || workers > queues {
        bail!("--workers {workers}: must be 1..={queues} (one or more queues per worker)");
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
    let (registration, groups) = xsks.split(workers as usize);

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }

    let ownership = (workers > 1).then(|| FlowOwnership::new(workers as usize));
    let mailboxes =
        handoff::mailboxes(workers as usize, 4096).context("creating hand-off rings")?;
    let mut handles = Vec::new();
    let mut reports = Vec::new();
    for (worker, (group, mut mailbox)) in groups.into_iter().zip(mailboxes).enumerate() {
        let mut stack = StackConfig::new(address, mac);
        stack.tcp = tcp.clone();
        stack.max_connections = limits.max_connections;
        stack.max_half_open = limits.max_half_open;
        stack.spare_sockets = limits.spare_sockets;
        stack.worker = worker;
        stack.ownership = ownership.clone();
        let report = SharedReport::default();
        reports.push(report.clone());
        let stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("rauta-worker-{worker}"))
            .spawn(move || {
                let mut device = XdpDevice::new(group, mtu);
                let mut probe = Probe::new(ProbeConfig::new(stack), &mut device, Instant::now());
                run_probe(&mut device, &mut probe, &mut mailbox, &stop, idle, &report);
            })
            .context("starting a worker thread")?;
        handles.push(handle);
    }

    println!(
        "rauta probe: {address} on {iface} ({} XDP, {queues} queue(s), {workers} worker(s), \
         UMEM on {backing:?}); ARP, ICMP echo, UDP and TCP echo on port 7. Ctrl-C or SIGTERM stops.",
        program.running_mode()
    );
    let _ = std::io::stdout().flush();

    let mut next = std::time::Instant::now() + report_every;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if std::time::Instant::now() >= next {
            print_report(&reports, &program, "tick");
            next += report_every;
        }
        if handles.iter().any(|h| h.is_finished()) {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let mut panicked = false;
    for handle in handles {
        panicked |= handle.join().is_err();
    }
    print_report(&reports, &program, "exit");
    // Detach before the sockets close (they closed with the workers; the
    // program falls back to XDP_PASS for queues without a socket meanwhile).
    drop(program);
    drop(registration);
    println!("rauta probe: stopped; XDP program detached from {iface}");
    if panicked {
        bail!("a worker thread panicked; see the log above");
    }
    Ok(())
}

fn print_report(reports: &[SharedReport], program: &XdpProgram, when: &str) {
    let snapshots: Vec<WorkerReport> = reports
        .iter()
        .map(|r| r.lock().map(|r| r.clone()).unwrap_or_default())
        .collect();
    let mut out = std::io::stdout().lock();
    let mut queues: Vec<_> = snapshots.iter().flat_map(|w| w.queues.clone()).collect();
    queues.sort_by_key(|q| q.queue_id);
    for q in &queues {
        let xdp = program.counters(q.queue_id).unwrap_or_default();
        let (t, s) = (q.traffic, q.xsk);
        let _ = writeln!(
            out,
            "{when} queue={} frames_in={} frames_out={} tx_kicks={} xdp_redirected={} xdp_passed={} \
             ring_full={} fill_empty={} rx_dropped={} rx_invalid={} tx_invalid={}",
            q.queue_id,
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
    for (i, w) in snapshots.iter().enumerate() {
        let _ = writeln!(
            out,
            "{when} worker={i} connections={} tcp_accepted={} tcp_closed={} syn_dropped={} \
             handed_off={} handed_in={} sleeps={}",
            w.connections,
            w.stack.accepted,
            w.stack.closed,
            w.stack.syn_dropped,
            w.stack.handed_off,
            w.handed_in,
            w.sleeps,
        );
    }
    let sum = |f: fn(&WorkerReport) -> u64| snapshots.iter().map(f).sum::<u64>();
    let _ = writeln!(
        out,
        "{when} total connections={} tcp_accepted={} tcp_closed={} tcp_bytes={} udp_datagrams={}",
        sum(|w| w.connections as u64),
        sum(|w| w.stack.accepted),
        sum(|w| w.stack.closed),
        sum(|w| w.tcp_bytes),
        sum(|w| w.udp_datagrams),
    );
    let _ = out.flush();
}
