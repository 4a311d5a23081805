//! What the kernel reports about an interface's XDP attachment, and legacy
//! (netlink) attach and detach, over rtnetlink.
//!
//! Links made with `bpf_link_create` vanish with their owner; programs
//! attached through netlink stay until someone detaches them. This module is
//! how Rauta finds such a leftover and removes it.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// XDP_FLAGS_SKB_MODE from `linux/if_link.h`.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// XDP_FLAGS_DRV_MODE from `linux/if_link.h`.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// How a program is attached to an interface, as netlink reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// Native (driver) XDP.
    Driver,
    /// Generic (skb) XDP.
    Generic,
    /// Offloaded to the NIC.
    Hardware,
    /// Several programs in different modes.
    Multiple,
}

impl AttachedMode {
    /// The `XDP_FLAGS_*` that address this mode in a netlink request.
    pub fn flags(self) -> u32 {
        match self {
            Self::Generic => XDP_FLAGS_SKB_MODE,
            _ => XDP_FLAGS_DRV_MODE,
        }
    }
}

/// The program attached to an interface, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The kernel's id of the attached program.
    pub prog_id: u32,
    /// The mode it runs in.
    pub mode: AttachedMode,
}

pub(crate) fn socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

pub(crate) fn request(
    message: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    let socket = socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut replies = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                // An ACK (error 0) or DONE ends the exchange.
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::InnerMessage(m) => {
                    replies.push(m);
                    if flags & (NLM_F_ACK | NLM_F_DUMP) == 0 {
                        return Ok(replies);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// Call `pass` every `interval` until `stop`: with `true` at the start
/// and whenever the kernel announced something in one of the multicast
/// `groups` since the last pass (or announcements were lost), with `false`
/// otherwise.
pub(crate) fn watch(
    groups: &[u32],
    interval: Duration,
    stop: &AtomicBool,
    mut pass: impl FnMut(bool),
) -> io::Result<()> {
    let events = socket()?;
    for &group in groups {
        events.add_membership(group)?;
    }
    events.set_non_blocking(true)?;
    pass(true);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(interval);
        let mut changed = false;
        loop {
            match events.recv(&mut &mut buf[..], 0) {
                Ok(_) => changed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Announcements lost (ENOBUFS): read everything again.
                Err(_) => {
                    changed = true;
                    break;
                }
            }
        }
        pass(changed);
    }
    Ok(())
}

/// The addresses the kernel holds on interface `ifindex` (IPv4, then
/// IPv6), with their prefix lengths, in the kernel's order (the primary
/// first).
pub fn addresses(ifindex: u32) -> io::Result<Vec<(std::net::IpAddr, u8)>> {
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    use netlink_packet_route::AddressFamily;
    let mut found = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut message = AddressMessage::default();
        message.header.family = family;
        let replies = request(RouteNetlinkMessage::GetAddress(message), NLM_F_DUMP)?;
        found.extend(replies.iter().filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == ifindex => {
                // IPv4 says its own address in `Local`, IPv6 in `Address`.
                a.attributes.iter().find_map(|attribute| match attribute {
                    AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                        Some((*ip, a.header.prefix_len))
                    }
                    _ => None,
                })
            }
            _ => None,
        }));
    }
    Ok(found)
}

fn link_message(ifindex: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    message.attributes = attributes;
    message
}

/// The XDP program attached to `ifindex`, if any.
pub fn query(ifindex: u32) -> io::Result<Option<Attachment>> {
    let replies = request(
        RouteNetlinkMessage::GetLink(link_message(ifindex, Vec::new())),
        0,
    )?;
    for reply in replies {
        let RouteNetlinkMessage::NewLink(link) = reply else {
            continue;
        };
        for attribute in link.attributes {
            let LinkAttribute::Xdp(xdp) = attribute else {
                continue;
            };
            let mut mode = None;
            let mut prog_id = 0;
            for nla in xdp {
                match nla {
                    LinkXdp::Attached(XdpAttached::Driver) => mode = Some(AttachedMode::Driver),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => {
                        mode = Some(AttachedMode::Generic)
                    }
                    LinkXdp::Attached(XdpAttached::Hardware) => mode = Some(AttachedMode::Hardware),
                    LinkXdp::Attached(XdpAttached::Multiple) => mode = Some(AttachedMode::Multiple),
                    LinkXdp::ProgId(id) => prog_id = id,
                    _ => {}
                }
            }
            if let Some(mode) = mode {
                return Ok(Some(Attachment { prog_id, mode }));
            }
        }
    }
    Ok(None)
}

/// Attach `prog_fd` through netlink (no BPF link: it stays after we exit).
pub fn attach(ifindex: u32, prog_fd: RawFd, flags: u32) -> io::Result<()> {
    set_xdp_fd(ifindex, prog_fd, flags)
}

/// Detach whatever program runs in the mode `flags` addresses.
///
/// Fails with `EBUSY` when the program is held by a BPF link.
pub fn detach(ifindex: u32, flags: u32) -> io::Result<()> {
    set_xdp_fd(ifindex, -1, flags)
}

fn set_xdp_fd(ifindex: u32, fd: RawFd, flags: u32) -> io::Result<()> {
    let xdp = LinkAttribute::Xdp(vec![LinkXdp::Fd(fd), LinkXdp::Flags(flags)]);
    request(
        RouteNetlinkMessage::SetLink(link_message(ifindex, vec![xdp])),
        NLM_F_ACK,
    )
    .map(drop)
}
