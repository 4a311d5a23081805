//! The HTTP/1.1 codec of the core, heads: a parsed head into the message
//! model ([`crate::message`]), and a message head written as HTTP/1.1 for
//! a backend or a client. Framing (`content-length`, chunked, `connection`)
//! lives here and nowhere else.

use crate::http1::{
    reason_phrase, BodyFraming, HttpError, RequestHead, ResponseFraming, ResponseHead, Version,
};
use crate::message::{
    is_connection_specific, origin_form, strip_connection_fields, BodyLength, Request, Response,
};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};

/// Header fields as parsed into a map, without the connection-specific
/// ones (RFC 9110 §7.6.1) and those in `skip` (framing the codec
/// restates); a field the `http` crate cannot hold (httparse admitted it)
/// is an error for the caller to answer.
fn field_map(fields: Vec<(String, Vec<u8>)>, skip: &[HeaderName]) -> Result<HeaderMap, HttpError> {
    // Room for what the filters add (forwarding fields, modifiers)
    // without growing the map again.
    let mut map = HeaderMap::with_capacity(fields.len() + 4);
    let mut connection = false;
    let mut trailers = false;
    for (name, value) in fields {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpError::Malformed("header field name"))?;
        if skip.contains(&name) {
            continue;
        }
        if is_connection_specific(&name) {
            // What they say is the parser's: only what they name, and
            // `te: trailers`, matter here.
            connection |= name == header::CONNECTION;
            trailers |= name == header::TE
                && value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            if name == header::CONNECTION {
                let value = HeaderValue::from_maybe_shared(Bytes::from(value))
                    .map_err(|_| HttpError::Malformed("header field value"))?;
                map.append(name, value);
            }
            continue;
        }
        let value = HeaderValue::from_maybe_shared(Bytes::from(value))
            .map_err(|_| HttpError::Malformed("header field value"))?;
        map.append(name, value);
    }
    if connection {
        // The fields `Connection` names go too.
        strip_connection_fields(&mut map);
    }
    if trailers {
        map.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(map)
}

/// A client's request head as a message; `Expect` is answered by the
/// codec (100 Continue) and does not travel on.
pub(super) fn decode_request(head: RequestHead) -> Result<Request, HttpError> {
    let method =
        Method::from_bytes(head.method.as_bytes()).map_err(|_| HttpError::Malformed("method"))?;
    let mut uri = Uri::try_from(head.target).map_err(|_| HttpError::Malformed("request target"))?;
    let mut headers = field_map(head.headers, &[header::CONTENT_LENGTH, header::EXPECT])?;
    if let Some(authority) = uri.authority() {
        // Absolute form: the target's authority is the request's, whatever
        // Host says (RFC 9112 §3.2.2); routing and the backend see it as
        // Host, and the target as origin form.
        let host = Some(authority.as_str())
            .filter(|a| !a.contains('@'))
            .and_then(|a| HeaderValue::from_str(a).ok())
            .ok_or(HttpError::Malformed("request target"))?;
        headers.insert(header::HOST, host);
        uri = origin_form(&uri);
    }
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    let body = match head.framing {
        BodyFraming::Empty => BodyLength::None,
        BodyFraming::Length(n) => BodyLength::Exactly(n),
        BodyFraming::Chunked => BodyLength::Unknown,
    };
    Ok(Request {
        head: request.into_parts().0,
        body,
    })
}

/// A backend's response head as a message.
pub(super) fn decode_response(head: ResponseHead) -> Result<Response, HttpError> {
    let status = StatusCode::from_u16(head.status).map_err(|_| HttpError::Malformed("status"))?;
    let body = match head.framing {
        // A HEAD, 204 or 304 response keeps its length as metadata.
        ResponseFraming::Empty => BodyLength::None,
        ResponseFraming::Length(n) => BodyLength::Exactly(n),
        ResponseFraming::Chunked | ResponseFraming::UntilClose => BodyLength::Unknown,
    };
    let skip: &[HeaderName] = match body {
        BodyLength::None => &[],
        _ => &[header::CONTENT_LENGTH],
    };
    let headers = field_map(head.headers, skip)?;
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Response {
        head: response.into_parts().0,
        body,
    })
}

/// Every field of `headers` but `except`, one `name: value` line each
/// (also a chunked body's trailer section).
pub(super) fn push_fields(out: &mut Vec<u8>, headers: &HeaderMap, except: Option<&HeaderName>) {
    for (name, value) in headers {
        if Some(name) != except {
            push_field(out, name, value);
        }
    }
}

fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a body is written on an HTTP/1.1 connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Coding {
    /// As is (a length was stated, or the close ends it).
    Raw,
    Chunked,
    /// No body may follow the head (a response to HEAD).
    Nothing,
}

/// `request` as an HTTP/1.1 request head for a backend; `host` goes first.
pub(super) fn encode_request(request: &Request, out: &mut Vec<u8>) -> Coding {
    let head = &request.head;
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = head.headers.get(header::HOST) {
        push_field(out, &header::HOST, host);
    }
    push_fields(out, &head.headers, Some(&header::HOST));
    let coding = match request.body {
        BodyLength::None => {
            let bodyless = matches!(
                head.method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
            );
            if !bodyless {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Coding::Raw
        }
        BodyLength::Exactly(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
            Coding::Raw
        }
        BodyLength::Unknown => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Coding::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    coding
}

/// What an HTTP/1.x client connection allows its response.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClientFraming {
    pub version: Version,
    /// The connection carries another request after this one.
    pub keep_alive: bool,
    /// The request was HEAD: no body follows the head.
    pub head_request: bool,
}

/// `response` as an HTTP/1.x response head for a client. Returns how its
/// body is written, and whether the connection must close after it (an
/// HTTP/1.0 client reads a body of unknown length to the close).
pub(super) fn encode_response(
    response: &Response,
    client: ClientFraming,
    out: &mut Vec<u8>,
) -> (Coding, bool) {
    let status = response.head.status.as_u16();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(response.head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(response).as_bytes());
    out.extend_from_slice(b"\r\n");
    push_fields(out, &response.head.headers, None);
    let (coding, until_close) = match response.body {
        BodyLength::None => {
            let stated = response.head.headers.contains_key(header::CONTENT_LENGTH);
            if !stated && !matches!(status, 204 | 304) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            (Coding::Nothing, false)
        }
        BodyLength::Exactly(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
            (Coding::Raw, false)
        }
        BodyLength::Unknown if client.version == Version::Http11 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            (Coding::Chunked, false)
        }
        BodyLength::Unknown => (Coding::Raw, true),
    };
    let close = !client.keep_alive || until_close;
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client.version == Version::Http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let coding = if client.head_request {
        Coding::Nothing
    } else {
        coding
    };
    (coding, close)
}

/// `n` in decimal, without the formatting machinery.
pub(super) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn reason(response: &Response) -> &'static str {
    let status = response.head.status;
    status
        .canonical_reason()
        .unwrap_or_else(|| reason_phrase(status.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, parse_response, Limits};

    #[test]
    fn a_request_head_loses_its_connection_fields_and_keeps_its_body_length() {
        let raw = b"POST /a?b=1 HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\n";
        let head = parse_request(raw, &Limits::default()).unwrap().unwrap();
        let request = decode_request(head).unwrap();
        assert_eq!(request.body, BodyLength::Exactly(5));
        assert_eq!(request.head.uri, "/a?b=1");
        let h = &request.head.headers;
        assert_eq!(h["host"], "gw");
        assert_eq!(h["te"], "trailers");
        assert!(h.get("x-hop").is_none() && h.get("connection").is_none());
        assert!(h.get("content-length").is_none(), "framing is restated");
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        let mut out = Vec::new();
        assert_eq!(encode_request(&request, &mut out), Coding::Raw);
        let again = parse_request(&out, &Limits::default()).unwrap().unwrap();
        assert_eq!(again.framing, BodyFraming::Length(5));
        assert_eq!(again.headers[0].0, "host", "host first");
    }

    #[test]
    fn an_absolute_form_target_is_served_with_its_own_authority() {
        let raw = b"GET http://api.example:8080/a?b=1 HTTP/1.1\r\nHost: other.example\r\n\r\n";
        let head = parse_request(raw, &Limits::default()).unwrap().unwrap();
        let request = decode_request(head).unwrap();
        assert_eq!(request.head.uri, "/a?b=1");
        assert_eq!(request.head.headers["host"], "api.example:8080");
        assert_eq!(request.head.headers.get_all("host").iter().count(), 1);
        let raw = b"GET http://user@api.example/ HTTP/1.1\r\nHost: api.example\r\n\r\n";
        let head = parse_request(raw, &Limits::default()).unwrap().unwrap();
        assert!(
            decode_request(head).is_err(),
            "userinfo is not an authority to serve"
        );
    }

    #[test]
    fn a_response_of_unknown_length_is_chunked_for_http11_and_closed_for_http10() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-B: 1\r\n\r\n";
        let head = parse_response(raw, "GET", &Limits::default())
            .unwrap()
            .unwrap();
        let response = decode_response(head).unwrap();
        assert_eq!(response.body, BodyLength::Unknown);
        let mut framing = ClientFraming {
            version: Version::Http11,
            keep_alive: true,
            head_request: false,
        };
        let mut out = Vec::new();
        assert_eq!(
            encode_response(&response, framing, &mut out),
            (Coding::Chunked, false)
        );
        framing.version = Version::Http10;
        out.clear();
        assert_eq!(
            encode_response(&response, framing, &mut out),
            (Coding::Raw, true)
        );
        assert!(out.ends_with(b"connection: close\r\n\r\n"));
    }

    #[test]
    fn a_head_response_keeps_its_length_as_metadata() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n";
        let head = parse_response(raw, "HEAD", &Limits::default())
            .unwrap()
            .unwrap();
        let response = decode_response(head).unwrap();
        assert_eq!(response.body, BodyLength::None);
        let framing = ClientFraming {
            version: Version::Http11,
            keep_alive: true,
            head_request: true,
        };
        let mut out = Vec::new();
        let (coding, _) = encode_response(&response, framing, &mut out);
        assert_eq!(coding, Coding::Nothing);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("content-length: 42\r\n"), "{text}");
    }
}
