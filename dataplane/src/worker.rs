//! The polling loop: one thread drives one device and the stack on it.
//!
//! Each pass: take in handed-over frames and a batch from the rings, run the
//! stack and its service, hand out what it queued (one kick), then spin or
//! sleep as [`IdleWaiter`] decides. Counters are published for the reporter
//! a few times a second, off the per-packet path.

use crate::legs::LegCounts;
use crate::probe::Probe;
use rauta_netstack::handoff::Mailbox;
use rauta_netstack::smoltcp::time::Instant;
use rauta_netstack::{
    BatchDevice, IdlePolicy, IdleWaiter, QueueTraffic, StackCounters, XdpDevice, XskStatistics,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One queue's counters as a worker last published them.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueReport {
    pub queue_id: u32,
    pub traffic: QueueTraffic,
    pub xsk: XskStatistics,
}

/// A worker's counters as it last published them.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub queues: Vec<QueueReport>,
    pub connections: usize,
    pub stack: StackCounters,
    pub tcp_bytes: u64,
    pub udp_datagrams: u64,
    pub sleeps: u64,
    /// Frames received from other workers.
    pub handed_in: u64,
    /// Frames for other workers dropped: their inbox and this worker's
    /// overflow for them were full.
    pub handoff_dropped: u64,
    /// Backend connections opened, by leg (gateway workers).
    pub backend_connects: LegCounts,
}

/// Where a worker publishes its report.
pub type SharedReport = Arc<Mutex<WorkerReport>>;

pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Frames taken from the hand-off inbox per pass.
pub(crate) const HANDOFF_BATCH: usize = 256;

/// Each queue's traffic and kernel statistics, for a report.
pub(crate) fn queue_reports(device: &XdpDevice) -> Vec<QueueReport> {
    device
        .queues()
        .iter()
        .zip(device.traffic())
        .zip(device.statistics())
        .map(|((q, traffic), xsk)| QueueReport {
            queue_id: q.queue_id(),
            traffic,
            xsk: xsk.unwrap_or_default(),
        })
        .collect()
}

fn publish(
    report: &SharedReport,
    device: &XdpDevice,
    probe: &Probe,
    sleeps: u64,
    (handed_in, handoff_dropped): (u64, u64),
) {
    let queues = queue_reports(device);
    let counters = probe.counters();
    let next = WorkerReport {
        queues,
        connections: probe.connections(),
        stack: probe.stack_counters(),
        tcp_bytes: counters.tcp_bytes,
        udp_datagrams: counters.udp_datagrams,
        sleeps,
        handed_in,
        handoff_dropped,
        ..WorkerReport::default()
    };
    if let Ok(mut shared) = report.lock() {
        *shared = next;
    }
}

/// Run `probe` on `device` until `stop` is set, exchanging frames with the
/// other workers through `mailbox`.
pub fn run_probe(
    device: &mut XdpDevice,
    probe: &mut Probe,
    mailbox: &mut Mailbox,
    stop: &AtomicBool,
    idle: IdlePolicy,
    report: &SharedReport,
) {
    let mut waiter = IdleWaiter::new(idle);
    let mut handed_in_total = 0u64;
    let mut next_publish = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let handed_in = mailbox.receive_into(device, HANDOFF_BATCH);
        handed_in_total += handed_in as u64;
        let received = device.service();
        let now = Instant::now();
        let served = probe.poll(now, device, |to, frame| mailbox.send(to, frame));
        let sent = device.flush();
        let backlog = mailbox.flush();
        let did_work = handed_in > 0 || received > 0 || served || sent > 0 || backlog;

        let wall = std::time::Instant::now();
        if wall >= next_publish {
            publish(
                report,
                device,
                probe,
                waiter.sleeps(),
                (handed_in_total, mailbox.dropped()),
            );
            next_publish = wall + PUBLISH_EVERY;
        }
        if waiter.idle_pass(did_work) {
            probe.maintain();
            if mailbox.going_to_sleep() {
                let until_publish = next_publish.saturating_duration_since(wall);
                let deadline = probe
                    .poll_delay(now)
                    .map_or(until_publish, |d| d.min(until_publish));
                let mut fds = device.fds();
                fds.push(mailbox.wake_fd());
                waiter.sleep(&fds, Some(deadline));
                mailbox.awake();
            }
        }
    }
    publish(
        report,
        device,
        probe,
        waiter.sleeps(),
        (handed_in_total, mailbox.dropped()),
    );
}
