//! Two userspace stacks over the in-memory link: a client stack against the
//! probe. No privileges, no kernel.

use rauta_dataplane::{Probe, ProbeConfig};
use rauta_netstack::memory::{link, MemoryDevice};
use rauta_netstack::{BatchDevice, StackConfig};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpEndpoint,
    Ipv4Address, Ipv4Cidr,
};

const PROBE_ADDR: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);
const CLIENT_ADDR: Ipv4Address = Ipv4Address::new(198, 18, 0, 10);

struct Lab {
    probe: Probe,
    probe_dev: MemoryDevice,
    client: Interface,
    client_dev: MemoryDevice,
    sockets: SocketSet<'static>,
    now: Instant,
}

impl Lab {
    fn new() -> Self {
        let (mut probe_dev, mut client_dev) = link(1500);
        let now = Instant::from_millis(1);
        let probe = Probe::new(
            ProbeConfig::new(StackConfig::new(
                Ipv4Cidr::new(PROBE_ADDR, 24),
                EthernetAddress([0x02, 0, 0, 0, 0, 1]),
            )),
            &mut probe_dev,
            now,
        );
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress([
            0x02, 0, 0, 0, 0, 2,
        ])));
        let mut client = Interface::new(config, &mut client_dev, now);
        client.update_ip_addrs(|a| {
            a.push(IpCidr::Ipv4(Ipv4Cidr::new(CLIENT_ADDR, 24)))
                .unwrap()
        });
        Self {
            probe,
            probe_dev,
            client,
            client_dev,
            sockets: SocketSet::new(Vec::new()),
            now,
        }
    }

    /// One round trip of both stacks, a millisecond of virtual time.
    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        self.client
            .poll(self.now, &mut self.client_dev, &mut self.sockets);
        self.probe_dev.service();
        self.probe.poll(self.now, &mut self.probe_dev, |_, _| {});
        self.client
            .poll(self.now, &mut self.client_dev, &mut self.sockets);
    }

    fn run_until(&mut self, limit: usize, mut done: impl FnMut(&mut Self) -> bool) {
        for _ in 0..limit {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!(
            "not done after {limit} steps (probe connections {}, client states {:?})",
            self.probe.connections(),
            self.sockets
                .iter()
                .filter_map(|(_, s)| match s {
                    smoltcp::socket::Socket::Tcp(t) => Some(t.state()),
                    _ => None,
                })
                .fold(std::collections::BTreeMap::new(), |mut m, s| {
                    *m.entry(format!("{s:?}")).or_insert(0) += 1;
                    m
                })
        );
    }

    fn tcp_socket(&mut self, port: u16) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        socket
            .connect(
                self.client.context(),
                (IpAddress::Ipv4(PROBE_ADDR), 7),
                port,
            )
            .unwrap();
        self.sockets.add(socket)
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn echo_over_tcp(lab: &mut Lab, port: u16, data: &[u8]) {
    let handle = lab.tcp_socket(port);
    let mut sent = 0;
    let mut received = Vec::with_capacity(data.len());
    lab.run_until(200_000, |lab| {
        let socket = lab.sockets.get_mut::<tcp::Socket>(handle);
        if socket.can_send() && sent < data.len() {
            sent += socket.send_slice(&data[sent..]).unwrap();
        }
        while socket.can_recv() {
            socket
                .recv(|b| {
                    received.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
        }
        received.len() == data.len()
    });
    assert!(received == data, "echo differs from what was sent");
    lab.sockets.get_mut::<tcp::Socket>(handle).close();
    lab.run_until(10_000, |lab| {
        lab.sockets.get::<tcp::Socket>(handle).state() == tcp::State::TimeWait
            && lab.probe.connections() == 0
    });
    lab.sockets.remove(handle);
}

#[test]
fn tcp_echo_is_byte_exact_for_1_byte_64k_and_1m() {
    let mut lab = Lab::new();
    for (i, len) in [1, 64 * 1024, 1024 * 1024].into_iter().enumerate() {
        echo_over_tcp(&mut lab, 40_000 + i as u16, &pattern(len));
    }
    let stack = lab.probe.stack_counters();
    assert_eq!(stack.accepted, 3);
    assert_eq!(stack.closed, 3);
    assert_eq!(lab.probe.counters().tcp_bytes, 1 + 64 * 1024 + 1024 * 1024);
    assert_eq!(lab.probe.connections(), 0);
}

#[test]
fn a_burst_of_connects_is_accepted_not_reset() {
    let mut lab = Lab::new();
    let handles: Vec<_> = (0..300).map(|i| lab.tcp_socket(30_000 + i)).collect();
    lab.run_until(10_000, |lab| {
        handles
            .iter()
            .all(|&h| lab.sockets.get::<tcp::Socket>(h).state() == tcp::State::Established)
    });
    assert_eq!(lab.probe.connections(), 300);
    for &h in &handles {
        lab.sockets.get_mut::<tcp::Socket>(h).abort();
    }
    lab.run_until(1_000, |lab| lab.probe.connections() == 0);
}

#[test]
fn udp_echo_returns_each_datagram_to_its_sender() {
    let mut lab = Lab::new();
    let socket = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
    );
    let handle = lab.sockets.add(socket);
    lab.sockets
        .get_mut::<udp::Socket>(handle)
        .bind(5000)
        .unwrap();
    let target = IpEndpoint::new(IpAddress::Ipv4(PROBE_ADDR), 7);
    for payload in [&b"x"[..], &pattern(1400)] {
        lab.sockets
            .get_mut::<udp::Socket>(handle)
            .send_slice(payload, target)
            .unwrap();
        let mut echoed = None;
        lab.run_until(1_000, |lab| {
            if let Ok((data, meta)) = lab.sockets.get_mut::<udp::Socket>(handle).recv() {
                assert_eq!(meta.endpoint, target);
                echoed = Some(data.to_vec());
            }
            echoed.is_some()
        });
        assert_eq!(echoed.unwrap(), payload);
    }
    assert_eq!(lab.probe.counters().udp_datagrams, 2);
}

#[test]
fn ping_is_answered_after_arp_resolves() {
    let mut lab = Lab::new();
    let socket = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    );
    let handle = lab.sockets.add(socket);
    lab.sockets
        .get_mut::<icmp::Socket>(handle)
        .bind(icmp::Endpoint::Ident(0x1234))
        .unwrap();
    let request = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"rauta",
    };
    let mut sent = false;
    let mut replied = false;
    lab.run_until(2_000, |lab| {
        let socket = lab.sockets.get_mut::<icmp::Socket>(handle);
        if !sent && socket.can_send() {
            let buf = socket
                .send(request.buffer_len(), IpAddress::Ipv4(PROBE_ADDR))
                .unwrap();
            request.emit(&mut Icmpv4Packet::new_unchecked(buf), &Default::default());
            sent = true;
        }
        if let Ok((data, from)) = socket.recv() {
            let packet = Icmpv4Packet::new_checked(data).unwrap();
            let repr = Icmpv4Repr::parse(&packet, &Default::default()).unwrap();
            assert_eq!(from, IpAddress::Ipv4(PROBE_ADDR));
            assert!(matches!(
                repr,
                Icmpv4Repr::EchoReply {
                    seq_no: 1,
                    data: b"rauta",
                    ..
                }
            ));
            replied = true;
        }
        replied
    });
}
