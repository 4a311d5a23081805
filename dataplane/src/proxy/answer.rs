//! Answers the gateway gives itself: local responses (redirects, errors),
//! and failures, each answered with the status of its [`Cause`] or, once a
//! response has begun, by aborting.

use super::{plain_headers, push_field, Proxy, ResponseState, Transport};
use crate::error::Cause;
use crate::http1::reason_phrase;
use crate::metrics::StatusClass;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    /// The request cannot complete for `cause`: answer its status if
    /// nothing was sent yet, otherwise abort the client connection.
    pub(super) fn fail_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        cause: Cause,
        _now: Instant,
    ) {
        let exchange = &mut self.exchanges[id];
        let Some(request) = exchange.request.as_mut() else {
            return;
        };
        tracing::debug!(%cause, route = ?request.route, "request failed");
        self.metrics.failure(cause);
        let status = cause.status();
        if let Some(leg) = request.backend.take() {
            self.let_go_backend(io, leg.conn, leg.protocol, true);
        }
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("checked");
        if matches!(request.response, ResponseState::Head) {
            // The client's body may be half sent: do not try to find the
            // next request after it.
            if !request.body.is_done() {
                exchange.closing = true;
                exchange.eof = true;
                exchange.rx.clear();
            }
            self.local_response(id, status, &error_body(status), &[]);
        } else {
            self.close_exchange(io, id, true);
        }
    }

    /// Answer the in-flight request with the status of `cause`, counted.
    pub(super) fn refuse(&mut self, id: usize, cause: Cause) {
        self.metrics.failure(cause);
        let status = cause.status();
        self.local_response(id, status, &error_body(status), &[]);
    }

    /// Answer the in-flight request from the gateway itself.
    pub(super) fn local_response(
        &mut self,
        id: usize,
        status: u16,
        body: &str,
        extra: &[(&str, String)],
    ) {
        self.metrics.response(StatusClass::of(status));
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("in flight");
        if let Some(route) = &request.route {
            let backend = request.backend_name.as_ref();
            self.metrics
                .route_response(route, backend, StatusClass::of(status));
        }
        let close = !request.keep_alive || exchange.closing;
        let modifiers = std::mem::take(&mut request.response_headers);
        request.response = ResponseState::Done;
        let is_head = request.method.eq_ignore_ascii_case("HEAD");
        let mut headers = plain_headers(extra);
        for m in &modifiers {
            m.apply(&mut headers);
        }
        write_response(
            &mut exchange.tx,
            status,
            &headers,
            if is_head { "" } else { body },
            body.len(),
            close,
        );
        if close {
            exchange.closing = true;
        }
    }

    /// An error outside any request (a bad request head, a head that
    /// never completed), after which the connection closes.
    pub(super) fn answer_and_close(&mut self, id: usize, status: u16) {
        let exchange = &mut self.exchanges[id];
        let body = error_body(status);
        write_response(
            &mut exchange.tx,
            status,
            &plain_headers(&[]),
            &body,
            body.len(),
            true,
        );
        exchange.closing = true;
    }
}

pub(super) fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(String, Vec<u8>)],
    body: &str,
    length: usize,
    close: bool,
) {
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    for (name, value) in headers {
        push_field(out, name, value);
    }
    out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// The short body of an error the gateway answers itself: the reason, no
/// internal detail.
pub(super) fn error_body(status: u16) -> String {
    format!("{}\n", reason_phrase(status).to_ascii_lowercase())
}
