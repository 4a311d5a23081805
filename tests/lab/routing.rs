//! Backends off the gateway's link: one reached through a route the node's
//! kernel holds, added while the gateway runs and followed without a
//! restart; one on the gateway's own node, behind its kernel, reached over
//! a kernel-socket leg of the same worker (issue: real clusters).

use crate::common::{require_root, serial, Process, RAUTA};
use crate::gateway::{metric, wrk_ends_without_failures, GatewayLab, Io, RunWith, BACKEND};
use std::time::{Duration, Instant};

/// Off the lab's 198.18.0.0/24: a "pod CIDR" behind the backend host, as
/// kindnet puts another node's pods behind that node's address.
const POD: &str = "198.19.200.1";

/// A Service `name` with endpoints `addresses` on `port` (speaking
/// `app_protocol` if given), and an HTTPRoute sending `path` to it.
pub(crate) fn routed_service(
    name: &str,
    path: &str,
    addresses: &[&str],
    port: u16,
    app_protocol: &str,
) -> String {
    let protocol = if app_protocol.is_empty() {
        String::new()
    } else {
        format!(", appProtocol: {app_protocol}")
    };
    let endpoints: String = addresses
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]\n"))
        .collect();
    let family = if addresses.iter().any(|a| a.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports:
  - {{name: http, port: 80, targetPort: {port}{protocol}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-lab
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: {family}
ports:
- {{name: http, port: {port}}}
endpoints:
{endpoints}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs:
  - name: lab
  rules:
  - matches:
    - path: {{type: PathPrefix, value: {path}}}
    backendRefs:
    - {{name: {name}, port: 80}}
"#
    )
}

fn offlink_backend_follows_the_kernels_route(io: Io, prefix: &str) {
    let _serial = serial();
    require_root();
    let mut flags = vec!["--connect-timeout".to_owned(), "1".to_owned()];
    if io == Io::Xdp {
        // The userspace stack's own route, not a kernel leg's (which would
        // follow the kernel's table by itself).
        flags.extend(["--backend-legs".to_owned(), "userspace".to_owned()]);
    }
    let run = RunWith {
        flags,
        ..RunWith::default()
    };
    let offlink = routed_service("offlink", "/offlink", &[POD], 3002, "");
    let gw = GatewayLab::start_with_run(prefix, io, &[("offlink.yaml", &offlink)], run);
    // The backend host holds the pod's address itself (on its loopback),
    // so a packet routed to it through the host is answered there.
    gw.lab.exec_ok(
        "backend",
        &["ip", "addr", "add", &format!("{POD}/32"), "dev", "lo"],
    );
    let _pod = gw.spawn_echo("echo-offlink-0", &format!("{POD}:3002"));

    // No route yet: the gateway's node cannot reach the pod.
    let before = gw.status("/offlink", 10);
    assert!(
        before.starts_with('5'),
        "the pod answered ({before}) before any route led to it"
    );

    // The CNI's route appears on the gateway's node; the gateway follows it.
    let iface = gw.lab.gw_iface();
    gw.lab.exec_ok(
        "gw",
        &[
            "ip",
            "route",
            "add",
            "198.19.200.0/24",
            "via",
            BACKEND,
            "dev",
            &iface,
        ],
    );
    let added = Instant::now();
    let took = gw.until_status("/offlink", "200", 10, added, Duration::from_secs(10));
    eprintln!("{io:?}: route followed in {took:?}");
    let body = gw.curl(&[&gw.url("/offlink")]);
    assert!(
        body.contains("echo-offlink-0"),
        "not the pod's answer:\n{body}"
    );
    // Every request after that is served.
    for _ in 0..20 {
        assert_eq!(gw.status("/offlink", 10), "200");
    }
}

#[test]
fn a_backend_off_the_link_is_reached_through_the_kernels_route_on_xdp() {
    offlink_backend_follows_the_kernels_route(Io::Xdp, "rrt-x");
}

#[test]
fn a_backend_off_the_link_is_reached_through_the_kernels_route_on_kernel() {
    offlink_backend_follows_the_kernels_route(Io::Kernel, "rrt-k");
}

/// The pod on the gateway's own node (`src/lab.rs`).
const NODE_LOCAL_POD: &str = "198.19.100.2";

fn node_local_pod_is_served(io: Io, prefix: &str) {
    let _serial = serial();
    require_root();
    // `/nodelocal` and `/nodelocal-h2c`: the node-local pod over HTTP/1.1
    // and h2c.
    let http1 = routed_service("nodelocal", "/nodelocal", &[NODE_LOCAL_POD], 3003, "");
    let h2c = routed_service(
        "nodelocal-h2c",
        "/nodelocal-h2c",
        &[NODE_LOCAL_POD],
        3003,
        "kubernetes.io/h2c",
    );
    let gw = GatewayLab::start_with(prefix, io, &[("http1.yaml", &http1), ("h2c.yaml", &h2c)]);
    let _pod = gw.spawn_echo_on(
        "lpod",
        "echo-local-0",
        &format!("{NODE_LOCAL_POD}:3003"),
        &[],
    );
    for path in ["/nodelocal", "/nodelocal-h2c", "/echo"] {
        for _ in 0..5 {
            let answer = gw.curl(&[&gw.url(path)]);
            assert!(answer.starts_with("HTTP/1.1 200"), "{path}:\n{answer}");
            if path != "/echo" {
                assert!(
                    answer.contains("echo-local-0"),
                    "{path}: not the node-local pod:\n{answer}"
                );
            }
        }
    }
    let mut load = gw.lab.spawn(
        "client",
        &[
            "wrk",
            "-t1",
            "-c16",
            "-d3s",
            "--timeout",
            "3s",
            &gw.url("/nodelocal"),
        ],
    );
    wrk_ends_without_failures(&mut load, "load on the node-local pod");
    if io == Io::Xdp {
        // Both legs in use, told apart: the node-local pod over a kernel
        // socket, the backend on the link over the stack.
        let metrics = gw.admin("/metrics");
        let kernel = metric(&metrics, "rauta_backend_connects_total{leg=\"kernel\"}");
        let userspace = metric(&metrics, "rauta_backend_connects_total{leg=\"userspace\"}");
        assert!(
            kernel >= 2.0,
            "kernel legs: {kernel} (one HTTP/1.1, one h2c at least)"
        );
        assert!(userspace >= 1.0, "userspace legs: {userspace}");
    }
}

#[test]
fn a_pod_on_the_gateways_own_node_is_served_over_a_kernel_leg_on_xdp() {
    node_local_pod_is_served(Io::Xdp, "rnl-x");
}

#[test]
fn a_pod_on_the_gateways_own_node_is_served_on_kernel() {
    node_local_pod_is_served(Io::Kernel, "rnl-k");
}

/// Pods on the two other nodes and on the gateway's own (`src/lab.rs`).
const PODS: [(&str, &str); 3] = [
    ("pod2", "198.19.2.2"),
    ("pod3", "198.19.3.2"),
    ("lpod", NODE_LOCAL_POD),
];

/// The Services `{name}` (HTTP/1.1) and `{name}-h2c` (h2c), at paths of
/// the same names, over `pods` (host, address) on `port`: manifest files.
fn spread_services(name: &str, pods: &[(&str, &str)], port: u16) -> Vec<(String, String)> {
    let addresses: Vec<&str> = pods.iter().map(|(_, a)| *a).collect();
    let h2c = format!("{name}-h2c");
    vec![
        (
            format!("{name}.yaml"),
            routed_service(name, &format!("/{name}"), &addresses, port, ""),
        ),
        (
            format!("{h2c}.yaml"),
            routed_service(
                &h2c,
                &format!("/{h2c}"),
                &addresses,
                port,
                "kubernetes.io/h2c",
            ),
        ),
    ]
}

/// `rauta echo` as `echo-{host}` on each of `pods` (host, address), on
/// `port`.
fn spawn_pods(gw: &GatewayLab, pods: &[(&str, &str)], port: u16) -> Vec<Process> {
    pods.iter()
        .map(|(host, address)| {
            let listen = std::net::SocketAddr::new(address.parse().unwrap(), port);
            gw.spawn_echo_on(host, &format!("echo-{host}"), &listen.to_string(), &[])
        })
        .collect()
}

/// 30 requests to `url` from the routed client: every one 200, and every
/// pod of `pods` among those that answered.
fn every_pod_answers(gw: &GatewayLab, url: &str, pods: &[(&str, &str)]) {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let answer = gw
            .lab
            .exec_ok("rcl", &["curl", "-g", "-s", "-i", "-m", "10", url]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{url}:\n{answer}");
        assert!(
            !answer.contains("echo-gw"),
            "{url}: the node's own service answered the gateway's port"
        );
        for (host, _) in pods {
            if answer.contains(&format!("echo-{host}")) {
                seen.insert(*host);
            }
        }
    }
    assert_eq!(
        seen.len(),
        pods.len(),
        "{url}: pods that answered: {seen:?}"
    );
}

/// wrk from the routed client on `url` (32 connections, 4 s).
fn routed_load(gw: &GatewayLab, url: &str) -> Process {
    gw.lab.spawn(
        "rcl",
        &["wrk", "-t1", "-c32", "-d4s", "--timeout", "3s", url],
    )
}

/// Backend connects so far over kernel legs and over the stack are at
/// least `kernel` and `userspace`.
fn legs_used(gw: &GatewayLab, kernel: f64, userspace: f64) {
    let metrics = gw.admin("/metrics");
    let on_kernel = metric(&metrics, "rauta_backend_connects_total{leg=\"kernel\"}");
    let on_stack = metric(&metrics, "rauta_backend_connects_total{leg=\"userspace\"}");
    assert!(on_kernel >= kernel, "kernel legs: {on_kernel}");
    assert!(on_stack >= userspace, "userspace legs: {on_stack}");
}

/// A client on another subnet, behind a router, reaches one Service whose
/// `pods` are on both other nodes (through the node's routes, over the
/// userspace stack) and on the gateway's own node (over a kernel leg), over
/// HTTP/1.1 and h2c, and a wrk run over all of them ends with 0 errors.
fn routed_client_reaches_every_node(prefix: &str, pods: &[(&str, &str)], ipv6: bool) {
    let _serial = serial();
    require_root();
    let manifests = spread_services("spread", pods, 3004);
    let manifests: Vec<(&str, &str)> = manifests
        .iter()
        .map(|(f, m)| (f.as_str(), m.as_str()))
        .collect();
    let run = RunWith {
        ipv6,
        ..RunWith::default()
    };
    let gw = GatewayLab::start_with_run(prefix, Io::Xdp, &manifests, run);
    let _pods = spawn_pods(&gw, pods, 3004);
    let url = |path: &str| if ipv6 { gw.url6(path) } else { gw.url(path) };
    for path in ["/spread", "/spread-h2c"] {
        every_pod_answers(&gw, &url(path), pods);
    }
    let mut load = routed_load(&gw, &url("/spread"));
    wrk_ends_without_failures(
        &mut load,
        "load from the routed client over every node's pods",
    );
    legs_used(&gw, 2.0, 4.0);
}

#[test]
fn a_routed_client_reaches_pods_on_every_node_on_xdp() {
    routed_client_reaches_every_node("rcn-x", &PODS, false);
}

/// The same over IPv6: a client on another IPv6 subnet and IPv6 pods, on
/// the stack's IPv6 address, through the node's IPv6 routes.
#[test]
fn a_routed_ipv6_client_reaches_pods_on_every_node_on_xdp() {
    routed_client_reaches_every_node("rc6-x", &PODS6, true);
}

/// Packets `host` routed on: `/proc/net/snmp`'s `Ip: ForwDatagrams`, or
/// for IPv6 `/proc/net/snmp6`'s `Ip6OutForwDatagrams`.
fn forwarded(gw: &GatewayLab, host: &str, ipv6: bool) -> u64 {
    if ipv6 {
        let snmp6 = gw.lab.exec_ok(host, &["cat", "/proc/net/snmp6"]);
        return snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Ip6OutForwDatagrams in /proc/net/snmp6");
    }
    let snmp = gw.lab.exec_ok(host, &["cat", "/proc/net/snmp"]);
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ForwDatagrams")
        .and_then(|(_, value)| value.parse().ok())
        .expect("Ip: ForwDatagrams in /proc/net/snmp")
}

/// Node-address mode (issue: real clusters). The gateway shares the
/// gateway node's own address with its kernel: XDP takes only TCP to the
/// listener port and the stack's ephemeral ports. A routed client reaches
/// pods on both other nodes over the userspace stack and the pod on the
/// gateway's node over a kernel leg (HTTP/1.1 and h2c), over IPv4 and over
/// IPv6 on the node's IPv6 address, with an IPv4 and an IPv6 client loading
/// it at once; the node's own TCP service and ping on the same addresses
/// keep answering under that load; pod CIDRs of both families moved to
/// another next hop mid-run are followed with no failed request; and an
/// ephemeral range that clashes with the kernel's is refused at start with
/// the ports named.
#[test]
fn the_node_address_is_shared_with_the_nodes_own_services_on_xdp() {
    let _serial = serial();
    require_root();
    let mut manifests = spread_services("spread", &PODS, 3004);
    manifests.extend(spread_services("spread6", &PODS6, 3007));
    manifests.push((
        "moved.yaml".to_owned(),
        routed_service("moved", "/moved", &["198.19.2.2"], 3004, ""),
    ));
    manifests.push((
        "moved6.yaml".to_owned(),
        routed_service("moved6", "/moved6", &["2001:2:0:2::2"], 3007, ""),
    ));
    let manifests: Vec<(&str, &str)> = manifests
        .iter()
        .map(|(f, m)| (f.as_str(), m.as_str()))
        .collect();
    let run = RunWith {
        node_address: true,
        ipv6: true,
        ..RunWith::default()
    };
    let gw = GatewayLab::start_with_run("rna-x", Io::Xdp, &manifests, run);
    let (node, node6) = (gw.target(), gw.target6());
    // The node's own service on its addresses: the kernel's, not the
    // gateway's (port 2222, as SSH might be).
    let node_service = format!("http://{node}:2222/node");
    let node_service6 = format!("http://[{node6}]:2222/node");
    let _node_service = spawn_pods(&gw, &[("gw", node), ("gw", node6)], 2222);
    let _pods = spawn_pods(&gw, &PODS, 3004);
    let _pods6 = spawn_pods(&gw, &PODS6, 3007);
    for url in [&node_service, &node_service6] {
        let answer = gw
            .lab
            .exec_ok("rcl", &["curl", "-g", "-s", "-i", "-m", "10", url]);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("echo-gw"),
            "the node's own service at {url}:\n{answer}"
        );
    }
    for path in ["/spread", "/spread-h2c"] {
        every_pod_answers(&gw, &gw.url(path), &PODS);
    }
    // IPv6: the node's IPv6 address, shared the same way.
    for path in ["/spread6", "/spread6-h2c"] {
        every_pod_answers(&gw, &gw.url6(path), &PODS6);
    }

    // Load over every pod from an IPv4 and an IPv6 client at once;
    // meanwhile the node's own service and ping answer on both addresses.
    let mut load = routed_load(&gw, &gw.url("/spread"));
    let mut load6 = routed_load(&gw, &gw.url6("/spread6"));
    let mut node_answers = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for url in [&node_service, &node_service6] {
            let status = gw.status_from("rcl", url, 2);
            assert_eq!(status, "200", "the node's own service at {url} under load");
        }
        for address in [node, node6] {
            gw.lab
                .exec_ok("client", &["ping", "-c", "1", "-W", "2", address]);
        }
        node_answers += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    wrk_ends_without_failures(&mut load, "IPv4 load on the node's address");
    wrk_ends_without_failures(&mut load6, "IPv6 load on the node's IPv6 address");
    eprintln!("the node's own service answered {node_answers} times on each family under load");

    // Node2's pod CIDRs move behind node3 (which routes them on to
    // node2), mid-run: the stack follows both, and no request fails.
    gw.lab.exec_ok(
        "node3",
        &["sysctl", "-q", "-w", "net.ipv4.conf.all.send_redirects=0"],
    );
    let moves = [
        (
            "198.19.2.0/24",
            "198.18.0.32",
            "198.18.0.33",
            "/moved",
            false,
        ),
        (
            "2001:2:0:2::/64",
            "2001:2::32",
            "2001:2::33",
            "/moved6",
            true,
        ),
    ];
    let mut loads = Vec::new();
    for (cidr, node2, _, path, ipv6) in moves {
        gw.lab
            .exec_ok("node3", &["ip", "route", "add", cidr, "via", node2]);
        let url = if ipv6 { gw.url6(path) } else { gw.url(path) };
        loads.push(gw.lab.spawn(
            "rcl",
            &["wrk", "-t1", "-c16", "-d6s", "--timeout", "3s", &url],
        ));
    }
    std::thread::sleep(Duration::from_secs(2));
    for (cidr, _, node3, _, ipv6) in moves {
        let before = forwarded(&gw, "node3", ipv6);
        gw.lab
            .exec_ok("gw", &["ip", "route", "replace", cidr, "via", node3]);
        let changed = Instant::now();
        let settled = loop {
            if forwarded(&gw, "node3", ipv6) > before + 100 {
                break changed.elapsed();
            }
            assert!(
                changed.elapsed() < Duration::from_secs(3),
                "the gateway still sends {cidr} to node2 3 s after the route moved"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        eprintln!(
            "route move of {cidr} followed in {settled:?} (node3 forwarding the gateway's packets)"
        );
    }
    for mut load in loads {
        wrk_ends_without_failures(&mut load, "a route move");
    }

    legs_used(&gw, 4.0, 8.0);
    let metrics = gw.admin("/metrics");
    let learned = metric(&metrics, "rauta_neighbours_learned_total");
    assert!(
        learned >= 3.0,
        "neighbours from the kernel's table and the clients' SYNs: {learned}"
    );

    // A stack range inside the kernel's: refused at start, ports named.
    let clash = gw.lab.exec(
        "gw",
        &[
            RAUTA,
            "run",
            "--config",
            &gw.config.to_string_lossy(),
            "--admin",
            "127.0.0.1:9902",
            "--io",
            "xdp",
            "--iface",
            &gw.lab.gw_iface(),
            "--address-mode",
            "node",
            "--ephemeral-ports",
            "50000-60000",
        ],
    );
    let said = String::from_utf8_lossy(&clash.stderr);
    assert!(!clash.status.success(), "a clashing range was accepted");
    assert!(
        said.contains("overlap") && said.contains("at 50000-60000"),
        "{said}"
    );
}

/// IPv6 pods on the two other nodes and on the gateway's own
/// (`src/lab.rs`).
const PODS6: [(&str, &str); 3] = [
    ("pod2", "2001:2:0:2::2"),
    ("pod3", "2001:2:0:3::2"),
    ("lpod", "2001:2:0:100::2"),
];
