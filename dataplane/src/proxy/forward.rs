//! Forward: the response head from the backend (decoded from HTTP/1.1 or
//! taken off the pipe), response filters, and the response body relayed to
//! the client event by event, bounded both ways; then the end of an
//! exchange's request.

use super::body::{BodyReader, ReadError};
use super::{
    cors, h1, read_event, room, session, unix_time, write_event, Proxy, ResponseState, Transport,
    Wire,
};
use crate::error::Cause;
use crate::http1::{self, ResponseFraming};
use crate::http2::pipe::Message;
use crate::message::Response;
use crate::metrics::{EjectionCause, StatusClass};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

/// A response head from the backend, and how its body is read.
struct Answer {
    response: Response,
    reader: BodyReader,
    backend_keep_alive: bool,
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
        if let Some(leg) = &request.attempt {
            if leg.connected && leg.tx.is_empty() {
                request.request_end = Some(now);
            }
        }
    }

    /// Take the backend's response head, if it has come: `Ok(None)` until
    /// then; `Err` when the backend failed the request.
    fn response_head<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> Result<Option<Answer>, ()> {
        let limits = crate::http1::Limits {
            max_body: u64::MAX,
            ..self.settings.limits.clone()
        };
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        let leg = request.attempt.as_mut().expect("backend leg");
        match leg.wire {
            Wire::Socket(_) => loop {
                let head = match http1::parse_response(&leg.rx, request.method.as_str(), &limits) {
                    Ok(Some(head)) => head,
                    Ok(None) if leg.eof => {
                        self.attempt_failed(io, id, now);
                        return Err(());
                    }
                    Ok(None) => return Ok(None),
                    Err(error) => {
                        tracing::debug!(%error, endpoint = %leg.endpoint, "bad backend response");
                        self.fail_request(io, id, Cause::UpstreamProtocol, now);
                        return Err(());
                    }
                };
                let _ = leg.rx.split_to(head.head_len);
                if (100..200).contains(&head.status) {
                    // Interim responses (we already answered 100 ourselves).
                    continue;
                }
                let chunked = head.framing == ResponseFraming::Chunked;
                let backend_keep_alive = head.keep_alive;
                let response = match h1::decode_response(head) {
                    Ok(response) => response,
                    Err(error) => {
                        tracing::debug!(%error, endpoint = %leg.endpoint, "bad backend response");
                        self.fail_request(io, id, Cause::UpstreamProtocol, now);
                        return Err(());
                    }
                };
                let reader = BodyReader::bytes(response.body, chunked, &limits);
                return Ok(Some(Answer {
                    response,
                    reader,
                    backend_keep_alive,
                }));
            },
            Wire::Pipe(pipe) => match self.pipes.take(pipe) {
                Ok(Some(Message::Response(response))) => {
                    leg.answered = true;
                    leg.heard = now;
                    let reader = BodyReader::events(response.body);
                    Ok(Some(Answer {
                        response: *response,
                        reader,
                        backend_keep_alive: false,
                    }))
                }
                Ok(Some(other)) => {
                    tracing::warn!(?other, "a backend stream answered with no head");
                    self.fail_request(io, id, Cause::UpstreamProtocol, now);
                    Err(())
                }
                Ok(None) => Ok(None),
                Err(_) => {
                    // Unsent: as a refused connect (ejected, and another
                    // endpoint may have it); else a reset before the answer.
                    let cause = if self.pipes.unsent(pipe) {
                        Cause::ConnectRefused
                    } else {
                        Cause::ResetBeforeResponse
                    };
                    self.retry_or_fail(io, id, cause, now);
                    Err(())
                }
            },
        }
    }

    /// Take the backend's response head and send it on, then relay body
    /// events.
    pub(super) fn advance_response<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let Some(request) = self.exchanges[id].request.as_mut() else {
            return false;
        };
        if request.attempt.is_none() {
            return false;
        }
        match request.response {
            ResponseState::Done => false,
            ResponseState::Head => {
                // A route timeout due while the answer was on its way (its
                // timer comes after this batch of events): the timeout wins.
                let late = |at: Option<Instant>| at.is_some_and(|at| now >= at);
                if late(request.deadline) {
                    self.fail_request(io, id, Cause::RequestTimeout, now);
                    return true;
                }
                if late(request.attempt.as_ref().and_then(|a| a.deadline)) {
                    self.retry_or_fail(io, id, Cause::BackendRequestTimeout, now);
                    return true;
                }
                let Answer {
                    mut response,
                    mut reader,
                    backend_keep_alive,
                } = match self.response_head(io, id, now) {
                    Ok(Some(answer)) => answer,
                    Ok(None) => return false,
                    Err(()) => return true,
                };
                let status = response.head.status.as_u16();
                let request = self.exchanges[id].request.as_mut().expect("in flight");
                let policy = request
                    .upstream
                    .as_ref()
                    .and_then(|u| u.rule.retry.as_ref());
                if policy.is_some_and(|p| p.retries_status(status))
                    && self.retry_answer(io, id, status, &mut reader, backend_keep_alive, now)
                {
                    return true;
                }
                let exchange = &mut self.exchanges[id];
                let mirror = exchange.mirror;
                let request = exchange.request.as_mut().expect("in flight");
                if let (Some(attempt), Some(backend)) = (&request.attempt, request.backend()) {
                    let endpoint = attempt.endpoint;
                    if let Some(period) = self.health.answered(endpoint, Some(status), backend, now)
                    {
                        self.metrics.ejection(EjectionCause::Errors);
                        tracing::debug!(%endpoint, status, ?period, "endpoint ejected");
                    }
                    let latency = now.saturating_duration_since(attempt.opened);
                    self.load.observe(endpoint, latency, now);
                    if !self.load.is_slow(endpoint, backend) {
                        self.health.latency_normal(endpoint);
                    } else if let Some(period) = self.health.slow(endpoint, backend, now) {
                        self.load.forget_typical(endpoint);
                        self.metrics.ejection(EjectionCause::Latency);
                        tracing::debug!(%endpoint, ?latency, ?period, "slow endpoint ejected");
                    }
                }
                if let Some(upstream) = &request.upstream {
                    upstream.modify_response(&mut response.head.headers);
                    if let (Some(rule), Some(attempt), Some(backend)) =
                        (&upstream.rule.session, &request.attempt, upstream.backend())
                    {
                        let now = unix_time(self.wall, now);
                        let at = attempt.endpoint;
                        if let Some((name, value)) =
                            session::answer_field(rule, upstream.session, &backend.name, at, now)
                        {
                            response.head.headers.append(name, value);
                        }
                    }
                    if let (Some(cors), Some(origin)) =
                        (&upstream.rule.cors, request.cors_origin.take())
                    {
                        cors::add_response_fields(cors, origin, &mut response.head.headers);
                    }
                }
                // A mirrored copy's answer is nobody's response.
                if !mirror {
                    self.metrics.response(StatusClass::of(status));
                    if let Some(upstream) = &request.upstream {
                        upstream.count_response(&self.metrics, status);
                    }
                    self.metrics
                        .observe_latency(now.duration_since(request.started));
                }
                request.replay = None;
                let writer = self.send_response_head(id, response);
                let request = self.exchanges[id].request.as_mut().expect("in flight");
                request.response = ResponseState::Body {
                    reader,
                    writer,
                    backend_keep_alive,
                };
                true
            }
            ResponseState::Body { .. } => self.relay_response_body(io, id, now),
        }
    }

    /// Move response body events from the backend to the client, as far
    /// as the client takes them.
    fn relay_response_body<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let cap = self.settings.buffer;
        let exchange = &mut self.exchanges[id];
        let request = exchange.request.as_mut().expect("in flight");
        let leg = request.attempt.as_mut().expect("backend leg");
        let ResponseState::Body {
            reader,
            writer,
            backend_keep_alive,
        } = &mut request.response
        else {
            return false;
        };
        let mut progress = false;
        let mut failure = None;
        while !reader.is_done() {
            let max = room(&self.pipes, exchange.client, &exchange.tx, cap);
            if max == 0 {
                break;
            }
            let event = match read_event(
                &mut self.pipes,
                leg.wire,
                exchange.client,
                reader,
                &mut leg.rx,
                leg.eof,
                max,
            ) {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(ReadError::Framing(_)) => {
                    // A broken body from the backend: the client cannot be
                    // told cleanly any more.
                    failure = Some(Cause::UpstreamProtocol);
                    break;
                }
                Err(ReadError::Gone) => {
                    failure = Some(Cause::ResetDuringResponse);
                    break;
                }
            };
            progress = true;
            leg.heard = now;
            let sent = write_event(
                &mut self.pipes,
                exchange.client,
                &mut exchange.tx,
                *writer,
                event,
            );
            if sent.is_err() {
                self.client_gone(io, id);
                return true;
            }
            if matches!(exchange.client, Wire::Pipe(_)) {
                // Taken by the stream's queue, within its bound.
                exchange.written = now;
            }
        }
        let truncated = !reader.is_done()
            && matches!(leg.wire, Wire::Socket(_))
            && leg.eof
            && leg.rx.is_empty();
        if truncated {
            // The backend closed mid-body: the client's response is
            // truncated; the only honest signal left is to abort.
            failure = Some(Cause::ResetDuringResponse);
        }
        if let Some(cause) = failure {
            self.metrics.failure(cause);
            self.close_exchange(io, id, true);
            return true;
        }
        if reader.is_done() {
            let reusable = *backend_keep_alive && leg.rx.is_empty() && !leg.eof;
            let reusable = reusable && request.body.is_done();
            request.response = ResponseState::Done;
            if let Some(leg) = request.attempt.take() {
                self.release_backend(io, leg, reusable, now);
            }
            return true;
        }
        progress
    }

    /// Both directions of the in-flight request are done: release it.
    pub(super) fn finish_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) -> bool {
        let exchange = &mut self.exchanges[id];
        let is_stream = exchange.is_stream();
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
            if exchange.closing || is_stream {
                exchange.rx.clear();
                exchange.eof = true;
                request.body = BodyReader::Done;
            } else {
                return false;
            }
        }
        let request = exchange.request.take().expect("checked");
        for pipe in &request.mirrors {
            self.pipes.reset(*pipe);
        }
        exchange.idle_since = now;
        // A pipelined request already waiting starts its head clock now.
        exchange.head_started = (!exchange.rx.is_empty()).then_some(now);
        if let Some(leg) = request.attempt {
            self.release_backend(io, leg, false, now);
        }
        true
    }
}
