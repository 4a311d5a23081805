//! IPv6 and dual stack (issue: real clusters): the gateway serves an IPv4
//! and an IPv6 address at once, on both transports. Clients of either
//! family reach backends of either family, an EndpointSlice of
//! `addressType: IPv6` among them, over HTTP/1.1 and h2c, and a load from
//! an IPv4 and an IPv6 client at once ends with no failure.

use crate::common::{require_root, serial};
use crate::gateway::{metric, wrk_ends_without_failures, GatewayLab, Io, RunWith};
use crate::routing::routed_service;

/// The backend host's IPv6 address (`src/lab.rs`: every segment host has
/// one).
const BACKEND6: &str = "2001:2::20";
const CLIENT6: &str = "2001:2::10";

fn dual_stack(io: Io, prefix: &str) {
    let _serial = serial();
    require_root();
    let run = RunWith {
        ipv6: true,
        ..RunWith::default()
    };
    // An EndpointSlice of addressType IPv6.
    let service = routed_service("echo-v6", "/v6", &[BACKEND6], 3006, "");
    let gw = GatewayLab::start_with_run(prefix, io, &[("v6.yaml", &service)], run);
    let _backend6 = gw.spawn_echo("echo-v6-lab-0", &format!("[{BACKEND6}]:3006"));
    // Every pairing of client and backend family, HTTP/1.1 and h2c.
    let cases = [
        ("IPv6 client, IPv6 backend", gw.url6("/v6"), "echo-v6-lab-0"),
        ("IPv6 client, IPv4 backend", gw.url6("/echo"), "echo-v"),
        ("IPv4 client, IPv6 backend", gw.url("/v6"), "echo-v6-lab-0"),
    ];
    for (what, url, pod) in &cases {
        for http2 in [false, true] {
            let mut args = vec!["-g"];
            if http2 {
                args.push("--http2-prior-knowledge");
            }
            args.push(url);
            let answer = gw.curl(&args);
            let head = if http2 { "HTTP/2 200" } else { "HTTP/1.1 200" };
            assert!(
                answer.starts_with(head) && answer.contains(pod),
                "{io:?}, {what} (h2 {http2}):\n{answer}"
            );
        }
    }
    // The backend sees the IPv6 client as the client.
    let answer = gw.curl(&["-g", &gw.url6("/v6")]);
    assert!(
        answer
            .to_lowercase()
            .contains(&format!("x-forwarded-for\":\"{CLIENT6}"))
            || answer.contains(CLIENT6),
        "{io:?}: the client's IPv6 address is not forwarded:\n{answer}"
    );
    // An IPv4 and an IPv6 client at once, each to the other family's
    // backend.
    let wrk = |url: String| {
        gw.lab.spawn(
            "client",
            &["wrk", "-t1", "-c16", "-d3s", "--timeout", "3s", &url],
        )
    };
    let mut load4 = wrk(gw.url("/v6"));
    let mut load6 = wrk(gw.url6("/echo"));
    let requests4 = wrk_ends_without_failures(&mut load4, "IPv4 clients beside IPv6 ones");
    let requests6 = wrk_ends_without_failures(&mut load6, "IPv6 clients beside IPv4 ones");
    eprintln!("{io:?}: dual stack at once: {requests4} requests over IPv4, {requests6} over IPv6");
    if io == Io::Xdp {
        // The IPv6 backend is on the stack's link: the stack's own leg.
        let metrics = gw.admin("/metrics");
        let kernel = metric(&metrics, "rauta_backend_connects_total{leg=\"kernel\"}");
        assert_eq!(kernel, 0.0, "a backend on the link went over a kernel leg");
    }
}

#[test]
fn ipv4_and_ipv6_clients_and_backends_at_once_on_xdp() {
    dual_stack(Io::Xdp, "rds-x");
}

#[test]
fn ipv4_and_ipv6_clients_and_backends_at_once_on_kernel() {
    dual_stack(Io::Kernel, "rds-k");
}
