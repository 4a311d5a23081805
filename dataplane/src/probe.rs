//! The probe service: ARP and ICMP echo (answered by the stack itself), and
//! UDP and TCP echo (RFC 862) on one port, entirely in userspace.
//!
//! It is the operator's testpmd: proof that a NIC queue, the XDP steering and
//! the userspace stack work, before the gateway runs on them.

use rauta_netstack::smoltcp::iface::SocketHandle;
use rauta_netstack::smoltcp::socket::tcp;
use rauta_netstack::smoltcp::time::Instant;
use rauta_netstack::{BatchDevice, ConnId, Stack, StackConfig, StackCounters};

/// The echo service's settings.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// The stack under the service.
    pub stack: StackConfig,
    /// Port of the UDP and TCP echo services (RFC 862 says 7).
    pub echo_port: u16,
}

impl ProbeConfig {
    /// The echo service on port 7 over `stack`.
    pub fn new(stack: StackConfig) -> Self {
        Self {
            stack,
            echo_port: 7,
        }
    }
}

/// What the probe has served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Bytes echoed over TCP.
    pub tcp_bytes: u64,
    /// UDP datagrams echoed.
    pub udp_datagrams: u64,
}

/// The userspace stack with the echo services on it.
pub struct Probe {
    stack: Stack,
    udp: SocketHandle,
    events: Vec<ConnId>,
    scratch: Vec<u8>,
    counters: ProbeCounters,
}

impl Probe {
    /// Bring the stack up on `device` with the echo services listening.
    pub fn new<D: BatchDevice + ?Sized>(config: ProbeConfig, device: &mut D, now: Instant) -> Self {
        let mut stack = Stack::new(config.stack, device, now);
        // A fresh stack has nothing bound: neither can fail.
        let _ = stack.listen_tcp(config.echo_port);
        let udp = stack
            .bind_udp(config.echo_port, 256, 256 * 1024)
            .unwrap_or_else(|_| unreachable!("a fresh stack has no UDP socket"));
        stack.maintain();
        Self {
            stack,
            udp,
            events: Vec::new(),
            scratch: vec![0; 64 * 1024],
            counters: ProbeCounters::default(),
        }
    }

    /// One pass: every received frame in (handing frames of flows that other
    /// workers own to `handoff`), the echo services, everything due out.
    /// Returns whether any frame came in.
    pub fn poll<D, H>(&mut self, now: Instant, device: &mut D, handoff: H) -> bool
    where
        D: BatchDevice + ?Sized,
        H: FnMut(usize, &[u8]),
    {
        let received = self.stack.ingress(now, device, handoff);
        if received {
            self.echo_udp();
        }
        self.stack.take_events(&mut self.events);
        for i in 0..self.events.len() {
            let id = self.events[i];
            self.echo_tcp(id);
        }
        self.stack.egress(now, device);
        received
    }

    /// Time to spare: refill the spare sockets.
    pub fn maintain(&mut self) {
        self.stack.maintain();
    }

    /// How long until the stack's next timer.
    pub fn poll_delay(&self, now: Instant) -> Option<std::time::Duration> {
        self.stack.poll_delay(now)
    }

    /// TCP connections currently open.
    pub fn connections(&self) -> usize {
        self.stack.connections()
    }

    /// What has been served so far.
    pub fn counters(&self) -> ProbeCounters {
        self.counters
    }

    /// What the stack has done so far.
    pub fn stack_counters(&self) -> StackCounters {
        self.stack.counters()
    }

    fn echo_udp(&mut self) {
        let socket = self.stack.udp(self.udp);
        while socket.can_recv() {
            let Ok((len, meta)) = socket.recv_slice(&mut self.scratch) else {
                break;
            };
            // A full send buffer drops the echo, as UDP may.
            if socket.send_slice(&self.scratch[..len], meta).is_ok() {
                self.counters.udp_datagrams += 1;
            }
        }
    }

    fn echo_tcp(&mut self, id: ConnId) {
        let Some(socket) = self.stack.tcp_mut(id) else {
            return;
        };
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
            let _ = socket.send_slice(&self.scratch[..n]);
            self.counters.tcp_bytes += n as u64;
        }
        // The peer finished sending and everything is echoed: finish too.
        if socket.state() == tcp::State::CloseWait
            && socket.recv_queue() == 0
            && socket.send_queue() == 0
        {
            socket.close();
        }
    }
}
