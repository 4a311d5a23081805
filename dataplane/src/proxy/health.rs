//! Passive health: an endpoint that refuses a connection, or does not
//! answer one in time, leaves this worker's rotation for a while (outlier
//! ejection), so a killed pod costs one failed connect per worker and
//! ejection period instead of one per request sent its way.
//!
//! As nginx's `max_fails=1`: one connect failure ejects; so do
//! `consecutive_errors` answers in a row that are 5xx or resets before
//! any answer (Envoy's `consecutive_5xx`). The period starts
//! at `base_ejection` and doubles with each ejection that follows without
//! a success in between, up to `max_ejection`; a response from the
//! endpoint clears its record. Ejection never takes out more than
//! `max_ejection_percent` of a backend's endpoints (one may always go), so
//! a wave of transient failures does not pile the load onto the few left;
//! and when every endpoint a request could use is ejected, selection
//! ignores ejection (Envoy's panic mode), so a backend whose only pod
//! restarts is tried again at once. The figures are the backend's
//! [`OutlierDetection`]: the defaults, or its Service's policy.
//!
//! An endpoint that answers, but far slower than its backend's others
//! ([`super::balance`] tells), is ejected too: least-request alone still
//! sends it a request whenever the fast ones look busy, and with many
//! requests in flight those few own the tail latency. Its answers do not
//! clear that record (they are the slow ones); only an answer in the
//! usual time after its return does, so each return of a still-slow
//! endpoint doubles the next ejection.

use crate::config::{Backend, OutlierDetection};
use crate::metrics::OutOfRotation;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a record outlives its ejection before it is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// What is known against one endpoint.
#[derive(Debug)]
struct Record {
    /// Ejections since its last success.
    ejections: u32,
    /// Out of the rotation until then.
    until: Instant,
    /// 5xx answers or resets in a row since its last other answer.
    errors: u32,
    /// Ejections for slowness since it last answered in the usual time.
    slow: u32,
}

impl Record {
    fn new(now: Instant) -> Self {
        Self {
            ejections: 0,
            until: now,
            errors: 0,
            slow: 0,
        }
    }
}

/// This worker's view of its endpoints' health.
#[derive(Debug)]
pub(super) struct PassiveHealth {
    records: HashMap<SocketAddr, Record>,
    /// Endpoints out of rotation by their active checks
    /// ([`super::checks`]): skipped as ejected ones are.
    checked_out: HashSet<SocketAddr>,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self {
            records: HashMap::new(),
            checked_out: HashSet::new(),
        }
    }
}

impl PassiveHealth {
    /// A connection to `endpoint`, one of `backend`'s, was refused or
    /// timed out: eject it, unless that would take out more of them than
    /// its outlier detection allows. Returns how long for, if it was.
    pub fn connect_failed(
        &mut self,
        endpoint: SocketAddr,
        backend: &Backend,
        now: Instant,
    ) -> Option<Duration> {
        self.eject(endpoint, backend, now, false)
    }

    /// `endpoint`, one of `backend`'s, answers far slower than the others:
    /// eject it (within the same share), for longer each time it comes
    /// back still slow.
    pub fn slow(
        &mut self,
        endpoint: SocketAddr,
        backend: &Backend,
        now: Instant,
    ) -> Option<Duration> {
        self.eject(endpoint, backend, now, true)
    }

    /// `endpoint` answered in its backend's usual time: it is not slow.
    pub fn latency_normal(&mut self, endpoint: SocketAddr) {
        self.clear(endpoint, |record| record.slow = 0);
    }

    /// Apply `clear` to `endpoint`'s record; forget the record once
    /// nothing is held against it.
    fn clear(&mut self, endpoint: SocketAddr, clear: impl FnOnce(&mut Record)) {
        if self.records.is_empty() {
            return;
        }
        if let Some(record) = self.records.get_mut(&endpoint) {
            clear(record);
            if record.ejections == 0 && record.errors == 0 && record.slow == 0 {
                self.records.remove(&endpoint);
            }
        }
    }

    /// `endpoint` answered `status`, or (`None`) reset the connection
    /// before any answer: a 5xx or a reset counts toward an ejection, any
    /// other answer clears its record. Returns the ejection's length, if
    /// this made one.
    pub fn answered(
        &mut self,
        endpoint: SocketAddr,
        status: Option<u16>,
        backend: &Backend,
        now: Instant,
    ) -> Option<Duration> {
        if status.is_some_and(|s| s < 500) {
            self.succeeded(endpoint);
            return None;
        }
        let record = self
            .records
            .entry(endpoint)
            .or_insert_with(|| Record::new(now));
        record.errors += 1;
        if record.errors < backend.traffic.outlier.consecutive_errors {
            return None;
        }
        record.errors = 0;
        self.eject(endpoint, backend, now, false)
    }

    /// Eject `endpoint`, one of `backend`'s, for failing or (`slow`) for
    /// its latency, unless that would take out more of them than allowed
    /// (one may always go).
    fn eject(
        &mut self,
        endpoint: SocketAddr,
        backend: &Backend,
        now: Instant,
        slow: bool,
    ) -> Option<Duration> {
        let OutlierDetection {
            base_ejection,
            max_ejection,
            max_ejection_percent,
            ..
        } = backend.traffic.outlier;
        let endpoints = &backend.endpoints;
        if self.is_ejected(endpoint, now) {
            // Attempts that began before the ejection fail after it: one
            // outage is one ejection, not a doubling per connection.
            return None;
        }
        let others = endpoints
            .iter()
            .filter(|&&e| e != endpoint && self.is_ejected(e, now))
            .count();
        let allowed = endpoints.len() * usize::from(max_ejection_percent) / 100;
        if others + 1 > allowed.max(1) {
            return None;
        }
        let record = self
            .records
            .entry(endpoint)
            .or_insert_with(|| Record::new(now));
        let count = if slow {
            &mut record.slow
        } else {
            &mut record.ejections
        };
        let doublings = (*count).min(5);
        *count += 1;
        let period = (base_ejection * 2u32.pow(doublings)).min(max_ejection);
        record.until = now + period;
        Some(period)
    }

    /// `endpoint` answered: it is healthy again (slow or not: that is
    /// [`Self::latency_normal`]'s to say).
    pub fn succeeded(&mut self, endpoint: SocketAddr) {
        self.clear(endpoint, |record| {
            record.ejections = 0;
            record.errors = 0;
        });
    }

    /// Whether `endpoint` is out of the rotation at `now`: ejected, or
    /// failing its active checks.
    pub fn is_ejected(&self, endpoint: SocketAddr, now: Instant) -> bool {
        (!self.records.is_empty()
            && self
                .records
                .get(&endpoint)
                .is_some_and(|record| now < record.until))
            || (!self.checked_out.is_empty() && self.checked_out.contains(&endpoint))
    }

    /// `endpoint` failed its active checks.
    pub fn checked_down(&mut self, endpoint: SocketAddr) {
        self.checked_out.insert(endpoint);
    }

    /// `endpoint` passes its active checks again (or has none now).
    pub fn checked_up(&mut self, endpoint: SocketAddr) {
        self.checked_out.remove(&endpoint);
    }

    /// The first endpoint from `start` on, in `endpoints`' rotation order,
    /// that is neither ejected nor in `avoid`; failing that, the first not
    /// in `avoid` (every one ejected: ejection is ignored).
    pub fn pick(
        &self,
        endpoints: &[SocketAddr],
        start: usize,
        avoid: &[SocketAddr],
        now: Instant,
    ) -> Option<SocketAddr> {
        let len = endpoints.len();
        // `start` is a free-running turn: reduced first, so it never overflows.
        let start = if len == 0 { 0 } else { start % len };
        let order = (0..len).map(|k| endpoints[(start + k) % len]);
        let mut fallback = None;
        for endpoint in order.filter(|e| !avoid.contains(e)) {
            if !self.is_ejected(endpoint, now) {
                return Some(endpoint);
            }
            fallback.get_or_insert(endpoint);
        }
        fallback
    }

    /// The endpoints out of rotation at `now`, and why, sorted (failing
    /// checks named first when both hold).
    pub fn out_of_rotation(&self, now: Instant) -> Vec<(SocketAddr, OutOfRotation)> {
        let mut out: Vec<(SocketAddr, OutOfRotation)> = self
            .checked_out
            .iter()
            .map(|&e| (e, OutOfRotation::FailingChecks))
            .chain(
                self.records
                    .iter()
                    .filter(|(e, r)| now < r.until && !self.checked_out.contains(e))
                    .map(|(&e, _)| (e, OutOfRotation::Ejected)),
            )
            .collect();
        out.sort_unstable();
        out
    }

    /// Forget records whose ejection ended long ago (endpoints gone from
    /// the configuration leave no trace).
    pub fn expire(&mut self, now: Instant) {
        self.records
            .retain(|_, record| now.saturating_duration_since(record.until) < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE_EJECTION: Duration = Duration::from_secs(1);

    fn backend(endpoints: &[SocketAddr]) -> Backend {
        Backend::new("default/b:80", 1, endpoints.to_vec())
    }

    fn endpoints() -> Vec<SocketAddr> {
        ["198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn an_ejected_endpoint_is_skipped_until_its_period_ends() {
        let e = endpoints();
        let now = Instant::now();
        let mut health = PassiveHealth::default();
        assert_eq!(health.pick(&e, 1, &[], now), Some(e[1]));
        assert_eq!(
            health.connect_failed(e[1], &backend(&e), now),
            Some(BASE_EJECTION)
        );
        assert_eq!(health.pick(&e, 1, &[], now), Some(e[2]), "skipped");
        assert_eq!(health.pick(&e, 1, &[e[2]], now), Some(e[0]));
        let later = now + BASE_EJECTION;
        assert_eq!(health.pick(&e, 1, &[], later), Some(e[1]), "back");
        assert_eq!(health.pick(&e, usize::MAX, &[], later), Some(e[0]));
        assert_eq!(health.pick(&[], 7, &[], later), None);
    }

    #[test]
    fn periods_double_until_a_success_and_never_exceed_the_cap() {
        let e = endpoints();
        let now = Instant::now();
        let mut health = PassiveHealth::default();
        let mut at = now;
        let periods: Vec<Duration> = (0..8)
            .filter_map(|_| {
                let period = health.connect_failed(e[0], &backend(&e), at)?;
                assert_eq!(
                    health.connect_failed(e[0], &backend(&e), at),
                    None,
                    "failing again while ejected changes nothing"
                );
                at += period;
                Some(period)
            })
            .collect();
        assert_eq!(periods[0], Duration::from_secs(1));
        assert_eq!(periods[1], Duration::from_secs(2));
        assert_eq!(periods[4], Duration::from_secs(16));
        assert_eq!(periods[7], OutlierDetection::default().max_ejection);
        health.succeeded(e[0]);
        assert!(!health.is_ejected(e[0], at));
        assert_eq!(
            health.connect_failed(e[0], &backend(&e), at),
            Some(BASE_EJECTION),
            "starts over"
        );
    }

    #[test]
    fn a_slow_endpoint_is_cleared_by_answering_in_time_not_by_answering() {
        let e = endpoints();
        let now = Instant::now();
        let mut health = PassiveHealth::default();
        assert_eq!(health.slow(e[0], &backend(&e), now), Some(BASE_EJECTION));
        let back = now + BASE_EJECTION;
        health.succeeded(e[0]);
        assert_eq!(
            health.slow(e[0], &backend(&e), back),
            Some(2 * BASE_EJECTION),
            "a slow answer is still an answer, but the record holds"
        );
        let back = back + 2 * BASE_EJECTION;
        assert_eq!(
            health.out_of_rotation(back - Duration::from_millis(1)),
            vec![(e[0], OutOfRotation::Ejected)]
        );
        health.checked_down(e[0]);
        health.checked_down(e[1]);
        assert_eq!(
            health.out_of_rotation(back),
            vec![
                (e[0], OutOfRotation::FailingChecks),
                (e[1], OutOfRotation::FailingChecks)
            ]
        );
        health.checked_up(e[0]);
        health.checked_up(e[1]);
        health.latency_normal(e[0]);
        assert!(health.records.is_empty());
        assert_eq!(health.slow(e[0], &backend(&e), back), Some(BASE_EJECTION));
    }

    #[test]
    fn at_most_half_of_a_backend_is_ejected_and_one_may_always_go() {
        let e = endpoints();
        let now = Instant::now();
        let mut health = PassiveHealth::default();
        assert!(health.connect_failed(e[0], &backend(&e), now).is_some());
        assert_eq!(
            health.connect_failed(e[1], &backend(&e), now),
            None,
            "2 of 3"
        );
        assert!(!health.is_ejected(e[1], now));
        assert!(
            health
                .connect_failed(e[2], &backend(&e[2..]), now)
                .is_some(),
            "1 of 1"
        );
    }

    #[test]
    fn when_every_endpoint_is_ejected_ejection_is_ignored() {
        let e = endpoints();
        let now = Instant::now();
        let mut health = PassiveHealth::default();
        for &endpoint in &e {
            // Each alone, as workers of different backends would see them.
            health.connect_failed(endpoint, &backend(&[endpoint]), now);
        }
        assert_eq!(health.pick(&e, 2, &[], now), Some(e[2]));
        assert_eq!(health.pick(&e, 2, &e, now), None, "all avoided");
        health.expire(now + BASE_EJECTION + FORGET_AFTER);
        assert!(health.records.is_empty());
    }
}
