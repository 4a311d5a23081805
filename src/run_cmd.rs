//! `rauta run`: the gateway. Routes from a directory of manifests, one proxy
//! core under the chosen transport, the admin server beside it.

use crate::admin::{self, AdminState, ExtraSample};
use crate::kernel_neighbours;
use crate::kernel_routes;
use crate::xdp_setup::{self, Addressing, XdpOptions};
use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use rauta_controlplane::kubernetes::metrics::ControllerMetrics;
use rauta_controlplane::kubernetes::{self, Controller, KubeOptions};
use rauta_controlplane::source::{self, Published};
use rauta_controlplane::{OwnSockets, Selection};
use rauta_dataplane::gate::{self, ConnectionGate};
use rauta_dataplane::gateway::{GatewayWorker, NeighbourFeed};
use rauta_dataplane::http2::Http2Settings;
use rauta_dataplane::kernel::KernelWorker;
use rauta_dataplane::legs::LegChoice;
use rauta_dataplane::listeners::ListenerPorts;
use rauta_dataplane::metrics::ProxyMetrics;
use rauta_dataplane::proxy::ProxySettings;
use rauta_dataplane::{SharedReport, WorkerReport};
use rauta_netstack::{IdlePolicy, NeighbourTable, Routes, Stack, StackCounters};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Where routes come from.
pub enum RouteSource {
    /// A directory of manifests, watched.
    Dir(PathBuf),
    /// The cluster: `kubeconfig` or, without one, the in-cluster
    /// configuration.
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        options: Box<KubeOptions>,
    },
}

impl std::fmt::Display for RouteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteSource::Dir(dir) => write!(f, "{}", dir.display()),
            RouteSource::Kubernetes { .. } => f.write_str("the cluster's Gateways"),
        }
    }
}

/// What both transports share.
pub struct RunOptions {
    pub source: RouteSource,
    pub selection: Selection,
    pub admin: Option<SocketAddr>,
    pub workers: usize,
    pub settings: ProxySettings,
    pub drain_timeout: Duration,
}

/// A running source of routes: the configuration it publishes, and what
/// keeps it going.
pub struct Source {
    pub published: Published,
    pub controller: Option<ControllerMetrics>,
    /// Watches a directory until dropped.
    _watcher: Option<source::DirWatcher>,
    /// Stops the Kubernetes controller (its thread answers when it has).
    controller_stop: Option<(tokio::sync::oneshot::Sender<()>, mpsc::Receiver<()>)>,
}

impl Source {
    /// Stop following the source. The Kubernetes controller, if it leads,
    /// hands the Lease back first (waited for up to 3 s), so another replica
    /// writes status while this one drains.
    pub fn stop(&mut self) {
        if let Some((stop, stopped)) = self.controller_stop.take() {
            if stop.send(()).is_ok() {
                let _ = stopped.recv_timeout(Duration::from_secs(3));
            }
        }
    }
}

/// Load and compile the first configuration and keep following the source.
/// A directory must give at least one listener (the error names file,
/// object and field); a cluster may have none yet.
pub fn start_source(options: &RunOptions, addresses: Vec<IpAddr>) -> Result<Source> {
    // No endpoint may be the gateway itself: its listeners, its admin.
    let own = OwnSockets {
        addresses,
        admin: options.admin,
    };
    let mut selection = options.selection.clone();
    selection.own = own.clone();
    match &options.source {
        RouteSource::Dir(dir) => {
            let compiled = source::load(dir, &selection)
                .with_context(|| format!("--config {}", dir.display()))?;
            for warning in &compiled.warnings {
                tracing::warn!("{warning}");
            }
            if compiled.config.ports.is_empty() {
                bail!(
                    "--config {}: no HTTP listener of a Gateway with gatewayClassName {}{}",
                    dir.display(),
                    options.selection.gateway_classes.join(" or "),
                    if options.selection.gateways.is_empty() {
                        String::new()
                    } else {
                        format!(" among {}", options.selection.gateways.join(", "))
                    }
                );
            }
            let published = Published::new(compiled);
            let watcher = source::watch(dir.clone(), selection, published.clone())
                .context("watching the config directory")?;
            Ok(Source {
                published,
                controller: None,
                _watcher: Some(watcher),
                controller_stop: None,
            })
        }
        RouteSource::Kubernetes {
            kubeconfig,
            options: kube_options,
        } => {
            let metrics = ControllerMetrics::default();
            let (tx, rx) = mpsc::channel();
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let (stopped_tx, stopped) = mpsc::channel::<()>();
            let (kubeconfig, mut kube_options, thread_metrics) = (
                kubeconfig.clone(),
                (**kube_options).clone(),
                metrics.clone(),
            );
            kube_options.own = own;
            std::thread::Builder::new()
                .name("rauta-kubernetes".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(anyhow::Error::from(e)));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let client = match kubernetes::client(kubeconfig.as_deref()).await {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = tx.send(Err(anyhow::Error::from(e)));
                                return;
                            }
                        };
                        let (controller, compiled) =
                            Controller::start(client, kube_options, thread_metrics).await;
                        let published = Published::new(compiled);
                        if tx.send(Ok(published.clone())).is_ok() {
                            controller
                                .run(published, async {
                                    let _ = stop_rx.await;
                                })
                                .await;
                            let _ = stopped_tx.send(());
                        }
                    });
                })
                .context("starting the Kubernetes controller thread")?;
            let published = match rx.recv_timeout(KUBERNETES_SYNC_TIMEOUT) {
                Ok(result) => result.context("connecting to the Kubernetes API")?,
                Err(_) => bail!(
                    "the Kubernetes API did not list every watched kind within {KUBERNETES_SYNC_TIMEOUT:?}: is it reachable, are the Gateway API v1.5 CRDs installed, does the ServiceAccount have deploy/'s RBAC? (the log above names the kinds that failed)"
                ),
            };
            Ok(Source {
                published,
                controller: Some(metrics),
                _watcher: None,
                controller_stop: Some((stop, stopped)),
            })
        }
    }
}

/// How long `rauta run --kubernetes` waits for the first complete list.
const KUBERNETES_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// How often resident memory is measured for the overload guard.
const MEMORY_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Measure the process's resident memory for the gate (the overload guard
/// and the `rauta_memory_resident_bytes` gauge) until the process ends.
fn watch_memory(gate: Arc<ConnectionGate>) -> Result<()> {
    gate.set_resident(gate::resident_bytes().unwrap_or(0));
    std::thread::Builder::new()
        .name("rauta-memory".into())
        .spawn(move || loop {
            std::thread::sleep(MEMORY_WATCH_INTERVAL);
            if let Some(bytes) = gate::resident_bytes() {
                gate.set_resident(bytes);
            }
        })
        .context("starting the memory watch")?;
    Ok(())
}

/// `rauta run --io kernel`.
pub fn run_kernel(options: RunOptions, addresses: Vec<IpAddr>) -> Result<()> {
    let mut source = start_source(&options, addresses.clone())?;
    let published = source.published.clone();
    let ports: Vec<u16> = published.config.load().ports.keys().copied().collect();
    // Bind once up front so a taken port fails here, with its address.
    for &ip in &addresses {
        for &port in &ports {
            let address = SocketAddr::new(ip, port);
            drop(
                rauta_dataplane::kernel::reuseport_listener(address)
                    .with_context(|| format!("listening on {address}"))?,
            );
        }
    }
    let stop = xdp_setup::stop_flag()?;
    watch_memory(options.settings.gate.clone())?;
    let ready = Arc::new(AtomicBool::new(false));
    let mut metrics = Vec::new();
    let mut handles = Vec::new();
    for worker in 0..options.workers {
        let m = Arc::new(ProxyMetrics::default());
        metrics.push(m.clone());
        let w = KernelWorker {
            addresses: addresses.clone(),
            settings: options.settings.clone(),
            http2: Http2Settings::default(),
            config: published.config.clone(),
            metrics: m,
            stop: stop.clone(),
            drain_timeout: options.drain_timeout,
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("rauta-worker-{worker}"))
                .spawn(move || w.run())
                .context("starting a worker thread")?,
        );
    }
    if let Some(admin) = options.admin {
        admin::start(
            admin,
            AdminState {
                published: published.clone(),
                workers: metrics,
                ready: ready.clone(),
                io: "kernel",
                extra: None,
                controller: source.controller.clone(),
                gate: options.settings.gate.clone(),
            },
        )?;
    }
    ready.store(true, Ordering::Relaxed);
    let address = addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" and ");
    println!(
        "rauta run: serving {} on {address} port(s) {ports:?} (io kernel, {} worker(s)){}. SIGTERM drains and stops.",
        options.source,
        options.workers,
        options.admin.map(|a| format!("; admin on http://{a}")).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    wait(&stop, &handles, || {});
    ready.store(false, Ordering::Relaxed);
    source.stop();
    let mut failed = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(anyhow::Error::from(e)),
            Err(_) => failed = Some(anyhow::anyhow!("a worker thread panicked")),
        }
    }
    if let Some(e) = failed {
        return Err(e.context("worker failed"));
    }
    println!("rauta run: drained and stopped");
    Ok(())
}

/// `rauta run --io xdp`.
pub fn run_xdp(
    options: RunOptions,
    xdp: XdpOptions,
    idle: IdlePolicy,
    xdp_legs: LegChoice,
) -> Result<()> {
    let own = [
        Some(IpAddr::from(xdp.address.address())),
        xdp.address6.map(|a| a.address().into()),
    ];
    let mut source = start_source(&options, own.into_iter().flatten().collect())?;
    let published = source.published.clone();
    let ports: Vec<u16> = published.config.load().ports.keys().copied().collect();
    let (iface, queues) = (xdp.iface.clone(), xdp.queues);
    let address = match xdp.address6 {
        Some(address6) => format!("{} and {address6}", xdp.address),
        None => xdp.address.to_string(),
    };
    let addressing = xdp.addressing.clone();
    if let Addressing::Node { ephemeral } = &addressing {
        xdp_setup::check_node_ports(ephemeral, &ports)?;
    }
    let mut runtime = xdp_setup::bring_up(xdp)?;
    let node_address = matches!(addressing, Addressing::Node { .. });
    if node_address {
        runtime.program.set_listener_ports(&ports)?;
    }
    let stop = xdp_setup::stop_flag()?;
    watch_memory(options.settings.gate.clone())?;
    let ready = Arc::new(AtomicBool::new(false));
    let mut metrics = Vec::new();
    let mut reports = Vec::new();
    let mut handles = Vec::new();
    let workers = runtime.workers.len();
    let draining = Arc::new(std::sync::atomic::AtomicUsize::new(workers));
    let routes = Arc::new(ArcSwap::from_pointee(Routes::default()));
    let route_follower = kernel_routes::follow_routes(&iface, routes.clone(), stop.clone())?;
    // On the node's address the kernel keeps ARP: the stacks take their
    // neighbours from its table.
    let neighbour_table = Arc::new(ArcSwap::from_pointee(NeighbourTable::default()));
    let (neighbour_asks, asked) = mpsc::channel();
    let neighbour_follower = if node_address {
        Some(kernel_neighbours::follow_neighbours(
            &iface,
            neighbour_table.clone(),
            asked,
            stop.clone(),
        )?)
    } else {
        None
    };
    for (worker, parts) in std::mem::take(&mut runtime.workers).into_iter().enumerate() {
        let m = Arc::new(ProxyMetrics::default());
        metrics.push(m.clone());
        let report = SharedReport::default();
        reports.push(report.clone());
        let w = GatewayWorker {
            settings: options.settings.clone(),
            http2: Http2Settings::default(),
            config: published.config.clone(),
            metrics: m,
            stop: stop.clone(),
            draining: draining.clone(),
            drain_timeout: options.drain_timeout,
            idle,
            report,
            routes: routes.clone(),
            legs: xdp_legs,
            neighbours: node_address.then(|| NeighbourFeed {
                table: neighbour_table.clone(),
                asks: neighbour_asks.clone(),
            }),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("rauta-worker-{worker}"))
                .spawn(move || {
                    let (mut device, mut mailbox, stack) = parts.open();
                    let mut stack = Stack::new(
                        stack,
                        &mut device,
                        rauta_netstack::smoltcp::time::Instant::now(),
                    );
                    if let Err(error) = w.run(&mut device, &mut stack, &mut mailbox) {
                        tracing::error!(%error, "worker {worker} cannot start");
                    }
                })
                .context("starting a worker thread")?,
        );
    }
    if let Some(admin) = options.admin {
        let extra_reports = reports.clone();
        admin::start(
            admin,
            AdminState {
                published: published.clone(),
                workers: metrics,
                ready: ready.clone(),
                io: "xdp",
                extra: Some(Arc::new(move || xsk_samples(&extra_reports))),
                controller: source.controller.clone(),
                gate: options.settings.gate.clone(),
            },
        )?;
    }
    ready.store(true, Ordering::Relaxed);
    let steered = match &addressing {
        Addressing::Dedicated => "the address is the gateway's alone".to_owned(),
        Addressing::Node { ephemeral } => format!(
            "node address: XDP takes TCP to these ports and {}-{}, the kernel keeps the rest",
            ephemeral.start(),
            ephemeral.end()
        ),
    };
    println!(
        "rauta run: serving {} on {address} port(s) {ports:?} ({steered}; io xdp on {iface}, {} XDP, {queues} queue(s), {workers} worker(s), UMEM on {}){}. SIGTERM drains and stops.",
        options.source,
        runtime.program.running_mode(),
        runtime.backing,
        options.admin.map(|a| format!("; admin on http://{a}")).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    let mut listener_ports = ListenerPorts::new(published.config.clone());
    wait(&stop, &handles, || {
        // On the node's address the program steers only the listener
        // ports: it follows the configuration's.
        if node_address && listener_ports.changes().is_some() {
            let ports = listener_ports.current();
            match runtime.program.set_listener_ports(ports) {
                Ok(()) => tracing::info!(?ports, "XDP steers the listener ports"),
                Err(error) => tracing::error!(%error, "cannot steer the listener ports"),
            }
        }
    });
    ready.store(false, Ordering::Relaxed);
    source.stop();
    let panicked = handles.into_iter().any(|h| h.join().is_err());
    let _ = route_follower.join();
    if let Some(follower) = neighbour_follower {
        let _ = follower.join();
    }
    runtime.shut_down();
    if panicked {
        bail!("a worker thread panicked; see the log above");
    }
    println!("rauta run: drained and stopped; XDP program detached from {iface}");
    Ok(())
}

/// A per-queue counter: name, help, how to read it.
type XskSeries = (
    &'static str,
    &'static str,
    fn(&rauta_dataplane::QueueReport) -> u64,
);

/// AF_XDP ring counters per queue, for `/metrics`.
fn xsk_samples(reports: &[SharedReport]) -> Vec<ExtraSample> {
    let snapshots: Vec<WorkerReport> = reports
        .iter()
        .map(|r| r.lock().map(|r| r.clone()).unwrap_or_default())
        .collect();
    let queues: Vec<_> = snapshots.iter().flat_map(|w| w.queues.clone()).collect();
    let series: [XskSeries; 6] = [
        (
            "rauta_xsk_frames_in",
            "Frames received on the AF_XDP socket",
            |q| q.traffic.frames_in,
        ),
        (
            "rauta_xsk_frames_out",
            "Frames sent on the AF_XDP socket",
            |q| q.traffic.frames_out,
        ),
        (
            "rauta_xsk_tx_kicks",
            "sendto() wake-ups of the TX ring",
            |q| q.traffic.tx_wakeups,
        ),
        (
            "rauta_xsk_rx_dropped",
            "Frames the kernel dropped for this socket",
            |q| q.xsk.rx_dropped,
        ),
        (
            "rauta_xsk_rx_ring_full",
            "Frames lost to a full RX ring",
            |q| q.xsk.rx_ring_full,
        ),
        (
            "rauta_xsk_fill_ring_empty",
            "Times the fill ring ran dry",
            |q| q.xsk.rx_fill_ring_empty,
        ),
    ];
    let mut samples = Vec::new();
    for (name, help, value) in series {
        for q in &queues {
            samples.push(ExtraSample {
                name,
                help,
                labels: vec![("queue", q.queue_id.to_string())],
                value: value(q),
            });
        }
    }
    let userspace = snapshots.iter().map(|w| w.backend_connects.userspace).sum();
    let kernel = snapshots.iter().map(|w| w.backend_connects.kernel).sum();
    for (leg, value) in [("userspace", userspace), ("kernel", kernel)] {
        samples.push(ExtraSample {
            name: "rauta_backend_connects",
            help: "Backend connections opened, by leg: the userspace stack or a kernel socket",
            labels: vec![("leg", leg.to_owned())],
            value,
        });
    }
    let stacks = |value: fn(&StackCounters) -> u64| -> u64 {
        snapshots.iter().map(|w| value(&w.stack)).sum()
    };
    samples.push(ExtraSample {
        name: "rauta_neighbours_learned",
        help: "Neighbours handed to the userspace stack from the kernel's table or a client's SYN (node address)",
        labels: Vec::new(),
        value: stacks(|s| s.neighbours_learned),
    });
    samples.push(ExtraSample {
        name: "rauta_handoff_dropped",
        help: "Frames for another worker dropped: its inbox, and what this worker keeps for it, were full",
        labels: Vec::new(),
        value: snapshots.iter().map(|w| w.handoff_dropped).sum(),
    });
    samples.push(ExtraSample {
        name: "rauta_syn_half_open_evicted",
        help: "Half-open connections the userspace stack dropped: the oldest for a new SYN past the half-open limit, or any past the half-open timeout (SYN flood defence)",
        labels: Vec::new(),
        value: stacks(|s| s.half_open_evicted),
    });
    samples.push(ExtraSample {
        name: "rauta_syn_dropped",
        help: "SYNs the userspace stack dropped at its connection limit",
        labels: Vec::new(),
        value: stacks(|s| s.syn_dropped),
    });
    samples.push(ExtraSample {
        name: "rauta_neighbours_asked",
        help: "Neighbours the kernel was asked to resolve for the userspace stack (node address)",
        labels: Vec::new(),
        value: stacks(|s| s.neighbours_asked),
    });
    samples
}

/// Until `stop`, or a worker ended (which stops the others): `each` runs
/// every 20 ms meanwhile.
fn wait<T>(stop: &AtomicBool, handles: &[std::thread::JoinHandle<T>], mut each: impl FnMut()) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        each();
        if handles.iter().any(|h| h.is_finished()) {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// `rauta check-config DIR`.
pub fn check_config(dir: PathBuf, selection: Selection) -> Result<()> {
    let compiled = source::load(&dir, &selection).with_context(|| format!("{}", dir.display()))?;
    for warning in &compiled.warnings {
        println!("warning: {warning}");
    }
    for (listener, port) in &compiled.listeners {
        println!("listener {listener} port {port}");
    }
    println!(
        "{}: ok, {} listener(s), {} rule(s)",
        dir.display(),
        compiled.listeners.len(),
        compiled.config.rule_count()
    );
    Ok(())
}
