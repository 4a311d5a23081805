//! Answers the gateway gives itself: local responses (redirects, errors),
//! and failures, each answered with the status of its [`Cause`] or, once a
//! response has begun, by aborting.

use super::h1::{self, ClientFraming};
use super::{write_event, Proxy, ResponseState, Transport, Upstream};
use crate::error::Cause;
use crate::http1::{reason_phrase, Version};
use crate::message::{BodyEvent, BodyLength, Response};
use crate::metrics::StatusClass;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::StatusCode;
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
        let route = request.upstream.as_ref().map(Upstream::route);
        tracing::debug!(%cause, ?route, "request failed");
        self.metrics.failure(cause);
        let status = cause.status();
        request.pending = None;
        if let Some(leg) = request.attempt.take() {
            self.load.end(leg.endpoint);
            self.let_go_backend(io, leg.wire, true);
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
        extra: &[(&'static str, String)],
    ) {
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("in flight");
        // A mirrored copy's answer is nobody's response.
        if !exchange.mirror {
            self.metrics.response(StatusClass::of(status));
            if let Some(upstream) = &request.upstream {
                upstream.count_response(&self.metrics, status);
            }
        }
        request.response = ResponseState::Done;
        let mut response = plain_response(status, body, extra);
        if let Some(upstream) = &request.upstream {
            upstream.modify_response(&mut response.head.headers);
        }
        let writer = self.send_response_head(id, response);
        let exchange = &mut self.exchanges[id];
        for event in [
            BodyEvent::Data(Bytes::copy_from_slice(body.as_bytes())),
            BodyEvent::End,
        ] {
            // A stream gone is seen on the next read of it.
            let _ = write_event(
                &mut self.pipes,
                exchange.client,
                &mut exchange.tx,
                writer,
                event,
            );
        }
    }

    /// An error outside any request (a bad request head, a head that
    /// never completed), after which the connection closes.
    pub(super) fn answer_and_close(&mut self, id: usize, status: u16) {
        let exchange = &mut self.exchanges[id];
        let body = error_body(status);
        let response = plain_response(status, &body, &[]);
        let framing = ClientFraming {
            version: Version::Http11,
            keep_alive: false,
            head_request: false,
        };
        h1::encode_response(&response, framing, &mut exchange.tx);
        exchange.tx.extend_from_slice(body.as_bytes());
        exchange.closing = true;
    }
}

/// A response the gateway writes itself: `extra` fields, then a plain-text
/// content type, and `body`'s length.
fn plain_response(status: u16, body: &str, extra: &[(&'static str, String)]) -> Response {
    let mut response = http::Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Response {
        head: response.into_parts().0,
        body: BodyLength::Exactly(body.len() as u64),
    }
}

/// The short body of an error the gateway answers itself: the reason, no
/// internal detail.
pub(super) fn error_body(status: u16) -> String {
    format!("{}\n", reason_phrase(status).to_ascii_lowercase())
}
