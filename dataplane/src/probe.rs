//! The probe service: ARP and ICMP echo (answered by the stack itself), and
//! UDP and TCP echo (RFC 862) on one port, entirely in userspace.
//!
//! It is the operator's testpmd: proof that a NIC queue, the XDP steering and
//! the userspace stack work, before the gateway runs on them.

use rauta_netstack::smoltcp;
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint, Ipv4Cidr};

/// The echo service's settings.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// The address the stack owns (the kernel need not hold it).
    pub address: Ipv4Cidr,
    /// The interface's MAC address.
    pub mac: EthernetAddress,
    /// Port of the UDP and TCP echo services (RFC 862 says 7).
    pub echo_port: u16,
    /// Listening sockets kept ready, so a burst of SYNs is accepted.
    pub listen_backlog: usize,
    /// Most TCP connections at once; SYNs beyond it are refused.
    pub max_connections: usize,
    /// Receive and send buffer of each TCP connection.
    pub tcp_buffer: usize,
}

impl ProbeConfig {
    /// Defaults for `address` on an interface with `mac`.
    pub fn new(address: Ipv4Cidr, mac: EthernetAddress) -> Self {
        Self {
            address,
            mac,
            echo_port: 7,
            listen_backlog: 128,
            max_connections: 4096,
            tcp_buffer: 64 * 1024,
        }
    }
}

/// What the probe has served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// TCP connections accepted.
    pub tcp_accepted: u64,
    /// TCP connections finished and freed.
    pub tcp_closed: u64,
    /// Bytes echoed over TCP.
    pub tcp_bytes: u64,
    /// UDP datagrams echoed.
    pub udp_datagrams: u64,
}

/// The userspace stack with the echo services on it.
pub struct Probe {
    config: ProbeConfig,
    iface: Interface,
    sockets: SocketSet<'static>,
    listeners: Vec<SocketHandle>,
    connections: Vec<SocketHandle>,
    udp: SocketHandle,
    scratch: Vec<u8>,
    counters: ProbeCounters,
}

impl Probe {
    /// Bring the stack up on `device`.
    pub fn new<D: Device + ?Sized>(config: ProbeConfig, device: &mut D, now: Instant) -> Self {
        let mut iface_config = Config::new(HardwareAddress::Ethernet(config.mac));
        iface_config.random_seed = seed();
        let mut iface = Interface::new(iface_config, device, now);
        iface.update_ip_addrs(|addrs| {
            // A fresh interface has room for its first address.
            let _ = addrs.push(IpCidr::Ipv4(config.address));
        });

        let mut sockets = SocketSet::new(Vec::new());
        let udp = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 256 * 1024]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 256 * 1024]),
        );
        let udp = sockets.add(udp);
        sockets
            .get_mut::<udp::Socket>(udp)
            .bind(IpListenEndpoint {
                addr: None,
                port: config.echo_port,
            })
            .expect("binding a fresh UDP socket to a non-zero port cannot fail");

        let scratch = vec![0; config.tcp_buffer.max(64 * 1024)];
        let mut probe = Self {
            config,
            iface,
            sockets,
            listeners: Vec::new(),
            connections: Vec::new(),
            udp,
            scratch,
            counters: ProbeCounters::default(),
        };
        probe.replenish_listeners();
        probe
    }

    /// One pass of the stack: every received frame in, the echo services,
    /// everything due out. Returns whether anything happened.
    pub fn poll<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        let mut work = false;
        // Each packet can take at most one listener; refill the pool before
        // a burst of SYNs could empty it (smoltcp resets a SYN it has no
        // listener for). Checking every half pool keeps the cost per packet
        // flat.
        let refill_every = (self.config.listen_backlog / 2).max(1);
        let mut since_refill = 0;
        loop {
            match self
                .iface
                .poll_ingress_single(now, device, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => work = true,
                PollIngressSingleResult::SocketStateChanged => {
                    work = true;
                    since_refill += 1;
                    if since_refill >= refill_every {
                        self.accept();
                        since_refill = 0;
                    }
                }
            }
        }
        if work {
            work |= self.serve();
        }
        // Egress after the application, so the ACK rides on the echo.
        self.iface.poll_egress(now, device, &mut self.sockets);
        work
    }

    /// How long the stack can wait before its timers need a pass.
    pub fn poll_delay(&mut self, now: Instant) -> Option<std::time::Duration> {
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d: Duration| std::time::Duration::from_micros(d.total_micros()))
    }

    /// TCP connections currently open (not counting idle listeners).
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// What has been served so far.
    pub fn counters(&self) -> ProbeCounters {
        self.counters
    }

    fn serve(&mut self) -> bool {
        let mut work = self.echo_udp();
        work |= self.accept();
        work |= self.echo_tcp();
        work
    }

    fn echo_udp(&mut self) -> bool {
        let socket = self.sockets.get_mut::<udp::Socket>(self.udp);
        let mut work = false;
        while socket.can_recv() {
            let Ok((len, meta)) = socket.recv_slice(&mut self.scratch) else {
                break;
            };
            work = true;
            // A full send buffer drops the echo, as UDP may.
            if socket.send_slice(&self.scratch[..len], meta).is_ok() {
                self.counters.udp_datagrams += 1;
            }
        }
        work
    }

    /// Move listeners that took a connection into `connections`, and keep
    /// the pool of listeners full.
    fn accept(&mut self) -> bool {
        let before = self.listeners.len();
        let sockets = &self.sockets;
        let (listening, accepted): (Vec<_>, Vec<_>) = self
            .listeners
            .iter()
            .partition(|&&h| sockets.get::<tcp::Socket>(h).is_listening());
        self.counters.tcp_accepted += accepted.len() as u64;
        self.connections.extend(accepted);
        self.listeners = listening;
        let changed = self.listeners.len() != before;
        self.replenish_listeners();
        changed
    }

    fn replenish_listeners(&mut self) {
        let room = self
            .config
            .max_connections
            .saturating_sub(self.connections.len());
        while self.listeners.len() < self.config.listen_backlog.min(room) {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; self.config.tcp_buffer]),
                tcp::SocketBuffer::new(vec![0; self.config.tcp_buffer]),
            );
            // Echo latency matters more than segment count here.
            socket.set_nagle_enabled(false);
            socket.set_ack_delay(None);
            socket.set_timeout(Some(Duration::from_secs(60)));
            if socket.listen(self.config.echo_port).is_err() {
                break;
            }
            self.listeners.push(self.sockets.add(socket));
        }
    }

    fn echo_tcp(&mut self) -> bool {
        let mut work = false;
        let mut i = 0;
        while i < self.connections.len() {
            let handle = self.connections[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            // Echo only what the send buffer can take: backpressure, not loss.
            while socket.can_recv() && socket.can_send() {
                let room = socket.send_capacity() - socket.send_queue();
                let want = room.min(self.scratch.len());
                let Ok(n) = socket.recv_slice(&mut self.scratch[..want]) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                let sent = socket.send_slice(&self.scratch[..n]).unwrap_or(0);
                debug_assert_eq!(sent, n);
                self.counters.tcp_bytes += n as u64;
                work = true;
            }
            // The peer finished sending and everything is echoed: finish too.
            if socket.state() == tcp::State::CloseWait
                && socket.recv_queue() == 0
                && socket.send_queue() == 0
            {
                socket.close();
            }
            if socket.state() == tcp::State::Closed {
                self.sockets.remove(handle);
                self.connections.swap_remove(i);
                self.counters.tcp_closed += 1;
                work = true;
                continue;
            }
            i += 1;
        }
        if work {
            self.replenish_listeners();
        }
        work
    }
}

fn seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}
