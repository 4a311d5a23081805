//! Connection timers: a hashed timing wheel of 1 ms slots for what is due
//! soon (retransmissions, delayed ACKs), a heap for what is far (idle
//! timeouts). Insert and expire are O(1) for the near timers, which is
//! where a busy stack's timers live; a binary heap of every timer cost a
//! fifth of a worker at 10,000 connections.
//!
//! Entries are never removed early: the owner checks, when one fires,
//! whether it still wants it (the stack compares the deadline it recorded).

use smoltcp::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const SLOTS: u64 = 4096;

/// A timer entry: the deadline and whatever identifies its owner.
pub type Entry<K> = (Instant, K);

/// Timers keyed by `K`.
pub struct TimerWheel<K: Copy + Ord> {
    slots: Vec<Vec<Entry<K>>>,
    /// Every slot up to and including this millisecond has been expired.
    cursor: u64,
    near: usize,
    far: BinaryHeap<Reverse<Entry<K>>>,
}

impl<K: Copy + Ord> TimerWheel<K> {
    /// An empty wheel whose clock starts at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            cursor: millis(now),
            near: 0,
            far: BinaryHeap::new(),
        }
    }

    /// Timers pending (including ones their owners no longer want).
    pub fn len(&self) -> usize {
        self.near + self.far.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add a timer due at `at`.
    pub fn insert(&mut self, at: Instant, key: K) {
        let ms = millis(at).max(self.cursor + 1);
        if ms - self.cursor < SLOTS {
            self.slots[(ms % SLOTS) as usize].push((at, key));
            self.near += 1;
        } else {
            self.far.push(Reverse((at, key)));
        }
    }

    /// Move every timer due by `now` into `due`.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<Entry<K>>) {
        let target = millis(now);
        if target <= self.cursor {
            return;
        }
        let steps = (target - self.cursor).min(SLOTS);
        for step in 1..=steps {
            let slot = &mut self.slots[((self.cursor + step) % SLOTS) as usize];
            self.near -= slot.len();
            due.append(slot);
        }
        self.cursor = target;
        // Far timers that came within reach move into the wheel (or are due).
        while let Some(&Reverse((at, key))) = self.far.peek() {
            if millis(at) >= self.cursor + SLOTS {
                break;
            }
            self.far.pop();
            if millis(at) <= self.cursor {
                due.push((at, key));
            } else {
                self.insert(at, key);
            }
        }
    }

    /// The earliest deadline, or None. Scans the wheel: for deciding how
    /// long to sleep, not for the packet path.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.near > 0 {
            for step in 1..=SLOTS {
                let slot = &self.slots[((self.cursor + step) % SLOTS) as usize];
                if let Some(at) = slot.iter().map(|(at, _)| *at).min() {
                    return Some(at);
                }
            }
        }
        self.far.peek().map(|Reverse((at, _))| *at)
    }
}

fn millis(at: Instant) -> u64 {
    at.total_millis().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: i64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn timers_fire_once_when_due_near_and_far() {
        let mut wheel = TimerWheel::new(ms(1000));
        wheel.insert(ms(1005), 1u32);
        wheel.insert(ms(1005), 2);
        wheel.insert(ms(1000), 3); // already due: fires on the next expiry
        wheel.insert(ms(1000 + 10_000), 4); // beyond the wheel
        assert_eq!(wheel.len(), 4);
        assert_eq!(wheel.next_deadline(), Some(ms(1000)));

        let mut due = Vec::new();
        wheel.expire(ms(1001), &mut due);
        assert_eq!(due, vec![(ms(1000), 3)]);
        due.clear();
        wheel.expire(ms(1004), &mut due);
        assert!(due.is_empty());
        wheel.expire(ms(1005), &mut due);
        due.sort();
        assert_eq!(due, vec![(ms(1005), 1), (ms(1005), 2)]);
        due.clear();
        wheel.expire(ms(1000 + 9_999), &mut due);
        assert!(due.is_empty());
        assert_eq!(wheel.next_deadline(), Some(ms(11_000)));
        wheel.expire(ms(11_000), &mut due);
        assert_eq!(due, vec![(ms(11_000), 4)]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn a_long_sleep_expires_everything_due() {
        let mut wheel = TimerWheel::new(ms(0));
        for i in 1..=100 {
            wheel.insert(ms(i * 37), i as u32);
        }
        let mut due = Vec::new();
        wheel.expire(ms(60_000), &mut due);
        assert_eq!(due.len(), 100);
        assert!(wheel.is_empty());
    }
}
