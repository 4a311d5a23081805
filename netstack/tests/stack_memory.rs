//! Two `Stack`s over the in-memory link: connect and accept, echo, close
//! with FIN and RST from either side, ephemeral port reuse, ownership of
//! outbound ports, and the half-open bound. No privileges.

use rauta_netstack::flow::{FlowKey, FlowOwnership};
use rauta_netstack::memory::{link, MemoryDevice};
use rauta_netstack::smoltcp::socket::tcp::State;
use rauta_netstack::smoltcp::time::{Duration, Instant};
use rauta_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use rauta_netstack::{BatchDevice, ConnId, NeighbourSource, NeighbourTable, Stack, StackConfig};
use std::sync::Arc;

const SERVER: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);
const CLIENT: Ipv4Address = Ipv4Address::new(198, 18, 0, 10);

struct Pair {
    server: Stack,
    server_dev: MemoryDevice,
    client: Stack,
    client_dev: MemoryDevice,
    now: Instant,
    events: Vec<ConnId>,
    /// ARP frames never arrive (the node's kernel keeps them).
    lose_arp: bool,
}

fn is_arp(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x06][..])
}

impl Pair {
    fn new(
        tune_server: impl FnOnce(&mut StackConfig),
        tune_client: impl FnOnce(&mut StackConfig),
    ) -> Self {
        let (mut server_dev, mut client_dev) = link(1500);
        let now = Instant::from_millis(1);
        let mut server_config = StackConfig::new(
            Ipv4Cidr::new(SERVER, 24),
            EthernetAddress([2, 0, 0, 0, 0, 1]),
        );
        tune_server(&mut server_config);
        let mut client_config = StackConfig::new(
            Ipv4Cidr::new(CLIENT, 24),
            EthernetAddress([2, 0, 0, 0, 0, 2]),
        );
        tune_client(&mut client_config);
        let mut server = Stack::new(server_config, &mut server_dev, now);
        server.listen_tcp(7).unwrap();
        let client = Stack::new(client_config, &mut client_dev, now);
        Self {
            server,
            server_dev,
            client,
            client_dev,
            now,
            events: Vec::new(),
            lose_arp: false,
        }
    }

    /// One millisecond: both stacks in and out; the server echoes and
    /// closes when its peer has.
    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        for _ in 0..2 {
            if self.lose_arp {
                self.server_dev.lose_inbound(is_arp);
                self.client_dev.lose_inbound(is_arp);
            }
            self.server_dev.service();
            self.server
                .ingress(self.now, &mut self.server_dev, |_, _| {});
            self.server.take_events(&mut self.events);
            for &id in &self.events {
                let Some(socket) = self.server.tcp_mut(id) else {
                    continue;
                };
                let mut buf = [0u8; 4096];
                while socket.can_recv() && socket.can_send() {
                    let room = socket.send_capacity() - socket.send_queue();
                    let n = socket.recv_slice(&mut buf[..room.min(4096)]).unwrap();
                    socket.send_slice(&buf[..n]).unwrap();
                }
                if socket.state() == State::CloseWait && socket.send_queue() == 0 {
                    socket.close();
                }
            }
            self.server.egress(self.now, &mut self.server_dev);
            self.client_dev.service();
            self.client
                .ingress(self.now, &mut self.client_dev, |_, _| {});
            self.client.take_events(&mut self.events);
            self.client.egress(self.now, &mut self.client_dev);
            if self.lose_arp {
                self.server_dev.lose_inbound(is_arp);
                self.client_dev.lose_inbound(is_arp);
            }
        }
    }

    fn run_until(&mut self, limit: usize, mut done: impl FnMut(&mut Self) -> bool) {
        for _ in 0..limit {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!(
            "not done after {limit} ms (server {} conns, client {} conns)",
            self.server.connections(),
            self.client.connections()
        );
    }

    fn established(&mut self, ids: &[ConnId]) {
        self.run_until(5_000, |p| {
            ids.iter().all(|&id| {
                p.client
                    .tcp(id)
                    .is_some_and(|s| s.state() == State::Established)
            })
        });
    }
}

#[test]
fn outbound_connections_echo_and_close_with_fin_back_to_zero() {
    let mut pair = Pair::new(|_| {}, |_| {});
    let ids: Vec<ConnId> = (0..50)
        .map(|_| pair.client.connect((SERVER, 7)).unwrap())
        .collect();
    pair.established(&ids);
    assert_eq!(pair.server.connections(), 50);
    for (i, &id) in ids.iter().enumerate() {
        let msg = format!("hello {i}");
        pair.client
            .tcp_mut(id)
            .unwrap()
            .send_slice(msg.as_bytes())
            .unwrap();
    }
    let mut got = vec![Vec::new(); ids.len()];
    pair.run_until(2_000, |p| {
        for (i, &id) in ids.iter().enumerate() {
            let socket = p.client.tcp_mut(id).unwrap();
            while socket.can_recv() {
                socket
                    .recv(|b| {
                        got[i].extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
            }
        }
        got.iter()
            .enumerate()
            .all(|(i, g)| *g == format!("hello {i}").into_bytes())
    });
    for &id in &ids {
        pair.client.tcp_mut(id).unwrap().close();
    }
    // The server closes at once; the client holds TIME-WAIT, then frees.
    pair.run_until(2_000, |p| p.server.connections() == 0);
    pair.run_until(20_000, |p| p.client.connections() == 0);
    assert_eq!(pair.server.counters().accepted, 50);
    assert_eq!(pair.server.counters().closed, 50);
    assert_eq!(pair.client.counters().connected, 50);
}

#[test]
fn rst_from_either_side_frees_both_ends() {
    let mut pair = Pair::new(|_| {}, |_| {});
    let a = pair.client.connect((SERVER, 7)).unwrap();
    let b = pair.client.connect((SERVER, 7)).unwrap();
    pair.established(&[a, b]);
    // Client aborts a: the server frees its end.
    pair.client.tcp_mut(a).unwrap().abort();
    pair.run_until(1_000, |p| {
        p.server.connections() == 1 && p.client.tcp(a).is_none()
    });
    // The server aborts its end of b: the client sees the reset. Data from
    // the client makes b's server end show up among the server's events.
    pair.client.tcp_mut(b).unwrap().send_slice(b"x").unwrap();
    pair.now += Duration::from_millis(1);
    pair.client.egress(pair.now, &mut pair.client_dev);
    pair.server_dev.service();
    pair.server
        .ingress(pair.now, &mut pair.server_dev, |_, _| {});
    pair.server.take_events(&mut pair.events);
    let server_b = pair.events.first().copied();
    pair.server
        .tcp_mut(server_b.expect("server saw b's data"))
        .unwrap()
        .abort();
    pair.run_until(1_000, |p| {
        p.server.connections() == 0 && p.client.connections() == 0
    });
}

#[test]
fn ephemeral_ports_are_reused_after_time_wait() {
    let mut pair = Pair::new(|_| {}, |c| c.ephemeral_ports = 50_000..=50_003);
    for round in 0..12 {
        let id = pair
            .client
            .connect((SERVER, 7))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        pair.established(&[id]);
        pair.client.tcp_mut(id).unwrap().close();
        pair.run_until(20_000, |p| {
            p.client.connections() == 0 && p.server.connections() == 0
        });
    }
    // With every port held, the next connect says so instead of failing later.
    let held: Vec<_> = (0..4)
        .map(|_| pair.client.connect((SERVER, 7)).unwrap())
        .collect();
    assert!(pair.client.connect((SERVER, 7)).is_err());
    pair.established(&held);
}

#[test]
fn outbound_ports_are_chosen_so_replies_reach_the_opening_worker() {
    let ownership = FlowOwnership::new(2);
    let owner = ownership.clone();
    let mut pair = Pair::new(
        |_| {},
        move |c| {
            c.worker = 1;
            c.ownership = Some(owner);
        },
    );
    let ids: Vec<ConnId> = (0..20)
        .map(|_| pair.client.connect((SERVER, 7)).unwrap())
        .collect();
    pair.established(&ids);
    // The client stack handed nothing off: every reply hashed to worker 1.
    assert_eq!(pair.client.counters().handed_off, 0);
    for &id in &ids {
        let (addr, port) = pair.client.remote(id).unwrap();
        assert_eq!((addr, port), (SERVER.into(), 7));
    }
    // And the ports satisfy the hash as the server's replies present it.
    let mut ports = 0;
    for local_port in 32_768..=60_999u16 {
        let flow = FlowKey {
            remote_addr: SERVER.into(),
            remote_port: 7,
            local_port,
        };
        if ownership.owner(CLIENT.into(), &flow) == 1 {
            ports += 1;
        }
    }
    assert!(ports > 10_000, "too few ports for worker 1: {ports}");
}

#[test]
fn half_open_connections_are_bounded_and_established_ones_unharmed() {
    let mut pair = Pair::new(|s| s.max_half_open = 8, |_| {});
    let first: Vec<_> = (0..4)
        .map(|_| pair.client.connect((SERVER, 7)).unwrap())
        .collect();
    pair.established(&first);
    // 40 SYNs at once: at most 8 half-open at any time; each SYN past 8
    // takes the oldest one's place, silently (the client retries it), none
    // reset.
    let burst: Vec<_> = (0..40)
        .map(|_| pair.client.connect((SERVER, 7)).unwrap())
        .collect();
    let mut max_half_open = 0;
    pair.run_until(30_000, |p| {
        max_half_open = max_half_open.max(p.server.half_open());
        burst.iter().all(|&id| {
            p.client
                .tcp(id)
                .is_some_and(|s| s.state() == State::Established)
        })
    });
    assert!(max_half_open <= 8, "{max_half_open}");
    assert!(pair.server.counters().half_open_evicted > 0);
    assert_eq!(pair.server.connections(), 44);
    for &id in &first {
        assert_eq!(pair.client.tcp(id).unwrap().state(), State::Established);
    }
}

/// The ARP requests and TCP SYNs among the frames `dev` received, by the
/// address each is for.
fn arp_and_syns(dev: &mut MemoryDevice) -> (Vec<Ipv4Address>, Vec<Ipv4Address>) {
    use rauta_netstack::smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, Ipv4Packet, TcpPacket,
    };
    dev.service();
    let (mut asked, mut syns) = (Vec::new(), Vec::new());
    while let Some((frame, _)) = dev.peek() {
        let frame = EthernetFrame::new_checked(frame).unwrap();
        match frame.ethertype() {
            EthernetProtocol::Arp => {
                let packet = ArpPacket::new_checked(frame.payload()).unwrap();
                if let ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    target_protocol_addr,
                    ..
                } = ArpRepr::parse(&packet).unwrap()
                {
                    asked.push(target_protocol_addr);
                }
            }
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                if tcp.syn() && !tcp.ack() {
                    syns.push(ip.dst_addr());
                }
            }
            _ => {}
        }
        dev.discard();
    }
    for list in [&mut asked, &mut syns] {
        list.sort();
        list.dedup();
    }
    (asked, syns)
}

#[test]
fn new_next_hops_are_asked_for_at_once_not_one_a_second() {
    use rauta_netstack::smoltcp::phy::{Device, TxToken};
    use rauta_netstack::smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
    };
    let (mut peers, mut dev) = link(1500);
    let mac = EthernetAddress([2, 0, 0, 0, 0, 2]);
    let mut now = Instant::from_millis(1);
    let mut stack = Stack::new(
        StackConfig::new(Ipv4Cidr::new(CLIENT, 24), mac),
        &mut dev,
        now,
    );
    // Three backends on the segment, none resolved yet.
    let backends = [20, 21, 22].map(|h| Ipv4Address::new(198, 18, 0, h));
    for backend in backends {
        stack.connect((backend, 80)).unwrap();
    }
    stack.egress(now, &mut dev);
    let (asked, syns) = arp_and_syns(&mut peers);
    assert_eq!(asked, backends, "smoltcp alone asks for one a second");
    assert!(syns.is_empty());
    // Each answers; every SYN goes in the next pass.
    for (i, backend) in backends.into_iter().enumerate() {
        let backend_mac = EthernetAddress([2, 0, 0, 0, 1, i as u8]);
        let token = peers.transmit(now).unwrap();
        token.consume(42, |buf| {
            let mut frame = EthernetFrame::new_unchecked(buf);
            EthernetRepr {
                src_addr: backend_mac,
                dst_addr: mac,
                ethertype: EthernetProtocol::Arp,
            }
            .emit(&mut frame);
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: backend_mac,
                source_protocol_addr: backend,
                target_hardware_addr: mac,
                target_protocol_addr: CLIENT,
            }
            .emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        });
    }
    now += Duration::from_millis(1);
    dev.service();
    stack.ingress(now, &mut dev, |_, _| {});
    stack.egress(now, &mut dev);
    let (asked, syns) = arp_and_syns(&mut peers);
    assert_eq!(syns, backends, "resolved, the SYNs leave at once");
    assert!(asked.is_empty(), "nothing asked twice: {asked:?}");
    assert_eq!(stack.counters().arp_requests, 3);
}

/// Node-address mode: the kernel keeps ARP, so neither stack hears any.
/// The connecting one asks the kernel for its peer and connects once the
/// kernel's table has it; the listening one learns its client from the SYN.
#[test]
fn with_the_kernels_neighbours_a_stack_asks_the_kernel_and_learns_clients_from_their_syns() {
    let kernel = |c: &mut StackConfig| c.neighbours = NeighbourSource::Kernel;
    let mut pair = Pair::new(kernel, kernel);
    pair.lose_arp = true;
    let id = pair.client.connect((SERVER, 7)).unwrap();
    for _ in 0..300 {
        pair.step();
    }
    assert_eq!(pair.client.tcp(id).unwrap().state(), State::SynSent);
    let mut asks = Vec::new();
    pair.client.take_neighbour_asks(&mut asks);
    assert_eq!(asks, [SERVER.into()], "the kernel is asked for the peer");
    assert_eq!(pair.client.counters().arp_requests, 0, "no ARP of its own");
    let server_mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
    pair.client
        .set_neighbours(Arc::new(NeighbourTable::new([(SERVER.into(), server_mac)])));
    pair.established(&[id]);
    let socket = pair.client.tcp_mut(id).unwrap();
    socket.send_slice(b"node address").unwrap();
    let mut got = Vec::new();
    pair.run_until(1_000, |p| {
        let socket = p.client.tcp_mut(id).unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = socket.recv_slice(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got == b"node address"
    });
    assert!(
        pair.server.counters().neighbours_learned >= 1,
        "the server learned its client from the SYN"
    );
}

/// A SYN from `from`:`port` to the server's port 7 that nobody will
/// answer for: a spoofed source.
fn spoofed_syn(from: Ipv4Address, port: u16) -> Vec<u8> {
    use rauta_netstack::smoltcp::phy::ChecksumCapabilities;
    use rauta_netstack::smoltcp::wire::{
        EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
        TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    let tcp = TcpRepr {
        src_port: port,
        dst_port: 7,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(i32::from(port) * 7919),
        ack_number: None,
        window_len: 64_240,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: from,
        dst_addr: SERVER,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress([2, 0xee, 0, 0, 0, from.octets()[3]]),
        dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0; ethernet.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    ethernet.emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &caps);
    let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
    tcp.emit(&mut segment, &from.into(), &SERVER.into(), &caps);
    frame
}

#[test]
fn under_a_flood_of_spoofed_syns_real_clients_still_connect_and_the_flood_ages_out() {
    let mut pair = Pair::new(|s| s.max_half_open = 64, |_| {});
    // 10,000 spoofed SYNs, 50 a millisecond, and a real connect every
    // 10 ms meanwhile.
    let mut real = Vec::new();
    for ms in 0..200u16 {
        for k in 0..50u16 {
            let n = ms * 50 + k;
            let from = Ipv4Address::new(198, 18, 0, 100 + (n % 100) as u8);
            pair.server_dev.inject(spoofed_syn(from, 1024 + n));
        }
        if ms % 10 == 0 {
            real.push(pair.client.connect((SERVER, 7)).unwrap());
        }
        pair.step();
        assert!(pair.server.half_open() <= 64, "{}", pair.server.half_open());
    }
    // Every real client's handshake finished well within the flood: none
    // had to wait for a retransmitted SYN (1 s).
    pair.run_until(20, |p| {
        real.iter().all(|&id| {
            p.client
                .tcp(id)
                .is_some_and(|s| s.state() == State::Established)
        })
    });
    let counters = pair.server.counters();
    assert!(counters.half_open_evicted >= 9_000, "{counters:?}");
    assert_eq!(counters.syn_dropped, 0, "{counters:?}");
    // The flood's last entries go after the half-open timeout (5 s); the
    // real connections stay.
    pair.run_until(6_000, |p| p.server.half_open() == 0);
    assert_eq!(pair.server.connections(), real.len());
}
