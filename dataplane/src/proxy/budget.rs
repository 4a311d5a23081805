//! The retry budget: retries may add at most a share of the requests a
//! worker saw lately, plus a floor, so retries never multiply an outage
//! (Linkerd's and Finagle's budget: 20% of requests, at least 10 retries a
//! second, over 10 seconds).

use std::time::{Duration, Instant};

/// How much retrying a worker allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetSettings {
    /// Retries allowed per request seen in the window.
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic (low-traffic
    /// routes can still retry).
    pub min_per_second: u32,
}

impl Default for RetryBudgetSettings {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// One-second slots the window is made of.
const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_secs(1);

/// Requests and retries of the last [`SLOTS`] seconds, a slot per second.
pub(super) struct RetryBudget {
    settings: RetryBudgetSettings,
    requests: [u32; SLOTS],
    retries: [u32; SLOTS],
    /// Start of the current slot.
    slot_start: Option<Instant>,
    current: usize,
}

impl RetryBudget {
    pub fn new(settings: RetryBudgetSettings) -> Self {
        Self {
            settings,
            requests: [0; SLOTS],
            retries: [0; SLOTS],
            slot_start: None,
            current: 0,
        }
    }

    /// A request began (its first attempt).
    pub fn request(&mut self, now: Instant) {
        self.advance(now);
        self.requests[self.current] = self.requests[self.current].saturating_add(1);
    }

    /// Take one retry from the budget; `false` when it is spent.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        self.advance(now);
        let requests: u64 = self.requests.iter().map(|&n| u64::from(n)).sum();
        let retries: u64 = self.retries.iter().map(|&n| u64::from(n)).sum();
        let floor = u64::from(self.settings.min_per_second) * SLOTS as u64;
        let allowed = (requests as f64 * self.settings.ratio) as u64 + floor;
        if retries >= allowed {
            return false;
        }
        self.retries[self.current] += 1;
        true
    }

    /// Move to the slot `now` falls in, emptying the ones passed.
    fn advance(&mut self, now: Instant) {
        let Some(start) = self.slot_start else {
            self.slot_start = Some(now);
            return;
        };
        let passed = (now.saturating_duration_since(start).as_millis() / SLOT.as_millis()) as usize;
        if passed == 0 {
            return;
        }
        for _ in 0..passed.min(SLOTS) {
            self.current = (self.current + 1) % SLOTS;
            self.requests[self.current] = 0;
            self.retries[self.current] = 0;
        }
        self.slot_start = Some(start + SLOT * passed as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_held_to_the_floor_plus_a_share_of_requests() {
        let settings = RetryBudgetSettings {
            ratio: 0.2,
            min_per_second: 1,
        };
        let mut budget = RetryBudget::new(settings);
        let t0 = Instant::now();
        for _ in 0..100 {
            budget.request(t0);
        }
        // 20% of 100, plus 1 a second over 10 seconds.
        let granted = (0..100).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(granted, 30);
        // Ten seconds on, the window has let go of all of them.
        let later = t0 + Duration::from_secs(10);
        let granted = (0..100).filter(|_| budget.withdraw(later)).count();
        assert_eq!(granted, 10, "the floor alone");
    }
}
