//! The polling loop: one thread drives one device and the stack on it.
//!
//! Each pass: take in a batch of frames, run the stack and its service,
//! hand out what it queued (one kick), then spin or sleep as
//! [`IdleWaiter`] decides.

use crate::probe::Probe;
use rauta_netstack::smoltcp::time::Instant;
use rauta_netstack::{BatchDevice, IdlePolicy, IdleWaiter};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Run `probe` on `device` until `stop` is set, calling `report` about every
/// `report_every`. `fds` gives the sockets to sleep on when idle.
pub fn run_probe<D, F, R>(
    device: &mut D,
    probe: &mut Probe,
    stop: &AtomicBool,
    idle: IdlePolicy,
    fds: F,
    report_every: Duration,
    mut report: R,
) where
    D: BatchDevice,
    F: Fn(&D) -> Vec<BorrowedFd<'_>>,
    R: FnMut(&D, &Probe),
{
    let mut waiter = IdleWaiter::new(idle);
    let mut next_report = std::time::Instant::now() + report_every;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let received = device.service();
        let served = probe.poll(now, device);
        let sent = device.flush();
        let did_work = received > 0 || served || sent > 0;

        let wall = std::time::Instant::now();
        if wall >= next_report {
            report(device, probe);
            next_report = wall + report_every;
        }
        if waiter.idle_pass(did_work) {
            let until_report = next_report.saturating_duration_since(wall);
            let deadline = probe
                .poll_delay(now)
                .map_or(until_report, |d| d.min(until_report));
            waiter.sleep(&fds(device), Some(deadline));
        }
    }
}
