//! Adaptive polling: spin while traffic flows, sleep in `poll(2)` on the
//! sockets after an idle spell, so an idle gateway does not burn a core.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// When to stop spinning.
#[derive(Clone, Copy, Debug)]
pub struct IdlePolicy {
    /// Consecutive empty loop passes before sleeping.
    pub spin_loops: u32,
    /// The longest sleep (timers and reporting need the loop back by then).
    pub max_sleep: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        Self {
            spin_loops: 2_000,
            max_sleep: Duration::from_millis(100),
        }
    }
}

/// Counts empty passes and decides when to sleep.
#[derive(Debug)]
pub struct IdleWaiter {
    policy: IdlePolicy,
    empty_passes: u32,
    sleeps: u64,
}

impl IdleWaiter {
    /// A waiter following `policy`.
    pub fn new(policy: IdlePolicy) -> Self {
        Self {
            policy,
            empty_passes: 0,
            sleeps: 0,
        }
    }

    /// Call once per loop pass; true when it is time to [`Self::sleep`]
    /// (`spin_loops` passes in a row without work).
    pub fn idle_pass(&mut self, did_work: bool) -> bool {
        if did_work {
            self.empty_passes = 0;
            return false;
        }
        self.empty_passes = self.empty_passes.saturating_add(1);
        if self.empty_passes < self.policy.spin_loops {
            std::hint::spin_loop();
            return false;
        }
        true
    }

    /// Block until a socket in `fds` is readable or `deadline` (capped at
    /// `max_sleep`) passes.
    pub fn sleep(&mut self, fds: &[BorrowedFd<'_>], deadline: Option<Duration>) {
        let timeout = deadline
            .unwrap_or(self.policy.max_sleep)
            .min(self.policy.max_sleep);
        wait_readable(fds, timeout);
        self.sleeps += 1;
        self.empty_passes = 0;
    }

    /// Times the loop went to sleep.
    pub fn sleeps(&self) -> u64 {
        self.sleeps
    }
}

/// Block until one of `fds` is readable or `timeout` passes.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfds` is a valid array of `len` pollfd structs for the
    // duration of the call; the fds are borrowed, so they stay open.
    unsafe {
        libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn spins_while_busy_and_sleeps_when_idle() {
        let mut waiter = IdleWaiter::new(IdlePolicy {
            spin_loops: 3,
            max_sleep: Duration::from_millis(20),
        });
        assert!(!waiter.idle_pass(true));
        assert!(!waiter.idle_pass(false));
        assert!(!waiter.idle_pass(false));
        assert!(waiter.idle_pass(false));
        let start = Instant::now();
        waiter.sleep(&[], Some(Duration::from_secs(5)));
        let slept = start.elapsed();
        assert!(slept >= Duration::from_millis(15), "slept only {slept:?}");
        assert!(
            slept < Duration::from_secs(2),
            "max_sleep ignored: {slept:?}"
        );
        assert_eq!(waiter.sleeps(), 1);
        // Work resets the count.
        assert!(!waiter.idle_pass(false));
        assert!(!waiter.idle_pass(true));
        assert!(!waiter.idle_pass(false));
    }
}
