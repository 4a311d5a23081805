//! What a frame is, and which worker owns its flow.
//!
//! [`classify`] reads just enough of a frame (zero-copy smoltcp `wire` views)
//! to route it: to a connection by its 4-tuple, to a listener, or to the
//! stack's control path (ARP, neighbour discovery, ICMP, anything else). [`FlowOwnership`] maps a
//! flow to its worker with the Toeplitz hash NICs use for RSS (Microsoft RSS
//! spec, "Verifying the RSS hash calculation"), so that on a NIC with RSS
//! the owner is the queue the NIC picks, and on veth any worker can tell the
//! owner without asking anyone.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv6Message, Icmpv6Packet, IpAddress, IpProtocol,
    Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};

/// A transport flow seen from our side: the peer's address and port and our
/// port (the local address is the stack's address of the peer's family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub remote_addr: IpAddress,
    pub remote_port: u16,
    pub local_port: u16,
}

/// What a received frame is, for dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// ARP, or IPv6 neighbour discovery (RFC 4861): every worker's
    /// neighbour cache wants it.
    Neighbour,
    /// A TCP segment to `local_addr`.
    Tcp {
        local_addr: IpAddress,
        flow: FlowKey,
        /// SYN without ACK: the opening of a connection.
        syn_only: bool,
        rst: bool,
    },
    /// A UDP datagram to `local_addr`.
    Udp {
        local_addr: IpAddress,
        flow: FlowKey,
    },
    /// ICMP, IP fragments, other protocols, malformed frames: the stack's
    /// control path (it answers or drops them).
    Other,
}

/// Classify a frame. Never panics: whatever does not parse is `Other`.
pub fn classify(frame: &[u8]) -> FrameKind {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return FrameKind::Other;
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => FrameKind::Neighbour,
        EthernetProtocol::Ipv4 => classify_ipv4(eth.payload()),
        EthernetProtocol::Ipv6 => classify_ipv6(eth.payload()),
        _ => FrameKind::Other,
    }
}

fn classify_ipv4(packet: &[u8]) -> FrameKind {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return FrameKind::Other;
    };
    // Only a first (or only) fragment carries the transport header.
    if ip.frag_offset() != 0 || ip.more_frags() {
        return FrameKind::Other;
    }
    classify_transport(
        ip.src_addr().into(),
        ip.dst_addr().into(),
        ip.next_header(),
        ip.payload(),
    )
}

/// IPv6: TCP and UDP right after the fixed header; extension headers
/// (fragments among them) go to the control path.
fn classify_ipv6(packet: &[u8]) -> FrameKind {
    let Ok(ip) = Ipv6Packet::new_checked(packet) else {
        return FrameKind::Other;
    };
    let next = ip.next_header();
    if next == IpProtocol::Icmpv6 {
        let Ok(icmp) = Icmpv6Packet::new_checked(ip.payload()) else {
            return FrameKind::Other;
        };
        return match icmp.msg_type() {
            Icmpv6Message::RouterSolicit
            | Icmpv6Message::RouterAdvert
            | Icmpv6Message::NeighborSolicit
            | Icmpv6Message::NeighborAdvert
            | Icmpv6Message::Redirect => FrameKind::Neighbour,
            _ => FrameKind::Other,
        };
    }
    classify_transport(
        ip.src_addr().into(),
        ip.dst_addr().into(),
        next,
        ip.payload(),
    )
}

fn classify_transport(
    remote_addr: IpAddress,
    local_addr: IpAddress,
    protocol: IpProtocol,
    payload: &[u8],
) -> FrameKind {
    match protocol {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else {
                return FrameKind::Other;
            };
            FrameKind::Tcp {
                local_addr,
                flow: FlowKey {
                    remote_addr,
                    remote_port: tcp.src_port(),
                    local_port: tcp.dst_port(),
                },
                syn_only: tcp.syn() && !tcp.ack(),
                rst: tcp.rst(),
            }
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else {
                return FrameKind::Other;
            };
            FrameKind::Udp {
                local_addr,
                flow: FlowKey {
                    remote_addr,
                    remote_port: udp.src_port(),
                    local_port: udp.dst_port(),
                },
            }
        }
        _ => FrameKind::Other,
    }
}

/// The 40-byte key most NIC drivers default to (the Microsoft RSS spec's
/// verification key).
pub const DEFAULT_RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// The Toeplitz hash of `input` under `key` (RSS).
pub fn toeplitz(key: &[u8; 40], input: &[u8]) -> u32 {
    let mut result = 0u32;
    // The 32-bit window of the key that lines up with the current input bit.
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (i, byte) in input.iter().enumerate() {
        let next = key.get(i + 4).copied().unwrap_or(0);
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                result ^= window;
            }
            window = (window << 1) | u32::from((next >> (7 - bit)) & 1);
        }
    }
    result
}

/// Which worker owns a flow: the RSS indirection of the flow's Toeplitz
/// hash, computed over the packet as the receiving NIC sees it (source =
/// the peer, destination = us).
#[derive(Clone, Debug)]
pub struct FlowOwnership {
    key: [u8; 40],
    /// RSS indirection table: hash bucket → worker.
    table: Vec<u16>,
    workers: usize,
}

impl FlowOwnership {
    /// `workers` workers, the default key, and the table `ethtool -X equal N`
    /// sets (bucket i → i mod N), 128 buckets.
    pub fn new(workers: usize) -> Self {
        Self::with_table(
            DEFAULT_RSS_KEY,
            (0..128).map(|i| (i % workers.max(1)) as u16).collect(),
        )
    }

    /// A NIC's own key and indirection table (from `ethtool -x`).
    pub fn with_table(key: [u8; 40], table: Vec<u16>) -> Self {
        let workers = table.iter().map(|&w| usize::from(w) + 1).max().unwrap_or(1);
        Self {
            key,
            table: if table.is_empty() { vec![0] } else { table },
            workers,
        }
    }

    /// How many workers the table spreads over.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The RSS hash of a TCP/UDP flow arriving from `remote` at `local`:
    /// source address, destination address, source port, destination port,
    /// as the RSS specification lays them out for IPv4 and IPv6 alike.
    pub fn hash(&self, local_addr: IpAddress, flow: &FlowKey) -> u32 {
        let mut input = [0u8; 36];
        let addresses = match (flow.remote_addr, local_addr) {
            (IpAddress::Ipv4(remote), IpAddress::Ipv4(local)) => {
                input[0..4].copy_from_slice(&remote.octets());
                input[4..8].copy_from_slice(&local.octets());
                8
            }
            (IpAddress::Ipv6(remote), IpAddress::Ipv6(local)) => {
                input[0..16].copy_from_slice(&remote.octets());
                input[16..32].copy_from_slice(&local.octets());
                32
            }
            // Not a flow the NIC would see; hash the ports alone.
            _ => 0,
        };
        input[addresses..addresses + 2].copy_from_slice(&flow.remote_port.to_be_bytes());
        input[addresses + 2..addresses + 4].copy_from_slice(&flow.local_port.to_be_bytes());
        toeplitz(&self.key, &input[..addresses + 4])
    }

    /// The worker that owns the flow.
    pub fn owner(&self, local_addr: IpAddress, flow: &FlowKey) -> usize {
        let bucket = self.hash(local_addr, flow) as usize % self.table.len();
        usize::from(self.table[bucket])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, Icmpv6Repr, Ipv4Address, Ipv4Repr, Ipv6Address, Ipv6Repr,
        NdiscRepr, RawHardwareAddress, TcpControl, TcpRepr, TcpSeqNumber,
    };

    /// The Microsoft RSS verification suite, IPv4 with TCP ports.
    #[test]
    fn toeplitz_matches_the_rss_specification() {
        let cases = [
            // (destination, dst port, source, src port, hash)
            (
                [161, 142, 100, 80],
                1766,
                [66, 9, 149, 187],
                2794,
                0x51cc_c178u32,
            ),
            (
                [65, 69, 140, 83],
                4739,
                [199, 92, 111, 2],
                14230,
                0xc626_b0ea,
            ),
            (
                [12, 22, 207, 184],
                38024,
                [24, 19, 198, 95],
                12898,
                0x5c2b_394a,
            ),
            (
                [209, 142, 163, 6],
                2217,
                [38, 27, 205, 30],
                48228,
                0xafc7_327f,
            ),
            (
                [202, 188, 127, 2],
                1303,
                [153, 39, 163, 191],
                44251,
                0x10e8_28a2,
            ),
        ];
        let ownership = FlowOwnership::new(1);
        for (dst, dport, src, sport, want) in cases {
            let flow = FlowKey {
                remote_addr: IpAddress::Ipv4(Ipv4Address::from(src)),
                remote_port: sport,
                local_port: dport,
            };
            assert_eq!(
                ownership.hash(IpAddress::Ipv4(Ipv4Address::from(dst)), &flow),
                want,
                "{src:?}:{sport}"
            );
        }
    }

    /// The same suite's IPv6 cases with TCP ports.
    #[test]
    fn toeplitz_matches_the_rss_specification_for_ipv6() {
        let cases = [
            // (destination, dst port, source, src port, hash)
            (
                "3ffe:2501:200:3::1",
                1766,
                "3ffe:2501:200:1fff::7",
                2794,
                0x4020_7d3du32,
            ),
            (
                "ff02::1",
                4739,
                "3ffe:501:8::260:97ff:fe40:efab",
                14230,
                0xdde5_1bbf,
            ),
            (
                "fe80::200:f8ff:fe21:67cf",
                38024,
                "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
                44251,
                0x02d1_feef,
            ),
        ];
        let ownership = FlowOwnership::new(1);
        for (dst, dport, src, sport, want) in cases {
            let flow = FlowKey {
                remote_addr: IpAddress::Ipv6(src.parse().unwrap()),
                remote_port: sport,
                local_port: dport,
            };
            assert_eq!(
                ownership.hash(IpAddress::Ipv6(dst.parse().unwrap()), &flow),
                want,
                "{src}:{sport}"
            );
        }
    }

    #[test]
    fn owners_spread_over_workers_and_are_stable() {
        let ownership = FlowOwnership::new(2);
        let local = IpAddress::v4(198, 18, 0, 1);
        let mut counts = [0usize; 2];
        for port in 40_000..41_000 {
            let flow = FlowKey {
                remote_addr: IpAddress::v4(198, 18, 0, 10),
                remote_port: port,
                local_port: 7,
            };
            let owner = ownership.owner(local, &flow);
            assert_eq!(owner, ownership.owner(local, &flow));
            counts[owner] += 1;
        }
        assert!(counts.iter().all(|&c| c > 400), "{counts:?}");
    }

    /// An empty segment from port 40000 to `dst_port`.
    fn segment(dst_port: u16, control: TcpControl, ack: bool) -> TcpRepr<'static> {
        TcpRepr {
            src_port: 40000,
            dst_port,
            control,
            seq_number: TcpSeqNumber(1),
            ack_number: ack.then_some(TcpSeqNumber(1)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: b"",
        }
    }

    fn tcp_frame(control: TcpControl, ack: bool) -> Vec<u8> {
        let src = Ipv4Address::new(198, 18, 0, 10);
        let dst = Ipv4Address::new(198, 18, 0, 1);
        let tcp = segment(7, control, ack);
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0; 14 + 20 + tcp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut packet, &caps);
        let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
        tcp.emit(
            &mut segment,
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &caps,
        );
        buf
    }

    #[test]
    fn classifies_syn_data_and_garbage() {
        let syn = classify(&tcp_frame(TcpControl::Syn, false));
        let FrameKind::Tcp {
            flow,
            syn_only,
            rst,
            local_addr,
        } = syn
        else {
            panic!("{syn:?}");
        };
        assert!(syn_only && !rst);
        assert_eq!(local_addr, IpAddress::v4(198, 18, 0, 1));
        assert_eq!(flow.remote_port, 40000);
        assert_eq!(flow.local_port, 7);
        assert!(matches!(
            classify(&tcp_frame(TcpControl::Syn, true)),
            FrameKind::Tcp {
                syn_only: false,
                ..
            }
        ));
        assert!(matches!(
            classify(&tcp_frame(TcpControl::Rst, false)),
            FrameKind::Tcp { rst: true, .. }
        ));
        // Truncated anywhere: never a panic, always Other.
        let frame = tcp_frame(TcpControl::None, true);
        for len in 0..frame.len() - 1 {
            let kind = classify(&frame[..len]);
            assert!(
                matches!(kind, FrameKind::Other),
                "truncated to {len}: {kind:?}"
            );
        }
        assert_eq!(classify(&[0xff; 64]), FrameKind::Other);
    }

    /// An Ethernet frame carrying IPv6 from `src` to `dst` with `payload`
    /// written by `emit` (`len` bytes of `next_header`).
    fn ipv6_frame(
        src: Ipv6Address,
        dst: Ipv6Address,
        next_header: IpProtocol,
        len: usize,
        emit: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header,
            payload_len: len,
            hop_limit: 255,
        };
        let mut buf = vec![0; 14 + 40 + len];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv6,
        }
        .emit(&mut frame);
        let mut packet = Ipv6Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet);
        emit(packet.payload_mut());
        buf
    }

    #[test]
    fn classifies_ipv6_tcp_and_neighbour_discovery() {
        let (client, us): (Ipv6Address, Ipv6Address) =
            ("2001:2::10".parse().unwrap(), "2001:2::1".parse().unwrap());
        let tcp = segment(80, TcpControl::Syn, false);
        let caps = ChecksumCapabilities::default();
        let frame = ipv6_frame(client, us, IpProtocol::Tcp, tcp.buffer_len(), |b| {
            tcp.emit(
                &mut TcpPacket::new_unchecked(b),
                &IpAddress::Ipv6(client),
                &IpAddress::Ipv6(us),
                &caps,
            )
        });
        assert_eq!(
            classify(&frame),
            FrameKind::Tcp {
                local_addr: IpAddress::Ipv6(us),
                flow: FlowKey {
                    remote_addr: IpAddress::Ipv6(client),
                    remote_port: 40000,
                    local_port: 80,
                },
                syn_only: true,
                rst: false,
            }
        );
        let solicit = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: us,
            lladdr: Some(RawHardwareAddress::from_bytes(&[2, 0, 0, 0, 0, 2])),
        });
        let group = crate::neighbor::solicited_node(us);
        let frame = ipv6_frame(
            client,
            group,
            IpProtocol::Icmpv6,
            solicit.buffer_len(),
            |b| solicit.emit(&client, &group, &mut Icmpv6Packet::new_unchecked(b), &caps),
        );
        assert_eq!(classify(&frame), FrameKind::Neighbour);
        for len in 0..frame.len() - 1 {
            assert!(!matches!(classify(&frame[..len]), FrameKind::Tcp { .. }));
        }
    }
}
