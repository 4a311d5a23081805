//! Forward: request and response bodies relayed between the legs, bounded
//! and re-framed (chunked decoded strictly and re-encoded, trailers kept),
//! and the end of an exchange's request.

use super::{client_response_head, Proxy, ResponseState, Transport};
use crate::error::Cause;
use crate::http1::{self, Chunk, ChunkedDecoder, HttpError};
use crate::metrics::StatusClass;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

/// How a body is being consumed.
#[derive(Debug)]
pub(super) enum BodyReader {
    /// Bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the sender closes.
    UntilClose,
    Done,
}

/// How a body is written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyWriter {
    Raw,
    Chunked,
    /// Chunked, past the last chunk: writing trailer fields.
    ChunkedTrailers,
}

/// Read past a body nobody forwards; too much of it closes the connection.
pub(super) fn discard_body(body: &mut BodyReader, rx: &mut Vec<u8>, closing: &mut bool) -> bool {
    let before = rx.len();
    match body {
        BodyReader::Length(left) => {
            let n = (rx.len() as u64).min(*left) as usize;
            rx.drain(..n);
            *left -= n as u64;
            if *left == 0 {
                *body = BodyReader::Done;
            }
        }
        BodyReader::Chunked(decoder) => loop {
            match decoder.decode(rx) {
                Ok((0, None)) => break,
                Ok((used, chunk)) => {
                    let end = chunk == Some(Chunk::End);
                    rx.drain(..used);
                    if end {
                        *body = BodyReader::Done;
                        break;
                    }
                }
                Err(_) => {
                    rx.clear();
                    *closing = true;
                    *body = BodyReader::Done;
                    break;
                }
            }
        },
        BodyReader::UntilClose | BodyReader::Done => {}
    }
    rx.len() != before
}

pub(super) fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn emit_body(out: &mut Vec<u8>, writer: BodyWriter, data: &[u8]) {
    match writer {
        BodyWriter::Raw => out.extend_from_slice(data),
        BodyWriter::Chunked | BodyWriter::ChunkedTrailers => write_chunk(out, data),
    }
}

/// A trailer field passes through to a chunked body; a body sent with a
/// length or until close has nowhere to carry it.
pub(super) fn emit_trailer(out: &mut Vec<u8>, writer: &mut BodyWriter, line: &[u8]) {
    match writer {
        BodyWriter::Raw => return,
        BodyWriter::Chunked => {
            out.extend_from_slice(b"0\r\n");
            *writer = BodyWriter::ChunkedTrailers;
        }
        BodyWriter::ChunkedTrailers => {}
    }
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// The end of a body: the last chunk (if no trailer wrote it) and the
/// empty line.
pub(super) fn emit_end(out: &mut Vec<u8>, writer: &mut BodyWriter) {
    match writer {
        BodyWriter::Raw => {}
        BodyWriter::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        BodyWriter::ChunkedTrailers => out.extend_from_slice(b"\r\n"),
    }
}

impl BodyReader {
    pub(super) fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }
}

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    /// The whole request reached the backend: the response head's clock
    /// starts.
    pub(super) fn note_request_end(&mut self, id: usize, now: Instant) {
        let Some(request) = self.exchanges.get_mut(id).and_then(|e| e.request.as_mut()) else {
            return;
        };
        if request.request_end.is_some() || !request.body.is_done() {
            return;
        }
        if let Some(leg) = &request.backend {
            if leg.connected && leg.tx.is_empty() {
                request.request_end = Some(now);
            }
        }
    }

    /// Move request body bytes from the client buffer toward the backend.
    pub(super) fn pump_request_body(&mut self, id: usize) -> Result<bool, HttpError> {
        let cap = self.settings.buffer;
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return Ok(false);
        };
        let Some(leg) = request.backend.as_mut() else {
            // Answered locally: swallow the body so the next request can be
            // read (up to the limit; the connection closes anyway if not).
            return Ok(discard_body(
                &mut request.body,
                &mut exchange.rx,
                &mut exchange.closing,
            ));
        };
        let mut progress = false;
        while !request.body.is_done() && leg.tx.len() < cap && !exchange.rx.is_empty() {
            match &mut request.body {
                BodyReader::Length(left) => {
                    let n = (exchange.rx.len() as u64).min(*left) as usize;
                    let n = n.min(cap - leg.tx.len());
                    leg.tx.extend_from_slice(&exchange.rx[..n]);
                    exchange.rx.drain(..n);
                    *left -= n as u64;
                    if *left == 0 {
                        request.body = BodyReader::Done;
                    }
                    progress = true;
                }
                BodyReader::Chunked(decoder) => match decoder.decode(&exchange.rx) {
                    Ok((0, None)) => break,
                    Ok((used, chunk)) => {
                        let writer = &mut request.body_writer;
                        match chunk {
                            Some(Chunk::Data(data)) => write_chunk(&mut leg.tx, data),
                            Some(Chunk::Trailer(line)) => emit_trailer(&mut leg.tx, writer, line),
                            Some(Chunk::End) => {
                                emit_end(&mut leg.tx, writer);
                                request.body = BodyReader::Done;
                            }
                            None => {}
                        }
                        exchange.rx.drain(..used);
                        progress = true;
                    }
                    Err(error) => return Err(error),
                },
                BodyReader::UntilClose | BodyReader::Done => break,
            }
        }
        if !request.body.is_done() && exchange.eof && exchange.rx.is_empty() {
            // The client stopped halfway through its body.
            exchange.closing = true;
            request.keep_alive = false;
            request.body = BodyReader::Done;
            leg.eof = true;
            progress = true;
        }
        Ok(progress)
    }

    /// Parse the backend's response head, then relay body bytes.
    pub(super) fn advance_response<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let cap = self.settings.buffer;
        let limits = self.settings.limits.clone();
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return false;
        };
        let Some(leg) = request.backend.as_mut() else {
            return false;
        };
        match &mut request.response {
            ResponseState::Done => false,
            ResponseState::Head => {
                let head = match http1::parse_response(&leg.rx, &request.method, &limits) {
                    Ok(Some(head)) => head,
                    Ok(None) if leg.eof => {
                        self.backend_failed(io, id, now);
                        return true;
                    }
                    Ok(None) => return false,
                    Err(error) => {
                        tracing::debug!(%error, endpoint = %leg.endpoint, "bad backend response");
                        self.fail_request(io, id, Cause::UpstreamProtocol, now);
                        return true;
                    }
                };
                leg.rx.drain(..head.head_len);
                if (100..200).contains(&head.status) {
                    // Interim responses (we already answered 100 ourselves).
                    return true;
                }
                let status = head.status;
                let (bytes, reader, writer) = client_response_head(
                    &head,
                    request.version,
                    request.keep_alive && !exchange.closing,
                    &request.response_headers,
                );
                if writer == BodyWriter::Raw && matches!(reader, BodyReader::UntilClose) {
                    request.keep_alive = false;
                    exchange.closing = true;
                }
                if !request.keep_alive {
                    exchange.closing = true;
                }
                exchange.tx.extend_from_slice(&bytes);
                self.metrics.response(StatusClass::of(status));
                if let Some(route) = &request.route {
                    let backend = request.backend_name.as_ref();
                    self.metrics
                        .route_response(route, backend, StatusClass::of(status));
                }
                self.metrics
                    .observe_latency(now.duration_since(request.started));
                request.replay = None;
                request.response = ResponseState::Body {
                    reader,
                    writer,
                    backend_keep_alive: head.keep_alive,
                };
                true
            }
            ResponseState::Body {
                reader,
                writer,
                backend_keep_alive,
            } => {
                let mut progress = false;
                while !reader.is_done() && exchange.tx.len() < cap {
                    match reader {
                        BodyReader::Length(left) => {
                            if leg.rx.is_empty() {
                                break;
                            }
                            let n = (leg.rx.len() as u64).min(*left) as usize;
                            let n = n.min(cap - exchange.tx.len());
                            exchange.tx.extend_from_slice(&leg.rx[..n]);
                            leg.rx.drain(..n);
                            *left -= n as u64;
                            if *left == 0 {
                                *reader = BodyReader::Done;
                            }
                            progress = true;
                        }
                        BodyReader::Chunked(decoder) => match decoder.decode(&leg.rx) {
                            Ok((0, None)) => break,
                            Ok((used, chunk)) => {
                                match chunk {
                                    Some(Chunk::Data(data)) => {
                                        emit_body(&mut exchange.tx, *writer, data)
                                    }
                                    Some(Chunk::Trailer(line)) => {
                                        emit_trailer(&mut exchange.tx, writer, line)
                                    }
                                    Some(Chunk::End) => {
                                        emit_end(&mut exchange.tx, writer);
                                        *reader = BodyReader::Done;
                                    }
                                    None => {}
                                }
                                leg.rx.drain(..used);
                                progress = true;
                            }
                            Err(_) => {
                                // A broken body from the backend: the client
                                // cannot be told cleanly any more.
                                self.metrics.failure(Cause::UpstreamProtocol);
                                self.close_exchange(io, id, true);
                                return true;
                            }
                        },
                        BodyReader::UntilClose => {
                            if leg.rx.is_empty() {
                                if leg.eof {
                                    emit_end(&mut exchange.tx, writer);
                                    *reader = BodyReader::Done;
                                    *backend_keep_alive = false;
                                    progress = true;
                                }
                                break;
                            }
                            let n = leg.rx.len().min(cap - exchange.tx.len());
                            emit_body(&mut exchange.tx, *writer, &leg.rx[..n]);
                            leg.rx.drain(..n);
                            progress = true;
                        }
                        BodyReader::Done => break,
                    }
                }
                if !reader.is_done() && leg.eof && leg.rx.is_empty() {
                    // The backend closed mid-body: the client's response is
                    // truncated; the only honest signal left is to abort.
                    self.metrics.failure(Cause::ResetDuringResponse);
                    self.close_exchange(io, id, true);
                    return true;
                }
                if reader.is_done() {
                    let reusable = *backend_keep_alive && leg.rx.is_empty() && !leg.eof;
                    request.response = ResponseState::Done;
                    let reusable = reusable && request.body.is_done();
                    if let Some(leg) = request.backend.take() {
                        self.release_backend(io, leg, reusable, now);
                    }
                    return true;
                }
                progress
            }
        }
    }

    /// Both directions of the in-flight request are done: release it.
    pub(super) fn finish_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return false;
        };
        if !matches!(request.response, ResponseState::Done) {
            return false;
        }
        if !request.body.is_done() {
            // Answered before the body ended (an error, a redirect): the
            // rest of the body must still be read past, or the connection
            // closed.
            if request.backend.is_none() {
                discard_body(&mut request.body, &mut exchange.rx, &mut exchange.closing);
            }
            if !request.body.is_done() {
                if exchange.closing {
                    exchange.rx.clear();
                    exchange.eof = true;
                    request.body = BodyReader::Done;
                } else {
                    return false;
                }
            }
        }
        let request = exchange.request.take().expect("checked");
        exchange.idle_since = now;
        // A pipelined request already waiting starts its head clock now.
        exchange.head_started = (!exchange.rx.is_empty()).then_some(now);
        if let Some(leg) = request.backend {
            self.release_backend(io, leg, false, now);
        }
        true
    }
}
