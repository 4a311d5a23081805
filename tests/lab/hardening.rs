//! Edge hardening on both transports: what a hostile client or a careless
//! route author tries, answered as an edge proxy must — path spellings
//! that would bypass a rule, forged forwarding fields, header names with
//! underscores, line breaks from configuration, endpoints that are the
//! gateway itself, absolute-form targets and cookie crumbs.

use crate::common::{serial, RAUTA};
use crate::gateway::{metric, GatewayLab, Io, RunWith};

/// Routes under test beside the examples: a guarded `/admin` (redirected
/// to a login page), a virtual host, and two Services whose endpoints are
/// the gateway's admin server and its own listener.
fn manifests(io_target: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: guard, namespace: default}}
spec:
  parentRefs: [{{name: lab}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /admin}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /login}}, statusCode: 302}}
  - matches: [{{path: {{type: PathPrefix, value: /leak-admin}}}}]
    backendRefs: [{{name: leak-admin, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /leak-self}}}}]
    backendRefs: [{{name: leak-self, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: vhost, namespace: default}}
spec:
  parentRefs: [{{name: lab}}]
  hostnames: [vhost.example]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /abs}}}}]
    backendRefs: [{{name: echo-v2, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: leak-admin, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 9901}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: leak-admin-x
  namespace: default
  labels: {{kubernetes.io/service-name: leak-admin}}
addressType: IPv4
ports: [{{name: http, port: 9901}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: leak-self, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: leak-self-x
  namespace: default
  labels: {{kubernetes.io/service-name: leak-self}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints: [{{addresses: [{io_target}]}}]
"
    )
}

/// A route whose header modifier carries a line break: it must never load.
const SMUGGLING_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: smuggler, namespace: default}
spec:
  parentRefs: [{name: lab}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /smuggle}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Innocent, value: \"a\\r\\nX-Smuggled: yes\"}]}
    backendRefs: [{name: echo-v2, port: 80}]
";

/// An HTTP/2 connection to argv[1]:80 that sends, around one GET, what a
/// server must ignore: an unknown setting, unknown frame types on the
/// connection and on the stream, and PRIORITY_UPDATE (RFC 9218). Prints
/// the response status, the GOAWAY code if any, and the PINGs received.
const EXTENSION_FRAMES: &str = r#"
import socket, struct, sys, time
host = sys.argv[1]
def frame(kind, flags, stream, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', stream) + payload
def literal(name, value):
    return b'\x00' + bytes([len(name)]) + name + bytes([len(value)]) + value
block = literal(b':method', b'GET') + literal(b':scheme', b'http') + literal(b':path', b'/ext') + literal(b':authority', host.encode())
s = socket.create_connection((host, 80), timeout=5)
s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
    + frame(4, 0, 0, struct.pack('>HI', 0x0f0f, 7))
    + frame(0xfa, 0x3, 0, b'whatever')
    + frame(0x10, 0, 0, struct.pack('>I', 1) + b'u=3')
    + frame(1, 0x5, 1, block)
    + frame(0xfb, 0, 1, b'late'))
buf, status, goaway, pings = b'', None, 'none', 0
end = time.time() + 5
s.settimeout(0.2)
while time.time() < end and status is None:
    try:
        data = s.recv(65536)
    except socket.timeout:
        continue
    if not data:
        break
    buf += data
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], 'big')
        if len(buf) < 9 + length:
            break
        kind, flags, payload = buf[3], buf[4], buf[9:9 + length]
        buf = buf[9 + length:]
        if kind == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0, b''))
        elif kind == 6 and not flags & 1:
            pings += 1
        elif kind == 7:
            goaway = str(struct.unpack('>I', payload[4:8])[0])
        elif kind == 1:
            # The response's :status, HPACK-indexed (static table 8-14).
            status = {0x88: 200, 0x89: 204, 0x8c: 400, 0x8d: 404, 0x8e: 500}.get(payload[0], payload[0])
time.sleep(0.3)
s.settimeout(0.3)
try:
    while True:
        data = s.recv(65536)
        if not data:
            break
        buf += data
except socket.timeout:
    pass
while len(buf) >= 9:
    length = int.from_bytes(buf[:3], 'big')
    kind, flags, payload = buf[3], buf[4], buf[9:9 + length]
    buf = buf[9 + length:]
    if kind == 6 and not flags & 1:
        pings += 1
    elif kind == 7:
        goaway = str(struct.unpack('>I', payload[4:8])[0])
print(f"status={status} goaway={goaway} pings={pings}")
"#;

/// curl `args` then `path` over HTTP/1.1 and over h2c (prior knowledge):
/// (whether HTTP/2, what curl printed) for each.
fn over_both(gw: &GatewayLab, args: &[&str], path: &str) -> [(bool, String); 2] {
    let url = gw.url(path);
    [false, true].map(|h2| {
        let mut all = Vec::new();
        if h2 {
            all.push("--http2-prior-knowledge");
        }
        all.extend_from_slice(args);
        all.push(&url);
        (h2, gw.curl(&all))
    })
}

fn status(response: &str) -> &str {
    response.get(9..12).unwrap_or(response)
}

fn hardening(io: Io, prefix: &str) {
    let _serial = serial();
    let target = match io {
        Io::Xdp => crate::common::GATEWAY,
        Io::Kernel => crate::common::GATEWAY_NODE,
    };
    let extra = manifests(target);
    let run = RunWith {
        // The IPv6 client is a trusted proxy; the IPv4 one is not.
        flags: ["--trusted-proxies", "2001:2::/64", "--forwarded", "append"]
            .map(str::to_owned)
            .to_vec(),
        ipv6: true,
        ..RunWith::default()
    };
    let gw = GatewayLab::start_with_run(prefix, io, &[("hardening.yaml", &extra)], run);

    // 3. Every spelling of /admin meets the rule on /admin, over HTTP/1.1
    // and HTTP/2; what is forwarded is the normalised path.
    for spelling in [
        "/admin",
        "//admin",
        "/x/../admin",
        "/%61dmin",
        "/./admin",
        "/%2e%2e/admin/x",
    ] {
        for (h2, r) in over_both(&gw, &["--path-as-is"], spelling) {
            assert!(
                r.starts_with("HTTP/1.1 302") || r.starts_with("HTTP/2 302"),
                "{spelling} (h2 {h2}) got past the rule on /admin: {r}"
            );
            assert!(r.contains("location: http"), "{r}");
            assert!(r.contains("/login"), "{r}");
        }
    }
    let r = gw.curl(&["--path-as-is", &gw.url("/a//b/./c/../%7Ed?q=/../x")]);
    assert!(r.contains("\"path\":\"/a/b/~d?q=/../x\""), "{r}");
    // An encoded slash: the client is sent to the decoded path.
    let r = gw.curl(&[&gw.url("/files/a%2Fb?x=1")]);
    assert!(r.starts_with("HTTP/1.1 307"), "{r}");
    assert!(r.contains("location: /files/a/b?x=1"), "{r}");
    let r = gw.curl(&[&gw.url("/files/a%zz")]);
    assert!(r.starts_with("HTTP/1.1 400"), "a broken escape: {r}");

    // 4. Header names with underscores are refused (both protocols);
    // forwarding fields from an untrusted client are replaced, a trusted
    // proxy's are merged and extended.
    for (h2, r) in over_both(&gw, &["-H", "X_Auth: admin"], "/u") {
        assert!(
            r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/2 400"),
            "h2 {h2}: {r}"
        );
    }
    let forged = "GET /fwd HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\nConnection: close\r\n\r\n";
    let r = gw.raw(forged.as_bytes());
    assert_eq!(status(&r), "200", "{r}");
    assert!(r.contains("\"X-Forwarded-For\":[\"198.18.0.10\"]"), "{r}");
    assert!(
        r.contains("\"Forwarded\":[\"for=198.18.0.10;proto=http\"]"),
        "{r}"
    );
    assert!(!r.contains("evil") && !r.contains("6.6.6.6"), "{r}");
    let r = gw.curl(&[
        "-g",
        "-H",
        "X-Forwarded-For: 1.1.1.1",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Forwarded-Proto: https",
        &gw.url6("/fwd"),
    ]);
    assert!(
        r.contains("\"X-Forwarded-For\":[\"1.1.1.1, 6.6.6.6, 2001:2::10\"]"),
        "a trusted proxy's hops, merged, then it: {r}"
    );
    assert!(r.contains("\"X-Forwarded-Proto\":[\"https\"]"), "{r}");
    assert!(r.contains("for=\\\"[2001:2::10]\\\";proto=http"), "{r}");

    // 9. An absolute-form target is served for its own authority; cookie
    // crumbs reach the backend as one field.
    let absolute = "GET http://vhost.example/abs HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n";
    let r = gw.raw(absolute.as_bytes());
    assert_eq!(status(&r), "200", "{r}");
    assert!(
        r.contains("\"pod\":\"echo-v2-lab-0\""),
        "routed by the target's authority: {r}"
    );
    assert!(r.contains("\"host\":\"vhost.example\""), "{r}");
    for (h2, r) in over_both(&gw, &["-H", "Cookie: a=1", "-H", "Cookie: b=2"], "/c") {
        assert!(r.contains("\"Cookie\":[\"a=1; b=2\"]"), "h2 {h2}: {r}");
    }

    // A broken HTTP/2 preface on the port that serves both: an HTTP/2
    // connection error (SETTINGS, then GOAWAY PROTOCOL_ERROR), never an
    // HTTP/1.1 answer.
    let r = gw.raw(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n");
    let goaway = "\0\0\0\x04\0\0\0\0\0\0\0\x08\x07\0\0\0\0\0\0\0\0\0\0\0\0\x01";
    assert_eq!(r, goaway, "{r:?}");

    // Unknown frame types, an unknown setting and an extension frame
    // (PRIORITY_UPDATE) are ignored (RFC 9113 §4.1, §5.5, §6.5.2): the
    // request is answered and the connection stays up. A connection that
    // carries no DATA gets no window-sizing PING from the gateway.
    let out = gw
        .lab
        .exec_ok("client", &["python3", "-c", EXTENSION_FRAMES, gw.target()]);
    assert_eq!(out.trim(), "status=200 goaway=none pings=0", "{out}");

    // 6. Endpoints that are the gateway's admin server or its own listener
    // are left out: no ready endpoint, never the admin's metrics.
    for path in ["/leak-admin/metrics", "/leak-self/x"] {
        let r = gw.curl(&[&gw.url(path)]);
        assert!(r.starts_with("HTTP/1.1 503"), "{path}: {r}");
        assert!(!r.contains("rauta_"), "{path}: {r}");
    }

    // 5. A line break in a header value from configuration: check-config
    // names file, object and field; the running gateway keeps its routes.
    std::fs::write(gw.config.join("smuggler.yaml"), SMUGGLING_ROUTE).unwrap();
    let out = std::process::Command::new(RAUTA)
        .arg("check-config")
        .arg(&gw.config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted it: {said}");
    assert!(
        said.contains("smuggler.yaml")
            && said.contains("HTTPRoute default/smuggler")
            && said.contains("spec.rules[0].filters[0].requestHeaderModifier.set[0].value"),
        "{said}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let r = gw.curl(&[&gw.url("/smuggle")]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(!r.contains("Smuggled") && !r.contains("Innocent"), "{r}");
    let config: serde_json::Value = serde_json::from_str(&gw.admin("/config")).unwrap();
    assert!(
        !config["active"].to_string().contains("smuggler"),
        "the bad set was loaded: {config}"
    );
    let why = config["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("requestHeaderModifier.set[0].value"),
        "{config}"
    );
}

#[test]
fn edge_hardening_on_xdp() {
    hardening(Io::Xdp, "rth-a");
}

#[test]
fn edge_hardening_on_kernel() {
    hardening(Io::Kernel, "rth-b");
}

/// Item 2: a link MTU above the UMEM frame (9000 on 4096-byte frames, as
/// on 9001-MTU cloud nodes). The stack states the MTU a frame receives,
/// so its MSS keeps peers' segments within a frame and it never builds a
/// larger one. A 4 MiB body goes both ways, byte-exact, and the gateway
/// says why it clamped.
#[test]
fn a_link_mtu_above_the_umem_frame_is_clamped_on_xdp() {
    let _serial = serial();
    let run = RunWith {
        mtu: Some(9000),
        ..RunWith::default()
    };
    let gw = GatewayLab::start_with_run("rth-m", Io::Xdp, &[], run);
    let dir = std::env::temp_dir().join(format!("rth-m-bodies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sent = dir.join("sent.bin");
    let body: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&sent, &body).unwrap();
    let got = dir.join("got.bin");
    let code = gw.lab.exec_ok(
        "client",
        &[
            "curl",
            "-s",
            "-m",
            "30",
            "-o",
            &got.to_string_lossy(),
            "-w",
            "%{http_code}",
            "--data-binary",
            &format!("@{}", sent.display()),
            &gw.url("/echo-body"),
        ],
    );
    let received = std::fs::read(&got).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, "200");
    assert!(
        received == body,
        "{} bytes back, not the {} sent",
        received.len(),
        body.len()
    );
    let log = gw.gateway.as_ref().unwrap().output().join("\n");
    assert!(
        log.contains("MTU 9000 is more than a 4096-byte UMEM frame receives")
            && log.contains("at most 3826 bytes"),
        "{log}"
    );
}

/// The client's side of the descriptor test: `count` connections each
/// send one request at once; the status lines they got within `seconds`,
/// counted (`none` for a connection closed without an answer, `waiting`
/// for one still open).
const MANY_AT_ONCE: &str = r#"
import socket, sys, time, select
host, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for i in range(count):
    s = socket.create_connection((host, 80), timeout=5)
    s.sendall(b"GET /fd HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    s.setblocking(False)
    socks.append(s)
got = {s: b"" for s in socks}
seen = {}
end = time.time() + seconds
while socks and time.time() < end:
    ready, _, _ = select.select(socks, [], [], 0.2)
    for s in ready:
        data = s.recv(65536)
        got[s] += data
        if not data:
            socks.remove(s)
            status = got[s][9:12].decode() if got[s].startswith(b"HTTP/1.1 ") else "none"
            seen[status] = seen.get(status, 0) + 1
            s.close()
if socks:
    seen["waiting"] = len(socks)
print(" ".join(f"{k}={v}" for k, v in sorted(seen.items())))
"#;

/// Item 8: out of descriptors on `--io kernel`. The gateway's limit is
/// lowered to 64 while 150 clients connect at once: the kernel queues
/// them, accept fails with EMFILE part way, and the listener (edge
/// triggered) announces nothing more. Each answered client frees its
/// descriptor; the queued rest must still be accepted and answered, not
/// stranded until some new connection arrives.
#[test]
fn connections_queued_past_the_descriptor_limit_are_served_on_kernel() {
    let _serial = serial();
    let gw = GatewayLab::start("rth-f", Io::Kernel);
    let pid = gw.gateway.as_ref().unwrap().pid().to_string();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=64:64"])
        .output()
        .expect("running prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
    let answered = gw.lab.exec_ok(
        "client",
        &["python3", "-c", MANY_AT_ONCE, gw.target(), "150", "15"],
    );
    // Each client is answered: 200, or 503 where the backend connect
    // itself found no descriptor. None is left waiting or cut off.
    let answered = answered.trim();
    let counts: Vec<(&str, u32)> = answered
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap_or(0)))
        .collect();
    let total: u32 = counts.iter().map(|c| c.1).sum();
    assert_eq!(total, 150, "{answered}");
    assert!(
        counts.iter().all(|(k, _)| *k == "200" || *k == "503"),
        "a client was stranded or cut off: {answered}"
    );
    assert!(
        counts.iter().any(|&(k, n)| k == "200" && n > 0),
        "{answered}"
    );
    let log = gw.gateway.as_ref().unwrap().output().join("\n");
    assert!(
        log.contains("accept failed"),
        "the limit was never reached: {log}"
    );
}

/// A second Gateway with a listener on port 8081 routed to the examples'
/// echo, so that one listener can fill while another stays open.
const SECOND_LISTENER: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: second, namespace: default}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: http, port: 8081, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: second, namespace: default}
spec:
  parentRefs: [{name: second}]
  rules:
  - backendRefs: [{name: echo-v1, port: 80}]
";

/// Opens connections one by one (`port:count` pairs, in order), then
/// prints each one's fate in order: `open` (still held after a moment) or
/// `refused` (reset or closed by the gateway before any request). Then
/// closes the first two held on the first port, waits, and sends a request
/// on a new connection to the last port: its status line ends the output.
const HOLD_CONNECTIONS: &str = r#"
import socket, sys, time
host = sys.argv[1]
plan = [(int(p), int(n)) for p, n in (a.split(":") for a in sys.argv[2:])]
held = []
for port, count in plan:
    for _ in range(count):
        try:
            s = socket.create_connection((host, port), timeout=5)
        except ConnectionResetError:
            # Reset before connect() returned: refused just as surely.
            s = None
        held.append((port, s))
        time.sleep(0.02)
time.sleep(0.5)
fates = []
for port, s in held:
    if s is None:
        fates.append("refused")
        continue
    s.settimeout(0.05)
    try:
        data = s.recv(1)
        fates.append("refused" if data == b"" else "data")
    except socket.timeout:
        fates.append("open")
    except OSError:
        fates.append("refused")
print(" ".join(f"{p}:{f}" for (p, _), f in zip(held, fates)))
first = plan[0][0]
freed = 0
for (port, s), fate in zip(held, fates):
    if port == first and fate == "open" and freed < 2:
        s.close()
        freed += 1
time.sleep(0.5)
s = socket.create_connection((host, plan[-1][0]), timeout=5)
s.sendall(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
s.settimeout(5)
print(s.recv(4096).split(b"\r\n")[0].decode())
"#;

/// The gateway-wide and per-listener connection limits, and the memory
/// budget: a connection past one is reset as it is accepted and counted
/// by reason; the connections already held are untouched, and a place
/// freed is taken again.
fn connection_limits(io: Io, prefix: &str) {
    let _serial = serial();
    let run = RunWith {
        flags: [
            "--max-client-connections",
            "8",
            "--max-connections-per-listener",
            "5",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let gw = GatewayLab::start_with_run(prefix, io, &[("second.yaml", SECOND_LISTENER)], run);
    // Both listeners up (workers may bind after the start line), and the
    // probes' places given back.
    let start = std::time::Instant::now();
    gw.until_status("/", "200", 2, start, std::time::Duration::from_secs(10));
    let second = format!("http://{}:8081/", gw.target());
    while gw.status_from("client", &second, 2) != "200" {
        assert!(start.elapsed().as_secs() < 10, "port 8081 never answered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = gw.lab.exec_ok(
        "client",
        &[
            "python3",
            "-c",
            HOLD_CONNECTIONS,
            gw.target(),
            "80:7",
            "8081:5",
        ],
    );
    let mut lines = out.lines();
    let fates = lines.next().unwrap_or_default();
    // Port 80 fills at its 5; port 8081 takes the 3 left of the 8.
    let expected = [
        ["80:open"; 5].join(" "),
        ["80:refused"; 2].join(" "),
        ["8081:open"; 3].join(" "),
        ["8081:refused"; 2].join(" "),
    ]
    .join(" ");
    assert_eq!(fates, expected, "{out}");
    assert_eq!(
        lines.next(),
        Some("HTTP/1.1 200 OK"),
        "a freed place: {out}"
    );
    let metrics = gw.admin("/metrics");
    let refused = |reason: &str| {
        metric(
            &metrics,
            &format!("rauta_connections_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("listener"), 2.0, "{metrics}");
    assert_eq!(refused("connections"), 2.0, "{metrics}");
    assert_eq!(refused("memory"), 0.0, "{metrics}");
    assert!(
        metric(&metrics, "rauta_memory_resident_bytes") > 1e6,
        "{metrics}"
    );
    drop(gw);

    // A budget below what the gateway already holds: every new client
    // connection is refused and counted; the admin server still answers.
    let run = RunWith {
        flags: ["--memory-budget", "1Mi"].map(String::from).to_vec(),
        ..Default::default()
    };
    let gw = GatewayLab::start_with_run(prefix, io, &[], run);
    // Until the listener is up (a refused connect), then a reset.
    for attempt in 0.. {
        let out = gw
            .lab
            .exec("client", &["curl", "-sS", "-i", "-m", "5", &gw.url("/")]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "served past the budget: {out:?}");
        if said.contains("reset") {
            break;
        }
        assert!(
            attempt < 100 && said.contains("Couldn't connect"),
            "neither reset nor not yet listening: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let metrics = gw.admin("/metrics");
    assert!(
        metric(
            &metrics,
            "rauta_connections_refused_total{reason=\"memory\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "rauta_memory_budget_bytes"), 1048576.0);
}

#[test]
fn connection_limits_and_the_memory_budget_refuse_new_connections_on_xdp() {
    connection_limits(Io::Xdp, "rth-l");
}

#[test]
fn connection_limits_and_the_memory_budget_refuse_new_connections_on_kernel() {
    connection_limits(Io::Kernel, "rth-n");
}
