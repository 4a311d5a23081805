//! Client connections that speak HTTP/2 (server role).
//!
//! Each accepted stream becomes a pipe the core serves as one exchange:
//! the request head and body events go to it as the core makes room (the
//! client's window follows), the response comes back as the client's
//! window allows. Abuse is cut off here: a client that resets streams faster than
//! [`Http2Settings::max_resets_per_second`] (the rapid-reset attack,
//! CVE-2023-44487) gets GOAWAY `ENHANCE_YOUR_CALM`; `h2` itself bounds
//! header lists (and so CONTINUATION floods), concurrent streams and
//! streams reset before they were accepted.
//!
//! Deadlines of the connection itself live here: the preface and first
//! SETTINGS frame within the request-head time (an `Upgrade: h2c` client's
//! first frame is checked as soon as its header arrives, so nothing larger
//! than a frame is ever held for it), GOAWAY after the idle time with no
//! open stream, and a stream whose response the client stops taking
//! (window 0) reset after the response-body time.

use super::codec::{
    check_first_frame, first_frame_end, recv_events, request_from_h2, response_to_h2, send_events,
    upgrade_stream_frame, Received,
};
use super::io::{Greeting, H2Io, Task, WakeList};
use super::pipe::{CoreEnd, Message, PipeKind, Pipes};
use super::{Http2Settings, Link, NetState, Windows, PASSES};
use crate::error::{Cause, Phase};
use crate::gate::ConnectionGate;
use crate::metrics::ProxyMetrics;
use crate::proxy::{Deadlines, Handoff, Transport};
use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use h2::server::{self, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use slab::Slab;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

enum State {
    Handshake(server::Handshake<H2Io, Bytes>),
    Serving(server::Connection<H2Io, Bytes>),
    Ended,
}

struct Connection<C> {
    link: Link<C>,
    peer: SocketAddr,
    local_port: u16,
    state: State,
    windows: Windows,
    waker: Waker,
    /// After an upgrade: client bytes held back until its first frame (the
    /// SETTINGS that must follow the preface) is complete, and the frame
    /// that makes the upgrade request stream 1, to go after it.
    upgrade: Option<(Vec<u8>, Vec<u8>)>,
    /// Client resets in the current second.
    resets: (Instant, u32),
    /// Shut down for abuse or by the drain: no new streams.
    closing: bool,
    /// When the connection was taken over (the preface's deadline).
    opened: Instant,
    /// Streams accepted and not finished.
    open_streams: usize,
    /// Since when it has had no open stream.
    idle_since: Instant,
}

struct Stream {
    conn: usize,
    waker: Waker,
    /// The request body still coming.
    request: Option<RecvStream>,
    /// Until the response head is sent.
    respond: Option<SendResponse<Bytes>>,
    send: Option<SendStream<Bytes>>,
    /// The whole response was handed to `h2`.
    responded: bool,
    /// The client's reset of it was counted.
    reset_counted: bool,
    /// The last time response bytes went to `h2` (or the stream began).
    moved: Instant,
}

/// Every HTTP/2 client connection of a worker.
pub struct Inbound<C> {
    conns: Slab<Connection<C>>,
    by_net: HashMap<C, usize>,
    streams: HashMap<usize, Stream>,
    builder: server::Builder,
    settings: Http2Settings,
    deadlines: Deadlines,
    /// Socket reads land here first.
    scratch: Vec<u8>,
    /// Where a client connection's place is given back when it closes.
    gate: Arc<ConnectionGate>,
}

impl<C: Copy + Eq + Hash> Inbound<C> {
    pub fn new(settings: Http2Settings, deadlines: Deadlines, gate: Arc<ConnectionGate>) -> Self {
        let mut builder = server::Builder::new();
        builder
            .max_concurrent_streams(settings.max_concurrent_streams)
            .max_header_list_size(settings.max_header_list_size)
            .header_table_size(settings.header_table_size)
            .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams);
        Self {
            conns: Slab::new(),
            by_net: HashMap::new(),
            streams: HashMap::new(),
            builder,
            settings,
            deadlines,
            scratch: vec![0; 64 * 1024],
            gate,
        }
    }

    pub fn owns(&self, net: C) -> Option<usize> {
        self.by_net.get(&net).copied()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Take over a client connection the core found to speak HTTP/2.
    pub fn adopt(
        &mut self,
        handoff: Handoff<C>,
        wakes: &WakeList,
        metrics: &ProxyMetrics,
        now: Instant,
    ) {
        let io = H2Io::new(self.settings.write_buffer);
        io.buffers().greeting = Some(Greeting::default());
        let mut upgrade = None;
        if let Some(head) = &handoff.upgrade {
            // RFC 7540 §3.2: 101, then the server's preface; the request
            // that asked is answered on stream 1.
            io.buffers().tx.extend_from_slice(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            );
            upgrade = Some((handoff.buffered, upgrade_stream_frame(head)));
        } else {
            io.buffers().rx = handoff.buffered;
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        entry.insert(Connection {
            peer: handoff.peer,
            local_port: handoff.local_port,
            state: State::Handshake(self.builder.handshake(io.clone())),
            link: Link::new(handoff.conn, io),
            windows: Windows::new(self.settings.max_window),
            waker: wakes.waker(Task::Inbound(key)),
            upgrade,
            resets: (now, 0),
            closing: false,
            opened: now,
            open_streams: 0,
            idle_since: now,
        });
        self.by_net.insert(handoff.conn, key);
        metrics.h2_connection_opened();
        wakes.push(Task::Inbound(key));
    }

    /// Read, poll and write connection `key` until it stops moving.
    pub fn service<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        pipes: &mut Pipes,
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
            if let Some((held, frame)) = &mut conn.upgrade {
                let mut b = conn.link.io.buffers();
                held.append(&mut b.rx);
                if let Err(error) = check_first_frame(held) {
                    // Before any of it is buffered, not after 16 MiB.
                    tracing::debug!(peer = %conn.peer, error, "bad first frame after an upgrade");
                    drop(b);
                    metrics.failure(Cause::BadRequest { status: 400 });
                    conn.link.state = NetState::Failed;
                    break;
                }
                if let Some(end) = first_frame_end(held) {
                    let rest = held.split_off(end);
                    held.extend_from_slice(frame);
                    held.extend_from_slice(&rest);
                    b.rx = std::mem::take(held);
                    drop(b);
                    conn.upgrade = None;
                }
            }
            let mut cx = Context::from_waker(&conn.waker);
            if let State::Handshake(handshake) = &mut conn.state {
                match Pin::new(handshake).poll(&mut cx) {
                    Poll::Ready(Ok(mut connection)) => {
                        conn.windows.ping = connection.ping_pong();
                        conn.state = State::Serving(connection);
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::debug!(%error, "HTTP/2 handshake failed");
                        conn.state = State::Ended;
                    }
                    Poll::Pending => {}
                }
            }
            let mut ended = false;
            if let State::Serving(connection) = &mut conn.state {
                loop {
                    match connection.poll_accept(&mut cx) {
                        Poll::Ready(Some(Ok((request, respond)))) => {
                            let pipe = pipes.open(PipeKind::Inbound);
                            let (parts, body) = request.into_parts();
                            let end = body.is_end_stream();
                            let message = request_from_h2(parts, end);
                            let p = pipes.get_mut(pipe).expect("just opened");
                            p.to_core.push(Message::Request(Box::new(message)));
                            pipes.accepted.push((pipe, conn.peer, conn.local_port));
                            self.streams.insert(
                                pipe,
                                Stream {
                                    conn: key,
                                    waker: wakes.waker(Task::Stream(pipe)),
                                    request: (!end).then_some(body),
                                    respond: Some(respond),
                                    send: None,
                                    responded: false,
                                    reset_counted: false,
                                    moved: now,
                                },
                            );
                            metrics.h2_stream_opened();
                            conn.open_streams += 1;
                            wakes.push(Task::Stream(pipe));
                        }
                        Poll::Ready(Some(Err(error))) => {
                            tracing::debug!(%error, "HTTP/2 client connection failed");
                            ended = true;
                            break;
                        }
                        Poll::Ready(None) => {
                            ended = true;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                // Only the connection's window grows. Stream windows stay at
                // the 64 KiB every client knows from the start (Envoy's edge
                // guidance): raising SETTINGS_INITIAL_WINDOW_SIZE while a
                // client uploads made curl 7.88 (Debian 12) send some DATA
                // twice, seen here as a content-length overflow (RFC 9113
                // §8.1.1) in about one 1 MiB upload in a hundred.
                if let Some(window) = conn.windows.update(&conn.link.io, &mut cx, now) {
                    connection.set_target_window_size(window);
                }
            }
            if ended {
                conn.state = State::Ended;
            }
            let unblocked = conn.link.flush(net);
            again = read || unblocked;
            if !again {
                break;
            }
        }
        if again {
            // Out of passes with work left (a fast peer): the next round.
            wakes.push(Task::Inbound(key));
        }
        let flushed = conn.link.flushed();
        let ended =
            matches!(conn.state, State::Ended) && (flushed || conn.link.state != NetState::Open);
        if ended || conn.link.state == NetState::Failed {
            self.close(net, pipes, key, metrics);
        }
    }

    fn close<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        pipes: &mut Pipes,
        key: usize,
        metrics: &ProxyMetrics,
    ) {
        let conn = self.conns.remove(key);
        self.by_net.remove(&conn.link.net);
        conn.link.close(net);
        let orphans: Vec<usize> = self
            .streams
            .iter()
            .filter(|(_, s)| s.conn == key)
            .map(|(&p, _)| p)
            .collect();
        for pipe in orphans {
            self.streams.remove(&pipe);
            pipes.release(pipe);
        }
        metrics.h2_connection_closed();
        self.gate.release(conn.local_port);
    }

    /// Move what can move on stream `pipe`, both directions.
    pub fn service_stream(
        &mut self,
        pipes: &mut Pipes,
        pipe: usize,
        wakes: &WakeList,
        metrics: &ProxyMetrics,
        now: Instant,
    ) {
        let Some(stream) = self.streams.get_mut(&pipe) else {
            return;
        };
        let capacity = pipes.capacity;
        let Some(p) = pipes.get_mut(pipe) else {
            self.streams.remove(&pipe);
            return;
        };
        let mut cx = Context::from_waker(&stream.waker);
        let mut client_reset = false;
        let mut failed = false;
        let mut for_core = false;
        if let Some(body) = &mut stream.request {
            let io = self.conns.get(stream.conn).map(|c| &c.link.io);
            match recv_events(body, &mut p.to_core, capacity, io, &mut cx) {
                Received::Some(moved) => for_core |= moved,
                Received::Ended => {
                    stream.request = None;
                    for_core = true;
                }
                Received::Failed(error) => {
                    tracing::debug!(%error, "client stream failed");
                    client_reset |= error.is_reset();
                    failed = true;
                }
            }
        }
        if let Some(respond) = &mut stream.respond {
            match p.from_core.pop() {
                Some(Message::Response(response)) => {
                    let (response, end) = response_to_h2(*response);
                    match respond.send_response(response, end) {
                        Ok(send) => {
                            stream.send = Some(send);
                            stream.responded = end;
                            stream.respond = None;
                            stream.moved = now;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "response head not sent");
                            client_reset |= error.is_reset();
                            failed = true;
                        }
                    }
                    for_core = true;
                }
                Some(other) => {
                    tracing::warn!(?other, "the core answered a stream with no head");
                    respond.send_reset(Reason::INTERNAL_ERROR);
                    failed = true;
                }
                None => {
                    if let Poll::Ready(reason) = respond.poll_reset(&mut cx) {
                        tracing::debug!(?reason, "client reset a stream awaiting its response");
                        client_reset |= reason.is_ok();
                        failed = true;
                    }
                }
            }
        }
        if let Some(send) = stream.send.as_mut().filter(|_| !stream.responded) {
            match send_events(send, &mut p.from_core, &mut stream.responded, &mut cx) {
                Ok(moved) => {
                    for_core |= moved;
                    if moved {
                        stream.moved = now;
                    }
                    if !moved && !stream.responded {
                        if let Poll::Ready(reason) = send.poll_reset(&mut cx) {
                            tracing::debug!(?reason, "client reset a stream being answered");
                            client_reset |= reason.is_ok();
                            failed = true;
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "response body not sent");
                    client_reset |= error.is_reset();
                    failed = true;
                }
            }
        }
        let (core, unsent) = (p.core, !p.from_core.is_empty());
        if failed {
            p.reset = true;
            for_core = true;
        }
        if for_core {
            pipes.ready.push(pipe);
        }
        let conn_key = stream.conn;
        let count_reset = client_reset && !std::mem::replace(&mut stream.reset_counted, true);
        let finished = match core {
            CoreEnd::Open => false,
            CoreEnd::Closed if stream.responded => true,
            // Closed after writing: what it wrote still goes out, as a
            // socket's send buffer would after a close.
            CoreEnd::Closed if unsent && !failed => false,
            // The core gave up (or closed without a whole response): the
            // client must not take a truncated body for a whole one.
            _ => {
                tracing::debug!(
                    ?core,
                    responded = stream.responded,
                    "stream ended by the core"
                );
                if let Some(send) = &mut stream.send {
                    send.send_reset(Reason::INTERNAL_ERROR);
                } else if let Some(respond) = &mut stream.respond {
                    respond.send_reset(Reason::INTERNAL_ERROR);
                }
                true
            }
        };
        if finished {
            self.streams.remove(&pipe);
            pipes.release(pipe);
            self.stream_done(conn_key, wakes, now);
        }
        if count_reset {
            metrics.h2_reset_by_client();
            self.count_reset(conn_key, wakes, metrics, now);
        }
    }

    /// A stream of connection `key` is over.
    fn stream_done(&mut self, key: usize, wakes: &WakeList, now: Instant) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.open_streams = conn.open_streams.saturating_sub(1);
            if conn.open_streams == 0 {
                conn.idle_since = now;
            }
        }
        wakes.push(Task::Inbound(key));
    }

    /// Deadlines: the preface and first frame, connections idle with no
    /// stream, and streams the core finished whose response the client
    /// does not take (the core's own deadlines cover streams it still
    /// serves).
    pub fn tick<T: Transport<Conn = C>>(
        &mut self,
        net: &mut T,
        pipes: &mut Pipes,
        wakes: &WakeList,
        metrics: &ProxyMetrics,
        now: Instant,
    ) {
        let d = self.deadlines.clone();
        let past = |since: Instant, limit: Duration| now.saturating_duration_since(since) >= limit;
        let mut late = Vec::new();
        for (key, conn) in &mut self.conns {
            let greeting = conn.upgrade.is_some()
                || matches!(conn.state, State::Handshake(_))
                || !conn.link.io.greeted();
            if greeting && past(conn.opened, d.request_head) {
                metrics.timeout(Phase::Http2Preface);
                late.push(key);
            } else if conn.open_streams > 0 {
                continue;
            } else if !conn.closing && past(conn.idle_since, d.http2_idle) {
                tracing::debug!(peer = %conn.peer, "idle HTTP/2 connection; GOAWAY");
                metrics.timeout(Phase::Http2Idle);
                conn.closing = true;
                conn.idle_since = now;
                if let State::Serving(connection) = &mut conn.state {
                    connection.graceful_shutdown();
                }
                wakes.push(Task::Inbound(key));
            } else if conn.closing && past(conn.idle_since, d.request_head) {
                // Told to go and still here (its PING never answered, or
                // the GOAWAY never read): cut it off.
                late.push(key);
            }
        }
        for key in late {
            self.close(net, pipes, key, metrics);
        }
        let stuck: Vec<usize> = self
            .streams
            .iter()
            .filter(|&(&pipe, stream)| {
                !stream.responded
                    && past(stream.moved, d.response_body)
                    && pipes.get(pipe).is_some_and(|p| p.core != CoreEnd::Open)
            })
            .map(|(&pipe, _)| pipe)
            .collect();
        for pipe in stuck {
            let Some(mut stream) = self.streams.remove(&pipe) else {
                continue;
            };
            metrics.failure(Cause::ClientNotReading);
            if let Some(send) = &mut stream.send {
                send.send_reset(Reason::CANCEL);
            }
            pipes.release(pipe);
            self.stream_done(stream.conn, wakes, now);
        }
    }

    /// A client reset a stream it had opened; too many in a second and the
    /// connection is cut off.
    fn count_reset(&mut self, key: usize, wakes: &WakeList, metrics: &ProxyMetrics, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (since, count) = &mut conn.resets;
        if now.duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *count = 0;
        }
        *count += 1;
        if *count > self.settings.max_resets_per_second && !conn.closing {
            tracing::info!(peer = %conn.peer, "client resets streams too fast; GOAWAY");
            metrics.h2_goaway_for_abuse();
            conn.closing = true;
            if let State::Serving(connection) = &mut conn.state {
                connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            }
            wakes.push(Task::Inbound(key));
        }
    }

    /// Stop taking streams on every connection (GOAWAY); streams in flight
    /// finish.
    pub fn drain(&mut self, wakes: &WakeList, now: Instant) {
        for (key, conn) in &mut self.conns {
            if !conn.closing {
                conn.closing = true;
                conn.idle_since = now;
                if let State::Serving(connection) = &mut conn.state {
                    connection.graceful_shutdown();
                }
                wakes.push(Task::Inbound(key));
            }
        }
    }
}
