//! Edge hardening on both transports: what a hostile client or a careless
//! route author tries, answered as an edge proxy must — path spellings
//! that would bypass a rule, forged forwarding fields, header names with
//! underscores, line breaks from configuration, endpoints that are the
//! gateway itself, absolute-form targets and cookie crumbs.

use crate::common::{serial, RAUTA};
use crate::gateway::{GatewayLab, Io, RunWith};

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
