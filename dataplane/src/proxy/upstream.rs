//! Upstream selection and connections: the worker's own round-robin
//! positions, the keep-alive pool per endpoint and protocol, and connect
//! (what follows a failed attempt is [`super::attempt`]'s).

use super::balance::Load;
use super::h1;
use super::health::PassiveHealth;
use super::session::Session;
use super::{Attempt, BodyWriter, Proxy, ReadOutcome, Role, Transport, Wire};
use crate::config::{Backend, BackendProtocol, GatewayConfig, RuleAction};
use crate::error::Cause;
use crate::http2::pipe::{CoreEnd, Message, PipeKind};
use crate::message::{BodyLength, Request};
use foldhash::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Instant;

/// Where this worker's round robins stand, per rule and per backend of the
/// configuration in force: upstream state is the worker's, the published
/// table holds only configuration (DESIGN.md decision 2).
#[derive(Default)]
pub(super) struct Cursors {
    /// The configuration the positions belong to (its address; the
    /// positions start over when another is published).
    config: usize,
    /// Requests so far, by the address of the `Backends` or `Backend` in
    /// that configuration.
    turns: HashMap<usize, usize>,
}

/// Idle HTTP/1.1 backend connections are kept per endpoint (h2c streams
/// ride on the HTTP/2 layer's own connections).
pub(super) type PoolKey = SocketAddr;

/// What upstream selection chose.
pub(super) struct Selected {
    /// The backend's index among the rule's.
    pub backend: usize,
    pub endpoint: SocketAddr,
    /// The request's consistent-hash key, if its backend hashes and it
    /// has one.
    pub key: Option<u64>,
}

impl Selected {
    /// The endpoint of the request's `session`, if it may take the
    /// request (selection goes on as usual if not).
    pub(super) fn by_session(
        action: &RuleAction,
        session: Session,
        health: &PassiveHealth,
        load: &Load,
        now: Instant,
    ) -> Option<Self> {
        let backend = action.backends.backends.get(session.backend)?;
        let usable =
            backend.invalid.is_none() && load.may_take(health, backend, session.endpoint, now);
        usable.then_some(Selected {
            backend: session.backend,
            endpoint: session.endpoint,
            key: None,
        })
    }
}

impl Cursors {
    /// Upstream selection: the rule's backend by weight (its index among
    /// the rule's), then one of its endpoints by the backend's policy;
    /// `key_of` gives the request's consistent-hash key for a backend.
    pub(super) fn select(
        &mut self,
        config: &GatewayConfig,
        action: &RuleAction,
        key_of: impl FnOnce(&Backend) -> Option<u64>,
        health: &PassiveHealth,
        load: &mut Load,
        now: Instant,
    ) -> Result<Selected, Cause> {
        let turn = self.turn(config, &action.backends);
        let index = action
            .backends
            .pick_index(turn)
            .ok_or(Cause::BackendNotResolved)?;
        let backend = &action.backends.backends[index];
        if backend.invalid.is_some() {
            return Err(Cause::BackendNotResolved);
        }
        let key = key_of(backend);
        let turn = || self.turn(config, backend);
        let endpoint = load.choose(health, backend, turn, &[], key, now)?;
        Ok(Selected {
            backend: index,
            endpoint,
            key,
        })
    }

    /// The next turn of `item`, which lives in `config`.
    pub(super) fn turn<T>(&mut self, config: &GatewayConfig, item: &T) -> usize {
        let config = config as *const GatewayConfig as usize;
        if config != self.config {
            self.config = config;
            self.turns.clear();
        }
        let turn = self.turns.entry(item as *const T as usize).or_default();
        let this = *turn;
        *turn = turn.wrapping_add(1);
        this
    }
}

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    /// Close pooled connections idle longer than the pool keeps them.
    pub(super) fn expire_idle_pool<T: Transport<Conn = C>>(&mut self, io: &mut T, now: Instant) {
        let idle = self.settings.pool_idle_timeout;
        let mut expired = Vec::new();
        for conns in self.pool.values_mut() {
            conns.retain(|&(conn, since)| {
                let keep = now.duration_since(since) < idle;
                if !keep {
                    expired.push(conn);
                }
                keep
            });
        }
        for conn in expired {
            self.let_go_backend(io, Wire::Socket(conn), false);
        }
        self.pool.retain(|_, c| !c.is_empty());
        self.metrics
            .set_pool_idle(self.pool.values().map(Vec::len).sum());
    }

    /// A pooled connection reported activity: anything but a would-block
    /// read means it is no longer usable.
    pub(super) fn check_idle<T: Transport<Conn = C>>(&mut self, io: &mut T, conn: C, key: PoolKey) {
        let mut byte = [0u8; 1];
        if io.read(conn, &mut byte) != ReadOutcome::WouldBlock {
            if let Some(conns) = self.pool.get_mut(&key) {
                conns.retain(|&(c, _)| c != conn);
            }
            self.let_go_backend(io, Wire::Socket(conn), true);
        }
    }

    /// Close (FIN) or abort (RST) a backend connection or stream and
    /// forget it.
    pub(super) fn let_go_backend<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        wire: Wire<C>,
        abort: bool,
    ) {
        self.roles.remove(&wire);
        if let Wire::Socket(conn) = wire {
            if let Some((endpoint, up)) = self.backend_conns.remove(&conn) {
                self.load.disconnected(endpoint, up);
            }
        }
        match (wire, abort) {
            (Wire::Socket(conn), true) => io.abort(conn),
            (Wire::Socket(conn), false) => io.close(conn),
            (Wire::Pipe(pipe), true) => self.pipes.core_end(pipe, CoreEnd::Aborted),
            (Wire::Pipe(pipe), false) => self.pipes.core_end(pipe, CoreEnd::Closed),
        }
        // h2c requests ride on streams of the HTTP/2 layer's own pool.
        if let Wire::Socket(_) = wire {
            self.metrics.backend_connection_closed();
        }
    }

    /// Connect or pool checkout: the first attempt, taking `request` (and the
    /// body after it) to `endpoint` — an HTTP/1.1 connection, or a stream
    /// of the HTTP/2 layer for an h2c backend; 503 when no connection can
    /// be had.
    pub(super) fn open_attempt<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        endpoint: SocketAddr,
        protocol: BackendProtocol,
        request: Request,
        now: Instant,
    ) {
        let leg = match protocol {
            BackendProtocol::H2c => {
                let in_flight = self.exchanges[id].request.as_mut().expect("in flight");
                in_flight.keep_message_for_replay(&request);
                let body = request.body;
                let pipe = self.open_stream(id, endpoint, request);
                let in_flight = self.exchanges[id].request.as_mut().expect("in flight");
                in_flight.body_writer = match body {
                    BodyLength::None => BodyWriter::Nothing,
                    _ => BodyWriter::Events,
                };
                Attempt::new(Wire::Pipe(pipe), endpoint, false, Vec::new(), now)
            }
            BackendProtocol::Http1 => {
                let (conn, reused) = match self.backend_conn(io, id, endpoint, now) {
                    Ok(conn) => conn,
                    Err(cause) => {
                        self.refuse(id, cause);
                        return;
                    }
                };
                let mut head = Vec::with_capacity(512);
                let coding = h1::encode_request(&request, &mut head);
                let in_flight = self.exchanges[id].request.as_mut().expect("in flight");
                in_flight.body_writer = BodyWriter::of(coding);
                in_flight.keep_for_replay(&head, reused);
                Attempt::new(Wire::Socket(conn), endpoint, reused, head, now)
            }
        };
        let mut leg = leg;
        leg.deadline = self.backend_deadline(id, now);
        self.load.begin(endpoint, now);
        let in_flight = self.exchanges[id].request.as_mut().expect("in flight");
        in_flight.attempt = Some(leg);
        in_flight.attempts += 1;
        self.metrics.backend_request();
    }

    /// A new stream to h2c `endpoint` for exchange `id`, with `request`'s
    /// head on it (its body follows as events).
    pub(super) fn open_stream(
        &mut self,
        id: usize,
        endpoint: SocketAddr,
        request: Request,
    ) -> usize {
        let pipe = self.pipes.open(PipeKind::Outbound { endpoint });
        let _ = self.pipes.send(pipe, Message::Request(Box::new(request)));
        self.roles.insert(Wire::Pipe(pipe), Role::Backend(id));
        pipe
    }

    /// A pooled HTTP/1.1 connection to `endpoint`, or a new one.
    pub(super) fn backend_conn<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        endpoint: SocketAddr,
        now: Instant,
    ) -> Result<(C, bool), Cause> {
        if let Some(conns) = self.pool.get_mut(&endpoint) {
            if let Some((conn, _)) = conns.pop() {
                self.roles.insert(Wire::Socket(conn), Role::Backend(id));
                return Ok((conn, true));
            }
        }
        let conn = self.connect(io, id, endpoint, now)?;
        Ok((conn, false))
    }

    /// A new HTTP/1.1 connection to `endpoint` for exchange `id`, within
    /// its backend's circuit breaker: `Overflow` with as many connecting
    /// as `maxPendingRequests`, or as many open as `maxConnections` and
    /// none of them idle to close for room.
    pub(super) fn connect<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        endpoint: SocketAddr,
        now: Instant,
    ) -> Result<C, Cause> {
        // Only a backend with either limit pays for the count.
        let limited = |b: &Backend| {
            let t = &b.traffic;
            t.max_connections.is_some() || t.max_pending_requests.is_some()
        };
        let rule = self.exchanges[id]
            .request
            .as_ref()
            .and_then(|r| r.upstream.as_ref())
            .filter(|u| u.backend().is_some_and(limited))
            .map(|u| (u.rule.clone(), u.backend));
        if let Some(backend) = rule
            .as_ref()
            .and_then(|(rule, index)| rule.backends.backends.get((*index)?))
        {
            let traffic = &backend.traffic;
            let (open, connecting) = self.load.connections(backend);
            if traffic
                .max_pending_requests
                .is_some_and(|max| connecting >= max)
            {
                return Err(Cause::Overflow);
            }
            if traffic.max_connections.is_some_and(|max| open >= max)
                && !self.close_an_idle_one(io, &backend.endpoints)
            {
                return Err(Cause::Overflow);
            }
        }
        let conn = io
            .connect(endpoint, BackendProtocol::Http1)
            .ok_or(Cause::ConnectFailed)?;
        self.roles.insert(Wire::Socket(conn), Role::Backend(id));
        self.backend_conns.insert(conn, (endpoint, false));
        self.load.connecting(endpoint, now);
        self.metrics.backend_connection_opened();
        Ok(conn)
    }

    /// Close the longest idle pooled connection to one of `endpoints`;
    /// whether there was one.
    fn close_an_idle_one<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        endpoints: &[SocketAddr],
    ) -> bool {
        let oldest = endpoints
            .iter()
            .filter_map(|e| Some((*e, self.pool.get(e)?.first()?.1)))
            .min_by_key(|&(_, since)| since);
        let Some((endpoint, _)) = oldest else {
            return false;
        };
        let Some(conns) = self.pool.get_mut(&endpoint) else {
            return false;
        };
        let (conn, _) = conns.remove(0);
        self.let_go_backend(io, Wire::Socket(conn), false);
        true
    }

    /// Return a backend connection to the pool, or close it (a stream to
    /// an h2c backend is over with its response).
    pub(super) fn release_backend<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        leg: Attempt<C>,
        reusable: bool,
        now: Instant,
    ) {
        let Wire::Socket(conn) = leg.wire else {
            self.load.end(leg.endpoint);
            // The HTTP/2 layer cancels the stream if its request was not
            // all sent.
            self.let_go_backend(io, leg.wire, false);
            return;
        };
        self.load.end(leg.endpoint);
        let idle = self.pool.entry(leg.endpoint).or_default();
        if reusable && leg.tx.is_empty() && idle.len() < self.settings.pool_max_idle {
            self.roles.insert(leg.wire, Role::Idle(leg.endpoint));
            idle.push((conn, now));
        } else {
            self.let_go_backend(io, leg.wire, false);
        }
    }
}
