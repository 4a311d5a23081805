//! Neighbour resolution ahead of need (ARP, RFC 826; IPv6 neighbour
//! discovery, RFC 4861 §7), by the stack's own requests or from the
//! kernel's table.
//!
//! smoltcp sends at most one ARP request per second per interface: its
//! neighbour cache's rate limit is global, not per address. A worker that
//! opens connections to N backends it has not resolved yet would send the
//! first SYN at once and the last after N seconds (in the lab, three
//! endpoints cost the first seconds of traffic a p99 near one second).
//! IPv6 neighbour solicitations share the same limit. So the stack asks for
//! a next hop itself (an ARP request, or a solicitation to the target's
//! solicited-node group) when a connection to it opens and nothing from it
//! has been heard lately; smoltcp's cache fills from the reply as usual,
//! and connections waiting for it are woken.
//!
//! On the node's own address the kernel keeps ARP, so replies never reach
//! the stack. There the neighbours come from the kernel's table
//! ([`NeighbourTable`], followed by the driver) and from the SYNs of
//! clients on the link; the stack hands smoltcp each one as the ARP reply
//! it would have heard, and what the table lacks it asks the kernel for.

use crate::stack::FastMap;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Address, Ipv6Address,
    Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};

/// How long an address counts as resolved after an ARP from it: well
/// inside smoltcp's 60 s entry lifetime, so a connection opened later asks
/// again (one frame) rather than risk the global rate limit.
pub(crate) const HEARD_FOR: Duration = Duration::from_secs(30);
/// How soon a request unanswered is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Past this many addresses, old records are dropped.
const PRUNE_OVER: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Record {
    heard: Option<Instant>,
    asked: Option<Instant>,
}

/// What this stack knows of its neighbours, and the requests it owes.
#[derive(Debug, Default)]
pub(crate) struct Resolver {
    records: FastMap<IpAddress, Record>,
    /// Requests to send at the next egress.
    pending: Vec<IpAddress>,
}

impl Resolver {
    /// A connection to `address` (on the link) is opening: ask for it
    /// unless it was heard from lately or asked for a moment ago.
    pub fn want(&mut self, address: IpAddress, now: Instant) {
        if self.records.len() > PRUNE_OVER {
            self.records
                .retain(|_, r| r.heard.or(r.asked).is_some_and(|at| now < at + HEARD_FOR));
        }
        let record = self.records.entry(address).or_insert(Record {
            heard: None,
            asked: None,
        });
        let fresh = record.heard.is_some_and(|at| now < at + HEARD_FOR);
        let asked = record.asked.is_some_and(|at| now < at + RETRY_AFTER);
        if !fresh && !asked {
            record.asked = Some(now);
            self.pending.push(address);
        }
    }

    /// An ARP or neighbour discovery frame from `address`, aimed at us,
    /// arrived. Returns whether it answers a request of ours not answered
    /// since: only then may connections be waiting for it, so only then
    /// are they looked for (unsolicited ARP, a flood of it included, costs
    /// no scan).
    pub fn heard(&mut self, address: IpAddress, now: Instant) -> bool {
        let record = self.records.entry(address).or_insert(Record {
            heard: None,
            asked: None,
        });
        let answers = record
            .asked
            .is_some_and(|asked| record.heard.is_none_or(|heard| heard < asked));
        record.heard = Some(now);
        answers
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next request owed, taken.
    pub fn next_pending(&mut self) -> Option<IpAddress> {
        self.pending.pop()
    }

    /// Give a request back (no frame to send it in).
    pub fn defer(&mut self, address: IpAddress) {
        self.pending.push(address);
    }

    /// Addresses known to the resolver and not heard from for
    /// [`HEARD_FOR`]: smoltcp's entry for them is due to expire.
    pub fn stale(&self, now: Instant) -> impl Iterator<Item = IpAddress> + '_ {
        self.records
            .iter()
            .filter(move |(_, r)| r.heard.is_none_or(|at| now >= at + HEARD_FOR))
            .map(|(&a, _)| a)
    }

    /// Drop what is known of `address`.
    pub fn forget(&mut self, address: IpAddress) {
        self.records.remove(&address);
    }

    /// Whether `address` was heard from lately.
    pub fn fresh(&self, address: IpAddress, now: Instant) -> bool {
        self.records
            .get(&address)
            .and_then(|r| r.heard)
            .is_some_and(|at| now < at + HEARD_FOR)
    }
}

/// Where the stack's neighbours come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NeighbourSource {
    /// Its own ARP: the stack answers and asks on a dedicated address.
    #[default]
    Arp,
    /// The kernel's table ([`crate::Stack::set_neighbours`]) and the SYNs
    /// of clients on the link: the node's kernel keeps ARP for its address.
    Kernel,
}

/// The kernel's resolved neighbours on the gateway's interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeighbourTable(FastMap<IpAddress, EthernetAddress>);

impl NeighbourTable {
    pub fn new(entries: impl IntoIterator<Item = (IpAddress, EthernetAddress)>) -> Self {
        Self(entries.into_iter().collect())
    }

    pub fn get(&self, address: IpAddress) -> Option<EthernetAddress> {
        self.0.get(&address).copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The ARP reply `neighbour` at `mac` would send (`us`, `our_mac`): how a
/// neighbour learned elsewhere is handed to smoltcp, whose cache has no
/// other door.
pub(crate) fn reply_frame(
    neighbour: Ipv4Address,
    mac: EthernetAddress,
    us: Ipv4Address,
    our_mac: EthernetAddress,
) -> [u8; REQUEST_LEN] {
    let mut buf = [0u8; REQUEST_LEN];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: mac,
        dst_addr: our_mac,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut frame);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: neighbour,
        target_hardware_addr: our_mac,
        target_protocol_addr: us,
    }
    .emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

/// The neighbour advertisement `neighbour` at `mac` would send us (`us`,
/// `our_mac`) in answer to a solicitation: IPv6's [`reply_frame`].
pub(crate) fn advertisement_frame(
    neighbour: Ipv6Address,
    mac: EthernetAddress,
    us: Ipv6Address,
    our_mac: EthernetAddress,
) -> [u8; NDISC_LEN] {
    let mut buf = [0u8; NDISC_LEN];
    let advert = NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
        target_addr: neighbour,
        lladdr: Some(RawHardwareAddress::from(mac)),
    };
    emit_ndisc(&mut buf, (mac, our_mac), (neighbour, us), advert);
    buf
}

/// A device holding one received frame and sending nothing: smoltcp takes
/// an ARP reply through it.
pub(crate) struct OneFrame<'a>(pub Option<&'a [u8]>);

pub(crate) struct OneRx<'a>(&'a [u8]);

/// Whatever smoltcp would answer to a frame given this way is dropped (an
/// ARP reply needs no answer).
pub(crate) struct Discard;

impl phy::RxToken for OneRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Discard {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        f(&mut vec![0; len])
    }
}

impl Device for OneFrame<'_> {
    type RxToken<'b>
        = OneRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Discard
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.0.take().map(|frame| (OneRx(frame), Discard))
    }

    fn transmit(&mut self, _: Instant) -> Option<Self::TxToken<'_>> {
        None
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The sender of `frame` if it is an ARP packet aimed at `us`.
pub(crate) fn arp_sender(frame: &[u8], us: Ipv4Address) -> Option<Ipv4Address> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let packet = ArpPacket::new_checked(ethernet.payload()).ok()?;
    match ArpRepr::parse(&packet).ok()? {
        ArpRepr::EthernetIpv4 {
            source_protocol_addr,
            target_protocol_addr,
            ..
        } if target_protocol_addr == us => Some(source_protocol_addr),
        _ => None,
    }
}

/// The neighbour `frame` tells us the link-layer address of, if it is
/// neighbour discovery aimed at `us`: an advertisement (of its target) or
/// a solicitation for us (from its sender).
pub(crate) fn ndisc_sender(frame: &[u8], us: Ipv6Address) -> Option<Ipv6Address> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv6Packet::new_checked(ethernet.payload()).ok()?;
    if ip.next_header() != IpProtocol::Icmpv6 {
        return None;
    }
    let icmp = Icmpv6Packet::new_checked(ip.payload()).ok()?;
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    match Icmpv6Repr::parse(&src, &dst, &icmp, &ChecksumCapabilities::default()).ok()? {
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            target_addr,
            lladdr: Some(_),
            ..
        }) if dst == us || dst.is_multicast() => Some(target_addr),
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr,
            lladdr: Some(_),
        }) if target_addr == us => Some(src),
        _ => None,
    }
}

/// The solicited-node multicast group of `address` (RFC 4291 §2.7.1).
pub(crate) fn solicited_node(address: Ipv6Address) -> Ipv6Address {
    let o = address.octets();
    Ipv6Address::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The length of a neighbour solicitation or advertisement frame with one
/// link-layer address option: Ethernet, IPv6, the message and the option.
pub(crate) const NDISC_LEN: usize = 14 + 40 + 24 + 8;

/// A neighbour solicitation for `target` from (`mac`, `address`) to the
/// target's solicited-node group, written into `buf` of [`NDISC_LEN`]
/// bytes.
pub(crate) fn emit_solicitation(
    buf: &mut [u8],
    mac: EthernetAddress,
    address: Ipv6Address,
    target: Ipv6Address,
) {
    let group = solicited_node(target);
    let g = group.octets();
    // 33:33 and the group's low 32 bits (RFC 2464 §7).
    let group_mac = EthernetAddress([0x33, 0x33, g[12], g[13], g[14], g[15]]);
    let solicit = NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(mac)),
    };
    emit_ndisc(buf, (mac, group_mac), (address, group), solicit);
}

/// Neighbour discovery `message` from (`src_mac`, `src`) to (`dst_mac`,
/// `dst`), written into `buf` of [`NDISC_LEN`] bytes.
fn emit_ndisc(
    buf: &mut [u8],
    (src_mac, dst_mac): (EthernetAddress, EthernetAddress),
    (src, dst): (Ipv6Address, Ipv6Address),
    message: NdiscRepr<'_>,
) {
    let mut frame = EthernetFrame::new_unchecked(buf);
    EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut frame);
    let icmp = Icmpv6Repr::Ndisc(message);
    let mut ip = Ipv6Packet::new_unchecked(frame.payload_mut());
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    }
    .emit(&mut ip);
    icmp.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(ip.payload_mut()),
        &ChecksumCapabilities::default(),
    );
}

/// The length of a broadcast ARP request frame.
pub(crate) const REQUEST_LEN: usize = 14 + 28;

/// A broadcast ARP request for `target` from (`mac`, `address`), written
/// into `buf` of [`REQUEST_LEN`] bytes.
pub(crate) fn emit_request(
    buf: &mut [u8],
    mac: EthernetAddress,
    address: Ipv4Address,
    target: Ipv4Address,
) {
    let ethernet = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = EthernetFrame::new_unchecked(buf);
    ethernet.emit(&mut frame);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: address,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);
    const PEER: Ipv4Address = Ipv4Address::new(198, 18, 0, 20);
    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    #[test]
    fn asks_once_per_retry_period_until_heard_and_again_when_stale() {
        let peer = IpAddress::Ipv4(PEER);
        let mut r = Resolver::default();
        let t0 = Instant::from_millis(1_000);
        r.want(peer, t0);
        r.want(peer, t0 + Duration::from_millis(50));
        assert_eq!(r.next_pending(), Some(peer));
        assert_eq!(r.next_pending(), None, "asked once");
        r.want(peer, t0 + RETRY_AFTER);
        assert_eq!(r.next_pending(), Some(peer), "unanswered: asked again");
        let heard = t0 + Duration::from_secs(1);
        assert!(r.heard(peer, heard), "the answer to our request");
        assert!(!r.heard(peer, heard), "heard again, unasked: nothing waits");
        let stranger = IpAddress::Ipv4(Ipv4Address::new(198, 18, 0, 99));
        assert!(!r.heard(stranger, heard), "unsolicited ARP costs no scan");
        r.want(peer, heard + Duration::from_secs(1));
        assert!(!r.has_pending(), "heard lately");
        r.want(peer, heard + HEARD_FOR);
        assert_eq!(r.next_pending(), Some(peer), "stale");
    }

    #[test]
    fn a_request_emitted_parses_back_and_a_reply_to_us_names_its_sender() {
        let mut buf = [0u8; REQUEST_LEN];
        emit_request(&mut buf, MAC, US, PEER);
        // Our own request is aimed at the peer, not us.
        assert_eq!(arp_sender(&buf, US), None);
        assert_eq!(arp_sender(&buf, PEER), Some(US));
        assert_eq!(arp_sender(&buf[..20], PEER), None, "truncated");
    }

    #[test]
    fn a_solicitation_emitted_parses_back_and_names_its_sender_to_the_target() {
        let (us, peer): (Ipv6Address, Ipv6Address) =
            ("2001:2::10".parse().unwrap(), "2001:2::20".parse().unwrap());
        let mut buf = [0u8; NDISC_LEN];
        emit_solicitation(&mut buf, MAC, us, peer);
        assert_eq!(&buf[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x20]);
        assert_eq!(
            solicited_node(peer),
            "ff02::1:ff00:20".parse::<Ipv6Address>().unwrap()
        );
        assert_eq!(
            ndisc_sender(&buf, peer),
            Some(us),
            "the peer hears who asks"
        );
        assert_eq!(ndisc_sender(&buf, us), None, "not a solicitation for us");
        assert_eq!(ndisc_sender(&buf[..60], peer), None, "truncated");
    }

    #[test]
    fn an_advertisement_made_for_smoltcp_parses_back_to_its_neighbour() {
        let (us, peer): (Ipv6Address, Ipv6Address) =
            ("2001:2::2".parse().unwrap(), "2001:2::32".parse().unwrap());
        let frame = advertisement_frame(peer, EthernetAddress([2, 0, 0, 0, 0, 9]), us, MAC);
        assert_eq!(ndisc_sender(&frame, us), Some(peer));
    }
}
