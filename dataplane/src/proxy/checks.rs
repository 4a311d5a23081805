//! Active health checks: each worker sends its own `GET` to every endpoint
//! of a backend whose BackendTrafficPolicy asks for it, at its interval,
//! on a connection of its own (`Connection: close`) — or, for a TCP check,
//! only opens that connection and closes it once established.
//! `unhealthyThreshold` failures in a row (no connection, no answer within
//! `timeout`, a status not expected) take the endpoint out of this
//! worker's rotation;
//! `healthyThreshold` successes in a row bring it back. An endpoint is
//! healthy until checked otherwise: a new configuration serves at once,
//! EndpointSlice readiness having come first.
//!
//! Out of rotation by check is held with passive ejection
//! ([`PassiveHealth`]): selection skips both, and ignores both when every
//! endpoint is out (panic mode).

use super::health::PassiveHealth;
use super::Transport;
use crate::config::{ActiveHealthCheck, BackendProtocol, CheckProbe, GatewayConfig};
use crate::metrics::ProxyMetrics;
use foldhash::{HashMap, HashMapExt};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The most of an answer read to find its status line.
const HEAD_LIMIT: usize = 4096;

/// One endpoint's checks.
#[derive(Debug)]
struct Target {
    check: Arc<ActiveHealthCheck>,
    next: Instant,
    successes: u32,
    failures: u32,
    down: bool,
    /// A check of it is in flight.
    probing: bool,
    /// Still in the configuration (marked on each rescan).
    listed: bool,
}

/// A check in flight.
#[derive(Debug)]
struct Probe {
    endpoint: SocketAddr,
    deadline: Instant,
    /// What to send (nothing: a TCP check).
    request: Vec<u8>,
    written: usize,
    answer: Vec<u8>,
}

/// This worker's active checks.
#[derive(Debug)]
pub(super) struct ActiveChecks<C> {
    targets: HashMap<SocketAddr, Target>,
    probes: HashMap<C, Probe>,
    /// The configuration the targets were taken from.
    config: usize,
}

impl<C> Default for ActiveChecks<C> {
    fn default() -> Self {
        Self {
            targets: HashMap::new(),
            probes: HashMap::new(),
            config: 0,
        }
    }
}

/// What a probe's connection gave.
enum Progress {
    Waiting,
    /// An HTTP check's answer.
    Answered(u16),
    /// A TCP check's connection is up.
    Established,
    Failed,
}

impl<C: Copy + Eq + Hash> ActiveChecks<C> {
    /// Whether `conn` is a check's.
    pub fn owns(&self, conn: C) -> bool {
        self.probes.contains_key(&conn)
    }

    /// Take the endpoints to check from `config` when it changed: those of
    /// backends whose policy has an active check. Endpoints gone are
    /// forgotten (and back in rotation, should they return).
    pub fn follow(
        &mut self,
        config: &Arc<GatewayConfig>,
        health: &mut PassiveHealth,
        now: Instant,
    ) {
        let pointer = Arc::as_ptr(config) as usize;
        if pointer == self.config {
            return;
        }
        self.config = pointer;
        for target in self.targets.values_mut() {
            target.listed = false;
        }
        for backend in config.backends() {
            let Some(check) = &backend.traffic.active else {
                continue;
            };
            for &endpoint in &backend.endpoints {
                let probes = &self.probes;
                let target = self.targets.entry(endpoint).or_insert_with(|| Target {
                    check: check.clone(),
                    next: now,
                    successes: 0,
                    failures: 0,
                    down: false,
                    // One forgotten and listed again may still have one out.
                    probing: probes.values().any(|p| p.endpoint == endpoint),
                    listed: true,
                });
                target.check = check.clone();
                target.listed = true;
            }
        }
        self.targets.retain(|&endpoint, target| {
            if !target.listed && target.down {
                health.checked_up(endpoint);
            }
            target.listed
        });
    }

    /// Start the checks due; fail those past their timeout.
    pub fn run<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        health: &mut PassiveHealth,
        metrics: &ProxyMetrics,
        now: Instant,
    ) {
        let overdue: Vec<C> = self
            .probes
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(&c, _)| c)
            .collect();
        for conn in overdue {
            io.abort(conn);
            if let Some(probe) = self.probes.remove(&conn) {
                self.record(probe.endpoint, Progress::Failed, health, metrics);
            }
        }
        let due: Vec<SocketAddr> = self
            .targets
            .iter()
            .filter(|(_, t)| now >= t.next && !t.probing)
            .map(|(&e, _)| e)
            .collect();
        for endpoint in due {
            let target = self.targets.get_mut(&endpoint).expect("listed");
            target.next = now + target.check.interval;
            target.probing = true;
            let check = target.check.clone();
            let Some(conn) = io.connect(endpoint, BackendProtocol::Http1) else {
                self.record(endpoint, Progress::Failed, health, metrics);
                continue;
            };
            let request = match &check.probe {
                CheckProbe::Http { path, host, .. } => format!(
                    "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rauta-health-check\r\nConnection: close\r\n\r\n",
                    host.as_deref().map_or_else(|| endpoint.to_string(), str::to_owned)
                )
                .into_bytes(),
                CheckProbe::Tcp => Vec::new(),
            };
            self.probes.insert(
                conn,
                Probe {
                    endpoint,
                    deadline: now + check.timeout,
                    request,
                    written: 0,
                    answer: Vec::new(),
                },
            );
            self.on_io(io, conn, health, metrics);
        }
    }

    /// `conn`, a check's, may have progressed.
    pub fn on_io<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        conn: C,
        health: &mut PassiveHealth,
        metrics: &ProxyMetrics,
    ) {
        let Some(probe) = self.probes.get_mut(&conn) else {
            return;
        };
        let progress = Self::advance(io, conn, probe);
        if let Progress::Waiting = progress {
            return;
        }
        let probe = self.probes.remove(&conn).expect("in flight");
        if let Progress::Failed = progress {
            io.abort(conn);
        } else {
            io.close(conn);
        }
        self.record(probe.endpoint, progress, health, metrics);
    }

    fn advance<T: Transport<Conn = C>>(io: &mut T, conn: C, probe: &mut Probe) -> Progress {
        if probe.request.is_empty() {
            // A TCP check: up, refused (or reset), or not yet.
            // (A byte the server may greet with is of no interest.)
            return match io.read(conn, &mut [0; 1]) {
                super::ReadOutcome::Failed => Progress::Failed,
                _ if io.established(conn) => Progress::Established,
                _ => Progress::Waiting,
            };
        }
        while probe.written < probe.request.len() {
            match io.write(conn, &probe.request[probe.written..]) {
                Ok(0) => return Progress::Waiting,
                Ok(n) => probe.written += n,
                Err(_) => return Progress::Failed,
            }
        }
        let mut buf = [0u8; 1024];
        loop {
            match io.read(conn, &mut buf) {
                super::ReadOutcome::Data(n) => {
                    let room = HEAD_LIMIT.saturating_sub(probe.answer.len());
                    probe.answer.extend_from_slice(&buf[..n.min(room)]);
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut response = httparse::Response::new(&mut headers);
                    match response.parse(&probe.answer) {
                        // The status line is all a check needs.
                        Ok(_) if response.code.is_some() => {
                            return Progress::Answered(response.code.unwrap_or(0))
                        }
                        Ok(_) if probe.answer.len() < HEAD_LIMIT => {}
                        _ => return Progress::Failed,
                    }
                }
                super::ReadOutcome::WouldBlock => return Progress::Waiting,
                super::ReadOutcome::Closed | super::ReadOutcome::Failed => return Progress::Failed,
            }
        }
    }

    /// A check of `endpoint` ended so.
    fn record(
        &mut self,
        endpoint: SocketAddr,
        ended: Progress,
        health: &mut PassiveHealth,
        metrics: &ProxyMetrics,
    ) {
        let Some(target) = self.targets.get_mut(&endpoint) else {
            return;
        };
        target.probing = false;
        let status = match ended {
            Progress::Answered(status) => Some(status),
            _ => None,
        };
        let ok = match ended {
            Progress::Answered(status) => target.check.expects(status),
            Progress::Established => true,
            Progress::Waiting | Progress::Failed => false,
        };
        metrics.health_check(ok);
        if ok {
            target.failures = 0;
            target.successes += 1;
            if target.down && target.successes >= target.check.healthy_threshold {
                target.down = false;
                health.checked_up(endpoint);
                tracing::info!(%endpoint, "health check passes: back in rotation");
            }
        } else {
            target.successes = 0;
            target.failures += 1;
            if !target.down && target.failures >= target.check.unhealthy_threshold {
                target.down = true;
                health.checked_down(endpoint);
                tracing::info!(%endpoint, ?status, "health check fails: out of rotation");
            }
        }
    }
}
