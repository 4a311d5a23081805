//! Which endpoint addresses may be backends. An EndpointSlice is data
//! anyone with write access to one namespace can make up: one pointing at
//! `127.0.0.1:9901` would publish the admin server through the gateway,
//! one at the gateway's own listener would loop. Such endpoints are left
//! out where they enter, with a warning naming the slice.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// The gateway's own sockets: no backend may be one of them.
#[derive(Clone, Debug, Default)]
pub struct OwnSockets {
    /// The addresses the gateway serves on (listener ports on these, and
    /// on loopback, are its own).
    pub addresses: Vec<IpAddr>,
    /// The admin server.
    pub admin: Option<SocketAddr>,
}

/// The rules for one compilation.
pub(crate) struct EndpointRules<'a> {
    pub own: &'a OwnSockets,
    /// The ports the served Gateways listen on.
    pub listener_ports: HashSet<u16>,
    /// Loopback endpoints are allowed (file mode: local development and
    /// tests). In a cluster they are refused, with link-local ones, as the
    /// API server's EndpointSlice validation refuses them: a hand-made
    /// slice or an older API server may still carry them.
    pub allow_loopback: bool,
}

impl EndpointRules<'_> {
    /// Why `endpoint` may not be a backend, if it may not.
    pub fn refuses(&self, endpoint: SocketAddr) -> Option<&'static str> {
        let ip = endpoint.ip().to_canonical();
        let port = endpoint.port();
        if ip.is_unspecified() {
            return Some("an unspecified address");
        }
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_multicast() || broadcast {
            return Some("a multicast or broadcast address");
        }
        if !self.allow_loopback && ip.is_loopback() {
            return Some("a loopback address, refused in a cluster");
        }
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        if !self.allow_loopback && link_local {
            return Some("a link-local address, refused in a cluster");
        }
        let local = ip.is_loopback() || self.own.addresses.contains(&ip);
        if let Some(admin) = self.own.admin {
            let admin_ip = admin.ip();
            let on_admin_ip =
                admin_ip == ip || (admin_ip.is_unspecified() || admin_ip.is_loopback()) && local;
            if port == admin.port() && on_admin_ip {
                return Some("the gateway's admin server");
            }
        }
        if local && self.listener_ports.contains(&port) {
            return Some("the gateway's own listener");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_itself_and_addresses_no_pod_has_are_refused() {
        let own = OwnSockets {
            addresses: vec!["198.18.0.1".parse().unwrap()],
            admin: Some("127.0.0.1:9901".parse().unwrap()),
        };
        let rules = |allow_loopback| EndpointRules {
            own: &own,
            listener_ports: [80].into(),
            allow_loopback,
        };
        let refuses = |allow_loopback, at: &str| rules(allow_loopback).refuses(at.parse().unwrap());
        for at in [
            "127.0.0.1:9901",
            "[::ffff:127.0.0.1]:9901",
            "198.18.0.1:80",
            "127.0.0.1:80",
            "0.0.0.0:3000",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[ff02::1]:80",
        ] {
            assert!(refuses(true, at).is_some(), "{at} is allowed");
        }
        for at in ["127.0.0.1:3000", "169.254.1.1:80", "[fe80::1]:80"] {
            assert!(refuses(true, at).is_none(), "file mode: {at} is refused");
            assert!(refuses(false, at).is_some(), "cluster: {at} is allowed");
        }
        for at in [
            "198.18.0.20:3000",
            "198.18.0.1:8080",
            "10.244.1.5:80",
            "[2001:2::20]:80",
        ] {
            assert_eq!(refuses(false, at), None, "{at}");
        }
    }
}
