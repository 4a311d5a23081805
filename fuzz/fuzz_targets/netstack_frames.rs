//! The userspace stack's receive path: frame classification (the dispatch
//! every frame from the NIC goes through) and then the stack itself —
//! ARP, IPv4/IPv6, ICMP, TCP to a listener — fed frames off the wire.
//! Input: frames, each a big-endian u16 length and its bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rauta_netstack::flow::{classify, FrameKind};
use rauta_netstack::memory::link;
use rauta_netstack::smoltcp::phy::{Device, TxToken};
use rauta_netstack::smoltcp::time::{Duration, Instant};
use rauta_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use rauta_netstack::{BatchDevice, Stack, StackConfig};

fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut all = Vec::new();
    while data.len() >= 2 {
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        let end = (2 + len).min(data.len());
        all.push(&data[2..end]);
        data = &data[end..];
    }
    all
}

fuzz_target!(|data: &[u8]| {
    let frames = frames(data);
    for frame in &frames {
        if let FrameKind::Tcp { flow, .. } | FrameKind::Udp { flow, .. } = classify(frame) {
            // A flow is only ever read from a frame that holds its ports.
            assert!(
                frame.len() >= 14 + 20 + 4,
                "{flow:?} from {} bytes",
                frame.len()
            );
        }
    }
    let (mut device, mut wire) = link(1500);
    let mut now = Instant::from_millis(1);
    let config = StackConfig::new(
        Ipv4Cidr::new(Ipv4Address::new(198, 18, 0, 1), 24),
        EthernetAddress([2, 0, 0, 0, 0, 1]),
    );
    let mut stack = Stack::new(config, &mut device, now);
    stack.listen_tcp(80).expect("a free port");
    let mut events = Vec::new();
    for frame in &frames {
        if let Some(token) = wire.transmit(now) {
            token.consume(frame.len(), |buf| buf.copy_from_slice(frame));
        }
    }
    for _ in 0..4 {
        device.service();
        stack.ingress(now, &mut device, |_, _| {});
        stack.take_events(&mut events);
        stack.egress(now, &mut device);
        now += Duration::from_millis(1);
    }
});
