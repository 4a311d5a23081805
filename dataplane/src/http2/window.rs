//! Adaptive receive windows: grow a connection's flow-control windows to
//! its bandwidth-delay product, measured with PING (the approach of gRPC
//! and hyper).
//!
//! A fixed window caps each stream at window/RTT: 64 KiB over a 1 ms path
//! is 64 MB/s. [`Bdp`] counts the bytes received while a PING is in
//! flight; when the PONG comes back and those bytes filled most of the
//! window, the window was the limit, and it doubles (up to a ceiling).
//! Sans-IO: the connection driver reports bytes and PONGs and applies the
//! windows it is told.

use std::time::{Duration, Instant};

/// The spec's initial window (RFC 9113 §6.9.2).
pub const INITIAL_WINDOW: u32 = 65_535;

#[derive(Debug)]
pub struct Bdp {
    window: u32,
    max: u32,
    /// Bytes received since the PING went out.
    bytes: usize,
    ping_sent: Option<Instant>,
    /// Wait this long after a measurement before the next.
    pause: Duration,
    next: Option<Instant>,
}

impl Bdp {
    pub fn new(max: u32) -> Self {
        Self {
            window: INITIAL_WINDOW,
            max: max.max(INITIAL_WINDOW),
            bytes: 0,
            ping_sent: None,
            pause: Duration::from_millis(100),
            next: None,
        }
    }

    pub fn window(&self) -> u32 {
        self.window
    }

    /// A PING is out.
    pub fn measuring(&self) -> bool {
        self.ping_sent.is_some()
    }

    /// `n` bytes arrived, `data` of them DATA payload. Returns whether to
    /// send a PING now: only while DATA flows, so a connection of small
    /// requests and responses never sees one.
    pub fn on_bytes(&mut self, n: usize, data: usize, now: Instant) -> bool {
        if self.window >= self.max {
            return false;
        }
        if self.ping_sent.is_some() {
            self.bytes += n;
            return false;
        }
        if data == 0 || self.next.is_some_and(|t| now < t) {
            return false;
        }
        self.ping_sent = Some(now);
        self.bytes = n;
        true
    }

    /// The PONG came back. Returns the new window when it grew.
    pub fn on_pong(&mut self, now: Instant) -> Option<u32> {
        self.ping_sent.take()?;
        self.next = Some(now + self.pause);
        let bytes = u32::try_from(self.bytes).unwrap_or(u32::MAX);
        // Most of a window in one round trip: the window was the limit.
        if bytes < self.window / 3 * 2 {
            return None;
        }
        self.window = bytes.saturating_mul(2).clamp(self.window, self.max);
        Some(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_while_the_window_is_the_limit_and_stops_at_the_ceiling() {
        let mut bdp = Bdp::new(1 << 20);
        let mut now = Instant::now();
        let mut windows = Vec::new();
        while bdp.window() < 1 << 20 {
            assert!(bdp.on_bytes(1000, 1000, now));
            // A full window per round trip.
            bdp.on_bytes(bdp.window() as usize, 0, now);
            if let Some(w) = bdp.on_pong(now) {
                windows.push(w);
            }
            now += Duration::from_millis(200);
        }
        assert_eq!(windows.first(), Some(&(2 * (INITIAL_WINDOW + 1000))));
        assert_eq!(
            windows.len(),
            4,
            "doubling from 64 KiB to 1 MiB: {windows:?}"
        );
        assert_eq!(*windows.last().unwrap(), 1 << 20);
        assert!(
            !bdp.on_bytes(1000, 1000, now),
            "at the ceiling: no more pings"
        );
    }

    #[test]
    fn a_trickle_does_not_grow_it_and_pings_are_spaced() {
        let mut bdp = Bdp::new(1 << 20);
        let now = Instant::now();
        assert!(bdp.on_bytes(100, 100, now));
        assert!(!bdp.on_bytes(100, 100, now), "one ping in flight");
        assert_eq!(bdp.on_pong(now), None);
        assert!(!bdp.on_bytes(100, 100, now + Duration::from_millis(10)));
        assert!(bdp.on_bytes(100, 100, now + Duration::from_millis(150)));
    }

    #[test]
    fn no_ping_until_data_flows() {
        let mut bdp = Bdp::new(1 << 20);
        let now = Instant::now();
        // HEADERS, SETTINGS, WINDOW_UPDATE: bytes, but no DATA.
        assert!(!bdp.on_bytes(4000, 0, now));
        assert!(!bdp.measuring());
        assert!(bdp.on_bytes(20_000, 16_384, now));
    }
}
