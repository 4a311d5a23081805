//! The gateway's HTTP server path, both protocols, as a client reaches
//! it: the fuzz input is one client connection's bytes (an HTTP/1.1
//! request stream, or the HTTP/2 preface and raw frames), handed over in
//! pieces through the same `HttpService` both transports drive, with the
//! example routes compiled from `examples/gateway`. Backends answer every
//! request with a canned HTTP/1.1 200 (an h2c backend's connection fails
//! its handshake on it). Whatever the client sends, the service must not
//! panic, and must not loop: each step is bounded.

#![no_main]

use arc_swap::ArcSwap;
use libfuzzer_sys::fuzz_target;
use rauta_controlplane::{compile, Manifests, OnInvalid, Selection};
use rauta_dataplane::config::{BackendProtocol, GatewayConfig};
use rauta_dataplane::http2::Http2Settings;
use rauta_dataplane::metrics::ProxyMetrics;
use rauta_dataplane::proxy::{ConnectionGone, ProxySettings, ReadOutcome, Transport};
use rauta_dataplane::service::HttpService;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const CANNED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// One side of a connection the service holds.
#[derive(Default)]
struct Peer {
    /// Bytes for the service to read.
    inbox: Vec<u8>,
    finished: bool,
    closed: bool,
    /// A backend answers once it has been written to.
    backend: bool,
}

#[derive(Default)]
struct Wire {
    peers: Vec<Peer>,
}

impl Transport for Wire {
    type Conn = usize;

    fn read(&mut self, conn: usize, buf: &mut [u8]) -> ReadOutcome {
        let Some(peer) = self.peers.get_mut(conn) else {
            return ReadOutcome::Failed;
        };
        if peer.inbox.is_empty() {
            return if peer.finished {
                ReadOutcome::Closed
            } else {
                ReadOutcome::WouldBlock
            };
        }
        let n = buf.len().min(peer.inbox.len());
        buf[..n].copy_from_slice(&peer.inbox[..n]);
        peer.inbox.drain(..n);
        ReadOutcome::Data(n)
    }

    fn write(&mut self, conn: usize, data: &[u8]) -> Result<usize, ConnectionGone> {
        let peer = self.peers.get_mut(conn).ok_or(ConnectionGone)?;
        if peer.closed {
            return Err(ConnectionGone);
        }
        if peer.backend && !data.is_empty() && peer.inbox.is_empty() {
            peer.inbox.extend_from_slice(CANNED);
        }
        Ok(data.len())
    }

    fn connect(&mut self, _: SocketAddr, _: BackendProtocol) -> Option<usize> {
        self.peers.push(Peer {
            backend: true,
            ..Peer::default()
        });
        Some(self.peers.len() - 1)
    }

    fn established(&mut self, _: usize) -> bool {
        true
    }

    fn close(&mut self, conn: usize) {
        if let Some(peer) = self.peers.get_mut(conn) {
            peer.closed = true;
        }
    }

    fn abort(&mut self, conn: usize) {
        self.close(conn);
    }
}

/// The example routes, compiled once.
fn config() -> Arc<ArcSwap<GatewayConfig>> {
    static CONFIG: OnceLock<Arc<ArcSwap<GatewayConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway");
            let manifests = Manifests::load_dir(&dir).expect("examples/gateway loads");
            let compiled = compile(&manifests, &Selection::default(), OnInvalid::RejectAll)
                .expect("examples/gateway compiles");
            Arc::new(ArcSwap::from_pointee(compiled.config))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    // The first byte sets the piece size the client's bytes arrive in.
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let piece = 1 + first as usize * 8;
    let mut wire = Wire::default();
    let mut service = HttpService::new(
        ProxySettings::default(),
        Http2Settings::default(),
        config(),
        Arc::new(ProxyMetrics::default()),
    );
    wire.peers.push(Peer::default());
    let mut now = Instant::now();
    service.accept(&mut wire, 0, "192.0.2.7:40000".parse().unwrap(), 80, now);
    let mut fed = 0;
    for _ in 0..input.len() / piece + 64 {
        let next = (fed + piece).min(input.len());
        wire.peers[0].inbox.extend_from_slice(&input[fed..next]);
        fed = next;
        wire.peers[0].finished = fed == input.len();
        for conn in 0..wire.peers.len() {
            service.on_io(&mut wire, conn, now);
        }
        service.flush(&mut wire, now);
        service.run_timers(&mut wire, now);
        now += Duration::from_millis(5);
        service.tick(&mut wire, now);
        if fed == input.len()
            && !service.has_work()
            && wire.peers.iter().all(|p| p.inbox.is_empty())
        {
            break;
        }
    }
});
