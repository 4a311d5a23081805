//! The AF_XDP gateway worker: the proxy core on the userspace stack.
//!
//! The same polling loop as the probe's — hand-off inbox, a batch from the
//! rings, the stack, the service, one kick, spin or sleep — with the HTTP
//! proxy as the service. [`Stack`] is the proxy's [`Transport`]: client
//! connections are the ones the stack accepts on the listener ports,
//! backend connections the ones the proxy opens from ports this worker
//! owns, so replies come back to the same worker.

use crate::config::BackendProtocol;
use crate::config::GatewayConfig;
use crate::http2::Http2Settings;
use crate::legs::{Leg, LegChoice, Legs};
use crate::listeners::ListenerPorts;
use crate::metrics::ProxyMetrics;
use crate::proxy::{ConnectionGone, ProxySettings, ReadOutcome, Transport, TICK_INTERVAL};
use crate::service::HttpService;
use crate::worker::{queue_reports, SharedReport, WorkerReport, HANDOFF_BATCH, PUBLISH_EVERY};
use arc_swap::ArcSwap;
use rauta_netstack::handoff::Mailbox;
use rauta_netstack::smoltcp::socket::tcp::State;
use rauta_netstack::smoltcp::time::Instant;
use rauta_netstack::{BatchDevice, ConnId, IdlePolicy, IdleWaiter, Stack, XdpDevice};
use rauta_netstack::{NeighbourTable, Routes};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

impl Transport for Stack {
    type Conn = ConnId;

    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> ReadOutcome {
        let Some(socket) = self.tcp_mut(conn) else {
            return ReadOutcome::Failed;
        };
        if socket.can_recv() {
            return match socket.recv_slice(buf) {
                Ok(n) => ReadOutcome::Data(n),
                Err(_) => ReadOutcome::Failed,
            };
        }
        match socket.state() {
            // The peer sent FIN and everything before it was read.
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait => {
                ReadOutcome::Closed
            }
            // Reset, refused, or timed out.
            State::Closed => ReadOutcome::Failed,
            _ => ReadOutcome::WouldBlock,
        }
    }

    fn write(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, ConnectionGone> {
        let socket = self.tcp_mut(conn).ok_or(ConnectionGone)?;
        match socket.state() {
            State::SynSent | State::SynReceived | State::Listen => Ok(0),
            _ if socket.may_send() => socket.send_slice(data).map_err(|_| ConnectionGone),
            _ => Err(ConnectionGone),
        }
    }

    fn connect(&mut self, to: SocketAddr, _: BackendProtocol) -> Option<ConnId> {
        match Stack::connect(self, (to.ip(), to.port())) {
            Ok(id) => Some(id),
            Err(error) => {
                tracing::debug!(%to, %error, "backend connect failed");
                None
            }
        }
    }

    fn established(&mut self, conn: ConnId) -> bool {
        self.tcp_mut(conn)
            .is_some_and(|socket| socket.state() == State::Established)
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(socket) = self.tcp_mut(conn) {
            socket.close();
        }
    }

    fn abort(&mut self, conn: ConnId) {
        if let Some(socket) = self.tcp_mut(conn) {
            socket.abort();
        }
    }
}

/// What an AF_XDP gateway worker needs besides its device and stack.
pub struct GatewayWorker {
    pub settings: ProxySettings,
    pub http2: Http2Settings,
    pub config: Arc<ArcSwap<GatewayConfig>>,
    pub metrics: Arc<ProxyMetrics>,
    pub stop: Arc<AtomicBool>,
    /// Workers still draining, shared by all: a worker that finished its
    /// own drain keeps polling until every worker has, because its queue
    /// still receives (and hands over) the others' frames.
    pub draining: Arc<AtomicUsize>,
    pub drain_timeout: Duration,
    pub idle: IdlePolicy,
    pub report: SharedReport,
    /// Routes to what is off the link, as the kernel has them; applied to
    /// the stack when they change.
    pub routes: Arc<ArcSwap<Routes>>,
    /// Which leg backend connections take.
    pub legs: LegChoice,
    /// On the node's address: the kernel's neighbours.
    pub neighbours: Option<NeighbourFeed>,
}

/// The kernel's neighbours for a stack on the node's address (the kernel
/// keeps ARP there), and where the stack asks for those the table lacks.
pub struct NeighbourFeed {
    pub table: Arc<ArcSwap<NeighbourTable>>,
    pub asks: std::sync::mpsc::Sender<std::net::IpAddr>,
}

impl GatewayWorker {
    /// Serve on `stack` over `device` until `stop` is set and the drain
    /// ends. Fails only at the start, when the kernel legs' epoll set
    /// cannot be made.
    pub fn run(
        self,
        device: &mut XdpDevice,
        stack: &mut Stack,
        mailbox: &mut Mailbox,
    ) -> std::io::Result<()> {
        let mut ports = ListenerPorts::new(self.config.clone());
        for &port in ports.current() {
            if let Err(error) = stack.listen_tcp(port) {
                tracing::error!(port, %error, "cannot listen");
            }
        }
        let mut routes = self.routes.load_full();
        stack.set_routes(&routes);
        let mut neighbours = self.neighbours.as_ref().map(|feed| {
            let table = feed.table.load_full();
            stack.set_neighbours(Arc::clone(&table));
            table
        });
        let mut asks = Vec::new();
        stack.maintain();
        let mut legs = Legs::new(stack, self.legs)?;
        let mut proxy: HttpService<Legs<'_>> =
            HttpService::new(self.settings, self.http2, self.config, self.metrics);
        let mut waiter = IdleWaiter::new(self.idle);
        let mut events = Vec::new();
        let mut kernel_events = mio::Events::with_capacity(256);
        let mut kernel_ready = Vec::new();
        let mut handed_in_total = 0u64;
        let start = std::time::Instant::now();
        let mut next_tick = start;
        let mut next_publish = start;
        let mut drain_deadline: Option<std::time::Instant> = None;
        let mut drained = false;
        loop {
            let handed_in = mailbox.receive_into(device, HANDOFF_BATCH);
            handed_in_total += handed_in as u64;
            let received = device.service();
            let now = Instant::now();
            let wall = std::time::Instant::now();
            let ingress = legs
                .stack
                .ingress(now, device, |to, frame| mailbox.send(to, frame));
            legs.stack.take_events(&mut events);
            for &id in &events {
                let leg = Leg::Stack(id);
                if proxy.knows(leg) {
                    proxy.on_io(&mut legs, leg, wall);
                } else if let Some((peer, port)) = new_client(legs.stack, id, ports.current()) {
                    proxy.accept(&mut legs, leg, peer, port, wall);
                }
            }
            legs.kernel_events(&mut kernel_events, &mut kernel_ready);
            for &leg in &kernel_ready {
                proxy.on_io(&mut legs, leg, wall);
            }
            let kernel_news = !kernel_ready.is_empty();
            kernel_ready.clear();
            let left_over = proxy.has_work();
            if !events.is_empty() || kernel_news || left_over {
                proxy.flush(&mut legs, wall);
            }
            proxy.run_timers(&mut legs, wall);
            if wall >= next_tick {
                proxy.tick(&mut legs, wall);
                next_tick = wall + TICK_INTERVAL;
                let latest = self.routes.load();
                if !Arc::ptr_eq(&latest, &routes) {
                    let held = legs.stack.set_routes(&latest);
                    tracing::debug!(routes = held, "routes updated");
                    routes = Arc::clone(&latest);
                }
                if let Some(changes) = ports.changes() {
                    for port in changes.opened {
                        match legs.stack.listen_tcp(port) {
                            Ok(()) => tracing::info!(port, "listening"),
                            Err(error) => tracing::error!(port, %error, "cannot listen"),
                        }
                    }
                    for port in changes.closed {
                        legs.stack.unlisten_tcp(port);
                        tracing::info!(port, "no longer listening");
                    }
                }
            }
            legs.stack.egress(now, device);
            if let (Some(feed), Some(table)) = (&self.neighbours, &mut neighbours) {
                let latest = feed.table.load();
                if !Arc::ptr_eq(&latest, table) {
                    *table = Arc::clone(&latest);
                    legs.stack.set_neighbours(Arc::clone(table));
                }
                legs.stack.take_neighbour_asks(&mut asks);
                for address in asks.drain(..) {
                    let _ = feed.asks.send(std::net::IpAddr::from(address));
                }
            }
            let sent = device.flush();
            let backlog = mailbox.flush();
            let did_work = handed_in > 0
                || received > 0
                || ingress
                || sent > 0
                || backlog
                || kernel_news
                || left_over;
            if wall >= next_publish {
                publish(
                    &self.report,
                    device,
                    &legs,
                    waiter.sleeps(),
                    (handed_in_total, mailbox.dropped()),
                );
                next_publish = wall + PUBLISH_EVERY;
            }
            if self.stop.load(Ordering::Relaxed) {
                let deadline = *drain_deadline.get_or_insert(wall + self.drain_timeout);
                // Keep the stack running until every response is
                // delivered, not just handed to the stack.
                let idle = !proxy.drain(&mut legs, wall) && proxy.clients() == 0;
                // Send the FINs the drain just queued.
                legs.stack.egress(now, device);
                device.flush();
                if !drained && idle && !legs.stack.has_unsent_data() {
                    drained = true;
                    self.draining.fetch_sub(1, Ordering::AcqRel);
                }
                if self.draining.load(Ordering::Acquire) == 0 || wall >= deadline {
                    break;
                }
            }
            if waiter.idle_pass(did_work) {
                legs.stack.maintain();
                if mailbox.going_to_sleep() {
                    let wake = proxy.next_timer().map_or(next_tick, |t| t.min(next_tick));
                    let until = wake.saturating_duration_since(wall);
                    let deadline = legs.stack.poll_delay(now).map_or(until, |d| d.min(until));
                    let mut fds = device.fds();
                    fds.push(mailbox.wake_fd());
                    fds.push(legs.kernel_fd());
                    waiter.sleep(&fds, Some(deadline));
                    mailbox.awake();
                }
            }
        }
        publish(
            &self.report,
            device,
            &legs,
            waiter.sleeps(),
            (handed_in_total, mailbox.dropped()),
        );
        Ok(())
    }
}

/// A connection the stack accepted on one of the listener ports, once its
/// handshake is complete: its peer and port. A half-open connection (a
/// spoofed SYN, perhaps) never reaches the proxy; the stack ages it out.
/// Connections the proxy already closed are past Established.
fn new_client(stack: &Stack, id: ConnId, ports: &[u16]) -> Option<(SocketAddr, u16)> {
    if stack.tcp(id)?.state() != State::Established {
        return None;
    }
    let port = stack.local_port(id)?;
    if !ports.contains(&port) {
        return None;
    }
    let (ip, remote_port) = stack.remote(id)?;
    Some((SocketAddr::new(ip.into(), remote_port), port))
}

fn publish(
    report: &SharedReport,
    device: &XdpDevice,
    legs: &Legs<'_>,
    sleeps: u64,
    (handed_in, handoff_dropped): (u64, u64),
) {
    let next = WorkerReport {
        queues: queue_reports(device),
        connections: legs.stack.connections(),
        stack: legs.stack.counters(),
        tcp_bytes: 0,
        udp_datagrams: 0,
        sleeps,
        handed_in,
        handoff_dropped,
        backend_connects: legs.connects(),
    };
    if let Ok(mut shared) = report.lock() {
        *shared = next;
    }
}
