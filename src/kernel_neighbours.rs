//! The kernel's neighbours on the gateway's interface, followed for the
//! workers' stacks in node-address mode (`rauta_xdp::neighbours` reads them
//! over rtnetlink), and the addresses the stacks miss, asked of the kernel.

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rauta_netstack::smoltcp::wire::EthernetAddress;
use rauta_netstack::NeighbourTable;
use rauta_xdp::neighbours::follow;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often asks are sent and announcements looked at: a neighbour the
/// kernel lacked reaches the stack within about two of these.
const READ_EVERY: Duration = Duration::from_millis(20);

/// Follow `iface`'s neighbours on a thread of its own until `stop`,
/// publishing each new table to `published` and asking the kernel to
/// resolve what arrives on `asks`.
pub fn follow_neighbours(
    iface: &str,
    published: Arc<ArcSwap<NeighbourTable>>,
    asks: Receiver<IpAddr>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let ifindex = rauta_xdp::ifindex(iface)?;
    let iface = iface.to_owned();
    std::thread::Builder::new()
        .name("rauta-neighbours".into())
        .spawn(move || {
            let pending = || {
                let mut wanted: Vec<IpAddr> = asks.try_iter().collect();
                wanted.sort_unstable();
                wanted.dedup();
                wanted
            };
            let result = follow(ifindex, READ_EVERY, &stop, pending, |found| match found {
                Ok(found) => {
                    let table = NeighbourTable::new(
                        found
                            .iter()
                            .map(|n| (n.address.into(), EthernetAddress(n.mac))),
                    );
                    if **published.load() != table {
                        tracing::debug!(iface = %iface, neighbours = table.len(), "neighbours from the kernel");
                        published.store(Arc::new(table));
                    }
                }
                Err(error) => {
                    tracing::warn!(iface = %iface, %error, "reading the kernel's neighbours; the last ones stay");
                }
            });
            if let Err(error) = result {
                tracing::error!(iface = %iface, %error, "cannot follow the kernel's neighbours: new next hops stay unresolved");
            }
        })
        .context("starting the neighbour follower")
}
