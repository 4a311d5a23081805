//! Session persistence (Gateway API GEP-1619, a rule's
//! `sessionPersistence`): the answer to a client's first request carries a
//! token naming the endpoint that gave it, as a cookie or a response field;
//! later requests that send it back go to that endpoint while it is usable
//! (not ejected, not failing its checks, under its limits) and the session
//! has not timed out. Otherwise the request is balanced as any other and
//! the answer carries a new token.
//!
//! The token is `ID.STARTED.USED`, in hex: the endpoint's id (a hash of
//! its backend's name and address: the same on every worker and replica,
//! and no pod address shown to clients), when the session began and when
//! it was last used, in Unix seconds. It holds all the session's state, so
//! any gateway replica honours any other's tokens and nothing is kept per
//! client.

use super::affinity::{cookie, fnv1a, mix, FNV_OFFSET};
use crate::config::{Backends, SessionCarrier, SessionPersistence};
use http::header::{HeaderName, HeaderValue, SET_COOKIE};
use std::net::{IpAddr, SocketAddr};

/// A session the request carried a live token for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Session {
    /// The index of the backend among the rule's, and its endpoint.
    pub backend: usize,
    pub endpoint: SocketAddr,
    /// Unix seconds.
    pub started: u64,
}

/// `endpoint` of backend `backend`, as tokens name it.
fn endpoint_id(backend: &str, endpoint: SocketAddr) -> u64 {
    let h = fnv1a(FNV_OFFSET, backend.as_bytes());
    let h = match endpoint.ip() {
        IpAddr::V4(ip) => fnv1a(h, &ip.octets()),
        IpAddr::V6(ip) => fnv1a(h, &ip.octets()),
    };
    mix(fnv1a(h, &endpoint.port().to_be_bytes()))
}

/// The token's three numbers, if it is one.
fn parse(token: &str) -> Option<(u64, u64, u64)> {
    let mut parts = token.split('.');
    let mut next = || u64::from_str_radix(parts.next()?, 16).ok();
    let parsed = (next()?, next()?, next()?);
    parts.next().is_none().then_some(parsed)
}

/// The session `request` carries under `rule`, if its token is
/// well-formed, not timed out at `now` (Unix seconds) and names an
/// endpoint of one of `backends`.
pub(super) fn carried(
    rule: &SessionPersistence,
    request: &http::request::Parts,
    backends: &Backends,
    now: u64,
) -> Option<Session> {
    let token = match rule.carrier {
        SessionCarrier::Cookie { .. } => cookie(request, &rule.name)?,
        SessionCarrier::Header => request.headers.get(&rule.name)?.to_str().ok()?,
    };
    let (id, started, used) = parse(token)?;
    let within = |since: u64, limit: Option<std::time::Duration>| {
        limit.is_none_or(|limit| now.saturating_sub(since) < limit.as_secs().max(1))
    };
    if !within(started, rule.absolute_timeout) || !within(used, rule.idle_timeout) {
        return None;
    }
    backends
        .backends
        .iter()
        .enumerate()
        .find_map(|(index, backend)| {
            let endpoint = *backend
                .endpoints
                .iter()
                .find(|&&e| endpoint_id(&backend.name, e) == id)?;
            Some(Session {
                backend: index,
                endpoint,
                started,
            })
        })
}

/// The response field that hands the client its token, when one is due:
/// a new session, one that moved to another endpoint, or (under an idle
/// timeout) every answer, to carry the time of last use.
pub(super) fn answer_field(
    rule: &SessionPersistence,
    carried: Option<Session>,
    backend: &str,
    endpoint: SocketAddr,
    now: u64,
) -> Option<(HeaderName, HeaderValue)> {
    let kept = carried.filter(|s| s.endpoint == endpoint);
    if kept.is_some() && rule.idle_timeout.is_none() {
        return None;
    }
    let started = kept.map_or(now, |s| s.started);
    let token = format!("{:x}.{started:x}.{now:x}", endpoint_id(backend, endpoint));
    match &rule.carrier {
        SessionCarrier::Cookie { path, permanent } => {
            let mut cookie = format!("{}={token}; Path={path}; HttpOnly", rule.name);
            if let (true, Some(lifetime)) = (permanent, rule.absolute_timeout) {
                cookie.push_str(&format!("; Max-Age={}", lifetime.as_secs()));
            }
            Some((SET_COOKIE, HeaderValue::try_from(cookie).ok()?))
        }
        SessionCarrier::Header => Some((
            HeaderName::try_from(rule.name.as_str()).ok()?,
            HeaderValue::try_from(token).ok()?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;
    use std::time::Duration;

    fn rule(carrier: SessionCarrier) -> SessionPersistence {
        SessionPersistence {
            carrier,
            name: "sticky".into(),
            absolute_timeout: Some(Duration::from_secs(3600)),
            idle_timeout: None,
        }
    }

    fn cookie_rule() -> SessionPersistence {
        rule(SessionCarrier::Cookie {
            path: "/app".into(),
            permanent: true,
        })
    }

    fn backends() -> Backends {
        let endpoints = |net: u8| {
            (1..=3)
                .map(|i| SocketAddr::from(([10, 0, net, i], 8080)))
                .collect()
        };
        Backends::new(vec![
            Backend::new("default/a:80", 1, endpoints(1)),
            Backend::new("default/b:80", 1, endpoints(2)),
        ])
    }

    fn request(name: &str, value: &str) -> http::request::Parts {
        let request = http::Request::builder().uri("/app").header(name, value);
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_cookie_names_the_endpoint_and_backend_that_answered() {
        let rule = cookie_rule();
        let b = backends();
        let endpoint = b.backends[1].endpoints[2];
        let (name, value) = answer_field(&rule, None, "default/b:80", endpoint, 1000).unwrap();
        assert_eq!(name, SET_COOKIE);
        let value = value.to_str().unwrap();
        assert!(
            value.ends_with("; Path=/app; HttpOnly; Max-Age=3600"),
            "{value}"
        );
        assert!(!value.contains("10.0."), "no pod address: {value}");
        let token = value.split(';').next().unwrap();
        let back = request("cookie", &format!("theme=dark; {token}"));
        let session = carried(&rule, &back, &b, 1001).expect("carried");
        assert_eq!(
            session,
            Session {
                backend: 1,
                endpoint,
                started: 1000
            }
        );
        // Kept, so no new cookie; past the absolute timeout, none holds.
        assert_eq!(
            answer_field(&rule, Some(session), "default/b:80", endpoint, 1001),
            None
        );
        assert_eq!(carried(&rule, &back, &b, 1000 + 3600), None);
    }

    #[test]
    fn a_header_session_refreshes_its_idle_time_and_expires_when_idle() {
        let mut rule = rule(SessionCarrier::Header);
        rule.idle_timeout = Some(Duration::from_secs(60));
        let b = backends();
        let endpoint = b.backends[0].endpoints[0];
        let token = |field: Option<(HeaderName, HeaderValue)>| {
            let (name, value) = field.expect("a token");
            assert_eq!(name, "sticky");
            request("sticky", value.to_str().unwrap())
        };
        let first = token(answer_field(&rule, None, "default/a:80", endpoint, 100));
        let session = carried(&rule, &first, &b, 150).expect("within the idle time");
        // Used at 150: good until 210, though begun at 100.
        let second = token(answer_field(
            &rule,
            Some(session),
            "default/a:80",
            endpoint,
            150,
        ));
        assert!(carried(&rule, &second, &b, 200).is_some());
        assert_eq!(carried(&rule, &first, &b, 200), None, "idle since 100");
        assert_eq!(carried(&rule, &second, &b, 210), None);
    }

    #[test]
    fn a_session_that_moved_gets_a_new_token_and_junk_is_no_session() {
        let rule = cookie_rule();
        let b = backends();
        let (old, new) = (b.backends[0].endpoints[0], b.backends[0].endpoints[1]);
        let session = Session {
            backend: 0,
            endpoint: old,
            started: 5,
        };
        assert!(answer_field(&rule, Some(session), "default/a:80", new, 9).is_some());
        for junk in ["", "x", "1.2", "1.2.3.4", "zz.1.1", "sticky"] {
            let junk = request("cookie", &format!("sticky={junk}"));
            assert_eq!(carried(&rule, &junk, &b, 9), None);
        }
        let gone = request("cookie", "sticky=123.5.5");
        assert_eq!(carried(&rule, &gone, &b, 9), None, "no such endpoint");
    }
}
