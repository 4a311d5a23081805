//! What a worker runs: the proxy core and the HTTP/2 layer, over one
//! transport.
//!
//! Drivers (the AF_XDP worker, the kernel-socket worker, tests) call
//! [`HttpService`] as they would the core: accept, I/O, tick, drain, and
//! [`HttpService::flush`] after each batch of events. It hands client
//! connections that open with the HTTP/2 preface or ask for `Upgrade: h2c`
//! to the HTTP/2 layer, gives the core its streams as message pipes, and
//! runs both until neither has anything left to do.
//!
//! HTTP/2 connections are polled at the flush, once per batch, not once
//! per event: when ten backend responses arrive in one batch for streams
//! of one client connection, `h2` encodes them in one poll and they leave
//! in one write, where a poll per event cost a full connection poll (and a
//! segment) per response.

use crate::config::{BackendProtocol, GatewayConfig};
use crate::http2::{Http2, Http2Settings};
use crate::metrics::ProxyMetrics;
use crate::proxy::{Proxy, ProxySettings, Transport};
use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Rounds of core ↔ HTTP/2 hand-over per call; what is left is done at
/// the next call, which [`HttpService::has_work`] tells a driver not to
/// sleep before.
const SETTLE_ROUNDS: usize = 64;

pub struct HttpService<T: Transport> {
    core: Proxy<T::Conn>,
    http2: Http2<T::Conn>,
    config: Arc<ArcSwap<GatewayConfig>>,
    metrics: Arc<ProxyMetrics>,
    /// The configuration the backend pools were last opened for (held, so
    /// a new one is never mistaken for it).
    warm: Option<Arc<GatewayConfig>>,
    /// The last settle ran out of rounds with work left.
    unsettled: bool,
}

impl<T: Transport> HttpService<T> {
    pub fn new(
        settings: ProxySettings,
        http2: Http2Settings,
        config: Arc<ArcSwap<GatewayConfig>>,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        Self {
            http2: Http2::new(http2, settings.deadlines.clone(), settings.gate.clone()),
            core: Proxy::new(settings, config.clone(), metrics.clone()),
            config,
            metrics,
            warm: None,
            unsettled: false,
        }
    }

    /// Client connections open (HTTP/1.1 and HTTP/2).
    pub fn clients(&self) -> usize {
        self.core.clients() + self.http2.clients()
    }

    /// Whether `conn` is one the service knows.
    pub fn knows(&self, conn: T::Conn) -> bool {
        self.core.knows(conn) || self.http2.owns(conn)
    }

    pub fn accept(
        &mut self,
        io: &mut T,
        conn: T::Conn,
        peer: SocketAddr,
        local_port: u16,
        now: Instant,
    ) {
        self.core.accept(io, conn, peer, local_port, now);
    }

    /// `conn` may be readable, writable, connected or closed. What it
    /// means for HTTP/2 is done at the next [`Self::flush`].
    pub fn on_io(&mut self, io: &mut T, conn: T::Conn, now: Instant) {
        if self.http2.owns(conn) {
            self.http2.on_net(conn);
        } else {
            self.core.on_io(io, conn, now);
        }
    }

    /// Finish what the events since the last call started: call after
    /// each batch of [`Self::accept`] and [`Self::on_io`] calls.
    pub fn flush(&mut self, io: &mut T, now: Instant) {
        self.settle(io, now);
    }

    /// Timeouts, and backend pools kept warm; call every
    /// [`crate::proxy::TICK_INTERVAL`].
    pub fn tick(&mut self, io: &mut T, now: Instant) {
        self.core.tick(io, now);
        self.http2
            .tick(io, &mut self.core.pipes, &self.metrics, now);
        let config = self.config.load_full();
        if self.warm.as_ref().is_none_or(|w| !Arc::ptr_eq(w, &config)) {
            self.http2
                .prewarm(io, &h2c_endpoints(&config), &self.metrics);
            self.warm = Some(config);
        }
        self.settle(io, now);
    }

    /// When [`Self::run_timers`] next has work (a retry's back-off, a
    /// route timeout): a driver wakes no later than this.
    pub fn next_timer(&self) -> Option<Instant> {
        self.core.next_timer()
    }

    /// What is due by `now` of the core's own timers; call when
    /// [`Self::next_timer`] has passed (cheap otherwise).
    pub fn run_timers(&mut self, io: &mut T, now: Instant) {
        if self.core.next_timer().is_some_and(|at| at <= now) {
            self.core.run_timers(io, now);
            self.settle(io, now);
        }
    }

    /// Whether work is left that no socket event will announce (a drive
    /// or a settle that ran out of rounds): the driver must call
    /// [`Self::flush`] again before it sleeps.
    pub fn has_work(&self) -> bool {
        self.unsettled || self.core.has_unfinished()
    }

    /// Stop taking requests (HTTP/1.1: close idle connections; HTTP/2:
    /// GOAWAY) and finish those in flight. Returns whether any is still
    /// in flight.
    pub fn drain(&mut self, io: &mut T, now: Instant) -> bool {
        self.http2.drain(now);
        let busy = self.core.drain(io, now);
        self.settle(io, now);
        busy || self.http2.clients() > 0 || self.http2.backend_connections() > 0
    }

    /// Pass work between the core and the HTTP/2 layer until neither has
    /// any.
    fn settle(&mut self, io: &mut T, now: Instant) {
        self.core.resume_unfinished(io, now);
        self.unsettled = false;
        for _ in 0..SETTLE_ROUNDS {
            let mut busy = false;
            for handoff in self.core.take_handoffs() {
                self.http2.adopt(handoff, &self.metrics, now);
                busy = true;
            }
            let accepted = std::mem::take(&mut self.core.pipes.accepted);
            let ready = std::mem::take(&mut self.core.pipes.ready);
            busy |= !accepted.is_empty() || !ready.is_empty();
            for (pipe, peer, port) in accepted {
                self.core.accept_stream(io, pipe, peer, port, now);
            }
            for pipe in ready {
                self.core.on_pipe(io, pipe, now);
            }
            busy |= self.http2.run(io, &mut self.core.pipes, &self.metrics, now);
            if !busy {
                return;
            }
        }
        self.unsettled = true;
    }
}

/// Every endpoint of every backend that speaks h2c.
fn h2c_endpoints(config: &GatewayConfig) -> BTreeSet<SocketAddr> {
    config
        .actions()
        .flat_map(|action| &action.backends.backends)
        .filter(|b| b.protocol == BackendProtocol::H2c && b.invalid.is_none())
        .flat_map(|b| b.endpoints.iter().copied())
        .collect()
}
