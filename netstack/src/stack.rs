//! A server-grade TCP/IP endpoint over smoltcp, without forking it.
//!
//! smoltcp's `Interface` walks every socket of the `SocketSet` it is given,
//! for every packet in and every pass out. So the stack gives it tiny sets:
//! one per connection, one per listening port (holding a single listening
//! socket), one for UDP, and an empty one for ARP/ICMP/strays. An index
//! (4-tuple → connection) picks the set for each frame before smoltcp sees
//! it, and only connections with something to do are polled for egress:
//! those touched by a packet or the application, and those whose timer is
//! due (a heap of smoltcp's own `poll_at`). Per-packet cost is then flat in
//! the number of connections.
//!
//! Beside that: a listen path that accepts a burst of SYNs (the listener is
//! replaced after every SYN it takes) while bounding half-open connections;
//! outbound connections on ephemeral ports chosen so that their replies
//! belong to this worker; and flow ownership, so a frame that reached the
//! wrong worker is handed to its owner instead of being reset.

use crate::device::{BatchDevice, Origin};
use crate::flow::{classify, FlowKey, FlowOwnership, FrameKind};
use crate::neighbor::{self, NeighbourSource, NeighbourTable, OneFrame, Resolver};
use crate::route::{Hop, Route, Routes, MAX_ROUTES};
use crate::timer::TimerWheel;
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::phy::TxToken;
use smoltcp::socket::{tcp, udp, Socket};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, Ipv4Address,
    Ipv4Cidr, Ipv6Address, Ipv6Cidr,
};
use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::sync::Arc;

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// TCP congestion control.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    None,
    Reno,
    #[default]
    Cubic,
}

/// Settings of every TCP connection.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Receive buffer per connection (window scaling above 64 KiB).
    pub rx_buffer: usize,
    /// Send buffer per connection.
    pub tx_buffer: usize,
    /// Nagle's algorithm (off: latency over segment count).
    pub nagle: bool,
    /// Delayed ACK (`None`: ACK at once; the ACK then rides on replies).
    pub ack_delay: Option<Duration>,
    /// Abort a connection that stays silent this long.
    pub idle_timeout: Option<Duration>,
    /// Keep-alive probes after this much silence.
    pub keep_alive: Option<Duration>,
    /// RFC 7323 timestamps.
    pub timestamps: bool,
    pub congestion: Congestion,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            rx_buffer: 64 * 1024,
            tx_buffer: 64 * 1024,
            nagle: false,
            ack_delay: None,
            idle_timeout: Some(Duration::from_secs(300)),
            keep_alive: None,
            timestamps: true,
            congestion: Congestion::Cubic,
        }
    }
}

/// Settings of one worker's stack.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The IPv4 address the stack owns.
    pub address: Ipv4Cidr,
    /// Its IPv6 address, if it has one (dual stack).
    pub address6: Option<Ipv6Cidr>,
    pub mac: EthernetAddress,
    pub tcp: TcpConfig,
    /// Connections at most (established, half-open and closing).
    pub max_connections: usize,
    /// Half-open (SYN received) connections at most. A SYN beyond takes the
    /// place of the oldest (dropped silently): under a flood of spoofed
    /// SYNs a real client's handshake needs only to finish before
    /// `max_half_open` newer SYNs arrive, rather than find the table full
    /// until the flood's entries time out.
    pub max_half_open: usize,
    /// A connection still half-open this long after its SYN is dropped
    /// silently (no RST toward what may be a spoofed address). A real
    /// client's next SYN starts over.
    pub half_open_timeout: Duration,
    /// Local ports for outbound connections.
    pub ephemeral_ports: RangeInclusive<u16>,
    /// Closed sockets kept, buffers and all, for the next connections.
    pub spare_sockets: usize,
    /// This worker's index, and who owns which flow (None: one worker).
    pub worker: usize,
    pub ownership: Option<FlowOwnership>,
    /// Whose ARP the stack's neighbours come from.
    pub neighbours: NeighbourSource,
}

impl StackConfig {
    /// Defaults for one worker owning `address`.
    pub fn new(address: Ipv4Cidr, mac: EthernetAddress) -> Self {
        Self {
            address,
            address6: None,
            mac,
            tcp: TcpConfig::default(),
            max_connections: 65_536,
            max_half_open: 4_096,
            half_open_timeout: Duration::from_secs(5),
            ephemeral_ports: 32_768..=60_999,
            spare_sockets: 64,
            worker: 0,
            ownership: None,
            neighbours: NeighbourSource::Arp,
        }
    }
}

/// A connection of this stack. Stale ids (the connection is gone) are
/// detected by the generation and yield `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

/// Errors opening connections or listeners.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StackError {
    #[error("connection limit ({0}) reached")]
    TooManyConnections(usize),
    #[error("no free ephemeral port for {0}")]
    NoFreePort(IpEndpoint),
    #[error("cannot connect to {0}")]
    Unreachable(IpEndpoint),
    #[error("port {0} is already bound")]
    PortInUse(u16),
}

/// What the stack did, for counters and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackCounters {
    pub accepted: u64,
    pub connected: u64,
    pub closed: u64,
    /// SYNs dropped at the connection limit.
    pub syn_dropped: u64,
    /// Half-open connections dropped: the oldest, for a new SYN past
    /// `max_half_open`, or any past `half_open_timeout`.
    pub half_open_evicted: u64,
    /// Frames handed to the worker that owns their flow.
    pub handed_off: u64,
    /// Connections polled for egress (touched by a packet, a timer or the
    /// application): the stack's work per pass is proportional to this.
    pub egress_polls: u64,
    /// ARP requests and IPv6 neighbour solicitations the stack sent itself
    /// for new next hops.
    pub arp_requests: u64,
    /// Neighbours handed to smoltcp from the kernel's table or a client's
    /// SYN (node-address mode).
    pub neighbours_learned: u64,
    /// Neighbours the kernel was asked to resolve (node-address mode).
    pub neighbours_asked: u64,
}

struct Conn {
    set: SocketSet<'static>,
    handle: SocketHandle,
    flow: FlowKey,
    /// When this connection's entry in the timer heap is due.
    scheduled: Option<Instant>,
    /// Queued for egress this pass.
    dirty: bool,
    /// Listed in the events the application takes next.
    notified: bool,
    half_open: bool,
    outbound: bool,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

struct Listener {
    set: SocketSet<'static>,
    handle: SocketHandle,
}

/// Ephemeral port allocation: round-robin over the range, skipping ports in
/// use, so a port just freed (its peer may still hold TIME-WAIT) is the last
/// to be reused.
struct EphemeralPorts {
    range: RangeInclusive<u16>,
    next: u16,
    in_use: Vec<bool>,
}

impl EphemeralPorts {
    fn new(range: RangeInclusive<u16>) -> Self {
        let len = usize::from(*range.end() - *range.start()) + 1;
        // Start at a random place (RFC 6056): a restarted gateway must not
        // reuse the ports its previous run left open at the backends (it
        // never sent them a FIN), whose SYNs would meet an established
        // connection and wait out a retransmission.
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(len);
        let offset = (hasher.finish() % len as u64) as u16;
        Self {
            next: *range.start() + offset,
            in_use: vec![false; len],
            range,
        }
    }

    fn allocate(&mut self, mut fits: impl FnMut(u16) -> bool) -> Option<u16> {
        let len = self.in_use.len();
        let start = *self.range.start();
        for _ in 0..len {
            let port = self.next;
            self.next = if port == *self.range.end() {
                start
            } else {
                port + 1
            };
            let slot = usize::from(port - start);
            if !self.in_use[slot] && fits(port) {
                self.in_use[slot] = true;
                return Some(port);
            }
        }
        None
    }

    fn release(&mut self, port: u16) {
        if self.range.contains(&port) {
            self.in_use[usize::from(port - *self.range.start())] = false;
        }
    }
}

/// One worker's TCP/IP stack.
pub struct Stack {
    iface: Interface,
    config: StackConfig,
    address: Ipv4Address,
    address6: Option<Ipv6Address>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    half_open: usize,
    /// Half-open connections by age, oldest first: (slot, generation, when
    /// its SYN came). Entries of connections that completed or closed are
    /// skipped when they reach the front.
    half_open_ages: VecDeque<(u32, u32, Instant)>,
    index: FastMap<FlowKey, u32>,
    listeners: FastMap<u16, Listener>,
    udp: SocketSet<'static>,
    udp_dirty: bool,
    control: SocketSet<'static>,
    dirty: Vec<u32>,
    events: Vec<ConnId>,
    timers: TimerWheel<(u32, u32)>,
    due: Vec<(Instant, (u32, u32))>,
    ports: EphemeralPorts,
    spare: Vec<tcp::Socket<'static>>,
    counters: StackCounters,
    /// Next hops asked for ahead of smoltcp's one-per-second ARP.
    neighbors: Resolver,
    /// The kernel's neighbours (node-address mode).
    kernel_neighbours: Arc<NeighbourTable>,
    /// Addresses for the kernel to resolve, taken by the driver.
    neighbour_asks: Vec<IpAddress>,
    /// When smoltcp's entries are next renewed from the kernel's table.
    next_renewal: Instant,
    /// Routes to what is off the link (also in smoltcp's interface).
    routes: Routes,
    /// The time of the last pass (connections open between passes).
    now: Instant,
}

thread_local! {
    /// The worker's clock in milliseconds, set once per pass: TCP timestamps
    /// need no finer clock, and reading the system clock per segment cost
    /// 7% of a busy worker.
    static CLOCK_MS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn tsval() -> u32 {
    CLOCK_MS.with(|c| c.get())
}

fn set_clock(now: Instant) {
    CLOCK_MS.with(|c| c.set(now.total_millis() as u32));
}

impl Stack {
    /// Bring a stack up on `device`.
    pub fn new<D: BatchDevice + ?Sized>(config: StackConfig, device: &mut D, now: Instant) -> Self {
        let mut iface_config = Config::new(HardwareAddress::Ethernet(config.mac));
        iface_config.random_seed = seed(config.worker);
        let mut iface = Interface::new(iface_config, device, now);
        iface.update_ip_addrs(|addrs| {
            // A fresh interface has room for three addresses.
            let _ = addrs.push(IpCidr::Ipv4(config.address));
            if let Some(address6) = config.address6 {
                let _ = addrs.push(IpCidr::Ipv6(address6));
                // A router solicits from its link-local address (RFC 4861
                // §7.2.2: the source of the packet it forwards is not its
                // own), and the advertisement goes back there.
                let _ = addrs.push(IpCidr::Ipv6(Ipv6Cidr::new(link_local(config.mac), 64)));
            }
        });
        Self {
            iface,
            address: config.address.address(),
            address6: config.address6.map(|a| a.address()),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            half_open: 0,
            half_open_ages: VecDeque::new(),
            index: FastMap::default(),
            listeners: FastMap::default(),
            udp: SocketSet::new(Vec::new()),
            udp_dirty: false,
            control: SocketSet::new(Vec::new()),
            dirty: Vec::new(),
            events: Vec::new(),
            timers: TimerWheel::new(now),
            due: Vec::new(),
            ports: EphemeralPorts::new(config.ephemeral_ports.clone()),
            spare: Vec::new(),
            counters: StackCounters::default(),
            neighbors: Resolver::default(),
            kernel_neighbours: Arc::default(),
            neighbour_asks: Vec::new(),
            next_renewal: now,
            routes: Routes::default(),
            now,
            config,
        }
    }

    /// Route what is off the link through `routes`. Routes through a next
    /// hop not on the link are taken as leading elsewhere (the kernel
    /// reaches those, through another device); past [`MAX_ROUTES`], the
    /// least specific are dropped. Returns how many routes the stack now
    /// holds.
    pub fn set_routes(&mut self, routes: &Routes) -> usize {
        let usable = Routes::new(routes.iter().take(MAX_ROUTES).map(|r| match r.hop {
            Hop::Via(via) if self.on_link(via) && !self.is_local(via) => *r,
            _ => Route {
                hop: Hop::Elsewhere,
                ..*r
            },
        }));
        self.iface.routes_mut().update(|table| {
            table.clear();
            for r in usable.iter() {
                let Hop::Via(via) = r.hop else { continue };
                let route = smoltcp::iface::Route {
                    cidr: r.destination,
                    via_router: via,
                    preferred_until: None,
                    expires_at: None,
                };
                if table.push(route).is_err() {
                    break;
                }
            }
        });
        self.routes = usable;
        if self.config.neighbours == NeighbourSource::Kernel {
            // smoltcp's own ARP for a next hop is answered to the kernel:
            // have each one ready before a packet needs it (a route moved
            // to a new hop under open connections).
            let hops: Vec<IpAddress> = self
                .routes
                .iter()
                .filter_map(|r| match r.hop {
                    Hop::Via(via) => Some(via),
                    Hop::Elsewhere => None,
                })
                .collect();
            for hop in hops {
                if !self.neighbors.fresh(hop, self.now) {
                    self.neighbors.want(hop, self.now);
                }
            }
        }
        self.routes.len()
    }

    /// The neighbour a packet to `to` goes to first: `to` itself on the
    /// link, a route's next hop off it; `None` when the stack cannot reach
    /// it (no address of that family, no route, or one out of another
    /// device).
    fn next_hop(&self, to: IpAddress) -> Option<IpAddress> {
        if self.on_link(to) {
            return Some(to);
        }
        self.local_for(to)?;
        match self.routes.hop(to)? {
            Hop::Via(via) => Some(via),
            Hop::Elsewhere => None,
        }
    }

    /// Whether `address` is on the stack's link (in the subnet of its
    /// address of that family).
    fn on_link(&self, address: IpAddress) -> bool {
        match address {
            IpAddress::Ipv4(a) => self.config.address.contains_addr(&a),
            IpAddress::Ipv6(a) => self.config.address6.is_some_and(|s| s.contains_addr(&a)),
        }
    }

    /// Whether the stack reaches `to`: on its link, or through a route out
    /// of its interface.
    pub fn reaches(&self, to: IpAddress) -> bool {
        self.next_hop(to).is_some()
    }

    /// Whether `address` is the stack's own.
    fn is_local(&self, address: IpAddress) -> bool {
        match address {
            IpAddress::Ipv4(a) => a == self.address,
            IpAddress::Ipv6(a) => self.address6 == Some(a),
        }
    }

    /// The stack's address of `remote`'s family.
    fn local_for(&self, remote: IpAddress) -> Option<IpAddress> {
        match remote {
            IpAddress::Ipv4(_) => Some(IpAddress::Ipv4(self.address)),
            IpAddress::Ipv6(_) => self.address6.map(IpAddress::Ipv6),
        }
    }

    /// The kernel's neighbours, for a stack whose neighbours come from
    /// the kernel: next hops waiting for one of them go at once.
    pub fn set_neighbours(&mut self, table: Arc<NeighbourTable>) {
        self.kernel_neighbours = table;
        self.renew_neighbours();
    }

    /// Addresses the kernel's table lacked, for the driver to ask the
    /// kernel to resolve (taken).
    pub fn take_neighbour_asks(&mut self, into: &mut Vec<IpAddress>) {
        into.append(&mut self.neighbour_asks);
    }

    /// Keep smoltcp's entries for the neighbours that connections use:
    /// each one it is about to forget (or still waits for) is handed over
    /// again from the kernel's table, or asked of the kernel when the table
    /// lacks it (the ARP smoltcp would send itself is answered to the
    /// kernel). Neighbours no connection uses any more are forgotten.
    fn renew_neighbours(&mut self) {
        let now = self.now;
        let stale: Vec<IpAddress> = self.neighbors.stale(now).collect();
        if stale.is_empty() {
            return;
        }
        let in_use: std::collections::HashSet<IpAddress> = self
            .slots
            .iter()
            .filter_map(|slot| slot.conn.as_ref())
            .filter_map(|conn| self.next_hop(conn.flow.remote_addr))
            .collect();
        let mut learned = false;
        for address in stale {
            if !in_use.contains(&address) {
                self.neighbors.forget(address);
                continue;
            }
            match self.kernel_neighbours.get(address) {
                Some(mac) => learned |= self.learn_neighbour(address, mac),
                // Asked of the kernel at the next egress, unless it was a
                // moment ago.
                None => self.neighbors.want(address, now),
            }
        }
        if learned {
            self.wake_neighbor_waiters();
        }
    }

    /// Give smoltcp `address` at `mac` as the ARP reply or neighbour
    /// advertisement it would have heard. Returns whether it answers a
    /// request of ours (callers then wake the connections waiting for it).
    fn learn_neighbour(&mut self, address: IpAddress, mac: EthernetAddress) -> bool {
        let our_mac = self.config.mac;
        let (reply, advertisement);
        let frame: &[u8] = match (address, self.address6) {
            (IpAddress::Ipv4(v4), _) => {
                reply = neighbor::reply_frame(v4, mac, self.address, our_mac);
                &reply
            }
            (IpAddress::Ipv6(v6), Some(us)) => {
                advertisement = neighbor::advertisement_frame(v6, mac, us, our_mac);
                &advertisement
            }
            (IpAddress::Ipv6(_), None) => return false,
        };
        self.iface
            .poll_ingress_single(self.now, &mut OneFrame(Some(frame)), &mut self.control);
        self.counters.neighbours_learned += 1;
        self.neighbors.heard(address, self.now)
    }

    /// Node-address mode: a TCP frame from `remote` in `frame`. A client
    /// on the link is learned from its frame (the kernel may never have
    /// spoken to it); the next hop to one off it is wanted, as for a
    /// connection out.
    fn learn_from_frame(&mut self, frame: &[u8], remote: IpAddress, syn: bool) {
        if self.on_link(remote) {
            if !self.neighbors.fresh(remote, self.now) {
                let mac = EthernetAddress::from_bytes(&frame[6..12]);
                if mac.is_unicast() && self.learn_neighbour(remote, mac) {
                    self.wake_neighbor_waiters();
                }
            }
        } else if syn {
            if let Some(hop) = self.next_hop(remote) {
                self.neighbors.want(hop, self.now);
            }
        }
    }

    /// The IPv4 address the stack owns.
    pub fn address(&self) -> Ipv4Address {
        self.address
    }

    /// Connections open (any state but closed).
    pub fn connections(&self) -> usize {
        self.live
    }

    /// Whether any connection still holds bytes its peer has not
    /// acknowledged (closed ones included): a graceful stop waits for none.
    pub fn has_unsent_data(&self) -> bool {
        self.slots.iter().filter_map(|s| s.conn.as_ref()).any(|c| {
            let socket = c.set.get::<tcp::Socket>(c.handle);
            socket.send_queue() > 0
        })
    }

    /// Half-open connections.
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    pub fn counters(&self) -> StackCounters {
        self.counters
    }

    fn new_socket(&mut self) -> tcp::Socket<'static> {
        self.spare
            .pop()
            .unwrap_or_else(|| build_socket(&self.config.tcp))
    }

    /// Keep spare sockets ready so a burst of SYNs does not allocate and
    /// zero buffers on the packet path. Call when idle.
    pub fn maintain(&mut self) {
        while self.spare.len() < self.config.spare_sockets {
            self.spare.push(build_socket(&self.config.tcp));
        }
    }

    /// Accept TCP connections on `port`.
    pub fn listen_tcp(&mut self, port: u16) -> Result<(), StackError> {
        if self.listeners.contains_key(&port) || port == 0 {
            return Err(StackError::PortInUse(port));
        }
        let mut socket = self.new_socket();
        socket
            .listen(port)
            .map_err(|_| StackError::PortInUse(port))?;
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        self.listeners.insert(port, Listener { set, handle });
        Ok(())
    }

    /// Stop taking connections on `port`; connections already accepted go
    /// on. False if nothing listened there.
    pub fn unlisten_tcp(&mut self, port: u16) -> bool {
        self.listeners.remove(&port).is_some()
    }

    /// A UDP socket on `port`, with `packets` slots and `bytes` of payload
    /// each way.
    pub fn bind_udp(
        &mut self,
        port: u16,
        packets: usize,
        bytes: usize,
    ) -> Result<SocketHandle, StackError> {
        let buffer =
            || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; packets], vec![0; bytes]);
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket
            .bind(IpListenEndpoint { addr: None, port })
            .map_err(|_| StackError::PortInUse(port))?;
        Ok(self.udp.add(socket))
    }

    /// A UDP socket, for the application (its output goes out this pass).
    pub fn udp(&mut self, handle: SocketHandle) -> &mut udp::Socket<'static> {
        self.udp_dirty = true;
        self.udp.get_mut::<udp::Socket>(handle)
    }

    /// Open a connection to `remote` from an ephemeral port whose replies
    /// this worker owns, from the stack's address of its family.
    pub fn connect(&mut self, remote: (impl Into<IpAddress>, u16)) -> Result<ConnId, StackError> {
        let remote = (remote.0.into(), remote.1);
        let endpoint = IpEndpoint::new(remote.0, remote.1);
        if self.live >= self.config.max_connections {
            return Err(StackError::TooManyConnections(self.config.max_connections));
        }
        let address = self
            .local_for(remote.0)
            .ok_or(StackError::Unreachable(endpoint))?;
        let worker = self.config.worker;
        let ownership = self.config.ownership.as_ref();
        let index = &self.index;
        let port = self
            .ports
            .allocate(|port| {
                let flow = FlowKey {
                    remote_addr: remote.0,
                    remote_port: remote.1,
                    local_port: port,
                };
                !index.contains_key(&flow)
                    && ownership.is_none_or(|o| o.owner(address, &flow) == worker)
            })
            .ok_or(StackError::NoFreePort(endpoint))?;
        let mut socket = self.new_socket();
        if socket
            .connect(self.iface.context(), endpoint, (address, port))
            .is_err()
        {
            self.ports.release(port);
            self.recycle(socket);
            return Err(StackError::Unreachable(endpoint));
        }
        let flow = FlowKey {
            remote_addr: remote.0,
            remote_port: remote.1,
            local_port: port,
        };
        let id = self.insert(flow, socket, true);
        self.counters.connected += 1;
        if let Some(hop) = self.next_hop(remote.0) {
            self.neighbors.want(hop, self.now);
        }
        Ok(id)
    }

    fn insert(&mut self, flow: FlowKey, socket: tcp::Socket<'static>, outbound: bool) -> ConnId {
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        let conn = Conn {
            set,
            handle,
            flow,
            scheduled: None,
            dirty: false,
            notified: false,
            half_open: false,
            outbound,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].conn = Some(conn);
                i
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: Some(conn),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(flow, index);
        self.live += 1;
        self.touch(index);
        ConnId {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    fn remove(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let Some(mut conn) = slot.conn.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.index.remove(&conn.flow);
        self.live -= 1;
        if conn.half_open {
            self.half_open -= 1;
        }
        if conn.outbound {
            self.ports.release(conn.flow.local_port);
        }
        self.counters.closed += 1;
        if let Socket::Tcp(socket) = conn.set.remove(conn.handle) {
            self.recycle(socket);
        }
    }

    fn recycle(&mut self, mut socket: tcp::Socket<'static>) {
        if self.spare.len() < self.config.spare_sockets {
            socket.abort();
            // A fresh controller: no congestion state carries over.
            let congestion = socket.congestion_control();
            socket.set_congestion_control(congestion);
            self.spare.push(socket);
        }
    }

    /// Something happened to the connection (a packet, a timer): the
    /// application hears of it, and it is polled for egress.
    fn touch(&mut self, index: u32) {
        let generation = self.slots[index as usize].generation;
        if let Some(conn) = self.slots[index as usize].conn.as_mut() {
            if !conn.notified {
                conn.notified = true;
                self.events.push(ConnId { index, generation });
            }
        }
        self.mark_dirty(index);
    }

    /// Poll the connection for egress this pass. The application's own
    /// writes come here, and do not come back to it as events: a loop of
    /// event → write → event would keep an idle connection busy forever.
    fn mark_dirty(&mut self, index: u32) {
        if let Some(conn) = self.slots[index as usize].conn.as_mut() {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(index);
            }
        }
    }

    fn slot(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_ref()
    }

    /// A connection's socket, to read; `None` once it is gone.
    pub fn tcp(&self, id: ConnId) -> Option<&tcp::Socket<'static>> {
        let conn = self.slot(id)?;
        Some(conn.set.get::<tcp::Socket>(conn.handle))
    }

    /// A connection's socket, to read and write; marks it for egress.
    pub fn tcp_mut(&mut self, id: ConnId) -> Option<&mut tcp::Socket<'static>> {
        self.slot(id)?;
        self.mark_dirty(id.index);
        let conn = self.slots[id.index as usize].conn.as_mut()?;
        Some(conn.set.get_mut::<tcp::Socket>(conn.handle))
    }

    /// The peer of a connection.
    pub fn remote(&self, id: ConnId) -> Option<(IpAddress, u16)> {
        self.slot(id)
            .map(|c| (c.flow.remote_addr, c.flow.remote_port))
    }

    /// The local port of a connection (a listener's port for accepted ones).
    pub fn local_port(&self, id: ConnId) -> Option<u16> {
        self.slot(id).map(|c| c.flow.local_port)
    }

    /// Connections something happened to since the last call (a packet, a
    /// timer, a neighbour resolved), for the application to look at. Its
    /// own writes are not events.
    pub fn take_events(&mut self, into: &mut Vec<ConnId>) {
        into.clear();
        std::mem::swap(into, &mut self.events);
        for id in into.iter() {
            if let Some(conn) = self.slots[id.index as usize].conn.as_mut() {
                conn.notified = false;
            }
        }
    }

    /// Take in every frame the device holds. Frames whose flow another
    /// worker owns go to `handoff(owner, frame)`; ARP and neighbour
    /// discovery go to every other worker as well as here. Returns whether anything was received.
    pub fn ingress<D, H>(&mut self, now: Instant, device: &mut D, mut handoff: H) -> bool
    where
        D: BatchDevice + ?Sized,
        H: FnMut(usize, &[u8]),
    {
        set_clock(now);
        self.now = now;
        let mut work = false;
        let mut arp_seen = false;
        while let Some((frame, origin)) = device.peek() {
            work = true;
            let kind = classify(frame);
            if origin == Origin::Local {
                if let Some(ownership) = &self.config.ownership {
                    let me = self.config.worker;
                    match kind {
                        FrameKind::Neighbour => {
                            for worker in (0..ownership.workers()).filter(|&w| w != me) {
                                handoff(worker, frame);
                            }
                        }
                        FrameKind::Tcp {
                            local_addr, flow, ..
                        }
                        | FrameKind::Udp { local_addr, flow } => {
                            let owner = ownership.owner(local_addr, &flow);
                            if owner != me {
                                handoff(owner, frame);
                                device.discard();
                                self.counters.handed_off += 1;
                                continue;
                            }
                        }
                        FrameKind::Other => {}
                    }
                }
            }
            if let FrameKind::Tcp { flow, syn_only, .. } = kind {
                if self.config.neighbours == NeighbourSource::Kernel {
                    self.learn_from_frame(frame, flow.remote_addr, syn_only);
                }
            }
            let consumed = match kind {
                FrameKind::Tcp {
                    local_addr,
                    flow,
                    syn_only,
                    ..
                } if self.is_local(local_addr) => self.ingress_tcp(now, device, flow, syn_only),
                FrameKind::Udp { local_addr, .. } if self.is_local(local_addr) => {
                    self.udp_dirty = true;
                    consumed(self.iface.poll_ingress_single(now, device, &mut self.udp))
                }
                kind => {
                    if kind == FrameKind::Neighbour {
                        let sender = neighbor::arp_sender(frame, self.address)
                            .map(IpAddress::Ipv4)
                            .or_else(|| {
                                let us = self.address6?;
                                neighbor::ndisc_sender(frame, us).map(IpAddress::Ipv6)
                            });
                        if let Some(sender) = sender {
                            arp_seen |= self.neighbors.heard(sender, now);
                        }
                    }
                    consumed(
                        self.iface
                            .poll_ingress_single(now, device, &mut self.control),
                    )
                }
            };
            if !consumed {
                // The device cannot take a reply now (no free TX frame): leave
                // the frame for the next pass, after the TX ring drains.
                break;
            }
        }
        if arp_seen {
            // An answer to a request of ours: connections may wait for it.
            self.wake_neighbor_waiters();
        }
        work
    }

    /// Returns false when the device did not hand the frame over.
    fn ingress_tcp<D: BatchDevice + ?Sized>(
        &mut self,
        now: Instant,
        device: &mut D,
        flow: FlowKey,
        syn_only: bool,
    ) -> bool {
        if let Some(&index) = self.index.get(&flow) {
            if let Some(conn) = self.slots[index as usize].conn.as_mut() {
                let result = self.iface.poll_ingress_single(now, device, &mut conn.set);
                self.touch(index);
                return consumed(result);
            }
        }
        if syn_only && self.listeners.contains_key(&flow.local_port) {
            if self.half_open >= self.config.max_half_open {
                self.evict_half_open(|_| true);
            }
            if self.live >= self.config.max_connections
                || self.half_open >= self.config.max_half_open
            {
                // Silently: the peer retries, established connections are
                // untouched, and a flood gets no reflected RSTs.
                device.discard();
                self.counters.syn_dropped += 1;
                return true;
            }
            let Some(listener) = self.listeners.get_mut(&flow.local_port) else {
                return false;
            };
            let result = self
                .iface
                .poll_ingress_single(now, device, &mut listener.set);
            if !consumed(result) {
                return false;
            }
            if listener
                .set
                .get::<tcp::Socket>(listener.handle)
                .is_listening()
            {
                return true;
            }
            // The listener took the SYN: it becomes the connection, and a
            // fresh listener takes its place before the next packet.
            let taken = listener.set.remove(listener.handle);
            let mut fresh = self.new_socket();
            if let Some(listener) = self.listeners.get_mut(&flow.local_port) {
                if fresh.listen(flow.local_port).is_ok() {
                    listener.handle = listener.set.add(fresh);
                }
            }
            if let Socket::Tcp(socket) = taken {
                if socket.state() == tcp::State::SynReceived {
                    let id = self.insert(flow, socket, false);
                    if let Some(conn) = self.slots[id.index as usize].conn.as_mut() {
                        conn.half_open = true;
                    }
                    self.half_open += 1;
                    self.half_open_ages
                        .push_back((id.index, id.generation, now));
                    self.counters.accepted += 1;
                }
            }
            return true;
        }
        // No connection, no listener: smoltcp answers with RST (or drops a
        // RST).
        consumed(
            self.iface
                .poll_ingress_single(now, device, &mut self.control),
        )
    }

    /// Drop the oldest half-open connection for which `old(born)` holds,
    /// silently; entries of connections no longer half-open are passed
    /// over. Returns whether one was dropped.
    fn evict_half_open(&mut self, old: impl Fn(Instant) -> bool) -> bool {
        while let Some(&(index, generation, born)) = self.half_open_ages.front() {
            let slot = &self.slots[index as usize];
            let still =
                slot.generation == generation && slot.conn.as_ref().is_some_and(|c| c.half_open);
            if !still {
                self.half_open_ages.pop_front();
                continue;
            }
            if !old(born) {
                return false;
            }
            self.half_open_ages.pop_front();
            self.remove(index);
            self.counters.half_open_evicted += 1;
            return true;
        }
        false
    }

    /// After an answer to our own ARP request or neighbour solicitation,
    /// connections waiting for a neighbour may go at once rather than at
    /// smoltcp's next retry. Answers come at most as often as we ask (once
    /// a second per address), so a scan is fine; unsolicited ARP never
    /// gets here.
    fn wake_neighbor_waiters(&mut self) {
        let waiting: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let conn = slot.conn.as_ref()?;
                let socket = conn.set.get::<tcp::Socket>(conn.handle);
                let waits = socket.state() == tcp::State::SynSent || socket.send_queue() > 0;
                (waits && !conn.dirty).then_some(i as u32)
            })
            .collect();
        for index in waiting {
            self.touch(index);
        }
    }

    /// Send what is due: connections touched since the last pass and those
    /// whose timers expired. Connections that finished closing are freed.
    pub fn egress<D: BatchDevice + ?Sized>(&mut self, now: Instant, device: &mut D) {
        set_clock(now);
        self.now = now;
        if self.config.neighbours == NeighbourSource::Kernel && now >= self.next_renewal {
            self.next_renewal = now + Duration::from_secs(1);
            self.renew_neighbours();
        }
        if self.neighbors.has_pending() {
            match self.config.neighbours {
                NeighbourSource::Arp => self.ask_neighbors(now, device),
                NeighbourSource::Kernel => self.look_up_neighbours(),
            }
        }
        let expired = now - self.config.half_open_timeout;
        while self.evict_half_open(|born| born <= expired) {}
        let mut due = std::mem::take(&mut self.due);
        self.timers.expire(now, &mut due);
        for &(at, (index, generation)) in &due {
            let slot = &mut self.slots[index as usize];
            if slot.generation != generation {
                continue;
            }
            if let Some(conn) = slot.conn.as_mut().filter(|c| c.scheduled == Some(at)) {
                conn.scheduled = None;
                self.touch(index);
            }
        }
        due.clear();
        self.due = due;

        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            let slot = &mut self.slots[index as usize];
            let generation = slot.generation;
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            conn.dirty = false;
            self.counters.egress_polls += 1;
            self.iface.poll_egress(now, device, &mut conn.set);
            let state = conn.set.get::<tcp::Socket>(conn.handle).state();
            if conn.half_open && state != tcp::State::SynReceived {
                conn.half_open = false;
                self.half_open -= 1;
            }
            if state == tcp::State::Closed {
                self.remove(index);
                continue;
            }
            // One heap entry per connection: a later deadline (an idle
            // timeout pushed back by traffic) keeps the earlier entry, which
            // re-evaluates when it fires; only an earlier one is pushed.
            if let Some(at) = self.iface.poll_at(now, &conn.set) {
                if conn.scheduled.is_none_or(|s| at < s) {
                    conn.scheduled = Some(at);
                    self.timers.insert(at, (index, generation));
                }
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        if self.udp_dirty {
            self.udp_dirty = false;
            self.iface.poll_egress(now, device, &mut self.udp);
        }
    }

    /// Broadcast the ARP requests owed, before the SYNs that need them.
    fn ask_neighbors<D: BatchDevice + ?Sized>(&mut self, now: Instant, device: &mut D) {
        let (mac, address, address6) = (self.config.mac, self.address, self.address6);
        while let Some(target) = self.neighbors.next_pending() {
            if let (IpAddress::Ipv6(_), None) = (target, address6) {
                continue;
            }
            let Some(token) = device.transmit(now) else {
                self.neighbors.defer(target);
                return;
            };
            match (target, address6) {
                (IpAddress::Ipv4(target), _) => {
                    token.consume(neighbor::REQUEST_LEN, |buf| {
                        neighbor::emit_request(buf, mac, address, target)
                    });
                }
                (IpAddress::Ipv6(target), Some(address6)) => {
                    token.consume(neighbor::NDISC_LEN, |buf| {
                        neighbor::emit_solicitation(buf, mac, address6, target)
                    });
                }
                (IpAddress::Ipv6(_), None) => {}
            }
            self.counters.arp_requests += 1;
        }
    }

    /// The next hops owed, from the kernel's table, or asked of the
    /// kernel.
    fn look_up_neighbours(&mut self) {
        let mut learned = false;
        while let Some(target) = self.neighbors.next_pending() {
            match self.kernel_neighbours.get(target) {
                Some(mac) => {
                    self.learn_neighbour(target, mac);
                    learned = true;
                }
                None => {
                    self.counters.neighbours_asked += 1;
                    self.neighbour_asks.push(target);
                }
            }
        }
        if learned {
            self.wake_neighbor_waiters();
        }
    }

    /// How long until a timer is due (`None`: no timer).
    pub fn poll_delay(&self, now: Instant) -> Option<std::time::Duration> {
        let at = self.timers.next_deadline()?;
        let micros = (at - now.min(at)).total_micros();
        Some(std::time::Duration::from_micros(micros))
    }
}

/// The link-local address of an interface with hardware address `mac`:
/// `fe80::/64` and the modified EUI-64 interface identifier (RFC 4291
/// §2.5.1, appendix A), as the kernel forms its own.
fn link_local(mac: EthernetAddress) -> Ipv6Address {
    let m = mac.0;
    Ipv6Address::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

fn consumed(result: PollIngressSingleResult) -> bool {
    result != PollIngressSingleResult::None
}

fn build_socket(tcp: &TcpConfig) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; tcp.rx_buffer]),
        tcp::SocketBuffer::new(vec![0; tcp.tx_buffer]),
    );
    socket.set_nagle_enabled(tcp.nagle);
    socket.set_ack_delay(tcp.ack_delay);
    socket.set_timeout(tcp.idle_timeout);
    socket.set_keep_alive(tcp.keep_alive);
    if tcp.timestamps {
        socket.set_tsval_generator(Some(tsval));
    }
    socket.set_congestion_control(match tcp.congestion {
        Congestion::None => tcp::CongestionControl::None,
        Congestion::Reno => tcp::CongestionControl::Reno,
        Congestion::Cubic => tcp::CongestionControl::Cubic,
    });
    socket
}

fn seed(worker: usize) -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_usize(worker);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_local_address_is_the_modified_eui_64_one() {
        let mac = EthernetAddress([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(
            link_local(mac),
            "fe80::42:acff:fe11:2".parse::<Ipv6Address>().unwrap()
        );
    }

    #[test]
    fn ephemeral_ports_rotate_skip_used_and_honour_the_filter() {
        let mut ports = EphemeralPorts::new(100..=104);
        assert!((100..=104).contains(&ports.next), "starts inside the range");
        ports.next = 100;
        assert_eq!(ports.allocate(|_| true), Some(100));
        assert_eq!(ports.allocate(|p| p % 2 == 0), Some(102));
        assert_eq!(ports.allocate(|_| true), Some(103));
        ports.release(100);
        // 100 was freed, but the rotation reaches 104 first.
        assert_eq!(ports.allocate(|_| true), Some(104));
        assert_eq!(ports.allocate(|_| true), Some(100));
        assert_eq!(ports.allocate(|_| true), Some(101));
        assert_eq!(ports.allocate(|_| true), None);
        ports.release(999); // outside the range: ignored
    }
}
