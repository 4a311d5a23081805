//! What a worker's proxy counts, read by the admin server.
//!
//! One [`ProxyMetrics`] per worker: a single writer, so the atomics never
//! bounce between cores on the data path; the admin server sums workers
//! when scraped.

use crate::error::{Cause, Phase};
use crate::gate::Refusal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A response status's class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub const ALL: [Self; 5] = [
        Self::Informational,
        Self::Success,
        Self::Redirection,
        Self::ClientError,
        Self::ServerError,
    ];

    pub fn of(status: u16) -> Self {
        match status {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }

    /// `2xx`, as Prometheus labels usually spell it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
        }
    }
}

/// Why an endpoint left a worker's rotation (passive health).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionCause {
    /// A connect refused or timed out.
    Connect,
    /// 5xx answers or resets in a row.
    Errors,
    /// Answers far slower than its backend's other endpoints'.
    Latency,
}

impl EjectionCause {
    pub const ALL: [Self; 3] = [Self::Connect, Self::Errors, Self::Latency];

    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Errors => "errors",
            Self::Latency => "latency",
        }
    }
}

/// Why a worker keeps an endpoint out of its rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutOfRotation {
    /// Passive health: ejected for a while.
    Ejected,
    /// Its active checks fail.
    FailingChecks,
}

impl OutOfRotation {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ejected => "ejected",
            Self::FailingChecks => "failing_checks",
        }
    }
}

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A route's responses are counted per backend (none: answered by the
/// gateway itself) and status class.
pub type RouteKey = (Arc<str>, Option<Arc<str>>, StatusClass);

/// Responses of one (route, backend, status class).
#[derive(Debug)]
struct RouteCount {
    route: Arc<str>,
    backend: Option<Arc<str>>,
    count: u64,
}

/// Counters of one worker's proxy.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    responses: [AtomicU64; 5],
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    /// Client connections refused, per [`Refusal`].
    connections_refused: [AtomicU64; 3],
    backend_requests: AtomicU64,
    backend_errors: AtomicU64,
    /// Attempts begun after a failed one.
    retries: AtomicU64,
    /// Endpoints taken out of a worker's rotation, per [`EjectionCause`].
    ejections: [AtomicU64; 3],
    /// Active health checks that passed, and failed.
    health_checks: [AtomicU64; 2],
    /// Retries the retry budget refused.
    retries_budget_exhausted: AtomicU64,
    /// The endpoints this worker keeps out of its rotation, and why, as
    /// of its last tick (sorted).
    out_of_rotation: Mutex<Vec<(std::net::SocketAddr, OutOfRotation)>>,
    /// Mirrored copies sent, and not sent (no ready endpoint).
    mirrors: AtomicU64,
    mirrors_unsent: AtomicU64,
    /// HTTP/1.1 backend connections open, in use or pooled.
    backend_connections_open: AtomicI64,
    pool_idle: AtomicU64,
    /// Failures per [`Cause`] slot.
    errors: [AtomicU64; Cause::LABELS.len()],
    /// Deadline expiries per [`Phase`] slot.
    timeouts: [AtomicU64; Phase::LABELS.len()],
    /// Per bucket (not cumulative), plus one past the last bound.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
    /// Responses per (route, backend, status class), keyed by where the
    /// names live: a count hashes three words and clones nothing. Each
    /// entry holds its names, so their addresses are not reused while it
    /// exists.
    routes: Mutex<foldhash::HashMap<(usize, usize, StatusClass), RouteCount>>,
    http2: Http2Counters<AtomicU64, AtomicI64>,
}

/// HTTP/2 counters: `U` counts up, `G` is a gauge.
#[derive(Clone, Debug, Default)]
pub struct Http2Counters<U, G> {
    /// Client connections open (also in `connections_open`).
    pub connections_open: G,
    /// Client streams accepted.
    pub streams: U,
    /// Client streams the client reset.
    pub client_resets: U,
    /// Client connections cut off with GOAWAY for abuse (rapid reset).
    pub goaways_for_abuse: U,
    /// Backend connections open.
    pub backend_connections_open: G,
    pub backend_connections: U,
    /// Streams opened to backends.
    pub backend_streams: U,
}

/// A point-in-time copy, summed over workers for a scrape.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    pub responses: [u64; 5],
    pub connections_open: i64,
    pub connections_total: u64,
    /// Per [`Refusal`], in its order.
    pub connections_refused: [u64; 3],
    pub backend_requests: u64,
    pub backend_errors: u64,
    pub retries: u64,
    /// Per [`EjectionCause`], in its order.
    pub ejections: [u64; 3],
    /// Active health checks: passed, failed.
    pub health_checks: [u64; 2],
    pub retries_budget_exhausted: u64,
    pub mirrors: u64,
    pub mirrors_unsent: u64,
    pub backend_connections_open: i64,
    pub pool_idle: u64,
    pub errors: [u64; Cause::LABELS.len()],
    pub timeouts: [u64; Phase::LABELS.len()],
    pub latency: [u64; LATENCY_BUCKETS.len() + 1],
    pub latency_sum_seconds: f64,
    pub routes: HashMap<RouteKey, u64>,
    pub http2: Http2Counters<u64, i64>,
}

impl ProxyMetrics {
    pub fn response(&self, class: StatusClass) {
        self.responses[class as usize].fetch_add(1, Relaxed);
    }

    pub fn route_response(&self, route: &Arc<str>, backend: Option<&Arc<str>>, class: StatusClass) {
        let at = |name: &Arc<str>| Arc::as_ptr(name) as *const u8 as usize;
        let key = (at(route), backend.map_or(0, at), class);
        if let Ok(mut routes) = self.routes.lock() {
            routes
                .entry(key)
                .or_insert_with(|| RouteCount {
                    route: route.clone(),
                    backend: backend.cloned(),
                    count: 0,
                })
                .count += 1;
        }
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub fn connection_refused(&self, why: Refusal) {
        self.connections_refused[why.index()].fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// A client connection the core accepted (and counted) turned out to
    /// speak HTTP/2.
    pub fn h2_connection_opened(&self) {
        self.http2.connections_open.fetch_add(1, Relaxed);
    }

    pub fn h2_connection_closed(&self) {
        self.connection_closed();
        self.http2.connections_open.fetch_sub(1, Relaxed);
    }

    pub fn h2_stream_opened(&self) {
        self.http2.streams.fetch_add(1, Relaxed);
    }

    pub fn h2_reset_by_client(&self) {
        self.http2.client_resets.fetch_add(1, Relaxed);
    }

    pub fn h2_goaway_for_abuse(&self) {
        self.http2.goaways_for_abuse.fetch_add(1, Relaxed);
    }

    pub fn h2_backend_connection_opened(&self) {
        self.http2.backend_connections_open.fetch_add(1, Relaxed);
        self.http2.backend_connections.fetch_add(1, Relaxed);
    }

    pub fn h2_backend_connection_closed(&self) {
        self.http2.backend_connections_open.fetch_sub(1, Relaxed);
    }

    pub fn h2_backend_stream_opened(&self) {
        self.http2.backend_streams.fetch_add(1, Relaxed);
    }

    pub fn backend_request(&self) {
        self.backend_requests.fetch_add(1, Relaxed);
    }

    /// Another attempt began after a failed one.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// A mirrored copy of a request was sent, or could not be.
    pub fn mirror(&self, sent: bool) {
        match sent {
            true => self.mirrors.fetch_add(1, Relaxed),
            false => self.mirrors_unsent.fetch_add(1, Relaxed),
        };
    }

    /// The endpoints this worker keeps out of rotation now (sorted).
    pub fn set_out_of_rotation(&self, endpoints: Vec<(std::net::SocketAddr, OutOfRotation)>) {
        if let Ok(mut out) = self.out_of_rotation.lock() {
            *out = endpoints;
        }
    }

    /// Why this worker keeps `endpoint` out of its rotation, if it does.
    pub fn out_of_rotation(&self, endpoint: std::net::SocketAddr) -> Option<OutOfRotation> {
        let out = self.out_of_rotation.lock().ok()?;
        out.binary_search_by_key(&endpoint, |&(e, _)| e)
            .ok()
            .map(|i| out[i].1)
    }

    /// A retry the budget refused.
    pub fn retry_budget_exhausted(&self) {
        self.retries_budget_exhausted.fetch_add(1, Relaxed);
    }

    /// An endpoint left a worker's rotation (passive health).
    pub fn ejection(&self, cause: EjectionCause) {
        self.ejections[cause as usize].fetch_add(1, Relaxed);
    }

    /// An active health check passed (or failed).
    pub fn health_check(&self, passed: bool) {
        self.health_checks[usize::from(!passed)].fetch_add(1, Relaxed);
    }

    /// A failure, counted by cause (and, for a backend failure, as a
    /// backend error; for an expiry, by its phase).
    pub fn failure(&self, cause: Cause) {
        self.errors[cause.index()].fetch_add(1, Relaxed);
        if cause.is_backend_failure() {
            self.backend_errors.fetch_add(1, Relaxed);
        }
        if let Some(phase) = cause.phase() {
            self.timeout(phase);
        }
    }

    /// A deadline expired.
    pub fn timeout(&self, phase: Phase) {
        self.timeouts[phase.index()].fetch_add(1, Relaxed);
    }

    pub fn backend_connection_opened(&self) {
        self.backend_connections_open.fetch_add(1, Relaxed);
    }

    pub fn backend_connection_closed(&self) {
        self.backend_connections_open.fetch_sub(1, Relaxed);
    }

    pub fn set_pool_idle(&self, idle: usize) {
        self.pool_idle.store(idle as u64, Relaxed);
    }

    pub fn observe_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    /// Add this worker's counters to `into`.
    pub fn add_to(&self, into: &mut MetricsSnapshot) {
        for (sum, value) in into.responses.iter_mut().zip(&self.responses) {
            *sum += value.load(Relaxed);
        }
        into.connections_open += self.connections_open.load(Relaxed);
        into.connections_total += self.connections_total.load(Relaxed);
        for (sum, value) in into
            .connections_refused
            .iter_mut()
            .zip(&self.connections_refused)
        {
            *sum += value.load(Relaxed);
        }
        into.backend_requests += self.backend_requests.load(Relaxed);
        into.backend_errors += self.backend_errors.load(Relaxed);
        into.retries += self.retries.load(Relaxed);
        for (into, count) in into.ejections.iter_mut().zip(&self.ejections) {
            *into += count.load(Relaxed);
        }
        for (into, count) in into.health_checks.iter_mut().zip(&self.health_checks) {
            *into += count.load(Relaxed);
        }
        into.retries_budget_exhausted += self.retries_budget_exhausted.load(Relaxed);
        into.mirrors += self.mirrors.load(Relaxed);
        into.mirrors_unsent += self.mirrors_unsent.load(Relaxed);
        into.pool_idle += self.pool_idle.load(Relaxed);
        into.backend_connections_open += self.backend_connections_open.load(Relaxed);
        for (sum, value) in into.errors.iter_mut().zip(&self.errors) {
            *sum += value.load(Relaxed);
        }
        for (sum, value) in into.timeouts.iter_mut().zip(&self.timeouts) {
            *sum += value.load(Relaxed);
        }
        for (sum, value) in into.latency.iter_mut().zip(&self.latency) {
            *sum += value.load(Relaxed);
        }
        into.latency_sum_seconds += self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let (h, into_h) = (&self.http2, &mut into.http2);
        into_h.connections_open += h.connections_open.load(Relaxed);
        into_h.streams += h.streams.load(Relaxed);
        into_h.client_resets += h.client_resets.load(Relaxed);
        into_h.goaways_for_abuse += h.goaways_for_abuse.load(Relaxed);
        into_h.backend_connections_open += h.backend_connections_open.load(Relaxed);
        into_h.backend_connections += h.backend_connections.load(Relaxed);
        into_h.backend_streams += h.backend_streams.load(Relaxed);
        if let Ok(routes) = self.routes.lock() {
            for (&(_, _, class), entry) in routes.iter() {
                let key = (entry.route.clone(), entry.backend.clone(), class);
                *into.routes.entry(key).or_default() += entry.count;
            }
        }
    }
}
