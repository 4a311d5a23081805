//! BackendTrafficPolicy (`gateway.rauta.dev/v1alpha1`): what Gateway API
//! has no field for — the load-balancing algorithm, passive health
//! (outlier detection) and circuit breakers — attached by `targetRefs` to
//! Services, as Gateway API policy attachment (GEP-713) describes. Field
//! names follow Envoy Gateway's BackendTrafficPolicy where it has them.
//!
//! A policy targets Services in its own namespace. When two target the
//! same Service, the older one (then the first by name) holds it and the
//! other is `Conflicted` for it. The CRD in `deploy/` is generated from
//! these types (`BackendTrafficPolicy::crd()`); a test keeps them equal.

use crate::compile::{namespace_of, object_id, parse_duration, CompileError};
use crate::manifests::Sourced;
use crate::verdict::{Check, ObjectRef, PolicyVerdict};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use rauta_dataplane::config::{
    ActiveHealthCheck, CheckProbe, HashOn, OutlierDetection, TrafficPolicy,
};
use rauta_dataplane::proxy::LoadBalancing;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How a set of Services' endpoints are picked, watched and limited.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.rauta.dev",
    version = "v1alpha1",
    kind = "BackendTrafficPolicy",
    plural = "backendtrafficpolicies",
    shortname = "btp",
    status = "BackendTrafficPolicyStatus",
    namespaced,
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicySpec {
    /// The Services (group "", kind Service, in the policy's namespace)
    /// this policy applies to.
    pub target_refs: Vec<PolicyTargetReference>,
    /// How an endpoint is picked for each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// When endpoints leave the rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Requests in flight each worker allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// An object a policy attaches to (GEP-713's LocalPolicyTargetReference).
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// "" (the core group).
    #[serde(default)]
    pub group: String,
    /// `Service`.
    pub kind: String,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(rename = "type")]
    pub type_: LoadBalancerType,
    /// The key, for `type: ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// What a consistent hash is taken over.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    #[serde(rename = "type")]
    pub type_: ConsistentHashType,
    /// For `type: Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedKey>,
    /// For `type: Cookie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<NamedKey>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, Default, PartialEq, Eq)]
pub enum ConsistentHashType {
    /// The client's address.
    #[default]
    #[serde(rename = "SourceIP")]
    SourceIp,
    /// A request header (requests without it are balanced by least request).
    Header,
    /// A request cookie (requests without it are balanced by least request;
    /// none is set).
    Cookie,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamedKey {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, Default, PartialEq, Eq)]
pub enum LoadBalancerType {
    /// Power of two choices over latency × requests in flight.
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
    /// The same key to the same endpoint (`consistentHash`).
    ConsistentHash,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Checks each worker sends to every endpoint (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealthCheckSpec>,
    /// Outlier detection on live traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveHealthCheck>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActiveHealthCheckSpec {
    #[serde(rename = "type")]
    pub type_: ActiveHealthCheckType,
    /// Between checks of one endpoint (default 3s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// For the answer's status line (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Passes in a row that bring an endpoint back (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Failures in a row that take it out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// The request, for `type: HTTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, Default, PartialEq, Eq)]
pub enum ActiveHealthCheckType {
    /// `GET path`; a status in `expectedStatuses` passes.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// A TCP connection established within `timeout` passes.
    #[serde(rename = "TCP")]
    Tcp,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// The path checked, e.g. `/healthz`.
    pub path: String,
    /// The `Host` field (default: the endpoint's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Statuses that pass (default: 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<u16>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PassiveHealthCheck {
    /// 5xx answers or resets in a row that eject an endpoint (default 5).
    #[serde(
        rename = "consecutive5XxErrors",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// The first ejection's length, doubled for each one that follows
    /// without a success (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// The longest an ejection lasts (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
    /// At most this share of the endpoints is ejected at once; one may
    /// always be (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u8>,
    /// An endpoint whose typical latency is this many times the median of
    /// the Service's others (and `latencyMargin` above it) is ejected as
    /// slow (default 3; 0 turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_factor: Option<u32>,
    /// How far above the median a slow endpoint's latency must be
    /// (default 10ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_margin: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Requests in flight to all of the Service's endpoints, per worker;
    /// more get 503 at once (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u32>,
    /// Requests in flight to one endpoint, per worker (default: the
    /// gateway's `--max-requests-per-endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_endpoint: Option<u32>,
    /// HTTP/1.1 connections open (in use or pooled) to all of the
    /// Service's endpoints, per worker; at it, a pooled one is closed for
    /// room, else 503 at once (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection still being opened to the
    /// Service, per worker; more get 503 at once (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
}

/// What the controller says about a policy.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct BackendTrafficPolicyStatus {
    /// `Accepted`: True when the policy is valid and holds every Service
    /// it targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CustomResourceDefinition, as YAML (`rauta crds`; deploy/ has it).
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    use kube::CustomResourceExt;
    let yaml = serde_saphyr::to_string(&BackendTrafficPolicy::crd())?;
    Ok(format!(
        "# BackendTrafficPolicy: load balancing, passive health and circuit breakers\n\
         # for Services (docs/operations.md). Generated by `rauta crds`.\n{yaml}"
    ))
}

/// The policies in force, by the Service they hold.
#[derive(Debug, Default)]
pub(crate) struct Attached {
    by_service: HashMap<(String, String), Arc<TrafficPolicy>>,
}

impl Attached {
    /// The policy on Service `namespace/name`, if one holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<TrafficPolicy>> {
        self.by_service
            .get(&(namespace.to_owned(), name.to_owned()))
    }
}

fn field_error(
    policy: &Sourced<BackendTrafficPolicy>,
    field: &str,
    message: String,
) -> CompileError {
    CompileError {
        origin: policy.origin.clone(),
        object: format!(
            "BackendTrafficPolicy {}",
            object_id(&policy.object.metadata)
        ),
        field: field.to_owned(),
        message,
    }
}

fn duration(
    policy: &Sourced<BackendTrafficPolicy>,
    field: &str,
    text: Option<&String>,
    default: Duration,
) -> Result<Duration, CompileError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let parsed = parse_duration(text).map_err(|message| field_error(policy, field, message))?;
    if parsed.is_zero() {
        return Err(field_error(policy, field, "must be more than 0s".into()));
    }
    Ok(parsed)
}

fn positive(
    policy: &Sourced<BackendTrafficPolicy>,
    field: &str,
    value: Option<u32>,
) -> Result<Option<u32>, CompileError> {
    match value {
        Some(0) => Err(field_error(policy, field, "must be at least 1".into())),
        other => Ok(other),
    }
}

/// A policy's settings, checked (its targets are not).
fn settings(policy: &Sourced<BackendTrafficPolicy>) -> Result<TrafficPolicy, CompileError> {
    let spec = &policy.object.spec;
    for (i, target) in spec.target_refs.iter().enumerate() {
        if !target.group.is_empty() || target.kind != "Service" {
            return Err(field_error(
                policy,
                &format!("spec.targetRefs[{i}]"),
                format!(
                    "{}/{} is not a Service: only Services (group \"\") take this policy",
                    target.group, target.kind
                ),
            ));
        }
    }
    if spec.target_refs.is_empty() {
        return Err(field_error(
            policy,
            "spec.targetRefs",
            "names no Service".into(),
        ));
    }
    let defaults = OutlierDetection::default();
    let passive = spec.health_check.as_ref().and_then(|h| h.passive.as_ref());
    let outlier = match passive {
        None => defaults,
        Some(p) => {
            let at = "spec.healthCheck.passive";
            let outlier = OutlierDetection {
                consecutive_errors: positive(
                    policy,
                    &format!("{at}.consecutive5XxErrors"),
                    p.consecutive_5xx_errors,
                )?
                .unwrap_or(defaults.consecutive_errors),
                base_ejection: duration(
                    policy,
                    &format!("{at}.baseEjectionTime"),
                    p.base_ejection_time.as_ref(),
                    defaults.base_ejection,
                )?,
                max_ejection: duration(
                    policy,
                    &format!("{at}.maxEjectionTime"),
                    p.max_ejection_time.as_ref(),
                    defaults.max_ejection,
                )?,
                max_ejection_percent: p
                    .max_ejection_percent
                    .unwrap_or(defaults.max_ejection_percent),
                latency_factor: p.latency_factor.unwrap_or(defaults.latency_factor),
                latency_margin: duration(
                    policy,
                    &format!("{at}.latencyMargin"),
                    p.latency_margin.as_ref(),
                    defaults.latency_margin,
                )?,
            };
            if outlier.max_ejection_percent > 100 {
                return Err(field_error(
                    policy,
                    &format!("{at}.maxEjectionPercent"),
                    format!("{} is more than 100", outlier.max_ejection_percent),
                ));
            }
            if outlier.max_ejection < outlier.base_ejection {
                return Err(field_error(
                    policy,
                    &format!("{at}.maxEjectionTime"),
                    "is shorter than baseEjectionTime".into(),
                ));
            }
            outlier
        }
    };
    let active = spec
        .health_check
        .as_ref()
        .and_then(|h| h.active.as_ref())
        .map(|a| active_check(policy, a))
        .transpose()?;
    let breaker = spec.circuit_breaker.clone().unwrap_or_default();
    let at = "spec.circuitBreaker";
    let (balancing, hash_on) = match &spec.load_balancer {
        None => (None, None),
        Some(lb) => match lb.type_ {
            LoadBalancerType::LeastRequest => (Some(LoadBalancing::LeastRequest), None),
            LoadBalancerType::RoundRobin => (Some(LoadBalancing::RoundRobin), None),
            LoadBalancerType::ConsistentHash => (None, Some(hash_on(policy, lb)?)),
        },
    };
    Ok(TrafficPolicy {
        balancing,
        hash_on,
        outlier,
        max_requests: positive(
            policy,
            &format!("{at}.maxParallelRequests"),
            breaker.max_parallel_requests,
        )?,
        max_requests_per_endpoint: positive(
            policy,
            &format!("{at}.maxRequestsPerEndpoint"),
            breaker.max_requests_per_endpoint,
        )?,
        max_connections: positive(
            policy,
            &format!("{at}.maxConnections"),
            breaker.max_connections,
        )?,
        max_pending_requests: positive(
            policy,
            &format!("{at}.maxPendingRequests"),
            breaker.max_pending_requests,
        )?,
        active,
        source: Some(object_id(&policy.object.metadata).into()),
    })
}

fn hash_on(
    policy: &Sourced<BackendTrafficPolicy>,
    lb: &LoadBalancer,
) -> Result<HashOn, CompileError> {
    let at = "spec.loadBalancer.consistentHash";
    let hash = lb
        .consistent_hash
        .as_ref()
        .ok_or_else(|| field_error(policy, at, "type ConsistentHash needs it".into()))?;
    let named = |key: Option<&NamedKey>, field: &str| {
        key.map(|k| k.name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                field_error(
                    policy,
                    &format!("{at}.{field}.name"),
                    format!("type {:?} needs it", hash.type_),
                )
            })
    };
    Ok(match hash.type_ {
        ConsistentHashType::SourceIp => HashOn::SourceIp,
        ConsistentHashType::Header => {
            let name = named(hash.header.as_ref(), "header")?;
            HashOn::Header(http::HeaderName::try_from(name.as_str()).map_err(|_| {
                field_error(
                    policy,
                    &format!("{at}.header.name"),
                    format!("{name:?} is not a header name"),
                )
            })?)
        }
        ConsistentHashType::Cookie => HashOn::Cookie(named(hash.cookie.as_ref(), "cookie")?),
    })
}

fn active_check(
    policy: &Sourced<BackendTrafficPolicy>,
    spec: &ActiveHealthCheckSpec,
) -> Result<Arc<ActiveHealthCheck>, CompileError> {
    let at = "spec.healthCheck.active";
    let field = |name: &str| format!("{at}.{name}");
    let probe = match spec.type_ {
        ActiveHealthCheckType::Tcp => CheckProbe::Tcp,
        ActiveHealthCheckType::Http => {
            let http = spec
                .http
                .as_ref()
                .ok_or_else(|| field_error(policy, &field("http"), "type HTTP needs it".into()))?;
            if !http.path.starts_with('/') {
                return Err(field_error(
                    policy,
                    &field("http.path"),
                    format!("{:?} does not start with /", http.path),
                ));
            }
            let expected = http.expected_statuses.clone().unwrap_or_default();
            if let Some((i, status)) = expected
                .iter()
                .enumerate()
                .find(|(_, s)| !(100..=599).contains(*s))
            {
                return Err(field_error(
                    policy,
                    &field(&format!("http.expectedStatuses[{i}]")),
                    format!("{status} is not an HTTP status"),
                ));
            }
            CheckProbe::Http {
                path: http.path.clone(),
                host: http.hostname.clone(),
                expected_statuses: expected,
            }
        }
    };
    Ok(Arc::new(ActiveHealthCheck {
        probe,
        interval: duration(
            policy,
            &field("interval"),
            spec.interval.as_ref(),
            Duration::from_secs(3),
        )?,
        timeout: duration(
            policy,
            &field("timeout"),
            spec.timeout.as_ref(),
            Duration::from_secs(1),
        )?,
        healthy_threshold: positive(policy, &field("healthyThreshold"), spec.healthy_threshold)?
            .unwrap_or(1),
        unhealthy_threshold: positive(
            policy,
            &field("unhealthyThreshold"),
            spec.unhealthy_threshold,
        )?
        .unwrap_or(3),
    }))
}

/// Check every policy and attach each to the Services it targets that
/// exist (`services`, by namespace and name). An invalid policy is an
/// error when `reject_invalid`, else it attaches nowhere and its verdict
/// says why.
pub(crate) fn attach(
    policies: &[Sourced<BackendTrafficPolicy>],
    services: &HashSet<(&str, &str)>,
    reject_invalid: bool,
) -> Result<(Attached, Vec<PolicyVerdict>), CompileError> {
    // Older first, then by name: the order conflicts are settled in.
    let mut order: Vec<&Sourced<BackendTrafficPolicy>> = policies.iter().collect();
    order.sort_by_key(|p| {
        (
            p.object.metadata.creation_timestamp.clone().map(|t| t.0),
            namespace_of(&p.object.metadata),
            p.object.metadata.name.clone(),
        )
    });
    let mut attached = Attached::default();
    let mut verdicts = Vec::new();
    for policy in order {
        let meta = &policy.object.metadata;
        let ns = namespace_of(meta);
        let object = ObjectRef {
            namespace: ns.to_owned(),
            name: meta.name.clone().unwrap_or_default(),
            generation: policy.object.metadata.generation,
        };
        let traffic = match settings(policy) {
            Ok(traffic) => Arc::new(traffic),
            Err(error) if reject_invalid => return Err(error),
            Err(error) => {
                verdicts.push(PolicyVerdict {
                    object,
                    accepted: Check::no("Invalid", format!("{}: {}", error.field, error.message)),
                });
                continue;
            }
        };
        let mut missing = Vec::new();
        let mut conflicted = Vec::new();
        for target in &policy.object.spec.target_refs {
            let key = (ns.to_owned(), target.name.clone());
            if !services.contains(&(ns, target.name.as_str())) {
                missing.push(target.name.as_str());
            } else if let Some(holder) = attached.by_service.get(&key) {
                conflicted.push(format!(
                    "{} (held by {})",
                    target.name,
                    holder.source.as_deref().unwrap_or_default()
                ));
            } else {
                attached.by_service.insert(key, traffic.clone());
            }
        }
        let accepted = if !conflicted.is_empty() {
            Check::no(
                "Conflicted",
                format!("an older policy holds Service {}", conflicted.join(", ")),
            )
        } else if !missing.is_empty() {
            Check::no(
                "TargetNotFound",
                format!("no Service {} in {ns}", missing.join(", ")),
            )
        } else {
            Check::yes("Accepted", "applied to every Service it targets")
        };
        verdicts.push(PolicyVerdict { object, accepted });
    }
    Ok((attached, verdicts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::Manifests;
    use std::path::Path;

    fn load(text: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_text(Path::new("policy.yaml"), text).unwrap();
        m
    }

    const POLICY: &str = "apiVersion: gateway.rauta.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: web, namespace: apps}
spec:
  targetRefs: [{group: '', kind: Service, name: web}, {group: '', kind: Service, name: gone}]
  loadBalancer: {type: RoundRobin}
  healthCheck:
    active:
      type: HTTP
      interval: 500ms
      unhealthyThreshold: 2
      http: {path: /healthz, expectedStatuses: [200, 204]}
    passive: {consecutive5XxErrors: 3, baseEjectionTime: 2s, maxEjectionPercent: 100, latencyFactor: 5}
  circuitBreaker: {maxParallelRequests: 100, maxRequestsPerEndpoint: 10, maxConnections: 50, maxPendingRequests: 5}
";

    #[test]
    fn a_policy_attaches_to_its_services_with_its_settings() {
        let m = load(POLICY);
        let services = HashSet::from([("apps", "web")]);
        let (attached, verdicts) = attach(&m.backend_policies, &services, true).unwrap();
        let web = attached.get("apps", "web").expect("attached");
        assert_eq!(web.balancing, Some(LoadBalancing::RoundRobin));
        assert_eq!(web.outlier.consecutive_errors, 3);
        assert_eq!(web.outlier.base_ejection, Duration::from_secs(2));
        assert_eq!(web.outlier.max_ejection, Duration::from_secs(30), "default");
        assert_eq!(web.outlier.max_ejection_percent, 100);
        assert_eq!(web.outlier.latency_factor, 5);
        assert_eq!(
            web.outlier.latency_margin,
            Duration::from_millis(10),
            "default"
        );
        assert_eq!(web.max_requests, Some(100));
        assert_eq!(web.max_requests_per_endpoint, Some(10));
        assert_eq!(web.max_connections, Some(50));
        assert_eq!(web.max_pending_requests, Some(5));
        assert_eq!(web.source.as_deref(), Some("apps/web"));
        let active = web.active.as_deref().expect("active checks");
        assert!(
            matches!(&active.probe, CheckProbe::Http { path, .. } if path == "/healthz"),
            "{active:?}"
        );
        assert_eq!(active.interval, Duration::from_millis(500));
        assert_eq!(active.timeout, Duration::from_secs(1), "default");
        assert_eq!(
            (active.healthy_threshold, active.unhealthy_threshold),
            (1, 2)
        );
        assert!(active.expects(204) && !active.expects(503));
        let tcp = load(&POLICY.replace(
            "type: HTTP\n      interval: 500ms",
            "type: TCP\n      interval: 500ms",
        ));
        let (attached, _) = attach(&tcp.backend_policies, &services, true).unwrap();
        let active = attached.get("apps", "web").unwrap().active.clone().unwrap();
        assert_eq!(active.probe, CheckProbe::Tcp);
        assert!(attached.get("apps", "gone").is_none());
        assert_eq!(verdicts[0].accepted.reason, "TargetNotFound");
    }

    #[test]
    fn the_older_policy_holds_a_service_and_the_newer_is_conflicted() {
        let newer = POLICY
            .replace(
                "name: web, namespace: apps}",
                "name: web-2, namespace: apps, creationTimestamp: '2026-02-01T00:00:00Z'}",
            )
            .replace("type: RoundRobin", "type: LeastRequest");
        let older = POLICY.replace(
            "name: web, namespace: apps}",
            "name: web-1, namespace: apps, creationTimestamp: '2026-01-01T00:00:00Z'}",
        );
        let m = load(&format!("{newer}---\n{older}"));
        let services = HashSet::from([("apps", "web"), ("apps", "gone")]);
        let (attached, verdicts) = attach(&m.backend_policies, &services, true).unwrap();
        let web = attached.get("apps", "web").unwrap();
        assert_eq!(web.source.as_deref(), Some("apps/web-1"));
        let verdict = |name: &str| {
            verdicts
                .iter()
                .find(|v| v.object.name == name)
                .map(|v| (v.accepted.ok, v.accepted.reason))
                .unwrap()
        };
        assert_eq!(verdict("web-1"), (true, "Accepted"));
        assert_eq!(verdict("web-2"), (false, "Conflicted"));
    }

    #[test]
    fn consistent_hashing_takes_a_key() {
        let services = HashSet::from([("apps", "web")]);
        let with = |lb: &str| {
            let text = POLICY.replace("loadBalancer: {type: RoundRobin}", lb);
            attach(&load(&text).backend_policies, &services, true)
                .map(|(attached, _)| attached.get("apps", "web").unwrap().hash_on.clone())
                .map_err(|e| e.field)
        };
        assert_eq!(
            with("loadBalancer: {type: ConsistentHash, consistentHash: {type: SourceIP}}"),
            Ok(Some(HashOn::SourceIp))
        );
        assert_eq!(
            with("loadBalancer: {type: ConsistentHash, consistentHash: {type: Header, header: {name: X-User}}}"),
            Ok(Some(HashOn::Header(http::HeaderName::from_static("x-user"))))
        );
        assert_eq!(
            with("loadBalancer: {type: ConsistentHash, consistentHash: {type: Cookie, cookie: {name: session}}}"),
            Ok(Some(HashOn::Cookie("session".into())))
        );
        assert_eq!(
            with("loadBalancer: {type: ConsistentHash, consistentHash: {type: Header}}"),
            Err("spec.loadBalancer.consistentHash.header.name".into())
        );
        assert_eq!(
            with("loadBalancer: {type: ConsistentHash}"),
            Err("spec.loadBalancer.consistentHash".into())
        );
    }

    #[test]
    fn a_bad_field_is_named_and_excluded_or_rejected() {
        let bad = POLICY.replace("maxEjectionPercent: 100", "maxEjectionPercent: 101");
        let m = load(&bad);
        let services = HashSet::from([("apps", "web")]);
        let error = attach(&m.backend_policies, &services, true).unwrap_err();
        assert_eq!(error.field, "spec.healthCheck.passive.maxEjectionPercent");
        assert!(
            error.to_string().contains("BackendTrafficPolicy apps/web"),
            "{error}"
        );
        let (attached, verdicts) = attach(&m.backend_policies, &services, false).unwrap();
        assert!(attached.get("apps", "web").is_none());
        assert_eq!(verdicts[0].accepted.reason, "Invalid");
        let relative = POLICY.replace("path: /healthz", "path: healthz");
        let error = attach(&load(&relative).backend_policies, &services, true).unwrap_err();
        assert_eq!(error.field, "spec.healthCheck.active.http.path");
        let wrong_kind =
            POLICY.replace("kind: Service, name: web}", "kind: Deployment, name: web}");
        let error = attach(&load(&wrong_kind).backend_policies, &services, true).unwrap_err();
        assert_eq!(error.field, "spec.targetRefs[0]");
        // Unknown fields and types are the parser's, with the path.
        let typo = POLICY.replace(
            "loadBalancer: {type: RoundRobin}",
            "loadBalancer: {type: Random}",
        );
        let mut m = Manifests::default();
        let error = m
            .add_text(Path::new("p.yaml"), &typo)
            .unwrap_err()
            .to_string();
        assert!(error.contains("spec.loadBalancer.type"), "{error}");
    }
}
