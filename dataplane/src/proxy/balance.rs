//! Endpoint selection by load: power of two choices over least outstanding
//! requests weighted by each endpoint's latency (a peak EWMA), as Linkerd
//! and Envoy's LEAST_REQUEST do; round robin stays an option.
//!
//! Two endpoints are drawn at random among those a request may use and the
//! cheaper one wins: cost = latency × (requests outstanding + 1). An
//! endpoint that slows down or piles up requests loses most draws at once,
//! without a global view: every worker keeps its own counts and latencies
//! (nothing is shared between cores). The estimate decays while no answer
//! comes (as Linkerd's does), so an endpoint that lost every draw is tried
//! again now and then.
//!
//! By that cost alone a 20 ms endpoint beside two fast ones still took
//! ~0.9% of requests in the lab (`benches/failures.rs`, scenario `slow`):
//! with 16 requests in flight on each fast one, a lone request on the slow
//! one looks cheaper — and those 0.9% were the p99. Dividing each sample
//! by the requests in flight (the latency already holds the queue) changed
//! nothing there, and starved an endpoint added under load whose first,
//! connection-opening answer was slow. What does it is a second, plain
//! per-answer average ([`Load::is_slow`]): an endpoint typically far
//! slower than its backend's median is a latency outlier, and
//! [`super::health`] ejects it.

use super::affinity;
use super::health::PassiveHealth;
use crate::config::Backend;
use crate::error::Cause;
use foldhash::{HashMap, HashMapExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How a worker picks an endpoint among a backend's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancing {
    /// Power of two choices over latency × outstanding requests.
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
}

/// The latency an endpoint is assumed to have before its first answer.
const DEFAULT_LATENCY: Duration = Duration::from_millis(1);
/// How fast the average forgets: after this long, an old figure weighs
/// 1/e (Linkerd's peak-EWMA decay).
const DECAY: Duration = Duration::from_secs(10);
/// The weight of each answer in the typical latency: a few answers make
/// it, a lone late one does not.
const TYPICAL_WEIGHT: f64 = 0.25;
/// How many of a backend's other endpoints the median is taken over.
const MEDIAN_OF: usize = 8;

/// What this worker knows of one endpoint's load.
#[derive(Debug)]
struct EndpointLoad {
    outstanding: u32,
    /// Seconds (peak EWMA).
    latency: f64,
    /// Whether `latency` is from an answer (not the first guess).
    measured: bool,
    updated: Instant,
    /// HTTP/1.1 connections open to it (in use or pooled), and of those
    /// still connecting.
    connections: u32,
    connecting: u32,
    /// Seconds, a plain average per answer (no peaks) for outlier
    /// detection; none before the first answer, or since an ejection for
    /// slowness (the first answer after it decides afresh).
    typical: Option<f64>,
}

/// What an estimate `elapsed` old keeps of its weight: e^-x by 1/(1+x),
/// the same decay where it matters (samples close together), without a
/// libm call per response.
fn kept(elapsed: Duration) -> f64 {
    1.0 / (1.0 + elapsed.as_secs_f64() / DECAY.as_secs_f64())
}

/// This worker's load figures, per endpoint, and how it picks by them.
#[derive(Debug)]
pub(super) struct Load {
    endpoints: HashMap<SocketAddr, EndpointLoad>,
    /// xorshift64 state for the draws.
    rng: u64,
    policy: LoadBalancing,
    /// The circuit breaker: requests in flight to one endpoint at most.
    limit: u32,
}

impl Load {
    pub fn new(seed: u64, policy: LoadBalancing, limit: u32) -> Self {
        Self {
            endpoints: HashMap::new(),
            rng: seed | 1,
            policy,
            limit,
        }
    }

    /// One of `backend`'s endpoints not in `avoid`, by its policy (or
    /// this worker's): by the request's hashed `key` under consistent
    /// hashing, by load, or in round-robin order from `turn()`.
    /// `NoReadyEndpoint` when there is none, `Overflow` when the one found
    /// is at the circuit breaker's limit, or the backend is at its own.
    pub fn choose(
        &mut self,
        health: &PassiveHealth,
        backend: &Backend,
        turn: impl FnOnce() -> usize,
        avoid: &[SocketAddr],
        key: Option<u64>,
        now: Instant,
    ) -> Result<SocketAddr, Cause> {
        let traffic = &backend.traffic;
        let endpoints = &backend.endpoints;
        if self.backend_full(backend) {
            return Err(Cause::Overflow);
        }
        let limit = self.endpoint_limit(backend);
        let endpoint = match key.filter(|_| traffic.hash_on.is_some()) {
            // Every one ejected or full: the key's first choice still.
            Some(key) => affinity::pick(key, endpoints, |e| {
                self.usable(health, e, avoid, limit, now)
            })
            .or_else(|| affinity::pick(key, endpoints, |e| !avoid.contains(&e))),
            None => match traffic.balancing.unwrap_or(self.policy) {
                LoadBalancing::LeastRequest => self.pick(health, endpoints, avoid, limit, now),
                // This worker's rotation, past the endpoints it has ejected.
                LoadBalancing::RoundRobin => health.pick(endpoints, turn(), avoid, now),
            },
        }
        .ok_or(Cause::NoReadyEndpoint)?;
        if self.outstanding(endpoint) >= limit {
            return Err(Cause::Overflow);
        }
        Ok(endpoint)
    }

    /// Requests in flight to one of `backend`'s endpoints at most: its
    /// policy's, or this worker's.
    fn endpoint_limit(&self, backend: &Backend) -> u32 {
        backend
            .traffic
            .max_requests_per_endpoint
            .unwrap_or(self.limit)
    }

    /// Whether `backend` has its policy's most requests in flight.
    fn backend_full(&self, backend: &Backend) -> bool {
        backend.traffic.max_requests.is_some_and(|max| {
            let in_flight: u32 = backend.endpoints.iter().map(|&e| self.outstanding(e)).sum();
            in_flight >= max
        })
    }

    /// Whether a request may go to `endpoint`, one of `backend`'s, as a
    /// session asks: usable, and neither at its limits.
    pub fn may_take(
        &self,
        health: &PassiveHealth,
        backend: &Backend,
        endpoint: SocketAddr,
        now: Instant,
    ) -> bool {
        let limit = self.endpoint_limit(backend);
        !self.backend_full(backend) && self.usable(health, endpoint, &[], limit, now)
    }

    fn entry(&mut self, endpoint: SocketAddr, now: Instant) -> &mut EndpointLoad {
        self.endpoints.entry(endpoint).or_insert(EndpointLoad {
            outstanding: 0,
            latency: DEFAULT_LATENCY.as_secs_f64(),
            measured: false,
            updated: now,
            connections: 0,
            connecting: 0,
            typical: None,
        })
    }

    /// An attempt at `endpoint` began.
    pub fn begin(&mut self, endpoint: SocketAddr, now: Instant) {
        self.entry(endpoint, now).outstanding += 1;
    }

    /// A connection to `endpoint` is being opened.
    pub fn connecting(&mut self, endpoint: SocketAddr, now: Instant) {
        let load = self.entry(endpoint, now);
        load.connections += 1;
        load.connecting += 1;
    }

    /// A connection to `endpoint` completed its handshake.
    pub fn established(&mut self, endpoint: SocketAddr) {
        if let Some(load) = self.endpoints.get_mut(&endpoint) {
            load.connecting = load.connecting.saturating_sub(1);
        }
    }

    /// A connection to `endpoint` closed, before (`up` false) or after
    /// its handshake completed.
    pub fn disconnected(&mut self, endpoint: SocketAddr, up: bool) {
        if let Some(load) = self.endpoints.get_mut(&endpoint) {
            load.connections = load.connections.saturating_sub(1);
            if !up {
                load.connecting = load.connecting.saturating_sub(1);
            }
        }
    }

    /// `backend`'s connections open and connecting (this worker's).
    pub fn connections(&self, backend: &Backend) -> (u32, u32) {
        backend
            .endpoints
            .iter()
            .filter_map(|e| self.endpoints.get(e))
            .fold((0, 0), |(open, connecting), l| {
                (open + l.connections, connecting + l.connecting)
            })
    }

    /// An attempt at `endpoint` ended (answered, failed or let go).
    pub fn end(&mut self, endpoint: SocketAddr) {
        if let Some(load) = self.endpoints.get_mut(&endpoint) {
            load.outstanding = load.outstanding.saturating_sub(1);
        }
    }

    /// `endpoint` answered `latency` after the attempt began: a rise is
    /// taken at once (the peak), a fall decays in over [`DECAY`]; the first
    /// answer replaces the guess.
    pub fn observe(&mut self, endpoint: SocketAddr, latency: Duration, now: Instant) {
        let load = self.entry(endpoint, now);
        let sample = latency.as_secs_f64();
        if sample > load.latency || !load.measured {
            load.latency = sample;
            load.measured = true;
        } else {
            let keep = kept(now.saturating_duration_since(load.updated));
            load.latency = load.latency * keep + sample * (1.0 - keep);
        }
        load.updated = now;
        load.typical = Some(match load.typical {
            Some(typical) => typical + (sample - typical) * TYPICAL_WEIGHT,
            None => sample,
        });
    }

    /// Whether `endpoint`, one of `backend`'s, is a latency outlier: its
    /// typical latency is the backend's `latency_factor` times the median
    /// of (up to [`MEDIAN_OF`] of) its other endpoints' and
    /// `latency_margin` above it. Endpoints not yet heard from do not
    /// count; with no other to compare, nothing is an outlier.
    pub fn is_slow(&mut self, endpoint: SocketAddr, backend: &Backend) -> bool {
        let rule = &backend.traffic.outlier;
        let margin = rule.latency_margin.as_secs_f64();
        let endpoints = &backend.endpoints;
        let typical = |load: &Self, e| load.endpoints.get(&e).and_then(|l| l.typical);
        // The common case costs one lookup: nothing under the margin is slow.
        let Some(own) = typical(self, endpoint).filter(|&t| t > margin) else {
            return false;
        };
        if rule.latency_factor == 0 || endpoints.len() < 2 {
            return false;
        }
        let start = self.draw(endpoints.len());
        let mut others = [0.0; MEDIAN_OF];
        let mut count = 0;
        let order = endpoints.iter().cycle().skip(start).take(endpoints.len());
        for &other in order.filter(|&&e| e != endpoint) {
            if let Some(t) = typical(self, other) {
                others[count] = t;
                count += 1;
                if count == MEDIAN_OF {
                    break;
                }
            }
        }
        if count == 0 {
            return false;
        }
        let others = &mut others[..count];
        others.sort_unstable_by(f64::total_cmp);
        let median = others[count / 2];
        own > median * f64::from(rule.latency_factor) && own - median > margin
    }

    /// `endpoint` was ejected for slowness: its next answer decides anew.
    pub fn forget_typical(&mut self, endpoint: SocketAddr) {
        if let Some(load) = self.endpoints.get_mut(&endpoint) {
            load.typical = None;
        }
    }

    /// The latency a request sent to `endpoint` now can expect.
    fn cost(&self, endpoint: SocketAddr, now: Instant) -> f64 {
        self.endpoints
            .get(&endpoint)
            .map_or(DEFAULT_LATENCY.as_secs_f64(), |l| {
                let latency = l.latency * kept(now.saturating_duration_since(l.updated));
                latency * f64::from(l.outstanding + 1)
            })
    }

    /// A random number below `n` (n > 0).
    pub fn draw(&mut self, n: usize) -> usize {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x % n as u64) as usize
    }

    /// Requests this worker has in flight to `endpoint`.
    pub fn outstanding(&self, endpoint: SocketAddr) -> u32 {
        self.endpoints.get(&endpoint).map_or(0, |l| l.outstanding)
    }

    /// Whether a request may go to `endpoint` now: not in `avoid`, not
    /// ejected, under `limit` requests in flight.
    fn usable(
        &self,
        health: &PassiveHealth,
        endpoint: SocketAddr,
        avoid: &[SocketAddr],
        limit: u32,
        now: Instant,
    ) -> bool {
        !avoid.contains(&endpoint)
            && !health.is_ejected(endpoint, now)
            && self.outstanding(endpoint) < limit
    }

    /// The cheaper of two endpoints drawn among `endpoints` that are
    /// neither in `avoid`, ejected, nor at `limit` requests in flight;
    /// when the draw finds none usable, the health's own scan (which falls
    /// back to ejected ones).
    pub fn pick(
        &mut self,
        health: &PassiveHealth,
        endpoints: &[SocketAddr],
        avoid: &[SocketAddr],
        limit: u32,
        now: Instant,
    ) -> Option<SocketAddr> {
        let n = endpoints.len();
        if n < 2 {
            // Nothing to weigh (most backends in a lab, many in a cluster).
            return health.pick(endpoints, 0, avoid, now);
        }
        let first = self.draw(n);
        let second = (first + 1 + self.draw(n - 1)) % n;
        let usable = |e: &SocketAddr| self.usable(health, *e, avoid, limit, now);
        match (endpoints[first], endpoints[second]) {
            (a, b) if usable(&a) && usable(&b) => Some(if self.cost(b, now) < self.cost(a, now) {
                b
            } else {
                a
            }),
            (a, _) if usable(&a) => Some(a),
            (_, b) if usable(&b) => Some(b),
            _ => health.pick(endpoints, first, avoid, now),
        }
    }

    /// Forget endpoints with nothing outstanding and no news for a while
    /// (gone from the configuration, most likely).
    pub fn expire(&mut self, now: Instant) {
        self.endpoints.retain(|_, l| {
            l.outstanding > 0
                || l.connections > 0
                || now.saturating_duration_since(l.updated) < 6 * DECAY
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    #[test]
    fn a_slow_endpoint_loses_most_draws() {
        let all = endpoints(3);
        let health = PassiveHealth::default();
        let mut load = Load::new(7, LoadBalancing::LeastRequest, u32::MAX);
        let now = Instant::now();
        load.observe(all[0], Duration::from_millis(1), now);
        load.observe(all[1], Duration::from_millis(1), now);
        load.observe(all[2], Duration::from_millis(21), now);
        let mut slow = 0;
        for _ in 0..3000 {
            if load.pick(&health, &all, &[], u32::MAX, now) == Some(all[2]) {
                slow += 1;
            }
        }
        // Every draw pairs it with a faster one: while those are idle it
        // is never picked.
        assert_eq!(slow, 0);
    }

    #[test]
    fn an_endpoint_that_loses_every_draw_is_tried_again_later() {
        let all = endpoints(2);
        let mut load = Load::new(5, LoadBalancing::LeastRequest, u32::MAX);
        let now = Instant::now();
        load.observe(all[0], Duration::from_millis(3), now);
        load.observe(all[1], Duration::from_millis(20), now);
        load.begin(all[0], now);
        assert!(load.cost(all[1], now) > load.cost(all[0], now));
        // Unheard from for a minute while the other keeps answering with
        // a request in flight, it is worth a try again.
        let later = now + Duration::from_secs(60);
        load.observe(all[0], Duration::from_millis(3), later);
        assert!(load.cost(all[1], later) < load.cost(all[0], later));
    }

    #[test]
    fn outstanding_requests_spread_the_load() {
        let all = endpoints(2);
        let health = PassiveHealth::default();
        let mut load = Load::new(3, LoadBalancing::LeastRequest, u32::MAX);
        let now = Instant::now();
        for _ in 0..100 {
            let e = load.pick(&health, &all, &[], u32::MAX, now).unwrap();
            load.begin(e, now);
        }
        let counts: Vec<u32> = all.iter().map(|e| load.endpoints[e].outstanding).collect();
        assert!(counts.iter().all(|&c| (49..=51).contains(&c)), "{counts:?}");
    }

    #[test]
    fn a_latency_outlier_is_far_above_the_median_of_the_others() {
        let all = endpoints(4);
        let backend = Backend::new("b", 1, all.clone());
        let mut load = Load::new(9, LoadBalancing::LeastRequest, u32::MAX);
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert!(!load.is_slow(all[0], &backend), "never heard from");
        load.observe(all[0], ms(40), now);
        assert!(!load.is_slow(all[0], &backend), "nothing to compare");
        load.observe(all[1], ms(2), now);
        load.observe(all[2], ms(3), now);
        load.observe(all[3], ms(30), now);
        // The median of 2, 3 and 30 ms is 3.
        assert!(load.is_slow(all[0], &backend));
        assert!(
            load.is_slow(all[3], &backend),
            "the median of 2, 3 and 40 ms is 3"
        );
        // Answering in 1 ms again, it soon is not (a plain average: no
        // peak holds it up).
        for _ in 0..8 {
            load.observe(all[0], ms(1), now);
        }
        assert!(!load.is_slow(all[0], &backend));
        // Three times slower but within the margin: 1 ms against 0.1 ms.
        let tiny = Backend::new("t", 1, all[..2].to_vec());
        let mut quick = Load::new(9, LoadBalancing::LeastRequest, u32::MAX);
        quick.observe(all[0], Duration::from_micros(1000), now);
        quick.observe(all[1], Duration::from_micros(100), now);
        assert!(!quick.is_slow(all[0], &tiny));
        // Forgotten after an ejection: the next answer decides.
        load.observe(all[1], ms(200), now);
        load.forget_typical(all[1]);
        assert!(!load.is_slow(all[1], &backend));
    }

    #[test]
    fn avoided_and_ejected_endpoints_are_not_picked() {
        let all = endpoints(3);
        let mut health = PassiveHealth::default();
        let now = Instant::now();
        health.connect_failed(all[0], &Backend::new("b", 1, all.clone()), now);
        let mut load = Load::new(11, LoadBalancing::LeastRequest, u32::MAX);
        for _ in 0..100 {
            assert_eq!(
                load.pick(&health, &all, &[all[1]], u32::MAX, now),
                Some(all[2])
            );
        }
    }
}
