//! A fake Kubernetes API server, faithful on the wire for what Rauta's
//! controller uses, so the real kube client talks to it through a
//! kubeconfig (no kube-apiserver can be installed on these machines):
//!
//! - list (`GET` a collection): the items and the collection's
//!   `resourceVersion`;
//! - watch (`?watch=true&resourceVersion=R`): a chunked stream of JSON
//!   events, one per line — events after `R` replayed from history, then
//!   live ones; `BOOKMARK`s when asked for; `ERROR` with a 410 `Status`
//!   (`Expired`) when `R` is older than the compacted history; ends at
//!   `timeoutSeconds`;
//! - get, create (409 `AlreadyExists`), replace (409 `Conflict` on a stale
//!   `resourceVersion`), delete, and JSON merge patch of an object or its
//!   `status` subresource (a status patch leaves `metadata.generation`
//!   alone; a spec change bumps it);
//! - bearer-token authentication (401 without a known token), and a log of
//!   every write with the token that made it.
//!
//! Tests change objects directly (`apply`, `delete`), as `kubectl` would, and
//! can `compact` the history, which also breaks every open watch.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

type Body = BoxBody<Bytes, Infallible>;

/// A kind the fake serves: where it lives in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

pub const KINDS: &[Kind] = &[
    Kind {
        group: "gateway.rauta.dev",
        version: "v1alpha1",
        plural: "backendtrafficpolicies",
        kind: "BackendTrafficPolicy",
        namespaced: true,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gatewayclasses",
        kind: "GatewayClass",
        namespaced: false,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "httproutes",
        kind: "HTTPRoute",
        namespaced: true,
    },
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "referencegrants",
        kind: "ReferenceGrant",
        namespaced: true,
    },
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
    },
];

pub fn kind_named(kind: &str) -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.kind == kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve {kind}"))
}

/// An object's key: kind, namespace ("" for cluster-scoped), name.
type Key = (&'static str, String, String);

/// One change, as a watch event.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    event: &'static str,
    object: Value,
}

/// A write request, as the server saw it.
#[derive(Clone, Debug)]
pub struct Write {
    pub method: String,
    pub path: String,
    pub token: String,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    writes: Vec<Write>,
    next_uid: u64,
}

struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch.
    epoch: watch::Sender<u64>,
    tokens: Vec<String>,
    bookmark_every: Duration,
    bookmarks_sent: std::sync::atomic::AtomicU64,
}

/// A running fake API server on 127.0.0.1.
pub struct FakeApiServer {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    dir: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

impl FakeApiServer {
    /// Serve on a free loopback port; `tokens` are the bearer tokens it
    /// accepts.
    pub fn start(tokens: &[&str]) -> Self {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fake API server");
        Self::serve(listener, tokens)
    }

    /// Serve on `listener` (bound in whichever network namespace its
    /// clients are).
    pub fn serve(listener: std::net::TcpListener, tokens: &[&str]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .expect("a runtime for the fake API server");
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            changes,
            epoch: watch::channel(0).0,
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            bookmark_every: Duration::from_millis(500),
            bookmarks_sent: Default::default(),
        });
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("the fake API server's listener")
        };
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let dir = std::env::temp_dir().join(format!(
            "rauta-fake-apiserver-{}-{}",
            std::process::id(),
            address.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            address,
            shared,
            dir,
            _runtime: runtime,
        }
    }

    /// A kubeconfig file that reaches this server as a user with `token`.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{token}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {token}\n    namespace: default\ncurrent-context: fake\nusers:\n- name: {token}\n  user:\n    token: {token}\n",
            self.address
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Create or update every object in a YAML stream, as `kubectl apply`
    /// would: an update replaces everything but `status`.
    pub fn apply(&self, yaml: &str) {
        for document in yaml.split("\n---") {
            let value: Option<Value> = serde_saphyr::from_str(document)
                .unwrap_or_else(|e| panic!("test manifest is not YAML: {e}\n{document}"));
            let Some(value) = value.filter(|v| !v.is_null()) else {
                continue;
            };
            let Some(kind) = KINDS
                .iter()
                .find(|k| Some(k.kind) == value["kind"].as_str())
            else {
                // Kinds the controller does not read (Deployments, …) are
                // not kept.
                continue;
            };
            let namespace = value["metadata"]["namespace"]
                .as_str()
                .unwrap_or(if kind.namespaced { "default" } else { "" })
                .to_owned();
            let mut state = self.shared.state.lock().unwrap();
            let key = (kind.kind, namespace, name_of(&value));
            let change = match state.objects.get(&key).cloned() {
                Some(current) => {
                    let mut next = value;
                    next["status"] = current["status"].clone();
                    if next["status"].is_null() {
                        next.as_object_mut().unwrap().remove("status");
                    }
                    next["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                    update(&mut state, kind, &key, &current, next)
                }
                None => create(&mut state, kind, &key, value),
            };
            drop(state);
            let _ = self.shared.changes.send(change);
        }
    }

    /// Delete an object, as `kubectl delete` would.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let kind = kind_named(kind);
        let key = (kind.kind, namespace.to_owned(), name.to_owned());
        let mut state = self.shared.state.lock().unwrap();
        let change = remove(&mut state, kind, &key).expect("deleting an object that exists");
        drop(state);
        let _ = self.shared.changes.send(change);
    }

    /// The object as stored, `status` included.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = kind_named(kind);
        let state = self.shared.state.lock().unwrap();
        state
            .objects
            .get(&(kind.kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Forget the history (as etcd compaction does) and break every open
    /// watch: clients resuming from an older resourceVersion get 410 Gone.
    pub fn compact(&self) {
        {
            let mut state = self.shared.state.lock().unwrap();
            state.compacted = state.rv + 1;
            state.history.clear();
        }
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// BOOKMARK events sent so far (to watches that asked for them).
    pub fn bookmarks_sent(&self) -> u64 {
        self.shared
            .bookmarks_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.shared.state.lock().unwrap().writes.clone()
    }

    /// Poll `check` until it returns `Some`, or panic after `timeout`
    /// saying `what` did not happen.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_owned()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn record(
    state: &mut State,
    kind: &'static Kind,
    namespace: &str,
    event: &'static str,
    object: &Value,
) -> Change {
    let change = Change {
        rv: state.rv,
        kind: kind.kind,
        namespace: namespace.to_owned(),
        event,
        object: object.clone(),
    };
    state.history.push(change.clone());
    change
}

fn create(state: &mut State, kind: &'static Kind, key: &Key, mut object: Value) -> Change {
    state.rv += 1;
    state.next_uid += 1;
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind);
    let meta = &mut object["metadata"];
    if kind.namespaced {
        meta["namespace"] = json!(key.1);
    }
    meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", state.next_uid));
    meta["resourceVersion"] = json!(state.rv.to_string());
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!(now());
    state.objects.insert(key.clone(), object.clone());
    record(state, kind, &key.1, "ADDED", &object)
}

/// Replace `current` with `next`: system metadata kept, the generation
/// bumped when anything but metadata and status changed.
fn update(
    state: &mut State,
    kind: &'static Kind,
    key: &Key,
    current: &Value,
    mut next: Value,
) -> Change {
    let spec_of = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    state.rv += 1;
    let generation = current["metadata"]["generation"].as_i64().unwrap_or(1)
        + i64::from(spec_of(current) != spec_of(&next));
    next["apiVersion"] = json!(kind.api_version());
    next["kind"] = json!(kind.kind);
    for field in ["uid", "creationTimestamp", "namespace"] {
        if !current["metadata"][field].is_null() {
            next["metadata"][field] = current["metadata"][field].clone();
        }
    }
    next["metadata"]["generation"] = json!(generation);
    next["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    state.objects.insert(key.clone(), next.clone());
    record(state, kind, &key.1, "MODIFIED", &next)
}

fn remove(state: &mut State, kind: &'static Kind, key: &Key) -> Option<Change> {
    let mut object = state.objects.remove(key)?;
    state.rv += 1;
    object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    Some(record(state, kind, &key.1, "DELETED", &object))
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().unwrap();
            for (name, value) in fields {
                if value.is_null() {
                    object.remove(name);
                } else {
                    merge(object.entry(name.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// A Kubernetes `Status` failure.
fn failure(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    respond(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// What a request path names.
struct Target {
    kind: &'static Kind,
    /// `None`: all namespaces (or cluster-scoped).
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        KINDS
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    };
    let (namespace, plural, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] if find(plural).is_some_and(|k| k.namespaced) => {
            (Some(ns.to_string()), *plural, rest)
        }
        [plural, rest @ ..] => (None, *plural, rest),
        [] => return None,
    };
    let kind = find(plural)?;
    let (name, status) = match rest {
        [] => (None, false),
        [name] => (Some(name.to_string()), false),
        [name, "status"] => (Some(name.to_string()), true),
        _ => return None,
    };
    Some(Target {
        kind,
        namespace,
        name,
        status,
    })
}

fn query(request: &Request<Incoming>) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/")))
        .collect()
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    if !shared.tokens.contains(&token) {
        return failure(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        );
    }
    let path = request.uri().path().to_owned();
    let Some(target) = parse_path(&path) else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let method = request.method().clone();
    let params = query(&request);
    if method != Method::GET {
        shared.state.lock().unwrap().writes.push(Write {
            method: method.to_string(),
            path: path.clone(),
            token: token.clone(),
            at: Instant::now(),
        });
    }
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "unreadable body".into(),
            )
        }
    };
    let kind = target.kind;
    let namespace = target.namespace.clone().unwrap_or_default();
    match (&method, &target.name) {
        (&Method::GET, None)
            if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch_response(shared, target, &params)
        }
        (&Method::GET, None) => {
            let state = shared.state.lock().unwrap();
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((k, ns, _), _)| {
                    *k == kind.kind && (target.namespace.is_none() || *ns == namespace)
                })
                .map(|(_, object)| object.clone())
                .collect();
            respond(
                StatusCode::OK,
                json!({
                    "kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(),
                    "metadata": { "resourceVersion": state.rv.to_string() },
                    "items": items,
                }),
            )
        }
        (&Method::GET, Some(name)) => {
            let state = shared.state.lock().unwrap();
            match state
                .objects
                .get(&(kind.kind, namespace.clone(), name.clone()))
            {
                Some(object) => respond(StatusCode::OK, object.clone()),
                None => not_found(kind, name),
            }
        }
        (&Method::POST, None) => {
            let object = match json_body(&body) {
                Ok(object) => object,
                Err((code, reason, message)) => return failure(code, reason, message),
            };
            let key = (kind.kind, namespace.clone(), name_of(&object));
            let mut state = shared.state.lock().unwrap();
            if state.objects.contains_key(&key) {
                return failure(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{}\" already exists", kind.plural, key.2),
                );
            }
            let change = create(&mut state, kind, &key, object);
            drop(state);
            let _ = shared.changes.send(change.clone());
            respond(StatusCode::CREATED, change.object)
        }
        (&Method::PUT, Some(name)) => replace(&shared, kind, (&namespace, name), |current| {
            let object = json_body(&body)?;
            let sent = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
            let stored = current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("");
            if !sent.is_empty() && sent != stored {
                return Err((
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", kind.plural),
                ));
            }
            Ok(object)
        }),
        (&Method::PATCH, Some(name)) => replace(&shared, kind, (&namespace, name), |current| {
            let patch = json_body(&body)?;
            let mut next = current.clone();
            if target.status {
                // The status subresource takes status only.
                merge(&mut next["status"], &patch["status"]);
            } else {
                merge(&mut next, &patch);
                next["status"] = current["status"].clone();
            }
            Ok(next)
        }),
        (&Method::DELETE, Some(name)) => {
            let mut state = shared.state.lock().unwrap();
            match remove(
                &mut state,
                kind,
                &(kind.kind, namespace.clone(), name.clone()),
            ) {
                Some(change) => {
                    drop(state);
                    let _ = shared.changes.send(change.clone());
                    respond(StatusCode::OK, change.object)
                }
                None => not_found(kind, name),
            }
        }
        _ => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        ),
    }
}

/// A request refused: the status code, the Status reason and message.
type Refusal = (StatusCode, &'static str, String);

fn json_body(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body is not JSON".into(),
        )
    })
}

/// Replace a stored object with what `next` makes of it (or answer its
/// error); an unchanged object keeps its resourceVersion, as the API
/// server's no-op writes do.
fn replace(
    shared: &Shared,
    kind: &'static Kind,
    (namespace, name): (&str, &str),
    next: impl FnOnce(&Value) -> Result<Value, Refusal>,
) -> Response<Body> {
    let key = (kind.kind, namespace.to_owned(), name.to_owned());
    let mut state = shared.state.lock().unwrap();
    let Some(current) = state.objects.get(&key).cloned() else {
        return not_found(kind, name);
    };
    let next = match next(&current) {
        Ok(next) => next,
        Err((code, reason, message)) => return failure(code, reason, message),
    };
    let mut same = next.clone();
    same["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if same == current {
        return respond(StatusCode::OK, current);
    }
    let change = update(&mut state, kind, &key, &current, next);
    drop(state);
    let _ = shared.changes.send(change.clone());
    respond(StatusCode::OK, change.object)
}

fn not_found(kind: &Kind, name: &str) -> Response<Body> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{}.{} \"{name}\" not found", kind.plural, kind.group),
    )
}

fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": event, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A watch: history after the asked resourceVersion, then live changes,
/// bookmarks, until `timeoutSeconds` or a `compact`.
fn watch_response(
    shared: Arc<Shared>,
    target: Target,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let kind = target.kind;
    let namespace = target.namespace;
    let in_scope =
        move |k: &str, ns: &str| k == kind.kind && namespace.as_deref().is_none_or(|n| n == ns);
    let wanted = in_scope.clone();
    let wanted = move |change: &Change| wanted(change.kind, &change.namespace);
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    // Subscribe before reading the history so no change falls between.
    let mut live = shared.changes.subscribe();
    let mut epoch = shared.epoch.subscribe();
    let (backlog, expired, current_rv) = {
        let state = shared.state.lock().unwrap();
        let expired = from != 0 && from < state.compacted;
        let backlog: Vec<Change> = if from == 0 {
            // resourceVersion 0 or unset: the current objects, as ADDED.
            state
                .objects
                .iter()
                .filter(|((k, ns, _), _)| in_scope(k, ns))
                .map(|((k, ns, _), o)| Change {
                    rv: state.rv,
                    kind: k,
                    namespace: ns.clone(),
                    event: "ADDED",
                    object: o.clone(),
                })
                .collect()
        } else {
            state
                .history
                .iter()
                .filter(|c| c.rv > from && wanted(c))
                .cloned()
                .collect()
        };
        (backlog, expired, state.rv)
    };
    let bookmark_every = shared.bookmark_every;
    tokio::spawn(async move {
        let shared = shared;
        if expired {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({current_rv})"),
                "reason": "Expired", "code": 410,
            });
            let _ = tx.send(event_line("ERROR", &status)).await;
            return;
        }
        let mut last = from;
        for change in backlog {
            last = last.max(change.rv);
            if tx
                .send(event_line(change.event, &change.object))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(bookmark_every);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = epoch.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = last.max(current_rv);
                    let bookmark = json!({
                        "kind": kind.kind, "apiVersion": kind.api_version(),
                        "metadata": { "resourceVersion": rv.to_string() },
                    });
                    if tx.send(event_line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                    shared.bookmarks_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                change = live.recv() => match change {
                    Ok(change) if change.rv > last && wanted(&change) => {
                        last = change.rv;
                        if tx.send(event_line(change.event, &change.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Fell behind: end the watch; the client resumes.
                    Err(_) => return,
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}
