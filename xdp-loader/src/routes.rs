//! The kernel's IPv4 and IPv6 routes, read and followed over rtnetlink.
//!
//! A node reaches pods on other nodes through routes: kindnet and Calico
//! (BGP) install one per node's pod CIDR via that node's address, and the
//! node has a default route. The userspace stack owns no routing table of
//! its own; it takes these, so `ip route` on the node is the one place an
//! operator or a CNI changes where traffic goes. A route out of the
//! gateway's interface through a next hop is the stack's to use; one out of
//! another device (a pod's veth on this node, a bridge, a tunnel) says the
//! node's kernel must carry that traffic.

use crate::netlink::{request, watch};
use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// `RTNLGRP_IPV4_ROUTE` from `linux/rtnetlink.h`: IPv4 route changes.
const RTNLGRP_IPV4_ROUTE: u32 = 7;
/// `RTNLGRP_IPV6_ROUTE`: IPv6 route changes.
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// One unicast route of the kernel's main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub destination: IpAddr,
    pub prefix_len: u8,
    /// The next hop; none for a route straight onto a device's link.
    pub gateway: Option<IpAddr>,
    /// The device it leaves by (none for a multipath route).
    pub oif: Option<u32>,
    /// The kernel's metric: lower wins among routes to one destination.
    pub priority: u32,
}

/// The main table's IPv4 and IPv6 unicast routes, lowest metric first.
pub fn routes() -> io::Result<Vec<KernelRoute>> {
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut message = RouteMessage::default();
        message.header.address_family = family;
        let replies = request(RouteNetlinkMessage::GetRoute(message), NLM_F_DUMP)?;
        routes.extend(replies.iter().filter_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(route) => kernel_route(route),
            _ => None,
        }));
    }
    routes.sort_by_key(|r| r.priority);
    Ok(routes)
}

fn kernel_route(route: &RouteMessage) -> Option<KernelRoute> {
    let header = &route.header;
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    if header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(header.table);
    let (mut destination, mut gateway, mut oif, mut priority) = (unspecified, None, None, 0);
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => destination = (*d).into(),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => destination = (*d).into(),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some((*g).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some((*g).into()),
            RouteAttribute::Oif(o) => oif = Some(*o),
            RouteAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(KernelRoute {
        destination,
        prefix_len: header.destination_prefix_length,
        gateway,
        oif,
        priority,
    })
}

/// Follow the routes: `on_change` gets the whole set at
/// the start and again after every change the kernel announces, until
/// `stop` is set. Announcements are read every `interval` at most; a
/// change is re-read whole (a route table is small, and a burst of changes
/// is read once).
pub fn follow(
    interval: Duration,
    stop: &AtomicBool,
    mut on_change: impl FnMut(io::Result<Vec<KernelRoute>>),
) -> io::Result<()> {
    watch(
        &[RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE],
        interval,
        stop,
        |changed| {
            if changed {
                on_change(routes());
            }
        },
    )
}
