//! Rauta's packet layer: AF_XDP sockets and their UMEM, and the smoltcp
//! devices the userspace TCP/IP stack runs on.
//!
//! - [`umem`]: the shared frame memory (hugepages when available);
//! - [`rings`]: frame pool and ring bookkeeping, independent of the kernel;
//! - [`xsk`]: one AF_XDP socket per NIC queue, batched ring handling;
//! - [`device`]: `smoltcp::phy::Device` over those sockets;
//! - [`handoff`]: frames handed between workers (lock-free inboxes);
//! - [`flow`]: frame classification and flow ownership (RSS hash);
//! - [`stack`]: the TCP/IP stack: connection index, listeners, ephemeral
//!   ports, timers, hand-off between workers;
//! - `neighbor`: ARP requests for new next hops, ahead of smoltcp's
//!   one-per-second limit, or neighbours from the kernel's table;
//! - [`route`]: routes to what is off the link, through next hops on it;
//! - [`memory`]: an in-memory link, so two stacks talk in unit tests;
//! - [`idle`]: adaptive polling (spin under load, `poll(2)` when idle);
//! - [`link`]: interface facts (MAC, MTU, queues).
//!
//! `unsafe` in this workspace lives here and in `xdp-loader`, each block
//! with its `SAFETY` note.

pub mod device;
pub mod flow;
pub mod handoff;
pub mod idle;
pub mod link;
pub mod memory;
mod neighbor;
pub mod rings;
pub mod route;
pub mod stack;
pub mod timer;
pub mod umem;
pub mod xsk;

pub use device::{frame_mtu, BatchDevice, Origin, QueueTraffic, XdpDevice};
pub use idle::{IdlePolicy, IdleWaiter};
pub use memory::MemoryDevice;
pub use neighbor::{NeighbourSource, NeighbourTable};
pub use route::{Hop, Route, Routes};
pub use stack::{ConnId, Stack, StackConfig, StackCounters, StackError, TcpConfig};
pub use xsk::{
    BindMode, UmemRegistration, XskConfig, XskError, XskGroup, XskQueue, XskSet, XskStatistics,
};

/// smoltcp, re-exported so every crate builds on the same version.
pub use smoltcp;
