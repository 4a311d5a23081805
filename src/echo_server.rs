//! `rauta echo`: an HTTP/1.1 backend that answers every request with JSON
//! describing what it received, in the shape of the Gateway API conformance
//! echo server (echo-basic): path, host, method, proto, headers, and its own
//! pod name and namespace (from `POD_NAME` / `NAMESPACE`). A request header
//! `X-Echo-Set-Header: Name:value,Name2:value2` becomes response headers.
//! Beyond echo-basic, `/echo-body` answers with the request's own body
//! (chunked when the query has `chunked`), for byte-exact body tests, and
//! `/bytes?n=N` with N bytes of body, streamed as the reader takes them (a
//! response larger than every buffer on the path, for slow-reader tests).
//!
//! Like echo-basic, a `delay` query parameter (a Go duration) holds the
//! answer back, and paths under `/retry/` simulate a failing backend: for
//! each `uuid` the first `succeedAfter` requests fail — with status
//! `responseCode`, or by resetting the connection — each after waiting
//! `delayRetry`; later ones are echoed.
//!
//! For benchmarks of failing backends, a whole pod can be slow
//! (`--delay`) or answer 503 to every n-th request (`--fail-every`), and
//! `GET /echo-stats` tells how many requests it has answered.
//!
//! A connection that opens with the HTTP/2 preface is served as h2c (the
//! conformance echo server's port 3001): the same JSON, `proto` HTTP/2.0.
//!
//! Kernel sockets and tokio: it is test equipment, not the data path. It
//! frames requests with the data plane's strict HTTP/1.1 parser, so
//! keep-alive, pipelining and chunked bodies work, and bad requests get the
//! same 4xx the gateway gives.

use anyhow::{Context, Result};
use rauta_dataplane::http1::{
    parse_request, reason_phrase, BodyFraming, Chunk, ChunkedDecoder, HttpError, Limits,
    RequestHead, Version,
};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Who the echo server says it is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub pod: String,
    pub namespace: String,
    /// Print echo-basic's log line for every request echoed (the
    /// conformance suite finds mirrored copies by it).
    pub log_requests: bool,
    /// How this pod misbehaves on every HTTP/1.1 request (benchmarks of
    /// failing backends).
    pub faults: Faults,
    /// HTTP/1.1 requests this server has answered (`GET /echo-stats`
    /// tells, and is not counted).
    pub answered: Arc<AtomicU64>,
}

/// Faults a whole pod shows, beside what a request's query asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Every answer waits this long (a slow endpoint).
    pub delay: Duration,
    /// Every `fail_every`-th request gets a 503 (0: none).
    pub fail_every: u64,
}

impl Identity {
    /// From `POD_NAME` and `NAMESPACE`, as in a pod; the hostname otherwise.
    pub fn from_env() -> Self {
        let pod = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_default()
            .trim()
            .to_owned();
        Self {
            pod,
            namespace: std::env::var("NAMESPACE").unwrap_or_default(),
            log_requests: false,
            faults: Faults::default(),
            answered: Arc::default(),
        }
    }
}

/// Serve on every address of `listen` until the process is stopped.
pub fn run(listen: &[SocketAddr], identity: Identity) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the echo runtime")?;
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for &address in listen {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("listening on {address}"))?;
            listeners.push(listener);
        }
        let addresses: Vec<String> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        println!("rauta echo: listening on {}", addresses.join(" "));
        let mut servers = tokio::task::JoinSet::new();
        for listener in listeners {
            servers.spawn(serve(listener, identity.clone()));
        }
        match servers.join_next().await {
            Some(result) => result.context("echo server")?,
            None => Ok(()),
        }
    })
}

/// Accept and serve connections on `listener` forever.
pub async fn serve(listener: TcpListener, identity: Identity) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let identity = identity.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, identity).await {
                tracing::debug!(error = %e, "echo connection ended");
            }
        });
    }
}

/// Whether the client opened with the HTTP/2 preface (looked at without
/// consuming it).
async fn speaks_h2(stream: &TcpStream) -> Result<bool> {
    let preface = rauta_dataplane::proxy::HTTP2_PREFACE;
    let mut peeked = [0u8; 24];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 || peeked[..n] != preface[..n] {
            return Ok(false);
        }
        if n == preface.len() {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

async fn connection(stream: TcpStream, identity: Identity) -> Result<()> {
    if speaks_h2(&stream).await? {
        return h2_connection(stream, identity).await;
    }
    h1_connection(stream, identity).await
}

async fn h2_connection(stream: TcpStream, identity: Identity) -> Result<()> {
    let mut connection = h2::server::handshake(stream).await?;
    while let Some(request) = connection.accept().await {
        let (request, respond) = request?;
        let identity = identity.clone();
        tokio::spawn(async move {
            if let Err(e) = h2_exchange(request, respond, identity).await {
                tracing::debug!(error = %e, "echo stream ended");
            }
        });
    }
    Ok(())
}

async fn h2_exchange(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    identity: Identity,
) -> Result<()> {
    let (parts, mut body) = request.into_parts();
    let mut received = Vec::new();
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // A reset is the stream's (RST_STREAM), not the connection's.
    match act_on(&identity, target).await {
        Act::Echo => {}
        Act::Reset => {
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return Ok(());
        }
        Act::Fail(status) => {
            let body = format!("{status} {}\n", reason_phrase(status));
            let response = http::Response::builder()
                .status(status)
                .header("content-type", "text/plain")
                .header("content-length", body.len())
                .body(())?;
            let mut send = respond.send_response(response, false)?;
            send.send_data(bytes::Bytes::from(body), true)?;
            return Ok(());
        }
    }
    let mut headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    if let Some(authority) = parts.uri.authority() {
        headers.insert(0, ("host".into(), authority.as_str().as_bytes().to_vec()));
    }
    if let Some(n) = bytes_requested(target) {
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .header("content-length", n)
            .body(())?;
        let head_only = parts.method == http::Method::HEAD || n == 0;
        let mut send = respond.send_response(response, head_only)?;
        if !head_only {
            h2_stream_bytes(&mut send, n).await?;
        }
        return Ok(());
    }
    let (body, content_type, extra) = if target.starts_with("/echo-body") {
        (received, "application/octet-stream", Vec::new())
    } else {
        let echo = echo_json(
            parts.method.as_str(),
            target,
            "HTTP/2.0",
            &headers,
            &identity,
        );
        (echo.body.into_bytes(), "application/json", echo.set_headers)
    };
    let mut response = http::Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("content-length", body.len());
    for (name, value) in extra {
        response = response.header(name, value);
    }
    let head_only = parts.method == http::Method::HEAD || body.is_empty();
    let mut send = respond.send_response(response.body(())?, head_only)?;
    if !head_only {
        send.send_data(bytes::Bytes::from(body), true)?;
    }
    Ok(())
}

/// `n` bytes of [`pattern`] on `send`, as the peer's window lets them go.
async fn h2_stream_bytes(send: &mut h2::SendStream<bytes::Bytes>, n: u64) -> Result<()> {
    let mut sent = 0u64;
    while sent < n {
        let want = (n - sent).min(BYTES_CHUNK as u64) as usize;
        send.reserve_capacity(want);
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .context("stream closed")??;
        let take = granted.min(want);
        if take == 0 {
            continue;
        }
        let piece = bytes::Bytes::from(pattern(sent, take));
        sent += take as u64;
        send.send_data(piece, sent == n)?;
    }
    Ok(())
}

/// Largest piece `/bytes` writes at once.
const BYTES_CHUNK: usize = 64 * 1024;

/// The N of `/bytes?n=N` (1 MiB without `n`), if the target is `/bytes`.
fn bytes_requested(target: &str) -> Option<u64> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/bytes" {
        return None;
    }
    let n = query
        .split('&')
        .find_map(|p| p.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1 << 20);
    Some(n)
}

/// The body `/bytes` sends, from byte `offset` on: a repeating 0..=250 run,
/// so a client can check where it is.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

/// `/bytes`: the head, then `n` bytes written as the socket takes them.
async fn h1_stream_bytes(stream: &mut TcpStream, head: &RequestHead, n: u64) -> Result<()> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n"
    );
    if !head.keep_alive {
        response.push_str("Connection: close\r\n");
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    if head.method == "HEAD" {
        return Ok(());
    }
    let mut sent = 0u64;
    while sent < n {
        let take = (n - sent).min(BYTES_CHUNK as u64) as usize;
        stream.write_all(&pattern(sent, take)).await?;
        sent += take as u64;
    }
    Ok(())
}

async fn h1_connection(mut stream: TcpStream, identity: Identity) -> Result<()> {
    let limits = Limits::default();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let head = loop {
            match parse_request(&buf, &limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => {
                    stream.write_all(&error_response(&e)).await?;
                    return Ok(());
                }
            }
        };
        buf.drain(..head.head_len);
        if head.expect_continue {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let echo_body = head.target.starts_with("/echo-body");
        let mut body = echo_body.then(Vec::new);
        if let Err(e) = read_body(
            &mut stream,
            &mut buf,
            &mut chunk,
            &head,
            &limits,
            body.as_mut(),
        )
        .await
        {
            if let Some(e) = e.downcast_ref::<HttpError>() {
                stream.write_all(&error_response(e)).await?;
            }
            return Ok(());
        }
        if head.target == "/echo-stats" {
            let body = json!({"requests": identity.answered.load(Ordering::Relaxed)}).to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await?;
            continue;
        }
        match act_on(&identity, &head.target).await {
            Act::Echo => {}
            Act::Reset => {
                // A reset, not a close: SO_LINGER 0 sends RST.
                stream.set_zero_linger()?;
                return Ok(());
            }
            Act::Fail(status) => {
                let reason = reason_phrase(status);
                let body = format!("{status} {reason}\n");
                let response = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await?;
                continue;
            }
        }
        match (body, bytes_requested(&head.target)) {
            (Some(body), _) => stream.write_all(&body_response(&head, &body)).await?,
            (None, Some(n)) => h1_stream_bytes(&mut stream, &head, n).await?,
            (None, None) => stream.write_all(&echo_response(&head, &identity)).await?,
        }
        if !head.keep_alive {
            stream.shutdown().await?;
            return Ok(());
        }
    }
}

/// What to do with a request, its delays waited.
enum Act {
    Echo,
    Fail(u16),
    Reset,
}

/// Count a request to `target` as answered and decide what to do with it,
/// after waiting its delays: the pod's faults (`--fail-every`, `--delay`)
/// first, then what its query asks ([`plan`]). The same on both protocols.
async fn act_on(identity: &Identity, target: &str) -> Act {
    let answered = identity.answered.fetch_add(1, Ordering::Relaxed) + 1;
    let faults = identity.faults;
    let plan = match plan(target) {
        _ if faults.fail_every > 0 && answered.is_multiple_of(faults.fail_every) => Plan::Fail {
            delay: Duration::ZERO,
            status: Some(503),
        },
        plan => plan,
    };
    tokio::time::sleep(faults.delay).await;
    match plan {
        Plan::Echo { delay } => {
            tokio::time::sleep(delay).await;
            Act::Echo
        }
        Plan::Fail { delay, status } => {
            tokio::time::sleep(delay).await;
            status.map_or(Act::Reset, Act::Fail)
        }
    }
}

/// What a request's query asks of the echo server (echo-basic's).
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Echo, after `delay`.
    Echo { delay: Duration },
    /// Fail after `delay`: answer `status`, or reset the connection.
    Fail {
        delay: Duration,
        status: Option<u16>,
    },
}

/// Requests seen per `uuid` under `/retry/` (process-wide, as echo-basic's
/// simulator is: every connection of the pod counts).
static RETRY_ATTEMPTS: LazyLock<Mutex<HashMap<String, u32>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn plan(target: &str) -> Plan {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let delay = param("delay").and_then(go_duration).unwrap_or_default();
    if !path.starts_with("/retry/") {
        return Plan::Echo { delay };
    }
    let (Some(uuid), Some(succeed_after)) = (
        param("uuid"),
        param("succeedAfter").and_then(|n| n.parse::<u32>().ok()),
    ) else {
        return Plan::Echo { delay };
    };
    let seen = {
        let mut attempts = RETRY_ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner());
        let seen = attempts.entry(uuid.to_owned()).or_default();
        *seen += 1;
        *seen
    };
    if seen > succeed_after {
        return Plan::Echo { delay };
    }
    Plan::Fail {
        delay: param("delayRetry")
            .and_then(go_duration)
            .unwrap_or_default(),
        status: param("responseCode").and_then(|c| c.parse().ok()),
    }
}

/// A Go duration, for the command line.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    go_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 20ms or 1s"))
}

/// A Go duration: numbers with units (`1s`, `300ms`, `1m30s`).
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += Duration::from_secs_f64(number * seconds);
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Read the body into `keep` (or discard it), leaving what follows it in
/// `buf`.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    head: &RequestHead,
    limits: &Limits,
    mut keep: Option<&mut Vec<u8>>,
) -> Result<()> {
    match head.framing {
        BodyFraming::Empty => Ok(()),
        BodyFraming::Length(mut left) => loop {
            let take = (buf.len() as u64).min(left) as usize;
            if let Some(keep) = keep.as_mut() {
                keep.extend_from_slice(&buf[..take]);
            }
            buf.drain(..take);
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
            let n = stream.read(chunk).await?;
            anyhow::ensure!(n > 0, "connection closed inside a body");
            buf.extend_from_slice(&chunk[..n]);
        },
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new(limits.clone());
            loop {
                let (used, event) = decoder.decode(buf)?;
                if let (Some(keep), Some(Chunk::Data(data))) = (keep.as_mut(), &event) {
                    keep.extend_from_slice(data);
                }
                let done = event == Some(Chunk::End);
                buf.drain(..used);
                if done {
                    return Ok(());
                }
                if used == 0 {
                    let n = stream.read(chunk).await?;
                    anyhow::ensure!(n > 0, "connection closed inside a body");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

/// Go's canonical header name: `x-forwarded-for` → `X-Forwarded-For`.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// What the echo server answers.
struct Echo {
    body: String,
    /// Asked for with `X-Echo-Set-Header`.
    set_headers: Vec<(String, String)>,
}

fn echo_json(
    method: &str,
    target: &str,
    proto: &str,
    fields: &[(String, Vec<u8>)],
    identity: &Identity,
) -> Echo {
    if identity.log_requests {
        println!("Echoing back request made to {target} to client");
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut host = String::new();
    let mut set_headers = Vec::new();
    for (name, value) in fields {
        let value = String::from_utf8_lossy(value).into_owned();
        if name.eq_ignore_ascii_case("host") {
            host = value;
            continue;
        }
        if name.eq_ignore_ascii_case("x-echo-set-header") {
            for pair in value.split(',').filter(|p| !p.is_empty()) {
                if let Some((n, v)) = pair.split_once(':') {
                    set_headers.push((n.trim().to_owned(), v.trim().to_owned()));
                }
            }
        }
        headers.entry(canonical(name)).or_default().push(value);
    }
    let body = json!({
        "path": target,
        "host": host,
        "method": method,
        "proto": proto,
        "headers": headers,
        "namespace": identity.namespace,
        "ingress": "",
        "service": "",
        "pod": identity.pod,
    })
    .to_string();
    Echo { body, set_headers }
}

fn echo_response(head: &RequestHead, identity: &Identity) -> Vec<u8> {
    let proto = match head.version {
        Version::Http10 => "HTTP/1.0",
        Version::Http11 => "HTTP/1.1",
    };
    let Echo { body, set_headers } =
        echo_json(&head.method, &head.target, proto, &head.headers, identity);
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in set_headers {
        // Names and values came from a parsed header: no CR or LF in them.
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    if !head.keep_alive {
        response.push_str("Connection: close\r\n");
    }
    response.push_str("\r\n");
    let mut bytes = response.into_bytes();
    if head.method != "HEAD" {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// The request's own body back, with its length or chunked.
fn body_response(head: &RequestHead, body: &[u8]) -> Vec<u8> {
    let chunked = head
        .target
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p == "chunked"));
    let mut response =
        String::from("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n");
    if chunked {
        response.push_str("Transfer-Encoding: chunked\r\n");
    } else {
        response.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !head.keep_alive {
        response.push_str("Connection: close\r\n");
    }
    response.push_str("\r\n");
    let mut bytes = response.into_bytes();
    if head.method == "HEAD" {
        return bytes;
    }
    if chunked {
        for piece in body.chunks(16 * 1024) {
            bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            bytes.extend_from_slice(piece);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
    } else {
        bytes.extend_from_slice(body);
    }
    bytes
}

fn error_response(error: &HttpError) -> Vec<u8> {
    let status = error.status();
    let reason = reason_phrase(status);
    let body = format!("{status} {reason}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn start() -> SocketAddr {
        start_with(Faults::default())
    }

    fn start_with(faults: Faults) -> SocketAddr {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        std_listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let identity = Identity {
                    pod: "echo-v1-abc".into(),
                    namespace: "gateway-conformance-infra".into(),
                    log_requests: false,
                    faults,
                    answered: Arc::default(),
                };
                let _ = serve(listener, identity).await;
            });
        });
        addr
    }

    /// Send `raw`, read until the server closes.
    fn exchange(addr: SocketAddr, raw: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }

    fn bodies(response: &str) -> Vec<serde_json::Value> {
        response
            .split("HTTP/1.1 ")
            .filter(|r| !r.is_empty())
            .map(|r| serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn echoes_pipelined_requests_with_bodies_and_set_headers() {
        let addr = start();
        let raw = "GET /a?x=1 HTTP/1.1\r\nHost: example.com\r\nx-custom: v\r\nX-Echo-Set-Header: X-Out:yes\r\n\r\n\
                   POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                   PUT /c HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody";
        let response = exchange(addr, raw);
        assert!(response.contains("X-Out: yes\r\n"), "{response}");
        let echoed = bodies(&response);
        assert_eq!(echoed.len(), 3, "{response}");
        assert_eq!(echoed[0]["path"], "/a?x=1");
        assert_eq!(echoed[0]["host"], "example.com");
        assert_eq!(echoed[0]["headers"]["X-Custom"][0], "v");
        assert_eq!(echoed[0]["pod"], "echo-v1-abc");
        assert_eq!(echoed[0]["namespace"], "gateway-conformance-infra");
        assert_eq!(echoed[1]["method"], "POST");
        assert_eq!(echoed[2]["path"], "/c");
    }

    #[test]
    fn bytes_streams_n_bytes_of_the_pattern_over_http1_and_h2() {
        let addr = start();
        let n = 3 * BYTES_CHUNK + 17;
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET /bytes?n={n} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&response[..split]);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(head.contains(&format!("Content-Length: {n}")), "{head}");
        let body = &response[split + 4..];
        assert_eq!(body.len(), n);
        assert_eq!(body, pattern(0, n).as_slice());
        assert_eq!(bytes_requested("/bytes"), Some(1 << 20));
        assert_eq!(bytes_requested("/bytes?x=1&n=5"), Some(5));
        assert_eq!(bytes_requested("/bytesx?n=5"), None);

        // Over h2c, within the client's flow-control window as it opens.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = runtime.block_on(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            let request = http::Request::get(format!("http://h/bytes?n={n}"))
                .body(())
                .unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut got = Vec::new();
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                let _ = body.flow_control().release_capacity(data.len());
                got.extend_from_slice(&data);
            }
            got
        });
        assert_eq!(got.len(), n);
        assert_eq!(got, pattern(0, n));
    }

    #[test]
    fn delay_and_the_retry_simulator_follow_the_query() {
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(go_duration("3 parsecs"), None);
        assert_eq!(
            plan("/x?delay=1s"),
            Plan::Echo {
                delay: Duration::from_secs(1)
            }
        );
        let target = "/retry/a?responseCode=503&succeedAfter=2&delayRetry=5ms&uuid=u1";
        let fail = Plan::Fail {
            delay: Duration::from_millis(5),
            status: Some(503),
        };
        assert_eq!(plan(target), fail);
        assert_eq!(plan(target), fail);
        assert_eq!(
            plan(target),
            Plan::Echo {
                delay: Duration::ZERO
            }
        );
        let reset = plan("/retry/b?succeedAfter=1&uuid=u2");
        assert_eq!(
            reset,
            Plan::Fail {
                delay: Duration::ZERO,
                status: None
            }
        );
    }

    #[test]
    fn a_faulty_pod_fails_every_nth_request_and_counts_what_it_answered() {
        let addr = start_with(Faults {
            delay: Duration::from_millis(30),
            fail_every: 2,
        });
        let started = std::time::Instant::now();
        let get = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4);
        let out = exchange(
            addr,
            &format!("{get}GET /echo-stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert!(started.elapsed() >= Duration::from_millis(120), "4 × 30 ms");
        let statuses: Vec<&str> = out.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
        assert_eq!(statuses, ["200", "503", "200", "503", "200"], "{out}");
        assert!(out.ends_with(r#"{"requests":4}"#), "{out}");
    }

    #[test]
    fn bad_requests_get_400_and_close() {
        let addr = start();
        let response = exchange(
            addr,
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        assert!(
            !response.contains("chunked"),
            "no internal detail in the body: {response}"
        );
    }
}
