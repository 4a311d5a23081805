//! Request and response filters: the head each side gets — hop-by-hop
//! fields dropped, forwarding headers, the rule's and backend's header
//! modifiers, framing restated.

use super::route::{Matched, Target};
use super::{BodyReader, BodyWriter};
use crate::config::{Backend, HeaderModifier, RuleAction};
use crate::http1::{
    self, BodyFraming, ChunkedDecoder, Limits, RequestHead, ResponseFraming, ResponseHead, Version,
};
use std::net::SocketAddr;

/// The request as the backend sees it: URLRewrite (host, path) applied,
/// then [`backend_request_head`].
pub(super) fn request_to_backend(
    head: &RequestHead,
    host: &str,
    peer: SocketAddr,
    matched: &Matched,
    backend: &Backend,
) -> Vec<u8> {
    let action = matched.action;
    let mut target = None;
    let mut host = host;
    if let Some(rewrite) = &action.rewrite {
        if let Some(h) = &rewrite.hostname {
            host = h;
        }
        if let Some(m) = &rewrite.path {
            let t = Target::of(head);
            target = Some(t.with_path(m.apply(t.path, matched.prefix)));
        }
    }
    let target = target.as_deref().unwrap_or(&head.target);
    backend_request_head(head, target, host, peer, action, backend)
}

/// The request head the backend gets: hop-by-hop fields dropped, filters
/// applied, X-Forwarded-For/-Proto added, framing restated.
pub(super) fn backend_request_head(
    head: &RequestHead,
    target: &str,
    host: &str,
    peer: SocketAddr,
    action: &RuleAction,
    backend: &Backend,
) -> Vec<u8> {
    let connection = http1::connection_tokens(&head.headers).unwrap_or_default();
    let mut headers: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .filter(|(n, _)| {
            !http1::is_hop_by_hop(n, &connection)
                && !n.eq_ignore_ascii_case("content-length")
                && !n.eq_ignore_ascii_case("expect")
                && !n.eq_ignore_ascii_case("host")
        })
        .cloned()
        .collect();
    headers.insert(0, ("Host".into(), host.as_bytes().to_vec()));
    let peer_ip = peer.ip().to_string();
    match headers
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
    {
        Some((_, v)) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer_ip.as_bytes());
        }
        None => headers.push(("X-Forwarded-For".into(), peer_ip.into_bytes())),
    }
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("x-forwarded-proto"));
    headers.push(("X-Forwarded-Proto".into(), b"http".to_vec()));
    if http1::accepts_trailers(head) {
        // gRPC servers want it; trailers are relayed.
        headers.push(("TE".into(), b"trailers".to_vec()));
    }
    action.request_headers.apply(&mut headers);
    backend.request_headers.apply(&mut headers);
    let mut out = Vec::with_capacity(256 + target.len());
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &headers {
        push_field(&mut out, name, value);
    }
    match head.framing {
        BodyFraming::Empty => {
            if !matches!(head.method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS") {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
        BodyFraming::Length(n) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The response head the client gets, and how the body is carried.
pub(super) fn client_response_head(
    head: &ResponseHead,
    client_version: Version,
    keep_alive: bool,
    modifiers: &[HeaderModifier],
) -> (Vec<u8>, BodyReader, BodyWriter) {
    let connection = http1::connection_tokens(&head.headers).unwrap_or_default();
    let mut headers: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .filter(|(n, _)| {
            !http1::is_hop_by_hop(n, &connection) && !n.eq_ignore_ascii_case("content-length")
        })
        .cloned()
        .collect();
    for m in modifiers {
        m.apply(&mut headers);
    }
    let (reader, writer, framing) = match head.framing {
        ResponseFraming::Empty => {
            // HEAD and 304 keep the backend's Content-Length as metadata.
            let length = head
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| format!("Content-Length: {}\r\n", String::from_utf8_lossy(v)));
            let framing = match (length, head.status) {
                (Some(l), _) => l,
                (None, 204 | 304) => String::new(),
                (None, _) => "Content-Length: 0\r\n".into(),
            };
            (BodyReader::Done, BodyWriter::Raw, framing)
        }
        ResponseFraming::Length(n) => (
            BodyReader::Length(n),
            BodyWriter::Raw,
            format!("Content-Length: {n}\r\n"),
        ),
        ResponseFraming::Chunked | ResponseFraming::UntilClose => {
            let reader = match head.framing {
                ResponseFraming::Chunked => BodyReader::Chunked(ChunkedDecoder::new(Limits {
                    max_body: u64::MAX,
                    ..Limits::default()
                })),
                _ => BodyReader::UntilClose,
            };
            if client_version == Version::Http11 {
                (
                    reader,
                    BodyWriter::Chunked,
                    "Transfer-Encoding: chunked\r\n".into(),
                )
            } else {
                (reader, BodyWriter::Raw, String::new())
            }
        }
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", head.status, head.reason).as_bytes());
    for (name, value) in &headers {
        push_field(&mut out, name, value);
    }
    out.extend_from_slice(framing.as_bytes());
    let close = !keep_alive
        || (client_version == Version::Http10
            && writer == BodyWriter::Raw
            && matches!(reader, BodyReader::UntilClose | BodyReader::Chunked(_)));
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, reader, writer)
}

/// The fields of a response the gateway writes itself: `extra`, then a
/// plain-text content type.
pub(super) fn plain_headers(extra: &[(&str, String)]) -> Vec<(String, Vec<u8>)> {
    extra
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .chain([("Content-Type".to_string(), b"text/plain".to_vec())])
        .collect()
}

pub(super) fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
