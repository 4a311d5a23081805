//! Facts about a network interface read from sysfs.

use smoltcp::wire::EthernetAddress;
use std::fs;

/// Errors reading an interface's facts.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("interface {iface}: cannot read {what}: {reason}")]
    Unreadable {
        iface: String,
        what: &'static str,
        reason: String,
    },
}

fn read(iface: &str, what: &'static str) -> Result<String, LinkError> {
    if iface.is_empty() || iface.contains('/') || iface.contains("..") {
        return Err(LinkError::NoSuchInterface(iface.to_owned()));
    }
    let path = format!("/sys/class/net/{iface}/{what}");
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(LinkError::NoSuchInterface(iface.to_owned()))
        }
        Err(e) => Err(LinkError::Unreadable {
            iface: iface.to_owned(),
            what,
            reason: e.to_string(),
        }),
    }
}

/// The interface's MAC address.
pub fn mac_address(iface: &str) -> Result<EthernetAddress, LinkError> {
    let text = read(iface, "address")?;
    let unreadable = |reason: String| LinkError::Unreadable {
        iface: iface.to_owned(),
        what: "address",
        reason,
    };
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        let part = parts
            .next()
            .ok_or_else(|| unreadable(format!("{text:?}")))?;
        *byte = u8::from_str_radix(part, 16).map_err(|e| unreadable(e.to_string()))?;
    }
    Ok(EthernetAddress(bytes))
}

/// The interface's MTU.
pub fn mtu(iface: &str) -> Result<usize, LinkError> {
    let text = read(iface, "mtu")?;
    text.parse()
        .map_err(|e: std::num::ParseIntError| LinkError::Unreadable {
            iface: iface.to_owned(),
            what: "mtu",
            reason: e.to_string(),
        })
}

/// How many RX queues the interface has.
pub fn rx_queues(iface: &str) -> Result<u32, LinkError> {
    read(iface, "address")?;
    let dir = format!("/sys/class/net/{iface}/queues");
    let entries = fs::read_dir(&dir).map_err(|e| LinkError::Unreadable {
        iface: iface.to_owned(),
        what: "queues",
        reason: e.to_string(),
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_readable_and_missing_interfaces_are_named() {
        assert_eq!(mac_address("lo").unwrap(), EthernetAddress([0; 6]));
        assert!(mtu("lo").unwrap() > 0);
        match mac_address("rauta-nonexistent") {
            Err(LinkError::NoSuchInterface(name)) => assert_eq!(name, "rauta-nonexistent"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(mtu("../etc"), Err(LinkError::NoSuchInterface(_))));
    }
}
