//! HTTP/1.1 request framing, sans-IO (RFC 9112).
//!
//! [`parse_request`] reads a request head with httparse and decides, once and
//! strictly, how long the body is; [`ChunkedDecoder`] walks a chunked body as
//! bytes arrive. Nothing here owns a socket or a clock: the proxy drives it
//! under either transport.
//!
//! Request smuggling lives in the gaps between lenient parsers, so every
//! ambiguity is an error that closes the connection: Content-Length with
//! Transfer-Encoding, repeated or malformed Content-Length, Transfer-Encoding
//! whose last coding is not `chunked`, bad chunk sizes, bare CR or LF, and
//! obs-fold (httparse rejects the last two in requests).

use thiserror::Error;

/// Limits on what a client may send.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of request line plus headers.
    pub max_head_bytes: usize,
    /// Header fields.
    pub max_headers: usize,
    /// Body bytes (Content-Length, or the sum of chunks).
    pub max_body: u64,
    /// Bytes of chunked trailers.
    pub max_trailer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_body: 64 << 20,
            max_trailer_bytes: 8 * 1024,
        }
    }
}

/// Why a request cannot be served; each maps to one response status, and
/// every one of them ends the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("transfer coding not implemented")]
    UnsupportedTransferCoding,
    #[error("expectation not supported")]
    UnsupportedExpectation,
}

impl HttpError {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::HeadTooLarge(_) | Self::TooManyHeaders(_) => 431,
            Self::BodyTooLarge(_) => 413,
            Self::UnsupportedTransferCoding => 501,
            Self::UnsupportedExpectation => 417,
        }
    }
}

/// The reason phrase of the statuses Rauta writes itself (RFC 9110 §15).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// HTTP/1.0 or HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding: decode with [`ChunkedDecoder`].
    Chunked,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (origin form: path and query).
    pub target: String,
    pub version: Version,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes the head took in the buffer (the body starts there).
    pub head_len: usize,
    pub framing: BodyFraming,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: send 100 before reading the body.
    pub expect_continue: bool,
}

impl RequestHead {
    /// Values of the header fields named `name` (case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        field_values(&self.headers, name)
    }
}

/// The largest head taken for an upgrade: it becomes one HEADERS frame of
/// HPACK literals (a few bytes per field more than the head, and the
/// pseudo-headers), which must fit the 16,384-byte frame every HTTP/2 peer
/// accepts before SETTINGS say otherwise (RFC 9113 §4.2).
pub const MAX_UPGRADE_HEAD: usize = 15 * 1024;

/// Whether `head` asks to switch to HTTP/2 over cleartext (RFC 7540
/// §3.2): `Upgrade: h2c`, `Connection: Upgrade, HTTP2-Settings`, exactly
/// one `HTTP2-Settings` field, and no body. A request with a body, or a
/// head too large for one frame, is served over HTTP/1.1 (a server may
/// ignore an upgrade).
pub fn is_h2c_upgrade(head: &RequestHead) -> bool {
    let (Ok(upgrade), Ok(connection)) = (
        list_tokens(&head.headers, "upgrade"),
        connection_tokens(&head.headers),
    ) else {
        return false;
    };
    head.version == Version::Http11
        && head.framing == BodyFraming::Empty
        && head.head_len <= MAX_UPGRADE_HEAD
        && upgrade.iter().any(|t| t == "h2c")
        && connection.iter().any(|t| t == "upgrade")
        && connection.iter().any(|t| t == "http2-settings")
        && head.values("http2-settings").count() == 1
}

/// A head's header fields, names as sent.
type Fields = [(String, Vec<u8>)];

fn field_values<'a>(fields: &'a Fields, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Comma-separated list elements of the named fields, trimmed, lowercase.
fn list_tokens(fields: &Fields, name: &str) -> Result<Vec<String>, HttpError> {
    let mut tokens = Vec::new();
    for value in field_values(fields, name) {
        let text =
            std::str::from_utf8(value).map_err(|_| HttpError::Malformed("non-ASCII list field"))?;
        for token in text.split(',') {
            let token = token.trim_matches([' ', '\t']);
            if !token.is_empty() {
                tokens.push(token.to_ascii_lowercase());
            }
        }
    }
    Ok(tokens)
}

/// The end of a head as httparse reports it, under the limits: `Ok(None)`
/// for an incomplete head that may still fit. `what` names the first line
/// in the error.
fn head_end(
    parsed: httparse::Result<usize>,
    buffered: usize,
    limits: &Limits,
    what: &'static str,
) -> Result<Option<usize>, HttpError> {
    let head_len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buffered > limits.max_head_bytes => {
            return Err(HttpError::HeadTooLarge(limits.max_head_bytes))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders(limits.max_headers))
        }
        Err(_) => return Err(HttpError::Malformed(what)),
    };
    if head_len > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge(limits.max_head_bytes));
    }
    Ok(Some(head_len))
}

fn version(minor: Option<u8>) -> Result<Version, HttpError> {
    match minor {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(HttpError::Malformed("unsupported HTTP version")),
    }
}

fn copy_fields(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// Whether the connection stays open after this message (RFC 9112 §9.3).
fn keep_alive(version: Version, connection: &[String]) -> bool {
    match version {
        Version::Http11 => !connection.iter().any(|t| t == "close"),
        Version::Http10 => connection.iter().any(|t| t == "keep-alive"),
    }
}

/// Header slots kept on the stack while parsing a head.
const STACK_SLOTS: usize = 128;

type Slot<'b> = std::mem::MaybeUninit<httparse::Header<'b>>;

/// `max` header slots for httparse: on the stack for the usual limit, on
/// the heap beyond it.
fn header_slots<'s, 'b>(
    stack: &'s mut [Slot<'b>; STACK_SLOTS],
    heap: &'s mut Vec<Slot<'b>>,
    max: usize,
) -> &'s mut [Slot<'b>] {
    if max <= STACK_SLOTS {
        &mut stack[..max]
    } else {
        heap.resize_with(max, std::mem::MaybeUninit::uninit);
        &mut heap[..]
    }
}

/// Parse a request head from the start of `buf`. `Ok(None)`: incomplete,
/// read more (the limits are enforced on what is there already).
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HttpError> {
    // Slots on the stack for the usual limit: no allocation, and httparse
    // writes only the ones it fills.
    let mut stack = [const { std::mem::MaybeUninit::uninit() }; STACK_SLOTS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers);
    let mut request = httparse::Request::new(&mut []);
    let parsed = request.parse_with_uninit_headers(buf, slots);
    let Some(head_len) = head_end(
        parsed,
        buf.len(),
        limits,
        "invalid request line or header field",
    )?
    else {
        return Ok(None);
    };
    let version = version(request.version)?;
    let mut head = RequestHead {
        method: request.method.unwrap_or_default().to_owned(),
        target: request.path.unwrap_or_default().to_owned(),
        version,
        headers: copy_fields(request.headers),
        head_len,
        framing: BodyFraming::Empty,
        keep_alive: false,
        expect_continue: false,
    };

    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one ever.
    let hosts = head.values("host").count();
    if hosts > 1 || (hosts == 0 && version == Version::Http11) {
        return Err(HttpError::Malformed("exactly one Host field is required"));
    }

    head.framing = framing(&head, limits)?;
    head.keep_alive = keep_alive(version, &list_tokens(&head.headers, "connection")?);

    let expect = list_tokens(&head.headers, "expect")?;
    match expect.as_slice() {
        [] => {}
        [only] if only == "100-continue" => head.expect_continue = version == Version::Http11,
        _ => return Err(HttpError::UnsupportedExpectation),
    }
    Ok(Some(head))
}

/// RFC 9112 §6.3, strictly.
fn framing(head: &RequestHead, limits: &Limits) -> Result<BodyFraming, HttpError> {
    if head.values("transfer-encoding").next().is_some() {
        if head.values("content-length").next().is_some() {
            return Err(HttpError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if head.version == Version::Http10 {
            return Err(HttpError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        let codings = list_tokens(&head.headers, "transfer-encoding")?;
        return match codings.as_slice() {
            [only] if only == "chunked" => Ok(BodyFraming::Chunked),
            // §6.3: chunked must be the final coding of a request, or its
            // length cannot be known.
            [.., last] if last != "chunked" => Err(HttpError::Malformed(
                "Transfer-Encoding does not end in chunked",
            )),
            [] => Err(HttpError::Malformed("empty Transfer-Encoding")),
            _ if codings.iter().filter(|c| *c == "chunked").count() > 1 => {
                Err(HttpError::Malformed("chunked applied twice"))
            }
            _ => Err(HttpError::UnsupportedTransferCoding),
        };
    }
    match content_length(&head.headers)? {
        Some(n) if n > limits.max_body => Err(HttpError::BodyTooLarge(limits.max_body)),
        Some(0) | None => Ok(BodyFraming::Empty),
        Some(n) => Ok(BodyFraming::Length(n)),
    }
}

/// The Content-Length, if any: every field and every list element must be
/// the same valid number.
fn content_length(fields: &Fields) -> Result<Option<u64>, HttpError> {
    let mut length: Option<u64> = None;
    for value in field_values(fields, "content-length") {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::Malformed("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HttpError::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection (which then cannot be reused).
    UntilClose,
}

/// A parsed response head (from a backend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub version: Version,
    pub headers: Vec<(String, Vec<u8>)>,
    pub head_len: usize,
    pub framing: ResponseFraming,
    /// Whether the backend connection may carry another request.
    pub keep_alive: bool,
}

/// Parse a backend's response head to a request with `method`. `Ok(None)`:
/// incomplete. A malformed response is the backend's fault: the caller
/// answers its client 502.
pub fn parse_response(
    buf: &[u8],
    method: &str,
    limits: &Limits,
) -> Result<Option<ResponseHead>, HttpError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut stack = [const { std::mem::MaybeUninit::uninit() }; STACK_SLOTS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers);
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        slots,
    );
    let Some(head_len) = head_end(
        parsed,
        buf.len(),
        limits,
        "invalid status line or header field",
    )?
    else {
        return Ok(None);
    };
    let version = version(response.version)?;
    let status = response.code.unwrap_or(0);
    let headers = copy_fields(response.headers);
    let mut keep_alive = keep_alive(version, &list_tokens(&headers, "connection")?);
    let no_body = method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let framing = if no_body {
        ResponseFraming::Empty
    } else if field_values(&headers, "transfer-encoding").next().is_some() {
        let codings = list_tokens(&headers, "transfer-encoding")?;
        if codings.last().is_some_and(|c| c == "chunked") && codings.len() == 1 {
            ResponseFraming::Chunked
        } else {
            keep_alive = false;
            ResponseFraming::UntilClose
        }
    } else {
        match content_length(&headers)? {
            Some(0) => ResponseFraming::Empty,
            Some(n) => ResponseFraming::Length(n),
            None => {
                keep_alive = false;
                ResponseFraming::UntilClose
            }
        }
    };
    Ok(Some(ResponseHead {
        status,
        reason: response.reason.unwrap_or_default().to_owned(),
        version,
        headers,
        head_len,
        framing,
        keep_alive,
    }))
}

/// The `Connection` tokens of a head's fields, lowercase (a head that
/// parsed has already passed this check).
pub fn connection_tokens(headers: &Fields) -> Result<Vec<String>, HttpError> {
    list_tokens(headers, "connection")
}

/// What a step of the chunked decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Body bytes.
    Data(&'a [u8]),
    /// One trailer field line, without its CRLF (RFC 9112 §7.1.2).
    Trailer(&'a [u8]),
    /// The body (and its trailers) ended.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decodes a chunked body (RFC 9112 §7.1) incrementally and strictly.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    body: u64,
    trailer_bytes: usize,
    limits: Limits,
}

impl ChunkedDecoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            state: ChunkState::Size,
            body: 0,
            trailer_bytes: 0,
            limits,
        }
    }

    /// Whether the final chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decode from `input`: how many bytes were consumed, and what they held
    /// (`None`: nothing to hand out yet, feed more). Call again with the
    /// rest while it consumes something.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Chunk<'a>>), HttpError> {
        match self.state {
            ChunkState::Done => Ok((0, Some(Chunk::End))),
            ChunkState::Size => {
                let Some(line_end) = find_crlf(input, 4096)? else {
                    return Ok((0, None));
                };
                let size = parse_chunk_size(&input[..line_end])?;
                self.body = self
                    .body
                    .checked_add(size)
                    .filter(|&b| b <= self.limits.max_body)
                    .ok_or(HttpError::BodyTooLarge(self.limits.max_body))?;
                self.state = if size == 0 {
                    ChunkState::Trailers
                } else {
                    ChunkState::Data(size)
                };
                Ok((line_end + 2, None))
            }
            ChunkState::Data(left) => {
                if input.is_empty() {
                    return Ok((0, None));
                }
                let n = (input.len() as u64).min(left) as usize;
                self.state = if n as u64 == left {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left - n as u64)
                };
                Ok((n, Some(Chunk::Data(&input[..n]))))
            }
            ChunkState::DataEnd => {
                if input.len() < 2 {
                    if input.first().is_some_and(|&b| b != b'\r') {
                        return Err(HttpError::Malformed("chunk data not followed by CRLF"));
                    }
                    return Ok((0, None));
                }
                if &input[..2] != b"\r\n" {
                    return Err(HttpError::Malformed("chunk data not followed by CRLF"));
                }
                self.state = ChunkState::Size;
                Ok((2, None))
            }
            ChunkState::Trailers => {
                // Each field line counts with its CRLF, and must fit whole
                // in what is left of the limit.
                let room = self
                    .limits
                    .max_trailer_bytes
                    .saturating_sub(self.trailer_bytes);
                let too_large = HttpError::HeadTooLarge(self.limits.max_trailer_bytes);
                let Some(line_end) = find_crlf(input, usize::MAX)? else {
                    // Too long for what is left, unless it may still be
                    // the empty line that ends the trailers (not counted).
                    let may_end = input.len() < 2 && input.first().is_none_or(|&b| b == b'\r');
                    if input.len() >= room && !may_end {
                        return Err(too_large);
                    }
                    return Ok((0, None));
                };
                if line_end > 0 && line_end + 2 > room {
                    return Err(too_large);
                }
                self.trailer_bytes += line_end + 2;
                if line_end == 0 {
                    self.state = ChunkState::Done;
                    return Ok((2, Some(Chunk::End)));
                }
                let line = &input[..line_end];
                if line[0] == b' ' || line[0] == b'\t' || !line.contains(&b':') {
                    return Err(HttpError::Malformed("invalid trailer field"));
                }
                Ok((line_end + 2, Some(Chunk::Trailer(line))))
            }
        }
    }
}

/// The index of the first CRLF in `input` (within `limit` bytes). A bare CR
/// or LF is an error: lenient line endings are a smuggling vector.
fn find_crlf(input: &[u8], limit: usize) -> Result<Option<usize>, HttpError> {
    for (i, &b) in input.iter().enumerate().take(limit.saturating_add(1)) {
        match b {
            b'\r' => {
                return match input.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(HttpError::Malformed("bare CR")),
                    None => Ok(None),
                }
            }
            b'\n' => return Err(HttpError::Malformed("bare LF")),
            _ => {}
        }
    }
    if input.len() > limit {
        return Err(HttpError::Malformed("line too long"));
    }
    Ok(None)
}

/// `chunk-size [ chunk-ext ]`: 1 to 16 hex digits, then optional
/// extensions, which are ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(HttpError::Malformed("invalid chunk size"));
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty()
        || (rest
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || b == b';' || b.is_ascii_graphic())
            && rest.trim_ascii_start().first() == Some(&b';'));
    if !rest_ok {
        return Err(HttpError::Malformed("invalid chunk size"));
    }
    let text = std::str::from_utf8(&line[..digits])
        .map_err(|_| HttpError::Malformed("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| HttpError::Malformed("invalid chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<RequestHead>, HttpError> {
        parse_request(text.as_bytes(), &Limits::default())
    }

    fn status(text: &str) -> u16 {
        match parse(text) {
            Err(e) => e.status(),
            Ok(Some(_)) => 200,
            Ok(None) => 0,
        }
    }

    #[test]
    fn a_plain_request_keeps_the_connection_alive() {
        let head = parse("GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/a?b=c");
        assert_eq!(head.framing, BodyFraming::Empty);
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(
            head.head_len,
            "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n".len()
        );
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
    }

    #[test]
    fn connection_and_expect_follow_the_version() {
        let head = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive);
        let head = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!head.keep_alive);
        let head = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.keep_alive);
        let head =
            parse("PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(head.expect_continue);
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n"),
            417
        );
    }

    #[test]
    fn smuggling_vectors_are_rejected() {
        let cases = [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        ];
        for case in cases {
            assert_eq!(status(case), 400, "{case:?}");
        }
        // Repeated identical lengths are one length.
        let head =
            parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
    }

    #[test]
    fn limits_give_431_and_413() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        assert_eq!(status(&big), 431);
        assert_eq!(status(&big[..18_000]), 431, "partial heads are bounded too");
        let many: String = (0..150).map(|i| format!("X{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            431
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"),
            413
        );
    }

    fn response(text: &str, method: &str) -> ResponseHead {
        parse_response(text.as_bytes(), method, &Limits::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let r = response("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", "GET");
        assert_eq!(
            (r.status, r.framing, r.keep_alive),
            (200, ResponseFraming::Length(12), true)
        );
        let r = response("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", "HEAD");
        assert_eq!(r.framing, ResponseFraming::Empty);
        for status in ["204 No Content", "304 Not Modified", "101 Switching"] {
            let r = response(&format!("HTTP/1.1 {status}\r\n\r\n"), "GET");
            assert_eq!(r.framing, ResponseFraming::Empty, "{status}");
        }
        let r = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET",
        );
        assert_eq!(r.framing, ResponseFraming::Chunked);
        let r = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET");
        assert_eq!(
            (r.framing, r.keep_alive),
            (ResponseFraming::UntilClose, false)
        );
        let r = response("HTTP/1.0 200 OK\r\n\r\n", "GET");
        assert_eq!(
            (r.framing, r.keep_alive),
            (ResponseFraming::UntilClose, false)
        );
        let r = response(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            "GET",
        );
        assert_eq!((r.framing, r.keep_alive), (ResponseFraming::Empty, false));
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "GET",
            &Limits::default()
        )
        .is_err());
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n", "GET", &Limits::default()),
            Ok(None)
        );
    }

    fn decode_all(body: &[u8], step: usize) -> Result<(Vec<u8>, usize), HttpError> {
        let mut decoder = ChunkedDecoder::new(Limits::default());
        let mut out = Vec::new();
        let mut pos = 0;
        let mut available = step.min(body.len());
        loop {
            let (n, chunk) = decoder.decode(&body[pos..available])?;
            pos += n;
            match chunk {
                Some(Chunk::Data(d)) => out.extend_from_slice(d),
                Some(Chunk::End) => return Ok((out, pos)),
                Some(Chunk::Trailer(_)) => {}
                None if n == 0 => {
                    if available == body.len() {
                        return Err(HttpError::Malformed("truncated"));
                    }
                    available = (available + step).min(body.len());
                }
                None => {}
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_at_any_split_and_stop_at_the_end() {
        let body =
            b"5;ext=1\r\nhello\r\nB\r\n, chunked w\r\n3\r\norl\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        for step in 1..body.len() {
            let (data, used) = decode_all(body, step).unwrap();
            assert_eq!(data, b"hello, chunked worl");
            assert_eq!(&body[used..], b"GET /next", "step {step}");
        }
    }

    #[test]
    fn bad_chunks_are_rejected() {
        let cases: [&[u8]; 8] = [
            b"x\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n bad\r\n\r\n",
            b"-1\r\n",
        ];
        for case in cases {
            let err = decode_all(case, case.len()).unwrap_err();
            assert_eq!(err.status(), 400, "{:?}", String::from_utf8_lossy(case));
        }
        let mut decoder = ChunkedDecoder::new(Limits {
            max_body: 4,
            ..Limits::default()
        });
        assert_eq!(decoder.decode(b"5\r\n").unwrap_err().status(), 413);
    }

    /// Trailers against a 16-byte limit, fed at every split.
    fn trailers_within_16_bytes(trailers: &[u8]) -> Result<(), HttpError> {
        let mut body = b"0\r\n".to_vec();
        body.extend_from_slice(trailers);
        body.extend_from_slice(b"\r\n");
        for step in 1..=body.len() {
            let mut decoder = ChunkedDecoder::new(Limits {
                max_trailer_bytes: 16,
                ..Limits::default()
            });
            let mut pos = 0;
            let mut available = step;
            loop {
                let (n, chunk) = decoder.decode(&body[pos..available])?;
                pos += n;
                match chunk {
                    Some(Chunk::End) => break,
                    None if n == 0 => {
                        assert!(available < body.len(), "stuck at step {step}");
                        available = (available + step).min(body.len());
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    #[test]
    fn trailers_are_held_to_their_limit_line_endings_and_all() {
        // 14 bytes and CRLF: 16, the limit.
        assert!(trailers_within_16_bytes(b"A: 0123456789a\r\n").is_ok());
        // Two lines of 8 with their CRLFs: 16.
        assert!(trailers_within_16_bytes(b"A: 123\r\nB: 456\r\n").is_ok());
        // 15 and CRLF: 17.
        let over = trailers_within_16_bytes(b"A: 0123456789ab\r\n").unwrap_err();
        assert_eq!(over.status(), 431);
        // The limit reached exactly, then one more line: refused, not a
        // wrapped-around budget.
        let more = trailers_within_16_bytes(b"A: 0123456789a\r\nB: 1\r\n").unwrap_err();
        assert_eq!(more.status(), 431);
        // 16 and CRLF: 18; it used to pass, and left the budget negative.
        let wrapped = trailers_within_16_bytes(b"A: 0123456789abc\r\nB: 1\r\n").unwrap_err();
        assert_eq!(wrapped.status(), 431);
    }
}
