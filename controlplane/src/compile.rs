//! Gateway API objects in, the workers' [`GatewayConfig`] out.
//!
//! The compiler follows the specification's attachment rules: a route
//! attaches to the listeners its `parentRefs` name (section name, port), that
//! allow its namespace and kind, and whose hostname intersects its own;
//! backend references resolve through Services and EndpointSlices, across
//! namespaces only with a ReferenceGrant. What a user got wrong in a field
//! (a bad regular expression, a relative path) is an error that rejects the
//! whole set; what the specification answers at request time (a missing
//! Service: 500; an unsupported filter: 500) becomes part of the table and a
//! warning.

use crate::endpoints::{EndpointRules, OwnSockets};
use crate::manifests::{Manifests, Origin, Sourced};
use crate::policy::{self, Attached};
use crate::verdict::{
    Check, GatewayVerdict, ListenerVerdict, ObjectRef, ParentVerdict, RouteVerdict, Verdicts,
};
use gateway_api::experimental::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesKinds,
    GatewayListenersAllowedRoutesNamespacesFrom as From,
};
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesBackendRefsFilters, HttpRouteRulesFilters,
    HttpRouteRulesFiltersRequestRedirectScheme as Scheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesRetry, HttpRouteRulesSessionPersistence,
    HttpRouteRulesSessionPersistenceCookieConfigLifetimeType as Lifetime,
    HttpRouteRulesSessionPersistenceType as SessionType, HttpRouteRulesTimeouts,
};
use http::header::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointConditions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rauta_dataplane::config::{
    hostname_matches, Backend, BackendProtocol, Backends, Cors, GatewayConfig, HeaderModifier,
    Listener, Mirror, PathModifier, PortListeners, Redirect, RetryPolicy, RouteTimeouts,
    RuleAction, SessionCarrier, SessionPersistence, TrafficPolicy, UrlRewrite,
};
use rauta_dataplane::routes::{PathMatch, Route, RouteMatch, RouteTable, ValueMatch};
use regex::Regex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Which Gateways this instance serves.
#[derive(Clone, Debug)]
pub struct Selection {
    /// `spec.gatewayClassName`s of the Gateways to serve.
    pub gateway_classes: Vec<String>,
    /// `namespace/name` of the Gateways to serve; empty: all of the classes.
    pub gateways: Vec<String>,
    /// The gateway's own sockets, which no endpoint may be.
    pub own: OwnSockets,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            gateway_classes: vec!["rauta".into()],
            gateways: Vec::new(),
            own: OwnSockets::default(),
        }
    }
}

impl Selection {
    fn serves(&self, gateway: &Gateway) -> bool {
        self.gateway_classes
            .contains(&gateway.spec.gateway_class_name)
            && (self.gateways.is_empty() || self.gateways.contains(&object_id(&gateway.metadata)))
    }
}

/// What to do with an object whose fields the data path cannot take (an
/// invalid regular expression, a relative path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInvalid {
    /// Reject the whole set (a directory of files: the user fixes the file
    /// and the last good set keeps serving meanwhile).
    RejectAll,
    /// Leave that object out and report it in its status (a cluster: one
    /// tenant's mistake must not freeze everyone's routes).
    Exclude,
}

/// A field a user must fix; the set is rejected.
#[derive(Debug, Error)]
#[error("{origin}: {object}: field `{field}`: {message}")]
pub struct CompileError {
    pub origin: Origin,
    pub object: String,
    pub field: String,
    pub message: String,
}

/// A compiled configuration and what the compiler noticed.
pub struct Compiled {
    pub config: GatewayConfig,
    /// Problems the specification answers at request time, and objects
    /// that attach nowhere.
    pub warnings: Vec<String>,
    /// Listeners served, `namespace/gateway/listener`, and their ports.
    pub listeners: Vec<(String, u16)>,
    /// The configuration as JSON, for the admin server's `/config`.
    pub summary: serde_json::Value,
    /// Per-object outcomes, for status.
    pub verdicts: Verdicts,
}

/// HTTPRoute is the only route kind Rauta serves.
const ROUTE_KIND: &str = "HTTPRoute";

/// Compile `manifests` for the Gateways `selection` picks.
pub fn compile(
    manifests: &Manifests,
    selection: &Selection,
    on_invalid: OnInvalid,
) -> Result<Compiled, CompileError> {
    let services: HashSet<(&str, &str)> = manifests
        .services
        .iter()
        .map(|s| {
            let meta = &s.object.metadata;
            (namespace_of(meta), meta.name.as_deref().unwrap_or_default())
        })
        .collect();
    let (policies, policy_verdicts) = policy::attach(
        &manifests.backend_policies,
        &services,
        on_invalid == OnInvalid::RejectAll,
    )?;
    let rules = EndpointRules {
        own: &selection.own,
        listener_ports: manifests
            .gateways
            .iter()
            .filter(|g| selection.serves(&g.object))
            .flat_map(|g| &g.object.spec.listeners)
            .filter_map(|l| u16::try_from(l.port).ok())
            .collect(),
        // A directory of files is a developer's or a test's: loopback
        // backends are theirs to use.
        allow_loopback: on_invalid == OnInvalid::RejectAll,
    };
    let mut warnings = refused_endpoints(manifests, &rules);
    let world = World::new(manifests, policies, rules);

    // Validate every route's rules, attached or not: a typo in a route that
    // attaches nowhere yet is still a typo.
    let mut invalid_routes: HashMap<String, CompileError> = HashMap::new();
    for route in &manifests.routes {
        for (index, rule) in rules_of(&route.object).iter().enumerate() {
            if let Err(error) = compile_rule(&world, route, index, rule, &mut Vec::new()) {
                if on_invalid == OnInvalid::RejectAll {
                    return Err(error);
                }
                warnings.push(format!("{error}; the route is not served"));
                invalid_routes.insert(object_id(&route.object.metadata), error);
                break;
            }
        }
    }

    let mut listeners: Vec<ListenerSpec<'_>> = Vec::new();
    // Served Gateways and their verdicts, index for index.
    let mut served_gateways: Vec<&Gateway> = Vec::new();
    let mut gateway_verdicts = Vec::new();
    for gateway in &manifests.gateways {
        let g = &gateway.object;
        if !selection.serves(g) {
            continue;
        }
        let id = object_id(&g.metadata);
        let mut verdicts = Vec::new();
        for (index, listener) in g.spec.listeners.iter().enumerate() {
            let verdict = judge_listener(listener, &g.spec.listeners[..index]);
            let port = u16::try_from(listener.port).ok().filter(|&p| p != 0);
            if verdict.serves() {
                let port = port.ok_or_else(|| CompileError {
                    origin: gateway.origin.clone(),
                    object: format!("Gateway {id}"),
                    field: format!("spec.listeners[{index}].port"),
                    message: format!("{} is not a port", listener.port),
                })?;
                listeners.push(ListenerSpec {
                    gateway,
                    listener,
                    port,
                    verdict: (gateway_verdicts.len(), index),
                    routes: Vec::new(),
                    described: Vec::new(),
                });
            } else {
                warnings.push(format!(
                    "Gateway {id}: listener {} ({}) not served: {}",
                    listener.name,
                    listener.protocol,
                    if verdict.accepted.ok {
                        &verdict.conflicted.message
                    } else {
                        &verdict.accepted.message
                    }
                ));
            }
            verdicts.push(verdict);
        }
        let programmed = verdicts.iter().filter(|l| l.programmed.ok).count();
        served_gateways.push(g);
        gateway_verdicts.push(GatewayVerdict {
            object: object_ref(&g.metadata),
            accepted: if programmed > 0 || verdicts.is_empty() {
                Check::yes("Accepted", "the Gateway is served by Rauta")
            } else {
                Check::no("ListenersNotValid", "no listener can be served")
            },
            programmed: if programmed > 0 {
                Check::yes("Programmed", format!("{programmed} listener(s) served"))
            } else {
                Check::no("Invalid", "no listener is served")
            },
            listeners: verdicts,
        });
    }

    let mut route_verdicts = Vec::new();
    for route in &manifests.routes {
        let r = &route.object;
        let route_ns = namespace_of(&r.metadata);
        let route_id = object_id(&r.metadata);
        let invalid = invalid_routes.get(&route_id);
        let resolved_refs = judge_refs(&world, r);
        let mut parents = Vec::new();
        for parent in r.spec.parent_refs.iter().flatten() {
            if parent.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
                || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
            {
                continue;
            }
            let parent_ns = parent.namespace.as_deref().unwrap_or(route_ns);
            let Some(gateway_index) = gateway_verdicts
                .iter()
                .position(|g| g.object.name == parent.name && g.object.namespace == parent_ns)
            else {
                // Not a Gateway this instance serves: another controller's
                // business (or none's), so no status of ours either.
                continue;
            };
            // Listeners not served (other protocols, conflicts) count as
            // named too: the route found its parent, which does not take it.
            let named = served_gateways[gateway_index]
                .spec
                .listeners
                .iter()
                .filter(|l| names(parent, l))
                .count();
            let mut allowed = 0;
            let mut attached = 0;
            if invalid.is_none() {
                for spec in listeners.iter_mut() {
                    if spec.verdict.0 != gateway_index || !names(parent, spec.listener) {
                        continue;
                    }
                    if !world.allows(spec, route_ns) {
                        continue;
                    }
                    allowed += 1;
                    let Some(hostnames) = intersect(
                        spec.listener.hostname.as_deref(),
                        r.spec.hostnames.as_deref(),
                    ) else {
                        continue;
                    };
                    let mut rules = Vec::new();
                    for (index, rule) in rules_of(r).iter().enumerate() {
                        rules.push(compile_rule(&world, route, index, rule, &mut warnings)?);
                    }
                    spec.described
                        .push(describe_route(&route_id, &hostnames, &rules));
                    spec.routes.push(Route {
                        name: route_id.clone(),
                        created: r
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .map_or(0, |t| t.0.as_second()),
                        hostnames,
                        rules,
                    });
                    gateway_verdicts[gateway_index].listeners[spec.verdict.1].attached_routes += 1;
                    attached += 1;
                }
            }
            let accepted = match invalid {
                Some(error) => Check::no(
                    "UnsupportedValue",
                    format!("field `{}`: {}", error.field, error.message),
                ),
                None if named == 0 => Check::no(
                    "NoMatchingParent",
                    "no listener matches the parentRef's sectionName and port",
                ),
                None if allowed == 0 => Check::no(
                    "NotAllowedByListeners",
                    "no listener the parentRef names allows this route's kind and namespace",
                ),
                None if attached == 0 => Check::no(
                    "NoMatchingListenerHostname",
                    "no listener's hostname intersects the route's hostnames",
                ),
                None => Check::yes("Accepted", format!("attached to {attached} listener(s)")),
            };
            parents.push(ParentVerdict {
                parent: parent.clone(),
                accepted,
                resolved_refs: resolved_refs.clone(),
            });
        }
        if parents.iter().all(|p| !p.accepted.ok) && invalid.is_none() {
            warnings.push(format!(
                "HTTPRoute {route_id} ({}): attaches to no served listener",
                route.origin
            ));
        }
        route_verdicts.push(RouteVerdict {
            object: object_ref(&r.metadata),
            parents,
        });
    }

    let mut ports: BTreeMap<u16, Vec<Listener>> = BTreeMap::new();
    let mut served = Vec::new();
    let mut described = Vec::new();
    for spec in listeners {
        let name = format!(
            "{}/{}",
            object_id(&spec.gateway.object.metadata),
            spec.listener.name
        );
        served.push((name.clone(), spec.port));
        described.push(serde_json::json!({
            "name": name,
            "port": spec.port,
            "hostname": spec.listener.hostname,
            "routes": spec.described,
        }));
        ports.entry(spec.port).or_default().push(Listener {
            name,
            hostname: spec.listener.hostname.clone(),
            routes: RouteTable::new(spec.routes),
        });
    }
    let config = GatewayConfig {
        ports: ports
            .into_iter()
            .map(|(port, l)| (port, PortListeners::new(l)))
            .collect(),
    };
    let summary = serde_json::json!({ "listeners": described, "warnings": warnings });
    Ok(Compiled {
        config,
        warnings,
        listeners: served,
        summary,
        verdicts: Verdicts {
            gateways: gateway_verdicts,
            routes: route_verdicts,
            policies: policy_verdicts,
        },
    })
}

/// Whether a parentRef's sectionName and port (where given) name `listener`.
fn names(parent: &HttpRouteParentRefs, listener: &GatewayListeners) -> bool {
    parent
        .section_name
        .as_ref()
        .is_none_or(|s| *s == listener.name)
        && parent.port.is_none_or(|p| p == listener.port)
}

/// A listener's conditions. `earlier` are the Gateway's listeners before it:
/// of two listeners on one port and hostname, the first keeps it.
fn judge_listener(listener: &GatewayListeners, earlier: &[GatewayListeners]) -> ListenerVerdict {
    let http = listener.protocol.eq_ignore_ascii_case("HTTP");
    let kinds = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.kinds.as_ref());
    let is_route_kind = |k: &GatewayListenersAllowedRoutesKinds| {
        k.kind == ROUTE_KIND && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
    };
    let supported_kinds = if http && kinds.is_none_or(|k| k.iter().any(is_route_kind)) {
        vec![ROUTE_KIND]
    } else {
        Vec::new()
    };
    let accepted = if http {
        Check::yes("Accepted", "HTTP listener")
    } else {
        Check::no(
            "UnsupportedProtocol",
            format!("protocol {} is not supported; HTTP is", listener.protocol),
        )
    };
    let resolved_refs = match kinds {
        Some(k) if http && !k.iter().all(is_route_kind) => Check::no(
            "InvalidRouteKinds",
            "only HTTPRoute (gateway.networking.k8s.io) is supported",
        ),
        _ => Check::yes("ResolvedRefs", "references resolved"),
    };
    // Of two listeners on one port, the first keeps it: another protocol
    // cannot share the port, the same protocol not the same hostname.
    let conflict = earlier.iter().find_map(|e| {
        if e.port != listener.port {
            None
        } else if !e.protocol.eq_ignore_ascii_case(&listener.protocol) {
            Some(Check::yes(
                "ProtocolConflict",
                format!(
                    "listener {} uses port {} for {}",
                    e.name, e.port, e.protocol
                ),
            ))
        } else if e.hostname == listener.hostname {
            Some(Check::yes(
                "HostnameConflict",
                format!(
                    "listener {} already serves port {} for this hostname",
                    e.name, e.port
                ),
            ))
        } else {
            None
        }
    });
    let programmed = if accepted.ok && conflict.is_none() {
        Check::yes("Programmed", "served by every worker")
    } else {
        Check::no("Invalid", "not served")
    };
    let conflicted = conflict.unwrap_or_else(|| Check::no("NoConflicts", "no conflicts"));
    ListenerVerdict {
        name: listener.name.clone(),
        accepted,
        resolved_refs,
        conflicted,
        programmed,
        supported_kinds,
        attached_routes: 0,
    }
}

/// A route's ResolvedRefs: the first backendRef that does not resolve.
fn judge_refs(world: &World<'_>, route: &HttpRoute) -> Check {
    let route_ns = namespace_of(&route.metadata);
    for rule in rules_of(route) {
        for backend in rule.backend_refs.iter().flatten() {
            if let Err(unresolved) = world.resolve(route_ns, backend) {
                return Check::no(unresolved.reason, unresolved.message);
            }
        }
    }
    Check::yes("ResolvedRefs", "every backendRef resolved")
}

fn object_ref(meta: &ObjectMeta) -> ObjectRef {
    ObjectRef {
        namespace: namespace_of(meta).to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        generation: meta.generation,
    }
}

/// A configuration that serves nothing.
pub fn empty() -> Compiled {
    Compiled {
        config: GatewayConfig {
            ports: BTreeMap::new().into_iter().collect(),
        },
        warnings: Vec::new(),
        listeners: Vec::new(),
        summary: serde_json::json!({ "listeners": [], "warnings": [] }),
        verdicts: Verdicts::default(),
    }
}

/// A route as attached to one listener, for `/config`.
fn describe_route(
    name: &str,
    hostnames: &[String],
    rules: &[(Vec<RouteMatch>, RuleAction)],
) -> serde_json::Value {
    let rules: Vec<serde_json::Value> = rules
        .iter()
        .map(|(matches, action)| {
            let matches: Vec<String> = matches.iter().map(|m| format!("{:?}", m.path)).collect();
            let backends: Vec<serde_json::Value> = action
                .backends
                .backends
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "name": &*b.name,
                        "weight": b.weight,
                        "endpoints": b.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                        "invalid": b.invalid,
                        "policy": b.traffic.source.as_deref(),
                    })
                })
                .collect();
            serde_json::json!({
                "matches": matches,
                "backends": backends,
                "redirect": action.redirect.as_ref().map(|r| r.status),
                "retry": action.retry.as_ref().map(|r| serde_json::json!({
                    "codes": r.codes,
                    "attempts": r.attempts,
                    "backoff_ms": r.backoff.as_millis() as u64,
                })),
                "timeouts_ms": {
                    "request": action.timeouts.request.map(|t| t.as_millis() as u64),
                    "backend_request": action.timeouts.backend_request.map(|t| t.as_millis() as u64),
                },
                "mirrors": action.mirrors.iter().map(|m| serde_json::json!({
                    "backend": m.action.backends.backends.first().map(|b| &*b.name),
                    "share": format!("{}/{}", m.numerator, m.denominator),
                })).collect::<Vec<_>>(),
                "cors": action.cors.is_some(),
                "session": action.session.as_ref().map(|s| serde_json::json!({
                    "name": s.name,
                    "by": match s.carrier {
                        SessionCarrier::Cookie { .. } => "cookie",
                        SessionCarrier::Header => "header",
                    },
                })),
                "invalid": action.invalid,
            })
        })
        .collect();
    serde_json::json!({ "name": name, "hostnames": hostnames, "rules": rules })
}

struct ListenerSpec<'m> {
    gateway: &'m Sourced<Gateway>,
    listener: &'m GatewayListeners,
    port: u16,
    /// Its verdict: (gateway, listener) index into the verdicts.
    verdict: (usize, usize),
    routes: Vec<Route<RuleAction>>,
    /// What attached, for the summary.
    described: Vec<serde_json::Value>,
}

/// Lookups over everything loaded.
struct World<'m> {
    namespace_labels: HashMap<&'m str, &'m BTreeMap<String, String>>,
    services: HashMap<(&'m str, &'m str), &'m Service>,
    /// EndpointSlices by (namespace, service name).
    slices: HashMap<(&'m str, &'m str), Vec<&'m k8s_openapi::api::discovery::v1::EndpointSlice>>,
    manifests: &'m Manifests,
    /// BackendTrafficPolicies, by the Service they hold.
    policies: Attached,
    endpoints: EndpointRules<'m>,
}

impl<'m> World<'m> {
    fn new(manifests: &'m Manifests, policies: Attached, endpoints: EndpointRules<'m>) -> Self {
        let mut namespace_labels = HashMap::new();
        for ns in &manifests.namespaces {
            if let (Some(name), Some(labels)) = (
                ns.object.metadata.name.as_deref(),
                ns.object.metadata.labels.as_ref(),
            ) {
                namespace_labels.insert(name, labels);
            }
        }
        let mut services = HashMap::new();
        for s in &manifests.services {
            let meta = &s.object.metadata;
            services.insert(
                (namespace_of(meta), meta.name.as_deref().unwrap_or_default()),
                &s.object,
            );
        }
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for s in &manifests.endpoint_slices {
            let meta = &s.object.metadata;
            if let Some(service) = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
            {
                slices
                    .entry((namespace_of(meta), service.as_str()))
                    .or_default()
                    .push(&s.object);
            }
        }
        Self {
            namespace_labels,
            services,
            slices,
            manifests,
            policies,
            endpoints,
        }
    }

    /// How the Service a backendRef names is balanced and limited: its
    /// policy's settings, or the gateway's.
    fn traffic(&self, route_ns: &str, backend: &HttpRouteRulesBackendRefs) -> Arc<TrafficPolicy> {
        let ns = backend.namespace.as_deref().unwrap_or(route_ns);
        self.policies
            .get(ns, &backend.name)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether a listener admits HTTPRoutes from `route_ns`.
    fn allows(&self, spec: &ListenerSpec<'_>, route_ns: &str) -> bool {
        let allowed = spec.listener.allowed_routes.as_ref();
        let kinds_ok = allowed.and_then(|a| a.kinds.as_ref()).is_none_or(|kinds| {
            kinds.iter().any(|k| {
                k.kind == "HTTPRoute"
                    && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            })
        });
        let namespaces = allowed.and_then(|a| a.namespaces.as_ref());
        let gateway_ns = namespace_of(&spec.gateway.object.metadata);
        let ns_ok = match namespaces.and_then(|n| n.from.as_ref()) {
            None | Some(From::Same) => route_ns == gateway_ns,
            Some(From::All) => true,
            Some(From::Selector) => {
                let empty = BTreeMap::new();
                let labels = self
                    .namespace_labels
                    .get(route_ns)
                    .copied()
                    .unwrap_or(&empty);
                namespaces
                    .and_then(|n| n.selector.as_ref())
                    .is_some_and(|selector| {
                        selector
                            .match_labels
                            .iter()
                            .flatten()
                            .all(|(k, v)| labels.get(k) == Some(v))
                            && selector.match_expressions.iter().flatten().all(|e| {
                                let values = e.values.as_deref().unwrap_or_default();
                                let value = labels.get(&e.key);
                                match e.operator.as_str() {
                                    "In" => value.is_some_and(|v| values.contains(v)),
                                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                                    "Exists" => value.is_some(),
                                    "DoesNotExist" => value.is_none(),
                                    _ => false,
                                }
                            })
                    })
            }
        };
        kinds_ok && ns_ok
    }

    /// Whether a ReferenceGrant in `to_ns` lets HTTPRoutes of `from_ns`
    /// refer to Service `name`.
    fn grants(&self, from_ns: &str, to_ns: &str, name: &str) -> bool {
        self.manifests.grants.iter().any(|g| {
            namespace_of(&g.object.metadata) == to_ns
                && g.object.spec.from.iter().any(|f| {
                    f.group == GATEWAY_GROUP && f.kind == "HTTPRoute" && f.namespace == from_ns
                })
                && g.object.spec.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }

    /// Resolve a backendRef: ready endpoints, or why it cannot be used.
    fn resolve(
        &self,
        route_ns: &str,
        backend: &HttpRouteRulesBackendRefs,
    ) -> Result<(Vec<SocketAddr>, BackendProtocol), Unresolved> {
        let group = backend.group.as_deref().unwrap_or("");
        let kind = backend.kind.as_deref().unwrap_or("Service");
        if !group.is_empty() || kind != "Service" {
            return Err(Unresolved {
                reason: "InvalidKind",
                message: format!("unsupported backend kind {group}/{kind}"),
            });
        }
        let ns = backend.namespace.as_deref().unwrap_or(route_ns);
        let name = &backend.name;
        if ns != route_ns && !self.grants(route_ns, ns, name) {
            return Err(Unresolved {
                reason: "RefNotPermitted",
                message: format!(
                    "Service {ns}/{name} in another namespace without a ReferenceGrant"
                ),
            });
        }
        let not_found = |message| Unresolved {
            reason: "BackendNotFound",
            message,
        };
        let service = self
            .services
            .get(&(ns, name.as_str()))
            .ok_or_else(|| not_found(format!("Service {ns}/{name} not found")))?;
        let port = backend
            .port
            .ok_or_else(|| not_found(format!("backendRef to Service {ns}/{name} has no port")))?;
        let service_port = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == port))
            .ok_or_else(|| not_found(format!("Service {ns}/{name} has no port {port}")))?;
        // Gateway API's BackendProtocolH2C: cleartext HTTP/2 with prior
        // knowledge. Other values (and none) mean HTTP/1.1.
        let protocol = match service_port.app_protocol.as_deref() {
            Some("kubernetes.io/h2c") => BackendProtocol::H2c,
            _ => BackendProtocol::Http1,
        };
        // Ready endpoints; when none is left, those still serving while
        // they terminate (KEP-1669: a rollout's last pods finish the
        // traffic rather than it failing).
        let mut endpoints = Vec::new();
        let mut terminating = Vec::new();
        for slice in self.slices.get(&(ns, name.as_str())).into_iter().flatten() {
            // The slice's port of the same name carries the target port.
            let slice_port = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == service_port.name.as_deref().unwrap_or("")
            });
            let target = match (slice_port.and_then(|p| p.port), &service_port.target_port) {
                (Some(p), _) => p,
                (None, Some(IntOrString::Int(p))) => *p,
                (None, _) => service_port.port,
            };
            let Ok(target) = u16::try_from(target) else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let conditions = endpoint.conditions.as_ref();
                let condition =
                    |get: fn(&EndpointConditions) -> Option<bool>| conditions.and_then(get);
                let is_terminating = condition(|c| c.terminating) == Some(true);
                // Unset `ready` is ready; unset `serving` follows `ready`.
                let ready = condition(|c| c.ready) != Some(false) && !is_terminating;
                let serving = condition(|c| c.serving.or(c.ready)) != Some(false);
                let into = match (ready, is_terminating && serving) {
                    (true, _) => &mut endpoints,
                    (false, true) => &mut terminating,
                    (false, false) => continue,
                };
                into.extend(
                    endpoint
                        .addresses
                        .iter()
                        .filter_map(|a| a.parse::<IpAddr>().ok())
                        .map(|ip| SocketAddr::new(ip, target))
                        .filter(|&at| self.endpoints.refuses(at).is_none()),
                );
            }
        }
        if endpoints.is_empty() {
            endpoints = terminating;
        }
        Ok((endpoints, protocol))
    }
}

/// A warning for each endpoint address the rules leave out, naming its
/// EndpointSlice.
fn refused_endpoints(manifests: &Manifests, rules: &EndpointRules) -> Vec<String> {
    let mut warnings = Vec::new();
    for slice in &manifests.endpoint_slices {
        let ports: Vec<u16> = slice
            .object
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.and_then(|p| u16::try_from(p).ok()))
            .collect();
        let addresses = slice.object.endpoints.iter().flat_map(|e| &e.addresses);
        for ip in addresses.filter_map(|a| a.parse::<IpAddr>().ok()) {
            for &port in &ports {
                let at = SocketAddr::new(ip, port);
                if let Some(why) = rules.refuses(at) {
                    warnings.push(format!(
                        "{}: EndpointSlice {}: endpoint {at} is {why}; it is not used",
                        slice.origin,
                        object_id(&slice.object.metadata)
                    ));
                }
            }
        }
    }
    warnings
}

/// Why a backendRef does not resolve: the ResolvedRefs reason and a message.
struct Unresolved {
    reason: &'static str,
    message: String,
}

pub(crate) fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

pub(crate) fn object_id(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        namespace_of(meta),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn rules_of(route: &HttpRoute) -> Vec<HttpRouteRules> {
    match &route.spec.rules {
        Some(rules) if !rules.is_empty() => rules.clone(),
        // No rules: one rule with the default match and no backends.
        _ => vec![HttpRouteRules::default()],
    }
}

/// The hostnames a route serves on a listener (Gateway API hostname
/// intersection); `None`: they do not intersect, the route does not attach.
fn intersect(listener: Option<&str>, route: Option<&[String]>) -> Option<Vec<String>> {
    let route: Vec<String> = route
        .unwrap_or_default()
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let Some(listener) = listener.map(str::to_ascii_lowercase) else {
        return Some(route);
    };
    if route.is_empty() {
        return Some(vec![listener]);
    }
    let both: Vec<String> = route
        .iter()
        .filter_map(|h| {
            if hostname_matches(&listener, h) || *h == listener {
                Some(h.clone())
            } else if h.starts_with('*') && hostname_matches(h, &listener) {
                // The route's wildcard covers the listener's name: the
                // listener's (narrower) name is what is served.
                Some(listener.clone())
            } else {
                None
            }
        })
        .collect();
    (!both.is_empty()).then_some(both)
}

fn field_error(route: &Sourced<HttpRoute>, field: String, message: String) -> CompileError {
    CompileError {
        origin: route.origin.clone(),
        object: format!("HTTPRoute {}", object_id(&route.object.metadata)),
        field,
        message,
    }
}

fn regex(route: &Sourced<HttpRoute>, field: String, pattern: &str) -> Result<Regex, CompileError> {
    Regex::new(pattern)
        .map_err(|e| field_error(route, field, format!("invalid regular expression: {e}")))
}

/// A header or query value match, its expression checked.
fn value_match(
    route: &Sourced<HttpRoute>,
    field: String,
    is_regex: bool,
    value: &str,
) -> Result<ValueMatch, CompileError> {
    Ok(if is_regex {
        ValueMatch::RegularExpression(regex(route, field, value)?)
    } else {
        ValueMatch::Exact(value.to_owned())
    })
}

fn compile_matches(
    route: &Sourced<HttpRoute>,
    at: &str,
    matches: &[HttpRouteRulesMatches],
) -> Result<Vec<RouteMatch>, CompileError> {
    let mut out = Vec::new();
    for (index, m) in matches.iter().enumerate() {
        let at = format!("{at}.matches[{index}]");
        let path = match &m.path {
            None => PathMatch::Prefix("/".into()),
            Some(p) => {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                match p
                    .r#type
                    .as_ref()
                    .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
                {
                    HttpRouteRulesMatchesPathType::RegularExpression => {
                        PathMatch::RegularExpression(regex(
                            route,
                            format!("{at}.path.value"),
                            &value,
                        )?)
                    }
                    kind => {
                        if !value.starts_with('/') {
                            return Err(field_error(
                                route,
                                format!("{at}.path.value"),
                                format!("{value:?} must start with '/'"),
                            ));
                        }
                        if *kind == HttpRouteRulesMatchesPathType::Exact {
                            PathMatch::Exact(value)
                        } else {
                            PathMatch::Prefix(value)
                        }
                    }
                }
            }
        };
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().flatten().enumerate() {
            let is_regex = h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression);
            let field = format!("{at}.headers[{i}].value");
            let value = value_match(route, field, is_regex, &h.value)?;
            headers.push((h.name.to_ascii_lowercase(), value));
        }
        let mut query = Vec::new();
        for (i, q) in m.query_params.iter().flatten().enumerate() {
            let is_regex =
                q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression);
            let field = format!("{at}.queryParams[{i}].value");
            query.push((
                q.name.clone(),
                value_match(route, field, is_regex, &q.value)?,
            ));
        }
        let method = m.method.as_ref().map(|m| {
            serde_json::to_value(m)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        });
        out.push(RouteMatch {
            path,
            headers,
            query,
            method,
        });
    }
    Ok(out)
}

/// A header modifier's `set`, `add` and `remove` as the schema spells
/// them per filter type, checked (see [`header_modifier`]).
macro_rules! modifier {
    ($route:expr, $at:expr, $m:expr) => {{
        let m = $m;
        let set = m.set.iter().flatten();
        let add = m.add.iter().flatten();
        header_modifier(
            $route,
            $at,
            set.map(|h| (h.name.clone(), h.value.clone())).collect(),
            add.map(|h| (h.name.clone(), h.value.clone())).collect(),
            m.remove.iter().flatten().cloned().collect(),
        )?
    }};
}

/// Header changes with every name a field name (RFC 9110 §5.1) and every
/// value a field value (§5.5: no CR, LF or NUL): a value like
/// `"a\r\nX-Smuggled: yes"` would otherwise become a field of its own.
fn header_modifier(
    route: &Sourced<HttpRoute>,
    at: &str,
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Vec<String>,
) -> Result<HeaderModifier, CompileError> {
    let name = |field: String, name: &str| {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| field_error(route, field, format!("{name:?} is not a header field name")))
    };
    let pairs = |list: &str, pairs: Vec<(String, String)>| {
        pairs
            .into_iter()
            .enumerate()
            .map(|(i, (n, v))| {
                let n = name(format!("{at}.{list}[{i}].name"), &n)?;
                let v = HeaderValue::from_str(&v).map_err(|_| {
                    field_error(
                        route,
                        format!("{at}.{list}[{i}].value"),
                        format!(
                            "{v:?} is not a header field value (no CR, LF or control characters)"
                        ),
                    )
                })?;
                Ok((n, v))
            })
            .collect::<Result<Vec<_>, CompileError>>()
    };
    Ok(HeaderModifier {
        set: pairs("set", set)?,
        add: pairs("add", add)?,
        remove: remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(format!("{at}.remove[{i}]"), n))
            .collect::<Result<_, _>>()?,
    })
}

/// The path a URLRewrite or RequestRedirect writes (at field `at`), of
/// the type the filter names, checked: absolute (`/`…), and only
/// characters a request target's path may hold (RFC 3986 §3.3: no space,
/// CR, LF, `?` or `#`).
fn path_modifier(
    route: &Sourced<HttpRoute>,
    at: &str,
    full: Option<&String>,
    prefix: Option<&String>,
    is_full: bool,
) -> Result<Option<PathModifier>, CompileError> {
    let (field, value, modifier): (_, _, fn(String) -> PathModifier) = if is_full {
        ("replaceFullPath", full, PathModifier::ReplaceFullPath)
    } else {
        (
            "replacePrefixMatch",
            prefix,
            PathModifier::ReplacePrefixMatch,
        )
    };
    let Some(value) = value else {
        return Ok(None);
    };
    let is_path_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
    if value.starts_with('/') && value.bytes().all(is_path_char) {
        Ok(Some(modifier(value.clone())))
    } else {
        Err(field_error(
            route,
            format!("{at}.{field}"),
            format!("{value:?} is not an absolute path (RFC 3986 path characters only)"),
        ))
    }
}

/// A hostname a filter writes (RFC 1123, as Gateway API's
/// PreciseHostname: lowercase labels of letters, digits and hyphens, no
/// wildcard, no port).
fn precise_hostname(
    route: &Sourced<HttpRoute>,
    field: String,
    hostname: &str,
) -> Result<String, CompileError> {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if hostname.len() <= 253 && hostname.split('.').all(label) {
        Ok(hostname.to_owned())
    } else {
        Err(field_error(
            route,
            field,
            format!("{hostname:?} is not a hostname (lowercase RFC 1123 labels, no port)"),
        ))
    }
}

/// What a list of filters does (a rule's, or a backendRef's: the same
/// schema).
#[derive(Default)]
struct Filters {
    request_headers: HeaderModifier,
    response_headers: HeaderModifier,
    redirect: Option<Redirect>,
    rewrite: Option<UrlRewrite>,
    mirrors: Vec<MirrorRef>,
    cors: Option<Cors>,
    /// A filter Rauta does not carry out.
    unsupported: Option<String>,
}

/// A RequestMirror before its backend is resolved.
struct MirrorRef {
    /// The field, for errors.
    at: String,
    backend_ref: HttpRouteRulesBackendRefs,
    numerator: u32,
    denominator: u32,
}

fn compile_filters(
    route: &Sourced<HttpRoute>,
    at: &str,
    filters: &[HttpRouteRulesFilters],
) -> Result<Filters, CompileError> {
    let mut action = Filters::default();
    for (index, filter) in filters.iter().enumerate() {
        let at = format!("{at}.filters[{index}]");
        let missing = || field_error(route, at.clone(), "filter type without its settings".into());
        match filter.r#type {
            FilterType::RequestHeaderModifier => {
                action.request_headers = modifier!(
                    route,
                    &format!("{at}.requestHeaderModifier"),
                    filter
                        .request_header_modifier
                        .as_ref()
                        .ok_or_else(missing)?
                )
            }
            FilterType::ResponseHeaderModifier => {
                action.response_headers = modifier!(
                    route,
                    &format!("{at}.responseHeaderModifier"),
                    filter
                        .response_header_modifier
                        .as_ref()
                        .ok_or_else(missing)?
                )
            }
            FilterType::RequestRedirect => {
                let r = filter.request_redirect.as_ref().ok_or_else(missing)?;
                let status = match r.status_code {
                    None => 302,
                    Some(code @ (301 | 302 | 303 | 307 | 308)) => code as u16,
                    Some(code) => {
                        return Err(field_error(
                            route,
                            format!("{at}.requestRedirect.statusCode"),
                            format!("{code} is not a redirect status"),
                        ))
                    }
                };
                let port = match r.port {
                    None => None,
                    Some(p) => {
                        Some(u16::try_from(p).ok().filter(|&p| p != 0).ok_or_else(|| {
                            field_error(
                                route,
                                format!("{at}.requestRedirect.port"),
                                format!("{p} is not a port"),
                            )
                        })?)
                    }
                };
                let hostname = r
                    .hostname
                    .as_deref()
                    .map(|h| precise_hostname(route, format!("{at}.requestRedirect.hostname"), h));
                let hostname = hostname.transpose()?;
                let path = r.path.as_ref().map(|p| {
                    path_modifier(
                        route,
                        &format!("{at}.requestRedirect.path"),
                        p.replace_full_path.as_ref(),
                        p.replace_prefix_match.as_ref(),
                        p.r#type == gateway_api::experimental::httproutes::HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
                    )
                });
                let path = path.transpose()?.flatten();
                action.redirect = Some(Redirect {
                    scheme: r.scheme.as_ref().map(|s| match s {
                        Scheme::Http => "http".to_owned(),
                        Scheme::Https => "https".to_owned(),
                    }),
                    hostname,
                    path,
                    port,
                    status,
                });
            }
            FilterType::UrlRewrite => {
                let r = filter.url_rewrite.as_ref().ok_or_else(missing)?;
                let hostname = r
                    .hostname
                    .as_deref()
                    .map(|h| precise_hostname(route, format!("{at}.urlRewrite.hostname"), h));
                let path = r.path.as_ref().map(|p| {
                    path_modifier(
                        route,
                        &format!("{at}.urlRewrite.path"),
                        p.replace_full_path.as_ref(),
                        p.replace_prefix_match.as_ref(),
                        p.r#type == gateway_api::experimental::httproutes::HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
                    )
                });
                let path = path.transpose()?.flatten();
                action.rewrite = Some(UrlRewrite {
                    hostname: hostname.transpose()?,
                    path,
                });
            }
            FilterType::RequestMirror => {
                let m = filter.request_mirror.as_ref().ok_or_else(missing)?;
                let (numerator, denominator) = match (&m.percent, &m.fraction) {
                    (Some(p), _) => (*p, 100),
                    (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
                    (None, None) => (100, 100),
                };
                let share = u32::try_from(numerator)
                    .ok()
                    .zip(u32::try_from(denominator).ok())
                    .filter(|&(n, d)| d > 0 && n <= d)
                    .ok_or_else(|| {
                        field_error(
                            route,
                            format!("{at}.requestMirror"),
                            format!("{numerator}/{denominator} is not a share of requests"),
                        )
                    })?;
                let backend_ref = serde_json::to_value(&m.backend_ref)
                    .and_then(serde_json::from_value)
                    .map_err(|e| {
                        field_error(
                            route,
                            format!("{at}.requestMirror.backendRef"),
                            e.to_string(),
                        )
                    })?;
                action.mirrors.push(MirrorRef {
                    at: format!("{at}.requestMirror.backendRef"),
                    backend_ref,
                    numerator: share.0,
                    denominator: share.1,
                });
            }
            FilterType::Cors => {
                let c = filter.cors.as_ref().ok_or_else(missing)?;
                let list = |l: &Option<Vec<String>>| l.clone().unwrap_or_default();
                let max_age = match c.max_age {
                    None => Cors::DEFAULT_MAX_AGE,
                    Some(age) => u32::try_from(age).map_err(|_| {
                        field_error(
                            route,
                            format!("{at}.cors.maxAge"),
                            format!("{age} is negative"),
                        )
                    })?,
                };
                let cors = Cors {
                    allow_origins: list(&c.allow_origins),
                    allow_methods: list(&c.allow_methods),
                    allow_headers: list(&c.allow_headers),
                    expose_headers: list(&c.expose_headers),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    max_age,
                };
                for (field, values) in [
                    ("allowHeaders", &cors.allow_headers),
                    ("exposeHeaders", &cors.expose_headers),
                    ("allowMethods", &cors.allow_methods),
                ] {
                    if let Some(bad) = values.iter().find(|v| {
                        v.as_str() != "*" && http::HeaderName::from_bytes(v.as_bytes()).is_err()
                    }) {
                        return Err(field_error(
                            route,
                            format!("{at}.cors.{field}"),
                            format!("{bad:?} is not a field name or method"),
                        ));
                    }
                }
                action.cors = Some(cors);
            }
            FilterType::ExtensionRef | FilterType::ExternalAuth => {
                let kind = serde_json::to_value(&filter.r#type)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                action.unsupported = Some(format!("filter {kind} is not supported"));
            }
        }
    }
    Ok(action)
}

/// `namespace/service:port`, the name metrics and logs give a backend.
fn backend_name(route_ns: &str, backend_ref: &HttpRouteRulesBackendRefs) -> String {
    format!(
        "{}/{}:{}",
        backend_ref.namespace.as_deref().unwrap_or(route_ns),
        backend_ref.name,
        backend_ref.port.unwrap_or_default()
    )
}

/// A backendRef's filters, read as a rule's (the schema is the same).
fn backend_filters(
    route: &Sourced<HttpRoute>,
    at: &str,
    filters: &[HttpRouteRulesBackendRefsFilters],
) -> Result<Filters, CompileError> {
    let as_rule: Vec<HttpRouteRulesFilters> = filters
        .iter()
        .map(|f| serde_json::to_value(f).and_then(serde_json::from_value))
        .collect::<Result<_, _>>()
        .map_err(|e| field_error(route, format!("{at}.filters"), e.to_string()))?;
    compile_filters(route, at, &as_rule)
}

/// A GEP-2257 duration; "0s" is `None` (no bound).
/// A Gateway API duration (`1s`, `500ms`), to the millisecond; what is
/// wrong with it otherwise.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed: gateway_api::Duration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration: {e}"))?;
    let millis = u64::try_from(parsed.as_millis()).unwrap_or(u64::MAX);
    Ok(Duration::from_millis(millis))
}

/// A route's duration field; `0s` is none.
fn duration(
    route: &Sourced<HttpRoute>,
    field: String,
    text: &str,
) -> Result<Option<Duration>, CompileError> {
    let parsed = parse_duration(text).map_err(|message| field_error(route, field, message))?;
    Ok((!parsed.is_zero()).then_some(parsed))
}

fn compile_timeouts(
    route: &Sourced<HttpRoute>,
    at: &str,
    timeouts: Option<&HttpRouteRulesTimeouts>,
) -> Result<RouteTimeouts, CompileError> {
    let Some(timeouts) = timeouts else {
        return Ok(RouteTimeouts::default());
    };
    let field = |name: &str| format!("{at}.timeouts.{name}");
    let parse = |name: &str, value: Option<&String>| {
        value.map_or(Ok(None), |v| duration(route, field(name), v))
    };
    let request = parse("request", timeouts.request.as_ref())?;
    let backend_request = parse("backendRequest", timeouts.backend_request.as_ref())?;
    if let (Some(request), Some(backend)) = (request, backend_request) {
        if backend > request {
            return Err(field_error(
                route,
                field("backendRequest"),
                format!("{backend:?} is longer than the request timeout ({request:?})"),
            ));
        }
    }
    Ok(RouteTimeouts {
        request,
        backend_request,
    })
}

fn compile_retry(
    route: &Sourced<HttpRoute>,
    at: &str,
    retry: &HttpRouteRulesRetry,
) -> Result<RetryPolicy, CompileError> {
    let field = |name: &str| format!("{at}.retry.{name}");
    let mut codes = Vec::new();
    for (i, &code) in retry.codes.iter().flatten().enumerate() {
        // HTTPRouteRetryStatusCode: 400-599.
        let code = u16::try_from(code)
            .ok()
            .filter(|c| (400..600).contains(c))
            .ok_or_else(|| {
                field_error(
                    route,
                    field(&format!("codes[{i}]")),
                    format!("{code} is not a 4xx or 5xx status"),
                )
            })?;
        codes.push(code);
    }
    codes.sort_unstable();
    codes.dedup();
    let attempts = match retry.attempts {
        None => RetryPolicy::DEFAULT_ATTEMPTS,
        Some(n) => u8::try_from(n)
            .ok()
            .filter(|&n| n < u8::MAX)
            .ok_or_else(|| {
                field_error(
                    route,
                    field("attempts"),
                    format!("{n} is not between 0 and {}", u8::MAX - 1),
                )
            })?,
    };
    let backoff = match &retry.backoff {
        None => RetryPolicy::DEFAULT_BACKOFF,
        Some(text) => duration(route, field("backoff"), text)?.unwrap_or_default(),
    };
    Ok(RetryPolicy {
        codes,
        attempts,
        backoff,
    })
}

/// The session name when the rule gives none.
const DEFAULT_SESSION_NAME: &str = "rauta-session";

fn compile_session(
    route: &Sourced<HttpRoute>,
    at: &str,
    session: &HttpRouteRulesSessionPersistence,
    matches: &[RouteMatch],
) -> Result<SessionPersistence, CompileError> {
    let field = |name: &str| format!("{at}.sessionPersistence.{name}");
    let name = session
        .session_name
        .clone()
        .unwrap_or_else(|| DEFAULT_SESSION_NAME.to_owned());
    // A cookie name and a field name are both RFC 9110 tokens.
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(field_error(
            route,
            field("sessionName"),
            format!("{name:?} is not a cookie or header name"),
        ));
    }
    let parse = |name: &str, value: Option<&String>| {
        value.map_or(Ok(None), |v| duration(route, field(name), v))
    };
    let absolute_timeout = parse("absoluteTimeout", session.absolute_timeout.as_ref())?;
    let idle_timeout = parse("idleTimeout", session.idle_timeout.as_ref())?;
    let carrier = match session.r#type {
        Some(SessionType::Header) => SessionCarrier::Header,
        Some(SessionType::Cookie) | None => {
            let permanent = session
                .cookie_config
                .as_ref()
                .and_then(|c| c.lifetime_type.as_ref())
                == Some(&Lifetime::Permanent);
            if permanent && absolute_timeout.is_none() {
                return Err(field_error(
                    route,
                    field("absoluteTimeout"),
                    "a Permanent cookie's lifetime; it is required with lifetimeType Permanent"
                        .into(),
                ));
            }
            // The cookie comes back on the rule's path (one exact or
            // prefix match), or everywhere.
            let path = match matches {
                [only] => match &only.path {
                    PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
                    PathMatch::RegularExpression(_) => "/".into(),
                },
                _ => "/".into(),
            };
            SessionCarrier::Cookie { path, permanent }
        }
    };
    let name = match carrier {
        SessionCarrier::Header => name.to_ascii_lowercase(),
        SessionCarrier::Cookie { .. } => name,
    };
    Ok(SessionPersistence {
        carrier,
        name,
        absolute_timeout,
        idle_timeout,
    })
}

fn compile_rule(
    world: &World<'_>,
    route: &Sourced<HttpRoute>,
    index: usize,
    rule: &HttpRouteRules,
    warnings: &mut Vec<String>,
) -> Result<(Vec<RouteMatch>, RuleAction), CompileError> {
    let at = format!("spec.rules[{index}]");
    let route_id = object_id(&route.object.metadata);
    let route_ns = namespace_of(&route.object.metadata);
    let matches = compile_matches(route, &at, rule.matches.as_deref().unwrap_or_default())?;
    let mut action = RuleAction {
        route: route_id.as_str().into(),
        ..RuleAction::default()
    };
    let filters = compile_filters(route, &at, rule.filters.as_deref().unwrap_or_default())?;
    action.request_headers = filters.request_headers;
    action.response_headers = filters.response_headers;
    action.redirect = filters.redirect;
    action.rewrite = filters.rewrite;
    action.invalid = filters.unsupported;
    action.cors = filters.cors;
    for mirror in filters.mirrors {
        let name = backend_name(route_ns, &mirror.backend_ref);
        match world.resolve(route_ns, &mirror.backend_ref) {
            Ok((endpoints, protocol)) => {
                let mut backend = Backend::new(name, 1, endpoints);
                backend.protocol = protocol;
                backend.traffic = world.traffic(route_ns, &mirror.backend_ref);
                action.mirrors.push(Mirror {
                    action: Arc::new(RuleAction {
                        route: action.route.clone(),
                        backends: Backends::new(vec![backend]),
                        ..RuleAction::default()
                    }),
                    numerator: mirror.numerator,
                    denominator: mirror.denominator,
                });
            }
            // A mirror that does not resolve leaves the rule's own traffic
            // alone: only the copies are lost.
            Err(why) => warnings.push(format!(
                "HTTPRoute {route_id} {}: {}; not mirrored",
                mirror.at, why.message
            )),
        }
    }
    action.timeouts = compile_timeouts(route, &at, rule.timeouts.as_ref())?;
    action.retry = rule
        .retry
        .as_ref()
        .map(|retry| compile_retry(route, &at, retry))
        .transpose()?;
    action.session = rule
        .session_persistence
        .as_ref()
        .map(|session| compile_session(route, &at, session, &matches))
        .transpose()?;
    let mut backends = Vec::new();
    for (i, backend_ref) in rule.backend_refs.iter().flatten().enumerate() {
        let weight = backend_ref.weight.unwrap_or(1);
        let weight = u32::try_from(weight).map_err(|_| {
            field_error(
                route,
                format!("{at}.backendRefs[{i}].weight"),
                format!("{weight} is negative"),
            )
        })?;
        let name = backend_name(route_ns, backend_ref);
        let mut backend = match world.resolve(route_ns, backend_ref) {
            Ok((endpoints, protocol)) => {
                let mut b = Backend::new(name, weight, endpoints);
                b.protocol = protocol;
                b.traffic = world.traffic(route_ns, backend_ref);
                b
            }
            Err(why) => {
                let why = why.message;
                warnings.push(format!("HTTPRoute {route_id} {at}.backendRefs[{i}]: {why}"));
                let mut b = Backend::new(name, weight, Vec::new());
                b.invalid = Some(why);
                b
            }
        };
        let filters = backend_filters(
            route,
            &format!("{at}.backendRefs[{i}]"),
            backend_ref.filters.as_deref().unwrap_or_default(),
        )?;
        backend.request_headers = filters.request_headers;
        backend.response_headers = filters.response_headers;
        backend.redirect = filters.redirect;
        backend.rewrite = filters.rewrite;
        let unsupported = if !filters.mirrors.is_empty() {
            Some("filter RequestMirror on a backendRef is not supported".to_owned())
        } else if filters.cors.is_some() {
            Some("filter CORS on a backendRef is not supported".to_owned())
        } else {
            filters.unsupported
        };
        if let Some(why) = unsupported {
            warnings.push(format!(
                "HTTPRoute {route_id} {at}.backendRefs[{i}]: {why}; its requests get 500"
            ));
            backend.invalid.get_or_insert(why);
        }
        backends.push(backend);
    }
    if let Some(why) = &action.invalid {
        warnings.push(format!(
            "HTTPRoute {route_id} {at}: {why}; requests get 500"
        ));
    }
    action.backends = Backends::new(backends);
    Ok((matches, action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: infra, labels: {team: infra}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: foo, port: 80, protocol: HTTP, hostname: '*.foo.com'}
  - {name: tls, port: 443, protocol: HTTPS}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec:
  ports: [{name: http, port: 8080, targetPort: 3000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: infra, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- addresses: [198.18.0.20]
- addresses: [198.18.0.21]
  conditions: {ready: false}
- addresses: [198.18.0.22]
  conditions: {ready: false, serving: true, terminating: true}
";

    fn compiled(extra: &str) -> Result<Compiled, String> {
        let mut m = Manifests::default();
        m.add_text(Path::new("base.yaml"), BASE)
            .map_err(|e| e.to_string())?;
        m.add_text(Path::new("route.yaml"), extra)
            .map_err(|e| e.to_string())?;
        compile(&m, &Selection::default(), OnInvalid::RejectAll).map_err(|e| e.to_string())
    }

    #[test]
    fn attaches_resolves_endpoints_and_intersects_hostnames() {
        let c = compiled(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  hostnames: ['*.foo.com', bar.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /app}}]
    backendRefs: [{name: web, port: 8080}]
",
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2, "the HTTPS listener is not served");
        let port = &c.config.ports[&80];
        // The `*.foo.com` listener gets the route for its own hostname only;
        // the unnamed listener gets both.
        let foo = port.select("a.foo.com").unwrap();
        assert_eq!(foo.name, "infra/gw/foo");
        let view = |host| rauta_dataplane::routes::RequestView {
            host,
            method: "GET",
            path: "/app/x",
            query: &[],
            headers: Box::leak(Box::default()),
        };
        let action = foo.routes.lookup(&view("a.foo.com")).unwrap();
        let backend = action.backends.pick(0).unwrap();
        assert_eq!(backend.endpoints, vec!["198.18.0.20:3000".parse().unwrap()]);
        let any = port.select("bar.com").unwrap();
        assert!(any.routes.lookup(&view("bar.com")).is_some());
        assert!(any.routes.lookup(&view("baz.com")).is_none());
    }

    #[test]
    fn session_persistence_compiles_with_the_rules_path_and_rejects_a_permanent_cookie_without_a_lifetime(
    ) {
        let route = |session: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: infra}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /cart}}}}]
    backendRefs: [{{name: web, port: 8080}}]
    sessionPersistence: {session}
"
            )
        };
        let c = compiled(&route(
            "{sessionName: Cart, absoluteTimeout: 1h, idleTimeout: 10m, cookieConfig: {lifetimeType: Permanent}}",
        ))
        .unwrap();
        let listener = c.config.ports[&80].select("any.host").unwrap();
        let view = rauta_dataplane::routes::RequestView {
            host: "any.host",
            method: "GET",
            path: "/cart",
            query: &[],
            headers: Box::leak(Box::default()),
        };
        let action = listener.routes.lookup(&view).unwrap();
        assert_eq!(
            action.session,
            Some(SessionPersistence {
                carrier: SessionCarrier::Cookie {
                    path: "/cart".into(),
                    permanent: true
                },
                name: "Cart".into(),
                absolute_timeout: Some(Duration::from_secs(3600)),
                idle_timeout: Some(Duration::from_secs(600)),
            })
        );
        let c = compiled(&route("{type: Header, sessionName: X-Session}")).unwrap();
        let listener = c.config.ports[&80].select("any.host").unwrap();
        let action = listener.routes.lookup(&view).unwrap();
        let session = action.session.as_ref().unwrap();
        assert_eq!(
            (&session.carrier, session.name.as_str()),
            (&SessionCarrier::Header, "x-session")
        );
        let err = compiled(&route("{cookieConfig: {lifetimeType: Permanent}}"))
            .err()
            .expect("rejected");
        assert!(
            err.contains("route.yaml")
                && err.contains("infra/r")
                && err.contains("spec.rules[0].sessionPersistence.absoluteTimeout"),
            "{err}"
        );
        let err = compiled(&route("{sessionName: 'a b'}"))
            .err()
            .expect("rejected");
        assert!(err.contains("sessionPersistence.sessionName"), "{err}");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_no_ready_one_is_left() {
        let c = compiled(
            "apiVersion: v1
kind: Service
metadata: {name: going, namespace: infra}
spec:
  ports: [{name: http, port: 8080, targetPort: 3000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: going-1, namespace: infra, labels: {kubernetes.io/service-name: going}}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- addresses: [198.18.0.30]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [198.18.0.31]
  conditions: {ready: false, serving: false, terminating: true}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /web}}]
    backendRefs: [{name: web, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /going}}]
    backendRefs: [{name: going, port: 8080}]
",
        )
        .unwrap();
        let listener = c.config.ports[&80].select("any.host").unwrap();
        let endpoints = |path| {
            let view = rauta_dataplane::routes::RequestView {
                host: "any.host",
                method: "GET",
                path,
                query: &[],
                headers: Box::leak(Box::default()),
            };
            let action = listener.routes.lookup(&view).unwrap();
            action.backends.pick(0).unwrap().endpoints.clone()
        };
        let addr = |a: &str| -> SocketAddr { a.parse().unwrap() };
        // web: a ready one (.20); its terminating .22 gets nothing new.
        assert_eq!(endpoints("/web/x"), vec![addr("198.18.0.20:3000")]);
        // going: only terminating ones; the one still serving takes it.
        assert_eq!(endpoints("/going/x"), vec![addr("198.18.0.30:3000")]);
    }

    #[test]
    fn missing_service_and_foreign_namespace_are_request_time_errors() {
        let c = compiled(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - backendRefs: [{name: nope, port: 8080}, {name: web, namespace: other, port: 8080}]
",
        )
        .unwrap();
        assert!(c.warnings[0].contains("listener tls (HTTPS) not served"));
        let c = &c.warnings[1..];
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("Service infra/nope not found"));
        assert!(c[1].contains("without a ReferenceGrant"));
    }

    #[test]
    fn bad_fields_reject_the_set_with_their_path() {
        let err = compiled(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  rules:
  - matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]
",
        )
        .err()
        .unwrap();
        assert!(
            err.starts_with("route.yaml:1 (document 1): HTTPRoute infra/r: field `spec.rules[0].matches[0].path.value`: invalid regular expression"),
            "{err}"
        );
        let err = compiled(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  rules:
  - matches: [{path: {type: Exact, value: relative}}]
",
        )
        .err()
        .unwrap();
        assert!(
            err.contains("`spec.rules[0].matches[0].path.value`: \"relative\" must start with '/'"),
            "{err}"
        );
    }

    #[test]
    fn values_a_filter_writes_are_checked_so_no_line_break_reaches_a_head() {
        let filter = |filter: &str| {
            let route = format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: infra}}\nspec:\n  rules:\n  - filters:\n    - {filter}\n"
            );
            compiled(&route).err()
        };
        let cases = [
            (
                r#"{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Ok, value: "a\r\nX-Smuggled: yes"}]}}"#,
                "`spec.rules[0].filters[0].requestHeaderModifier.set[0].value`: \"a\\r\\nX-Smuggled: yes\" is not a header field value",
            ),
            (
                r#"{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: "X Bad", value: v}]}}"#,
                "`spec.rules[0].filters[0].responseHeaderModifier.add[0].name`: \"X Bad\" is not a header field name",
            ),
            (
                r#"{type: RequestHeaderModifier, requestHeaderModifier: {remove: ["x-ok", "bad\nname"]}}"#,
                "`spec.rules[0].filters[0].requestHeaderModifier.remove[1]`",
            ),
            (
                r#"{type: RequestRedirect, requestRedirect: {hostname: "evil.example\r\nSet-Cookie: a=b"}}"#,
                "`spec.rules[0].filters[0].requestRedirect.hostname`",
            ),
            (
                r#"{type: URLRewrite, urlRewrite: {hostname: "Host.Example:80"}}"#,
                "`spec.rules[0].filters[0].urlRewrite.hostname`: \"Host.Example:80\" is not a hostname",
            ),
            (
                r#"{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: "/a\r\nX: y"}}}"#,
                "`spec.rules[0].filters[0].urlRewrite.path.replaceFullPath`",
            ),
            (
                r#"{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: "relative"}}}"#,
                "`spec.rules[0].filters[0].requestRedirect.path.replacePrefixMatch`: \"relative\" is not an absolute path",
            ),
            (
                r#"{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: "/a?b=c"}}}"#,
                "`spec.rules[0].filters[0].urlRewrite.path.replaceFullPath`",
            ),
        ];
        for (text, expected) in cases {
            let err = filter(text).unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(err.contains("HTTPRoute infra/r: field "), "{err}");
            assert!(err.contains(expected), "{text}: {err}");
        }
        for fine in [
            r#"{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Ok, value: "tab\tand text"}]}}"#,
            r#"{type: URLRewrite, urlRewrite: {hostname: api.example.com, path: {type: ReplacePrefixMatch, replacePrefixMatch: "/v2/%7Euser"}}}"#,
        ] {
            assert_eq!(filter(fine), None, "{fine}");
        }
    }

    #[test]
    fn verdicts_give_the_specs_reasons_and_invalid_routes_are_left_out() {
        let mut m = Manifests::default();
        m.add_text(Path::new("base.yaml"), BASE).unwrap();
        let route = |name: &str, parent: &str, path: &str| {
            format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  parentRefs: [{parent}]\n  rules:\n  - matches: [{{path: {{type: RegularExpression, value: '{path}'}}}}]\n    backendRefs: [{{name: web, port: 8080}}]\n")
        };
        let routes = [
            route("ok", "{name: gw, sectionName: http}", "/ok"),
            route("no-section", "{name: gw, sectionName: nope}", "/x"),
            route("bad", "{name: gw, sectionName: http}", "/(unclosed"),
            route("elsewhere", "{name: not-ours}", "/y"),
        ];
        m.add_text(Path::new("routes.yaml"), &routes.join("---\n"))
            .unwrap();
        assert!(compile(&m, &Selection::default(), OnInvalid::RejectAll).is_err());
        let c = compile(&m, &Selection::default(), OnInvalid::Exclude).unwrap();
        let gateway = &c.verdicts.gateways[0];
        let listener = |name: &str| gateway.listeners.iter().find(|l| l.name == name).unwrap();
        assert_eq!(listener("http").attached_routes, 1);
        assert_eq!(listener("tls").accepted.reason, "UnsupportedProtocol");
        assert!(gateway.accepted.ok && gateway.programmed.ok);
        let parent = |name: &str| {
            let route = c
                .verdicts
                .routes
                .iter()
                .find(|r| r.object.name == name)
                .unwrap();
            route
                .parents
                .first()
                .map(|p| (p.accepted.ok, p.accepted.reason))
        };
        assert_eq!(parent("ok"), Some((true, "Accepted")));
        assert_eq!(parent("no-section"), Some((false, "NoMatchingParent")));
        assert_eq!(parent("bad"), Some((false, "UnsupportedValue")));
        assert_eq!(parent("elsewhere"), None, "not a Gateway of ours");
        let served = c.summary["listeners"].to_string();
        assert!(served.contains("infra/ok"), "{served}");
        assert!(!served.contains("infra/bad"), "{served}");
        assert!(c.warnings.iter().any(|w| w.contains("infra/bad")));
    }

    #[test]
    fn hostname_intersection() {
        let i = |l: Option<&str>, r: &[&str]| {
            intersect(
                l,
                Some(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            )
        };
        assert_eq!(i(None, &["a.com"]), Some(vec!["a.com".into()]));
        assert_eq!(i(Some("a.com"), &[]), Some(vec!["a.com".into()]));
        assert_eq!(
            i(Some("*.a.com"), &["x.a.com", "b.com"]),
            Some(vec!["x.a.com".into()])
        );
        assert_eq!(
            i(Some("x.a.com"), &["*.a.com"]),
            Some(vec!["x.a.com".into()])
        );
        assert_eq!(
            i(Some("*.a.com"), &["*.a.com"]),
            Some(vec!["*.a.com".into()])
        );
        assert_eq!(i(Some("a.com"), &["b.com"]), None);
    }
}
