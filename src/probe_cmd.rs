//! `rauta probe`: the userspace stack with echo services on real AF_XDP
//! sockets, with per-queue counters every second and on exit.

use crate::xdp_setup::{self, XdpOptions};
use anyhow::{bail, Context, Result};
use rauta_dataplane::{run_probe, Probe, ProbeConfig, SharedReport, WorkerReport};
use rauta_netstack::smoltcp::time::Instant;
use rauta_netstack::IdlePolicy;
use rauta_xdp::XdpProgram;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Everything `rauta probe` needs, validated.
pub struct ProbeOptions {
    pub xdp: XdpOptions,
    pub idle: IdlePolicy,
    pub report_every: Duration,
}

pub fn run(options: ProbeOptions) -> Result<()> {
    let ProbeOptions {
        xdp,
        idle,
        report_every,
    } = options;
    let (iface, address, queues, workers) =
        (xdp.iface.clone(), xdp.address, xdp.queues, xdp.workers);
    let mut runtime = xdp_setup::bring_up(xdp)?;
    let stop = xdp_setup::stop_flag()?;
    let mut handles = Vec::new();
    let mut reports = Vec::new();
    for (worker, parts) in std::mem::take(&mut runtime.workers).into_iter().enumerate() {
        let report = SharedReport::default();
        reports.push(report.clone());
        let stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("rauta-worker-{worker}"))
            .spawn(move || {
                let (mut device, mut mailbox, stack) = parts.open();
                let mut probe = Probe::new(ProbeConfig::new(stack), &mut device, Instant::now());
                run_probe(&mut device, &mut probe, &mut mailbox, &stop, idle, &report);
            })
            .context("starting a worker thread")?;
        handles.push(handle);
    }

    println!(
        "rauta probe: {address} on {iface} ({} XDP, {queues} queue(s), {workers} worker(s), \
         UMEM on {}); ARP, ICMP echo, UDP and TCP echo on port 7. Ctrl-C or SIGTERM stops.",
        runtime.program.running_mode(),
        runtime.backing,
    );
    let _ = std::io::stdout().flush();

    let mut next = std::time::Instant::now() + report_every;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if std::time::Instant::now() >= next {
            print_report(&reports, &runtime.program, "tick");
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
    print_report(&reports, &runtime.program, "exit");
    // Detach after the sockets closed (with the workers; the program falls
    // back to XDP_PASS for queues without a socket meanwhile).
    runtime.shut_down();
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
