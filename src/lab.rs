//! The veth lab of DESIGN.md: a kind-like L2 segment in network namespaces.
//!
//! ```text
//!   {p}-client: {p}-cl ──┐                     ┌── {p}-gw : {p}-gw  (N queues, gateway node)
//!                        └─ {p}-br: bridge {p}-br0 ─┤
//!   {p}-backend: {p}-be ─┘                     (every veth's other end is a bridge port)
//!
//!   {p}-gw : {p}-lp (198.19.100.1/30) ── {p}-lpe (198.19.100.2/30) : {p}-lpod
//!
//!   on the bridge too, as kind's other nodes and a router would be:
//!   {p}-node2: {p}-n2 198.18.0.32 ── {p}-v2 198.19.2.1/30 ── {p}-e2 198.19.2.2 : {p}-pod2
//!   {p}-node3: {p}-n3 198.18.0.33 ── {p}-v3 198.19.3.1/30 ── {p}-e3 198.19.3.2 : {p}-pod3
//!   {p}-rtr:   {p}-rt 198.18.0.254 ── {p}-rv 198.18.1.1/24 ── {p}-rc 198.18.1.10 : {p}-rcl
//!
//!   and IPv6 beside each: the pods' 2001:2:0:N::2/64 (the node-local
//!   pod's N is 100), the remote client's 2001:2:1::10/64, with routes to
//!   them as for IPv4
//! ```
//!
//! `{p}-lpod` is a pod on the gateway's own node: behind that node's
//! kernel on a veth of its own, as a CNI puts it, not on the segment of
//! the gateway's interface. `{p}-pod2` and `{p}-pod3` are pods on two other
//! nodes, reached through kindnet-style routes on the gateway node (each
//! node's pod CIDR via the node's address); `{p}-rcl` is a client on
//! another subnet behind a router.
//!
//! Addresses come from 198.18.0.0/15, and on the segment also from
//! 2001:2::/64 (the IPv6 benchmarking range, RFC 5180): every host there
//! has both (`2001:2::` and the IPv4 address's last number). The gateway
//! node's kernel holds [`GATEWAY_NODE`] and [`GATEWAY_NODE6`];
//! [`GATEWAY`] and [`GATEWAY6`] are left for the userspace stack alone.
//! TX checksum offload is off on every interface that sends toward the
//! gateway (AF_XDP would otherwise see partial checksums).

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// The address the userspace stack owns.
pub const GATEWAY: &str = "198.18.0.1";
/// The IPv6 address the userspace stack owns.
pub const GATEWAY6: &str = "2001:2::1";
/// The gateway node's kernel IPv6 address.
pub const GATEWAY_NODE6: &str = "2001:2::2";
/// The IPv6 segment's prefix length.
pub const PREFIX_LEN6: u8 = 64;
/// The gateway node's kernel address (host traffic).
pub const GATEWAY_NODE: &str = "198.18.0.2";
/// The client host.
pub const CLIENT: &str = "198.18.0.10";
/// The backend host.
pub const BACKEND: &str = "198.18.0.20";
/// The client behind the router, on another subnet.
pub const REMOTE_CLIENT: &str = "198.18.1.10";
/// Prefix length of the lab segment.
pub const PREFIX_LEN: u8 = 24;
/// The gateway node's end of the node-local pod's veth.
pub const NODE_LOCAL_NODE: &str = "198.19.100.1";
/// The pod on the gateway's node.
pub const NODE_LOCAL_POD: &str = "198.19.100.2";
/// Its IPv6 address.
pub const NODE_LOCAL_POD6: &str = "2001:2:0:100::2";
/// The remote client's IPv6 address.
pub const REMOTE_CLIENT6: &str = "2001:2:1::10";
/// Other nodes: (role, interface, address on the segment, pod CIDR's
/// third octet).
const NODES: [(&str, &str, &str, u8); 2] = [
    ("node2", "n2", "198.18.0.32", 2),
    ("node3", "n3", "198.18.0.33", 3),
];
/// The router to the remote client's subnet.
const ROUTER: &str = "198.18.0.254";

/// Names of one lab's namespaces and interfaces.
#[derive(Clone, Debug)]
pub struct Lab {
    prefix: String,
}

impl Lab {
    /// The lab whose names start with `prefix` (`rauta` by default).
    pub fn new(prefix: &str) -> Result<Self> {
        // Interface names are at most 15 bytes; the longest is "{p}-gw-p".
        if prefix.is_empty()
            || prefix.len() > 10
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("lab prefix {prefix:?} must be 1-10 letters, digits or '-'");
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// A namespace's name for `role` (gw, client, backend, br).
    pub fn netns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// The gateway's interface (inside the gw namespace).
    pub fn gateway_iface(&self) -> String {
        format!("{}-gw", self.prefix)
    }

    fn hosts(&self) -> [(String, String, &'static str); 6] {
        let p = &self.prefix;
        [
            ("gw".into(), format!("{p}-gw"), GATEWAY_NODE),
            ("client".into(), format!("{p}-cl"), CLIENT),
            ("backend".into(), format!("{p}-be"), BACKEND),
            (NODES[0].0.into(), format!("{p}-{}", NODES[0].1), NODES[0].2),
            (NODES[1].0.into(), format!("{p}-{}", NODES[1].1), NODES[1].2),
            ("rtr".into(), format!("{p}-rt"), ROUTER),
        ]
    }

    fn namespaces(&self) -> Vec<String> {
        [
            "br", "gw", "client", "backend", "lpod", "node2", "pod2", "node3", "pod3", "rtr", "rcl",
        ]
        .iter()
        .map(|r| self.netns(r))
        .collect()
    }

    /// Whether any of the lab's namespaces exists.
    pub fn exists(&self) -> Result<bool> {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .context("running `ip netns list` (is iproute2 installed?)")?;
        let list = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        Ok(self
            .namespaces()
            .iter()
            .any(|n| names.contains(&n.as_str())))
    }

    /// Build the lab (after removing a previous one of the same names), with
    /// `queues` queues on the gateway's interface. On failure everything
    /// made so far is removed.
    pub fn up(&self, queues: u32) -> Result<Vec<String>> {
        require_root("rauta lab up")?;
        if !(1..=64).contains(&queues) {
            bail!("--queues must be 1..=64, got {queues}");
        }
        self.down()?;
        let mut made = Vec::new();
        match self.build(queues, &mut made) {
            Ok(()) => Ok(made),
            Err(e) => {
                let _ = self.down();
                Err(e.context("building the lab failed; everything it made was removed"))
            }
        }
    }

    fn build(&self, queues: u32, made: &mut Vec<String>) -> Result<()> {
        for ns in self.namespaces() {
            run("ip", &["netns", "add", &ns])?;
            self.ip(&ns, &["link", "set", "lo", "up"])?;
            made.push(format!("namespace {ns}"));
        }
        let br_ns = self.netns("br");
        let bridge = format!("{}-br0", self.prefix);
        self.ip(&br_ns, &["link", "add", &bridge, "type", "bridge"])?;
        self.ip(&br_ns, &["link", "set", &bridge, "up"])?;
        made.push(format!("bridge {bridge} in {br_ns}"));

        let q = queues.to_string();
        for (role, iface, address) in self.hosts() {
            let ns = self.netns(&role);
            let port = format!("{iface}-p");
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &iface,
                    "netns",
                    &ns,
                    "numtxqueues",
                    &q,
                    "numrxqueues",
                    &q,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &br_ns,
                    "numtxqueues",
                    &q,
                    "numrxqueues",
                    &q,
                ],
            )?;
            self.ip(&br_ns, &["link", "set", &port, "master", &bridge])?;
            self.ip(&br_ns, &["link", "set", &port, "up"])?;
            let cidr = format!("{address}/{PREFIX_LEN}");
            self.ip(&ns, &["addr", "add", &cidr, "dev", &iface])?;
            let cidr6 = format!("{}/{PREFIX_LEN6}", ipv6_of(address));
            // No duplicate detection: the address is usable at once.
            self.ip(&ns, &["-6", "addr", "add", &cidr6, "dev", &iface, "nodad"])?;
            self.ip(&ns, &["link", "set", &iface, "up"])?;
            // Whatever sends toward the gateway must send full checksums.
            self.ethtool(&br_ns, &port)?;
            if role != "gw" {
                self.ethtool(&ns, &iface)?;
            } else {
                self.spread_over_queues(&br_ns, &port, queues)?;
            }
            made.push(format!(
                "{iface} ({cidr}, {cidr6}, {queues} queues) in {ns}, bridge port {port}"
            ));
        }
        let (gw_ns, pod_ns) = (self.netns("gw"), self.netns("lpod"));
        let node_side = format!("{}-lp", self.prefix);
        let pod_side = format!("{}-lpe", self.prefix);
        self.pair(
            (&gw_ns, &node_side, NODE_LOCAL_NODE),
            (&pod_ns, &pod_side, NODE_LOCAL_POD),
            30,
        )?;
        self.pair6(
            (&gw_ns, &node_side, "2001:2:0:100::1"),
            (&pod_ns, &pod_side, NODE_LOCAL_POD6),
        )?;
        made.push(format!(
            "node-local pod {NODE_LOCAL_POD} in {pod_ns}, behind {gw_ns}'s kernel on {node_side}"
        ));
        self.build_cluster(made)?;
        // The client is a load generator: tens of thousands of connections
        // a minute would exhaust the default port range while TIME-WAIT
        // holds the ports.
        self.sysctl(
            &self.netns("client"),
            &[
                "net.ipv4.ip_local_port_range=1024 65000",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        )?;
        made.push(format!(
            "gateway addresses {GATEWAY}/{PREFIX_LEN} and {GATEWAY6}/{PREFIX_LEN6} are free for the userspace stack on {} in {} (its kernel holds {GATEWAY_NODE} and {GATEWAY_NODE6})",
            self.gateway_iface(),
            self.netns("gw")
        ));
        Ok(())
    }

    /// The other nodes' pods, the router and the client behind it, and the
    /// gateway node's routes to them (see the module's picture).
    fn build_cluster(&self, made: &mut Vec<String>) -> Result<()> {
        let p = &self.prefix;
        let gw_ns = self.netns("gw");
        for (node, _, node_address, n) in NODES {
            let (node_ns, pod_ns) = (self.netns(node), self.netns(&format!("pod{n}")));
            let (node_side, pod_side) = (format!("{p}-v{n}"), format!("{p}-e{n}"));
            let (hop, pod) = (format!("198.19.{n}.1"), format!("198.19.{n}.2"));
            self.pair((&node_ns, &node_side, &hop), (&pod_ns, &pod_side, &pod), 30)?;
            let (hop6, pod6) = (format!("2001:2:0:{n}::1"), format!("2001:2:0:{n}::2"));
            self.pair6((&node_ns, &node_side, &hop6), (&pod_ns, &pod_side, &pod6))?;
            self.sysctl(
                &node_ns,
                &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
            )?;
            let cidr = format!("198.19.{n}.0/24");
            self.ip(&gw_ns, &["route", "add", &cidr, "via", node_address])?;
            let cidr6 = format!("2001:2:0:{n}::/64");
            let node6 = ipv6_of(node_address);
            self.ip(&gw_ns, &["-6", "route", "add", &cidr6, "via", &node6])?;
            made.push(format!(
                "pod {pod} in {pod_ns} on {node_ns}; {cidr} via {node_address} on the gateway node"
            ));
        }
        let (rtr_ns, rcl_ns) = (self.netns("rtr"), self.netns("rcl"));
        let (rtr_side, rcl_side) = (format!("{p}-rv"), format!("{p}-rc"));
        self.pair(
            (&rtr_ns, &rtr_side, "198.18.1.1"),
            (&rcl_ns, &rcl_side, REMOTE_CLIENT),
            24,
        )?;
        self.pair6(
            (&rtr_ns, &rtr_side, "2001:2:1::1"),
            (&rcl_ns, &rcl_side, REMOTE_CLIENT6),
        )?;
        self.sysctl(
            &rtr_ns,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        self.ip(&gw_ns, &["route", "add", "198.18.1.0/24", "via", ROUTER])?;
        let router6 = ipv6_of(ROUTER);
        self.ip(
            &gw_ns,
            &["-6", "route", "add", "2001:2:1::/64", "via", &router6],
        )?;
        made.push(format!(
            "remote client {REMOTE_CLIENT} in {rcl_ns}, behind the router {ROUTER} in {rtr_ns}"
        ));
        Ok(())
    }

    /// A veth between two namespaces, each end (namespace, interface,
    /// address) addressed `/len`, the second end's default route through
    /// the first; no checksum offload (what they send may reach the
    /// gateway's AF_XDP sockets).
    fn pair(&self, a: (&str, &str, &str), b: (&str, &str, &str), len: u8) -> Result<()> {
        run(
            "ip",
            &[
                "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
            ],
        )?;
        for (ns, iface, address) in [a, b] {
            self.ip(
                ns,
                &["addr", "add", &format!("{address}/{len}"), "dev", iface],
            )?;
            self.ip(ns, &["link", "set", iface, "up"])?;
            self.ethtool(ns, iface)?;
        }
        self.ip(b.0, &["route", "add", "default", "via", a.2])
    }

    /// IPv6 on a pair [`Self::pair`] made: each end (namespace,
    /// interface, address) addressed `/64`, the second end's default route
    /// through the first.
    fn pair6(&self, a: (&str, &str, &str), b: (&str, &str, &str)) -> Result<()> {
        for (ns, iface, address) in [a, b] {
            let cidr = format!("{address}/64");
            self.ip(ns, &["-6", "addr", "add", &cidr, "dev", iface, "nodad"])?;
        }
        self.ip(b.0, &["-6", "route", "add", "default", "via", a.2])
    }

    /// Set kernel `settings` (`key=value`) in namespace `ns`.
    fn sysctl(&self, ns: &str, settings: &[&str]) -> Result<()> {
        let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
        args.extend_from_slice(settings);
        run("ip", &args).with_context(|| format!("setting {settings:?} in {ns}"))
    }

    /// Remove everything the lab made (deleting a namespace deletes its
    /// veths, and their peers with them). Quiet when there is nothing.
    pub fn down(&self) -> Result<Vec<String>> {
        require_root("rauta lab down")?;
        let mut removed = Vec::new();
        for ns in self.namespaces() {
            let status = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status()
                .context("running ip (is iproute2 installed?)")?;
            if status.success() {
                removed.push(format!("namespace {ns}"));
            }
        }
        if self.exists()? {
            bail!("some lab namespaces could not be deleted");
        }
        Ok(removed)
    }

    /// A bridge forwarding into a multi-queue veth puts every frame on
    /// queue 0 unless told otherwise. XPS on the bridge port picks the
    /// gateway's RX queue by the CPU that sends the frame (queue i for CPU
    /// i mod CPUs), so flows spread over queues as RSS would spread them, and
    /// a test can steer a client's flows by pinning it to a CPU.
    fn spread_over_queues(&self, br_ns: &str, port: &str, queues: u32) -> Result<()> {
        if queues < 2 {
            return Ok(());
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let mut script = String::new();
        for q in 0..queues {
            let mask = 1u64 << (q % cpus.min(64));
            script.push_str(&format!(
                "echo {mask:x} > /sys/class/net/{port}/queues/tx-{q}/xps_cpus; "
            ));
        }
        run("ip", &["netns", "exec", br_ns, "sh", "-c", &script])
            .context("setting XPS on the gateway's bridge port")
    }

    fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn ethtool(&self, ns: &str, iface: &str) -> Result<()> {
        run(
            "ip",
            &[
                "netns", "exec", ns, "ethtool", "-K", iface, "tx", "off", "tso", "off", "gso",
                "off",
            ],
        )
        .context("ethtool is needed to turn TX checksum offload off (apt-get install ethtool)")
    }
}

/// A segment host's IPv6 address: `2001:2::` and the last number of its
/// IPv4 address (198.18.0.10 is 2001:2::10).
pub fn ipv6_of(ipv4: &str) -> String {
    format!("2001:2::{}", ipv4.rsplit('.').next().unwrap_or("0"))
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fail with one clear line when not root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces, XDP and AF_XDP); run it with sudo");
    }
    Ok(())
}

fn is_root() -> bool {
    // /proc/self/status carries the effective uid without a libc call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        let lab = Lab::new("rauta-t12").unwrap();
        for (_, iface, _) in lab.hosts() {
            assert!(format!("{iface}-p").len() <= 15, "{iface}");
        }
        assert!(format!("{}-lpe", lab.prefix).len() <= 15);
        assert!(Lab::new("much-too-long-prefix").is_err());
        assert!(Lab::new("bad/name").is_err());
    }

    #[test]
    fn ipv6_addresses_follow_the_ipv4_ones() {
        assert_eq!(ipv6_of(CLIENT), "2001:2::10");
        assert_eq!(ipv6_of(GATEWAY_NODE), GATEWAY_NODE6);
        assert_eq!(ipv6_of(GATEWAY), GATEWAY6);
    }
}
