//! Plain-data views of the XDP program's maps, laid out exactly as the C
//! structs in `bpf/rauta_xdp.c`.

use crate::Steering;

/// `RAUTA_NODE_ADDRESS`: steer only listener ports and the ephemeral range.
const NODE_ADDRESS: u32 = 1;
/// `RAUTA_HAS_IPV6`: `gateway_addr6` is set.
const HAS_IPV6: u32 = 2;

/// The XDP program's configuration (`struct rauta_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The gateway's IPv4 address in network byte order; 0 steers nothing.
    pub gateway_addr: u32,
    /// `NODE_ADDRESS` or 0.
    pub flags: u32,
    /// The stack's ephemeral ports, first and last (node-address mode).
    pub ephemeral_first: u16,
    pub ephemeral_last: u16,
    /// The gateway's IPv6 address (network byte order), with `HAS_IPV6`.
    pub gateway_addr6: [u8; 16],
}

impl Config {
    pub fn new(steering: &Steering) -> Self {
        let mut config = match steering {
            Steering::Dedicated { address, .. } => Self {
                gateway_addr: u32::from_ne_bytes(address.octets()),
                ..Self::default()
            },
            Steering::NodeAddress {
                address, ephemeral, ..
            } => Self {
                gateway_addr: u32::from_ne_bytes(address.octets()),
                flags: NODE_ADDRESS,
                ephemeral_first: *ephemeral.start(),
                ephemeral_last: *ephemeral.end(),
                ..Self::default()
            },
        };
        if let Some(address6) = steering.address6() {
            config.flags |= HAS_IPV6;
            config.gateway_addr6 = address6.octets();
        }
        config
    }
}

// SAFETY: `Config` is `repr(C)`, made of integers only, has no padding, and
// every bit pattern is a valid value, which is what `Pod` requires.
unsafe impl aya::Pod for Config {}

/// One queue's counters (`struct rauta_counters`), summed over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Frames redirected into the queue's AF_XDP socket.
    pub redirected: u64,
    /// Frames passed to the kernel (not the gateway's, or no socket bound).
    pub passed: u64,
}

// SAFETY: `QueueCounters` is `repr(C)`, two `u64`s with no padding; every
// bit pattern is valid.
unsafe impl aya::Pod for QueueCounters {}

impl std::ops::AddAssign for QueueCounters {
    fn add_assign(&mut self, other: Self) {
        self.redirected += other.redirected;
        self.passed += other.passed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv4Addr;

    #[test]
    fn address_is_kept_in_network_order_and_ports_in_host_order() {
        let config = Config::new(&Steering::Dedicated {
            address: Ipv4Addr::new(198, 19, 1, 1),
            address6: None,
        });
        assert_eq!(config.gateway_addr.to_ne_bytes(), [198, 19, 1, 1]);
        assert_eq!(config.flags, 0);
        let config = Config::new(&Steering::Dedicated {
            address: Ipv4Addr::new(198, 19, 1, 1),
            address6: Some("2001:2::1".parse().unwrap()),
        });
        assert_eq!(config.flags, HAS_IPV6);
        assert_eq!(config.gateway_addr6[..2], [0x20, 0x01]);
        assert_eq!(config.gateway_addr6[15], 1);
        let config = Config::new(&Steering::NodeAddress {
            address: Ipv4Addr::new(198, 18, 0, 2),
            address6: None,
            ephemeral: 61_000..=65_535,
        });
        assert_eq!(config.gateway_addr.to_ne_bytes(), [198, 18, 0, 2]);
        assert_eq!(config.flags, NODE_ADDRESS);
        assert_eq!(
            (config.ephemeral_first, config.ephemeral_last),
            (61_000, 65_535)
        );
    }

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<Config>(), 28);
        assert_eq!(std::mem::size_of::<QueueCounters>(), 16);
    }
}
