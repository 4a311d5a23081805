//! Accept and decode: the next request from a client — an HTTP/1.1 head
//! decoded into the message model, or the head an HTTP/2 stream's pipe
//! brings — or the sign that the connection speaks HTTP/2 (the preface, or
//! an `Upgrade: h2c` request) and goes to that layer; then the request
//! body, event by event, toward the backend.

use super::attempt::Resend;
use super::body::{BodyReader, ReadError};
use super::h1::{self, ClientFraming};
use super::mirror::feed_mirrors;
use super::{
    keep_body_for_replay, read_event, room, write_event, InFlight, Proxy, Transport, Wire,
    HTTP2_PREFACE,
};
use crate::error::Cause;
use crate::http1::{self, BodyFraming, HttpError, Version};
use crate::http2::pipe::Message;
use crate::metrics::StatusClass;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

/// What only an HTTP/2 client sends first: the preface's request line.
const HTTP2_REQUEST_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The answer to an invalid HTTP/2 preface: the server's preface (an empty
/// SETTINGS frame, RFC 9113 §3.4) and GOAWAY with last stream 0 and
/// PROTOCOL_ERROR (§6.8, §7).
const INVALID_PREFACE_ANSWER: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, empty, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream ID 0
    0, 0, 0, 0x1, // PROTOCOL_ERROR
];

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    /// Decode the next request and start it, or move request body events
    /// toward the backend.
    pub(super) fn advance_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let exchange = &mut self.exchanges[id];
        if exchange.request.is_some() {
            return self.pump_request_body(io, id, now);
        }
        match exchange.client {
            Wire::Socket(_) => self.decode_head(io, id, now),
            // One request per stream.
            Wire::Pipe(_) if exchange.served => false,
            Wire::Pipe(pipe) => match self.pipes.take(pipe) {
                Ok(Some(Message::Request(request))) => {
                    exchange.served = true;
                    let request = *request;
                    let framing = ClientFraming {
                        version: Version::Http11,
                        keep_alive: false,
                        head_request: request.head.method == http::Method::HEAD,
                    };
                    let body = BodyReader::events(request.body);
                    let in_flight = InFlight::new(request.head.method.clone(), framing, body, now);
                    self.start_request(io, id, request, in_flight, false, now);
                    true
                }
                Ok(Some(other)) => {
                    tracing::warn!(?other, "a stream began with no request head");
                    self.close_exchange(io, id, true);
                    true
                }
                Ok(None) => false,
                Err(_) => {
                    self.close_exchange(io, id, true);
                    true
                }
            },
        }
    }

    /// The next request head on an HTTP/1.x connection.
    fn decode_head<T: Transport<Conn = C>>(&mut self, io: &mut T, id: usize, now: Instant) -> bool {
        let exchange = &mut self.exchanges[id];
        if exchange.closing || exchange.rx.is_empty() || !exchange.tx.is_empty() {
            return false;
        }
        if !exchange.served {
            let seen = exchange.rx.len().min(HTTP2_PREFACE.len());
            if exchange.rx[..seen] == HTTP2_PREFACE[..seen] {
                if seen == HTTP2_PREFACE.len() {
                    self.hand_off(id, None);
                    return true;
                }
                if !exchange.eof {
                    return false;
                }
            } else if exchange.rx.starts_with(HTTP2_REQUEST_LINE) {
                // An HTTP/2 preface gone wrong after its request line: a
                // connection error (RFC 9113 §3.4), answered in HTTP/2 and
                // closed, not read as an HTTP/1.1 request.
                tracing::debug!("invalid HTTP/2 connection preface");
                exchange.rx.clear();
                exchange.eof = true;
                exchange.closing = true;
                exchange.tx.extend_from_slice(&INVALID_PREFACE_ANSWER);
                self.metrics.failure(Cause::BadRequest { status: 400 });
                return true;
            }
        }
        let head = match http1::parse_request(&exchange.rx, &self.settings.limits) {
            Ok(None) => {
                if exchange.eof {
                    // A partial head and the client is gone.
                    exchange.rx.clear();
                    exchange.closing = true;
                }
                return false;
            }
            Ok(Some(head)) => head,
            Err(error) => {
                self.reject(id, &error);
                return true;
            }
        };
        let _ = exchange.rx.split_to(head.head_len);
        if !std::mem::replace(&mut exchange.served, true) && http1::is_h2c_upgrade(&head) {
            self.hand_off(id, Some(head));
            return true;
        }
        let framing = ClientFraming {
            version: head.version,
            keep_alive: head.keep_alive && !exchange.closing,
            head_request: head.method.eq_ignore_ascii_case("HEAD"),
        };
        let chunked = head.framing == BodyFraming::Chunked;
        let expect_continue = head.expect_continue;
        let request = match h1::decode_request(head) {
            Ok(request) => request,
            Err(error) => {
                self.reject(id, &error);
                return true;
            }
        };
        let body = BodyReader::bytes(request.body, chunked, &self.settings.limits);
        let in_flight = InFlight::new(request.head.method.clone(), framing, body, now);
        self.start_request(io, id, request, in_flight, expect_continue, now);
        true
    }

    /// Move request body events from the client toward the backend, as far
    /// as the backend takes them; a body answered locally is read past.
    fn pump_request_body<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let cap = self.settings.buffer;
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("in flight");
        let mut progress = false;
        let result = loop {
            if request.body.is_done() {
                break Ok(());
            }
            let max = match &request.attempt {
                Some(leg) => room(&self.pipes, leg.wire, &leg.tx, cap),
                // The next attempt waits for its back-off: so does the body.
                None if request.pending.is_some() => 0,
                // Answered locally: swallow the body so the next request
                // can be read (the connection closes if it is not read).
                None => usize::MAX,
            };
            if max == 0 {
                break Ok(());
            }
            let to = request
                .attempt
                .as_ref()
                .map_or(exchange.client, |leg| leg.wire);
            let event = read_event(
                &mut self.pipes,
                exchange.client,
                to,
                &mut request.body,
                &mut exchange.rx,
                exchange.eof,
                max,
            );
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            };
            progress = true;
            request.body_moved = now;
            if !request.mirrors.is_empty() {
                feed_mirrors(&mut self.pipes, &mut request.mirrors, &event);
            }
            let Some(leg) = request.attempt.as_mut() else {
                continue;
            };
            let before = leg.tx.len();
            if let Some(Resend::Message(_)) = request.replay {
                let limit = request.replay_limit;
                keep_body_for_replay(&mut request.replay, limit, &[], Some(&event));
            }
            if write_event(
                &mut self.pipes,
                leg.wire,
                &mut leg.tx,
                request.body_writer,
                event,
            )
            .is_err()
            {
                leg.eof = true;
                break Ok(());
            }
            if let Some(Resend::Bytes(_)) = request.replay {
                let limit = request.replay_limit;
                keep_body_for_replay(&mut request.replay, limit, &leg.tx[before..], None);
            }
        };
        match result {
            Ok(()) => {}
            Err(ReadError::Gone) => {
                self.client_gone(io, id);
                return true;
            }
            Err(ReadError::Framing(error)) => {
                // A body that breaks its own framing: the backend got part
                // of it and is dropped; the client gets the 4xx and the
                // connection ends.
                tracing::debug!(%error, "bad request body");
                let exchange = &mut self.exchanges[id];
                exchange.rx.clear();
                exchange.eof = true;
                exchange.closing = true;
                let request = exchange.request.as_mut().expect("in flight");
                request.body = BodyReader::Done;
                let cause = Cause::BadRequest {
                    status: error.status(),
                };
                if request.attempt.is_none() {
                    self.metrics.failure(cause);
                } else {
                    self.fail_request(io, id, cause, now);
                }
                return true;
            }
        }
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("in flight");
        if !request.body.is_done() && exchange.eof && exchange.rx.is_empty() {
            // The client stopped halfway through its body.
            exchange.closing = true;
            request.framing.keep_alive = false;
            request.body = BodyReader::Done;
            if let Some(leg) = request.attempt.as_mut() {
                leg.eof = true;
            }
            progress = true;
        }
        progress
    }

    /// Answer a request the client got wrong, and end the connection: after
    /// a framing error the next request's start is unknowable.
    pub(super) fn reject(&mut self, id: usize, error: &HttpError) {
        tracing::debug!(%error, "bad request");
        let exchange = &mut self.exchanges[id];
        exchange.rx.clear();
        exchange.eof = true;
        let status = error.status();
        self.metrics.response(StatusClass::of(status));
        self.metrics.failure(Cause::BadRequest { status });
        self.answer_and_close(id, status);
    }
}
