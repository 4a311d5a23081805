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
//! says the stack cannot reach what a broader one would send away.

use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

/// The most routes a stack holds (smoltcp's table is a fixed array,
/// searched per packet to an off-link address); past it, the most specific
/// are kept.
pub const MAX_ROUTES: usize = 256;

/// One route: where packets to `destination` go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Cidr,
    pub hop: Hop,
}

/// Where a route leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Through this neighbour on the stack's link.
    Via(Ipv4Address),
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
                destination: Ipv4Cidr::new(
                    r.destination.network().address(),
                    r.destination.prefix_len(),
                ),
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
    pub fn hop(&self, to: Ipv4Address) -> Option<Hop> {
        self.routes
            .iter()
            .find(|r| r.destination.contains_addr(&to))
            .map(|r| r.hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(destination: &str, via: &str) -> Route {
        let (address, len) = destination.split_once('/').unwrap();
        Route {
            destination: Ipv4Cidr::new(address.parse().unwrap(), len.parse().unwrap()),
            hop: match via {
                "elsewhere" => Hop::Elsewhere,
                via => Hop::Via(via.parse().unwrap()),
            },
        }
    }

    fn via(address: &str) -> Option<Hop> {
        Some(Hop::Via(address.parse().unwrap()))
    }

    #[test]
    fn the_longest_match_wins_and_the_default_route_catches_the_rest() {
        let routes = Routes::new([
            route("0.0.0.0/0", "198.18.0.254"),
            route("10.244.1.0/24", "198.18.0.21"),
            route("10.244.0.0/16", "198.18.0.22"),
        ]);
        let hop = |to: &str| routes.hop(to.parse().unwrap());
        assert_eq!(hop("10.244.1.7"), via("198.18.0.21"));
        assert_eq!(hop("10.244.2.7"), via("198.18.0.22"));
        assert_eq!(hop("192.0.2.1"), via("198.18.0.254"));
        let narrow = Routes::new([route("10.0.0.0/8", "198.18.0.2")]);
        assert_eq!(narrow.hop("11.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn a_node_local_pod_cidr_inside_the_default_route_stays_the_kernels() {
        let routes = Routes::new([
            route("0.0.0.0/0", "198.18.0.254"),
            route("10.244.0.0/24", "elsewhere"),
        ]);
        assert_eq!(
            routes.hop("10.244.0.5".parse().unwrap()),
            Some(Hop::Elsewhere)
        );
        assert_eq!(
            routes.hop("10.244.1.5".parse().unwrap()),
            via("198.18.0.254")
        );
    }

    #[test]
    fn a_destination_is_kept_once_and_host_bits_are_cleared() {
        let routes = Routes::new([
            route("10.244.1.9/24", "198.18.0.21"),
            route("10.244.1.0/24", "198.18.0.22"),
        ]);
        assert_eq!(routes.len(), 1);
        let only = routes.iter().next().unwrap();
        assert_eq!(
            only.destination.address(),
            "10.244.1.0".parse::<Ipv4Address>().unwrap()
        );
        assert_eq!(Some(only.hop), via("198.18.0.21"));
    }
}
