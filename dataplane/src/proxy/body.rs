//! Bodies as events: read from an HTTP/1.1 connection's bytes (by length,
//! chunked — decoded strictly, trailers kept — or to the close) or from an
//! HTTP/2 stream's pipe, and written back out in either form.

use super::h1::Coding;
use crate::http1::{Chunk, ChunkedDecoder, HttpError, Limits};
use crate::http2::pipe::{Message, Pipes, StreamGone};
use crate::message::{BodyEvent, BodyLength};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// How a body is being read.
#[derive(Debug)]
pub(super) enum BodyReader {
    /// Bytes left.
    Length(u64),
    Chunked {
        decoder: ChunkedDecoder,
        trailers: HeaderMap,
    },
    /// Until the sender closes.
    UntilClose,
    /// Events from a pipe.
    Events,
    Done,
}

/// Why a body could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The bytes broke their own framing.
    Framing(HttpError),
    /// The stream behind the pipe is gone.
    Gone,
}

impl From<StreamGone> for ReadError {
    fn from(_: StreamGone) -> Self {
        Self::Gone
    }
}

impl BodyReader {
    /// For a body of `length` on an HTTP/1.1 connection.
    pub(super) fn bytes(length: BodyLength, chunked: bool, limits: &Limits) -> Self {
        match length {
            BodyLength::None | BodyLength::Exactly(0) => Self::Done,
            BodyLength::Exactly(n) => Self::Length(n),
            BodyLength::Unknown if chunked => Self::Chunked {
                decoder: ChunkedDecoder::new(limits.clone()),
                trailers: HeaderMap::new(),
            },
            BodyLength::Unknown => Self::UntilClose,
        }
    }

    /// For a body of `length` on a pipe.
    pub(super) fn events(length: BodyLength) -> Self {
        match length {
            BodyLength::None => Self::Done,
            _ => Self::Events,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// The next event from an HTTP/1.1 connection's bytes `rx` (`eof`: the
    /// peer finished sending), at most `max` bytes of data. `Ok(None)`:
    /// read more first. `queued`: the event will wait in a pipe, so its
    /// data is copied out rather than split off `rx` — a split would keep
    /// the whole receive buffer alive for a few bytes (and `rx` would
    /// allocate anew on its next read).
    pub(super) fn next_from_bytes(
        &mut self,
        rx: &mut BytesMut,
        eof: bool,
        max: usize,
        queued: bool,
    ) -> Result<Option<BodyEvent>, HttpError> {
        let take = |rx: &mut BytesMut, n: usize| {
            if queued {
                let data = Bytes::copy_from_slice(&rx[..n]);
                rx.advance(n);
                data
            } else {
                rx.split_to(n).freeze()
            }
        };
        let event = match self {
            Self::Done | Self::Events => return Ok(None),
            Self::Length(0) => BodyEvent::End,
            Self::Length(left) => {
                if rx.is_empty() || max == 0 {
                    return Ok(None);
                }
                let n = (rx.len() as u64).min(*left).min(max as u64) as usize;
                *left -= n as u64;
                // At 0 the next call gives the end.
                return Ok(Some(BodyEvent::Data(take(rx, n))));
            }
            Self::Chunked { decoder, trailers } => loop {
                let (used, chunk) = decoder.decode(rx)?;
                match chunk {
                    Some(Chunk::Data(data)) => {
                        // The data is at the front of what was given, and
                        // the decoder has moved past it: all of it goes
                        // (`rx` is bounded by the buffer already).
                        debug_assert_eq!(data.len(), used);
                        break BodyEvent::Data(take(rx, used));
                    }
                    Some(Chunk::Trailer(line)) => {
                        add_trailer(trailers, line);
                        rx.advance(used);
                    }
                    Some(Chunk::End) => {
                        rx.advance(used);
                        let trailers = std::mem::take(trailers);
                        break if trailers.is_empty() {
                            BodyEvent::End
                        } else {
                            BodyEvent::Trailers(trailers)
                        };
                    }
                    None if used == 0 => return Ok(None),
                    None => rx.advance(used),
                }
            },
            Self::UntilClose => {
                if rx.is_empty() {
                    if !eof {
                        return Ok(None);
                    }
                    BodyEvent::End
                } else {
                    let n = rx.len().min(max);
                    if n == 0 {
                        return Ok(None);
                    }
                    return Ok(Some(BodyEvent::Data(take(rx, n))));
                }
            }
        };
        if event.ends() {
            *self = Self::Done;
        }
        Ok(Some(event))
    }

    /// The next event from pipe `pipe`.
    pub(super) fn next_from_pipe(
        &mut self,
        pipes: &mut Pipes,
        pipe: usize,
    ) -> Result<Option<BodyEvent>, ReadError> {
        if !matches!(self, Self::Events) {
            return Ok(None);
        }
        match pipes.take(pipe)? {
            Some(Message::Body(event)) => {
                if event.ends() {
                    *self = Self::Done;
                }
                Ok(Some(event))
            }
            Some(other) => {
                tracing::warn!(?other, "a head where a body event belongs");
                Err(ReadError::Gone)
            }
            None => Ok(None),
        }
    }
}

/// A trailer line of a chunked body as a field; a line that is not one,
/// or a connection-specific field, is dropped.
fn add_trailer(trailers: &mut HeaderMap, line: &[u8]) {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return;
    };
    let value = line[colon + 1..].trim_ascii();
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(line[..colon].trim_ascii()),
        HeaderValue::from_bytes(value),
    ) {
        trailers.append(name, value);
    }
    crate::message::strip_connection_fields(trailers);
}

/// Write `event` in `coding` to an HTTP/1.1 connection's bytes `out`.
pub(super) fn write_bytes(coding: Coding, event: &BodyEvent, out: &mut Vec<u8>) {
    match (coding, event) {
        (Coding::Nothing, _) => {}
        (Coding::Raw, BodyEvent::Data(data)) => out.extend_from_slice(data),
        (Coding::Raw, _) => {}
        (Coding::Chunked, BodyEvent::Data(data)) => {
            if !data.is_empty() {
                push_hex(out, data.len());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
        }
        (Coding::Chunked, BodyEvent::Trailers(fields)) => {
            out.extend_from_slice(b"0\r\n");
            super::h1::push_fields(out, fields, None);
            out.extend_from_slice(b"\r\n");
        }
        (Coding::Chunked, BodyEvent::End) => out.extend_from_slice(b"0\r\n\r\n"),
    }
}

/// A chunk size in hexadecimal (RFC 9112 §7.1).
fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}
