//! Rauta's XDP program and its loader.
//!
//! The program (`bpf/rauta_xdp.c`, built by `build.rs`) redirects the
//! gateway's own traffic into AF_XDP sockets and passes everything else to
//! the kernel. [`XdpProgram`] loads it, configures it, attaches it to one
//! interface and detaches it when dropped. A program left attached by a
//! killed process is found at start and replaced; [`detach`] removes one on
//! an operator's request.

mod maps;
pub mod neighbours;
pub mod netlink;
pub mod routes;

pub use maps::{Config, QueueCounters};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::Ebpf;
use std::ffi::CString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use tracing::{info, warn};

/// The program's name in the kernel: how a leftover Rauta program is told
/// apart from someone else's.
pub const PROGRAM_NAME: &str = "rauta_xdp";

/// The most queues the program's maps have slots for.
pub const MAX_QUEUES: u32 = 64;

/// The most listener ports node-address mode steers.
pub const MAX_PORTS: usize = 256;

/// What the program takes from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Steering {
    /// Everything for addresses only the userspace stack holds: ARP, and
    /// IPv4 TCP, UDP and ICMP; with an IPv6 address, IPv6 TCP, UDP and
    /// ICMPv6 and the neighbour solicitations for it.
    Dedicated {
        address: Ipv4Addr,
        address6: Option<Ipv6Addr>,
    },
    /// The node's own address: only TCP to the listener ports
    /// ([`XdpProgram::set_listener_ports`]) and to the stack's ephemeral
    /// range. ARP, ICMP and every other port stay with the kernel.
    NodeAddress {
        address: Ipv4Addr,
        address6: Option<Ipv6Addr>,
        ephemeral: RangeInclusive<u16>,
    },
}

impl Steering {
    pub fn address6(&self) -> Option<Ipv6Addr> {
        match self {
            Self::Dedicated { address6, .. } | Self::NodeAddress { address6, .. } => *address6,
        }
    }
}

/// The compiled XDP program.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rauta_xdp.o"));

/// Errors from loading, attaching or driving the XDP program.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("loading the XDP program needs root (or CAP_BPF and CAP_NET_ADMIN): {0}")]
    Permission(String),
    #[error("loading the XDP program: {0}")]
    Load(String),
    #[error("attaching XDP to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error(
        "{iface} already runs XDP program {name:?} (id {id}); Rauta does not replace \
         another program: remove it first"
    )]
    Foreign {
        iface: String,
        name: String,
        id: u32,
    },
    #[error(
        "{iface} runs Rauta's XDP program (id {id}) through a BPF link held by a running \
         process; stop that process first (the kernel detaches its link when it exits)"
    )]
    HeldByLiveProcess { iface: String, id: u32 },
    #[error("queue {0} is beyond the program's {MAX_QUEUES} queue slots")]
    QueueOutOfRange(u32),
    #[error("{0} listener ports: node-address mode steers {MAX_PORTS} at most")]
    TooManyPorts(usize),
    #[error("XDP map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("netlink: {0}")]
    Netlink(#[from] std::io::Error),
}

/// Where the program runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic where the driver has none.
    #[default]
    Auto,
    /// Native only: fail if the driver cannot run XDP.
    Native,
    /// Generic (skb) XDP only.
    Generic,
}

/// How the program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMethod {
    /// A BPF link: the kernel detaches it when this process exits, however it
    /// exits. The default.
    #[default]
    Link,
    /// Legacy netlink attach: it stays after a crash until replaced or
    /// detached (for kernels or drivers without XDP links).
    Netlink,
}

/// The mode the program actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunningMode {
    Native,
    Generic,
}

impl std::fmt::Display for RunningMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// The kernel's index of interface `iface` in this network namespace.
pub fn ifindex(iface: &str) -> Result<u32, XdpError> {
    let name = CString::new(iface).map_err(|_| XdpError::NoSuchInterface(iface.to_owned()))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(XdpError::NoSuchInterface(iface.to_owned()));
    }
    Ok(index)
}

fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.name_as_str().unwrap_or_default().to_owned())
}

fn is_permission_error(text: &str) -> bool {
    text.contains("Operation not permitted") || text.contains("Permission denied")
}

/// Rauta's XDP program, loaded and attached to one interface.
///
/// Dropping it detaches the program.
pub struct XdpProgram {
    // Field order matters: maps and links go before the object that owns them.
    sockets: XskMap<MapData>,
    counters: PerCpuArray<MapData, QueueCounters>,
    _config: Array<MapData, Config>,
    ports: HashMap<MapData, u32, u8>,
    /// Owns the loaded program and its link: held, never read, so that
    /// dropping it detaches.
    _ebpf: Ebpf,
    iface: String,
    ifindex: u32,
    method: AttachMethod,
    running: RunningMode,
}

impl XdpProgram {
    /// Load the program, steering as `steering` says, and attach it to
    /// `iface`, replacing a Rauta program that a dead process left behind.
    pub fn attach(
        iface: &str,
        steering: &Steering,
        mode: AttachMode,
        method: AttachMethod,
    ) -> Result<Self, XdpError> {
        let ifindex = ifindex(iface)?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| {
            let text = format!("{e:#}");
            let source = std::error::Error::source(&e).map(|s| s.to_string());
            let text = source.map_or(text.clone(), |s| format!("{text}: {s}"));
            if is_permission_error(&text) {
                XdpError::Permission(text)
            } else {
                XdpError::Load(text)
            }
        })?;

        let mut config: Array<MapData, Config> = take_map(&mut ebpf, "RAUTA_CONFIG")?;
        config
            .set(0, Config::new(steering), 0)
            .map_err(|e| map_error("RAUTA_CONFIG", e))?;
        let ports = take_map(&mut ebpf, "RAUTA_PORTS")?;
        let counters = take_map(&mut ebpf, "RAUTA_COUNTERS")?;
        let sockets = take_map(&mut ebpf, "RAUTA_XSKS")?;

        replace_stale(iface, ifindex)?;

        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| XdpError::Load(format!("object has no program {PROGRAM_NAME}")))?
            .try_into()
            .map_err(|e: ProgramError| XdpError::Load(e.to_string()))?;
        program.load().map_err(|e| {
            let text = format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            if is_permission_error(&text) {
                XdpError::Permission(text)
            } else {
                XdpError::Load(text)
            }
        })?;

        let attempts: &[RunningMode] = match mode {
            AttachMode::Auto => &[RunningMode::Native, RunningMode::Generic],
            AttachMode::Native => &[RunningMode::Native],
            AttachMode::Generic => &[RunningMode::Generic],
        };
        let mut last_error = String::new();
        let mut running = None;
        for &attempt in attempts {
            let result = match method {
                AttachMethod::Link => {
                    let aya_mode = match attempt {
                        RunningMode::Native => XdpMode::Driver,
                        RunningMode::Generic => XdpMode::Skb,
                    };
                    program
                        .attach_to_if_index(ifindex, aya_mode)
                        .map(drop)
                        .map_err(|e| {
                            let source = std::error::Error::source(&e).map(|s| s.to_string());
                            format!(
                                "{e}{}",
                                source.map(|s| format!(": {s}")).unwrap_or_default()
                            )
                        })
                }
                AttachMethod::Netlink => {
                    let fd = program
                        .fd()
                        .map_err(|e| XdpError::Load(e.to_string()))?
                        .as_fd()
                        .as_raw_fd();
                    let flags = match attempt {
                        RunningMode::Native => netlink::XDP_FLAGS_DRV_MODE,
                        RunningMode::Generic => netlink::XDP_FLAGS_SKB_MODE,
                    };
                    netlink::attach(ifindex, fd, flags).map_err(|e| e.to_string())
                }
            };
            match result {
                Ok(()) => {
                    running = Some(attempt);
                    break;
                }
                Err(e) => {
                    warn!(iface, mode = %attempt, error = %e, "XDP attach failed");
                    last_error = format!("{attempt} mode: {e}");
                }
            }
        }
        let running = running.ok_or_else(|| XdpError::Attach {
            iface: iface.to_owned(),
            reason: last_error,
        })?;
        info!(iface, mode = %running, ?method, ?steering, "XDP program attached");
        Ok(Self {
            sockets,
            counters,
            _config: config,
            ports,
            _ebpf: ebpf,
            iface: iface.to_owned(),
            ifindex,
            method,
            running,
        })
    }

    /// The mode the program runs in.
    pub fn running_mode(&self) -> RunningMode {
        self.running
    }

    /// Steer `queue`'s gateway traffic into the AF_XDP socket `socket`.
    pub fn register_socket(&mut self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), XdpError> {
        if queue >= MAX_QUEUES {
            return Err(XdpError::QueueOutOfRange(queue));
        }
        self.sockets
            .set(queue, socket.as_raw_fd(), 0)
            .map_err(|e| map_error("RAUTA_XSKS", e))
    }

    /// Steer TCP to exactly `ports` (node-address mode; a dedicated
    /// address has all its ports steered anyway).
    pub fn set_listener_ports(&mut self, ports: &[u16]) -> Result<(), XdpError> {
        if ports.len() > MAX_PORTS {
            return Err(XdpError::TooManyPorts(ports.len()));
        }
        let wanted: Vec<u32> = ports.iter().map(|&p| u32::from(p)).collect();
        let held: Vec<u32> = self.ports.keys().filter_map(Result::ok).collect();
        for port in held.iter().filter(|p| !wanted.contains(p)) {
            self.ports
                .remove(port)
                .map_err(|e| map_error("RAUTA_PORTS", e))?;
        }
        for port in wanted.iter().filter(|p| !held.contains(p)) {
            self.ports
                .insert(port, 1, 0)
                .map_err(|e| map_error("RAUTA_PORTS", e))?;
        }
        Ok(())
    }

    /// The program's counters for `queue`, summed over CPUs.
    pub fn counters(&self, queue: u32) -> Result<QueueCounters, XdpError> {
        let per_cpu = self
            .counters
            .get(&queue, 0)
            .map_err(|e| map_error("RAUTA_COUNTERS", e))?;
        let mut total = QueueCounters::default();
        for value in per_cpu.iter() {
            total += *value;
        }
        Ok(total)
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        if self.method == AttachMethod::Netlink {
            let flags = match self.running {
                RunningMode::Native => netlink::XDP_FLAGS_DRV_MODE,
                RunningMode::Generic => netlink::XDP_FLAGS_SKB_MODE,
            };
            if let Err(e) = netlink::detach(self.ifindex, flags) {
                warn!(iface = %self.iface, error = %e, "XDP detach failed");
            }
        }
        // A BPF link is released when `_ebpf` drops, right after this.
        info!(iface = %self.iface, "XDP program detached");
    }
}

fn map_error(map: &'static str, e: impl std::fmt::Display) -> XdpError {
    XdpError::Map {
        map,
        reason: e.to_string(),
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| XdpError::Map {
        map: name,
        reason: "missing from the object".to_owned(),
    })?;
    T::try_from(map).map_err(|e| map_error(name, e))
}

/// Remove a Rauta program that a killed process left attached to `iface`.
fn replace_stale(iface: &str, ifindex: u32) -> Result<(), XdpError> {
    match remove_rauta_program(iface, ifindex)? {
        Removed::Nothing => {}
        Removed::Program(id) => {
            warn!(
                iface,
                prog_id = id,
                "replaced a stale Rauta XDP program left by a dead process"
            )
        }
    }
    Ok(())
}

/// What [`detach`] found and removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    /// No XDP program was attached.
    Nothing,
    /// Rauta's program with this id was detached.
    Program(u32),
}

fn remove_rauta_program(iface: &str, ifindex: u32) -> Result<Removed, XdpError> {
    let Some(attached) = netlink::query(ifindex)? else {
        return Ok(Removed::Nothing);
    };
    let name = program_name(attached.prog_id).unwrap_or_default();
    if name != PROGRAM_NAME {
        return Err(XdpError::Foreign {
            iface: iface.to_owned(),
            name,
            id: attached.prog_id,
        });
    }
    match netlink::detach(ifindex, attached.mode.flags()) {
        Ok(()) => Ok(Removed::Program(attached.prog_id)),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(XdpError::HeldByLiveProcess {
            iface: iface.to_owned(),
            id: attached.prog_id,
        }),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            Err(XdpError::Permission(format!("detaching from {iface}: {e}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Detach Rauta's XDP program from `iface` (the operator's `rauta xdp
/// detach`). Another program is left alone and reported as an error.
pub fn detach(iface: &str) -> Result<Removed, XdpError> {
    let ifindex = ifindex(iface)?;
    remove_rauta_program(iface, ifindex)
}
