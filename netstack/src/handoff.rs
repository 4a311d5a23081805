//! Frames handed between workers: one lock-free inbox per worker
//! (crossbeam `ArrayQueue`), and an eventfd to wake a worker that sleeps in
//! `poll(2)`.
//!
//! When the owner's inbox is full the sender keeps the frame and retries on
//! its next pass, in order. What it keeps is bounded (as many frames again
//! as an inbox holds): past that, frames are dropped and counted, as a
//! full NIC ring would drop them, and TCP sends them again. A flood aimed
//! at one worker's flows cannot grow the others' memory without end.

use crossbeam_queue::ArrayQueue;
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::device::BatchDevice;

struct Inbox {
    frames: ArrayQueue<Vec<u8>>,
    sleeping: AtomicBool,
    wake: OwnedFd,
}

/// One worker's end: its own inbox and the others' to send to.
pub struct Mailbox {
    me: usize,
    inboxes: Vec<Arc<Inbox>>,
    overflow: Vec<VecDeque<Vec<u8>>>,
    /// Frames kept per destination at most.
    overflow_limit: usize,
    dropped: u64,
}

/// Mailboxes for `workers` workers, each inbox holding `capacity` frames.
pub fn mailboxes(workers: usize, capacity: usize) -> std::io::Result<Vec<Mailbox>> {
    let inboxes = (0..workers)
        .map(|_| {
            Ok(Arc::new(Inbox {
                frames: ArrayQueue::new(capacity.max(1)),
                sleeping: AtomicBool::new(false),
                wake: eventfd()?,
            }))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((0..workers)
        .map(|me| Mailbox {
            me,
            inboxes: inboxes.clone(),
            overflow: vec![VecDeque::new(); workers],
            overflow_limit: capacity.max(1),
            dropped: 0,
        })
        .collect())
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2); the result is checked and owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Mailbox {
    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.me
    }

    /// Hand a copy of `frame` to worker `to` (or drop it, counted, when
    /// `to` is that far behind).
    pub fn send(&mut self, to: usize, frame: &[u8]) {
        if self.overflow[to].len() >= self.overflow_limit {
            self.dropped += 1;
            return;
        }
        let frame = frame.to_vec();
        if !self.overflow[to].is_empty() {
            self.overflow[to].push_back(frame);
            return;
        }
        if let Err(frame) = self.inboxes[to].frames.push(frame) {
            self.overflow[to].push_back(frame);
        }
        self.wake(to);
    }

    /// Frames dropped because their worker's inbox and this sender's
    /// overflow for it were full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Retry frames an inbox had no room for. Returns whether any remain.
    pub fn flush(&mut self) -> bool {
        let mut left = false;
        for to in 0..self.overflow.len() {
            let mut pushed = false;
            while let Some(frame) = self.overflow[to].pop_front() {
                if let Err(frame) = self.inboxes[to].frames.push(frame) {
                    self.overflow[to].push_front(frame);
                    break;
                }
                pushed = true;
            }
            if pushed {
                self.wake(to);
            }
            left |= !self.overflow[to].is_empty();
        }
        left
    }

    fn wake(&self, to: usize) {
        let inbox = &self.inboxes[to];
        if inbox.sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe {
                libc::write(
                    inbox.wake.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }

    /// Move up to `max` frames handed to this worker into `device` (a
    /// bound, so one pass stays short and the fill ring never runs dry).
    /// Returns how many.
    pub fn receive_into<D: BatchDevice + ?Sized>(&self, device: &mut D, max: usize) -> usize {
        let inbox = &self.inboxes[self.me];
        let mut n = 0;
        while n < max {
            let Some(frame) = inbox.frames.pop() else {
                break;
            };
            device.inject(frame);
            n += 1;
        }
        n
    }

    /// The fd that becomes readable when a frame is handed to this worker
    /// while it sleeps.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.inboxes[self.me].wake.as_fd()
    }

    /// Call before sleeping: returns false (do not sleep) when frames
    /// arrived meanwhile. Pair with [`Self::awake`].
    pub fn going_to_sleep(&self) -> bool {
        let inbox = &self.inboxes[self.me];
        inbox.sleeping.store(true, Ordering::SeqCst);
        if !inbox.frames.is_empty() {
            inbox.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Call after sleeping: clears the wake-up.
    pub fn awake(&self) {
        let inbox = &self.inboxes[self.me];
        inbox.sleeping.store(false, Ordering::SeqCst);
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd
        // we own; EAGAIN (nothing to clear) is fine.
        unsafe {
            libc::read(
                inbox.wake.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::link;

    #[test]
    fn frames_reach_their_worker_in_order_even_past_a_full_inbox() {
        let mut boxes = mailboxes(2, 2).unwrap();
        let (mut device, _peer) = link(1500);
        for i in 0..4u8 {
            boxes[0].send(1, &[i]);
        }
        // Two fit; two wait with the sender.
        assert!(boxes[0].flush());
        let mut seen = Vec::new();
        for _ in 0..4 {
            boxes[1].receive_into(&mut device, 64);
            while let Some((frame, origin)) = device.peek() {
                assert_eq!(origin, crate::device::Origin::HandedOver);
                seen.push(frame[0]);
                device.discard();
            }
            boxes[0].flush();
        }
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert_eq!(boxes[0].dropped(), 0);
    }

    #[test]
    fn what_waits_for_a_full_inbox_is_bounded_and_drops_are_counted() {
        let mut boxes = mailboxes(2, 4).unwrap();
        for i in 0..100u8 {
            boxes[0].send(1, &[i]);
        }
        // 4 in the inbox, 4 kept by the sender, 92 dropped.
        assert_eq!(boxes[0].dropped(), 92);
        let (mut device, _peer) = link(1500);
        let mut seen = Vec::new();
        for _ in 0..3 {
            boxes[0].flush();
            boxes[1].receive_into(&mut device, 64);
            while let Some((frame, _)) = device.peek() {
                seen.push(frame[0]);
                device.discard();
            }
        }
        assert_eq!(
            seen,
            (0..8).collect::<Vec<u8>>(),
            "in order, none lost below the bound"
        );
    }

    #[test]
    fn a_sleeping_worker_is_woken() {
        let mut boxes = mailboxes(2, 4).unwrap();
        assert!(boxes[1].going_to_sleep());
        boxes[0].send(1, b"x");
        let start = std::time::Instant::now();
        crate::idle::wait_readable(&[boxes[1].wake_fd()], std::time::Duration::from_secs(5));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        boxes[1].awake();
        // Frames already waiting: do not sleep.
        assert!(!boxes[1].going_to_sleep());
    }
}
