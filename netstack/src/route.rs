//! Routes to what is off the link: destination prefixes and the next hop
//! on the link each is reached through, as the node's kernel routes them
//! (kindnet's and Calico's pod CIDRs via other nodes, a default route).
//!
//! The stack hands those through a neighbour on its link to smoltcp's
//! interface, which picks the longest match for every packet to an address
//! off its own subnet; the [`Stack`](crate::Stack) asks for the next hop's
//! hardware address when a connection through it opens, as it does for
//! neighbours on the link. Routes out of the node's other devices are kept
//! too, so a more specific one (this node's own pods, behind its kernel)
//! says the stack cannot reach what a broader one would send away. IPv4
//! and IPv6 routes share one set; a lookup only ever matches its family.

use smoltcp::wire::{IpAddress, IpCidr, Ipv6Cidr};

/// The most routes a stack holds (smoltcp's table is a fixed array,
/// searched per packet to an off-link address); past it, the most specific
/// are kept.
pub const MAX_ROUTES: usize = 256;

/// One route: where packets to `destination` go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: IpCidr,
    pub hop: Hop,
}

/// Where a route leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Through this neighbour on the stack's link.
    Via(IpAddress),
    /// Out of another device of the node (a pod's veth or bridge on the
    /// gateway's own node, a tunnel): the node's kernel reaches it, the
    /// stack does not.
    Elsewhere,
}

/// A set of routes, most specific first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The routes in `routes`, most specific first, duplicates of a
    /// destination dropped (the first wins, as the kernel's lowest metric
    /// does when the caller lists them in metric order).
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(|r| Route {
                destination: network(r.destination),
                hop: r.hop,
            })
            .collect();
        // Stable: among equal prefixes the caller's order stands.
        routes.sort_by_key(|r| std::cmp::Reverse(r.destination.prefix_len()));
        let mut seen = std::collections::HashSet::new();
        routes.retain(|r| seen.insert(r.destination));
        Self { routes }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Where `to` goes: the longest matching route's hop.
    pub fn hop(&self, to: IpAddress) -> Option<Hop> {
        self.routes
            .iter()
            .find(|r| r.destination.contains_addr(&to))
            .map(|r| r.hop)
    }
}

/// `cidr` with its host bits cleared.
fn network(cidr: IpCidr) -> IpCidr {
    match cidr {
        IpCidr::Ipv4(c) => IpCidr::Ipv4(c.network()),
        IpCidr::Ipv6(c) => {
            let bits = u128::from(c.address());
            let len = u32::from(c.prefix_len());
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpCidr::Ipv6(Ipv6Cidr::new((bits & mask).into(), c.prefix_len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> IpAddress {
        text.parse::<std::net::IpAddr>().unwrap().into()
    }

    fn route(destination: &str, via: &str) -> Route {
        let (prefix, len) = destination.split_once('/').unwrap();
        Route {
            destination: IpCidr::new(address(prefix), len.parse().unwrap()),
            hop: match via {
                "elsewhere" => Hop::Elsewhere,
                via => Hop::Via(address(via)),
            },
        }
    }

    fn via(text: &str) -> Option<Hop> {
        Some(Hop::Via(address(text)))
    }

    #[test]
    fn the_longest_match_wins_and_the_default_route_catches_the_rest() {
        let routes = Routes::new([
            route("0.0.0.0/0", "198.18.0.254"),
            route("10.244.1.0/24", "198.18.0.21"),
            route("10.244.0.0/16", "198.18.0.22"),
        ]);
        let hop = |to: &str| routes.hop(address(to));
        assert_eq!(hop("10.244.1.7"), via("198.18.0.21"));
        assert_eq!(hop("10.244.2.7"), via("198.18.0.22"));
        assert_eq!(hop("192.0.2.1"), via("198.18.0.254"));
        let narrow = Routes::new([route("10.0.0.0/8", "198.18.0.2")]);
        assert_eq!(narrow.hop(address("11.0.0.1")), None);
    }

    #[test]
    fn a_node_local_pod_cidr_inside_the_default_route_stays_the_kernels() {
        let routes = Routes::new([
            route("0.0.0.0/0", "198.18.0.254"),
            route("10.244.0.0/24", "elsewhere"),
        ]);
        assert_eq!(routes.hop(address("10.244.0.5")), Some(Hop::Elsewhere));
        assert_eq!(routes.hop(address("10.244.1.5")), via("198.18.0.254"));
    }

    #[test]
    fn a_destination_is_kept_once_and_host_bits_are_cleared() {
        let routes = Routes::new([
            route("10.244.1.9/24", "198.18.0.21"),
            route("10.244.1.0/24", "198.18.0.22"),
        ]);
        assert_eq!(routes.len(), 1);
        let only = routes.iter().next().unwrap();
        assert_eq!(only.destination.address(), address("10.244.1.0"));
        assert_eq!(Some(only.hop), via("198.18.0.21"));
    }

    #[test]
    fn each_family_matches_its_own_routes_only() {
        let routes = Routes::new([
            route("0.0.0.0/0", "198.18.0.254"),
            route("::/0", "2001:2::254"),
            route("2001:2:0:2::/64", "2001:2::32"),
        ]);
        assert_eq!(routes.hop(address("2001:2:0:2::2")), via("2001:2::32"));
        assert_eq!(routes.hop(address("2001:db8::1")), via("2001:2::254"));
        assert_eq!(routes.hop(address("192.0.2.1")), via("198.18.0.254"));
        let cleared = Routes::new([route("2001:2:0:2::9/64", "2001:2::32")]);
        let only = cleared.iter().next().unwrap();
        assert_eq!(only.destination.address(), address("2001:2:0:2::"));
        let only_v4 = Routes::new([route("0.0.0.0/0", "198.18.0.254")]);
        assert_eq!(only_v4.hop(address("2001:db8::1")), None);
    }
}
