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
//! Each request makes at most [`super::ProxySettings::max_attempts`].
//! Anything else answers the client with the cause's status. An h2c
//! attempt is a stream of the HTTP/2 layer's own pool, which reconnects by
//! itself; its failures are not retried here.

use super::{Proxy, Transport, Wire};
use crate::config::{Backend, BackendProtocol, RuleAction};
use crate::error::{Cause, Replay};
use crate::metrics::{ProxyMetrics, StatusClass};
use bytes::BytesMut;
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
}

impl Upstream {
    /// Matched to `rule`, no backend chosen yet.
    pub fn new(rule: &Arc<RuleAction>) -> Self {
        Self {
            rule: rule.clone(),
            backend: None,
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
    pub protocol: BackendProtocol,
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
}

impl<C> Attempt<C> {
    /// An attempt about to carry a request whose head, if the wire takes
    /// bytes, is `head`; a pooled connection (`reused`) or a pipe is
    /// connected already.
    pub fn new(
        wire: Wire<C>,
        endpoint: SocketAddr,
        protocol: BackendProtocol,
        reused: bool,
        head: Vec<u8>,
        now: Instant,
    ) -> Self {
        Self {
            connected: reused || matches!(wire, Wire::Pipe(_)),
            wire,
            endpoint,
            protocol,
            reused,
            rx: BytesMut::new(),
            tx: head,
            eof: false,
            answered: false,
            opened: now,
            heard: now,
            sent: now,
        }
    }
}

/// What the next attempt sends, and where.
struct Retry {
    endpoint: SocketAddr,
    /// Everything of the request sent so far, as bytes for the socket.
    bytes: Vec<u8>,
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
        if matches!(cause, Cause::ConnectRefused | Cause::ConnectTimeout) {
            let request = self.exchanges[id].request.as_ref().expect("in flight");
            let endpoint = request.attempt.as_ref().expect("live attempt").endpoint;
            let peers = request
                .upstream
                .as_ref()
                .and_then(Upstream::backend)
                .map_or(&[][..], |b| &b.endpoints[..]);
            if let Some(period) = self.health.connect_failed(endpoint, peers, now) {
                self.metrics.ejection();
                tracing::debug!(%endpoint, %cause, ?period, "endpoint ejected");
            }
        }
        let Some(retry) = self.next_attempt(id, cause, now) else {
            self.fail_request(io, id, cause, now);
            return;
        };
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        let old = request.attempt.take().expect("live attempt");
        let protocol = old.protocol;
        request.request_end = None;
        request.attempts += 1;
        self.let_go_backend(io, old.wire, true);
        // Counted, as every failed attempt is; the client may not see it.
        self.metrics.failure(cause);
        self.metrics.retry();
        tracing::debug!(%cause, from = %old.endpoint, to = %retry.endpoint, "another attempt");
        // Another endpoint: a pooled connection if there is one. The same
        // one again (its pooled connection went stale): a new connection.
        let conn = if retry.endpoint == old.endpoint {
            self.connect(io, id, retry.endpoint).map(|c| (c, false))
        } else {
            self.backend_conn(io, id, retry.endpoint)
        };
        let Some((conn, reused)) = conn else {
            self.refuse(id, Cause::ConnectFailed);
            return;
        };
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        request.keep_for_replay(&retry.bytes, reused);
        request.attempt = Some(Attempt::new(
            Wire::Socket(conn),
            retry.endpoint,
            protocol,
            reused,
            retry.bytes,
            now,
        ));
    }

    /// Where and what the next attempt after a failure for `cause` sends,
    /// if there may be one. Takes what it needs from the request.
    fn next_attempt(&mut self, id: usize, cause: Cause, now: Instant) -> Option<Retry> {
        let limit = self.settings.max_attempts;
        let request = self.exchanges[id].request.as_mut()?;
        let attempt = request.attempt.as_mut()?;
        let replay = cause.replay();
        if !matches!(attempt.wire, Wire::Socket(_))
            || replay == Replay::Never
            || request.attempts >= limit
        {
            return None;
        }
        let (bytes, same_endpoint) = if !attempt.connected && replay == Replay::Safe {
            // Nothing reached the backend: what the socket never took is
            // the whole request so far.
            (std::mem::take(&mut attempt.tx), false)
        } else if attempt.answered {
            return None;
        } else if attempt.reused {
            // A pooled connection the backend closed while it sat idle: the
            // request (no body, so still at hand) goes again on a new one —
            // the retry a keep-alive race deserves.
            (request.replay.take()?, true)
        } else if request.method.is_idempotent() {
            // Reset before any answer: an idempotent request without a
            // body goes to another endpoint (this one is likely going).
            (request.replay.take()?, false)
        } else {
            return None;
        };
        if same_endpoint {
            return Some(Retry {
                endpoint: attempt.endpoint,
                bytes,
            });
        }
        request.failed.push(attempt.endpoint);
        let endpoints = &request.upstream.as_ref()?.backend()?.endpoints;
        // From the one after the failed endpoint, in rotation order.
        let after = endpoints
            .iter()
            .position(|&e| e == attempt.endpoint)
            .map_or(0, |i| i + 1);
        let endpoint = self.health.pick(endpoints, after, &request.failed, now)?;
        Some(Retry { endpoint, bytes })
    }
}
