//! Consistent hashing: requests that carry the same key (the client's
//! address, a header, a cookie) go to the same endpoint, on every worker
//! and every gateway replica, as long as it is usable.
//!
//! Rendezvous (highest-random-weight) hashing: each endpoint scores
//! hash(key, endpoint) and the highest usable one wins. An endpoint that
//! leaves moves only its own keys (to their second choice); one that
//! arrives takes only the keys it now scores highest for; a retry goes to
//! the key's next choice. It costs a hash per endpoint per request and no
//! table, so it follows every EndpointSlice change at once. The hash is
//! FNV-1a with a splitmix64 finish: the same on every replica and build.

use crate::config::HashOn;
use std::net::{IpAddr, SocketAddr};

/// FNV-1a over `bytes`, from `state`.
pub(super) fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(super) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// splitmix64's finaliser: every bit of the input moves every bit out.
pub(super) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The request's key under `on`, hashed; `None` when it has none (no such
/// header or cookie): it is then balanced as any other.
pub(super) fn key(on: &HashOn, head: &http::request::Parts, peer: SocketAddr) -> Option<u64> {
    let hashed = |bytes: &[u8]| Some(fnv1a(FNV_OFFSET, bytes));
    match on {
        HashOn::SourceIp => match peer.ip() {
            IpAddr::V4(ip) => hashed(&ip.octets()),
            IpAddr::V6(ip) => hashed(&ip.octets()),
        },
        HashOn::Header(name) => {
            let mut values = head.headers.get_all(name).iter().peekable();
            values.peek()?;
            Some(values.fold(FNV_OFFSET, |h, v| fnv1a(fnv1a(h, v.as_bytes()), b",")))
        }
        HashOn::Cookie(name) => cookie(head, name).and_then(|value| hashed(value.as_bytes())),
    }
}

/// The value of the request's cookie `name`, if it sent one.
pub(super) fn cookie<'a>(head: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    head.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// `endpoint`'s score for `key`.
fn score(key: u64, endpoint: SocketAddr) -> u64 {
    let at = match endpoint.ip() {
        IpAddr::V4(ip) => fnv1a(FNV_OFFSET, &ip.octets()),
        IpAddr::V6(ip) => fnv1a(FNV_OFFSET, &ip.octets()),
    };
    mix(key ^ mix(fnv1a(at, &endpoint.port().to_be_bytes())))
}

/// The highest-scoring endpoint for `key` among `endpoints` that `usable`
/// allows.
pub(super) fn pick(
    key: u64,
    endpoints: &[SocketAddr],
    usable: impl Fn(SocketAddr) -> bool,
) -> Option<SocketAddr> {
    endpoints
        .iter()
        .copied()
        .filter(|&e| usable(e))
        .max_by_key(|&e| score(key, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    fn head(fields: &[(&str, &str)]) -> http::request::Parts {
        let mut request = http::Request::builder().uri("/");
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_come_from_the_address_a_header_or_a_cookie() {
        let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let other_port: SocketAddr = "192.0.2.7:4001".parse().unwrap();
        let none = head(&[]);
        assert_eq!(
            key(&HashOn::SourceIp, &none, peer),
            key(&HashOn::SourceIp, &none, other_port),
            "the address, not the port"
        );
        let user = HashOn::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(key(&user, &none, peer), None);
        let a = key(&user, &head(&[("x-user", "a")]), peer);
        assert!(a.is_some());
        assert_ne!(a, key(&user, &head(&[("x-user", "b")]), peer));
        let session = HashOn::Cookie("session".into());
        let with = head(&[("cookie", "theme=dark; session=abc")]);
        assert_eq!(key(&session, &with, peer), Some(fnv1a(FNV_OFFSET, b"abc")));
        assert_eq!(
            key(&session, &head(&[("cookie", "theme=dark")]), peer),
            None
        );
    }

    #[test]
    fn a_key_keeps_its_endpoint_and_only_a_leaving_ones_keys_move() {
        let all = endpoints(5);
        let keys: Vec<u64> = (0..2000u64).map(mix).collect();
        let before: Vec<SocketAddr> = keys
            .iter()
            .map(|&k| pick(k, &all, |_| true).unwrap())
            .collect();
        // Spread: every endpoint gets roughly a fifth.
        for e in &all {
            let share = before.iter().filter(|&&b| b == *e).count();
            assert!((300..=500).contains(&share), "{e}: {share} of 2000");
        }
        // One endpoint leaves (or is ejected): only its keys move.
        let gone = all[2];
        for (&k, &was) in keys.iter().zip(&before) {
            let now = pick(k, &all, |e| e != gone).unwrap();
            if was != gone {
                assert_eq!(now, was, "a key not on the leaving endpoint moved");
            }
        }
    }
}
