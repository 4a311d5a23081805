//! Attempts: each try of a request at an upstream endpoint, and the next
//! one when a try fails before the backend answered.
//!
//! A request in flight knows where it is going ([`Upstream`]: the rule that
//! matched and the backend chosen) and holds its live [`Attempt`]. When an
//! attempt fails, [`Proxy::attempt_failed`] decides by the failure's
//! [`Cause`] whether another may follow:
//!
//! - refused or timed out while connecting (nothing of the request reached
//!   the backend): the endpoint is ejected ([`super::health`]) and the
//!   request, body included, goes to the backend's next endpoint it has not
//!   failed on, a pooled connection if there is one — nginx's
//!   `proxy_next_upstream error timeout`;
//! - a pooled connection closed by the backend while it sat idle, before
//!   any answer: once more on a fresh connection, if the request had no
//!   body (the keep-alive race every proxy retries);
//! - any other connection reset before an answer: an idempotent request
//!   without a body (its head kept for this) on the next endpoint.
//!
//! These go at once, up to [`super::ProxySettings::max_attempts`] in all.
//!
//! A route's `retry` (GEP-1731) adds more: an attempt that ends in one of
//! its codes, a connection error or the route's backend request timeout
//! goes again, to another endpoint when there is one, after the policy's
//! back-off, up to its `attempts` retries. The request is kept for that,
//! body included, up to [`super::ProxySettings::retry_buffer`]; a larger
//! one is not retried. Every retry but the keep-alive race's is drawn from
//! the worker's [`super::budget`].
//!
//! Anything else answers the client with the cause's status, or relays the
//! last answer. An h2c attempt is a stream of the HTTP/2 layer's own pool:
//! one that fails before it was opened on a connection (no connection to
//! be had, or one that ended first) counts as a refused connect, any other
//! failure before the answer as a reset; a retry opens a new stream with
//! the request kept as a message ([`Resend::Message`]).

use super::body::BodyReader;
use super::session::Session;
use super::{Proxy, Transport, Wire};
use crate::config::{Backend, RuleAction};
use crate::error::{Cause, Replay};
use crate::http2::pipe::Message;
use crate::message::{BodyEvent, BodyLength, Request};
use crate::metrics::{EjectionCause, ProxyMetrics, StatusClass};
use bytes::{Bytes, BytesMut};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Where a request goes: the rule that matched and, once chosen, its
/// backend. Kept with the request so metrics name both and another attempt
/// can pick again from the same backend.
#[derive(Clone, Debug)]
pub(super) struct Upstream {
    pub rule: Arc<RuleAction>,
    /// The index of the chosen backend among the rule's.
    pub backend: Option<usize>,
    /// The request's consistent-hash key for that backend, if it has one.
    pub key: Option<u64>,
    /// The live session the request carried, under the rule's
    /// `sessionPersistence`.
    pub session: Option<Session>,
}

impl Upstream {
    /// Matched to `rule`, no backend chosen yet.
    pub fn new(rule: &Arc<RuleAction>) -> Self {
        Self {
            rule: rule.clone(),
            backend: None,
            key: None,
            session: None,
        }
    }

    pub fn route(&self) -> &Arc<str> {
        &self.rule.route
    }

    pub fn backend(&self) -> Option<&Backend> {
        self.backend
            .and_then(|i| self.rule.backends.backends.get(i))
    }

    pub fn backend_name(&self) -> Option<&Arc<str>> {
        self.backend().map(|b| &b.name)
    }

    /// Count a response of `status` to a request going here.
    pub fn count_response(&self, metrics: &ProxyMetrics, status: u16) {
        let class = StatusClass::of(status);
        metrics.route_response(self.route(), self.backend_name(), class);
    }

    /// Response filters: the rule's ResponseHeaderModifier, then the
    /// backendRef's — on whatever answers a request that reached backend
    /// selection, and on a redirect the rule's alone.
    pub fn modify_response(&self, headers: &mut http::HeaderMap) {
        if let Some(backend) = self.backend() {
            self.rule.response_headers.apply(headers);
            backend.response_headers.apply(headers);
        } else if self.rule.redirect.is_some() {
            self.rule.response_headers.apply(headers);
        }
    }
}

/// One try of a request at an endpoint: the connection (or h2c stream) it
/// goes on, and what has passed through it.
pub(super) struct Attempt<C> {
    pub wire: Wire<C>,
    pub endpoint: SocketAddr,
    /// From the pool: may have been closed by the backend meanwhile.
    pub reused: bool,
    pub rx: BytesMut,
    /// Bytes for the backend not yet taken by the socket: while it is not
    /// connected, everything of the request sent so far.
    pub tx: Vec<u8>,
    pub eof: bool,
    /// Any response byte seen.
    pub answered: bool,
    /// When the connection was asked for (the connect deadline's start).
    pub opened: Instant,
    /// A byte went through it: it is open (pooled ones and pipes are).
    pub connected: bool,
    /// The last time bytes came from the backend.
    pub heard: Instant,
    /// The last time bytes were written to the backend.
    pub sent: Instant,
    /// The route's backend request timeout for this attempt.
    pub deadline: Option<Instant>,
}

impl<C> Attempt<C> {
    /// An attempt about to carry a request whose head, if the wire takes
    /// bytes, is `head`; a pooled connection (`reused`) or a pipe is
    /// connected already.
    pub fn new(
        wire: Wire<C>,
        endpoint: SocketAddr,
        reused: bool,
        head: Vec<u8>,
        now: Instant,
    ) -> Self {
        Self {
            connected: reused || matches!(wire, Wire::Pipe(_)),
            wire,
            endpoint,
            reused,
            rx: BytesMut::new(),
            tx: head,
            eof: false,
            answered: false,
            opened: now,
            heard: now,
            sent: now,
            deadline: None,
        }
    }
}

/// How an attempt ended, for the decision whether another follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AttemptEnd {
    /// It failed before an answer reached the client.
    Failed(Cause),
    /// The backend answered with this status (not yet relayed).
    Answered(u16),
}

/// A request kept to be sent again.
#[derive(Debug)]
pub(super) enum Resend {
    /// HTTP/1.1: everything of it sent so far, as bytes for a socket.
    Bytes(Vec<u8>),
    /// h2c: as a message, for a new stream.
    Message(Box<KeptMessage>),
}

/// An h2c request kept: its head and its body so far (all of it once
/// `ended`).
#[derive(Debug)]
pub(super) struct KeptMessage {
    pub head: http::request::Parts,
    pub length: BodyLength,
    pub body: Vec<u8>,
    pub ended: bool,
}

/// A copy of a request head (`Parts` is not `Clone`: its extensions are
/// not kept, and the core sets none).
pub(super) fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut request = http::Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request.into_parts().0
}

/// What the next attempt sends, where, and when.
pub(super) struct Retry {
    pub endpoint: SocketAddr,
    /// Everything of the request sent so far.
    resend: Resend,
    /// Not before this (the route's back-off).
    pub at: Instant,
    /// A new connection, not one from the pool (the pooled one to this
    /// endpoint went stale).
    fresh: bool,
}

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    /// The live attempt failed or closed before a complete response head.
    pub(super) fn attempt_failed<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) {
        let request = self.exchanges[id].request.as_ref().expect("in flight");
        let attempt = request.attempt.as_ref().expect("live attempt");
        let cause = if attempt.connected {
            Cause::ResetBeforeResponse
        } else {
            Cause::ConnectRefused
        };
        self.retry_or_fail(io, id, cause, now);
    }

    /// Start another attempt for a request whose live one ended for
    /// `cause`, if the request may go again; else answer the cause.
    pub(super) fn retry_or_fail<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        cause: Cause,
        now: Instant,
    ) {
        let ejecting = matches!(
            cause,
            Cause::ConnectRefused | Cause::ConnectTimeout | Cause::ResetBeforeResponse
        );
        if ejecting {
            let request = self.exchanges[id].request.as_ref().expect("in flight");
            let attempt = request.attempt.as_ref().expect("live attempt");
            let endpoint = attempt.endpoint;
            let ejected = request.backend().and_then(|backend| {
                if cause == Cause::ResetBeforeResponse {
                    // Not a pooled connection the backend closed while
                    // idle: that is the keep-alive race, no sign of ill
                    // health.
                    (!attempt.reused)
                        .then(|| self.health.answered(endpoint, None, backend, now))
                        .flatten()
                        .map(|period| (period, EjectionCause::Errors))
                } else {
                    self.health
                        .connect_failed(endpoint, backend, now)
                        .map(|period| (period, EjectionCause::Connect))
                }
            });
            if let Some((period, why)) = ejected {
                self.metrics.ejection(why);
                tracing::debug!(%endpoint, %cause, ?period, "endpoint ejected");
            }
        }
        let Some(retry) = self.next_attempt(id, AttemptEnd::Failed(cause), now) else {
            self.fail_request(io, id, cause, now);
            return;
        };
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        let old = request.attempt.take().expect("live attempt");
        self.load.end(old.endpoint);
        self.let_go_backend(io, old.wire, true);
        // Counted, as every failed attempt is; the client may not see it.
        self.metrics.failure(cause);
        tracing::debug!(%cause, from = %old.endpoint, to = %retry.endpoint, "another attempt");
        self.schedule(io, id, retry, now);
    }

    /// The backend answered `status`, which the route's `retry` covers:
    /// if the request may go again, drop this answer (the connection back
    /// to the pool when its body is all here, else closed) and schedule
    /// the next attempt. `false`: relay the answer.
    pub(super) fn retry_answer<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        status: u16,
        reader: &mut BodyReader,
        backend_keep_alive: bool,
        now: Instant,
    ) -> bool {
        let Some(retry) = self.next_attempt(id, AttemptEnd::Answered(status), now) else {
            return false;
        };
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        let mut old = request.attempt.take().expect("live attempt");
        tracing::debug!(status, from = %old.endpoint, to = %retry.endpoint, "answer retried");
        if let Wire::Pipe(_) = old.wire {
            // The rest of that answer is not wanted: the stream is reset.
            self.load.end(old.endpoint);
            self.let_go_backend(io, old.wire, true);
        } else {
            while let Ok(Some(_)) = reader.next_from_bytes(&mut old.rx, old.eof, usize::MAX, false)
            {
            }
            let reusable = reader.is_done()
                && backend_keep_alive
                && old.rx.is_empty()
                && !old.eof
                && request.body.is_done();
            self.release_backend(io, old, reusable, now);
        }
        self.schedule(io, id, retry, now);
        true
    }

    /// The next attempt goes now, or waits for its back-off.
    fn schedule<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        retry: Retry,
        now: Instant,
    ) {
        self.metrics.retry();
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        request.request_end = None;
        request.attempts = request.attempts.saturating_add(1);
        if retry.at > now {
            let at = retry.at;
            request.pending = Some(retry);
            self.arm(id, at);
        } else {
            self.start_retry(io, id, retry, now);
        }
    }

    /// The waiting attempt's back-off is over: start it.
    pub(super) fn start_pending<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) {
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        if let Some(retry) = request.pending.take() {
            self.start_retry(io, id, retry, now);
        }
    }

    fn start_retry<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        retry: Retry,
        now: Instant,
    ) {
        let bytes = match retry.resend {
            Resend::Bytes(bytes) => bytes,
            Resend::Message(kept) => {
                self.resend_on_stream(id, retry.endpoint, kept, now);
                return;
            }
        };
        // Another endpoint: a pooled connection if there is one. The same
        // one again after a stale pooled connection: a new connection.
        let conn = if retry.fresh {
            self.connect(io, id, retry.endpoint, now)
                .map(|c| (c, false))
        } else {
            self.backend_conn(io, id, retry.endpoint, now)
        };
        let (conn, reused) = match conn {
            Ok(conn) => conn,
            Err(cause) => {
                self.refuse(id, cause);
                return;
            }
        };
        let deadline = self.backend_deadline(id, now);
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        request.keep_for_replay(&bytes, reused);
        let mut attempt = Attempt::new(Wire::Socket(conn), retry.endpoint, reused, bytes, now);
        attempt.deadline = deadline;
        request.attempt = Some(attempt);
        self.load.begin(retry.endpoint, now);
    }

    /// Another attempt of an h2c request: a new stream to `endpoint` with
    /// the kept head and body; what is still to come of the body follows.
    fn resend_on_stream(
        &mut self,
        id: usize,
        endpoint: SocketAddr,
        kept: Box<KeptMessage>,
        now: Instant,
    ) {
        let request = Request {
            head: copy_head(&kept.head),
            body: kept.length,
        };
        let pipe = self.open_stream(id, endpoint, request);
        if !kept.body.is_empty() {
            let data = Bytes::copy_from_slice(&kept.body);
            let _ = self.pipes.send(pipe, Message::Body(BodyEvent::Data(data)));
        }
        if kept.ended && kept.length != BodyLength::None {
            let _ = self.pipes.send(pipe, Message::Body(BodyEvent::End));
        }
        let deadline = self.backend_deadline(id, now);
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        // Kept again, for the attempt after this one.
        request.replay = Some(Resend::Message(kept));
        let mut attempt = Attempt::new(Wire::Pipe(pipe), endpoint, false, Vec::new(), now);
        attempt.deadline = deadline;
        request.attempt = Some(attempt);
        self.load.begin(endpoint, now);
    }

    /// When an attempt starting now must have its whole answer: the
    /// route's backend request timeout, armed.
    pub(super) fn backend_deadline(&mut self, id: usize, now: Instant) -> Option<Instant> {
        let request = self.exchanges[id].request.as_ref()?;
        let at = now + request.upstream.as_ref()?.rule.timeouts.backend_request?;
        self.arm(id, at);
        Some(at)
    }

    /// Where, what and when the next attempt after `end` sends, if there
    /// may be one. Takes what it needs from the request.
    fn next_attempt(&mut self, id: usize, end: AttemptEnd, now: Instant) -> Option<Retry> {
        let request = self.exchanges[id].request.as_mut()?;
        let attempt = request.attempt.as_mut()?;
        let socket = matches!(attempt.wire, Wire::Socket(_));
        // Nothing of the request reached the backend: a socket never
        // connected, or a stream that failed unsent (said as a refusal).
        let unsent = if socket {
            !attempt.connected
        } else {
            end == AttemptEnd::Failed(Cause::ConnectRefused)
        };
        let policy = request
            .upstream
            .as_ref()
            .and_then(|u| u.rule.retry.as_ref());
        let retries = request.attempts.saturating_sub(1);
        let by_policy = policy.filter(|p| {
            retries < p.attempts
                && match end {
                    AttemptEnd::Answered(status) => p.retries_status(status),
                    AttemptEnd::Failed(cause) => matches!(
                        cause,
                        Cause::ConnectFailed
                            | Cause::ConnectRefused
                            | Cause::ConnectTimeout
                            | Cause::ResetBeforeResponse
                            | Cause::BackendRequestTimeout
                    ),
                }
        });
        // The gateway's own retries: what no backend saw, the keep-alive
        // race, an idempotent request reset before any answer.
        let own = match end {
            AttemptEnd::Failed(cause) if request.attempts < self.settings.max_attempts => {
                match cause.replay() {
                    Replay::Safe => unsent,
                    Replay::IfIdempotent => {
                        cause == Cause::ResetBeforeResponse
                            && !attempt.answered
                            && (attempt.reused || request.method.is_idempotent())
                    }
                    Replay::Never => false,
                }
            }
            _ => false,
        };
        let keep_alive_race =
            own && attempt.reused && end == AttemptEnd::Failed(Cause::ResetBeforeResponse);
        if !own && by_policy.is_none() {
            return None;
        }
        let nothing_sent =
            unsent && matches!(end, AttemptEnd::Failed(c) if c.replay() == Replay::Safe);
        // A stream took its request along: only a kept copy goes again.
        if (!nothing_sent || !socket) && request.replay.is_none() {
            return None;
        }
        if !keep_alive_race && !self.budget.withdraw(now) {
            self.metrics.retry_budget_exhausted();
            return None;
        }
        let at = match by_policy {
            Some(policy) if !own => now + policy.backoff(retries + 1),
            _ => now,
        };
        let resend = if nothing_sent && socket {
            // What the socket never took is the whole request so far.
            Resend::Bytes(std::mem::take(&mut attempt.tx))
        } else {
            // (A stream took its request along.)
            request.replay.take()?
        };
        if keep_alive_race {
            // The request goes again on a new connection to the endpoint
            // whose pooled one the backend closed while it sat idle.
            return Some(Retry {
                endpoint: attempt.endpoint,
                resend,
                at,
                fresh: true,
            });
        }
        request.failed.push(attempt.endpoint);
        let upstream = request.upstream.as_ref()?;
        let (backend, key) = (upstream.backend()?, upstream.key);
        // From the one after the failed endpoint, in rotation order; under
        // a route's retry, one tried before if none is left.
        let after = backend
            .endpoints
            .iter()
            .position(|&e| e == attempt.endpoint)
            .map_or(0, |i| i + 1);
        let (health, load) = (&self.health, &mut self.load);
        // No retry into an endpoint at the circuit breaker's limit either.
        let endpoint = match load.choose(health, backend, || after, &request.failed, key, now) {
            Err(Cause::NoReadyEndpoint) if by_policy.is_some() => {
                load.choose(health, backend, || after, &[], key, now)
            }
            chosen => chosen,
        }
        .ok()?;
        Some(Retry {
            endpoint,
            resend,
            at,
            fresh: false,
        })
    }
}
