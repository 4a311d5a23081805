//! `rauta run`: the gateway. Routes from a directory of manifests, one proxy
//! core under the chosen transport, the admin server beside it.

use crate::admin::{self, AdminState};
use anyhow::{bail, Context, Result};
use rauta_controlplane::source::{self, Published};
use rauta_controlplane::Selection;
use rauta_dataplane::kernel::KernelWorker;
use rauta_dataplane::metrics::ProxyMetrics;
use rauta_dataplane::proxy::ProxySettings;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What both transports share.
pub struct RunOptions {
    pub config_dir: PathBuf,
    pub selection: Selection,
    pub admin: Option<SocketAddr>,
    pub workers: usize,
    pub settings: ProxySettings,
    pub drain_timeout: Duration,
}

/// Load and compile the directory once, printing warnings; the error names
/// file, object and field.
pub fn load_config(options: &RunOptions) -> Result<Published> {
    let compiled = source::load(&options.config_dir, &options.selection)
        .with_context(|| format!("--config {}", options.config_dir.display()))?;
    for warning in &compiled.warnings {
        tracing::warn!("{warning}");
    }
    if compiled.config.ports.is_empty() {
        bail!(
            "--config {}: no HTTP listener of a Gateway with gatewayClassName {:?}{}",
            options.config_dir.display(),
            options.selection.gateway_class,
            if options.selection.gateways.is_empty() {
                String::new()
            } else {
                format!(" among {}", options.selection.gateways.join(", "))
            }
        );
    }
    Ok(Published::new(compiled))
}

/// SIGTERM and SIGINT set the returned flag.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    Ok(stop)
}

/// `rauta run --io kernel`.
pub fn run_kernel(options: RunOptions, address: IpAddr) -> Result<()> {
    let published = load_config(&options)?;
    let ports: Vec<u16> = published.config.load().ports.keys().copied().collect();
    let listen: Vec<SocketAddr> = ports.iter().map(|&p| SocketAddr::new(address, p)).collect();
    // Bind once up front so a taken port fails here, with its address.
    for &address in &listen {
        drop(
            rauta_dataplane::kernel::reuseport_listener(address)
                .with_context(|| format!("listening on {address}"))?,
        );
    }
    let _watcher = source::watch(
        options.config_dir.clone(),
        options.selection.clone(),
        published.clone(),
    )
    .context("watching the config directory")?;
    let stop = stop_flag()?;
    let ready = Arc::new(AtomicBool::new(false));
    let mut metrics = Vec::new();
    let mut handles = Vec::new();
    for worker in 0..options.workers {
        let m = Arc::new(ProxyMetrics::default());
        metrics.push(m.clone());
        let w = KernelWorker {
            listen: listen.clone(),
            settings: options.settings.clone(),
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
            },
        )?;
    }
    ready.store(true, Ordering::Relaxed);
    println!(
        "rauta run: serving {} on {address} port(s) {ports:?} (io kernel, {} worker(s)){}. SIGTERM drains and stops.",
        options.config_dir.display(),
        options.workers,
        options.admin.map(|a| format!("; admin on http://{a}")).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    wait(&stop, &handles);
    ready.store(false, Ordering::Relaxed);
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

/// Until a signal, or a worker ends on its own (an error).
fn wait<T>(stop: &AtomicBool, handles: &[std::thread::JoinHandle<T>]) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
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
