//! The file source: a directory of manifests, compiled at start and again
//! whenever it changes, published whole.
//!
//! A change that fails to parse or compile is logged with its file, object
//! and field and otherwise ignored: the last good configuration keeps
//! serving. Workers read the published configuration per request, so a
//! swap never interrupts a request in flight.

use crate::compile::{compile, CompileError, Compiled, OnInvalid, Selection};
use crate::manifests::{ManifestError, Manifests};
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rauta_dataplane::config::GatewayConfig;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a directory's configuration was rejected.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// Parse and compile the manifests in `dir`.
pub fn load(dir: &Path, selection: &Selection) -> Result<Compiled, ConfigError> {
    let manifests = Manifests::load_dir(dir)?;
    Ok(compile(&manifests, selection, OnInvalid::RejectAll)?)
}

/// What the admin server shows about the active configuration.
#[derive(Clone, Debug, Default)]
pub struct SourceStatus {
    /// Configurations published so far (1 after the first load).
    pub generation: u64,
    /// The active configuration as JSON.
    pub summary: serde_json::Value,
    /// The last rejected change, if the newest attempt failed.
    pub last_error: Option<String>,
    /// Successful and rejected reloads.
    pub reloads: u64,
    pub rejected: u64,
}

/// The published configuration and its status, shared with workers and the
/// admin server.
#[derive(Clone)]
pub struct Published {
    pub config: Arc<ArcSwap<GatewayConfig>>,
    pub status: Arc<Mutex<SourceStatus>>,
}

impl Published {
    /// Publish a first configuration.
    pub fn new(compiled: Compiled) -> Self {
        let status = SourceStatus {
            generation: 1,
            summary: compiled.summary,
            ..SourceStatus::default()
        };
        Self {
            config: Arc::new(ArcSwap::from_pointee(compiled.config)),
            status: Arc::new(Mutex::new(status)),
        }
    }

    /// Replace the active configuration.
    pub fn publish(&self, compiled: Compiled) -> u64 {
        self.config.store(Arc::new(compiled.config));
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.generation += 1;
        status.reloads += 1;
        status.summary = compiled.summary;
        status.last_error = None;
        status.generation
    }

    /// Record a rejected change (the active configuration stays).
    pub(crate) fn reject(&self, error: &impl std::fmt::Display) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.rejected += 1;
        status.last_error = Some(error.to_string());
    }
}

/// Watches a directory and republishes on change; stops when dropped.
pub struct DirWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Changes closer together than this are compiled once.
const SETTLE: Duration = Duration::from_millis(50);

/// Watch `dir` and publish each good configuration into `published`.
pub fn watch(
    dir: PathBuf,
    selection: Selection,
    published: Published,
) -> notify::Result<DirWatcher> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("rauta-config".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Let a burst of writes (an editor's save, a copy) finish.
                let settle_until = Instant::now() + SETTLE;
                while let Some(left) = settle_until.checked_duration_since(Instant::now()) {
                    if rx.recv_timeout(left).is_err() {
                        break;
                    }
                }
                let started = Instant::now();
                match load(&dir, &selection) {
                    Ok(compiled) => {
                        for warning in &compiled.warnings {
                            tracing::warn!("{warning}");
                        }
                        let rules = compiled.config.rule_count();
                        let generation = published.publish(compiled);
                        tracing::info!(
                            generation,
                            rules,
                            took_us = started.elapsed().as_micros() as u64,
                            "configuration reloaded"
                        );
                    }
                    Err(error) => {
                        published.reject(&error);
                        tracing::error!("configuration change rejected, the last good one keeps serving: {error}");
                    }
                }
            }
        })
        .map_err(notify::Error::io)?;
    Ok(DirWatcher { _watcher: watcher })
}
