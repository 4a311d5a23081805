//! Backend legs of an AF_XDP worker: the userspace stack for what it
//! reaches, kernel sockets for the rest, under one [`Transport`].
//!
//! The stack reaches its link and what routes out of its interface lead to
//! ([`Stack::reaches`]). A pod on the gateway's own node sits behind that
//! node's kernel (a veth on the CNI's bridge): a frame the stack sends out
//! of the NIC never comes back in to it. Nor does one for a route through a
//! tunnel device. Those endpoints get an ordinary kernel socket, opened and
//! driven by the same worker through the same core, so routing, pools,
//! retries and health see one kind of connection. Client connections are
//! always the stack's.

use crate::config::BackendProtocol;
use crate::kernel::KernelIo;
use crate::proxy::{ConnectionGone, ReadOutcome, Transport};
use mio::Events;
use rauta_netstack::{ConnId, Stack};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Which leg a backend connection takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LegChoice {
    /// The stack where it reaches the endpoint, a kernel socket elsewhere.
    #[default]
    Auto,
    /// Always the stack (endpoints it cannot reach fail to connect).
    Userspace,
    /// Always a kernel socket.
    Kernel,
}

impl std::str::FromStr for LegChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "userspace" => Ok(Self::Userspace),
            "kernel" => Ok(Self::Kernel),
            other => Err(format!("{other:?}: auto, userspace or kernel")),
        }
    }
}

/// A connection of either leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    Stack(ConnId),
    Kernel(usize),
}

/// Backend connections opened, by leg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegCounts {
    pub userspace: u64,
    pub kernel: u64,
}

/// The stack and the worker's kernel sockets, as one transport.
pub struct Legs<'s> {
    pub stack: &'s mut Stack,
    kernel: KernelIo,
    choice: LegChoice,
    connects: LegCounts,
}

impl<'s> Legs<'s> {
    pub fn new(stack: &'s mut Stack, choice: LegChoice) -> io::Result<Self> {
        Ok(Self {
            stack,
            kernel: KernelIo::new()?,
            choice,
            connects: LegCounts::default(),
        })
    }

    pub fn connects(&self) -> LegCounts {
        self.connects
    }

    /// Kernel sockets with news, without waiting; nothing to ask (no
    /// system call) while there are none.
    pub fn kernel_events(&mut self, events: &mut Events, into: &mut Vec<Leg>) {
        if self.kernel.connections() == 0 {
            return;
        }
        if self.kernel.wait(events, Some(Duration::ZERO)).is_ok() {
            into.extend(events.iter().map(|e| Leg::Kernel(e.token().0)));
        }
    }

    /// The epoll set of the kernel sockets: readable when one has news, so
    /// a sleeping worker wakes for them too.
    pub fn kernel_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.kernel.fd()
    }

    fn use_stack(&self, to: SocketAddr) -> bool {
        match (self.choice, to) {
            (LegChoice::Kernel, _) => false,
            (LegChoice::Userspace, _) => true,
            (LegChoice::Auto, to) => self.stack.reaches(to.ip().into()),
        }
    }
}

impl Transport for Legs<'_> {
    type Conn = Leg;

    fn read(&mut self, conn: Leg, buf: &mut [u8]) -> ReadOutcome {
        match conn {
            Leg::Stack(id) => Transport::read(&mut *self.stack, id, buf),
            Leg::Kernel(key) => self.kernel.read(key, buf),
        }
    }

    fn write(&mut self, conn: Leg, data: &[u8]) -> Result<usize, ConnectionGone> {
        match conn {
            Leg::Stack(id) => Transport::write(&mut *self.stack, id, data),
            Leg::Kernel(key) => self.kernel.write(key, data),
        }
    }

    fn connect(&mut self, to: SocketAddr, protocol: BackendProtocol) -> Option<Leg> {
        if self.use_stack(to) {
            let id = Transport::connect(&mut *self.stack, to, protocol)?;
            self.connects.userspace += 1;
            Some(Leg::Stack(id))
        } else {
            let key = self.kernel.connect(to, protocol)?;
            self.connects.kernel += 1;
            Some(Leg::Kernel(key))
        }
    }

    fn established(&mut self, conn: Leg) -> bool {
        match conn {
            Leg::Stack(id) => Transport::established(&mut *self.stack, id),
            Leg::Kernel(key) => self.kernel.established(key),
        }
    }

    fn close(&mut self, conn: Leg) {
        match conn {
            Leg::Stack(id) => Transport::close(&mut *self.stack, id),
            Leg::Kernel(key) => self.kernel.close(key),
        }
    }

    fn abort(&mut self, conn: Leg) {
        match conn {
            Leg::Stack(id) => Transport::abort(&mut *self.stack, id),
            Leg::Kernel(key) => self.kernel.abort(key),
        }
    }
}
