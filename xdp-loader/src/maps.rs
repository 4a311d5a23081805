//! Plain-data views of the XDP program's maps, laid out exactly as the C
//! structs in `bpf/rauta_xdp.c`.

use std::net::Ipv4Addr;

/// The XDP program's configuration (`struct rauta_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The gateway's IPv4 address in network byte order; 0 steers nothing.
    pub gateway_addr: u32,
    /// Reserved for listener ports and the ephemeral range.
    pub flags: u32,
}

impl Config {
    /// Steer ARP and IPv4 TCP/UDP/ICMP for `addr` to the gateway's sockets.
    pub fn for_address(addr: Ipv4Addr) -> Self {
        Self {
            gateway_addr: u32::from_ne_bytes(addr.octets()),
            flags: 0,
        }
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

    #[test]
    fn address_is_kept_in_network_order() {
        let config = Config::for_address(Ipv4Addr::new(198, 19, 1, 1));
        assert_eq!(config.gateway_addr.to_ne_bytes(), [198, 19, 1, 1]);
    }

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<Config>(), 8);
        assert_eq!(std::mem::size_of::<QueueCounters>(), 16);
    }
}
