//! HTTP/2 to h2c backends (client role): a pool of multiplexed connections
//! per endpoint.
//!
//! The core opens a pipe where it would open a TCP connection and puts one
//! request on it, head and body events. Each becomes a stream on the least
//! busy pooled connection to the endpoint; the pool grows to
//! [`Http2Settings::backend_connections`] and is opened ahead of the first
//! request when an endpoint appears. A connection that fails or is told
//! GOAWAY leaves the pool; its streams fail, and the next request opens a
//! replacement. A stream that fails before it was opened on a connection
//! is marked unsent: the core may send its request elsewhere, as after a
//! refused connect.

use super::codec::{recv_events, request_to_h2, response_from_h2, send_events, Received};
use super::io::{H2Io, Task, WakeList};
use super::pipe::{CoreEnd, Message, Pipes};
use super::{Http2Settings, Link, NetState, Windows, PASSES};
use crate::config::BackendProtocol;
use crate::metrics::ProxyMetrics;
use crate::proxy::Transport;
use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use h2::client::{self, ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use http::Request;
use slab::Slab;
use std::collections::BTreeSet;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

type Handshake = Pin<
    Box<
        dyn Future<
            Output = Result<(SendRequest<Bytes>, client::Connection<H2Io, Bytes>), h2::Error>,
        >,
    >,
>;

enum State {
    Handshake(Handshake),
    Ready {
        sender: SendRequest<Bytes>,
        connection: Box<client::Connection<H2Io, Bytes>>,
    },
    Ended,
}

struct Connection<C> {
    link: Link<C>,
    endpoint: SocketAddr,
    state: State,
    windows: Windows,
    waker: Waker,
    /// Streams opened on it and not finished.
    active: usize,
    /// Takes no new streams (GOAWAY seen, or failed).
    retired: bool,
    /// Told apart from a later connection in the same slot.
    generation: u64,
}

enum Response {
    Waiting(ResponseFuture),
    Body(RecvStream),
    Done,
}

enum Exchange {
    /// Waiting for the connection to take a new stream.
    Opening {
        request: Request<()>,
        /// The head ends the stream.
        end: bool,
    },
    Open {
        /// The request body still going out.
        send: Option<SendStream<Bytes>>,
        response: Response,
    },
}

/// A request of the core's in flight on pipe `pipe`.
struct Stream {
    conn: (usize, u64),
    waker: Waker,
    exchange: Exchange,
}

/// Every backend HTTP/2 connection of a worker.
pub struct Outbound<C> {
    conns: Slab<Connection<C>>,
    by_net: HashMap<C, usize>,
    pools: HashMap<SocketAddr, Vec<usize>>,
    streams: HashMap<usize, Stream>,
    builder: client::Builder,
    settings: Http2Settings,
    /// Socket reads land here first.
    scratch: Vec<u8>,
    generation: u64,
}

impl<C: Copy + Eq + Hash> Outbound<C> {
    pub fn new(settings: Http2Settings) -> Self {
        let mut builder = client::Builder::new();
        builder
            .header_table_size(settings.header_table_size)
            .max_header_list_size(settings.max_header_list_size)
            .enable_push(false);
        Self {
            conns: Slab::new(),
            by_net: HashMap::new(),
            pools: HashMap::new(),
            streams: HashMap::new(),
            builder,
            settings,
            scratch: vec![0; 64 * 1024],
            generation: 0,
        }
    }

    pub fn owns(&self, net: C) -> Option<usize> {
        self.by_net.get(&net).copied()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Open connections to `endpoints` up to the pool size, and close the
    /// pools of endpoints no longer among them.
    pub fn prewarm<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        endpoints: &BTreeSet<SocketAddr>,
        wakes: &WakeList,
        metrics: &ProxyMetrics,
    ) {
        let gone: Vec<SocketAddr> = self
            .pools
            .keys()
            .filter(|e| !endpoints.contains(e))
            .copied()
            .collect();
        for endpoint in gone {
            for key in self.pools.remove(&endpoint).unwrap_or_default() {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.retired = true;
                    wakes.push(Task::Outbound(key));
                }
            }
        }
        for &endpoint in endpoints {
            let have = self.pools.get(&endpoint).map_or(0, Vec::len);
            for _ in have..self.settings.backend_connections {
                if self.open(net, endpoint, wakes, metrics).is_none() {
                    break;
                }
            }
        }
    }

    fn open<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        endpoint: SocketAddr,
        wakes: &WakeList,
        metrics: &ProxyMetrics,
    ) -> Option<usize> {
        let socket = net.connect(endpoint, BackendProtocol::H2c)?;
        let io = H2Io::new(self.settings.write_buffer);
        let handshake = self.builder.handshake(io.clone());
        self.generation += 1;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        entry.insert(Connection {
            link: Link::new(socket, io),
            endpoint,
            state: State::Handshake(Box::pin(handshake)),
            windows: Windows::new(self.settings.max_window),
            waker: wakes.waker(Task::Outbound(key)),
            active: 0,
            retired: false,
            generation: self.generation,
        });
        self.by_net.insert(socket, key);
        self.pools.entry(endpoint).or_default().push(key);
        metrics.h2_backend_connection_opened();
        wakes.push(Task::Outbound(key));
        Some(key)
    }

    /// The connection a new stream to `endpoint` goes on: the least busy,
    /// or a new one while the pool is not full and all are busy.
    fn pick<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        endpoint: SocketAddr,
        wakes: &WakeList,
        metrics: &ProxyMetrics,
    ) -> Option<usize> {
        let pool = self.pools.get(&endpoint).map(Vec::as_slice).unwrap_or(&[]);
        let best = pool
            .iter()
            .copied()
            .filter(|&k| !self.conns[k].retired)
            .min_by_key(|&k| self.conns[k].active);
        let busy = best.is_none_or(|k| self.conns[k].active >= self.settings.backend_streams);
        if pool.len() < self.settings.backend_connections && busy {
            if let Some(key) = self.open(net, endpoint, wakes, metrics) {
                return Some(key);
            }
        }
        best
    }

    /// Read, poll and write connection `key` until it stops moving.
    pub fn service<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        key: usize,
        wakes: &WakeList,
        metrics: &ProxyMetrics,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Whether the connection must be polled again: bytes came in, or
        // `h2` was held back by a full buffer that now has room. Neither
        // will be reported by an edge-triggered socket or a waker.
        let mut again = false;
        for _ in 0..PASSES {
            let read = conn
                .link
                .fill(net, &mut self.scratch, self.settings.read_buffer);
            let mut cx = Context::from_waker(&conn.waker);
            if let State::Handshake(handshake) = &mut conn.state {
                match handshake.as_mut().poll(&mut cx) {
                    Poll::Ready(Ok((sender, mut connection))) => {
                        conn.windows.ping = connection.ping_pong();
                        conn.state = State::Ready {
                            sender,
                            connection: Box::new(connection),
                        };
                        // Streams waiting for it may open now.
                        for (&pipe, s) in &self.streams {
                            if s.conn.0 == key {
                                wakes.push(Task::Stream(pipe));
                            }
                        }
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::debug!(endpoint = %conn.endpoint, %error, "backend HTTP/2 handshake failed");
                        conn.state = State::Ended;
                    }
                    Poll::Pending => {}
                }
            }
            if let State::Ready { connection, .. } = &mut conn.state {
                if let Poll::Ready(result) = Pin::new(&mut **connection).poll(&mut cx) {
                    if let Err(error) = result {
                        tracing::debug!(endpoint = %conn.endpoint, %error, "backend HTTP/2 connection ended");
                    }
                    conn.state = State::Ended;
                } else if let Some(window) = conn.windows.update(&conn.link.io, &mut cx, now) {
                    connection.set_target_window_size(window);
                    let _ = connection.set_initial_window_size(window);
                }
            }
            let unblocked = conn.link.flush(net);
            again = read || unblocked;
            if !again {
                break;
            }
        }
        if again {
            // Out of passes with work left (a fast peer): the next round.
            wakes.push(Task::Outbound(key));
        }
        if conn.retired && conn.active == 0 {
            conn.state = State::Ended;
        }
        if matches!(conn.state, State::Ended) || conn.link.state == NetState::Failed {
            let conn = self.conns.remove(key);
            self.by_net.remove(&conn.link.net);
            if let Some(pool) = self.pools.get_mut(&conn.endpoint) {
                pool.retain(|&k| k != key);
            }
            conn.link.close(net);
            metrics.h2_backend_connection_closed();
            // Streams that were waiting for it fail now; open ones hear
            // from h2.
            for (&pipe, s) in &self.streams {
                if s.conn == (key, conn.generation) {
                    wakes.push(Task::Stream(pipe));
                }
            }
        }
    }

    /// Move what can move for the core's pipe `pipe`: start its next
    /// request, its request body, its response.
    pub fn service_pipe<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        pipes: &mut Pipes,
        pipe: usize,
        endpoint: SocketAddr,
        wakes: &WakeList,
        metrics: &ProxyMetrics,
    ) {
        let capacity = pipes.capacity;
        let Some(p) = pipes.get_mut(pipe) else {
            return;
        };
        if p.core != CoreEnd::Open {
            if let Some(stream) = self.streams.remove(&pipe) {
                self.finish_stream(stream, true, wakes);
            }
            pipes.release(pipe);
            return;
        }
        if !self.streams.contains_key(&pipe) {
            let request = match p.from_core.pop() {
                Some(Message::Request(request)) => request,
                Some(other) => {
                    tracing::warn!(?other, "a backend stream began with no request head");
                    pipes.reset(pipe);
                    return;
                }
                None => return,
            };
            let (request, end) = request_to_h2(*request);
            let Some(key) = self.pick(net, endpoint, wakes, metrics) else {
                pipes.reset_unsent(pipe);
                return;
            };
            let conn = &mut self.conns[key];
            conn.active += 1;
            self.streams.insert(
                pipe,
                Stream {
                    conn: (key, conn.generation),
                    waker: wakes.waker(Task::Stream(pipe)),
                    exchange: Exchange::Opening { request, end },
                },
            );
        }
        let Some(p) = pipes.get_mut(pipe) else {
            return;
        };
        let stream = self.streams.get_mut(&pipe).expect("present");
        let mut cx = Context::from_waker(&stream.waker);
        let (key, generation) = stream.conn;
        let conn = self
            .conns
            .get_mut(key)
            .filter(|c| c.generation == generation);
        let mut failed = false;
        // Failed while still opening: the stream never reached the backend.
        let mut unsent = false;
        let mut for_core = false;
        if let Exchange::Opening { .. } = &stream.exchange {
            match conn.map(|c| (&mut c.state, &mut c.retired)) {
                Some((State::Handshake(_), _)) => return,
                Some((State::Ready { sender, .. }, retired)) => match sender.poll_ready(&mut cx) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(())) => {
                        let Exchange::Opening { request, end } = std::mem::replace(
                            &mut stream.exchange,
                            Exchange::Open {
                                send: None,
                                response: Response::Done,
                            },
                        ) else {
                            unreachable!("matched above")
                        };
                        match sender.send_request(request, end) {
                            Ok((response, send)) => {
                                metrics.h2_backend_stream_opened();
                                stream.exchange = Exchange::Open {
                                    send: (!end).then_some(send),
                                    response: Response::Waiting(response),
                                };
                            }
                            Err(error) => {
                                tracing::debug!(%error, "backend stream refused");
                                *retired = true;
                                failed = true;
                                unsent = true;
                            }
                        }
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::debug!(%error, "backend connection takes no streams");
                        *retired = true;
                        failed = true;
                        unsent = true;
                    }
                },
                Some((State::Ended, _)) | None => {
                    failed = true;
                    unsent = true;
                }
            }
        }
        if let Exchange::Open { send, response } = &mut stream.exchange {
            if let Some(out) = send {
                let mut done = false;
                match send_events(out, &mut p.from_core, &mut done, &mut cx) {
                    Ok(moved) => {
                        // Room on the pipe: the core may queue more.
                        for_core |= moved;
                        if done {
                            *send = None;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "backend stream failed sending");
                        failed = true;
                    }
                }
            }
            loop {
                match response {
                    Response::Waiting(future) => match Pin::new(future).poll(&mut cx) {
                        Poll::Ready(Ok(head)) => {
                            let (parts, body) = head.into_parts();
                            let end = body.is_end_stream();
                            let message = response_from_h2(parts, end);
                            p.to_core.push(Message::Response(Box::new(message)));
                            for_core = true;
                            *response = if end {
                                Response::Done
                            } else {
                                Response::Body(body)
                            };
                            continue;
                        }
                        Poll::Ready(Err(error)) => {
                            tracing::debug!(%error, "backend stream failed");
                            failed = true;
                        }
                        Poll::Pending => {}
                    },
                    Response::Body(body) => {
                        let (key, generation) = stream.conn;
                        let io = self
                            .conns
                            .get(key)
                            .filter(|c| c.generation == generation)
                            .map(|c| &c.link.io);
                        match recv_events(body, &mut p.to_core, capacity, io, &mut cx) {
                            Received::Some(moved) => for_core |= moved,
                            Received::Ended => {
                                for_core = true;
                                *response = Response::Done;
                            }
                            Received::Failed(error) => {
                                tracing::debug!(%error, "backend stream failed");
                                failed = true;
                            }
                        }
                    }
                    Response::Done => {}
                }
                break;
            }
        }
        let done = matches!(
            &stream.exchange,
            Exchange::Open {
                send: None,
                response: Response::Done
            }
        );
        if failed || done {
            let stream = self.streams.remove(&pipe).expect("present");
            self.finish_stream(stream, failed, wakes);
        }
        if failed && unsent {
            pipes.reset_unsent(pipe);
        } else if failed {
            pipes.reset(pipe);
        } else if for_core {
            pipes.ready.push(pipe);
        }
    }

    fn finish_stream(&mut self, stream: Stream, cancel: bool, wakes: &WakeList) {
        if cancel {
            if let Exchange::Open {
                send: Some(out), ..
            } = stream.exchange
            {
                let mut out = out;
                out.send_reset(Reason::CANCEL);
            }
        }
        let (key, generation) = stream.conn;
        if let Some(conn) = self
            .conns
            .get_mut(key)
            .filter(|c| c.generation == generation)
        {
            conn.active -= 1;
            if conn.retired && conn.active == 0 {
                // Its last stream: a retired connection closes now.
                wakes.push(Task::Outbound(key));
            }
        }
    }

    /// Retire every connection: each closes when its streams are done.
    pub fn drain(&mut self, wakes: &WakeList) {
        for (key, conn) in &mut self.conns {
            conn.retired = true;
            wakes.push(Task::Outbound(key));
        }
    }
}
