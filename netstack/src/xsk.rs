//! AF_XDP sockets: one per NIC queue, all sharing one UMEM.
//!
//! xdpilone does the ring mapping and the socket calls; this module owns the
//! batching rules: fill and completion handled in batches, RX read in
//! batches, TX kicked once per batch and only when the kernel asks
//! (`need_wakeup`).

use crate::rings::{drain_into, FramePool, Producer};
use crate::umem::{HugePagePolicy, UmemArea};
use std::collections::VecDeque;
use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info};
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

/// Most `sendto` kicks per flush (each moves up to 32 frames in copy mode).
const MAX_KICKS: u32 = 128;

/// Errors opening AF_XDP sockets.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("AF_XDP needs root (or CAP_NET_RAW and CAP_IPC_LOCK): {0}")]
    Permission(String),
    #[error("mapping the UMEM: {0}")]
    Umem(std::io::Error),
    #[error("AF_XDP {step} on {iface} queue {queue}: {errno}")]
    Socket {
        step: &'static str,
        iface: String,
        queue: u32,
        errno: String,
    },
    #[error("ring size {0} is not a power of two")]
    RingSize(u32),
}

/// How the socket binds to the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, copy mode otherwise.
    #[default]
    Auto,
    /// Copy mode only.
    Copy,
    /// Zero-copy only (fails on drivers without it, veth among them).
    ZeroCopy,
}

/// Sizes and modes of the AF_XDP sockets.
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Bytes per UMEM frame (2048 or 4096).
    pub frame_size: u32,
    /// Entries in each of the fill, completion, RX and TX rings.
    pub ring_size: u32,
    /// Descriptors moved per ring operation.
    pub batch: u32,
    /// Use the need_wakeup protocol (kick the kernel only when it asks).
    pub need_wakeup: bool,
    /// Copy or zero-copy.
    pub bind_mode: BindMode,
    /// Hugepages or not.
    pub hugepages: HugePagePolicy,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frame_size: 4096,
            ring_size: 4096,
            batch: 64,
            need_wakeup: true,
            bind_mode: BindMode::Auto,
            hugepages: HugePagePolicy::Auto,
        }
    }
}

impl XskConfig {
    /// Frames one queue owns: a fill ring's worth for receiving and a TX
    /// ring's worth in flight.
    pub fn frames_per_queue(&self) -> u32 {
        2 * self.ring_size
    }
}

/// The kernel's drop counters for one socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStatistics {
    /// Dropped for reasons other than the two below.
    pub rx_dropped: u64,
    /// RX ring was full: we did not read fast enough.
    pub rx_ring_full: u64,
    /// Fill ring was empty: we did not give the kernel frames fast enough.
    pub rx_fill_ring_empty: u64,
    /// Invalid descriptors on RX / TX.
    pub rx_invalid: u64,
    pub tx_invalid: u64,
    /// TX ring was empty when the kernel looked.
    pub tx_ring_empty: u64,
}

/// One AF_XDP socket bound to one NIC queue.
pub struct XskQueue {
    queue_id: u32,
    // Ring handles go before the socket owner and the UMEM they point into.
    fill_comp: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
    user: User,
    pool: FramePool,
    /// Frames the kernel holds for receiving (fill ring + RX ring).
    rx_outstanding: u32,
    tx_backlog: VecDeque<XdpDesc>,
    tx_in_flight: u32,
    /// Frames on their way from the pool to the fill ring (reused).
    fill_scratch: VecDeque<u64>,
    ring_size: u32,
    batch: u32,
    wakeups: u64,
}

struct FillRing<'a>(&'a mut DeviceQueue);

impl Producer<u64> for FillRing<'_> {
    fn produce(&mut self, items: &[u64], max: u32) -> u32 {
        let mut writer = self.0.fill(max);
        let n = writer.insert(items.iter().copied());
        writer.commit();
        n
    }
}

struct TxRing<'a>(&'a mut RingTx);

impl Producer<XdpDesc> for TxRing<'_> {
    fn produce(&mut self, items: &[XdpDesc], max: u32) -> u32 {
        let mut writer = self.0.transmit(max);
        let n = writer.insert(items.iter().copied());
        writer.commit();
        n
    }
}

/// The UMEM and the sockets of one interface's queues.
pub struct XskSet {
    queues: Vec<XskQueue>,
    registration: UmemRegistration,
    area: Arc<UmemArea>,
}

/// The UMEM's registration with the kernel. It stays on the thread that
/// opened the sockets (xdpilone's handle is not `Send`); the sockets and the
/// memory keep themselves alive on their own, so dropping it early is safe.
pub struct UmemRegistration {
    _umem: Umem,
}

/// Some of the sockets, for one worker, with a share of the UMEM.
///
/// Fields drop in order: the sockets before the memory they point into.
pub struct XskGroup {
    queues: Vec<XskQueue>,
    area: Arc<UmemArea>,
}

impl XskGroup {
    /// The sockets.
    pub fn queues(&self) -> &[XskQueue] {
        &self.queues
    }

    /// The sockets, mutably.
    pub fn queues_mut(&mut self) -> &mut [XskQueue] {
        &mut self.queues
    }

    /// The shared UMEM.
    pub fn area(&self) -> &UmemArea {
        &self.area
    }
}

impl XskSet {
    /// Open one socket per queue id in `queues` on `iface`, sharing one UMEM.
    pub fn open(iface: &str, queues: &[u32], config: &XskConfig) -> Result<Self, XskError> {
        if !config.ring_size.is_power_of_two() {
            return Err(XskError::RingSize(config.ring_size));
        }
        let name = CString::new(iface).map_err(|_| XskError::NoSuchInterface(iface.into()))?;
        check_access()?;
        let per_queue = config.frames_per_queue();
        let total = per_queue * queues.len() as u32;
        let area = Arc::new(
            UmemArea::new(total, config.frame_size, config.hugepages).map_err(XskError::Umem)?,
        );
        let socket_error = |step: &'static str, queue: u32, e: xdpilone::Errno| {
            let errno = e.get_raw();
            let text = std::io::Error::from_raw_os_error(errno).to_string();
            if errno == libc::EPERM || errno == libc::EACCES {
                XskError::Permission(format!("{step}: {text}"))
            } else if errno == libc::ENODEV {
                XskError::NoSuchInterface(iface.into())
            } else {
                XskError::Socket {
                    step,
                    iface: iface.into(),
                    queue,
                    errno: text,
                }
            }
        };
        let umem_config = UmemConfig {
            fill_size: config.ring_size,
            complete_size: config.ring_size,
            frame_size: config.frame_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the area is page-aligned, a whole number of frames long,
        // and outlives every use: the memory is unmapped only when the last
        // Arc goes, after the registration and every socket's group.
        let umem = unsafe { Umem::new(umem_config, area.as_raw_slice()) }
            .map_err(|e| socket_error("UMEM registration", queues[0], e))?;

        let mut info = IfInfo::invalid();
        info.from_name(&name)
            .map_err(|_| XskError::NoSuchInterface(iface.into()))?;

        let mut bind_flags = match config.bind_mode {
            BindMode::Auto => 0,
            BindMode::Copy => SocketConfig::XDP_BIND_COPY,
            BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
        };
        if config.need_wakeup {
            bind_flags |= SocketConfig::XDP_BIND_NEED_WAKEUP;
        }
        let ring = NonZeroU32::new(config.ring_size);
        let socket_config = SocketConfig {
            rx_size: ring,
            tx_size: ring,
            bind_flags,
        };
        // Sockets sharing the UMEM inherit its mode; the kernel rejects
        // explicit bind flags on them.
        let shared_config = SocketConfig {
            bind_flags: 0,
            ..socket_config.clone()
        };

        let mut opened = Vec::with_capacity(queues.len());
        for (i, &queue_id) in queues.iter().enumerate() {
            info.set_queue(queue_id);
            // The first socket is the UMEM's own fd; the others share it.
            let socket = if i == 0 {
                Socket::with_shared(&info, &umem)
            } else {
                Socket::new(&info)
            }
            .map_err(|e| socket_error("socket", queue_id, e))?;
            let fill_comp = umem
                .fq_cq(&socket)
                .map_err(|e| socket_error("fill/completion rings", queue_id, e))?;
            let user = umem
                .rx_tx(
                    &socket,
                    if i == 0 {
                        &socket_config
                    } else {
                        &shared_config
                    },
                )
                .map_err(|e| socket_error("RX/TX rings", queue_id, e))?;
            let rx = user
                .map_rx()
                .map_err(|e| socket_error("RX ring mmap", queue_id, e))?;
            let tx = user
                .map_tx()
                .map_err(|e| socket_error("TX ring mmap", queue_id, e))?;
            bind_retrying(&umem, &user).map_err(|e| socket_error("bind", queue_id, e))?;

            let first = i as u32 * per_queue;
            let mut queue = XskQueue {
                queue_id,
                fill_comp,
                rx,
                tx,
                user,
                pool: FramePool::new(first, per_queue, config.frame_size),
                rx_outstanding: 0,
                tx_backlog: VecDeque::with_capacity(config.ring_size as usize),
                tx_in_flight: 0,
                fill_scratch: VecDeque::with_capacity(config.ring_size as usize),
                ring_size: config.ring_size,
                batch: config.batch,
                wakeups: 0,
            };
            // Give the kernel frames before the first packet arrives.
            queue.refill();
            info!(iface, queue = queue_id, "AF_XDP socket bound");
            opened.push(queue);
        }
        Ok(Self {
            queues: opened,
            registration: UmemRegistration { _umem: umem },
            area,
        })
    }

    /// The sockets, in the order of the queue ids asked for.
    pub fn queues(&self) -> &[XskQueue] {
        &self.queues
    }

    /// The shared UMEM.
    pub fn area(&self) -> &UmemArea {
        &self.area
    }

    /// Deal the sockets out to `workers` groups, socket i to group
    /// i mod workers. The registration stays with the caller.
    pub fn split(self, workers: usize) -> (UmemRegistration, Vec<XskGroup>) {
        let workers = workers.max(1);
        let mut groups: Vec<XskGroup> = (0..workers)
            .map(|_| XskGroup {
                queues: Vec::new(),
                area: self.area.clone(),
            })
            .collect();
        for (i, queue) in self.queues.into_iter().enumerate() {
            groups[i % workers].queues.push(queue);
        }
        (self.registration, groups)
    }
}

/// Fail early, before any memory is mapped, when this process may not open
/// AF_XDP sockets.
fn check_access() -> Result<(), XskError> {
    // SAFETY: plain socket(2) call; the fd is closed right below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => XskError::Permission(e.to_string()),
            _ => XskError::Socket {
                step: "socket",
                iface: String::new(),
                queue: 0,
                errno: format!("{e} (is CONFIG_XDP_SOCKETS on?)"),
            },
        });
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned here.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Bind, retrying briefly: right after a previous owner of the queue exits
/// the kernel may still report it busy.
fn bind_retrying(umem: &Umem, user: &User) -> Result<(), xdpilone::Errno> {
    let mut attempt = 0;
    loop {
        match umem.bind(user) {
            Err(e) if e.get_raw() == libc::EBUSY && attempt < 20 => {
                attempt += 1;
                debug!(attempt, "AF_XDP bind busy, retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl XskQueue {
    /// The NIC queue this socket is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// The socket, for registering it in the XDP program's XSKMAP and for
    /// `poll(2)`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to `self.rx`'s socket, which stays open at
        // least as long as the borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.rx.as_raw_fd()) }
    }

    /// Reap TX completions into the pool, then top the fill ring up.
    pub fn service(&mut self) {
        self.reap_completions();
        self.refill();
    }

    fn reap_completions(&mut self) {
        let mut reader = self.fill_comp.complete(self.ring_size);
        let mut n = 0;
        while let Some(addr) = reader.read() {
            self.pool.put(addr);
            n += 1;
        }
        reader.release();
        self.tx_in_flight = self.tx_in_flight.saturating_sub(n);
    }

    fn refill(&mut self) {
        // Keep at most a fill ring's worth with the kernel; the rest of the
        // pool is for TX.
        let want = self.ring_size.saturating_sub(self.rx_outstanding);
        if want < self.batch.min(self.ring_size) && self.rx_outstanding > 0 {
            return;
        }
        // A scratch deque kept across passes: no allocation on this path.
        let frames = &mut self.fill_scratch;
        while frames.len() < want as usize {
            match self.pool.take() {
                Some(frame) => frames.push_back(frame),
                None => break,
            }
        }
        let given = drain_into(frames, &mut FillRing(&mut self.fill_comp)) as u32;
        self.rx_outstanding += given;
        for frame in frames.drain(..) {
            self.pool.put(frame);
        }
        if given > 0 && self.fill_comp.needs_wakeup() {
            self.fill_comp.wake();
        }
    }

    /// Move up to one batch of received descriptors into `out`. The frames
    /// are then ours until given back with [`Self::recycle`].
    pub fn receive_batch(&mut self, out: &mut VecDeque<XdpDesc>) -> u32 {
        let mut reader = self.rx.receive(self.batch);
        let mut n = 0;
        while let Some(desc) = reader.read() {
            out.push_back(desc);
            n += 1;
        }
        reader.release();
        self.rx_outstanding = self.rx_outstanding.saturating_sub(n);
        n
    }

    /// Give a received frame back.
    pub fn recycle(&mut self, addr: u64) {
        self.pool.put(addr);
    }

    /// Whether a frame can be had for transmitting.
    ///
    /// RX and TX each get at most a ring's worth of the queue's frames, so
    /// neither starves the other: a burst of replies never leaves the fill
    /// ring empty, and a burst of arrivals never leaves TX without frames.
    pub fn can_transmit(&self) -> bool {
        !self.pool.is_empty() && self.tx_in_flight + (self.tx_backlog.len() as u32) < self.ring_size
    }

    /// Take a frame to build an outgoing packet in.
    pub fn take_tx_frame(&mut self) -> Option<u64> {
        self.pool.take()
    }

    /// Queue a built frame for transmission (sent on [`Self::flush`]).
    pub fn queue_tx(&mut self, addr: u64, len: u32) {
        self.tx_backlog.push_back(XdpDesc {
            addr,
            len,
            options: 0,
        });
    }

    /// Push queued frames into the TX ring and kick the kernel once if it
    /// wants a kick. Frames the ring had no room for stay queued.
    pub fn flush(&mut self) -> usize {
        let sent = if self.tx_backlog.is_empty() {
            0
        } else {
            drain_into(&mut self.tx_backlog, &mut TxRing(&mut self.tx))
        };
        self.tx_in_flight += sent as u32;
        // In copy mode one kick transmits at most 32 frames (the kernel's
        // TX_BATCH_SIZE): kick until the kernel has taken the whole ring,
        // or frames left behind would wait for the next packet, forever if
        // none comes.
        let mut kicks = 0;
        while self.tx.pending() > 0 && self.tx.needs_wakeup() && kicks < MAX_KICKS {
            self.tx.wake();
            self.wakeups += 1;
            kicks += 1;
        }
        sent
    }

    /// TX kicks made so far (`sendto` calls).
    pub fn wakeups(&self) -> u64 {
        self.wakeups
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> std::io::Result<XskStatistics> {
        let s = self
            .user
            .statistics_v2()
            .map_err(|e| std::io::Error::from_raw_os_error(e.get_raw()))?;
        Ok(XskStatistics {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            rx_invalid: s.rx_invalid_descs,
            tx_invalid: s.tx_invalid_descs,
            tx_ring_empty: s.tx_ring_empty_descs,
        })
    }
}
