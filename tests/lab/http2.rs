//! Lab tests of HTTP/2 through `rauta run` (root), on both transports:
//! curl (prior knowledge and `Upgrade: h2c`), nghttp, h2load and a tonic
//! gRPC client against `rauta echo` (HTTP/1.1 and h2c) and a tonic gRPC
//! server; a backend killed under load; clients that reset streams in a
//! tight loop or flood CONTINUATION frames.

use crate::common::serial;
use crate::gateway::{metric, GatewayLab, Io, BACKEND};
use crate::grpc::{self, GrpcServer};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A gRPC Service (h2c) in the backend namespace and its route.
const GRPC_MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: grpc-echo, namespace: default}
spec:
  ports:
  - {name: grpc, port: 50051, targetPort: 50051, appProtocol: kubernetes.io/h2c}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: grpc-echo-lab
  namespace: default
  labels: {kubernetes.io/service-name: grpc-echo}
addressType: IPv4
ports:
- {name: grpc, port: 50051}
endpoints:
- addresses: [198.18.0.20]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: grpc, namespace: default}
spec:
  parentRefs:
  - name: lab
  rules:
  - matches:
    - path: {type: PathPrefix, value: /rauta.test.Echo/}
    backendRefs:
    - {name: grpc-echo, port: 50051}
"#;

/// h2load's "requests:" line: (succeeded, failed, errored, timeout).
fn h2load_requests(out: &str) -> (u64, u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no h2load summary in:\n{out}"));
    let count = |what: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{what}' in {line}"))
    };
    (
        count("succeeded"),
        count("failed"),
        count("errored"),
        count("timeout"),
    )
}

/// h2load's "status codes:" line: the 2xx and 5xx counts.
fn h2load_statuses(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("no status line in:\n{out}"));
    let count = |what: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{what}' in {line}"))
    };
    (count("2xx"), count("5xx"))
}

fn serves_http2(io: Io, prefix: &str) {
    let _serial = serial();
    let gw = GatewayLab::start_with(prefix, io, &[("grpc.yaml", GRPC_MANIFESTS)]);
    let grpc_server = GrpcServer::start(
        &gw.lab.ns("backend"),
        format!("{BACKEND}:50051").parse().unwrap(),
    );

    // Prior knowledge, and the example routes behind it.
    let r = gw.curl(&["--http2-prior-knowledge", &gw.url("/hello?x=1")]);
    assert!(r.starts_with("HTTP/2 200"), "{r}");
    assert!(r.contains("x-served-by: rauta"), "{r}");
    assert!(r.contains("\"path\":\"/hello?x=1\""), "{r}");
    assert!(r.contains("\"X-Forwarded-For\":[\"198.18.0.10\"]"), "{r}");
    let r = gw.curl(&["--http2-prior-knowledge", &gw.url("/old/page")]);
    assert!(r.starts_with("HTTP/2 301"), "{r}");
    assert!(r.contains("location: http://"), "{r}");
    let r = gw.curl(&["--http2-prior-knowledge", &gw.url("/nothing-here-but-v1")]);
    assert!(r.starts_with("HTTP/2 200"), "{r}");

    // Upgrade from HTTP/1.1; the request that asked is answered on stream 1.
    let r = gw.curl(&["--http2", &gw.url("/upgraded")]);
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    assert!(r.contains("HTTP/2 200"), "{r}");
    assert!(r.contains("\"path\":\"/upgraded\""), "{r}");

    // nghttp.
    let out = gw
        .lab
        .exec_ok("client", &["nghttp", "-v", "-t", "10", &gw.url("/nghttp")]);
    assert!(out.contains(":status: 200"), "{out}");
    assert!(out.contains("\"path\":\"/nghttp\""), "{out}");

    // An h2c backend, from an HTTP/2 and from an HTTP/1.1 client.
    for args in [&["--http2-prior-knowledge"][..], &["--http1.1"][..]] {
        let mut all = args.to_vec();
        let url = gw.url("/h2c/over-h2");
        all.push(&url);
        let r = gw.curl(&all);
        assert!(r.contains(" 200"), "{r}");
        assert!(
            r.contains("\"proto\":\"HTTP/2.0\""),
            "backend spoke HTTP/2: {r}"
        );
        assert!(r.contains("\"path\":\"/over-h2\""), "{r}");
    }

    // `TE: trailers` (what gRPC servers look for) reaches the backend,
    // from an HTTP/2 client to an h2c backend and between HTTP/1.1 legs.
    let r = gw.curl(&[
        "--http2-prior-knowledge",
        "-H",
        "te: trailers",
        &gw.url("/h2c/te"),
    ]);
    assert!(r.contains("\"Te\":[\"trailers\"]"), "{r}");
    let r = gw.curl(&[
        "-H",
        "TE: trailers",
        "-H",
        "Connection: TE",
        &gw.url("/api/te"),
    ]);
    assert!(r.contains("\"Te\":[\"trailers\"]"), "{r}");

    // 1 MiB up and down, byte-exact, over every protocol pairing.
    let dir = std::env::temp_dir().join(format!("{prefix}-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let upload = dir.join("up.bin");
    let body: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&upload, &body).unwrap();
    let data = format!("@{}", upload.display());
    for (client, path) in [
        ("--http2-prior-knowledge", "/echo-body"),
        ("--http2-prior-knowledge", "/echo-body?chunked"),
        ("--http2-prior-knowledge", "/h2c/echo-body"),
        ("--http1.1", "/h2c/echo-body"),
    ] {
        let out = dir.join("down.bin");
        let out_arg = out.to_string_lossy().into_owned();
        gw.lab.exec_ok(
            "client",
            &[
                "curl",
                "-sS",
                "-m",
                "30",
                "-f",
                client,
                "--data-binary",
                &data,
                "-o",
                &out_arg,
                &gw.url(path),
            ],
        );
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == body,
            "{client} {path}: {} bytes back, differ",
            got.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    // gRPC: unary, a failing unary, bidirectional streaming with a status
    // in trailers.
    let target: SocketAddr = format!("{}:80", gw.target()).parse().unwrap();
    grpc::exercise(&gw.lab.ns("client"), target).unwrap();
    drop(grpc_server);

    // Load: 100 clients × 10 streams, to an HTTP/1.1 and to an h2c backend.
    for path in ["/", "/h2c/load"] {
        let out = gw.lab.exec_ok(
            "client",
            &[
                "timeout",
                "120",
                "h2load",
                "-n",
                "100000",
                "-c",
                "100",
                "-m",
                "10",
                "-t",
                "1",
                &gw.url(path),
            ],
        );
        let (succeeded, failed, errored, timeout) = h2load_requests(&out);
        assert_eq!(
            (succeeded, failed, errored, timeout),
            (100_000, 0, 0, 0),
            "{path}:\n{out}"
        );
        assert_eq!(h2load_statuses(&out).1, 0, "{path}:\n{out}");
    }

    let metrics = gw.admin("/metrics");
    assert!(
        metric(&metrics, "rauta_http2_streams_total") >= 200_000.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "rauta_http2_backend_connections_open") >= 1.0,
        "{metrics}"
    );
    // Every client has gone: the gauges come back to zero.
    let since = Instant::now();
    loop {
        let metrics = gw.admin("/metrics");
        let open = (
            metric(&metrics, "rauta_connections_open"),
            metric(&metrics, "rauta_http2_connections_open"),
        );
        if open == (0.0, 0.0) {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still open: {open:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn http2_serves_clients_and_grpc_on_xdp() {
    serves_http2(Io::Xdp, "rth-x");
}

#[test]
fn http2_serves_clients_and_grpc_on_kernel() {
    serves_http2(Io::Kernel, "rth-k");
}

#[test]
fn http2_backend_killed_under_load_fails_streams_and_refills_the_pool() {
    let _serial = serial();
    let mut gw = GatewayLab::start("rth-d", Io::Xdp);
    let url = gw.url("/h2c/load");
    let before = metric(
        &gw.admin("/metrics"),
        "rauta_http2_backend_connections_total",
    );
    let load = gw.lab.spawn(
        "client",
        &[
            "timeout", "60", "h2load", "-D", "6", "-c", "20", "-m", "10", "-t", "1", &url,
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    gw.backends[1].take().unwrap().kill();
    std::thread::sleep(Duration::from_millis(1500));
    gw.start_backend(1);
    let mut load = load;
    // h2load ends on its own when its 6 s are up: no request hangs.
    let status = load.wait(Duration::from_secs(30));
    let out = load.output().join("\n");
    assert!(status.success(), "h2load did not finish by itself:\n{out}");
    let (_succeeded, failed, errored, timeout) = h2load_requests(&out);
    let (ok, server_errors) = h2load_statuses(&out);
    assert_eq!(timeout, 0, "{out}");
    assert!(ok > 1000, "traffic flowed before and after: {out}");
    // In-flight streams on the dead backend fail: 502s, or streams reset.
    assert!(
        server_errors + failed + errored > 0,
        "the kill was seen: {out}"
    );
    // The pool refills: requests succeed again, on new connections.
    let back = Instant::now();
    loop {
        let r = gw.curl(&["--http2-prior-knowledge", &gw.url("/h2c/after")]);
        if r.starts_with("HTTP/2 200") {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "never recovered: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = metric(
        &gw.admin("/metrics"),
        "rauta_http2_backend_connections_total",
    );
    assert!(
        after > before,
        "no new backend connections ({before} → {after})"
    );
}

/// Opens an HTTP/2 connection to argv[1]:80 and misbehaves (argv[2]):
/// `rapid-reset` opens and resets streams in a tight loop, `reset-open`
/// resets streams the gateway has already taken, `continuation` sends one
/// header block as an endless run of CONTINUATION frames.
/// Prints how many it sent and the GOAWAY code it got, if any.
const ABUSER: &str = r#"
import socket, struct, sys, time
host, mode = sys.argv[1], sys.argv[2]
def frame(kind, flags, stream, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', stream) + payload
def literal(name, value):
    return b'\x00' + bytes([len(name)]) + name + bytes([len(value)]) + value
block = literal(b':method', b'GET') + literal(b':scheme', b'http') + literal(b':path', b'/') + literal(b':authority', host.encode())
s = socket.create_connection((host, 80), timeout=5)
s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + frame(4, 0, 0, b''))
sent, cut = 0, False
try:
    if mode == 'rapid-reset':
        stream = 1
        for _ in range(400):
            burst = b''
            for _ in range(50):
                burst += frame(1, 0x5, stream, block) + frame(3, 0, stream, struct.pack('>I', 8))
                stream += 2
            s.sendall(burst)
            sent += 50
    elif mode == 'reset-open':
        # Streams left open (a POST whose body never comes), reset once
        # the gateway has taken them: past h2's own pre-accept limit.
        post = literal(b':method', b'POST') + block[len(literal(b':method', b'GET')):]
        stream = 1
        for _ in range(400):
            ids = list(range(stream, stream + 20, 2))
            stream += 20
            s.sendall(b''.join(frame(1, 0x4, i, post) for i in ids))
            time.sleep(0.002)
            s.sendall(b''.join(frame(3, 0, i, struct.pack('>I', 8)) for i in ids))
            sent += len(ids)
    else:
        junk = literal(b'x-junk', b'a' * 100) * 150
        s.sendall(frame(1, 0x1, 1, block))
        for _ in range(4000):
            s.sendall(frame(9, 0, 1, junk))
            sent += 1
except OSError:
    cut = True
goaway, data = None, b''
end = time.time() + 5
s.settimeout(0.5)
while time.time() < end and goaway is None:
    try:
        d = s.recv(65536)
    except socket.timeout:
        continue
    except OSError:
        break
    if not d:
        break
    data += d
    while len(data) >= 9:
        n = int.from_bytes(data[:3], 'big')
        if len(data) < 9 + n:
            break
        if data[3] == 7:
            goaway = int.from_bytes(data[13:17], 'big')
        data = data[9 + n:]
print(f'sent {sent} goaway {goaway} cut {cut}')
"#;

#[test]
fn http2_abusive_clients_are_cut_off_and_others_keep_being_served() {
    let _serial = serial();
    let gw = GatewayLab::start("rth-a", Io::Xdp);
    let url = gw.url("/");
    let h2load = |n: &str| {
        gw.lab.spawn(
            "client",
            &[
                "timeout", "60", "h2load", "-n", n, "-c", "10", "-m", "10", "-t", "1", &url,
            ],
        )
    };
    let mean_latency = |out: &str| -> f64 {
        let line = out
            .lines()
            .find(|l| l.starts_with("time for request:"))
            .unwrap_or_else(|| panic!("no latency in {out}"));
        let mean = line.split_whitespace().nth(5).unwrap();
        let (value, unit) = mean.split_at(mean.find(|c: char| c.is_ascii_alphabetic()).unwrap());
        let value: f64 = value.parse().unwrap();
        match unit {
            "us" => value / 1000.0,
            "ms" => value,
            "s" => value * 1000.0,
            other => panic!("unit {other}"),
        }
    };
    let mut baseline = h2load("20000");
    assert!(baseline.wait(Duration::from_secs(60)).success());
    let baseline = baseline.output().join("\n");
    assert_eq!(h2load_requests(&baseline), (20_000, 0, 0, 0), "{baseline}");

    // ENHANCE_YOUR_CALM (11) for resets; a header block past the list
    // limit may also end as PROTOCOL_ERROR (1) or COMPRESSION_ERROR (9).
    for (mode, codes) in [
        ("rapid-reset", &["11"][..]),
        ("reset-open", &["11"][..]),
        ("continuation", &["11", "1", "9"][..]),
    ] {
        let mut others = h2load("20000");
        let out = gw
            .lab
            .exec_ok("client", &["python3", "-c", ABUSER, gw.target(), mode]);
        let goaway = out.split_whitespace().nth(3).unwrap_or("None");
        assert!(
            codes.contains(&goaway),
            "{mode}: the gateway did not cut the client off with GOAWAY {codes:?}: {out}"
        );
        assert!(others.wait(Duration::from_secs(60)).success());
        let others = others.output().join("\n");
        assert_eq!(
            h2load_requests(&others),
            (20_000, 0, 0, 0),
            "{mode}:\n{others}"
        );
        let (during, before) = (mean_latency(&others), mean_latency(&baseline));
        eprintln!(
            "{mode}: {}; others' mean latency {during:.2} ms (alone {before:.2} ms)",
            out.trim()
        );
        assert!(
            during < before * 10.0 + 20.0,
            "{mode}: others slowed from {before:.2} ms to {during:.2} ms"
        );
    }
    let metrics = gw.admin("/metrics");
    assert!(
        metric(&metrics, "rauta_http2_client_resets_total") > 0.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "rauta_http2_goaways_for_abuse_total") >= 1.0,
        "{metrics}"
    );
}
