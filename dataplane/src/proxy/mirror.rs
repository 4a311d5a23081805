//! RequestMirror: copies of a request, fire and forget.
//!
//! A copy is an exchange of its own whose "client" is a mirror pipe
//! ([`crate::http2::pipe::PipeKind::Mirror`]): it goes through upstream
//! selection, the pool, deadlines and failures like any request, and its
//! answer is dropped. The request it copies feeds it the body events it
//! reads from its client; a copy that falls a pipe's capacity behind is let
//! go, so a slow or dead mirror never holds back, slows or fails the
//! client's own request.

use super::attempt::Upstream;
use super::body::BodyReader;
use super::h1::ClientFraming;
use super::upstream::Selected;
use super::{Exchange, InFlight, Proxy, Role, Transport, Wire};
use crate::config::{Mirror, RuleAction};
use crate::http1::Version;
use crate::http2::pipe::{Message, PipeKind, Pipes};
use crate::message::{BodyEvent, Request};
use bytes::BytesMut;
use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    /// Start the copies `mirrors` ask for of `request` (as filtered for
    /// the backend), from exchange `id`. The pipes of those whose body is
    /// still to come are kept with the request, which feeds them.
    pub(super) fn start_mirrors<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        mirrors: &[Mirror],
        request: &Request,
        now: Instant,
    ) {
        let (peer, local_port) = {
            let exchange = &self.exchanges[id];
            (exchange.peer, exchange.local_port)
        };
        let mut fed = Vec::new();
        for mirror in mirrors {
            if !self.chance(mirror.numerator, mirror.denominator) {
                continue;
            }
            let copy = Request {
                head: request.head.clone(),
                body: request.body,
            };
            if let Some(pipe) = self.start_copy(io, &mirror.action, copy, peer, local_port, now) {
                fed.push(pipe);
            }
        }
        let request = self.exchanges[id].request.as_mut().expect("in flight");
        if !request.body.is_done() {
            request.mirrors = fed;
        }
    }

    /// One copy to `action`'s backend; its pipe.
    fn start_copy<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        action: &Arc<RuleAction>,
        request: Request,
        peer: SocketAddr,
        local_port: u16,
        now: Instant,
    ) -> Option<usize> {
        let config = self.config.load();
        let selected =
            self.cursors
                .select(&config, action, |_| None, &self.health, &mut self.load, now);
        let Ok(Selected {
            backend: index,
            endpoint,
            ..
        }) = selected
        else {
            self.metrics.mirror(false);
            return None;
        };
        drop(config);
        self.metrics.mirror(true);
        let pipe = self.pipes.open(PipeKind::Mirror);
        let framing = ClientFraming {
            version: Version::Http11,
            keep_alive: false,
            head_request: request.head.method == http::Method::HEAD,
        };
        let body = BodyReader::events(request.body);
        let mut in_flight = InFlight::new(request.head.method.clone(), framing, body, now);
        let mut upstream = Upstream::new(action);
        upstream.backend = Some(index);
        in_flight.upstream = Some(upstream);
        let id = self.exchanges.insert(Exchange {
            client: Wire::Pipe(pipe),
            peer,
            local_port,
            rx: BytesMut::new(),
            tx: Vec::new(),
            eof: false,
            closing: true,
            served: true,
            mirror: true,
            request: Some(in_flight),
            idle_since: now,
            head_started: None,
            written: now,
        });
        self.roles.insert(Wire::Pipe(pipe), Role::Client(id));
        let protocol = action.backends.backends[index].protocol;
        self.open_attempt(io, id, endpoint, protocol, request, now);
        self.drive(io, id, now);
        Some(pipe)
    }

    /// The request of exchange `id` ends before its body did: its copies
    /// will never have the rest.
    pub(super) fn drop_mirrors(&mut self, id: usize) {
        let Some(request) = self.exchanges.get_mut(id).and_then(|e| e.request.as_mut()) else {
            return;
        };
        for pipe in std::mem::take(&mut request.mirrors) {
            self.pipes.reset(pipe);
        }
    }

    /// `numerator` in `denominator`, by this worker's random draw.
    fn chance(&mut self, numerator: u32, denominator: u32) -> bool {
        if numerator >= denominator {
            return true;
        }
        (self.load.draw(denominator as usize) as u32) < numerator
    }
}

/// A body event of a request: to its copies (`mirrors`, their pipes) too.
/// A copy that cannot take it (fallen behind, gone) is let go; after the
/// last event none is left to feed.
pub(super) fn feed_mirrors(pipes: &mut Pipes, mirrors: &mut Vec<usize>, event: &BodyEvent) {
    let end = matches!(event, BodyEvent::End | BodyEvent::Trailers(_));
    mirrors.retain(|&pipe| {
        let fed = pipes.feed(pipe, Message::Body(event.clone()));
        if fed.is_err() {
            pipes.reset(pipe);
        }
        fed.is_ok() && !end
    });
}
