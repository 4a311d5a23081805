//! A deadline for every phase of an exchange; the tick finds the overdue
//! ones and ends what each leaves.

use super::{Exchange, Proxy, ResponseState, Transport, HTTP2_PREFACE};
use crate::error::{Cause, Phase};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long each phase of an exchange may take; every expiry releases both
/// legs and is counted by its [`Phase`]. Defaults after Envoy's edge-proxy
/// guidance and nginx's defaults (docs/operations.md lists them side by
/// side).
#[derive(Clone, Debug)]
pub struct Deadlines {
    /// A request head, from its first byte (Envoy's
    /// `request_headers_timeout` at the edge: 10 s); also the HTTP/2
    /// preface and first SETTINGS frame, from the connection's start.
    pub request_head: Duration,
    /// The longest pause between request body bytes, also while a body is
    /// discarded after a local answer (nginx `client_body_timeout`).
    pub request_body: Duration,
    /// Opening a backend connection (Envoy's `connect_timeout`).
    pub connect: Duration,
    /// From the end of the request (its last byte delivered to the
    /// backend) to the response head.
    pub response_head: Duration,
    /// The longest pause in relaying a response: the backend silent or the
    /// client not reading (nginx `proxy_read_timeout` / `send_timeout`).
    pub response_body: Duration,
    /// An HTTP/1.1 connection between requests (nginx `keepalive_timeout`
    /// is 75 s).
    pub keep_alive: Duration,
    /// An HTTP/2 connection with no open stream (nginx
    /// `http2_idle_timeout`: 3 min).
    pub http2_idle: Duration,
}

/// What an exchange has waited too long for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Overdue {
    /// A kept-alive connection with nothing to do: close it quietly.
    Idle,
    Failed(Cause),
}

/// Which deadline of `exchange`, if any, has passed at `now`. Each phase's
/// clock starts where that phase does, so a long upload never eats into
/// the response head's time, and a slow but steady body never expires.
/// `backlog`: what was sent toward the client is not all taken yet.
pub(super) fn overdue<C>(
    exchange: &Exchange<C>,
    backlog: bool,
    d: &Deadlines,
    now: Instant,
) -> Option<Overdue> {
    let past = |since: Instant, limit: Duration| now.saturating_duration_since(since) >= limit;
    let failed = |cause| Some(Overdue::Failed(cause));
    let Some(request) = &exchange.request else {
        if backlog && past(exchange.written, d.response_body) {
            return failed(Cause::ClientNotReading);
        }
        return match exchange.head_started {
            Some(start) if past(start, d.request_head) => failed(Cause::RequestHeadTimeout),
            Some(_) => None,
            None if !exchange.is_stream()
                && !backlog
                && past(exchange.idle_since, d.keep_alive) =>
            {
                Some(Overdue::Idle)
            }
            None => None,
        };
    };
    // The route's own timeouts bound the whole response, body included.
    if !matches!(request.response, ResponseState::Done) {
        if request.deadline.is_some_and(|at| now >= at) {
            return failed(Cause::RequestTimeout);
        }
        let attempt_due = request.attempt.as_ref().and_then(|a| a.deadline);
        if attempt_due.is_some_and(|at| now >= at) {
            return failed(Cause::BackendRequestTimeout);
        }
    }
    let body_open = !request.body.is_done();
    match (&request.response, &request.attempt) {
        (ResponseState::Head, Some(leg)) => {
            if !leg.connected {
                return past(leg.opened, d.connect)
                    .then_some(Overdue::Failed(Cause::ConnectTimeout));
            }
            match request.request_end {
                Some(end) => past(end, d.response_head)
                    .then_some(Overdue::Failed(Cause::ResponseHeadTimeout)),
                // Still sending: a pause is the client's, unless the
                // backend holds bytes it does not take.
                None => {
                    let moved = request.body_moved.max(leg.sent);
                    if !past(moved, d.request_body) {
                        None
                    } else if leg.tx.is_empty() && body_open {
                        failed(Cause::RequestBodyIdle)
                    } else {
                        failed(Cause::ResponseHeadTimeout)
                    }
                }
            }
        }
        // A client holding the response back is timed by its reading
        // alone: the backend's bytes still arriving (into room the
        // gateway had, or as a window shared with streams just reset
        // opens) do not keep a client that takes nothing.
        (ResponseState::Body { .. }, Some(_)) if backlog => past(exchange.written, d.response_body)
            .then_some(Overdue::Failed(Cause::ClientNotReading)),
        (ResponseState::Body { .. }, Some(leg)) => {
            let mut moved = leg.heard.max(exchange.written);
            if body_open {
                moved = moved.max(request.body_moved);
            }
            past(moved, d.response_body).then_some(Overdue::Failed(Cause::ResponseBodyIdle))
        }
        _ => {
            if backlog && past(exchange.written, d.response_body) {
                failed(Cause::ClientNotReading)
            } else if body_open && past(request.body_moved, d.request_body) {
                failed(Cause::RequestBodyIdle)
            } else {
                None
            }
        }
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            request_head: Duration::from_secs(10),
            request_body: Duration::from_secs(60),
            connect: Duration::from_secs(5),
            response_head: Duration::from_secs(30),
            response_body: Duration::from_secs(60),
            keep_alive: Duration::from_secs(60),
            http2_idle: Duration::from_secs(180),
        }
    }
}

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    /// End what `cause`, a deadline's expiry, leaves of the exchange.
    pub(super) fn expire<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        cause: Cause,
        now: Instant,
    ) {
        let exchange = &self.exchanges[id];
        tracing::debug!(peer = %exchange.peer, %cause, "deadline expired");
        match &exchange.request {
            Some(request) if !matches!(request.response, ResponseState::Done) => {
                let answering = matches!(request.response, ResponseState::Head);
                let retriable = matches!(cause, Cause::ConnectTimeout)
                    || (cause == Cause::BackendRequestTimeout && answering);
                if retriable {
                    // Another attempt, if the request may have one.
                    self.retry_or_fail(io, id, cause, now);
                } else {
                    self.fail_request(io, id, cause, now);
                }
                self.drive(io, id, now);
            }
            // Answered already: what is left is a body to discard or a
            // response the client does not take.
            Some(_) => {
                self.metrics.failure(cause);
                let abort = cause == Cause::ClientNotReading;
                self.close_exchange(io, id, abort);
            }
            None if cause == Cause::RequestHeadTimeout => {
                let seen = exchange.rx.len().min(HTTP2_PREFACE.len());
                if exchange.rx[..seen] == HTTP2_PREFACE[..seen] {
                    // Half an HTTP/2 preface: nothing HTTP/1.1 to answer.
                    self.metrics.timeout(Phase::Http2Preface);
                } else {
                    self.metrics.failure(cause);
                    self.answer_and_close(id, cause.status());
                    self.flush_client(io, id, now);
                }
                self.close_exchange(io, id, false);
            }
            None => {
                self.metrics.failure(cause);
                self.close_exchange(io, id, true);
            }
        }
    }
}
