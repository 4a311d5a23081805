//! The message model every phase of the core works on, whatever the
//! protocol on either side: a head in the `http` crate's types (as `h2`
//! uses them) and body events.
//!
//! HTTP/1.1 and HTTP/2 are codecs at the edges that decode into this and
//! encode from it: no head is serialised and parsed again inside the
//! gateway. A head carries no connection-specific field (RFC 9110 §7.6.1,
//! RFC 9113 §8.2.2) and no framing: the codec that writes it restates
//! `content-length` or chunked coding from [`BodyLength`]. The one
//! exception is a response without a body (to HEAD, 204, 304), whose
//! `content-length` is metadata and passes as it came.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Uri};

/// What a head says of the body after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// No body follows (HTTP/2: the head ended the stream).
    None,
    /// Exactly this many bytes.
    Exactly(u64),
    /// Until its end event (chunked, an HTTP/2 stream without a length,
    /// or an HTTP/1.1 response delimited by the close).
    Unknown,
}

/// A request: the head, with `host` as a field and the target in origin
/// form (path and query, or `*`).
#[derive(Debug)]
pub struct Request {
    pub head: http::request::Parts,
    pub body: BodyLength,
}

#[derive(Debug)]
pub struct Response {
    pub head: http::response::Parts,
    pub body: BodyLength,
}

/// A piece of a body, in order; [`BodyEvent::End`] (or trailers, which
/// end it too) comes last.
#[derive(Clone, Debug)]
pub enum BodyEvent {
    Data(Bytes),
    /// Trailer fields; the body is over.
    Trailers(HeaderMap),
    End,
}

impl BodyEvent {
    /// Bytes of body data it carries (what buffers are bounded by).
    pub fn len(&self) -> usize {
        match self {
            Self::Data(data) => data.len(),
            Self::Trailers(_) | Self::End => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the body is over with it.
    pub fn ends(&self) -> bool {
        !matches!(self, Self::Data(_))
    }
}

/// Fields that describe a connection, not a message (RFC 9110 §7.6.1,
/// RFC 9113 §8.2.2), and the framing fields codecs restate.
const CONNECTION_SPECIFIC: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("http2-settings"),
    header::TE,
];

/// Every `name` field of `headers` as one, the values in order joined by
/// `separator` (how HTTP/2 cookie crumbs become one field, with `; `).
pub(crate) fn merge_fields(headers: &mut HeaderMap, name: HeaderName, separator: &[u8]) {
    let (joined, _) = joined_values(headers, &name, separator);
    insert_bytes(headers, name, joined);
}

/// A list of hops (`X-Forwarded-For`, `Forwarded`) extended: every `name`
/// field as one, comma-separated, with `hop`'s element last.
pub(crate) fn append_hop(
    headers: &mut HeaderMap,
    name: HeaderName,
    hop: impl FnOnce(&mut Vec<u8>),
) {
    let (mut joined, fields) = joined_values(headers, &name, b", ");
    if fields > 0 {
        joined.extend_from_slice(b", ");
    }
    hop(&mut joined);
    insert_bytes(headers, name, joined);
}

/// The values of every `name` field, in order, joined by `separator`; and
/// how many there were.
fn joined_values(headers: &HeaderMap, name: &HeaderName, separator: &[u8]) -> (Vec<u8>, usize) {
    let mut joined = Vec::with_capacity(64);
    let mut fields = 0;
    for value in headers.get_all(name) {
        if fields > 0 {
            joined.extend_from_slice(separator);
        }
        joined.extend_from_slice(value.as_bytes());
        fields += 1;
    }
    (joined, fields)
}

/// `bytes` as the one `name` field (valid values joined by a separator of
/// visible characters are valid).
fn insert_bytes(headers: &mut HeaderMap, name: HeaderName, bytes: Vec<u8>) {
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(bytes)) {
        headers.insert(name, value);
    }
}

/// `uri` in origin form: its path and query, `/` when it has none (an
/// absolute-form or HTTP/2 target, once its authority is the `host`).
pub(crate) fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from)
}

/// Whether `name` describes the connection (or is `te`, which only
/// `trailers` crosses as).
pub fn is_connection_specific(name: &HeaderName) -> bool {
    CONNECTION_SPECIFIC.contains(name)
}

/// Drop what `headers` says of its connection: the fields
/// `Connection` names, the connection-specific ones, and `te` unless it is
/// `trailers` (the one TE a message carries across, RFC 9113 §8.2.2).
pub fn strip_connection_fields(headers: &mut HeaderMap) {
    // Most heads have none: one pass over the names instead of a lookup
    // per connection-specific name.
    if !headers.keys().any(|n| CONNECTION_SPECIFIC.contains(n)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let trailers = accepts_trailers(headers);
    for name in named.iter().chain(&CONNECTION_SPECIFIC) {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Whether `te` lists `trailers` (RFC 9110 §10.1.4).
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn connection_fields_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("5"));
        headers.insert("te", HeaderValue::from_static("gzip, trailers"));
        headers.insert("x-end", HeaderValue::from_static("2"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        strip_connection_fields(&mut headers);
        assert_eq!(headers.len(), 3, "{headers:?}");
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["x-end"], "2");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
    }
}
