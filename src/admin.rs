//! The admin server: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/config`. Kernel sockets on a thread of its own, loopback by default;
//! never on the data path.

use anyhow::{Context, Result};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rauta_controlplane::kubernetes::metrics::ControllerMetrics;
use rauta_controlplane::source::Published;
use rauta_dataplane::error::{Cause, Phase, Side};
use rauta_dataplane::gate::{ConnectionGate, Refusal};
use rauta_dataplane::metrics::{
    EjectionCause, MetricsSnapshot, OutOfRotation, ProxyMetrics, StatusClass, LATENCY_BUCKETS,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One counter sample a transport contributes (AF_XDP ring counters).
#[derive(Clone, Debug)]
pub struct ExtraSample {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

/// Samples a transport contributes, read at scrape time; samples of one
/// name must be adjacent.
pub type ExtraMetrics = Arc<dyn Fn() -> Vec<ExtraSample> + Send + Sync>;

/// What the admin server reads.
#[derive(Clone)]
pub struct AdminState {
    pub published: Published,
    pub workers: Vec<Arc<ProxyMetrics>>,
    /// Serving (false before workers run and while draining).
    pub ready: Arc<AtomicBool>,
    pub io: &'static str,
    pub extra: Option<ExtraMetrics>,
    /// The Kubernetes controller's metrics, when routes come from a cluster.
    pub controller: Option<ControllerMetrics>,
    /// Connection limits and the memory budget.
    pub gate: Arc<ConnectionGate>,
}

impl AdminState {
    fn snapshot(&self) -> MetricsSnapshot {
        let mut snapshot = MetricsSnapshot::default();
        for worker in &self.workers {
            worker.add_to(&mut snapshot);
        }
        snapshot
    }
}

#[derive(Debug)]
struct ProxyCollector {
    snapshot: MetricsSnapshot,
    generation: u64,
    extra: Vec<ExtraSample>,
    gate: Arc<ConnectionGate>,
    endpoints: Vec<EndpointHealth>,
}

/// How many workers see one endpoint of one backend in each state:
/// serving, ejected, failing its checks.
#[derive(Debug)]
struct EndpointHealth {
    backend: String,
    endpoint: String,
    workers: [u64; 3],
}

/// Every configured endpoint, by backend, with its workers' views.
fn endpoint_health(state: &AdminState) -> Vec<EndpointHealth> {
    let config = state.published.config.load();
    let mut seen = std::collections::HashSet::new();
    let mut all = Vec::new();
    for backend in config.backends() {
        for &endpoint in &backend.endpoints {
            if !seen.insert((backend.name.clone(), endpoint)) {
                continue;
            }
            let mut workers = [0; 3];
            for worker in &state.workers {
                let slot = match worker.out_of_rotation(endpoint) {
                    None => 0,
                    Some(OutOfRotation::Ejected) => 1,
                    Some(OutOfRotation::FailingChecks) => 2,
                };
                workers[slot] += 1;
            }
            all.push(EndpointHealth {
                backend: backend.name.to_string(),
                endpoint: endpoint.to_string(),
                workers,
            });
        }
    }
    all.sort_by(|a, b| (&a.backend, &a.endpoint).cmp(&(&b.backend, &b.endpoint)));
    all
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        {
            let mut family = encoder.encode_descriptor(
                "rauta_responses",
                "Responses sent to clients, by status class",
                None,
                MetricType::Counter,
            )?;
            for class in StatusClass::ALL {
                let labels = [("class", class.label())];
                ConstCounter::new(s.responses[class as usize])
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "rauta_route_responses",
                "Responses per route, backend (empty: answered by the gateway) and status class",
                None,
                MetricType::Counter,
            )?;
            let mut routes: Vec<_> = s.routes.iter().collect();
            routes.sort_by_key(|((route, backend, class), _)| {
                (route.clone(), backend.clone(), class.label())
            });
            for ((route, backend, class), count) in routes {
                let labels = [
                    ("route", route.as_ref()),
                    ("backend", backend.as_deref().unwrap_or("")),
                    ("class", class.label()),
                ];
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        let counters: [(&str, &str, u64); 14] = [
            (
                "rauta_connections",
                "Client connections accepted",
                s.connections_total,
            ),
            (
                "rauta_backend_requests",
                "Requests sent to backends",
                s.backend_requests,
            ),
            (
                "rauta_backend_errors",
                "Requests failed by a backend (connect, reset, timeout, bad response)",
                s.backend_errors,
            ),
            (
                "rauta_upstream_retries",
                "Attempts begun after a failed one (connect refused or timed out, a pooled connection closed, a route's retry)",
                s.retries,
            ),
            (
                "rauta_upstream_retries_budget_exhausted",
                "Retries not made because the retry budget was spent",
                s.retries_budget_exhausted,
            ),
            (
                "rauta_mirror_requests",
                "Mirrored copies of requests sent (RequestMirror)",
                s.mirrors,
            ),
            (
                "rauta_mirror_requests_unsent",
                "Mirrored copies not sent: the mirror backend had no ready endpoint",
                s.mirrors_unsent,
            ),
            (
                "rauta_health_checks_passed",
                "Active health checks (BackendTrafficPolicy healthCheck.active) that passed",
                s.health_checks[0],
            ),
            (
                "rauta_health_checks_failed",
                "Active health checks that failed: no connection, no answer in time, or a status not expected",
                s.health_checks[1],
            ),
            (
                "rauta_http2_streams",
                "HTTP/2 client streams accepted",
                s.http2.streams,
            ),
            (
                "rauta_http2_client_resets",
                "HTTP/2 client streams reset by the client",
                s.http2.client_resets,
            ),
            (
                "rauta_http2_goaways_for_abuse",
                "HTTP/2 client connections cut off for resetting streams too fast",
                s.http2.goaways_for_abuse,
            ),
            (
                "rauta_http2_backend_connections",
                "HTTP/2 backend connections opened",
                s.http2.backend_connections,
            ),
            (
                "rauta_http2_backend_streams",
                "HTTP/2 streams opened to backends",
                s.http2.backend_streams,
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        for (name, help, side) in [
            (
                "rauta_upstream_errors",
                "Requests failed on the way to or at a backend, by cause",
                Side::Upstream,
            ),
            (
                "rauta_downstream_errors",
                "Requests failed by the client, by cause",
                Side::Downstream,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for cause in Cause::ALL.iter().filter(|c| c.side() == side) {
                let labels = [("cause", cause.label())];
                ConstCounter::new(s.errors[cause.index()])
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "rauta_connections_refused",
                "Client connections refused as they were accepted, by reason: the gateway's connection limit, the listener's, or resident memory past the budget",
                None,
                MetricType::Counter,
            )?;
            for reason in Refusal::ALL {
                ConstCounter::new(s.connections_refused[reason.index()])
                    .encode(family.encode_family(&[("reason", reason.label())])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "rauta_upstream_ejections",
                "Endpoints taken out of a worker's rotation, by cause: a connect refused or timed out, 5xx or resets in a row, or latency far above the backend's median",
                None,
                MetricType::Counter,
            )?;
            for (cause, count) in EjectionCause::ALL.iter().zip(s.ejections) {
                ConstCounter::new(count)
                    .encode(family.encode_family(&[("cause", cause.label())])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "rauta_timeouts",
                "Deadlines expired, by the phase they bound",
                None,
                MetricType::Counter,
            )?;
            for (phase, count) in Phase::LABELS.iter().zip(s.timeouts) {
                ConstCounter::new(count).encode(family.encode_family(&[("phase", *phase)])?)?;
            }
        }
        let budget = self.gate.limits().memory_budget;
        let gauges: [(&str, &str, i64); 8] = [
            (
                "rauta_memory_resident_bytes",
                "The gateway's resident memory, as the overload guard last measured it",
                self.gate.resident() as i64,
            ),
            (
                "rauta_memory_budget_bytes",
                "Resident memory past which new connections are refused (0: no budget)",
                budget.map_or(0, |b| b as i64),
            ),
            (
                "rauta_connections_open",
                "Client connections open",
                s.connections_open,
            ),
            (
                "rauta_backend_connections_open",
                "HTTP/1.1 backend connections open, in use or pooled",
                s.backend_connections_open,
            ),
            (
                "rauta_http2_connections_open",
                "HTTP/2 client connections open",
                s.http2.connections_open,
            ),
            (
                "rauta_http2_backend_connections_open",
                "HTTP/2 backend connections open",
                s.http2.backend_connections_open,
            ),
            (
                "rauta_pool_idle_connections",
                "Idle pooled backend connections",
                s.pool_idle as i64,
            ),
            (
                "rauta_config_generation",
                "Configurations published",
                self.generation as i64,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "rauta_endpoint_health_workers",
                "Workers that see each configured endpoint so: serving, ejected (passive health) or failing_checks (active)",
                None,
                MetricType::Gauge,
            )?;
            for e in &self.endpoints {
                for (state, count) in [
                    "serving",
                    OutOfRotation::Ejected.label(),
                    OutOfRotation::FailingChecks.label(),
                ]
                .into_iter()
                .zip(e.workers)
                {
                    let labels = [
                        ("backend", e.backend.as_str()),
                        ("endpoint", e.endpoint.as_str()),
                        ("state", state),
                    ];
                    ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        // Per bucket: the encoder makes the `le` counts cumulative itself.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(s.latency)
            .collect();
        let count = s.latency.iter().sum();
        encoder
            .encode_descriptor(
                "rauta_response_latency_seconds",
                "From request head to response head",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<Vec<(String, String)>>(
                s.latency_sum_seconds,
                count,
                &buckets,
                None,
            )?;
        let mut last = "";
        let mut family = None;
        for sample in &self.extra {
            if sample.name != last {
                family = Some(encoder.encode_descriptor(
                    sample.name,
                    sample.help,
                    None,
                    MetricType::Counter,
                )?);
                last = sample.name;
            }
            if let Some(family) = family.as_mut() {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                ConstCounter::new(sample.value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn metrics_text(state: &AdminState) -> String {
    let generation = state
        .published
        .status
        .lock()
        .map(|s| s.generation)
        .unwrap_or_default();
    let extra = state.extra.as_ref().map(|f| f()).unwrap_or_default();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProxyCollector {
        snapshot: state.snapshot(),
        generation,
        extra,
        endpoints: endpoint_health(state),
        gate: state.gate.clone(),
    }));
    if let Some(controller) = &state.controller {
        controller.register(&mut registry);
    }
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

fn config_json(state: &AdminState) -> String {
    let status = state
        .published
        .status
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let body = serde_json::json!({
        "io": state.io,
        "generation": status.generation,
        "reloads": status.reloads,
        "rejected": status.rejected,
        "last_error": status.last_error,
        "active": status.summary,
    });
    serde_json::to_string_pretty(&body).unwrap_or_default() + "\n"
}

/// Answer one admin request.
fn respond(state: &AdminState, method: &str, path: &str) -> (u16, &'static str, String) {
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "method not allowed\n".into());
    }
    match path {
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "not ready\n".into()),
        "/config" => (200, "application/json", config_json(state)),
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics_text(state),
        ),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// Start the admin server on `address` on a thread of its own.
pub fn start(address: SocketAddr, state: AdminState) -> Result<()> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("--admin {address}: cannot listen"))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("rauta-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(error) => {
                    tracing::error!(%error, "admin server runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            // Out of descriptors, most likely: wait rather
                            // than spin on the error.
                            tracing::warn!(%error, "admin accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let state = state.clone();
                    tokio::spawn(serve(stream, state));
                }
            });
        })?;
    Ok(())
}

async fn serve(mut stream: tokio::net::TcpStream, state: AdminState) {
    let mut buf = Vec::with_capacity(1024);
    let limits = rauta_dataplane::http1::Limits::default();
    let head = loop {
        let mut chunk = [0u8; 1024];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
        match rauta_dataplane::http1::parse_request(&buf, &limits) {
            Ok(Some(head)) => break head,
            Ok(None) => continue,
            Err(_) => {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
        }
    };
    let path = head.target.split('?').next().unwrap_or("/");
    let (status, content_type, body) = respond(&state, &head.method, path);
    let reason = rauta_dataplane::http1::reason_phrase(status);
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if head.method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_once() {
        let mut snapshot = MetricsSnapshot::default();
        snapshot.latency[0] = 3;
        snapshot.latency[1] = 1;
        *snapshot.latency.last_mut().unwrap() = 2;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProxyCollector {
            snapshot,
            generation: 1,
            extra: Vec::new(),
            endpoints: Vec::new(),
            gate: Arc::default(),
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let bucket = |le: &str| {
            let prefix = format!("rauta_response_latency_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le}:\n{text}"))
                .to_owned()
        };
        let first = format!("{}", LATENCY_BUCKETS[0]);
        let second = format!("{}", LATENCY_BUCKETS[1]);
        assert_eq!(bucket(&first), "3");
        assert_eq!(bucket(&second), "4");
        assert_eq!(bucket("+Inf"), "6");
        assert!(
            text.contains("rauta_response_latency_seconds_count 6"),
            "{text}"
        );
    }
}
