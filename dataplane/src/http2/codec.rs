//! The HTTP/2 codec: `h2`'s heads and data frames to and from the message
//! model ([`crate::message`]), both roles; and the checks and frames of an
//! `Upgrade: h2c`.
//!
//! A request's `:authority` becomes its `host` field (RFC 9113 §8.3.1:
//! `:authority` wins over a Host field) and back; connection-specific
//! fields, which HTTP/2 forbids (RFC 9113 §8.2.2), never cross; a body's
//! length is `content-length` or the end of the stream. Data frames pass
//! through as the `Bytes` `h2` gave, never copied.

use super::io::H2Io;
use super::pipe::{Message, Queue};
use crate::http1::RequestHead;
use crate::message::{
    is_connection_specific, origin_form, strip_connection_fields, BodyEvent, BodyLength, Request,
    Response,
};
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Uri};
use std::task::{Context, Poll};

/// What the head says of the body: none if it ended the stream, else its
/// `content-length` (taken out: codecs restate it) or unknown.
fn body_length(end_stream: bool, headers: &mut HeaderMap, keep_length: bool) -> BodyLength {
    if end_stream {
        return BodyLength::None;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if !keep_length {
        headers.remove(header::CONTENT_LENGTH);
    }
    length.map_or(BodyLength::Unknown, BodyLength::Exactly)
}

/// A client's HTTP/2 request as a message.
pub fn request_from_h2(mut parts: http::request::Parts, end_stream: bool) -> Request {
    strip_connection_fields(&mut parts.headers);
    if let Some(authority) = parts.uri.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
    }
    let body = body_length(end_stream, &mut parts.headers, false);
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = origin_form(&parts.uri);
    }
    parts.version = http::Version::HTTP_11;
    Request { head: parts, body }
}

/// A request for an h2c backend: `host` becomes `:authority`. Returns it
/// and whether the head ends the stream.
pub fn request_to_h2(request: Request) -> (http::Request<()>, bool) {
    let Request { mut head, body } = request;
    let authority = head
        .headers
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = authority;
    uri.path_and_query = head.uri.path_and_query().cloned();
    if uri.authority.is_none() {
        uri.authority = Some(Authority::from_static("localhost"));
    }
    if let Ok(full) = Uri::from_parts(uri) {
        head.uri = full;
    }
    head.version = http::Version::HTTP_2;
    let end = set_length(&mut head.headers, body);
    (http::Request::from_parts(head, ()), end)
}

/// A backend's HTTP/2 response as a message.
pub fn response_from_h2(mut parts: http::response::Parts, end_stream: bool) -> Response {
    strip_connection_fields(&mut parts.headers);
    // With no body, the length is metadata (a HEAD or 304 response).
    let body = body_length(end_stream, &mut parts.headers, end_stream);
    parts.version = http::Version::HTTP_11;
    Response { head: parts, body }
}

/// A response for an HTTP/2 client. Returns it and whether the head ends
/// the stream.
pub fn response_to_h2(response: Response) -> (http::Response<()>, bool) {
    let Response { mut head, body } = response;
    head.version = http::Version::HTTP_2;
    let end = set_length(&mut head.headers, body);
    (http::Response::from_parts(head, ()), end)
}

/// State a known length as `content-length`; returns whether no body
/// follows.
fn set_length(headers: &mut HeaderMap, body: BodyLength) -> bool {
    match body {
        BodyLength::None => true,
        BodyLength::Exactly(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            false
        }
        BodyLength::Unknown => false,
    }
}

/// Move body events from `queue` into an HTTP/2 stream, as far as the
/// stream's send window allows (a window's worth at most is buffered by
/// `h2`). Returns whether anything moved; `done` is set with the last.
pub fn send_events(
    send: &mut SendStream<Bytes>,
    queue: &mut Queue,
    done: &mut bool,
    cx: &mut Context<'_>,
) -> Result<bool, h2::Error> {
    let mut progress = false;
    while !*done {
        let Some(message) = queue.pop() else {
            break;
        };
        let event = match message {
            Message::Body(event) => event,
            other => {
                tracing::warn!(?other, "a head where a body event belongs");
                return Err(h2::Reason::INTERNAL_ERROR.into());
            }
        };
        match event {
            BodyEvent::Data(mut data) => {
                if data.is_empty() {
                    progress = true;
                    continue;
                }
                send.reserve_capacity(data.len());
                // Until there is room or `h2` holds our waker: a poll that
                // reports an increase registers nothing.
                while send.capacity() == 0 {
                    match send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Err(e),
                        Poll::Ready(None) => return Err(h2::Reason::CANCEL.into()),
                        Poll::Pending => {
                            queue.unpop(Message::Body(BodyEvent::Data(data)));
                            return Ok(progress);
                        }
                    }
                }
                let n = send.capacity().min(data.len());
                let rest = data.split_off(n);
                // The last data of the body ends the stream itself: no
                // empty DATA frame after it.
                let last = rest.is_empty() && queue.next_ends_body();
                send.send_data(data, last)?;
                if last {
                    queue.pop();
                    *done = true;
                } else if !rest.is_empty() {
                    queue.unpop(Message::Body(BodyEvent::Data(rest)));
                }
            }
            BodyEvent::Trailers(trailers) => {
                send.send_trailers(trailers)?;
                *done = true;
            }
            BodyEvent::End => {
                send.send_data(Bytes::new(), true)?;
                *done = true;
            }
        }
        progress = true;
    }
    Ok(progress)
}

/// What [`recv_events`] did.
#[derive(Debug)]
pub enum Received {
    /// Moved events (or not); more may come.
    Some(bool),
    /// The body and its trailers are queued.
    Ended,
    Failed(h2::Error),
}

/// Move an HTTP/2 stream's body into `queue` as events, up to `limit`
/// queued bytes, adding the DATA bytes moved to `io`'s count (what starts
/// a window measurement). Flow-control capacity is released as data
/// moves, so the peer's window tracks what the other side has room for.
pub fn recv_events(
    recv: &mut RecvStream,
    queue: &mut Queue,
    limit: usize,
    io: Option<&H2Io>,
    cx: &mut Context<'_>,
) -> Received {
    let mut moved = false;
    while queue.bytes() < limit {
        match recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = recv.flow_control().release_capacity(data.len());
                if let Some(io) = io {
                    io.buffers().data += data.len();
                }
                // Copied: `data` is a slice of the connection's read
                // buffer, which could not be reused (and would grow anew)
                // while the slice waits on the pipe.
                let data = Bytes::copy_from_slice(&data);
                queue.push(Message::Body(BodyEvent::Data(data)));
                moved = true;
            }
            Poll::Ready(Some(Err(error))) => return Received::Failed(error),
            Poll::Ready(None) => {
                return match recv.poll_trailers(cx) {
                    Poll::Ready(Ok(Some(mut trailers))) => {
                        strip_connection_fields(&mut trailers);
                        queue.push(Message::Body(BodyEvent::Trailers(trailers)));
                        Received::Ended
                    }
                    Poll::Ready(Ok(None)) => {
                        queue.push(Message::Body(BodyEvent::End));
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
        let dropped = HeaderName::from_bytes(name.as_bytes())
            .map_or(true, |n| n == header::HOST || is_connection_specific(&n));
        if dropped {
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
    use crate::http1::{parse_request, Limits};
    use http::{Request as HttpRequest, Response as HttpResponse};

    #[test]
    fn an_http2_request_becomes_a_message_and_back() {
        let request = HttpRequest::builder()
            .method("POST")
            .uri("http://example.com:8080/a/b?x=1")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("connection", "close")
            .header("host", "ignored.example")
            .header("content-length", "5")
            .body(())
            .unwrap();
        let message = request_from_h2(request.into_parts().0, false);
        assert_eq!(message.body, BodyLength::Exactly(5));
        assert_eq!(message.head.uri, "/a/b?x=1");
        let h = &message.head.headers;
        assert_eq!(h["host"], "example.com:8080", ":authority wins");
        assert_eq!(h["te"], "trailers", "the one TE HTTP/2 allows");
        assert!(h.get("connection").is_none() && h.get("content-length").is_none());
        let (again, end) = request_to_h2(message);
        assert!(!end);
        assert_eq!(again.uri().to_string(), "http://example.com:8080/a/b?x=1");
        assert!(again.headers().get("host").is_none());
        assert_eq!(again.headers()["content-length"], "5");
    }

    #[test]
    fn a_bodyless_response_ends_the_stream_and_keeps_its_length() {
        let response = HttpResponse::builder()
            .status(200)
            .header("content-length", "42")
            .body(())
            .unwrap();
        let message = response_from_h2(response.into_parts().0, true);
        assert_eq!(message.body, BodyLength::None);
        assert_eq!(
            message.head.headers["content-length"], "42",
            "HEAD keeps it"
        );
        let (again, end) = response_to_h2(message);
        assert!(end);
        assert_eq!(again.status(), 200);
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
