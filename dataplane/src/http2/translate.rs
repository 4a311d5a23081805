//! HTTP/2 messages to and from the HTTP/1.1 the proxy core speaks.
//!
//! The core sees every HTTP/2 stream as one HTTP/1.1 exchange on a pipe
//! (see `docs/architecture.md`, "HTTP/2"): pseudo-headers become the
//! request line and `Host`, a body of unknown length becomes chunked with
//! its trailers, and back. Connection-specific fields, which HTTP/2
//! forbids (RFC 9113 §8.2.2), are dropped on the way in and out.

use crate::http1::{
    reason_phrase, BodyFraming, Chunk, ChunkedDecoder, HttpError, Limits, RequestHead,
    ResponseFraming, ResponseHead,
};
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use std::task::{Context, Poll};

/// Fields that describe a connection, not a message (RFC 9113 §8.2.2),
/// and HTTP/1.1 framing.
pub fn is_connection_specific(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "te",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Whether a field crosses between the protocols: not connection-specific,
/// except `te: trailers`, the one TE HTTP/2 allows (RFC 9113 §8.2.2).
fn crosses(name: &str, value: &[u8]) -> bool {
    !is_connection_specific(name)
        || (name.eq_ignore_ascii_case("te") && value.eq_ignore_ascii_case(b"trailers"))
}

/// How an HTTP/2 body is written as HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H1Body {
    /// No body (the head ended the stream).
    None,
    /// As is: the head carries `content-length`.
    Raw,
    /// Chunked, trailers after the last chunk.
    Chunked,
}

impl H1Body {
    /// For a head that did or did not end the stream.
    pub fn of(end_stream: bool, headers: &HeaderMap) -> Self {
        if end_stream {
            Self::None
        } else if headers.contains_key(http::header::CONTENT_LENGTH) {
            Self::Raw
        } else {
            Self::Chunked
        }
    }

    fn framing_field(self, out: &mut Vec<u8>) {
        if self == Self::Chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }

    pub fn data(self, out: &mut Vec<u8>, data: &[u8]) {
        match self {
            Self::None => {}
            Self::Raw => out.extend_from_slice(data),
            Self::Chunked if data.is_empty() => {}
            Self::Chunked => {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// The end of the body, with its trailers where the coding has room.
    pub fn end(self, out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
        if self != Self::Chunked {
            return;
        }
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.into_iter().flatten() {
            if !is_connection_specific(name.as_str()) {
                push_field(out, name.as_str(), value.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_fields(out: &mut Vec<u8>, headers: &HeaderMap, skip_host: bool) {
    for (name, value) in headers {
        if !crosses(name.as_str(), value.as_bytes()) || (skip_host && name == http::header::HOST) {
            continue;
        }
        push_field(out, name.as_str(), value.as_bytes());
    }
}

/// A client's HTTP/2 request as the HTTP/1.1 head the core parses.
pub fn request_to_h1(parts: &http::request::Parts, body: H1Body) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // RFC 9113 §8.3.1: `:authority` wins over a Host field.
    let authority = parts.uri.authority().map(|a| a.as_str());
    if let Some(authority) = authority {
        push_field(&mut out, "host", authority.as_bytes());
    }
    push_fields(&mut out, &parts.headers, authority.is_some());
    body.framing_field(&mut out);
    out.extend_from_slice(b"\r\n");
    out
}

/// A backend's HTTP/2 response as the HTTP/1.1 head the core parses.
pub fn response_to_h1(parts: &http::response::Parts, body: H1Body) -> Vec<u8> {
    let status = parts.status.as_u16();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    push_fields(&mut out, &parts.headers, false);
    body.framing_field(&mut out);
    let no_length = !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    if body == H1Body::None && no_length && !matches!(status, 204 | 304) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn header_map(fields: &[(String, Vec<u8>)], skip: impl Fn(&str) -> bool) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        if !crosses(name, value) || skip(name) {
            continue;
        }
        // The core's parser admitted these; a field HTTP/2 cannot carry
        // (an upper-case name is fine: it is lowered) is left out.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The core's HTTP/1.1 request to a backend, as an HTTP/2 request.
pub fn h1_to_request(head: &RequestHead) -> Result<Request<()>, HttpError> {
    let host = head
        .values("host")
        .next()
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or("");
    let uri = Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(head.target.as_str())
        .build()
        .map_err(|_| HttpError::Malformed("request target"))?;
    let method =
        Method::from_bytes(head.method.as_bytes()).map_err(|_| HttpError::Malformed("method"))?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = header_map(&head.headers, |n| n.eq_ignore_ascii_case("host"));
    Ok(request)
}

/// The core's HTTP/1.1 response to a client, as an HTTP/2 response.
pub fn h1_to_response(head: &ResponseHead) -> Result<Response<()>, HttpError> {
    let mut response = Response::new(());
    *response.status_mut() =
        StatusCode::from_u16(head.status).map_err(|_| HttpError::Malformed("status"))?;
    *response.headers_mut() = header_map(&head.headers, |_| false);
    Ok(response)
}

/// A body the core writes, read back piece by piece.
#[derive(Debug)]
pub enum FromCore {
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

impl FromCore {
    pub fn request(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => Self::Done,
            BodyFraming::Length(n) => Self::Length(n),
            BodyFraming::Chunked => Self::Chunked(ChunkedDecoder::new(unlimited())),
        }
    }

    pub fn response(framing: ResponseFraming) -> Self {
        match framing {
            ResponseFraming::Empty | ResponseFraming::Length(0) => Self::Done,
            ResponseFraming::Length(n) => Self::Length(n),
            // The core writes chunked to HTTP/1.1 clients, which a pipe is.
            ResponseFraming::Chunked | ResponseFraming::UntilClose => {
                Self::Chunked(ChunkedDecoder::new(unlimited()))
            }
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }
}

fn unlimited() -> Limits {
    Limits {
        max_body: u64::MAX,
        ..Limits::default()
    }
}

/// Why a stream's body could not move.
#[derive(Debug)]
pub enum BodyError {
    /// The core wrote a broken body (a bug, not input).
    Framing(HttpError),
    /// The stream was reset or its connection lost.
    Stream(h2::Error),
}

/// Move body bytes the core wrote into an HTTP/2 stream, as far as the
/// stream's send window allows (a window's worth at most is buffered by
/// `h2`). Returns whether anything moved; the body is over when `reader`
/// is done.
pub fn send_body(
    send: &mut SendStream<Bytes>,
    reader: &mut FromCore,
    from_core: &mut Vec<u8>,
    trailers: &mut HeaderMap,
    cx: &mut Context<'_>,
) -> Result<bool, BodyError> {
    let mut progress = false;
    while !reader.is_done() && !from_core.is_empty() {
        send.reserve_capacity(from_core.len());
        // Until there is room or `h2` holds our waker: a poll that reports
        // an increase registers nothing.
        while send.capacity() == 0 {
            match send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Err(BodyError::Stream(e)),
                Poll::Ready(None) => return Err(BodyError::Stream(h2::Reason::CANCEL.into())),
                Poll::Pending => return Ok(progress),
            }
        }
        let room = send.capacity();
        match reader {
            FromCore::Length(left) => {
                let n = (from_core.len() as u64).min(*left).min(room as u64) as usize;
                *left -= n as u64;
                let end = *left == 0;
                let data = Bytes::copy_from_slice(&from_core[..n]);
                from_core.drain(..n);
                send.send_data(data, end).map_err(BodyError::Stream)?;
                if end {
                    *reader = FromCore::Done;
                }
            }
            FromCore::Chunked(decoder) => {
                let (used, piece) = decoder.decode(from_core).map_err(BodyError::Framing)?;
                match piece {
                    Some(Chunk::Data(data)) => {
                        let data = Bytes::copy_from_slice(data);
                        send.send_data(data, false).map_err(BodyError::Stream)?;
                    }
                    Some(Chunk::Trailer(line)) => add_trailer(trailers, line),
                    Some(Chunk::End) => {
                        if trailers.is_empty() {
                            send.send_data(Bytes::new(), true)
                        } else {
                            send.send_trailers(std::mem::take(trailers))
                        }
                        .map_err(BodyError::Stream)?;
                        *reader = FromCore::Done;
                    }
                    None if used == 0 => return Ok(progress),
                    None => {}
                }
                from_core.drain(..used);
            }
            FromCore::Done => {}
        }
        progress = true;
    }
    Ok(progress)
}

fn add_trailer(trailers: &mut HeaderMap, line: &[u8]) {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return;
    };
    let value = line[colon + 1..].trim_ascii();
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(line[..colon].trim_ascii()),
        HeaderValue::from_bytes(value),
    ) {
        if !is_connection_specific(name.as_str()) {
            trailers.append(name, value);
        }
    }
}

/// What [`recv_body`] did.
#[derive(Debug)]
pub enum Received {
    /// Moved bytes (or not); more may come.
    Some(bool),
    /// The body and its trailers are in `to_core`.
    Ended,
    Failed(h2::Error),
}

/// Move an HTTP/2 stream's body into `to_core` as HTTP/1.1, up to `limit`
/// buffered bytes. Flow-control capacity is released as bytes move, so the
/// peer's window tracks what the core has room for.
pub fn recv_body(
    recv: &mut RecvStream,
    coding: H1Body,
    to_core: &mut Vec<u8>,
    limit: usize,
    cx: &mut Context<'_>,
) -> Received {
    let mut moved = false;
    while to_core.len() < limit {
        match recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                coding.data(to_core, &data);
                let _ = recv.flow_control().release_capacity(data.len());
                moved = true;
            }
            Poll::Ready(Some(Err(error))) => return Received::Failed(error),
            Poll::Ready(None) => {
                return match recv.poll_trailers(cx) {
                    Poll::Ready(Ok(trailers)) => {
                        coding.end(to_core, trailers.as_ref());
                        Received::Ended
                    }
                    Poll::Ready(Err(error)) => Received::Failed(error),
                    Poll::Pending => Received::Some(moved),
                }
            }
            Poll::Pending => break,
        }
    }
    Received::Some(moved)
}

/// The HEADERS frame (RFC 9113 §6.2) that makes an `Upgrade: h2c` request
/// stream 1 of the new connection (RFC 7540 §3.2). Fields are HPACK
/// literals without indexing (RFC 7541 §6.2.2): a frame `h2` decodes like
/// any other.
pub fn upgrade_stream_frame(head: &RequestHead) -> Vec<u8> {
    let host = head.values("host").next().unwrap_or(b"");
    let mut block = Vec::with_capacity(head.head_len + 64);
    for (name, value) in [
        (":method", head.method.as_bytes()),
        (":scheme", b"http".as_slice()),
        (":path", head.target.as_bytes()),
        (":authority", host),
    ] {
        hpack_literal(&mut block, name.as_bytes(), value);
    }
    for (name, value) in &head.headers {
        if is_connection_specific(name) || name.eq_ignore_ascii_case("host") {
            continue;
        }
        hpack_literal(&mut block, name.to_ascii_lowercase().as_bytes(), value);
    }
    let len = block.len() as u32;
    let mut frame = Vec::with_capacity(9 + block.len());
    frame.extend_from_slice(&len.to_be_bytes()[1..]);
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    frame.extend_from_slice(&[0x1, 0x1 | 0x4, 0, 0, 0, 1]);
    frame.extend_from_slice(&block);
    frame
}

fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// A string literal without Huffman coding: a 7-bit-prefix length
/// (RFC 7541 §5.1, §5.2), then the octets.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut len = s.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}

/// The largest frame payload a peer may send before SETTINGS say
/// otherwise (RFC 9113 §4.2, SETTINGS_MAX_FRAME_SIZE's initial value).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16_384;

/// Check what a client sent after `Upgrade: h2c` as far as it has come:
/// the connection preface, then a SETTINGS frame (RFC 9113 §3.4) no larger
/// than the default maximum frame size. Judged from the frame header, so a
/// client announcing 16 MiB is refused before any of it is held.
pub fn check_first_frame(buf: &[u8]) -> Result<(), &'static str> {
    let preface = crate::proxy::HTTP2_PREFACE;
    let seen = buf.len().min(preface.len());
    if buf[..seen] != preface[..seen] {
        return Err("not the HTTP/2 connection preface");
    }
    let Some(header) = buf.get(preface.len()..preface.len() + 9) else {
        return Ok(());
    };
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let (kind, flags) = (header[3], header[4]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    if kind != 0x4 || flags & 0x1 != 0 || stream != 0 {
        return Err("the first frame is not SETTINGS");
    }
    if len > DEFAULT_MAX_FRAME_SIZE {
        return Err("the first frame is larger than the maximum frame size");
    }
    if !len.is_multiple_of(6) {
        return Err("a SETTINGS frame's length is not a multiple of 6");
    }
    Ok(())
}

/// Where the client's first frame after the connection preface ends, once
/// it is all in `buf`.
pub fn first_frame_end(buf: &[u8]) -> Option<usize> {
    let start = crate::proxy::HTTP2_PREFACE.len();
    let header = buf.get(start..start + 9)?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let end = start + 9 + len;
    (buf.len() >= end).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, parse_response};

    fn parts(request: Request<()>) -> http::request::Parts {
        request.into_parts().0
    }

    #[test]
    fn an_http2_request_becomes_a_framed_http11_head() {
        let request = Request::builder()
            .method("POST")
            .uri("http://example.com:8080/a/b?x=1")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("host", "ignored.example")
            .body(())
            .unwrap();
        let head = request_to_h1(&parts(request), H1Body::Chunked);
        let parsed = parse_request(&head, &Limits::default()).unwrap().unwrap();
        assert_eq!(parsed.method, "POST");
        assert_eq!(parsed.target, "/a/b?x=1");
        let host: Vec<&[u8]> = parsed.values("host").collect();
        assert_eq!(host, [b"example.com:8080".as_slice()], ":authority wins");
        assert_eq!(parsed.framing, BodyFraming::Chunked);
        let te: Vec<&[u8]> = parsed.values("te").collect();
        assert_eq!(te, [b"trailers".as_slice()], "the one TE HTTP/2 allows");
        assert_eq!(parsed.head_len, head.len());
    }

    #[test]
    fn a_bodyless_http2_response_gets_a_length_and_keeps_a_head_length() {
        let response = Response::builder().status(503).body(()).unwrap();
        let head = response_to_h1(&response.into_parts().0, H1Body::None);
        let parsed = parse_response(&head, "GET", &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(parsed.status, 503);
        assert!(
            matches!(
                parsed.framing,
                ResponseFraming::Empty | ResponseFraming::Length(0)
            ),
            "{:?}",
            parsed.framing
        );
        let response = Response::builder()
            .status(200)
            .header("content-length", "42")
            .body(())
            .unwrap();
        let head = response_to_h1(&response.into_parts().0, H1Body::None);
        let parsed = parse_response(&head, "HEAD", &Limits::default())
            .unwrap()
            .unwrap();
        let length = parsed
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.as_slice());
        assert_eq!(length, Some(b"42".as_slice()), "HEAD keeps the length");
    }

    #[test]
    fn an_http11_request_becomes_an_http2_request() {
        let raw = b"GET /p?q HTTP/1.1\r\nHost: backend:80\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\n";
        let head = parse_request(raw, &Limits::default()).unwrap().unwrap();
        let request = h1_to_request(&head).unwrap();
        assert_eq!(request.uri().to_string(), "http://backend:80/p?q");
        assert!(request.headers().get("host").is_none());
        assert!(request.headers().get("connection").is_none());
        assert!(request.headers().get("keep-alive").is_none());
        let values: Vec<&str> = request
            .headers()
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values, ["1", "2"]);
    }

    #[test]
    fn trailers_cross_a_chunked_body_both_ways() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("fine"));
        trailers.insert("connection", HeaderValue::from_static("close"));
        let mut out = Vec::new();
        H1Body::Chunked.data(&mut out, b"hello");
        H1Body::Chunked.end(&mut out, Some(&trailers));
        let mut decoder = ChunkedDecoder::new(Limits::default());
        let (mut pos, mut data, mut back) = (0, Vec::new(), HeaderMap::new());
        loop {
            let (used, piece) = decoder.decode(&out[pos..]).unwrap();
            match piece {
                Some(Chunk::Data(d)) => data.extend_from_slice(d),
                Some(Chunk::Trailer(line)) => add_trailer(&mut back, line),
                Some(Chunk::End) => break,
                None => assert!(used > 0, "stalled at {pos}"),
            }
            pos += used;
        }
        assert_eq!(data, b"hello");
        assert_eq!(back.get("grpc-status").unwrap(), "0");
        assert_eq!(back.get("grpc-message").unwrap(), "fine");
        assert!(
            back.get("connection").is_none(),
            "connection-specific dropped"
        );
    }

    #[test]
    fn the_upgrade_frame_is_one_headers_frame_on_stream_1() {
        let long = "v".repeat(300);
        let raw = format!(
            "GET /up HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Long: {long}\r\n\r\n"
        );
        let head = parse_request(raw.as_bytes(), &Limits::default())
            .unwrap()
            .unwrap();
        assert!(crate::http1::is_h2c_upgrade(&head));
        let frame = upgrade_stream_frame(&head);
        let len = u32::from_be_bytes([0, frame[0], frame[1], frame[2]]) as usize;
        assert_eq!(len, frame.len() - 9);
        assert_eq!(&frame[3..9], &[0x1, 0x5, 0, 0, 0, 1]);
        let block = &frame[9..];
        // The first field: literal, new name ":method", value "GET".
        assert_eq!(&block[..13], b"\x00\x07:method\x03GET");
        // A 300-byte value: 127, then 300 - 127 = 173 as 7-bit groups.
        let at = block
            .windows(7)
            .position(|w| w == b"x-long\x7f".as_slice())
            .unwrap();
        assert_eq!(&block[at + 7..at + 9], &[0x80 | (173 % 128) as u8, 1]);
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !block.windows(gone.len()).any(|w| w == gone.as_bytes()),
                "{gone}"
            );
        }
    }

    #[test]
    fn an_upgrade_is_taken_only_while_its_frame_fits_the_default_frame_size() {
        let head_of = |padding: usize| {
            let fields: String = (0..padding / 100)
                .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(90)))
                .collect();
            let raw = format!(
                "GET / HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n{fields}\r\n"
            );
            let limits = Limits {
                max_head_bytes: 64 * 1024,
                max_headers: 1000,
                ..Limits::default()
            };
            parse_request(raw.as_bytes(), &limits).unwrap().unwrap()
        };
        let mut padding = 100;
        while head_of(padding + 100).head_len <= crate::http1::MAX_UPGRADE_HEAD {
            padding += 100;
        }
        let largest = head_of(padding);
        assert!(crate::http1::is_h2c_upgrade(&largest));
        assert!(upgrade_stream_frame(&largest).len() - 9 <= 16_384);
        assert!(!crate::http1::is_h2c_upgrade(&head_of(padding + 100)));
    }

    #[test]
    fn the_first_frame_after_an_upgrade_is_judged_by_its_header() {
        let mut buf = crate::proxy::HTTP2_PREFACE[..10].to_vec();
        assert_eq!(
            check_first_frame(&buf),
            Ok(()),
            "a partial preface may go on"
        );
        buf = crate::proxy::HTTP2_PREFACE.to_vec();
        let mut settings = buf.clone();
        settings.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0]);
        assert_eq!(check_first_frame(&settings), Ok(()));
        let mut huge = buf.clone();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0x4, 0, 0, 0, 0, 0]);
        assert!(check_first_frame(&huge).is_err(), "16 MiB announced");
        let mut headers = buf.clone();
        headers.extend_from_slice(&[0, 0, 6, 0x1, 0x4, 0, 0, 0, 1]);
        assert!(check_first_frame(&headers).is_err(), "not SETTINGS");
        let mut odd = buf;
        odd.extend_from_slice(&[0, 0, 5, 0x4, 0, 0, 0, 0, 0]);
        assert!(check_first_frame(&odd).is_err());
        assert!(check_first_frame(b"GET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn the_first_frame_after_the_preface_is_found_once_whole() {
        let mut buf = crate::proxy::HTTP2_PREFACE.to_vec();
        buf.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0]);
        assert_eq!(first_frame_end(&buf), None);
        buf.extend_from_slice(&[0, 3, 0, 0, 0, 100]);
        assert_eq!(first_frame_end(&buf), Some(buf.len()));
    }
}
