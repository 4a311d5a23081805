//! The kernel transport: the same proxy core on ordinary sockets.
//!
//! Each worker has its own `SO_REUSEPORT` listener per port (the kernel
//! spreads connections over workers) and one epoll set (mio), and drives
//! [`Proxy`] exactly as the AF_XDP worker does. It is the default where
//! AF_XDP cannot run and the baseline the userspace stack is measured
//! against.

use crate::config::BackendProtocol;
use crate::config::GatewayConfig;
use crate::http2::Http2Settings;
use crate::listeners::{ListenerPorts, PortChanges};
use crate::metrics::ProxyMetrics;
use crate::proxy::{ConnectionGone, ProxySettings, ReadOutcome, Transport, TICK_INTERVAL};
use crate::service::HttpService;
use arc_swap::ArcSwap;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Listener tokens are this plus the address's slot × 65536 plus the port;
/// connection tokens are slab keys.
const LISTENER_BASE: usize = usize::MAX / 2;

/// A listening socket shared out by `SO_REUSEPORT`, non-blocking.
pub fn reuseport_listener(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    if address.is_ipv6() {
        // IPv4 has listeners of its own: no v4-mapped peers here.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Kernel sockets as the proxy's transport.
pub(crate) struct KernelIo {
    poll: Poll,
    streams: Slab<TcpStream>,
}

impl KernelIo {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            poll: Poll::new()?,
            streams: Slab::new(),
        })
    }

    pub(crate) fn connections(&self) -> usize {
        self.streams.len()
    }

    pub(crate) fn wait(
        &mut self,
        events: &mut Events,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.poll.poll(events, timeout)
    }

    /// The epoll set: readable when a socket in it has news.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.poll.registry().as_fd()
    }

    /// Take a connected (or connecting) stream into the poll set; its key
    /// is its connection handle.
    fn add(&mut self, mut stream: TcpStream) -> Option<usize> {
        let _ = stream.set_nodelay(true);
        let entry = self.streams.vacant_entry();
        let key = entry.key();
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        entry.insert(stream);
        Some(key)
    }
}

impl Transport for KernelIo {
    type Conn = usize;

    fn read(&mut self, conn: usize, buf: &mut [u8]) -> ReadOutcome {
        let Some(stream) = self.streams.get_mut(conn) else {
            return ReadOutcome::Failed;
        };
        loop {
            return match stream.read(buf) {
                Ok(0) => ReadOutcome::Closed,
                Ok(n) => ReadOutcome::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Not connected yet: the writable event will say when.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => ReadOutcome::WouldBlock,
                Err(_) => ReadOutcome::Failed,
            };
        }
    }

    fn write(&mut self, conn: usize, data: &[u8]) -> Result<usize, ConnectionGone> {
        let stream = self.streams.get_mut(conn).ok_or(ConnectionGone)?;
        loop {
            return match stream.write(data) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Err(ConnectionGone),
            };
        }
    }

    fn connect(&mut self, to: SocketAddr, _: BackendProtocol) -> Option<usize> {
        match TcpStream::connect(to) {
            Ok(stream) => self.add(stream),
            Err(error) => {
                tracing::debug!(%to, %error, "backend connect failed");
                None
            }
        }
    }

    fn established(&mut self, conn: usize) -> bool {
        // A non-blocking connect has a peer once it completed.
        self.streams
            .get(conn)
            .is_some_and(|stream| stream.peer_addr().is_ok())
    }

    fn close(&mut self, conn: usize) {
        if let Some(mut stream) = self.streams.try_remove(conn) {
            let _ = self.poll.registry().deregister(&mut stream);
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn abort(&mut self, conn: usize) {
        if let Some(mut stream) = self.streams.try_remove(conn) {
            let _ = self.poll.registry().deregister(&mut stream);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// What a kernel worker needs.
pub struct KernelWorker {
    /// The addresses to listen on (an IPv4 and an IPv6 one for dual
    /// stack); the ports are the configuration's.
    pub addresses: Vec<IpAddr>,
    pub settings: ProxySettings,
    pub http2: Http2Settings,
    pub config: Arc<ArcSwap<GatewayConfig>>,
    pub metrics: Arc<ProxyMetrics>,
    /// Set to drain and stop.
    pub stop: Arc<AtomicBool>,
    /// How long a drain may wait for requests in flight.
    pub drain_timeout: Duration,
}

impl KernelWorker {
    /// Serve until `stop` is set and the drain finishes.
    pub fn run(self) -> io::Result<()> {
        let mut io = KernelIo::new()?;
        let mut ports = ListenerPorts::new(self.config.clone());
        let mut listeners = HashMap::new();
        for (slot, &ip) in self.addresses.iter().enumerate() {
            for &port in ports.current() {
                let address = SocketAddr::new(ip, port);
                let mut listener = TcpListener::from_std(reuseport_listener(address)?);
                io.poll.registry().register(
                    &mut listener,
                    listener_token(slot, port),
                    Interest::READABLE,
                )?;
                listeners.insert((slot, port), listener);
            }
        }
        let mut proxy = HttpService::new(self.settings, self.http2, self.config, self.metrics);
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        // Listeners whose last accept ran out of descriptors or memory:
        // edge-triggered, they announce nothing more for the connections
        // already queued, so they are tried again each tick.
        let mut starved: Vec<(usize, u16)> = Vec::new();
        loop {
            let wake = if proxy.has_work() {
                Duration::ZERO
            } else {
                proxy
                    .next_timer()
                    .map_or(TICK_INTERVAL, |at| {
                        at.saturating_duration_since(Instant::now())
                    })
                    .min(TICK_INTERVAL)
            };
            match io.wait(&mut events, Some(wake)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                let token = event.token().0;
                if token >= LISTENER_BASE {
                    let (slot, port) = listener_slot_and_port(token);
                    let Some(listener) = listeners.get(&(slot, port)) else {
                        continue;
                    };
                    if !accept_all(&mut io, &mut proxy, listener, port, now)
                        && !starved.contains(&(slot, port))
                    {
                        starved.push((slot, port));
                    }
                } else {
                    proxy.on_io(&mut io, token, now);
                }
            }
            proxy.flush(&mut io, now);
            proxy.run_timers(&mut io, now);
            if now.duration_since(last_tick) >= TICK_INTERVAL {
                proxy.tick(&mut io, now);
                last_tick = now;
                starved.retain(|key| {
                    listeners
                        .get(key)
                        .is_some_and(|l| !accept_all(&mut io, &mut proxy, l, key.1, now))
                });
                if drain_deadline.is_none() {
                    if let Some(changes) = ports.changes() {
                        follow(&self.addresses, &io, &mut listeners, changes);
                    }
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    // Stop taking connections; finish what is in flight.
                    for listener in listeners.values_mut() {
                        let _ = io.poll.registry().deregister(listener);
                    }
                    listeners.clear();
                    now + self.drain_timeout
                });
                if !proxy.drain(&mut io, now) || now >= deadline {
                    return Ok(());
                }
            }
        }
    }
}

/// Open and close listeners on `ips` as the configuration's ports changed.
fn follow(
    ips: &[IpAddr],
    io: &KernelIo,
    listeners: &mut HashMap<(usize, u16), TcpListener>,
    changes: PortChanges,
) {
    for port in changes.closed {
        for slot in 0..ips.len() {
            if let Some(mut listener) = listeners.remove(&(slot, port)) {
                let _ = io.poll.registry().deregister(&mut listener);
                tracing::info!(port, "no longer listening");
            }
        }
    }
    for port in changes.opened {
        for (slot, &ip) in ips.iter().enumerate() {
            let address = SocketAddr::new(ip, port);
            let opened = reuseport_listener(address).and_then(|l| {
                let mut listener = TcpListener::from_std(l);
                io.poll.registry().register(
                    &mut listener,
                    listener_token(slot, port),
                    Interest::READABLE,
                )?;
                Ok(listener)
            });
            match opened {
                Ok(listener) => {
                    listeners.insert((slot, port), listener);
                    tracing::info!(%address, "listening");
                }
                Err(error) => tracing::error!(%address, %error, "cannot listen"),
            }
        }
    }
}

/// A listener's poll token: above every connection's.
fn listener_token(slot: usize, port: u16) -> Token {
    Token(LISTENER_BASE + (slot << 16) + usize::from(port))
}

/// The address slot and port of a listener's token.
fn listener_slot_and_port(token: usize) -> (usize, u16) {
    let offset = token - LISTENER_BASE;
    (offset >> 16, (offset & 0xffff) as u16)
}

/// Accept every connection `listener` has queued. Returns false when an
/// accept failed with connections perhaps still queued (out of
/// descriptors or memory): the caller tries again at the next tick rather
/// than spin, or strand them.
fn accept_all(
    io: &mut KernelIo,
    proxy: &mut HttpService<KernelIo>,
    listener: &TcpListener,
    port: u16,
    now: Instant,
) -> bool {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Some(key) = io.add(stream) {
                    proxy.accept(io, key, peer, port, now);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(error) => {
                tracing::warn!(%error, port, "accept failed; trying again in 100 ms");
                return false;
            }
        }
    }
}
