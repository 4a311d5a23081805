//! What the workers serve: the compiled, immutable gateway configuration.
//!
//! The control plane builds a [`GatewayConfig`] from Gateway API objects and
//! publishes it whole; workers load the current one per request and never
//! see a half-applied change. Nothing here knows Kubernetes types: filters
//! and backends are already resolved to what the proxy does with them.
//! Nothing here changes per request either: where each worker's round
//! robin stands is the worker's own (`proxy::Cursors`), so no counter is
//! shared between cores.

use crate::routes::{host_without_port, RouteTable};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Every listener the gateway serves, by port.
#[derive(Default)]
pub struct GatewayConfig {
    pub ports: BTreeMap<u16, PortListeners>,
}

impl GatewayConfig {
    /// The listener a request on `port` for `host` belongs to.
    pub fn listener(&self, port: u16, host: &str) -> Option<&Listener> {
        self.ports.get(&port)?.select(host)
    }

    /// Every rule action of every listener.
    pub fn actions(&self) -> impl Iterator<Item = &RuleAction> {
        self.ports
            .values()
            .flat_map(|p| &p.listeners)
            .flat_map(|l| l.routes.actions())
    }

    /// Total rules over all listeners (for reports).
    /// Every backend of every rule, mirrors' included (one reached by
    /// several rules or matches comes as often).
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.ports
            .values()
            .flat_map(|p| &p.listeners)
            .flat_map(|l| l.routes.actions())
            .flat_map(|action| {
                let mirrored = action
                    .mirrors
                    .iter()
                    .flat_map(|m| &m.action.backends.backends);
                action.backends.backends.iter().chain(mirrored)
            })
    }

    pub fn rule_count(&self) -> usize {
        self.ports
            .values()
            .flat_map(|p| &p.listeners)
            .map(|l| l.routes.len())
            .sum()
    }
}

/// The listeners sharing one port, told apart by hostname.
#[derive(Default)]
pub struct PortListeners {
    /// Most specific first: exact hostnames, wildcards longest first, then
    /// the listener without a hostname.
    listeners: Vec<Listener>,
}

impl PortListeners {
    pub fn new(mut listeners: Vec<Listener>) -> Self {
        listeners.sort_by_key(|l| match &l.hostname {
            Some(h) if !h.starts_with('*') => (0, std::cmp::Reverse(h.len())),
            Some(h) => (1, std::cmp::Reverse(h.len())),
            None => (2, std::cmp::Reverse(0)),
        });
        Self { listeners }
    }

    /// The most specific listener whose hostname matches `host`: a request
    /// for a hostname that a more specific listener claims never reaches the
    /// routes of a broader one (Gateway API listener isolation).
    pub fn select(&self, host: &str) -> Option<&Listener> {
        let host = host_without_port(host).to_ascii_lowercase();
        self.listeners.iter().find(|l| match &l.hostname {
            None => true,
            Some(h) => hostname_matches(h, &host),
        })
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }
}

/// Whether `pattern` (a hostname, or `*.` and a suffix) matches `host`.
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// One Gateway listener and the routes attached to it.
pub struct Listener {
    /// `namespace/gateway/listener`.
    pub name: String,
    pub hostname: Option<String>,
    pub routes: RouteTable<RuleAction>,
}

/// What a matching rule does.
#[derive(Debug, Default)]
pub struct RuleAction {
    /// The route, `namespace/name`, for metrics and logs.
    pub route: Arc<str>,
    /// RequestHeaderModifier of the rule.
    pub request_headers: HeaderModifier,
    /// ResponseHeaderModifier of the rule.
    pub response_headers: HeaderModifier,
    pub rewrite: Option<UrlRewrite>,
    /// A RequestRedirect answers the request itself.
    pub redirect: Option<Redirect>,
    pub backends: Backends,
    /// The rule's `retry`: which answers go to the backend again.
    pub retry: Option<RetryPolicy>,
    /// The rule's `timeouts`.
    pub timeouts: RouteTimeouts,
    /// The rule's RequestMirror filters: copies of requests sent to other
    /// backends, their answers dropped.
    pub mirrors: Vec<Mirror>,
    /// The rule's CORS filter.
    pub cors: Option<Cors>,
    /// The rule's `sessionPersistence`: a client's requests stay with the
    /// endpoint that answered its first.
    pub session: Option<SessionPersistence>,
    /// Why the rule cannot be served (a filter we do not support): every
    /// request it matches gets 500.
    pub invalid: Option<String>,
}

/// An HTTPRoute rule's `sessionPersistence` (GEP-1619): the gateway hands
/// the client a token naming the endpoint that answered, in a cookie or a
/// header, and sends its later requests that carry it to the same one
/// while it is usable (`proxy::session`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPersistence {
    pub carrier: SessionCarrier,
    /// The cookie's or header's name.
    pub name: String,
    /// A session ends this long after it began.
    pub absolute_timeout: Option<Duration>,
    /// A session ends when no request used it for this long.
    pub idle_timeout: Option<Duration>,
}

/// How the session token travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCarrier {
    /// `Set-Cookie` on the answer, `Cookie` on later requests.
    Cookie {
        /// The cookie's `Path`: the rule's path when it has one.
        path: String,
        /// A permanent cookie (`Max-Age` the absolute timeout), not one
        /// that ends with the browser session.
        permanent: bool,
    },
    /// A response field of the session's name, sent back as a request
    /// field.
    Header,
}

/// An HTTPRoute CORS filter (HTTPCORSFilter): which cross-origin requests
/// a rule's backends accept, answered for them (`proxy::cors`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cors {
    /// `scheme://host[:port]`, the host perhaps starting with `*` (any
    /// labels to its left), or `*` alone (any origin).
    pub allow_origins: Vec<String>,
    /// Methods, or `*` (any).
    pub allow_methods: Vec<String>,
    /// Request fields, or `*` (any).
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// Seconds a preflight's answer may be cached.
    pub max_age: u32,
}

impl Cors {
    /// The Gateway API's default `maxAge`.
    pub const DEFAULT_MAX_AGE: u32 = 5;

    /// Whether `origin` (the request's `Origin`) is one allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|pattern| {
            if pattern == "*" {
                return true;
            }
            let (Some((scheme, host)), Some((o_scheme, o_host))) =
                (pattern.split_once("://"), origin.split_once("://"))
            else {
                return false;
            };
            if !scheme.eq_ignore_ascii_case(o_scheme) {
                return false;
            }
            match host.strip_prefix('*') {
                Some(suffix) => {
                    o_host.len() > suffix.len()
                        && o_host.as_bytes()[o_host.len() - suffix.len()..]
                            .eq_ignore_ascii_case(suffix.as_bytes())
                }
                None => host.eq_ignore_ascii_case(o_host),
            }
        })
    }
}

/// A RequestMirror: a share of the rule's requests is also sent to one
/// more backend, fire and forget.
#[derive(Debug)]
pub struct Mirror {
    /// Where copies go: a rule of its own with the mirror's backend as its
    /// only one (no filters, no retries), so a copy is an exchange like
    /// any other.
    pub action: Arc<RuleAction>,
    /// Requests mirrored: `numerator` in `denominator` (`percent`: of 100).
    pub numerator: u32,
    pub denominator: u32,
}

/// HTTPRoute `retry` (GEP-1731): a request whose attempt ends in one of
/// `codes`, a connection error or the backend request timeout goes to the
/// backend again, up to `attempts` more times, waiting `backoff` (doubled
/// each time, up to ten times it) before each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Response statuses that are retried (sorted).
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub attempts: u8,
    /// The least wait before the first retry.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// Envoy's base retry interval, for a rule that names none.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
    /// Envoy's `num_retries` default, for a rule that names none.
    pub const DEFAULT_ATTEMPTS: u8 = 1;

    /// Is a response of `status` retried?
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.binary_search(&status).is_ok()
    }

    /// The wait before retry number `retry` (1 for the first).
    pub fn backoff(&self, retry: u8) -> Duration {
        let doublings = u32::from(retry.saturating_sub(1)).min(16);
        (self.backoff * 2u32.pow(doublings)).min(self.backoff * 10)
    }
}

/// HTTPRoute `timeouts` (GEP-1742); `None` is no bound ("0s" also).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// From the request's head to the end of the response sent to the
    /// client, every attempt included.
    pub request: Option<Duration>,
    /// Each attempt: from its start to the end of the backend's response.
    pub backend_request: Option<Duration>,
}

/// Header changes: set replaces, add appends, remove deletes (names
/// case-insensitive). Names and values are checked where the
/// configuration is compiled: a value holding CR or LF cannot be built.
#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Apply to `headers` in place.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            // Appending to the existing field keeps one field per name,
            // which is what backends comparing "a,b" expect.
            match headers.get_mut(name) {
                Some(existing) => {
                    let mut joined = existing.as_bytes().to_vec();
                    joined.push(b',');
                    joined.extend_from_slice(value.as_bytes());
                    // Two valid values joined by a comma are valid.
                    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
                        *existing = joined;
                    }
                }
                None => {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
    }
}

/// How a path is rewritten (URLRewrite) or redirected (RequestRedirect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replace the prefix the rule matched.
    ReplacePrefixMatch(String),
}

impl PathModifier {
    /// The new path for `path`, which matched the rule's prefix `matched`
    /// (`None` when the rule's match was not a prefix).
    pub fn apply(&self, path: &str, matched: Option<&str>) -> String {
        match self {
            Self::ReplaceFullPath(p) => p.clone(),
            Self::ReplacePrefixMatch(replacement) => {
                let prefix = matched.unwrap_or("/").trim_end_matches('/');
                let rest = path.get(prefix.len()..).unwrap_or("");
                let replacement = replacement.trim_end_matches('/');
                match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{replacement}{rest}"),
                }
            }
        }
    }
}

/// URLRewrite: host and path as the backend sees them.
#[derive(Clone, Debug, Default)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// RequestRedirect: the response is a redirect built from the request.
#[derive(Clone, Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: u16,
}

/// The backends of a rule with their weights, picked by weighted round
/// robin.
#[derive(Debug, Default)]
pub struct Backends {
    pub backends: Vec<Backend>,
    /// Backend indices interleaved by weight (smooth weighted round robin,
    /// precomputed): request `n` goes to `schedule[n % len]`.
    schedule: Vec<u32>,
}

impl Backends {
    pub fn new(backends: Vec<Backend>) -> Self {
        let schedule = smooth_schedule(&backends.iter().map(|b| b.weight).collect::<Vec<_>>());
        Self { backends, schedule }
    }

    /// The backend for the `turn`-th request by weight; `None` when every
    /// weight is zero or there are none.
    pub fn pick(&self, turn: usize) -> Option<&Backend> {
        self.pick_index(turn).map(|i| &self.backends[i])
    }

    /// The index of [`Self::pick`]'s backend.
    pub fn pick_index(&self, turn: usize) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let index = self.schedule[turn % self.schedule.len()] as usize;
        (index < self.backends.len()).then_some(index)
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

/// The order of smooth weighted round robin (as nginx does it) over one
/// cycle, weights scaled to at most 1,000 slots.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    if total == 0 {
        return Vec::new();
    }
    let scale = total.div_ceil(1000).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| match w {
            0 => 0,
            w => (w as u64 / scale).max(1) as i64,
        })
        .collect();
    let cycle: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(cycle as usize);
    for _ in 0..cycle {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .unwrap_or((0, &0));
        current[best] -= cycle;
        schedule.push(best as u32);
    }
    schedule
}

/// One backendRef, resolved.
#[derive(Debug, Default)]
pub struct Backend {
    /// `namespace/service:port`.
    pub name: Arc<str>,
    pub weight: u32,
    /// Ready endpoints (address and target port).
    pub endpoints: Vec<SocketAddr>,
    /// RequestHeaderModifier on the backendRef itself.
    pub request_headers: HeaderModifier,
    /// ResponseHeaderModifier on the backendRef itself.
    pub response_headers: HeaderModifier,
    /// URLRewrite on the backendRef itself, after the rule's.
    pub rewrite: Option<UrlRewrite>,
    /// RequestRedirect on the backendRef itself: requests that pick this
    /// backend are answered with it.
    pub redirect: Option<Redirect>,
    /// Why the reference cannot be served (kind, missing Service, no
    /// ReferenceGrant, a filter we do not support): its share of requests
    /// gets 500.
    pub invalid: Option<String>,
    /// What its endpoints speak (the Service port's `appProtocol`).
    pub protocol: BackendProtocol,
    /// How its endpoints are picked, ejected and limited.
    pub traffic: Arc<TrafficPolicy>,
}

/// How one backend's endpoints are picked, ejected and limited: the
/// gateway's own settings, or a BackendTrafficPolicy on its Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    /// `None`: the gateway's `--load-balancing`.
    pub balancing: Option<crate::proxy::LoadBalancing>,
    /// Consistent hashing on this key, ahead of `balancing` (which takes
    /// requests without one).
    pub hash_on: Option<HashOn>,
    pub outlier: OutlierDetection,
    /// Requests each worker may have in flight to one endpoint; `None`:
    /// the gateway's `--max-requests-per-endpoint`.
    pub max_requests_per_endpoint: Option<u32>,
    /// Requests each worker may have in flight to the whole backend.
    pub max_requests: Option<u32>,
    /// HTTP/1.1 connections each worker may have open (in use or pooled)
    /// to the whole backend; at it, a pooled one is closed for room, or
    /// the request gets 503.
    pub max_connections: Option<u32>,
    /// Connections each worker may have still connecting to the whole
    /// backend: the requests waiting for them are the pending ones.
    pub max_pending_requests: Option<u32>,
    /// Active health checks, when the policy asks for them.
    pub active: Option<Arc<ActiveHealthCheck>>,
    /// The policy object that set this, `namespace/name` (none: defaults).
    pub source: Option<Arc<str>>,
}

/// What a consistent hash is taken over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// The client's address.
    SourceIp,
    /// A request header's values.
    Header(HeaderName),
    /// A request cookie's value.
    Cookie(String),
}

/// An active health check of each endpoint every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveHealthCheck {
    /// What a check does, and what passes.
    pub probe: CheckProbe,
    pub interval: std::time::Duration,
    /// A check must pass or fail within this.
    pub timeout: std::time::Duration,
    /// Passes in a row that bring an endpoint back.
    pub healthy_threshold: u32,
    /// Failures in a row that take it out.
    pub unhealthy_threshold: u32,
}

/// What an active check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckProbe {
    /// `GET path`; the answer's status line must come in time, with a
    /// status in `expected_statuses` (empty: 200 only).
    Http {
        path: String,
        /// The `Host` field (default: the endpoint's address).
        host: Option<String>,
        expected_statuses: Vec<u16>,
    },
    /// A TCP connection established in time passes; it is closed at once.
    Tcp,
}

impl ActiveHealthCheck {
    /// Whether an HTTP check's answer with `status` passes.
    pub fn expects(&self, status: u16) -> bool {
        match &self.probe {
            CheckProbe::Http {
                expected_statuses, ..
            } if !expected_statuses.is_empty() => expected_statuses.contains(&status),
            CheckProbe::Http { .. } => status == 200,
            CheckProbe::Tcp => true,
        }
    }
}

/// Passive health (outlier detection), Envoy's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// 5xx answers (or resets before an answer) in a row that eject.
    pub consecutive_errors: u32,
    /// The first ejection's length; it doubles for each one that follows
    /// without a success between.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// At most this share of the endpoints is ejected at once (one always
    /// may be).
    pub max_ejection_percent: u8,
    /// An endpoint whose typical latency is this many times its
    /// backend's median (and [`Self::latency_margin`] above it) is ejected
    /// as slow; 0 turns the rule off.
    pub latency_factor: u32,
    /// How far above the median a slow endpoint must be, so that noise
    /// in sub-millisecond answers never ejects.
    pub latency_margin: Duration,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_errors: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
            latency_factor: 3,
            latency_margin: Duration::from_millis(10),
        }
    }
}

/// The protocol a backend speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendProtocol {
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (`kubernetes.io/h2c`).
    H2c,
}

impl Backend {
    pub fn new(name: impl Into<Arc<str>>, weight: u32, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            weight,
            endpoints,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_weights_and_interleaves() {
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        let s = smooth_schedule(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        // Smooth: the heavy backend never takes more than 3 in a row here.
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        assert!(smooth_schedule(&[0, 0]).is_empty());
        assert_eq!(smooth_schedule(&[0, 3]), vec![1, 1, 1]);
        assert!(smooth_schedule(&[1_000_000, 1]).len() <= 1001);
    }

    #[test]
    fn prefix_replacement_keeps_the_rest_of_the_path() {
        let m = PathModifier::ReplacePrefixMatch("/one".into());
        assert_eq!(m.apply("/prefix/one/two", Some("/prefix/one")), "/one/two");
        assert_eq!(m.apply("/prefix", Some("/prefix")), "/one");
        let root = PathModifier::ReplacePrefixMatch("/".into());
        assert_eq!(
            root.apply("/strip-prefix/three", Some("/strip-prefix")),
            "/three"
        );
        assert_eq!(root.apply("/strip-prefix", Some("/strip-prefix")), "/");
        assert_eq!(
            PathModifier::ReplaceFullPath("/full".into()).apply("/x/y", Some("/x")),
            "/full"
        );
    }

    #[test]
    fn header_modifier_sets_adds_and_removes() {
        let m = HeaderModifier {
            set: vec![(
                HeaderName::from_static("x-set"),
                HeaderValue::from_static("new"),
            )],
            add: vec![(
                HeaderName::from_static("x-add"),
                HeaderValue::from_static("two"),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("one"));
        h.insert("x-gone", HeaderValue::from_static("x"));
        m.apply(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-add"], "one,two");
        assert_eq!(h["x-set"], "new");
    }

    #[test]
    fn the_most_specific_listener_wins() {
        let listener = |name: &str, host: Option<&str>| Listener {
            name: name.into(),
            hostname: host.map(str::to_owned),
            routes: RouteTable::new(Vec::new()),
        };
        let port = PortListeners::new(vec![
            listener("any", None),
            listener("wild", Some("*.example.com")),
            listener("exact", Some("a.example.com")),
        ]);
        let pick = |h| port.select(h).map(|l| l.name.as_str());
        assert_eq!(pick("a.example.com:80"), Some("exact"));
        assert_eq!(pick("B.example.com"), Some("wild"));
        assert_eq!(pick("example.com"), Some("any"));
    }
}
