//! Bringing AF_XDP up on an interface, shared by `rauta probe` and
//! `rauta run --io xdp`: sockets on the queues, the XDP program steering the
//! address to them, the queues split over workers, one stack configuration
//! and hand-off mailbox per worker.

use anyhow::{bail, Context, Result};
use rauta_netstack::flow::FlowOwnership;
use rauta_netstack::handoff::{self, Mailbox};
use rauta_netstack::smoltcp::wire::Ipv4Cidr;
use rauta_netstack::umem::HugePagePolicy;
use rauta_netstack::{
    link, StackConfig, TcpConfig, UmemRegistration, XdpDevice, XskConfig, XskGroup, XskSet,
};
use rauta_xdp::{AttachMethod, AttachMode, XdpProgram};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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

/// Parse `ADDR/PREFIX`.
pub fn parse_cidr(text: &str) -> Result<Ipv4Cidr> {
    let (addr, len) = text
        .split_once('/')
        .with_context(|| format!("--address {text:?}: expected ADDR/PREFIX, e.g. 198.18.0.1/24"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .with_context(|| format!("--address {text:?}: {addr:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (1..=32).contains(l))
        .with_context(|| format!("--address {text:?}: prefix must be 1..=32"))?;
    Ok(Ipv4Cidr::new(addr, len))
}

/// Open the sockets, attach the program, split the queues over workers.
pub fn bring_up(options: XdpOptions) -> Result<XdpRuntime> {
    let XdpOptions {
        iface,
        address,
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
    let mut program = XdpProgram::attach(&iface, address.address(), xdp_mode, xdp_attach)?;
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
            stack.tcp = tcp.clone();
            stack.max_connections = limits.max_connections;
            stack.max_half_open = limits.max_half_open;
            stack.spare_sockets = limits.spare_sockets;
            stack.worker = worker;
            stack.ownership = ownership.clone();
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
