//! Request and response filters on the message head: URLRewrite, the
//! forwarding fields, and the rule's and backend's header modifiers.
//! Framing and connection fields are the codecs' (see [`super::h1`]).

use super::admit::ForwardedPolicy;
use super::route::{Matched, Target};
use crate::config::Backend;
use crate::message::{append_hop, Request};
use http::header::{HeaderValue, FORWARDED, HOST};
use http::uri::PathAndQuery;
use http::{HeaderName, Uri};
use std::net::{IpAddr, SocketAddr};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The request as the backend sees it: URLRewrite (host, path) applied,
/// `X-Forwarded-For` extended with the client, `X-Forwarded-Proto` set,
/// then the rule's and the backend's RequestHeaderModifier.
pub(super) fn request_to_backend(
    request: &mut Request,
    host: &str,
    peer: SocketAddr,
    matched: &Matched,
    backend: &Backend,
    forwarded: ForwardedPolicy,
) {
    let action = matched.action;
    let head = &mut request.head;
    // The rule's URLRewrite, then the backendRef's.
    for rewrite in [&action.rewrite, &backend.rewrite].into_iter().flatten() {
        if let Some(h) = &rewrite.hostname {
            if let Ok(value) = HeaderValue::from_str(h) {
                head.headers.insert(HOST, value);
            }
        }
        if let Some(m) = &rewrite.path {
            let target = Target::of(&head.uri);
            let rewritten = target.with_path(m.apply(target.path, matched.prefix));
            match PathAndQuery::try_from(rewritten).map(Uri::from) {
                Ok(uri) => head.uri = uri,
                Err(error) => tracing::debug!(%error, "rewritten path is not a valid target"),
            }
        }
    }
    if !head.headers.contains_key(HOST) {
        if let Ok(value) = HeaderValue::from_str(host) {
            head.headers.insert(HOST, value);
        }
    }
    // Every hop so far (a trusted proxy's fields; admission removed any
    // other peer's), as one list, then the client.
    append_hop(&mut head.headers, X_FORWARDED_FOR.clone(), |out| {
        push_ip(out, peer.ip());
    });
    if !head.headers.contains_key(&X_FORWARDED_PROTO) {
        head.headers
            .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if forwarded == ForwardedPolicy::Append {
        append_forwarded(&mut head.headers, peer.ip());
    }
    action.request_headers.apply(&mut head.headers);
    backend.request_headers.apply(&mut head.headers);
}

/// `Forwarded` (RFC 7239 §4) with this hop's element after the others,
/// as one field: `for=` the client (an IPv6 address quoted and bracketed,
/// §6), `proto=http`.
fn append_forwarded(headers: &mut http::HeaderMap, client: IpAddr) {
    append_hop(headers, FORWARDED, |out| {
        out.extend_from_slice(b"for=");
        match client {
            IpAddr::V4(_) => push_ip(out, client),
            IpAddr::V6(_) => {
                out.extend_from_slice(b"\"[");
                push_ip(out, client);
                out.extend_from_slice(b"]\"");
            }
        }
        out.extend_from_slice(b";proto=http");
    });
}

/// The client's address as text; IPv4 without the formatting machinery
/// (it is on every request).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                super::h1::push_decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}
