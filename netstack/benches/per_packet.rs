//! Per-packet cost of the stack against the number of established
//! connections (100 / 1,000 / 10,000), over the in-memory link.
//!
//! Two access patterns: `hot_100_of_n` cycles over 100 connections while N
//! are established (what the connection count costs the stack), and
//! `all_n_in_turn` cycles over all N (adds the memory working set: every
//! round trip touches a connection that left the caches long ago).
//!
//! One iteration is one echo round trip on the next connection in turn:
//! the client stack sends 64 bytes, the server stack receives, echoes and
//! sends, the client receives. Both ends are `Stack`s, so both carry N
//! connections. The frames per round trip are counted and printed, so
//! ns/packet = ns/iteration ÷ frames/round trip.
//!
//!     cargo bench -p rauta-netstack --bench per_packet

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rauta_netstack::memory::{link, MemoryDevice};
use rauta_netstack::smoltcp::socket::tcp::State;
use rauta_netstack::smoltcp::time::{Duration, Instant};
use rauta_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use rauta_netstack::{BatchDevice, ConnId, Stack, StackConfig, TcpConfig};

const SERVER: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);
const CLIENT: Ipv4Address = Ipv4Address::new(198, 18, 0, 10);

struct Bench {
    server: Stack,
    server_dev: MemoryDevice,
    client: Stack,
    client_dev: MemoryDevice,
    conns: Vec<ConnId>,
    events: Vec<ConnId>,
    now: Instant,
    next: usize,
    buf: Vec<u8>,
}

fn config(addr: Ipv4Address, mac: u8) -> StackConfig {
    let mut config = StackConfig::new(
        Ipv4Cidr::new(addr, 24),
        EthernetAddress([2, 0, 0, 0, 0, mac]),
    );
    // Small buffers: 10,000 connections per side in memory.
    config.tcp = TcpConfig {
        rx_buffer: 4096,
        tx_buffer: 4096,
        ..TcpConfig::default()
    };
    config
}

impl Bench {
    fn new(connections: usize) -> Self {
        let (mut server_dev, mut client_dev) = link(1500);
        let now = Instant::from_millis(1);
        let mut server = Stack::new(config(SERVER, 1), &mut server_dev, now);
        server.listen_tcp(7).unwrap();
        let client = Stack::new(config(CLIENT, 2), &mut client_dev, now);
        let mut bench = Self {
            server,
            server_dev,
            client,
            client_dev,
            conns: Vec::new(),
            events: Vec::new(),
            now,
            next: 0,
            buf: vec![0; 4096],
        };
        for chunk in 0..connections.div_ceil(500) {
            let n = 500.min(connections - chunk * 500);
            for _ in 0..n {
                let id = bench.client.connect((SERVER, 7)).unwrap();
                bench.conns.push(id);
            }
            for _ in 0..200 {
                bench.step();
            }
        }
        assert!(bench.conns.iter().all(|&id| bench
            .client
            .tcp(id)
            .is_some_and(|s| s.state() == State::Established)));
        assert_eq!(bench.server.connections(), connections);
        bench
    }

    fn step(&mut self) {
        self.now += Duration::from_micros(100);
        self.client.egress(self.now, &mut self.client_dev);
        self.server_dev.service();
        self.server
            .ingress(self.now, &mut self.server_dev, |_, _| {});
        self.server.take_events(&mut self.events);
        for &id in &self.events {
            if let Some(socket) = self.server.tcp_mut(id) {
                while socket.can_recv() {
                    let n = socket.recv_slice(&mut self.buf).unwrap();
                    socket.send_slice(&self.buf[..n]).unwrap();
                }
            }
        }
        self.server.egress(self.now, &mut self.server_dev);
        self.client_dev.service();
        self.client
            .ingress(self.now, &mut self.client_dev, |_, _| {});
        self.client.take_events(&mut self.events);
    }

    /// One 64-byte echo round trip on the next of the first `active`
    /// connections. Not inlined, so callgrind can count it alone
    /// (docs/performance.md).
    #[inline(never)]
    fn round_trip(&mut self, active: usize) {
        let id = self.conns[self.next % active];
        self.next = (self.next + 1) % active;
        self.client
            .tcp_mut(id)
            .unwrap()
            .send_slice(&[7u8; 64])
            .unwrap();
        loop {
            self.step();
            let socket = self.client.tcp_mut(id).unwrap();
            if socket.recv_queue() >= 64 {
                socket.recv_slice(&mut self.buf[..64]).unwrap();
                return;
            }
        }
    }

    fn frames(&self) -> u64 {
        self.server_dev.frames_in + self.server_dev.frames_out
    }
}

fn per_packet(c: &mut Criterion) {
    for (name, hot) in [("hot_100_of_n", true), ("all_n_in_turn", false)] {
        let mut group = c.benchmark_group(name);
        group.sample_size(30);
        for connections in [100, 1_000, 10_000] {
            let mut bench = Bench::new(connections);
            let active = if hot { 100 } else { connections };
            // Settle (every connection once), then count frames per round
            // trip at the server.
            for _ in 0..connections.max(1_000) {
                bench.round_trip(active);
            }
            let before = bench.frames();
            let polls = bench.server.counters().egress_polls;
            for _ in 0..1_000 {
                bench.round_trip(active);
            }
            let frames = (bench.frames() - before) as f64 / 1_000.0;
            let polls = (bench.server.counters().egress_polls - polls) as f64 / 1_000.0;
            eprintln!(
                "{name}/{connections}: {frames:.2} frames and {polls:.2} connection polls \
                 per round trip at the server"
            );
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(
                BenchmarkId::from_parameter(connections),
                &connections,
                |b, _| b.iter(|| bench.round_trip(active)),
            );
        }
        group.finish();
    }
}

criterion_group!(benches, per_packet);
criterion_main!(benches);
