//! An in-memory Ethernet link: two [`MemoryDevice`]s whose transmitted
//! frames arrive at each other. Two stacks talk over it in unit tests and
//! benchmarks, without privileges or a kernel in between.

use crate::device::{BatchDevice, Origin};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

type Wire = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// One end of an in-memory link.
#[derive(Debug)]
pub struct MemoryDevice {
    inbound: Wire,
    outbound: Wire,
    /// Frames taken off the wire by `service`, and frames handed over.
    received: VecDeque<Vec<u8>>,
    injected: VecDeque<Vec<u8>>,
    mtu: usize,
    /// Frames this end received and sent.
    pub frames_in: u64,
    pub frames_out: u64,
}

/// Two connected ends of a link carrying Ethernet frames of up to `mtu`
/// bytes of IP payload.
pub fn link(mtu: usize) -> (MemoryDevice, MemoryDevice) {
    let a: Wire = Rc::default();
    let b: Wire = Rc::default();
    let end = |inbound: &Wire, outbound: &Wire| MemoryDevice {
        inbound: inbound.clone(),
        outbound: outbound.clone(),
        received: VecDeque::new(),
        injected: VecDeque::new(),
        mtu,
        frames_in: 0,
        frames_out: 0,
    };
    (end(&a, &b), end(&b, &a))
}

impl MemoryDevice {
    /// Take off the wire, unseen, every frame on its way here that
    /// `lost` picks (what a switch or the kernel would keep from this end).
    pub fn lose_inbound(&mut self, mut lost: impl FnMut(&[u8]) -> bool) {
        self.inbound.borrow_mut().retain(|frame| !lost(frame));
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        if let Some(frame) = self.injected.pop_front() {
            return Some(frame);
        }
        if self.received.is_empty() {
            self.received.extend(self.inbound.borrow_mut().drain(..));
        }
        self.received.pop_front()
    }
}

impl BatchDevice for MemoryDevice {
    fn service(&mut self) -> usize {
        self.received.extend(self.inbound.borrow_mut().drain(..));
        self.received.len() + self.injected.len()
    }

    fn flush(&mut self) -> usize {
        0
    }

    fn peek(&self) -> Option<(&[u8], Origin)> {
        if let Some(frame) = self.injected.front() {
            return Some((frame, Origin::HandedOver));
        }
        self.received.front().map(|f| (&f[..], Origin::Local))
    }

    fn discard(&mut self) {
        if self.injected.pop_front().is_none() {
            self.received.pop_front();
        }
    }

    fn inject(&mut self, frame: Vec<u8>) {
        self.injected.push_back(frame);
    }
}

/// A frame taken off the wire.
pub struct MemoryRxToken {
    frame: Vec<u8>,
}

impl phy::RxToken for MemoryRxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.frame)
    }
}

/// Room for one frame onto the wire.
pub struct MemoryTxToken<'a> {
    outbound: &'a Wire,
    sent: &'a mut u64,
}

impl phy::TxToken for MemoryTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.outbound.borrow_mut().push_back(frame);
        *self.sent += 1;
        result
    }
}

impl Device for MemoryDevice {
    type RxToken<'a> = MemoryRxToken;
    type TxToken<'a> = MemoryTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.pop()?;
        self.frames_in += 1;
        Some((
            MemoryRxToken { frame },
            MemoryTxToken {
                outbound: &self.outbound,
                sent: &mut self.frames_out,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(MemoryTxToken {
            outbound: &self.outbound,
            sent: &mut self.frames_out,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps
    }
}
