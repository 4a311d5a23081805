//! Upstream selection and connections: the worker's own round-robin
//! positions, the keep-alive pool per endpoint and protocol, connect, and
//! the one retry a pooled connection closed while idle deserves.

use super::{BackendLeg, Proxy, ReadOutcome, Role, Transport};
use crate::config::{Backend, BackendProtocol, GatewayConfig, RuleAction};
use crate::error::{Cause, Replay};
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

/// Idle backend connections are kept per endpoint and protocol: one
/// address may serve HTTP/1.1 and h2c on the same port.
pub(super) type PoolKey = (SocketAddr, BackendProtocol);

impl Cursors {
    /// Upstream selection: the rule's backend by weight, then one of its
    /// endpoints, each in this worker's round-robin order.
    pub(super) fn select<'a>(
        &mut self,
        config: &GatewayConfig,
        action: &'a RuleAction,
    ) -> Result<(&'a Backend, SocketAddr), Cause> {
        let turn = self.turn(config, &action.backends);
        let backend = action
            .backends
            .pick(turn)
            .ok_or(Cause::BackendNotResolved)?;
        if backend.invalid.is_some() {
            return Err(Cause::BackendNotResolved);
        }
        let turn = self.turn(config, backend);
        let endpoint = backend.endpoint(turn).ok_or(Cause::NoReadyEndpoint)?;
        Ok((backend, endpoint))
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
        for (&(_, protocol), conns) in self.pool.iter_mut() {
            conns.retain(|&(conn, since)| {
                let keep = now.duration_since(since) < idle;
                if !keep {
                    expired.push((conn, protocol));
                }
                keep
            });
        }
        for (conn, protocol) in expired {
            self.let_go_backend(io, conn, protocol, false);
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
            self.let_go_backend(io, conn, key.1, true);
        }
    }

    /// Close (FIN) or abort (RST) a backend connection and forget it.
    pub(super) fn let_go_backend<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        conn: C,
        protocol: BackendProtocol,
        abort: bool,
    ) {
        self.roles.remove(&conn);
        if abort {
            io.abort(conn);
        } else {
            io.close(conn);
        }
        // h2c requests ride on streams of the HTTP/2 layer's own pool.
        if protocol == BackendProtocol::Http1 {
            self.metrics.backend_connection_closed();
        }
    }

    /// Connect or pool checkout: the leg that takes `head` (and the body
    /// after it) to `endpoint`; 503 when no connection can be had.
    pub(super) fn open_leg<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        endpoint: SocketAddr,
        protocol: BackendProtocol,
        head: Vec<u8>,
        now: Instant,
    ) {
        let Some((conn, reused)) = self.backend_conn(io, id, endpoint, protocol) else {
            self.refuse(id, Cause::ConnectFailed);
            return;
        };
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        if reused && request.body.is_done() {
            request.replay = Some(head.clone());
        }
        request.backend = Some(BackendLeg::new(conn, endpoint, protocol, reused, head, now));
        self.metrics.backend_request();
    }

    /// A pooled connection to `endpoint`, or a new one.
    pub(super) fn backend_conn<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        endpoint: SocketAddr,
        protocol: BackendProtocol,
    ) -> Option<(C, bool)> {
        if let Some(conns) = self.pool.get_mut(&(endpoint, protocol)) {
            if let Some((conn, _)) = conns.pop() {
                self.roles.insert(conn, Role::Backend(id));
                return Some((conn, true));
            }
        }
        let conn = io.connect(endpoint, protocol)?;
        self.roles.insert(conn, Role::Backend(id));
        if protocol == BackendProtocol::Http1 {
            self.metrics.backend_connection_opened();
        }
        Some((conn, false))
    }

    /// The backend connection failed or closed before a complete response
    /// head: retry once on a fresh connection if the request may be
    /// replayed, else answer 502.
    pub(super) fn backend_failed<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        now: Instant,
    ) {
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        let leg = request.backend.as_ref().expect("backend leg");
        let cause = if leg.connected {
            Cause::ResetBeforeResponse
        } else {
            Cause::ConnectRefused
        };
        // A pooled connection the backend closed while it sat idle: the
        // request (no body, so still at hand) goes again on a new one —
        // the one retry a keep-alive race deserves.
        if leg.reused && !leg.answered && cause.replay() != Replay::Never {
            if let Some(replay) = request.replay.take() {
                let (endpoint, protocol, old) = (leg.endpoint, leg.protocol, leg.conn);
                request.backend = None;
                request.request_end = None;
                self.let_go_backend(io, old, protocol, true);
                match io.connect(endpoint, protocol) {
                    Some(conn) => {
                        self.roles.insert(conn, Role::Backend(id));
                        if protocol == BackendProtocol::Http1 {
                            self.metrics.backend_connection_opened();
                        }
                        let request = self.exchanges[id].request.as_mut().expect("in flight");
                        request.backend = Some(BackendLeg::new(
                            conn, endpoint, protocol, false, replay, now,
                        ));
                    }
                    None => self.refuse(id, Cause::ConnectFailed),
                }
                return;
            }
        }
        self.fail_request(io, id, cause, now);
    }

    /// Return a backend connection to the pool, or close it.
    pub(super) fn release_backend<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        leg: BackendLeg<C>,
        reusable: bool,
        now: Instant,
    ) {
        let idle = self.pool.entry((leg.endpoint, leg.protocol)).or_default();
        if reusable && leg.tx.is_empty() && idle.len() < self.settings.pool_max_idle {
            self.roles
                .insert(leg.conn, Role::Idle((leg.endpoint, leg.protocol)));
            idle.push((leg.conn, now));
        } else {
            self.let_go_backend(io, leg.conn, leg.protocol, false);
        }
    }
}
