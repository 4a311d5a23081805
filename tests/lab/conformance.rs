//! The Gateway API HTTPRoute conformance suite, run against `rauta run`.
//!
//! Reads `../shared/conformance/gateway-api-httproute.json` (the upstream
//! suite as data; its `conventions` block is what this runner implements),
//! starts one echo backend per app the suite's Services select, writes each
//! test's manifests plus EndpointSlices for those backends into a config
//! directory, runs the gateway for every Gateway the test addresses (each on
//! its own loopback address, listener ports as declared), sends every case
//! and compares as the conventions say. Prints passed/failed per test and
//! per feature; fails on any failed case of a feature Rauta claims.

use crate::common::{require_root, serial, Process, RAUTA};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Features whose every case must pass: every feature of the suite (the
/// run fails on one not listed here).
const CLAIMED: &[&str] = &[
    "Core",
    "Extended:HTTPRouteQueryParamMatching",
    "Extended:HTTPRouteMethodMatching",
    "Extended:HTTPRouteResponseHeaderModification",
    "Extended:HTTPRouteBackendRequestHeaderModification",
    "Extended:HTTPRoutePathRedirect",
    "Extended:HTTPRoutePortRedirect",
    "Extended:HTTPRouteSchemeRedirect",
    "Extended:HTTPRouteHostRewrite",
    "Extended:HTTPRoutePathRewrite",
    "Extended:HTTPRouteBackendProtocolH2C",
    "Extended:HTTPRouteRequestTimeout",
    "Extended:HTTPRouteBackendTimeout",
    "Extended:HTTPRouteRetry",
    "Extended:HTTPRouteRetryConnectionError",
    "Extended:HTTPRouteRetryBackendTimeout",
    "Extended:HTTPRouteBackendRequestRedirect",
    "Extended:HTTPRouteBackendURLRewrite",
    "Extended:HTTPRouteRequestMirror",
    "Extended:HTTPRouteRequestMultipleMirrors",
    "Extended:HTTPRouteRequestPercentageMirror",
    "Extended:HTTPRouteCORS",
    "Extended:GatewayHTTPListenerIsolation",
    "Extended:HTTPRoute303RedirectStatusCode",
    "Extended:HTTPRoute307RedirectStatusCode",
    "Extended:HTTPRoute308RedirectStatusCode",
    "Extended:HTTPRouteNamedRouteRule",
    "Extended:HTTPRouteParentRefPort",
];

/// Consecutive passes a case needs (the Go harness's default).
const CONSECUTIVE: usize = 3;

fn suite_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/gateway-api-httproute.json")
}

/// YAML documents (the suite's manifest text) as JSON values.
fn documents(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(["---"]) {
        if line.starts_with("---") {
            if !current.trim().is_empty() {
                let value: Option<Value> = serde_saphyr::from_str(&current)
                    .unwrap_or_else(|e| panic!("suite manifest does not parse: {e}\n{current}"));
                out.extend(value);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    out
}

fn write_documents(path: &Path, docs: &[Value]) {
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string_pretty(d).expect("json"))
        .collect();
    // Write beside and rename: the gateway watching the directory never
    // sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.join("\n---\n")).expect("writing manifests");
    std::fs::rename(&tmp, path).expect("renaming manifests");
}

fn key(doc: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        s(&doc["kind"]),
        s(&doc["metadata"]["namespace"]),
        s(&doc["metadata"]["name"]),
    )
}

/// An echo backend: one "pod" per app.
struct Pod {
    address: Ipv4Addr,
    process: Process,
}

/// Start an echo pod for every `app` a Service selects.
fn start_pods(services: &[&Value]) -> HashMap<String, Pod> {
    let mut apps: BTreeMap<String, String> = BTreeMap::new();
    for s in services {
        if let Some(app) = s["spec"]["selector"]["app"].as_str() {
            let ns = s["metadata"]["namespace"].as_str().unwrap_or("default");
            apps.entry(app.to_owned()).or_insert_with(|| ns.to_owned());
        }
    }
    let mut pods = HashMap::new();
    for (index, (app, namespace)) in apps.into_iter().enumerate() {
        let address = Ipv4Addr::new(127, 0, 10, index as u8 + 1);
        // 3000: HTTP/1.1 (and h2c), 3001: the h2c port of the suite's
        // Services (the echo server tells the protocols apart itself).
        let (listen, listen_h2c) = (format!("{address}:3000"), format!("{address}:3001"));
        let process = Process::spawn(
            Command::new(RAUTA)
                .args([
                    "echo",
                    "--log-requests",
                    "--listen",
                    &listen,
                    "--listen",
                    &listen_h2c,
                ])
                .env("POD_NAME", format!("{app}-6f9c8d7b5c-x{index}k2p"))
                .env("NAMESPACE", &namespace),
        );
        pods.insert(app, Pod { address, process });
    }
    for pod in pods.values() {
        wait_listening(SocketAddr::from((pod.address, 3000)));
    }
    pods
}

fn wait_listening(address: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{address} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// EndpointSlices for Services with a selector (their app's pod), and
/// endpoints for the suite's manual, empty EndpointSlices (its notes: point
/// them at infra-backend-v1).
fn endpoint_slices(services: &[&Value], pods: &HashMap<String, Pod>) -> Vec<Value> {
    let mut slices = Vec::new();
    for s in services {
        let Some(pod) = s["spec"]["selector"]["app"]
            .as_str()
            .and_then(|a| pods.get(a))
        else {
            continue;
        };
        let (_, ns, name) = key(s);
        let ports: Vec<Value> = s["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let target = p["targetPort"].as_u64().or(p["port"].as_u64())?;
                Some(json!({"name": p["name"].as_str().unwrap_or(""), "port": target, "protocol": "TCP"}))
            })
            .collect();
        slices.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-conformance"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": [{"addresses": [pod.address.to_string()], "conditions": {"ready": true}}],
        }));
    }
    slices
}

fn fill_manual_slices(docs: &mut [Value], pods: &HashMap<String, Pod>) {
    let Some(pod) = pods.get("infra-backend-v1") else {
        return;
    };
    for doc in docs.iter_mut() {
        if doc["kind"] == "EndpointSlice" && doc["endpoints"].is_null() {
            if doc["addressType"] == "IPv4" {
                doc["endpoints"] = json!([{"addresses": [pod.address.to_string()]}]);
            } else {
                doc["endpoints"] = json!([]);
            }
        }
    }
}

/// A running gateway for one Gateway object.
struct Gateway {
    address: Ipv4Addr,
    process: Process,
}

fn start_gateway(dir: &Path, gateway: &str, address: Ipv4Addr) -> Result<Gateway, String> {
    let process = Process::spawn(Command::new(RAUTA).args([
        "run",
        "--io",
        "kernel",
        "--config",
        &dir.to_string_lossy(),
        "--gateway",
        gateway,
        "--address",
        &address.to_string(),
        "--admin",
        "off",
    ]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut process = process;
    loop {
        if process
            .output()
            .iter()
            .any(|l| l.starts_with("rauta run: serving"))
        {
            return Ok(Gateway { address, process });
        }
        let exited = process.try_exited();
        if exited || Instant::now() > deadline {
            return Err(format!(
                "gateway {gateway} did not start: {}",
                process.output().join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response as the runner sees it.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    format!("{:016x}{:08x}", t ^ (n << 40), n)
}

/// Send one request over cleartext HTTP/2 with prior knowledge (curl).
fn send_h2c(
    target: SocketAddr,
    request: &Value,
    host: &str,
    path: &str,
) -> Result<Response, String> {
    let method = request["method"].as_str().unwrap_or("GET");
    let url = format!("http://{target}{path}");
    let host = format!("Host: {host}");
    let output = Command::new("curl")
        .args([
            "-s",
            "-i",
            "-m",
            "10",
            "--http2-prior-knowledge",
            "-X",
            method,
        ])
        .args(["-H", &host, &url])
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head from curl (exit {})", output.status))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with("HTTP/2 ") {
        return Err(format!("not an HTTP/2 response: {status_line}"));
    }
    let status = status_line[7..]
        .trim()
        .parse()
        .map_err(|_| format!("bad status line {status_line}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Send one request (a connection of its own, as the harness does).
fn send(
    target: SocketAddr,
    request: &Value,
    host: &str,
    path: &str,
    extra: &[(String, String)],
) -> Result<Response, String> {
    let method = request["method"].as_str().unwrap_or("GET");
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rauta-conformance\r\nConnection: close\r\n");
    let mut echo_set = String::new();
    if let Some(set) = request["echo_set_response_headers"].as_object() {
        echo_set = set
            .iter()
            .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",");
    }
    text.push_str(&format!("X-Echo-Set-Header: {echo_set}\r\n"));
    for (name, value) in request["headers"].as_object().into_iter().flatten() {
        text.push_str(&format!(
            "{name}: {}\r\n",
            value.as_str().unwrap_or_default()
        ));
    }
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    stream
        .write_all(text.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("receive: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(format!("no complete response head in {} bytes", raw.len())),
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let status = response.code.unwrap_or(0);
    let mut body = raw[head_len..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = input
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&input[..line_end])
                .map_err(|_| "chunk")?
                .trim(),
            16,
        )
        .map_err(|_| "chunk size")?;
        input = &input[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(input.get(..size).ok_or("short chunk")?);
        input = input.get(size + 2..).ok_or("chunk end")?;
    }
}

fn status_ok(expected: &Value, actual: u16) -> bool {
    let list: Vec<u64> = match expected {
        Value::Array(a) => a.iter().filter_map(Value::as_u64).collect(),
        v => v.as_u64().into_iter().collect(),
    };
    let timeouts = list.contains(&408) || list.contains(&504);
    list.contains(&(actual as u64)) || (timeouts && matches!(actual, 408 | 504))
}

/// The echo body's header values for `name`, joined with ','.
fn echoed_header(echo: &Value, name: &str) -> Option<String> {
    let headers = echo["headers"].as_object()?;
    let values: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Compare one response with a case's expectations.
fn check(case: &Value, sent_path: &str, response: &Response) -> Result<(), String> {
    let expect = &case["expect"];
    let request = &case["request"];
    if !status_ok(&expect["status"], response.status) {
        return Err(format!(
            "status {} (expected {})",
            response.status, expect["status"]
        ));
    }
    let status = response.status;
    if matches!(status, 200 | 204) {
        let echo: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        let backend_request = &expect["backend_request"];
        let echo_expected = !(backend_request["path"] == "");
        if echo_expected && echo.is_null() {
            return Err(format!(
                "no echo body: {:?}",
                String::from_utf8_lossy(&response.body)
            ));
        }
        if let Some(prefix) = expect["backend"].as_str() {
            let pod = echo["pod"].as_str().unwrap_or_default();
            if !pod.starts_with(prefix) {
                return Err(format!("answered by pod {pod:?}, expected {prefix}-*"));
            }
        }
        if let Some(ns) = expect["namespace"].as_str() {
            if echo["namespace"] != ns && echo_expected {
                return Err(format!("namespace {} (expected {ns})", echo["namespace"]));
            }
        }
        if !echo_expected && !echo.is_null() {
            // Path "": the gateway itself must answer (HTTPRouteCORS).
            return Err(format!(
                "answered by the backend ({}), not the gateway",
                echo["pod"]
            ));
        }
        if backend_request.is_object() && echo_expected {
            if let Some(path) = backend_request["path"].as_str() {
                if !path.is_empty() && echo["path"] != path {
                    return Err(format!(
                        "backend saw path {} (expected {path})",
                        echo["path"]
                    ));
                }
            }
            if let Some(host) = backend_request["host"].as_str() {
                if echo["host"] != host {
                    return Err(format!(
                        "backend saw host {} (expected {host})",
                        echo["host"]
                    ));
                }
            }
            if let Some(method) = backend_request["method"].as_str() {
                if echo["method"] != method {
                    return Err(format!(
                        "backend saw method {} (expected {method})",
                        echo["method"]
                    ));
                }
            }
            for (name, value) in backend_request["headers"].as_object().into_iter().flatten() {
                let got = echoed_header(&echo, name);
                if got.as_deref() != value.as_str() {
                    return Err(format!("backend saw {name}: {got:?} (expected {value})"));
                }
            }
            for name in backend_request["absent_headers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap_or_default();
                if let Some(got) = echoed_header(&echo, name) {
                    return Err(format!("backend saw {name}: {got} (expected absent)"));
                }
            }
        } else if echo_expected {
            if echo["method"] != request["method"] {
                return Err(format!("backend saw method {}", echo["method"]));
            }
            if echo["path"] != sent_path {
                return Err(format!(
                    "backend saw path {} (sent {sent_path})",
                    echo["path"]
                ));
            }
            if let Some(host) = request["host"].as_str() {
                if echo["host"] != host {
                    return Err(format!("backend saw host {} (sent {host})", echo["host"]));
                }
            }
            for (name, value) in request["headers"].as_object().into_iter().flatten() {
                let got = echoed_header(&echo, name);
                if got.as_deref() != value.as_str() {
                    return Err(format!("backend saw {name}: {got:?} (sent {value})"));
                }
            }
        }
        let strip = expect["response_headers_ignore_whitespace"]
            .as_bool()
            .unwrap_or(false);
        let norm = |s: &str| {
            if strip {
                s.replace(' ', "")
            } else {
                s.to_owned()
            }
        };
        for (name, value) in expect["response_headers"].as_object().into_iter().flatten() {
            let got = response.header(name);
            if got.as_deref().map(norm) != value.as_str().map(norm) {
                return Err(format!("response {name}: {got:?} (expected {value})"));
            }
        }
        for (name, values) in expect["response_headers_one_of"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let got = response.header(name).unwrap_or_default();
            if !values
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v.as_str() == Some(got.as_str()))
            {
                return Err(format!(
                    "response {name}: {got:?} (expected one of {values})"
                ));
            }
        }
        for name in expect["response_absent_headers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            if let Some(got) = response.header(name) {
                return Err(format!("response {name}: {got} (expected absent)"));
            }
        }
    }
    if (300..400).contains(&status) && expect["redirect"].is_object() {
        check_redirect(&expect["redirect"], sent_path, response)?;
    }
    Ok(())
}

fn check_redirect(redirect: &Value, sent_path: &str, response: &Response) -> Result<(), String> {
    let location = response
        .header("location")
        .ok_or("redirect without Location")?;
    let (scheme, rest) = location
        .split_once("://")
        .ok_or_else(|| format!("Location {location:?} not absolute"))?;
    let (authority, path) = rest
        .find('/')
        .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let path = path.split('?').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .map_or((authority, None), |(h, p)| (h, Some(p)));
    let want_scheme = redirect["scheme"].as_str().unwrap_or("http");
    if scheme != want_scheme {
        return Err(format!(
            "Location {location}: scheme (expected {want_scheme})"
        ));
    }
    if let Some(h) = redirect["host"].as_str() {
        if host != h {
            return Err(format!("Location {location}: host (expected {h})"));
        }
    }
    let want_path = redirect["path"]
        .as_str()
        .unwrap_or_else(|| sent_path.split('?').next().unwrap_or_default());
    if path != want_path {
        return Err(format!("Location {location}: path (expected {want_path})"));
    }
    match (redirect["port"].as_str(), port) {
        (Some(want), got) if got != Some(want) => {
            Err(format!("Location {location}: port (expected {want})"))
        }
        (None, Some(p)) if !matches!((scheme, p), ("http", "80") | ("https", "443")) => {
            Err(format!("Location {location}: port {p} (expected none)"))
        }
        _ => Ok(()),
    }
}

/// Substitute the per-probe placeholder of a path (`{request_id}` is the
/// case's: [`with_request_id`]).
fn fill_path(path: &str) -> String {
    path.replace("{uuid}", &fresh_id())
}

/// `case` with every `{request_id}` placeholder (request and expected
/// paths alike) set to `id`.
fn with_request_id(case: &Value, id: &str) -> Value {
    let text = case.to_string().replace("{request_id}", id);
    serde_json::from_str(&text).expect("the case with its id is JSON")
}

/// The echo log line a backend prints for a request to `path`.
fn echo_line(path: &str) -> String {
    format!("Echoing back request made to {path} to client")
}

/// Echo log lines for `path` in `pod`'s output.
fn logged(pod: &Pod, path: &str) -> usize {
    let line = echo_line(path);
    pod.process
        .output()
        .iter()
        .filter(|l| l.contains(&line))
        .count()
}

/// A case's `mirrored_to` entries: each, its backend's name and its pod.
fn mirrors<'a>(
    case: &'a Value,
    pods: &'a HashMap<String, Pod>,
) -> Result<Vec<(&'a Value, &'a str, &'a Pod)>, String> {
    case["expect"]["mirrored_to"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|mirror| {
            let backend = mirror["backend"].as_str().unwrap_or_default();
            let pod = pods
                .get(backend)
                .ok_or_else(|| format!("no pod for mirror backend {backend}"))?;
            Ok((mirror, backend, pod))
        })
        .collect()
}

/// RequestMirror: every `mirrored_to` backend logged the request to
/// `path` (copies arrive on their own time: waited for, a little).
fn check_mirrored(case: &Value, path: &str, pods: &HashMap<String, Pod>) -> Result<(), String> {
    for (_, backend, pod) in mirrors(case, pods)? {
        let deadline = Instant::now() + Duration::from_secs(3);
        while logged(pod, path) == 0 {
            if Instant::now() > deadline {
                return Err(format!("{backend} never saw the mirrored {path}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// A percentage mirror: `total_requests` with one request id, each
/// answered as the case expects, and the mirror's copies within
/// `tolerance_stddevs` of the share.
fn check_mirror_distribution(
    case: &Value,
    target: SocketAddr,
    host: &str,
    pods: &HashMap<String, Pod>,
) -> Result<(), String> {
    let case = with_request_id(case, &fresh_id());
    let spec = &case["expect"]["mirror_distribution"];
    let total = spec["total_requests"].as_u64().unwrap_or(500) as usize;
    let concurrency = spec["concurrency"].as_u64().unwrap_or(10) as usize;
    let stddevs = spec["tolerance_stddevs"].as_f64().unwrap_or(3.0);
    let path = spec["request_path"].as_str().unwrap_or("/").to_owned();
    let mut probe = case.clone();
    probe["request"]["path"] = Value::from(path.clone());
    probe["expect"]["backend_request"]["path"] = spec["backend_request_path"].clone();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|w| {
                let (probe, path) = (&probe, &path);
                scope.spawn(move || {
                    (w..total)
                        .step_by(concurrency)
                        .filter_map(|_| {
                            send(target, &probe["request"], host, path, &[])
                                .and_then(|r| check(probe, path, &r))
                                .err()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} of {total} requests failed: {first}",
            failures.len()
        ));
    }
    for (mirror, backend, pod) in mirrors(&case, pods)? {
        let p = mirror["percent"].as_f64().unwrap_or(100.0) / 100.0;
        let expected = total as f64 * p;
        let spread = stddevs * (total as f64 * p * (1.0 - p)).sqrt();
        // The copies trail their requests: let them land.
        std::thread::sleep(Duration::from_millis(500));
        let seen = logged(pod, &path) as f64;
        if (seen - expected).abs() > spread {
            return Err(format!(
                "{backend} saw {seen} copies of {total} (expected {expected} ± {spread:.1})"
            ));
        }
    }
    Ok(())
}

/// One attempt at a case: the request(s) and their checks.
fn attempt(
    case: &Value,
    target: SocketAddr,
    host: &str,
    pods: &HashMap<String, Pod>,
) -> Result<(), String> {
    if case["expect"]["mirror_distribution"].is_object() {
        // First the request as the case sends it, then the share.
        let mut first = case.clone();
        first["expect"]["mirrored_to"] = Value::Null;
        first["expect"]["mirror_distribution"] = Value::Null;
        attempt(&first, target, host, pods)?;
        return check_mirror_distribution(case, target, host, pods);
    }
    let case = &with_request_id(case, &fresh_id());
    let expect = &case["expect"];
    let request = &case["request"];
    match request["protocol"].as_str() {
        None => {}
        Some("H2C_PRIOR_KNOWLEDGE") => {
            let path = fill_path(request["path"].as_str().unwrap_or("/"));
            let response = send_h2c(target, request, host, &path)?;
            return check(case, &path, &response);
        }
        Some(other) => return Err(format!("client protocol {other} is not supported")),
    }
    if let Some(weights) = expect["weights"].as_object() {
        return check_distribution(case, weights, target, host);
    }
    let repeat = expect["repeat"].as_u64().unwrap_or(1);
    for _ in 0..repeat {
        let path = fill_path(request["path"].as_str().unwrap_or("/"));
        let response = send(target, request, host, &path, &[])?;
        check(case, &path, &response)?;
        check_mirrored(case, &path, pods)?;
        if let Some(header) = expect["backend_equals_request_header"].as_str() {
            let echo: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            let values: Vec<Value> = echo["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(n, _)| n.eq_ignore_ascii_case(header))
                .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
                .collect();
            let pod = echo["pod"].as_str().unwrap_or_default();
            match values.as_slice() {
                [Value::String(v)] if pod.starts_with(v.as_str()) => {}
                other => {
                    return Err(format!(
                        "{header} at the backend {other:?}, answered by {pod}"
                    ))
                }
            }
        }
    }
    Ok(())
}

/// HTTPRouteWeight: the share of each backend within the tolerance.
fn check_distribution(
    case: &Value,
    weights: &serde_json::Map<String, Value>,
    target: SocketAddr,
    host: &str,
) -> Result<(), String> {
    let check = &case["expect"]["distribution_check"];
    let total = check["total_requests"].as_u64().unwrap_or(500) as usize;
    let tolerance = check["tolerance"].as_f64().unwrap_or(0.05);
    let concurrency = check["concurrency"].as_u64().unwrap_or(10) as usize;
    let request = case["request"].clone();
    let counts: HashMap<String, usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|w| {
                let request = request.clone();
                scope.spawn(move || {
                    let mut counts: HashMap<String, usize> = HashMap::new();
                    for i in (w..total).step_by(concurrency) {
                        let jitter = [("X-Jitter".to_string(), (i * 7919 % 10_000).to_string())];
                        let extra = if i % 2 == 0 { &jitter[..] } else { &[][..] };
                        let path = request["path"].as_str().unwrap_or("/").to_owned();
                        let backend = match send(target, &request, host, &path, extra) {
                            Ok(r) if r.status == 200 => {
                                let echo: Value =
                                    serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                                let pod = echo["pod"].as_str().unwrap_or_default();
                                // The pod name less its last two segments.
                                let parts: Vec<&str> = pod.split('-').collect();
                                parts[..parts.len().saturating_sub(2)].join("-")
                            }
                            Ok(r) => format!("status {}", r.status),
                            Err(e) => e,
                        };
                        *counts.entry(backend).or_default() += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut all: HashMap<String, usize> = HashMap::new();
        for w in workers {
            for (k, v) in w.join().unwrap_or_default() {
                *all.entry(k).or_default() += v;
            }
        }
        all
    });
    for (backend, count) in &counts {
        if !weights.contains_key(backend) {
            return Err(format!(
                "{count} request(s) went to {backend:?}, not a weighted backend"
            ));
        }
    }
    for (backend, weight) in weights {
        let weight = weight.as_f64().unwrap_or(0.0);
        let share = *counts.get(backend).unwrap_or(&0) as f64 / total as f64;
        if weight > 0.0 && share == 0.0 {
            return Err(format!("{backend} got no traffic"));
        }
        if (share - weight).abs() > tolerance {
            return Err(format!(
                "{backend} got {share:.3} of requests (weight {weight})"
            ));
        }
    }
    Ok(())
}

/// Where a case's requests go.
fn gateway_of<'a>(test: &'a Value, case: &'a Value) -> &'a Value {
    if case["gateway"].is_object() {
        &case["gateway"]
    } else {
        &test["gateway"]
    }
}

fn gateway_id(gateway: &Value) -> String {
    format!(
        "{}/{}",
        gateway["namespace"].as_str().unwrap_or_default(),
        gateway["name"].as_str().unwrap_or_default()
    )
}

struct TestOutcome {
    name: String,
    feature: String,
    passed: usize,
    failures: Vec<String>,
}

fn run_test(
    test: &Value,
    base: &[Value],
    pods: &HashMap<String, Pod>,
    root: &Path,
    claimed: bool,
) -> TestOutcome {
    let name = test["name"].as_str().unwrap_or_default().to_owned();
    let mut outcome = TestOutcome {
        name: name.clone(),
        feature: test["feature"].as_str().unwrap_or_default().to_owned(),
        passed: 0,
        failures: Vec::new(),
    };
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir).expect("test directory");
    let manifests = test["manifests"]
        .as_str()
        .unwrap_or_default()
        .replace("{GATEWAY_CLASS_NAME}", "rauta");
    let mut docs = documents(&manifests);
    fill_manual_slices(&mut docs, pods);
    let services: Vec<&Value> = base
        .iter()
        .chain(&docs)
        .filter(|d| d["kind"] == "Service")
        .collect();
    let slices = endpoint_slices(&services, pods);
    write_documents(&dir.join("base.yaml"), base);
    write_documents(&dir.join("endpoints.yaml"), &slices);
    write_documents(&dir.join("test.yaml"), &docs);

    let cases = test["cases"].as_array().cloned().unwrap_or_default();
    let mut gateways: HashMap<String, Gateway> = HashMap::new();
    for case in &cases {
        let id = gateway_id(gateway_of(test, case));
        if !gateways.contains_key(&id) {
            let address = Ipv4Addr::new(127, 0, 20, gateways.len() as u8 + 1);
            match start_gateway(&dir, &id, address) {
                Ok(g) => {
                    gateways.insert(id, g);
                }
                Err(e) => {
                    outcome.failures = vec![e; cases.len()];
                    return outcome;
                }
            }
        }
    }
    let budget = if claimed {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    };
    for (index, case) in cases.iter().enumerate() {
        for delete in case["precondition"]["delete"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let gone = (
                delete["kind"].as_str().unwrap_or_default().to_owned(),
                delete["namespace"].as_str().unwrap_or_default().to_owned(),
                delete["name"].as_str().unwrap_or_default().to_owned(),
            );
            docs.retain(|d| key(d) != gone);
            write_documents(&dir.join("test.yaml"), &docs);
        }
        let gw = gateway_of(test, case);
        let gateway = &gateways[&gateway_id(gw)];
        let port = gw["port"].as_u64().unwrap_or(80) as u16;
        let target = SocketAddr::from((gateway.address, port));
        let host = match case["request"]["host"].as_str() {
            Some(h) => h.to_owned(),
            None if port == 80 => gateway.address.to_string(),
            None => format!("{}:{port}", gateway.address),
        };
        let deadline = Instant::now() + budget;
        let mut streak = 0;
        let mut last_error = String::new();
        while streak < CONSECUTIVE && Instant::now() < deadline {
            match attempt(case, target, &host, pods) {
                Ok(()) => streak += 1,
                Err(e) => {
                    streak = 0;
                    last_error = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let distribution = case["expect"]["weights"].is_object()
                || case["expect"]["mirror_distribution"].is_object();
            if distribution && streak > 0 {
                // One distribution run is 500 requests: once is enough.
                streak = CONSECUTIVE;
            }
        }
        if streak >= CONSECUTIVE {
            outcome.passed += 1;
        } else {
            let subtest = case["subtest"]
                .as_str()
                .or(case["name"].as_str())
                .unwrap_or("");
            outcome.failures.push(format!(
                "case {index} {subtest} {} {}: {last_error}",
                case["request"]["method"].as_str().unwrap_or("GET"),
                case["request"]["path"].as_str().unwrap_or("/")
            ));
        }
    }
    for (_, mut gateway) in gateways {
        gateway.process.terminate();
    }
    outcome
}

#[test]
fn gateway_api_httproute_conformance() {
    require_root();
    let _serial = serial();
    let path = suite_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the conformance suite is read from {} (../shared beside the checkout): {e}",
            path.display()
        )
    });
    let suite: Value = serde_json::from_str(&text).expect("suite JSON");
    let base = documents(
        &suite["base_manifests"]
            .as_str()
            .expect("base_manifests")
            .replace("{GATEWAY_CLASS_NAME}", "rauta"),
    );
    let tests = suite["tests"].as_array().expect("tests");

    let all_docs: Vec<Value> = tests
        .iter()
        .flat_map(|t| documents(t["manifests"].as_str().unwrap_or_default()))
        .chain(base.iter().cloned())
        .collect();
    let services: Vec<&Value> = all_docs.iter().filter(|d| d["kind"] == "Service").collect();
    let pods = start_pods(&services);

    let root = std::env::temp_dir().join(format!("rauta-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let is_claimed = |feature: &str| {
        feature.split('+').all(|f| {
            let f = if f.starts_with("Extended:") || f == "Core" {
                f.to_owned()
            } else {
                format!("Extended:{f}")
            };
            CLAIMED.contains(&f.as_str()) || f == "Extended:GatewayPort8080"
        })
    };
    let mut outcomes = Vec::new();
    for test in tests {
        let feature = test["feature"].as_str().unwrap_or_default();
        outcomes.push(run_test(test, &base, &pods, &root, is_claimed(feature)));
    }
    let _ = std::fs::remove_dir_all(&root);

    let mut by_feature: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{:<52} {:<58} {:>6} {:>6}",
        "test", "feature", "passed", "failed"
    );
    for o in &outcomes {
        let failed = o.failures.len();
        let _ = writeln!(
            report,
            "{:<52} {:<58} {:>6} {failed:>6}",
            o.name, o.feature, o.passed
        );
        let entry = by_feature.entry(o.feature.clone()).or_default();
        entry.0 += o.passed;
        entry.1 += failed;
    }
    let _ = writeln!(
        report,
        "\n{:<60} {:>7} {:>6} {:>6}",
        "feature", "claimed", "passed", "failed"
    );
    for (feature, (passed, failed)) in &by_feature {
        let claimed = if is_claimed(feature) { "yes" } else { "no" };
        let _ = writeln!(report, "{feature:<60} {claimed:>7} {passed:>6} {failed:>6}");
    }
    let passed: usize = outcomes.iter().map(|o| o.passed).sum();
    let failed: usize = outcomes.iter().map(|o| o.failures.len()).sum();
    let _ = writeln!(report, "\nconformance cases: {passed} pass, {failed} fail");
    let mut claimed_failures = Vec::new();
    for o in &outcomes {
        for f in &o.failures {
            if is_claimed(&o.feature) {
                claimed_failures.push(format!("{} [{}]: {f}", o.name, o.feature));
            } else {
                let _ = writeln!(report, "  (not claimed) {}: {f}", o.name);
            }
        }
    }
    println!("{report}");
    // Kept where scripts/test prints it: the table is the point of the run.
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance.txt"),
        &report,
    );
    let unclaimed: Vec<&String> = by_feature.keys().filter(|f| !is_claimed(f)).collect();
    assert!(
        unclaimed.is_empty(),
        "features of the suite not claimed: {unclaimed:?}"
    );
    assert!(
        claimed_failures.is_empty(),
        "{} case(s) of claimed features failed:\n{}",
        claimed_failures.len(),
        claimed_failures.join("\n")
    );
}
