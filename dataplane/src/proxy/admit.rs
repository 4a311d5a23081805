//! Admit: a request head put in the one form every later phase and the
//! backend read alike, before route match — the path normalised
//! ([`crate::path`]), header names with underscores handled by policy,
//! forwarding fields from untrusted peers removed, and HTTP/2 cookie
//! crumbs joined. The edge guidance of Envoy (`normalize_path`,
//! `headers_with_underscores_action`, `use_remote_address`) is the model.

use crate::message::merge_fields;
use crate::path::{self, PathPolicy, PathVerdict};
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::Uri;
use ipnet::IpNet;
use std::net::IpAddr;

/// What to do with a request header whose name holds `_`: some backends
/// (CGI, and frameworks after it) read `X_Auth` and `X-Auth` as one
/// field, so a client can pass one past a filter that removes the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Answer 400 (Envoy's edge recommendation).
    #[default]
    Reject,
    /// Remove those fields and serve the request.
    Drop,
    /// Pass them on.
    Allow,
}

/// Whether the gateway writes an RFC 7239 `Forwarded` element.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedPolicy {
    /// Only `X-Forwarded-For` and `X-Forwarded-Proto` are written.
    #[default]
    XForwardedOnly,
    /// `Forwarded: for=…;proto=http` is appended as well.
    Append,
}

/// The admission settings.
#[derive(Clone, Debug, Default)]
pub struct AdmitSettings {
    pub path: PathPolicy,
    pub underscores: UnderscoreHeaders,
    /// Peers whose `X-Forwarded-*` and `Forwarded` fields are kept (and
    /// extended): the load balancers in front. From anyone else they are
    /// removed, so a client cannot claim another address.
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded: ForwardedPolicy,
}

impl AdmitSettings {
    /// Whether `peer` is a trusted proxy (an IPv4 client reached over an
    /// IPv4-mapped IPv6 socket is the IPv4 client).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// What admission decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admitted {
    /// Route it (the head may have been rewritten).
    Route,
    /// Send the client to this target (307): its path held escaped
    /// slashes.
    Redirect(String),
    /// Answer 400.
    Refuse(&'static str),
}

static FORWARDING_FIELDS: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    header::FORWARDED,
];

/// Admit the head of a request from `peer`.
pub(super) fn admit(
    head: &mut http::request::Parts,
    peer: IpAddr,
    settings: &AdmitSettings,
) -> Admitted {
    if settings.underscores != UnderscoreHeaders::Allow {
        let underscored: Vec<HeaderName> = head
            .headers
            .keys()
            .filter(|name| name.as_str().contains('_'))
            .cloned()
            .collect();
        if !underscored.is_empty() {
            if settings.underscores == UnderscoreHeaders::Reject {
                return Admitted::Refuse("header field name with an underscore");
            }
            for name in underscored {
                head.headers.remove(name);
            }
        }
    }
    if !settings.trusts(peer) {
        for name in &FORWARDING_FIELDS {
            head.headers.remove(name);
        }
    }
    join_cookie_crumbs(&mut head.headers);
    let query = head.uri.query();
    let normal = match path::normalize(head.uri.path(), settings.path) {
        PathVerdict::Serve(path) if path == head.uri.path() => return Admitted::Route,
        PathVerdict::Serve(path) => path.into_owned(),
        PathVerdict::Reject => return Admitted::Refuse("path"),
        PathVerdict::Redirect(path) => {
            let is_grpc = head
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
            if is_grpc {
                // gRPC clients do not follow redirects.
                return Admitted::Refuse("escaped slash in a gRPC path");
            }
            return Admitted::Redirect(with_query(path, query));
        }
    };
    match PathAndQuery::try_from(with_query(normal, query)) {
        Ok(target) => {
            head.uri = Uri::from(target);
            Admitted::Route
        }
        Err(_) => Admitted::Refuse("path"),
    }
}

fn with_query(mut path: String, query: Option<&str>) -> String {
    if let Some(query) = query {
        path.push('?');
        path.push_str(query);
    }
    path
}

/// Several `cookie` fields become one, joined by `; ` (RFC 9113 §8.2.3:
/// HTTP/2 clients may split the cookie into crumbs; an HTTP/1.1 backend
/// expects one field, RFC 6265 §5.4).
fn join_cookie_crumbs(headers: &mut http::HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        merge_fields(headers, header::COOKIE, b"; ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(target: &str, fields: &[(&str, &str)]) -> http::request::Parts {
        let mut request = http::Request::get(target);
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 10));

    #[test]
    fn the_path_routed_is_the_path_forwarded() {
        let settings = AdmitSettings::default();
        let mut h = head("/x/../%61dmin//panel?q=%2e%2e", &[]);
        assert_eq!(admit(&mut h, CLIENT, &settings), Admitted::Route);
        assert_eq!(
            h.uri, "/admin/panel?q=%2e%2e",
            "the query is not the path's"
        );
        let mut h = head("/a%2Fb?x=1", &[]);
        assert_eq!(
            admit(&mut h, CLIENT, &settings),
            Admitted::Redirect("/a/b?x=1".into())
        );
        let mut h = head(
            "/svc%2FMethod",
            &[("content-type", "application/grpc+proto")],
        );
        assert!(matches!(
            admit(&mut h, CLIENT, &settings),
            Admitted::Refuse(_)
        ));
        let mut h = head("/bad%zz", &[]);
        assert_eq!(admit(&mut h, CLIENT, &settings), Admitted::Refuse("path"));
    }

    #[test]
    fn underscores_are_refused_dropped_or_allowed() {
        let fields = [("x_auth", "yes"), ("x-ok", "1")];
        let with = |underscores| AdmitSettings {
            underscores,
            ..AdmitSettings::default()
        };
        let mut h = head("/", &fields);
        assert!(matches!(
            admit(&mut h, CLIENT, &with(UnderscoreHeaders::Reject)),
            Admitted::Refuse(_)
        ));
        let mut h = head("/", &fields);
        assert_eq!(
            admit(&mut h, CLIENT, &with(UnderscoreHeaders::Drop)),
            Admitted::Route
        );
        assert!(h.headers.get("x_auth").is_none() && h.headers.get("x-ok").is_some());
        let mut h = head("/", &fields);
        assert_eq!(
            admit(&mut h, CLIENT, &with(UnderscoreHeaders::Allow)),
            Admitted::Route
        );
        assert_eq!(h.headers["x_auth"], "yes");
    }

    #[test]
    fn forwarding_fields_are_kept_only_from_trusted_peers() {
        let fields = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
        ];
        let settings = AdmitSettings {
            trusted_proxies: vec![
                "198.18.1.0/24".parse().unwrap(),
                "2001:2::/64".parse().unwrap(),
            ],
            ..AdmitSettings::default()
        };
        let mut h = head("/", &fields);
        admit(&mut h, CLIENT, &settings);
        assert!(h.headers.is_empty(), "{:?}", h.headers);
        for trusted in ["198.18.1.7", "::ffff:198.18.1.7", "2001:2::9"] {
            let mut h = head("/", &fields);
            admit(&mut h, trusted.parse().unwrap(), &settings);
            assert_eq!(h.headers.len(), 4, "{trusted}: {:?}", h.headers);
        }
    }

    #[test]
    fn cookie_crumbs_are_joined() {
        let mut h = head(
            "/",
            &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
        );
        admit(&mut h, CLIENT, &AdmitSettings::default());
        let all: Vec<_> = h.headers.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }
}
