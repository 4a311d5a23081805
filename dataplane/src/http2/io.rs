//! What the `h2` crate reads from and writes to, and how it asks to be
//! polled again, with no runtime underneath.
//!
//! The worker owns the socket; [`H2Io`] is a pair of buffers it fills from
//! the socket and empties into it around each poll of an `h2` connection.
//! A [`Waker`] made by [`WakeList::waker`] records which connection or
//! stream `h2` wants polled; the worker polls exactly those.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's buffers, shared between the worker and `h2`.
#[derive(Clone, Debug, Default)]
pub struct H2Io(Rc<RefCell<Buffers>>);

#[derive(Debug, Default)]
pub struct Buffers {
    /// Bytes read from the socket, not yet taken by `h2`.
    pub rx: Vec<u8>,
    /// The peer finished sending.
    pub eof: bool,
    /// Bytes read from the socket since the driver last looked (for the
    /// window estimate).
    pub received: usize,
    /// DATA payload bytes `h2` handed to the driver since it last looked:
    /// only DATA starts a window measurement.
    pub data: usize,
    /// Bytes `h2` wrote, not yet written to the socket.
    pub tx: Vec<u8>,
    /// `tx` beyond this makes `h2` wait (the socket is slower than us).
    pub tx_limit: usize,
    /// A client connection's greeting, watched as `h2` reads it.
    pub greeting: Option<Greeting>,
}

/// The client's connection preface and first frame (RFC 9113 §3.4), seen
/// as `h2` reads them: until both are in, the connection is under the
/// request-head deadline, not the idle one (a client that sends the
/// preface and then nothing is cut off as early as a slow request head).
#[derive(Debug, Default)]
pub struct Greeting {
    /// The preface and the first frame's header.
    head: Vec<u8>,
    /// Bytes read so far.
    read: usize,
}

impl Greeting {
    const HEAD: usize = 24 + 9;

    fn observe(&mut self, bytes: &[u8]) {
        let want = Self::HEAD.saturating_sub(self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..want]);
        self.read += bytes.len();
    }

    /// The preface and the whole first frame have been read.
    pub fn complete(&self) -> bool {
        let Some(header) = self.head.get(24..Self::HEAD) else {
            return false;
        };
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        self.read >= Self::HEAD + len
    }
}

/// What a connection's buffer keeps between bursts: one that grew past it
/// gives the rest back once it is empty, so a burst on a long-lived
/// connection (a pooled backend one) does not hold memory for good.
const KEPT_BUFFER: usize = 64 * 1024;

impl Buffers {
    /// Give back what a burst grew, where the buffers are empty.
    pub fn trim(&mut self) {
        for buffer in [&mut self.rx, &mut self.tx] {
            if buffer.is_empty() && buffer.capacity() > KEPT_BUFFER {
                buffer.shrink_to(KEPT_BUFFER);
            }
        }
    }
}

impl H2Io {
    pub fn new(tx_limit: usize) -> Self {
        Self(Rc::new(RefCell::new(Buffers {
            tx_limit,
            ..Buffers::default()
        })))
    }

    pub fn buffers(&self) -> std::cell::RefMut<'_, Buffers> {
        self.0.borrow_mut()
    }

    /// The peer's greeting, if watched, is all in.
    pub fn greeted(&self) -> bool {
        self.0
            .borrow()
            .greeting
            .as_ref()
            .is_none_or(Greeting::complete)
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut b = self.0.borrow_mut();
        if b.rx.is_empty() {
            // The worker polls the connection again when bytes arrive.
            return if b.eof {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        let n = buf.remaining().min(b.rx.len());
        buf.put_slice(&b.rx[..n]);
        let b = &mut *b;
        if let Some(greeting) = &mut b.greeting {
            greeting.observe(&b.rx[..n]);
        }
        b.rx.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut b = self.0.borrow_mut();
        if b.tx.len() >= b.tx_limit {
            // The worker polls the connection again when the socket takes
            // more.
            return Poll::Pending;
        }
        b.tx.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What is buffered is the worker's to send; h2 may go on.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a waker stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// A client connection (its accept loop and I/O).
    Inbound(usize),
    /// A backend connection (its I/O).
    Outbound(usize),
    /// A stream, by the pipe that carries it to the core.
    Stream(usize),
}

/// The three kinds of [`Task`], in the order a round polls them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    Stream,
    Inbound,
    Outbound,
}

impl Task {
    pub fn kind(self) -> TaskKind {
        match self {
            Self::Stream(_) => TaskKind::Stream,
            Self::Inbound(_) => TaskKind::Inbound,
            Self::Outbound(_) => TaskKind::Outbound,
        }
    }
}

/// Which tasks a round of polling has served already: the round each task
/// was last served in, by kind and key (slab keys: small and reused). A
/// task woken many times in a round is polled once, with no sorting.
#[derive(Debug, Default)]
pub struct Rounds {
    round: u32,
    served: [Vec<u32>; 3],
}

impl Rounds {
    /// Start a round.
    pub fn begin(&mut self) -> u32 {
        self.round = self.round.wrapping_add(1);
        if self.round == 0 {
            // Wrapped: stamps of 4 billion rounds ago must not match.
            self.served.iter_mut().for_each(Vec::clear);
            self.round = 1;
        }
        self.round
    }

    /// Whether `task` is not yet served in `round`; marks it served.
    pub fn first_in_round(&mut self, task: Task, round: u32) -> bool {
        let (kind, key) = match task {
            Task::Stream(k) => (0, k),
            Task::Inbound(k) => (1, k),
            Task::Outbound(k) => (2, k),
        };
        let served = &mut self.served[kind];
        if served.len() <= key {
            served.resize(key + 1, 0);
        }
        std::mem::replace(&mut served[key], round) != round
    }
}

/// Tasks `h2` woke, to be polled by the worker.
#[derive(Clone, Debug, Default)]
pub struct WakeList(Arc<Mutex<Vec<Task>>>);

struct TaskWaker {
    task: Task,
    list: WakeList,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Ok(mut list) = self.list.0.lock() {
            list.push(self.task);
        }
    }
}

impl WakeList {
    pub fn waker(&self, task: Task) -> Waker {
        Waker::from(Arc::new(TaskWaker {
            task,
            list: self.clone(),
        }))
    }

    /// Ask for `task` to be polled, as a wake would.
    pub fn push(&self, task: Task) {
        if let Ok(mut list) = self.0.lock() {
            list.push(task);
        }
    }

    /// Move the woken tasks to `out`.
    pub fn take_into(&self, out: &mut Vec<Task>) {
        if let Ok(mut list) = self.0.lock() {
            out.append(&mut list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_is_complete_once_the_first_frame_is_read_whole() {
        let mut greeting = Greeting::default();
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        greeting.observe(&preface[..10]);
        greeting.observe(&preface[10..]);
        assert!(!greeting.complete(), "the preface alone");
        greeting.observe(&[0, 0, 12, 0x4, 0, 0, 0, 0]);
        greeting.observe(&[0, 0, 3, 0, 0, 0]);
        assert!(!greeting.complete(), "half the SETTINGS payload");
        greeting.observe(&[0, 0, 0, 0, 0, 0, 0]);
        assert!(greeting.complete());
    }

    #[test]
    fn a_task_is_served_once_a_round_whatever_its_wakes() {
        let mut rounds = Rounds::default();
        let round = rounds.begin();
        assert!(rounds.first_in_round(Task::Stream(3), round));
        assert!(!rounds.first_in_round(Task::Stream(3), round));
        assert!(
            rounds.first_in_round(Task::Inbound(3), round),
            "kinds apart"
        );
        let round = rounds.begin();
        assert!(rounds.first_in_round(Task::Stream(3), round), "a new round");
    }
}
