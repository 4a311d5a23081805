//! Accept and decode: the next request head from a client connection's
//! bytes, or the sign that the connection speaks HTTP/2 (the preface, or an
//! `Upgrade: h2c` request) and goes to that layer.

use super::{Proxy, Transport, HTTP2_PREFACE};
use crate::error::Cause;
use crate::http1::{self, HttpError};
use crate::metrics::StatusClass;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    /// Parse the next request head and start it, or move request body bytes
    /// toward the backend.
    pub(super) fn advance_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let exchange = &mut self.exchanges[id];
        if exchange.request.is_none() {
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
                }
            }
            return match http1::parse_request(&exchange.rx, &self.settings.limits) {
                Ok(None) => {
                    if exchange.eof {
                        // A partial head and the client is gone.
                        exchange.rx.clear();
                        exchange.closing = true;
                    }
                    false
                }
                Ok(Some(head)) => {
                    exchange.rx.drain(..head.head_len);
                    self.start_request(io, id, head, now);
                    true
                }
                Err(error) => {
                    self.reject(id, &error);
                    true
                }
            };
        }
        match self.pump_request_body(id) {
            Ok(progress) => progress,
            Err(error) => {
                // A body that breaks its own framing: the backend got part
                // of it and is dropped; the client gets the 4xx and the
                // connection ends.
                tracing::debug!(%error, "bad request body");
                let exchange = &mut self.exchanges[id];
                exchange.rx.clear();
                exchange.eof = true;
                exchange.closing = true;
                let cause = Cause::BadRequest {
                    status: error.status(),
                };
                self.fail_request(io, id, cause, now);
                true
            }
        }
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
