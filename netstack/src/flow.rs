//! What a frame is, and which worker owns its flow.
//!
//! [`classify`] reads just enough of a frame (zero-copy smoltcp `wire` views)
//! to route it: to a connection by its 4-tuple, to a listener, or to the
//! stack's control path (ARP, ICMP, anything else). [`FlowOwnership`] maps a
//! flow to its worker with the Toeplitz hash NICs use for RSS (Microsoft RSS
//! spec, "Verifying the RSS hash calculation"), so that on a NIC with RSS
//! the owner is the queue the NIC picks, and on veth any worker can tell the
//! owner without asking anyone.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket,
};

/// A transport flow seen from our side: the peer's address and port and our
/// port (the local address is the stack's one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub remote_addr: Ipv4Address,
    pub remote_port: u16,
    pub local_port: u16,
}

/// What a received frame is, for dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// ARP: every worker's neighbour cache wants it.
    Arp,
    /// A TCP segment to `local_addr`.
    Tcp {
        local_addr: Ipv4Address,
        flow: FlowKey,
        /// SYN without ACK: the opening of a connection.
        syn_only: bool,
        rst: bool,
    },
    /// A UDP datagram to `local_addr`.
    Udp {
        local_addr: Ipv4Address,
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
        EthernetProtocol::Arp => FrameKind::Arp,
        EthernetProtocol::Ipv4 => classify_ipv4(eth.payload()),
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
    let (remote_addr, local_addr) = (ip.src_addr(), ip.dst_addr());
    match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
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
            let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
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

    /// The RSS hash of a TCP/UDP flow arriving from `remote` at `local`.
    pub fn hash(&self, local_addr: Ipv4Address, flow: &FlowKey) -> u32 {
        let mut input = [0u8; 12];
        input[0..4].copy_from_slice(&flow.remote_addr.octets());
        input[4..8].copy_from_slice(&local_addr.octets());
        input[8..10].copy_from_slice(&flow.remote_port.to_be_bytes());
        input[10..12].copy_from_slice(&flow.local_port.to_be_bytes());
        toeplitz(&self.key, &input)
    }

    /// The worker that owns the flow.
    pub fn owner(&self, local_addr: Ipv4Address, flow: &FlowKey) -> usize {
        let bucket = self.hash(local_addr, flow) as usize % self.table.len();
        usize::from(self.table[bucket])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, IpAddress, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber,
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
                remote_addr: Ipv4Address::from(src),
                remote_port: sport,
                local_port: dport,
            };
            assert_eq!(
                ownership.hash(Ipv4Address::from(dst), &flow),
                want,
                "{src:?}:{sport}"
            );
        }
    }

    #[test]
    fn owners_spread_over_workers_and_are_stable() {
        let ownership = FlowOwnership::new(2);
        let local = Ipv4Address::new(198, 18, 0, 1);
        let mut counts = [0usize; 2];
        for port in 40_000..41_000 {
            let flow = FlowKey {
                remote_addr: Ipv4Address::new(198, 18, 0, 10),
                remote_port: port,
                local_port: 7,
            };
            let owner = ownership.owner(local, &flow);
            assert_eq!(owner, ownership.owner(local, &flow));
            counts[owner] += 1;
        }
        assert!(counts.iter().all(|&c| c > 400), "{counts:?}");
    }

    fn tcp_frame(control: TcpControl, ack: bool) -> Vec<u8> {
        let src = Ipv4Address::new(198, 18, 0, 10);
        let dst = Ipv4Address::new(198, 18, 0, 1);
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 7,
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
        };
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
        assert_eq!(local_addr, Ipv4Address::new(198, 18, 0, 1));
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
}
