//! Ring bookkeeping that does not depend on the kernel: the pool of free UMEM
//! frames, and pushing a backlog into a ring that may grant fewer slots than
//! asked.
//!
//! xdpilone's `fill(n)` / `transmit(n)` reserve *up to* `n` slots and may grant
//! fewer while room remains; whatever was not accepted must be kept and
//! retried, or frames vanish from the UMEM for good. [`drain_into`] keeps that
//! rule in one place, over the small [`Producer`] seam that the real rings and
//! the tests' fake ring both implement.

use std::collections::VecDeque;

/// A ring we produce into (fill ring: frame addresses; TX ring: descriptors).
pub trait Producer<T> {
    /// Reserve up to `max` slots, write a prefix of `items` into them, commit,
    /// and return how many were written (possibly fewer than both).
    fn produce(&mut self, items: &[T], max: u32) -> u32;
}

/// Push as much of `backlog` into `ring` as it accepts, keeping the rest in
/// order. Retries while the ring makes progress, since a reservation may be
/// short of the room that is actually there. Returns how many went in.
pub fn drain_into<T: Copy, R: Producer<T>>(backlog: &mut VecDeque<T>, ring: &mut R) -> usize {
    let mut total = 0;
    while !backlog.is_empty() {
        let (front, _) = backlog.as_slices();
        let want = u32::try_from(front.len()).unwrap_or(u32::MAX);
        let written = ring.produce(front, want) as usize;
        if written == 0 {
            break;
        }
        backlog.drain(..written);
        total += written;
    }
    total
}

/// The UMEM frames that no ring and no packet currently holds, by address of
/// the frame's first byte.
#[derive(Debug)]
pub struct FramePool {
    free: Vec<u64>,
    frame_size: u64,
    capacity: usize,
}

impl FramePool {
    /// A pool owning frames `first .. first + count` of `frame_size` bytes.
    pub fn new(first: u32, count: u32, frame_size: u32) -> Self {
        let frame_size = u64::from(frame_size);
        let free = (first..first + count)
            .rev()
            .map(|i| u64::from(i) * frame_size)
            .collect();
        Self {
            free,
            frame_size,
            capacity: count as usize,
        }
    }

    /// Take a free frame.
    pub fn take(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Return a frame. `addr` may point anywhere inside it (the kernel hands
    /// back addresses offset by its headroom); the frame's start is kept.
    pub fn put(&mut self, addr: u64) {
        let base = addr - addr % self.frame_size;
        debug_assert!(
            self.free.len() < self.capacity,
            "frame {base:#x} returned twice"
        );
        self.free.push(base);
    }

    /// Free frames.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether no frame is free.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of `room` slots that grants at most `grant` per reservation,
    /// like a ring whose cached producer index lags the consumer.
    struct StingyRing {
        room: usize,
        grant: u32,
        written: Vec<u64>,
    }

    impl Producer<u64> for StingyRing {
        fn produce(&mut self, items: &[u64], max: u32) -> u32 {
            let n = (max.min(self.grant) as usize)
                .min(items.len())
                .min(self.room - self.written.len());
            self.written.extend_from_slice(&items[..n]);
            n as u32
        }
    }

    #[test]
    fn short_grants_are_retried_and_nothing_is_lost() {
        let mut backlog: VecDeque<u64> = (0..10).collect();
        let mut ring = StingyRing {
            room: 16,
            grant: 3,
            written: Vec::new(),
        };
        assert_eq!(drain_into(&mut backlog, &mut ring), 10);
        assert!(backlog.is_empty());
        assert_eq!(ring.written, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_ring_keeps_the_rest_in_order() {
        let mut backlog: VecDeque<u64> = (0..10).collect();
        let mut ring = StingyRing {
            room: 4,
            grant: 3,
            written: Vec::new(),
        };
        assert_eq!(drain_into(&mut backlog, &mut ring), 4);
        assert_eq!(backlog, (4..10).collect::<VecDeque<_>>());
        ring.room = 100;
        assert_eq!(drain_into(&mut backlog, &mut ring), 6);
        assert_eq!(ring.written, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn wrapped_backlog_is_drained_across_both_halves() {
        let mut backlog: VecDeque<u64> = VecDeque::with_capacity(8);
        backlog.extend(0..6);
        backlog.drain(..4);
        backlog.extend(6..12); // wraps around the deque's buffer
        let mut ring = StingyRing {
            room: 100,
            grant: 5,
            written: Vec::new(),
        };
        drain_into(&mut backlog, &mut ring);
        assert_eq!(ring.written, (4..12).collect::<Vec<_>>());
    }

    #[test]
    fn pool_hands_out_every_frame_once_and_takes_back_offset_addresses() {
        let mut pool = FramePool::new(4, 4, 4096);
        let mut taken: Vec<u64> = std::iter::from_fn(|| pool.take()).collect();
        taken.sort();
        assert_eq!(taken, vec![4 * 4096, 5 * 4096, 6 * 4096, 7 * 4096]);
        assert!(pool.is_empty());
        // The kernel returns RX addresses offset by its headroom.
        pool.put(5 * 4096 + 256);
        assert_eq!(pool.take(), Some(5 * 4096));
    }
}
