//! The `smoltcp::phy::Device` over AF_XDP sockets.
//!
//! Received frames are handed to smoltcp in place (no copy out of the UMEM);
//! transmitted frames are built in place in a free UMEM frame. Frames move
//! between the kernel and us in batches: [`XdpDevice::service`] before the
//! stack runs, [`XdpDevice::flush`] after it, one TX kick per batch.

use crate::umem::FrameRegion;
use crate::xsk::{XskGroup, XskQueue, XskStatistics};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use xdpilone::xdp::XdpDesc;

/// Where a received frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This worker's own queue.
    Local,
    /// Handed over by another worker that received it on its queue.
    HandedOver,
}

/// A device whose frames move to and from the kernel in batches around a
/// pass of the stack, and that lets the stack look at a frame before
/// smoltcp takes it (to pick the connection it belongs to).
pub trait BatchDevice: Device {
    /// Before the stack runs: take in what arrived. Returns frames received.
    fn service(&mut self) -> usize;
    /// After the stack ran: hand out what it queued. Returns frames sent.
    fn flush(&mut self) -> usize;
    /// The frame the next `receive` hands out.
    fn peek(&self) -> Option<(&[u8], Origin)>;
    /// Drop the frame `peek` shows.
    fn discard(&mut self);
    /// Queue a frame handed over by another worker.
    fn inject(&mut self, frame: Vec<u8>);
}

/// Per-queue traffic counters kept by the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueTraffic {
    /// Frames received from the queue.
    pub frames_in: u64,
    /// Frames transmitted on the queue.
    pub frames_out: u64,
    /// TX kicks (`sendto`).
    pub tx_wakeups: u64,
}

/// A smoltcp device over one or more AF_XDP sockets of one interface, plus
/// frames handed over by other workers.
///
/// Received frames from every queue feed the one stack; replies leave
/// through the queue the last frame arrived on.
pub struct XdpDevice {
    xsks: XskGroup,
    region: FrameRegion,
    frame_size: u32,
    mtu: usize,
    /// Received descriptors not yet given to the stack, per queue.
    rx_batches: Vec<VecDeque<XdpDesc>>,
    /// Frames handed over by other workers, received before the rings.
    injected: VecDeque<Vec<u8>>,
    /// What the last RxToken lent: the stack is done with it by the time it
    /// calls the device again, and it goes back then.
    lent: Lent,
    next_rx_queue: usize,
    tx_queue: usize,
    traffic: Vec<QueueTraffic>,
}

enum Lent {
    Nothing,
    Frame { queue: usize, addr: u64 },
    Injected(Vec<u8>),
}

/// The next frame `receive` hands out.
enum Next {
    Injected,
    Ring(usize),
}

/// Bytes of Ethernet header before the IP packet.
const ETHERNET_HEADER: usize = 14;

/// What the kernel keeps free before a received frame's data in each UMEM
/// frame (`XDP_PACKET_HEADROOM`): a frame of 4096 bytes receives at most
/// 3840.
const RX_HEADROOM: usize = 256;

/// The largest IP packet the device sends and asks peers for (through the
/// MSS it derives) on a link of `link_mtu`: no more than one UMEM frame of
/// `frame_size` bytes receives. A 9001-byte MTU (AWS) on 4096-byte frames
/// gives 3826: a larger packet could neither be received (AF_XDP drops
/// what does not fit a frame) nor built.
pub fn frame_mtu(frame_size: u32, link_mtu: usize) -> usize {
    let frame = (frame_size as usize).saturating_sub(RX_HEADROOM + ETHERNET_HEADER);
    link_mtu.min(frame)
}

impl XdpDevice {
    /// A device over `xsks`, for IP packets of up to `mtu` bytes, clamped
    /// to what one UMEM frame holds ([`frame_mtu`]).
    pub fn new(xsks: XskGroup, mtu: usize) -> Self {
        let queues = xsks.queues().len();
        let region = xsks.area().region();
        let frame_size = xsks.area().frame_size();
        Self {
            xsks,
            region,
            frame_size,
            mtu: frame_mtu(frame_size, mtu),
            rx_batches: vec![VecDeque::new(); queues],
            injected: VecDeque::new(),
            lent: Lent::Nothing,
            next_rx_queue: 0,
            tx_queue: 0,
            traffic: vec![QueueTraffic::default(); queues],
        }
    }

    /// The sockets.
    pub fn queues(&self) -> &[XskQueue] {
        self.xsks.queues()
    }

    /// The sockets' fds, for `poll(2)`.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.xsks.queues().iter().map(XskQueue::fd).collect()
    }

    /// Traffic counters per queue (in the order of [`Self::queues`]).
    pub fn traffic(&self) -> Vec<QueueTraffic> {
        let mut traffic = self.traffic.clone();
        for (t, q) in traffic.iter_mut().zip(self.xsks.queues()) {
            t.tx_wakeups = q.wakeups();
        }
        traffic
    }

    /// The kernel's drop counters per queue.
    pub fn statistics(&self) -> Vec<std::io::Result<XskStatistics>> {
        self.xsks
            .queues()
            .iter()
            .map(XskQueue::statistics)
            .collect()
    }

    fn return_lent(&mut self) {
        if let Lent::Frame { queue, addr } = std::mem::replace(&mut self.lent, Lent::Nothing) {
            self.xsks.queues_mut()[queue].recycle(addr);
        }
    }

    fn next(&self) -> Option<Next> {
        if !self.injected.is_empty() {
            return Some(Next::Injected);
        }
        let queues = self.rx_batches.len();
        (0..queues)
            .map(|s| (self.next_rx_queue + s) % queues)
            .find(|&i| !self.rx_batches[i].is_empty())
            .map(Next::Ring)
    }
}

impl BatchDevice for XdpDevice {
    /// Reap TX completions, refill the fill rings, read RX in batches.
    fn service(&mut self) -> usize {
        self.return_lent();
        let mut received = 0;
        for (i, queue) in self.xsks.queues_mut().iter_mut().enumerate() {
            queue.service();
            if self.rx_batches[i].is_empty() {
                let n = queue.receive_batch(&mut self.rx_batches[i]);
                self.traffic[i].frames_in += u64::from(n);
                received += n as usize;
            }
        }
        received + self.injected.len()
    }

    /// Send what the stack queued, one kick per queue at most.
    fn flush(&mut self) -> usize {
        self.return_lent();
        let mut sent = 0;
        for (i, queue) in self.xsks.queues_mut().iter_mut().enumerate() {
            let n = queue.flush();
            self.traffic[i].frames_out += n as u64;
            sent += n;
        }
        sent
    }

    fn peek(&self) -> Option<(&[u8], Origin)> {
        match self.next()? {
            Next::Injected => self.injected.front().map(|f| (&f[..], Origin::HandedOver)),
            Next::Ring(queue) => {
                let desc = self.rx_batches[queue].front()?;
                // SAFETY: the frame came to us through the RX ring and stays
                // out of every ring until it is recycled, which needs `&mut
                // self` and so cannot happen while this borrow lives.
                let frame = unsafe { self.region.slice(desc.addr, desc.len as usize) };
                Some((frame, Origin::Local))
            }
        }
    }

    fn discard(&mut self) {
        self.return_lent();
        match self.next() {
            Some(Next::Injected) => {
                self.injected.pop_front();
            }
            Some(Next::Ring(queue)) => {
                if let Some(desc) = self.rx_batches[queue].pop_front() {
                    self.xsks.queues_mut()[queue].recycle(desc.addr);
                }
            }
            None => {}
        }
    }

    fn inject(&mut self, frame: Vec<u8>) {
        self.injected.push_back(frame);
    }
}

/// A received frame, lent to the stack until its next call into the device.
pub struct XdpRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for XdpRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Room to build one outgoing frame in.
pub struct XdpTxToken<'a> {
    queue: &'a mut XskQueue,
    region: FrameRegion,
    frame_size: u32,
}

impl phy::TxToken for XdpTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // The device only hands out a token when a frame is free, and the
        // token's exclusive borrow keeps anyone else from taking it; should
        // that ever fail, the packet is built and dropped, never a panic.
        // A frame larger than a UMEM frame cannot be sent: the MTU the
        // device states keeps smoltcp below it, and should anything ask
        // for more, it is built aside and dropped, never truncated under
        // the writer (which would panic).
        if len > self.frame_size as usize {
            tracing::warn!(
                len,
                frame = self.frame_size,
                "frame larger than a UMEM frame dropped"
            );
            return f(&mut vec![0; len]);
        }
        let Some(addr) = self.queue.take_tx_frame() else {
            return f(&mut vec![0; len]);
        };
        // SAFETY: `addr` was just taken from the pool, so no ring and no other
        // reference holds this frame until `queue_tx` hands it to the kernel.
        let buffer = unsafe { self.region.slice_mut(addr, len) };
        let result = f(buffer);
        self.queue.queue_tx(addr, len as u32);
        result
    }
}

impl Device for XdpDevice {
    type RxToken<'a> = XdpRxToken<'a>;
    type TxToken<'a> = XdpTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.return_lent();
        let next = self.next()?;
        // A reply may be sent while the frame is handled: make sure it can be.
        let tx_queue = match next {
            Next::Injected => self.tx_queue,
            Next::Ring(queue) => queue,
        };
        if !self.xsks.queues()[tx_queue].can_transmit() {
            return None;
        }
        self.tx_queue = tx_queue;
        let frame: &[u8] = match next {
            Next::Injected => {
                let frame = self.injected.pop_front()?;
                self.lent = Lent::Injected(frame);
                match &self.lent {
                    Lent::Injected(frame) => frame,
                    _ => return None,
                }
            }
            Next::Ring(queue) => {
                let desc = self.rx_batches[queue].pop_front()?;
                self.next_rx_queue = (queue + 1) % self.rx_batches.len();
                self.lent = Lent::Frame {
                    queue,
                    addr: desc.addr,
                };
                // SAFETY: the kernel released this frame to us through the RX
                // ring; it stays out of every ring until `return_lent`, which
                // runs only on the next call into the device, after the token
                // is gone.
                unsafe { self.region.slice(desc.addr, desc.len as usize) }
            }
        };
        let tx = XdpTxToken {
            queue: &mut self.xsks.queues_mut()[tx_queue],
            region: self.region,
            frame_size: self.frame_size,
        };
        Some((XdpRxToken { frame }, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.return_lent();
        let queue = &mut self.xsks.queues_mut()[self.tx_queue];
        if !queue.can_transmit() {
            return None;
        }
        Some(XdpTxToken {
            queue,
            region: self.region,
            frame_size: self.frame_size,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps.max_burst_size = None;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::frame_mtu;

    #[test]
    fn the_mtu_stated_fits_one_received_frame() {
        assert_eq!(frame_mtu(4096, 1500), 1500);
        assert_eq!(frame_mtu(4096, 9001), 3826, "4096 - 256 headroom - 14");
        assert_eq!(frame_mtu(2048, 9000), 1778);
        assert_eq!(frame_mtu(256, 1500), 0, "no wraparound");
    }
}
