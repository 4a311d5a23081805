//! The kernel's neighbours (its ARP and IPv6 neighbour tables) on one
//! interface, read, followed and asked for over rtnetlink.
//!
//! On the node's own address the kernel keeps ARP and neighbour discovery:
//! requests for the address and replies to it go to the kernel, not to the
//! userspace stack.
//! The stack then takes its neighbours from the kernel's table, and when it
//! needs one the kernel does not have, it asks the kernel to resolve it
//! (`NTF_USE`, as `ip neigh ... use` does), and the answer arrives as a
//! change of the table.

use crate::netlink::{request, watch};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// `RTNLGRP_NEIGH` from `linux/rtnetlink.h`: neighbour table changes.
const RTNLGRP_NEIGH: u32 = 3;

/// A resolved neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelNeighbour {
    pub address: IpAddr,
    pub mac: [u8; 6],
}

/// The resolved IPv4 and IPv6 neighbours on interface `ifindex`, by
/// address.
pub fn neighbours(ifindex: u32) -> io::Result<Vec<KernelNeighbour>> {
    let mut found = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut message = NeighbourMessage::default();
        message.header.family = family;
        let replies = request(RouteNetlinkMessage::GetNeighbour(message), NLM_F_DUMP)?;
        found.extend(replies.iter().filter_map(|reply| match reply {
            RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == ifindex => usable(n),
            _ => None,
        }));
    }
    found.sort();
    Ok(found)
}

/// An entry with a link-layer address the kernel itself would send to.
fn usable(message: &NeighbourMessage) -> Option<KernelNeighbour> {
    let header = &message.header;
    let resolved = matches!(
        header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
    );
    if !resolved {
        return None;
    }
    let (mut address, mut mac) = (None, None);
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                address = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                address = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(&bytes[..]).ok()
            }
            _ => {}
        }
    }
    let mac = mac.filter(|m| m.iter().any(|&b| b != 0) && m[0] & 1 == 0)?;
    Some(KernelNeighbour {
        address: address?,
        mac,
    })
}

/// Ask the kernel to resolve `address` on `ifindex` (it sends the ARP
/// request; the reply shows up in the table).
pub fn resolve(ifindex: u32, address: IpAddr) -> io::Result<()> {
    let mut message = NeighbourMessage::default();
    message.header.ifindex = ifindex;
    message.header.flags = NeighbourFlags::Use;
    let (family, destination) = match address {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    message.header.family = family;
    message
        .attributes
        .push(NeighbourAttribute::Destination(destination));
    request(
        RouteNetlinkMessage::NewNeighbour(message),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(drop)
}

/// Follow `ifindex`'s neighbours until `stop`: every `interval`, resolve
/// what `asks` returns, and give `on_change` the whole table at the start
/// and after every change the kernel announces.
pub fn follow(
    ifindex: u32,
    interval: Duration,
    stop: &AtomicBool,
    mut asks: impl FnMut() -> Vec<IpAddr>,
    mut on_change: impl FnMut(io::Result<Vec<KernelNeighbour>>),
) -> io::Result<()> {
    watch(&[RTNLGRP_NEIGH], interval, stop, |changed| {
        for address in asks() {
            if let Err(error) = resolve(ifindex, address) {
                tracing::debug!(%address, %error, "asking the kernel to resolve a neighbour");
            }
        }
        if changed {
            on_change(neighbours(ifindex));
        }
    })
}
