//! Kubernetes mode against the fake API server (`testkit/src/fake_apiserver.rs`),
//! which the real kube client reaches through a kubeconfig:
//!
//! - in process (no root needed): status as the Gateway API specification
//!   writes it, the status-only conformance tests the shared suite skips,
//!   leader election between two replicas, and a watch broken by `410 Gone`
//!   resuming without the table going empty;
//! - in the lab (root): `rauta run --kubernetes` routing real traffic as
//!   objects are created, scaled under wrk load, and deleted.

use crate::common::serial;
use crate::gateway::{wrk_ends_without_failures, GatewayLab, Io};
use rauta_controlplane::kubernetes::lease::LeaseSettings;
use rauta_controlplane::kubernetes::metrics::ControllerMetrics;
use rauta_controlplane::kubernetes::{self, Controller, KubeOptions};
use rauta_controlplane::source::Published;
use rauta_testkit::fake_apiserver::FakeApiServer;
use serde_json::Value;
use std::time::{Duration, Instant};

const CONTROLLER: &str = "rauta.dev/gateway-controller";

const CLASSES: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: rauta}
spec: {controllerName: rauta.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other-controller}
";

/// A controller on a thread of its own; dropping it stops it the way a
/// crash would (no Lease release), `stop` the way SIGTERM does.
struct Replica {
    published: Published,
    metrics: ControllerMetrics,
    crash: Option<tokio::sync::oneshot::Sender<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    fn start(server: &FakeApiServer, token: &str, lease_duration: Duration) -> Self {
        let kubeconfig = server.kubeconfig(token);
        let metrics = ControllerMetrics::default();
        let options = KubeOptions {
            controller_name: CONTROLLER.into(),
            gateways: Vec::new(),
            addresses: vec![[198, 18, 0, 1].into()],
            own: Default::default(),
            lease: LeaseSettings {
                duration: lease_duration,
                renew_every: Duration::from_millis(200),
                ..LeaseSettings::new("rauta-system".into(), token.into())
            },
        };
        let (published_tx, published_rx) = std::sync::mpsc::channel();
        let (crash, crashed) = tokio::sync::oneshot::channel::<()>();
        let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
        let thread_metrics = metrics.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = kubernetes::client(Some(&kubeconfig)).await.unwrap();
                let (controller, compiled) =
                    Controller::start(client, options, thread_metrics).await;
                let published = Published::new(compiled);
                published_tx.send(published.clone()).unwrap();
                let shutdown = async {
                    let _ = stopping.await;
                };
                tokio::select! {
                    biased;
                    _ = crashed => {}
                    _ = controller.run(published, shutdown) => {}
                }
            });
        });
        let published = published_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the controller listed every kind within 10 s");
        Self {
            published,
            metrics,
            crash: Some(crash),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stop as on SIGTERM: a leader hands its Lease back.
    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }

    /// Rules in the published table.
    fn rules(&self) -> usize {
        self.published.config.load().rule_count()
    }

    /// Whether the published table has a route named `namespace/name`.
    fn serves(&self, route: &str) -> bool {
        let summary = self.published.status.lock().unwrap().summary.to_string();
        summary.contains(&format!("\"name\":\"{route}\""))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        drop(self.crash.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An HTTPRoute `apps/NAME` on listener http of `apps/gw`, for paths under
/// `prefix`, to Service web.
fn http_route(name: &str, prefix: &str) -> String {
    format!(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: apps}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{name: web, port: 8080}}]
"
    )
}

/// A condition of ours: (status, reason, observedGeneration).
fn condition(conditions: &Value, type_: &str) -> Option<(String, String, i64)> {
    conditions.as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or("").to_owned(),
                c["reason"].as_str().unwrap_or("").to_owned(),
                c["observedGeneration"].as_i64().unwrap_or(-1),
            )
        })
    })
}

/// The conditions of our parent entry for Gateway `gateway` on an HTTPRoute.
fn route_parent(server: &FakeApiServer, ns: &str, route: &str, gateway: &str) -> Option<Value> {
    let route = server.object("HTTPRoute", ns, route)?;
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER && p["parentRef"]["name"] == gateway)
        .map(|p| p["conditions"].clone())
}

/// Wait until the route's parent entry has `type_` = (status, reason).
fn expect_route(
    server: &FakeApiServer,
    (ns, route, gateway): (&str, &str, &str),
    type_: &str,
    status: &str,
    reason: &str,
) -> i64 {
    server.wait_for(
        &format!(
            "HTTPRoute {ns}/{route} parent {gateway}: {type_}={status} ({reason}); is {:?}",
            route_parent(server, ns, route, gateway)
        ),
        Duration::from_secs(5),
        |s| {
            let c = condition(&route_parent(s, ns, route, gateway)?, type_)?;
            (c.0 == status && c.1 == reason).then_some(c.2)
        },
    )
}

/// A listener's status entry on a Gateway.
fn listener(server: &FakeApiServer, ns: &str, gateway: &str, name: &str) -> Option<Value> {
    let gateway = server.object("Gateway", ns, gateway)?;
    gateway["status"]["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
}

const STATUS_CASES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Namespace
metadata: {name: tenant}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: apps}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: foo, port: 80, protocol: HTTP, hostname: foo.example.com}
  - {name: again, port: 80, protocol: HTTP}
  - {name: other-protocol, port: 80, protocol: TCP}
  - {name: grpc-only, port: 8080, protocol: HTTP, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
  - {name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign, namespace: apps}
spec:
  gatewayClassName: other
  listeners:
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  ports: [{name: http, port: 8080, targetPort: 3000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: apps, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- addresses: [198.18.0.20]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: apps}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - backendRefs: [{name: web, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: missing-backend, namespace: apps}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: nope, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: tenant}
spec:
  parentRefs: [{name: gw, namespace: apps, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /cross}}]
    backendRefs: [{name: web, namespace: apps, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-kind, namespace: apps}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /kind}}]
    backendRefs: [{group: '', kind: ConfigMap, name: web, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other-host, namespace: apps}
spec:
  parentRefs: [{name: gw, sectionName: foo}]
  hostnames: [bar.example.com]
  rules:
  - backendRefs: [{name: web, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: apps}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]
    backendRefs: [{name: web, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: apps}
spec:
  parentRefs: [{name: foreign}]
  rules:
  - backendRefs: [{name: web, port: 8080}]
";

/// Status for the valid case and each invalid one, as the specification
/// words it; a spec change moves observedGeneration; an invalid route is
/// left out while the others serve.
#[test]
fn kubernetes_status_follows_the_gateway_api_spec() {
    let server = FakeApiServer::start(&["replica-a"]);
    server.apply(CLASSES);
    server.apply(STATUS_CASES);
    let replica = Replica::start(&server, "replica-a", Duration::from_secs(2));

    // Routing: the valid routes serve, the invalid one does not.
    assert!(
        replica.serves("apps/good"),
        "{}",
        replica.published.status.lock().unwrap().summary
    );
    assert!(!replica.serves("apps/bad-regex"));

    // GatewayClass: ours accepted, the other left alone.
    server.wait_for("GatewayClass rauta Accepted", Duration::from_secs(5), |s| {
        let c = s.object("GatewayClass", "", "rauta")?;
        (condition(&c["status"]["conditions"], "Accepted")?.0 == "True").then_some(())
    });
    assert!(server.object("GatewayClass", "", "other").unwrap()["status"].is_null());

    // Gateway and listeners.
    let gateway = server.wait_for("Gateway apps/gw Programmed", Duration::from_secs(5), |s| {
        let g = s.object("Gateway", "apps", "gw")?;
        (condition(&g["status"]["conditions"], "Programmed")?.0 == "True").then_some(g)
    });
    assert_eq!(
        condition(&gateway["status"]["conditions"], "Accepted").unwrap(),
        ("True".into(), "Accepted".into(), 1)
    );
    assert_eq!(
        gateway["status"]["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": "198.18.0.1"}])
    );
    let http = server.wait_for("listener http has 4 routes", Duration::from_secs(5), |s| {
        let l = listener(s, "apps", "gw", "http")?;
        (l["attachedRoutes"] == 4).then_some(l)
    });
    for (type_, status, reason) in [
        ("Accepted", "True", "Accepted"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
        ("Conflicted", "False", "NoConflicts"),
        ("Programmed", "True", "Programmed"),
    ] {
        let c = condition(&http["conditions"], type_).unwrap();
        assert_eq!(
            (c.0.as_str(), c.1.as_str(), c.2),
            (status, reason, 1),
            "listener http {type_}"
        );
    }
    assert_eq!(http["supportedKinds"][0]["kind"], "HTTPRoute");
    let again = listener(&server, "apps", "gw", "again").unwrap();
    assert_eq!(
        condition(&again["conditions"], "Conflicted").unwrap().1,
        "HostnameConflict"
    );
    assert_eq!(
        condition(&again["conditions"], "Programmed").unwrap().0,
        "False"
    );
    let other = listener(&server, "apps", "gw", "other-protocol").unwrap();
    assert_eq!(
        condition(&other["conditions"], "Conflicted").unwrap().1,
        "ProtocolConflict"
    );
    let grpc = listener(&server, "apps", "gw", "grpc-only").unwrap();
    assert_eq!(
        condition(&grpc["conditions"], "ResolvedRefs").unwrap().1,
        "InvalidRouteKinds"
    );
    assert_eq!(grpc["supportedKinds"], serde_json::json!([]));
    let tls = listener(&server, "apps", "gw", "tls").unwrap();
    assert_eq!(
        condition(&tls["conditions"], "Accepted").unwrap(),
        ("False".into(), "UnsupportedProtocol".into(), 1)
    );
    assert_eq!(tls["attachedRoutes"], 0);
    assert!(server.object("Gateway", "apps", "foreign").unwrap()["status"].is_null());

    // Routes.
    expect_route(
        &server,
        ("apps", "good", "gw"),
        "Accepted",
        "True",
        "Accepted",
    );
    expect_route(
        &server,
        ("apps", "good", "gw"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
    expect_route(
        &server,
        ("apps", "missing-backend", "gw"),
        "Accepted",
        "True",
        "Accepted",
    );
    expect_route(
        &server,
        ("apps", "missing-backend", "gw"),
        "ResolvedRefs",
        "False",
        "BackendNotFound",
    );
    expect_route(
        &server,
        ("tenant", "cross", "gw"),
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    );
    expect_route(
        &server,
        ("apps", "bad-kind", "gw"),
        "ResolvedRefs",
        "False",
        "InvalidKind",
    );
    expect_route(
        &server,
        ("apps", "other-host", "gw"),
        "Accepted",
        "False",
        "NoMatchingListenerHostname",
    );
    expect_route(
        &server,
        ("apps", "bad-regex", "gw"),
        "Accepted",
        "False",
        "UnsupportedValue",
    );
    assert!(route_parent(&server, "apps", "elsewhere", "foreign").is_none());

    // A ReferenceGrant makes the cross-namespace backend resolve.
    server.apply(
        "
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: tenant-to-web, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: tenant}]
  to: [{group: '', kind: Service}]
",
    );
    expect_route(
        &server,
        ("tenant", "cross", "gw"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );

    // A spec change: observedGeneration follows metadata.generation.
    server.apply(&http_route("good", "/v2"));
    let generation =
        server.object("HTTPRoute", "apps", "good").unwrap()["metadata"]["generation"].as_i64();
    assert_eq!(generation, Some(2));
    server.wait_for(
        "good's conditions observe generation 2",
        Duration::from_secs(5),
        |s| {
            let conditions = route_parent(s, "apps", "good", "gw")?;
            let all = conditions.as_array()?;
            all.iter()
                .all(|c| c["observedGeneration"] == 2)
                .then_some(())
        },
    );

    // Deleting the Service: the routes to it say so.
    server.delete("Service", "apps", "web");
    expect_route(
        &server,
        ("apps", "good", "gw"),
        "ResolvedRefs",
        "False",
        "BackendNotFound",
    );
    assert!(replica.rules() > 0);
}

/// The status-only tests of the Gateway API HTTPRoute conformance suite
/// (listed under `skipped` in ../shared/conformance), with the upstream
/// manifests (conformance/tests/<name>.yaml) and the expectation the
/// shared file states.
#[test]
fn kubernetes_status_only_conformance_tests() {
    let suite_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/conformance/gateway-api-httproute.json"
    );
    let suite: Value = serde_json::from_str(
        &std::fs::read_to_string(suite_path).unwrap_or_else(|e| panic!("{suite_path}: {e}")),
    )
    .unwrap();
    let server = FakeApiServer::start(&["replica-a"]);
    server.apply(CLASSES);
    server.apply(
        &suite["base_manifests"]
            .as_str()
            .unwrap()
            .replace("{GATEWAY_CLASS_NAME}", "rauta"),
    );
    let _replica = Replica::start(&server, "replica-a", Duration::from_secs(2));

    // (test name, route namespace, route, gateway, manifests)
    let cases: [(&str, &str, &str, &str, &str); 5] = [
        (
            "HTTPRouteDisallowedKind",
            "gateway-conformance-infra",
            "disallowed-kind",
            "tlsroutes-only",
            "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tlsroutes-only, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: rauta
  listeners:
  - name: tls
    port: 443
    protocol: TLS
    tls: {mode: Passthrough}
    allowedRoutes:
      namespaces: {from: Same}
      kinds: [{kind: TLSRoute}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: disallowed-kind, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: tlsroutes-only, namespace: gateway-conformance-infra}]
  rules:
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
",
        ),
        (
            "HTTPRouteInvalidCrossNamespaceParentRef",
            "gateway-conformance-web-backend",
            "invalid-cross-namespace-parent-ref",
            "same-namespace",
            "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: invalid-cross-namespace-parent-ref, namespace: gateway-conformance-web-backend}
spec:
  parentRefs: [{name: same-namespace, namespace: gateway-conformance-infra}]
  rules:
  - backendRefs: [{name: web-backend, port: 8080}]
",
        ),
        (
            "HTTPRouteInvalidParentRefNotMatchingListenerPort",
            "gateway-conformance-infra",
            "httproute-listener-not-matching-route-port",
            "same-namespace",
            "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: httproute-listener-not-matching-route-port, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace, namespace: gateway-conformance-infra, port: 81}]
  rules:
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
",
        ),
        (
            "HTTPRouteInvalidParentRefNotMatchingSectionName",
            "gateway-conformance-infra",
            "httproute-not-matching-section-name",
            "same-namespace",
            "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: httproute-not-matching-section-name, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace, namespace: gateway-conformance-infra, sectionName: foo}]
  rules:
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
",
        ),
        (
            "HTTPRouteInvalidParentRefSectionNameNotMatchingPort",
            "gateway-conformance-infra",
            "httproute-section-name-not-matching-port",
            "same-namespace",
            "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: httproute-section-name-not-matching-port, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace, namespace: gateway-conformance-infra, sectionName: http, port: 81}]
  rules:
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
",
        ),
    ];
    let skipped = suite["skipped"].as_array().unwrap();
    let mut checked = Vec::new();
    for (name, ns, route, gateway, manifests) in cases {
        let entry = skipped
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not among the suite's skipped tests"));
        // "Status-only (route Accepted=False/NotAllowedByListeners, …)"
        let reason = entry["reason"].as_str().unwrap();
        let expected = reason
            .split("Accepted=False/")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_alphanumeric()).next())
            .unwrap_or_else(|| panic!("{name}: no Accepted=False/<Reason> in {reason:?}"));
        server.apply(manifests);
        expect_route(&server, (ns, route, gateway), "Accepted", "False", expected);
        let attached = listener(
            &server,
            "gateway-conformance-infra",
            gateway,
            if gateway == "tlsroutes-only" {
                "tls"
            } else {
                "http"
            },
        )
        .map(|l| l["attachedRoutes"].clone());
        assert_eq!(
            attached,
            Some(serde_json::json!(0)),
            "{name}: the listener counts the route"
        );
        checked.push(name);
    }

    // HTTPRouteObservedGenerationBump: conditions follow the generation.
    let name = "HTTPRouteObservedGenerationBump";
    assert!(skipped.iter().any(|t| t["name"] == name));
    let route = |port: u16| {
        format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: observed-generation-bump, namespace: gateway-conformance-infra}}
spec:
  parentRefs: [{{name: same-namespace, namespace: gateway-conformance-infra}}]
  rules:
  - backendRefs: [{{name: infra-backend-v1, port: {port}}}]
"
        )
    };
    let id = (
        "gateway-conformance-infra",
        "observed-generation-bump",
        "same-namespace",
    );
    server.apply(&route(8080));
    assert_eq!(expect_route(&server, id, "Accepted", "True", "Accepted"), 1);
    server.apply(&route(8081));
    server.wait_for(
        &format!("{name}: every condition at generation 2"),
        Duration::from_secs(5),
        |s| {
            let conditions = route_parent(s, id.0, id.1, id.2)?;
            conditions
                .as_array()?
                .iter()
                .all(|c| c["observedGeneration"] == 2)
                .then_some(())
        },
    );
    checked.push(name);
    println!(
        "status-only conformance tests passed: {}",
        checked.join(", ")
    );
}

/// Two replicas: one leads and alone writes status; when it stops renewing,
/// the other takes over within the Lease's duration and writes from then on;
/// a leader stopped by SIGTERM hands the Lease over at once.
#[test]
fn kubernetes_leader_election_hands_status_over() {
    let server = FakeApiServer::start(&["replica-a", "replica-b", "replica-c"]);
    server.apply(CLASSES);
    server.apply(STATUS_CASES);
    let lease_duration = Duration::from_secs(2);
    let a = Replica::start(&server, "replica-a", lease_duration);
    let holder = |s: &FakeApiServer| {
        s.object("Lease", "rauta-system", "rauta-gateway-controller")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    server.wait_for("replica-a holds the Lease", Duration::from_secs(5), |s| {
        (holder(s)? == "replica-a").then_some(())
    });
    let b = Replica::start(&server, "replica-b", lease_duration);
    expect_route(
        &server,
        ("apps", "good", "gw"),
        "Accepted",
        "True",
        "Accepted",
    );
    // Both replicas serve the same table; only the leader writes status.
    assert!(b.serves("apps/good") && a.serves("apps/good"));
    server.apply(&http_route("good", "/gen2"));
    server.wait_for("generation 2 observed", Duration::from_secs(5), |s| {
        (condition(&route_parent(s, "apps", "good", "gw")?, "Accepted")?.2 == 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let status_writers = |since: Instant| {
        let mut tokens: Vec<String> = server
            .writes()
            .into_iter()
            .filter(|w| w.method == "PATCH" && w.path.ends_with("/status") && w.at >= since)
            .map(|w| w.token)
            .collect();
        tokens.dedup();
        tokens
    };
    let began = server.writes().first().map(|w| w.at).unwrap();
    assert_eq!(
        status_writers(began),
        vec!["replica-a".to_owned()],
        "only the leader writes status"
    );
    assert_eq!(holder(&server).as_deref(), Some("replica-a"));
    assert_eq!(b.metrics.leader.get(), 0);

    // The leader stops (no release, as in a crash): b takes over.
    drop(a);
    let stopped = Instant::now();
    server.apply(&http_route("good", "/gen3"));
    server.wait_for("replica-b takes the Lease over", lease_duration * 3, |s| {
        (holder(s)? == "replica-b").then_some(())
    });
    let took = stopped.elapsed();
    server.wait_for(
        "the new leader writes generation 3",
        Duration::from_secs(5),
        |s| (condition(&route_parent(s, "apps", "good", "gw")?, "Accepted")?.2 == 3).then_some(()),
    );
    assert_eq!(status_writers(stopped), vec!["replica-b".to_owned()]);
    assert_eq!(b.metrics.leader.get(), 1);
    let lease = server
        .object("Lease", "rauta-system", "rauta-gateway-controller")
        .unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");

    // A graceful stop releases the Lease: a third replica takes it at its
    // next look (200 ms here), long before the Lease would expire.
    let c = Replica::start(&server, "replica-c", lease_duration);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(holder(&server).as_deref(), Some("replica-b"));
    let stopping = Instant::now();
    b.stop();
    server.wait_for("replica-c takes the released Lease", lease_duration, |s| {
        (holder(s)? == "replica-c").then_some(())
    });
    let handover = stopping.elapsed();
    assert!(
        handover < Duration::from_secs(1),
        "handover took {handover:?}"
    );
    assert_eq!(c.metrics.leader.get(), 1);
    println!(
        "takeover {took:?} after the leader crashed, {handover:?} after a graceful stop (Lease {lease_duration:?})"
    );
}

/// A watch broken by compaction resumes with 410 Gone and a relist; the
/// table never goes empty meanwhile, and later changes still arrive.
#[test]
fn kubernetes_watch_resumes_after_410_gone() {
    let server = FakeApiServer::start(&["replica-a"]);
    server.apply(CLASSES);
    server.apply(STATUS_CASES);
    let replica = Replica::start(&server, "replica-a", Duration::from_secs(2));
    let rules = replica.rules();
    assert!(rules > 0);
    // kube's watcher asks for bookmarks and resumes from them.
    server.wait_for("a bookmark sent", Duration::from_secs(5), |s| {
        (s.bookmarks_sent() > 0).then_some(())
    });
    server.compact();
    let watched = Instant::now();
    let mut lowest = usize::MAX;
    let restarts = |kind: &str| {
        replica
            .metrics
            .watch_restarts
            .get_or_create(&vec![("kind", kind.to_owned())])
            .get()
    };
    while restarts("HTTPRoute") == 0 || watched.elapsed() < Duration::from_secs(1) {
        lowest = lowest.min(replica.rules());
        assert!(
            watched.elapsed() < Duration::from_secs(10),
            "no relist after 410 Gone"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(lowest, rules, "the table shrank during the relist");
    server.apply(&http_route("after-relist", "/after"));
    let changed = Instant::now();
    server.wait_for("the route after the relist", Duration::from_secs(5), |_| {
        replica.serves("apps/after-relist").then_some(())
    });
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "took {:?}",
        changed.elapsed()
    );
    println!(
        "relisted after 410 Gone: restarts HTTPRoute={} Service={}",
        restarts("HTTPRoute"),
        restarts("Service")
    );
}

/// The lab's objects, as a cluster would hold them: the Gateway, the echo
/// Service with one ready endpoint, a route to it.
const LAB_OBJECTS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: lab, namespace: default}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports: [{name: http, port: 80, targetPort: 3000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-a, namespace: default, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- addresses: [198.18.0.20]
  conditions: {ready: true}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{name: lab}]
  rules:
  - backendRefs: [{name: echo, port: 80}]
";

/// The second echo pod (port 3001) joining the Service.
const SECOND_SLICE: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-b, namespace: default, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 3001}]
endpoints:
- addresses: [198.18.0.20]
  conditions: {ready: true}
";

#[test]
fn kubernetes_routes_follow_the_cluster_on_xdp() {
    routes_follow_the_cluster(Io::Xdp, "rtk-a");
}

#[test]
fn kubernetes_routes_follow_the_cluster_on_kernel() {
    routes_follow_the_cluster(Io::Kernel, "rtk-b");
}

/// `rauta run --kubernetes`: objects created in the API route traffic
/// within a second (the listener's port opening as the Gateway appears);
/// the Service scaled up and down under wrk load fails no request; the
/// route deleted answers 404 within a second.
fn routes_follow_the_cluster(io: Io, prefix: &str) {
    let _serial = serial();
    let (gw, server) = GatewayLab::start_kubernetes(prefix, io, |lab| {
        let listener = rauta_testkit::netns::in_netns(&lab.ns("gw"), || {
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding in the gateway's namespace")
        })
        .join()
        .unwrap();
        let server = FakeApiServer::serve(listener, &["lab-gateway"]);
        server.apply(CLASSES);
        let kubeconfig = server.kubeconfig("lab-gateway");
        (server, kubeconfig)
    });
    assert_ne!(
        gw.status("/hello", 1),
        "200",
        "routes before any Gateway exists"
    );
    // How long after `since` the gateway first answers `code` (5 s at most).
    let answers = |gw: &GatewayLab, code: &str, since: Instant| {
        gw.until_status("/hello", code, 1, since, Duration::from_secs(5))
    };

    // Created: routed within a second.
    let created = Instant::now();
    server.apply(LAB_OBJECTS);
    let routed = answers(&gw, "200", created);
    assert!(routed < Duration::from_secs(1), "routing took {routed:?}");
    let programmed = server.wait_for("Gateway lab Programmed", Duration::from_secs(5), |s| {
        let g = s.object("Gateway", "default", "lab")?;
        (condition(&g["status"]["conditions"], "Programmed")?.0 == "True").then_some(g)
    });
    assert_eq!(programmed["status"]["listeners"][0]["attachedRoutes"], 1);
    assert_eq!(programmed["status"]["addresses"][0]["value"], gw.target());

    // Scaled under load: up to two pods, then down to the second, whose
    // predecessor then stops.
    let target = gw.url("/");
    let mut load = gw
        .lab
        .spawn("client", &["wrk", "-t1", "-c16", "-d5s", &target]);
    std::thread::sleep(Duration::from_millis(1000));
    server.apply(SECOND_SLICE);
    let pods = |gw: &GatewayLab| {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let r = gw.curl(&[&gw.url("/hello")]);
            for pod in ["echo-v1-lab-0", "echo-v2-lab-0"] {
                if r.contains(pod) {
                    seen.insert(pod);
                }
            }
        }
        seen
    };
    assert_eq!(pods(&gw).len(), 2, "the second pod never got requests");
    server.delete("EndpointSlice", "default", "echo-a");
    std::thread::sleep(Duration::from_millis(1000));
    let mut gw = gw;
    if let Some(mut first) = gw.backends[0].take() {
        first.kill();
    }
    assert_eq!(
        pods(&gw).into_iter().collect::<Vec<_>>(),
        vec!["echo-v2-lab-0"]
    );
    let requests = wrk_ends_without_failures(&mut load, "the scaling");

    // Deleted: 404 within a second.
    let deleted = Instant::now();
    server.delete("HTTPRoute", "default", "echo");
    let took = answers(&gw, "404", deleted);
    assert!(took < Duration::from_secs(1), "404 took {took:?}");
    let metrics = gw.admin("/metrics");
    for name in [
        "rauta_controller_reconciles_total",
        "rauta_controller_table_rules",
        "rauta_controller_swap_seconds_bucket",
        "rauta_controller_leader 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // SIGTERM: the gateway drains, exits 0 and hands the leader Lease back.
    let lease_holder = |s: &FakeApiServer| {
        s.object("Lease", "rauta-system", "rauta-gateway-controller")
            .map(|l| {
                l["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
    };
    assert_eq!(lease_holder(&server).as_deref(), Some("lab-gateway-0"));
    let mut gateway = gw.gateway.take().unwrap();
    let exit = gateway.terminate();
    assert!(
        exit.success(),
        "gateway exit: {exit:?}\n{}",
        gateway.output().join("\n")
    );
    assert_eq!(
        lease_holder(&server).as_deref(),
        Some(""),
        "the Lease was not released"
    );
    println!(
        "routed {routed:?} after creation; scaled under {requests} requests with no failure; 404 {took:?} after deletion"
    );
}

/// Four BackendTrafficPolicies on `STATUS_CASES`' Service apps/web.
const POLICIES: &str = "
apiVersion: gateway.rauta.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: a-web, namespace: apps}
spec:
  targetRefs: [{group: '', kind: Service, name: web}]
  loadBalancer: {type: RoundRobin}
  circuitBreaker: {maxParallelRequests: 100}
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: b-web-again, namespace: apps}
spec:
  targetRefs: [{group: '', kind: Service, name: web}]
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: c-nowhere, namespace: apps}
spec:
  targetRefs: [{group: '', kind: Service, name: nowhere}]
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: d-bad, namespace: apps}
spec:
  targetRefs: [{group: '', kind: Service, name: web}]
  healthCheck: {passive: {maxEjectionPercent: 150}}
";

/// A policy's `Accepted` condition: (status, reason).
fn policy_accepted(server: &FakeApiServer, name: &str) -> Option<(String, String)> {
    let policy = server.object("BackendTrafficPolicy", "apps", name)?;
    let (status, reason, _) = condition(&policy["status"]["conditions"], "Accepted")?;
    Some((status, reason))
}

/// BackendTrafficPolicy status (GEP-713's reasons): Accepted where a
/// policy holds its Service, Conflicted for a second one on it,
/// TargetNotFound, Invalid for a bad field (the routes still serve); and
/// the backend runs under the accepted one.
#[test]
fn kubernetes_backend_traffic_policies_get_accepted_status() {
    let server = FakeApiServer::start(&["replica-a"]);
    server.apply(CLASSES);
    server.apply(STATUS_CASES);
    server.apply(POLICIES);
    let replica = Replica::start(&server, "replica-a", Duration::from_secs(2));
    for (name, status, reason) in [
        ("a-web", "True", "Accepted"),
        ("b-web-again", "False", "Conflicted"),
        ("c-nowhere", "False", "TargetNotFound"),
        ("d-bad", "False", "Invalid"),
    ] {
        let want = (status.to_owned(), reason.to_owned());
        server.wait_for(
            &format!("BackendTrafficPolicy apps/{name} {status} {reason}"),
            Duration::from_secs(5),
            |s| (policy_accepted(s, name).as_ref() == Some(&want)).then_some(()),
        );
    }
    assert!(replica.serves("apps/good"));
    let summary = replica.published.status.lock().unwrap().summary.to_string();
    assert!(
        summary.contains(r#""policy":"apps/a-web""#),
        "the backend is not under apps/a-web: {summary}"
    );
    // Deleting the holder hands the Service to the next policy.
    server.delete("BackendTrafficPolicy", "apps", "a-web");
    server.wait_for(
        "apps/b-web-again Accepted once apps/a-web is gone",
        Duration::from_secs(5),
        |s| (policy_accepted(s, "b-web-again")?.0 == "True").then_some(()),
    );
}
