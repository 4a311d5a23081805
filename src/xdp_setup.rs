//! Bringing AF_XDP up on an interface, shared by `rauta probe` and
//! `rauta run --io xdp`: sockets on the queues, the XDP program steering the
//! address to them, the queues split over workers, one stack configuration
//! and hand-off mailbox per worker.

use anyhow::{bail, Context, Result};
use rauta_netstack::flow::FlowOwnership;
use rauta_netstack::handoff::{self, Mailbox};
use rauta_netstack::smoltcp::wire::{Ipv4Cidr, Ipv6Cidr};
use rauta_netstack::umem::HugePagePolicy;
use rauta_netstack::{
    link, NeighbourSource, StackConfig, TcpConfig, UmemRegistration, XdpDevice, XskConfig,
    XskGroup, XskSet,
};
use rauta_xdp::{AttachMethod, AttachMode, Steering, XdpProgram};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The stack's ephemeral ports on the node's address: above the kernel's
/// default range (32768-60999), so the two never pick the same port.
pub const NODE_EPHEMERAL_PORTS: RangeInclusive<u16> = 61_000..=65_535;

/// Whose address the gateway answers on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// An address only the userspace stack holds: it answers ARP itself
    /// and the XDP program takes everything sent to it.
    Dedicated,
    /// The node's own address: the XDP program takes only TCP to the
    /// listener ports and to `ephemeral` (the stack's outbound ports); the
    /// kernel keeps ARP, ICMP and every other port.
    Node { ephemeral: RangeInclusive<u16> },
}

/// Per-worker connection limits.
pub struct Limits {
    pub max_connections: usize,
    pub max_half_open: usize,
    pub spare_sockets: usize,
}

/// Everything AF_XDP bring-up needs, validated.
pub struct XdpOptions {
    pub iface: String,
    pub address: Ipv4Cidr,
    /// The stack's IPv6 address beside it (dual stack), dedicated mode.
    pub address6: Option<Ipv6Cidr>,
    pub addressing: Addressing,
    pub queues: u32,
    pub workers: u32,
    pub limits: Limits,
    pub xdp_mode: AttachMode,
    pub xdp_attach: AttachMethod,
    pub xsk: XskConfig,
    pub tcp: TcpConfig,
    pub hugepages: bool,
}

/// What one worker thread takes.
pub struct WorkerParts {
    pub group: XskGroup,
    pub mailbox: Mailbox,
    pub stack: StackConfig,
    pub mtu: usize,
}

impl WorkerParts {
    /// On the worker's thread: its device over its sockets, its mailbox and
    /// its stack's configuration.
    pub fn open(self) -> (XdpDevice, Mailbox, StackConfig) {
        (
            XdpDevice::new(self.group, self.mtu),
            self.mailbox,
            self.stack,
        )
    }
}

/// AF_XDP up on an interface. Drop order matters: workers first (they own
/// the sockets), then [`Self::shut_down`] detaches the program.
pub struct XdpRuntime {
    pub program: XdpProgram,
    registration: UmemRegistration,
    pub workers: Vec<WorkerParts>,
    pub backing: String,
}

impl XdpRuntime {
    /// Detach the program and release the UMEM (after the workers ended).
    pub fn shut_down(self) {
        drop(self.program);
        drop(self.registration);
    }
}

/// Parse `--address ADDR/PREFIX`.
pub fn parse_cidr(text: &str) -> Result<Ipv4Cidr> {
    let (addr, len) = parse_prefix("--address", "IPv4", "198.18.0.1/24", 32, text)?;
    Ok(Ipv4Cidr::new(addr, len))
}

/// Parse `--address6 ADDR/PREFIX`.
pub fn parse_cidr6(text: &str) -> Result<Ipv6Cidr> {
    let (addr, len) = parse_prefix("--address6", "IPv6", "2001:2::1/64", 128, text)?;
    Ok(Ipv6Cidr::new(addr, len))
}

/// `text` as ADDR/PREFIX of a `family` address, the prefix 1..=`max`;
/// errors name `flag` and show `example`.
fn parse_prefix<A: std::str::FromStr>(
    flag: &str,
    family: &str,
    example: &str,
    max: u8,
    text: &str,
) -> Result<(A, u8)> {
    let (addr, len) = text
        .split_once('/')
        .with_context(|| format!("{flag} {text:?}: expected ADDR/PREFIX, e.g. {example}"))?;
    let addr = addr
        .parse()
        .ok()
        .with_context(|| format!("{flag} {text:?}: {addr:?} is not an {family} address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (1..=max).contains(l))
        .with_context(|| format!("{flag} {text:?}: prefix must be 1..={max}"))?;
    Ok((addr, len))
}

/// The node's address on `iface` for node-address mode: `given` (ADDR or
/// ADDR/PREFIX), which the kernel must hold there, or else the
/// interface's primary IPv4 address.
pub fn node_address(iface: &str, given: Option<&str>) -> Result<Ipv4Cidr> {
    let held: Vec<(Ipv4Addr, u8)> = held_addresses(iface)?
        .into_iter()
        .filter_map(|(ip, len)| match ip {
            std::net::IpAddr::V4(v4) => Some((v4, len)),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let list = || {
        held.iter()
            .map(|(a, len)| format!("{a}/{len}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(given) = given else {
        let &(address, len) = held.first().with_context(|| {
            format!("--address-mode node: {iface} has no IPv4 address for the gateway to share")
        })?;
        return Ok(Ipv4Cidr::new(address, len));
    };
    let text = given.split_once('/').map_or(given, |(a, _)| a);
    let address: Ipv4Addr = text
        .parse()
        .with_context(|| format!("--address {given:?}: {text:?} is not an IPv4 address"))?;
    let &(_, len) = held.iter().find(|(a, _)| *a == address).with_context(|| {
        format!(
            "--address-mode node: {address} is not an address of {iface} (it has: {}); \
             an address only the gateway holds needs --address-mode dedicated",
            list()
        )
    })?;
    Ok(Ipv4Cidr::new(address, len))
}

/// What the kernel holds on `iface`.
fn held_addresses(iface: &str) -> Result<Vec<(std::net::IpAddr, u8)>> {
    let ifindex = rauta_xdp::ifindex(iface)?;
    rauta_xdp::netlink::addresses(ifindex).with_context(|| format!("reading {iface}'s addresses"))
}

/// The node's IPv6 address `given` for node-address mode: the kernel must
/// hold it on `iface`; its prefix is the kernel's.
pub fn node_address6(iface: &str, given: &str) -> Result<Ipv6Cidr> {
    let text = given.split_once('/').map_or(given, |(a, _)| a);
    let address: std::net::Ipv6Addr = text
        .parse()
        .with_context(|| format!("--address6 {given:?}: {text:?} is not an IPv6 address"))?;
    let held = held_addresses(iface)?;
    let &(_, len) = held
        .iter()
        .find(|(a, _)| *a == std::net::IpAddr::V6(address))
        .with_context(|| {
            format!(
                "--address-mode node: {address} is not an address of {iface}; an address only \
                 the gateway holds needs --address-mode dedicated"
            )
        })?;
    Ok(Ipv6Cidr::new(address, len))
}

/// `first-last` or a single port, as in `ip_local_port_range` (tab or
/// space separated) and `ip_local_reserved_ports` (comma separated).
pub fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let text = text.trim();
    let (first, last) = text
        .split_once('-')
        .or_else(|| text.split_once(char::is_whitespace))
        .map_or((text, text), |(a, b)| (a.trim(), b.trim()));
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some(first..=last)
}

/// Ports in both `a` and `b`.
fn overlap(a: &RangeInclusive<u16>, b: &RangeInclusive<u16>) -> Option<RangeInclusive<u16>> {
    let (first, last) = (*a.start().max(b.start()), *a.end().min(b.end()));
    (first <= last).then_some(first..=last)
}

/// Node-address mode: the kernel picks its own outbound ports on the same
/// address from `ip_local_port_range` (less `ip_local_reserved_ports`);
/// replies to any port the XDP program steers would reach the stack, not
/// the kernel. Says which ports clash and how to part them.
pub fn check_kernel_ports(
    kernel_range: &str,
    kernel_reserved: &str,
    ephemeral: &RangeInclusive<u16>,
    listeners: &[u16],
) -> Result<()> {
    let kernel = parse_port_range(kernel_range).with_context(|| {
        format!("net.ipv4.ip_local_port_range {kernel_range:?}: not a port range")
    })?;
    let reserved: Vec<RangeInclusive<u16>> = kernel_reserved
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .filter_map(parse_port_range)
        .collect();
    let kept_from_kernel = |port: u16| reserved.iter().any(|r| r.contains(&port));
    if let Some(both) = overlap(&kernel, ephemeral) {
        if !both.clone().all(kept_from_kernel) {
            bail!(
                "the kernel's ephemeral ports (net.ipv4.ip_local_port_range = {}-{}) overlap \
                 the gateway's ({}-{}) at {}-{}: the node's own outbound connections would \
                 lose their replies to the gateway. Part them: `sysctl -w \
                 net.ipv4.ip_local_port_range=\"{} {}\"`, or reserve the gateway's \
                 (`sysctl -w net.ipv4.ip_local_reserved_ports={}-{}`), or pass \
                 --ephemeral-ports outside the kernel's",
                kernel.start(),
                kernel.end(),
                ephemeral.start(),
                ephemeral.end(),
                both.start(),
                both.end(),
                kernel.start(),
                ephemeral.start().saturating_sub(1).max(*kernel.start()),
                ephemeral.start(),
                ephemeral.end(),
            );
        }
    }
    let clashing: Vec<u16> = listeners
        .iter()
        .copied()
        .filter(|&p| (kernel.contains(&p) && !kept_from_kernel(p)) || ephemeral.contains(&p))
        .collect();
    if !clashing.is_empty() {
        bail!(
            "listener port(s) {clashing:?} lie in an ephemeral range (the kernel's {}-{}, \
             the gateway's {}-{}): a connection of the node's or the gateway's own could \
             take such a port and lose its replies",
            kernel.start(),
            kernel.end(),
            ephemeral.start(),
            ephemeral.end()
        );
    }
    Ok(())
}

/// [`check_kernel_ports`] against this network namespace's settings.
pub fn check_node_ports(ephemeral: &RangeInclusive<u16>, listeners: &[u16]) -> Result<()> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .with_context(|| format!("reading net.ipv4.{name}"))
    };
    check_kernel_ports(
        &read("ip_local_port_range")?,
        &read("ip_local_reserved_ports").unwrap_or_default(),
        ephemeral,
        listeners,
    )
}

/// Open the sockets, attach the program, split the queues over workers.
pub fn bring_up(options: XdpOptions) -> Result<XdpRuntime> {
    let XdpOptions {
        iface,
        address,
        address6,
        addressing,
        queues,
        workers,
        limits,
        xdp_mode,
        xdp_attach,
        mut xsk,
        tcp,
        hugepages,
    } = options;
    if !hugepages {
        xsk.hugepages = HugePagePolicy::Never;
    }
    let mac = link::mac_address(&iface)?;
    let mtu = link::mtu(&iface)?;
    let usable = rauta_netstack::frame_mtu(xsk.frame_size, mtu);
    if usable < mtu {
        tracing::warn!(
            "{iface}'s MTU {mtu} is more than a {}-byte UMEM frame receives: the userspace stack \
             sends, and through its MSS asks peers for, IP packets of at most {usable} bytes",
            xsk.frame_size
        );
    }
    let available = link::rx_queues(&iface)?;
    if queues == 0 || queues > available {
        bail!("--queues {queues}: {iface} has {available} RX queue(s)");
    }
    if workers == 0 || workers > queues {
        bail!("--workers {workers}: must be 1..={queues} (one or more queues per worker)");
    }
    let queue_ids: Vec<u32> = (0..queues).collect();

    // Sockets first: without privileges this fails before anything is
    // attached to the interface.
    let xsks = XskSet::open(&iface, &queue_ids, &xsk)?;
    let steering = match &addressing {
        Addressing::Dedicated => Steering::Dedicated {
            address: address.address(),
            address6: address6.map(|a| a.address()),
        },
        Addressing::Node { ephemeral } => Steering::NodeAddress {
            address: address.address(),
            address6: address6.map(|a| a.address()),
            ephemeral: ephemeral.clone(),
        },
    };
    let mut program = XdpProgram::attach(&iface, &steering, xdp_mode, xdp_attach)?;
    for queue in xsks.queues() {
        program.register_socket(queue.queue_id(), queue.fd())?;
    }
    let backing = format!("{:?}", xsks.area().backing());
    let (registration, groups) = xsks.split(workers as usize);
    let ownership = (workers > 1).then(|| FlowOwnership::new(workers as usize));
    let mailboxes =
        handoff::mailboxes(workers as usize, 4096).context("creating hand-off rings")?;
    let workers = groups
        .into_iter()
        .zip(mailboxes)
        .enumerate()
        .map(|(worker, (group, mailbox))| {
            let mut stack = StackConfig::new(address, mac);
            stack.address6 = address6;
            stack.tcp = tcp.clone();
            stack.max_connections = limits.max_connections;
            stack.max_half_open = limits.max_half_open;
            stack.spare_sockets = limits.spare_sockets;
            stack.worker = worker;
            stack.ownership = ownership.clone();
            if let Addressing::Node { ephemeral } = &addressing {
                stack.ephemeral_ports = ephemeral.clone();
                stack.neighbours = NeighbourSource::Kernel;
            }
            WorkerParts {
                group,
                mailbox,
                stack,
                mtu,
            }
        })
        .collect();
    Ok(XdpRuntime {
        program,
        registration,
        workers,
        backing,
    })
}

/// SIGTERM and SIGINT set the returned flag.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("8080"), Some(8080..=8080));
        assert_eq!(parse_port_range("9000-9100"), Some(9000..=9100));
        assert_eq!(parse_port_range("9100-9000"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn a_clash_with_the_kernels_ports_is_named_unless_they_are_reserved() {
        let gateway = 61_000..=65_535;
        assert!(check_kernel_ports("32768\t60999", "", &gateway, &[80, 443]).is_ok());
        let error = check_kernel_ports("32768\t65000", "", &gateway, &[80])
            .unwrap_err()
            .to_string();
        assert!(error.contains("overlap"), "{error}");
        assert!(error.contains("at 61000-65000"), "{error}");
        assert!(
            error.contains("ip_local_port_range=\"32768 60999\""),
            "{error}"
        );
        assert!(
            check_kernel_ports("32768\t65000", "8080,61000-65535", &gateway, &[80]).is_ok(),
            "reserved ports are not the kernel's to pick"
        );
        let error = check_kernel_ports("32768\t60999", "", &gateway, &[80, 40000])
            .unwrap_err()
            .to_string();
        assert!(error.contains("[40000]"), "{error}");
    }
}
