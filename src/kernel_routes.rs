//! The kernel's routes, followed for the workers' stacks
//! (`rauta_xdp::routes` reads them over rtnetlink): those through a next
//! hop out of the gateway's interface the stack uses; the others tell it
//! what the node's kernel must reach instead (a backend leg over a kernel
//! socket).

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rauta_netstack::smoltcp::wire::IpCidr;
use rauta_netstack::{Hop, Route, Routes};
use rauta_xdp::routes::{follow, KernelRoute};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often route announcements are looked at: a route change reaches
/// the workers within this plus one worker tick.
const READ_EVERY: Duration = Duration::from_millis(100);

/// Follow the kernel's routes, as seen from `iface`, on a thread of its own until `stop`,
/// publishing each new set to `published`.
pub fn follow_routes(
    iface: &str,
    published: Arc<ArcSwap<Routes>>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let ifindex = rauta_xdp::ifindex(iface)?;
    let iface = iface.to_owned();
    std::thread::Builder::new()
        .name("rauta-routes".into())
        .spawn(move || {
            let result = follow(READ_EVERY, &stop, |routes| match routes {
                Ok(routes) => {
                    let routes = stack_routes(&routes, ifindex);
                    if **published.load() != routes {
                        tracing::info!(iface = %iface, routes = routes.len(), "routes from the kernel");
                        published.store(Arc::new(routes));
                    }
                }
                Err(error) => {
                    tracing::warn!(iface = %iface, %error, "reading the kernel's routes; the last ones stay");
                }
            });
            if let Err(error) = result {
                tracing::error!(iface = %iface, %error, "cannot follow the kernel's routes: off-link backends stay unreachable");
            }
        })
        .context("starting the route follower")
}

fn stack_routes(routes: &[KernelRoute], ifindex: u32) -> Routes {
    Routes::new(routes.iter().map(|r| Route {
        destination: IpCidr::new(r.destination.into(), r.prefix_len),
        hop: match (r.oif, r.gateway) {
            (Some(oif), Some(gateway)) if oif == ifindex => Hop::Via(gateway.into()),
            _ => Hop::Elsewhere,
        },
    }))
}
