//! The Kubernetes source: reflectors on the Gateway API and the objects it
//! refers to, the same compiler as the file source, status written back by
//! one leader.
//!
//! Every replica watches and serves; only the holder of the Lease writes
//! status. A watch that breaks resumes by itself (`410 Gone` → relist);
//! kube's reflector keeps the old store until the new list is complete, so a
//! relist never shows the compiler an empty cluster.

pub mod lease;
pub mod metrics;
mod status;

use crate::compile::{compile, OnInvalid, Selection};
use crate::manifests::{Manifests, Origin, Sourced};
use crate::policy::BackendTrafficPolicy;
use crate::source::Published;
use crate::verdict::Verdicts;
use crate::Compiled;
use futures::StreamExt;
use gateway_api::experimental::gatewayclasses::GatewayClass;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use lease::LeaseSettings;
use metrics::ControllerMetrics;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// What the controller is and does.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// GatewayClasses with this `spec.controllerName` are ours.
    pub controller_name: String,
    /// `namespace/name` of the Gateways to serve; empty: all of our classes.
    pub gateways: Vec<String>,
    /// Where served Gateways are reachable (the gateway's own address),
    /// written to their `status.addresses`.
    pub addresses: Vec<std::net::IpAddr>,
    /// The gateway's own sockets, which no endpoint may be.
    pub own: crate::OwnSockets,
    pub lease: LeaseSettings,
}

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (neither in a pod nor a kubeconfig): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, or without one the in-cluster configuration
/// (then `KUBECONFIG` and `~/.kube/config`).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| ConnectError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Changes closer together than this are compiled once.
const SETTLE: Duration = Duration::from_millis(5);

/// After a failed status write, try again this much later.
const STATUS_RETRY: Duration = Duration::from_secs(1);

/// The reflectors' stores.
pub(crate) struct Stores {
    pub classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub routes: Store<HttpRoute>,
    pub grants: Store<ReferenceGrant>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub namespaces: Store<Namespace>,
    pub policies: Store<BackendTrafficPolicy>,
}

/// Watches, compiles, publishes, writes status. Dropping it stops every
/// task it started.
pub struct Controller {
    client: Client,
    options: KubeOptions,
    metrics: ControllerMetrics,
    stores: Stores,
    changed: Arc<Notify>,
    tasks: JoinSet<()>,
    /// The inputs of the configuration last published.
    last: Manifests,
    verdicts: Verdicts,
}

impl Controller {
    /// Start the reflectors, wait for each kind's first complete list and
    /// compile it: the configuration to serve first.
    pub async fn start(
        client: Client,
        options: KubeOptions,
        metrics: ControllerMetrics,
    ) -> (Self, Compiled) {
        let changed = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let mut watch = Watch {
            client: &client,
            tasks: &mut tasks,
            changed: &changed,
            metrics: &metrics,
        };
        let stores = Stores {
            classes: watch.kind(),
            gateways: watch.kind(),
            routes: watch.kind(),
            grants: watch.kind(),
            services: watch.kind(),
            slices: watch.kind(),
            namespaces: watch.kind(),
            policies: watch.kind(),
        };
        let s = &stores;
        let _ = futures::join!(
            s.classes.wait_until_ready(),
            s.gateways.wait_until_ready(),
            s.routes.wait_until_ready(),
            s.grants.wait_until_ready(),
            s.services.wait_until_ready(),
            s.slices.wait_until_ready(),
            s.namespaces.wait_until_ready(),
            s.policies.wait_until_ready(),
        );
        let mut controller = Self {
            client,
            options,
            metrics,
            stores,
            changed,
            tasks,
            last: Manifests::default(),
            verdicts: Verdicts::default(),
        };
        let started = Instant::now();
        // An object the compiler cannot take is left out (OnInvalid::Exclude),
        // so only a Gateway with an impossible port fails the whole set, and
        // the API server's validation does not let one through.
        let compiled = match controller.compile_changes() {
            Some(Ok(compiled)) => compiled,
            Some(Err(error)) => {
                tracing::error!(
                    "the cluster's Gateway API objects do not compile, serving none: {error}"
                );
                crate::compile::empty()
            }
            // An empty cluster: nothing to serve yet.
            None => crate::compile::empty(),
        };
        controller.record(
            compiled.config.rule_count(),
            compiled.listeners.len(),
            started,
        );
        (controller, compiled)
    }

    /// Follow the cluster: recompile and publish on every change, and write
    /// status while this replica leads. Until `shutdown` resolves — then a
    /// leader hands the Lease back, so another replica takes over at once —
    /// or until dropped, as in a crash (the Lease then expires).
    pub async fn run(
        mut self,
        published: Published,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let leader = Arc::new(AtomicBool::new(false));
        self.tasks.spawn(lease::campaign(
            self.client.clone(),
            self.options.lease.clone(),
            leader.clone(),
            self.changed.clone(),
            self.metrics.clone(),
        ));
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = &mut shutdown => {
                    // No renewal may follow the release.
                    self.tasks.abort_all();
                    if leader.load(Ordering::SeqCst) {
                        lease::release(&self.client, &self.options.lease).await;
                        self.metrics.leader.set(0);
                    }
                    return;
                }
            }
            tokio::time::sleep(SETTLE).await;
            self.reconcile(&published);
            if leader.load(Ordering::SeqCst) {
                let mut writer = status::StatusWriter {
                    client: &self.client,
                    controller_name: &self.options.controller_name,
                    addresses: &self.options.addresses,
                    written: 0,
                    failed: 0,
                };
                writer.write(&self.stores, &self.verdicts).await;
                let (written, failed) = (writer.written, writer.failed);
                if written > 0 {
                    self.metrics
                        .status_writes
                        .get_or_create(&vec![("result", "written".into())])
                        .inc_by(written as u64);
                }
                if failed > 0 {
                    self.metrics
                        .status_writes
                        .get_or_create(&vec![("result", "failed".into())])
                        .inc_by(failed as u64);
                    let changed = self.changed.clone();
                    self.tasks.spawn(async move {
                        tokio::time::sleep(STATUS_RETRY).await;
                        changed.notify_one();
                    });
                }
            }
        }
    }

    /// Compile and publish the stores if they changed since the last
    /// publication.
    fn reconcile(&mut self, published: &Published) {
        let started = Instant::now();
        match self.compile_changes() {
            None => ControllerMetrics::count(&self.metrics.reconciles, "result", "unchanged"),
            Some(Ok(compiled)) => {
                for warning in &compiled.warnings {
                    tracing::debug!("{warning}");
                }
                let (rules, listeners) = (compiled.config.rule_count(), compiled.listeners.len());
                let generation = published.publish(compiled);
                self.record(rules, listeners, started);
                tracing::info!(
                    generation,
                    rules,
                    took_us = started.elapsed().as_micros() as u64,
                    "configuration from the cluster published"
                );
            }
            Some(Err(error)) => {
                ControllerMetrics::count(&self.metrics.reconciles, "result", "rejected");
                published.reject(&error);
                tracing::error!(
                    "cluster change rejected, the last good configuration keeps serving: {error}"
                );
            }
        }
    }

    /// Compile the stores when they differ from the input of the last good
    /// compilation (`None`: they do not), keeping its verdicts for status.
    fn compile_changes(&mut self) -> Option<Result<Compiled, crate::CompileError>> {
        let (manifests, selection) = self.snapshot();
        if manifests == self.last {
            return None;
        }
        let compiled = compile(&manifests, &selection, OnInvalid::Exclude);
        if let Ok(compiled) = &compiled {
            self.verdicts = compiled.verdicts.clone();
            self.last = manifests;
        }
        Some(compiled)
    }

    /// A table made visible: its size and the time since `started` (compile
    /// and swap).
    fn record(&self, rules: usize, listeners: usize, started: Instant) {
        ControllerMetrics::count(&self.metrics.reconciles, "result", "published");
        self.metrics.table_rules.set(rules as i64);
        self.metrics.table_listeners.set(listeners as i64);
        self.metrics
            .swap_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// The stores as the compiler's input (without status and bookkeeping
    /// fields, so a status write alone changes nothing), and the Gateways
    /// to serve: those of our GatewayClasses.
    fn snapshot(&self) -> (Manifests, Selection) {
        let s = &self.stores;
        let mut gateway_classes: Vec<String> = s
            .classes
            .state()
            .iter()
            .filter(|c| c.spec.controller_name == self.options.controller_name)
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        gateway_classes.sort();
        let manifests = Manifests {
            namespaces: sourced(&s.namespaces, |n| n.status = None),
            gateways: sourced(&s.gateways, |g| g.status = None),
            routes: sourced(&s.routes, |r| r.status = None),
            grants: sourced(&s.grants, |_| {}),
            services: sourced(&s.services, |svc| svc.status = None),
            endpoint_slices: sourced(&s.slices, |_| {}),
            backend_policies: sourced(&s.policies, |p| p.status = None),
        };
        let selection = Selection {
            gateway_classes,
            gateways: self.options.gateways.clone(),
            own: self.options.own.clone(),
        };
        (manifests, selection)
    }
}

/// A store's objects in name order, stripped by `strip` and of the
/// bookkeeping every write changes.
fn sourced<K>(store: &Store<K>, strip: fn(&mut K)) -> Vec<Sourced<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut objects: Vec<Sourced<K>> = store
        .state()
        .iter()
        .map(|o| {
            let mut object = K::clone(o);
            strip(&mut object);
            let meta = object.meta_mut();
            meta.resource_version = None;
            meta.managed_fields = None;
            Sourced {
                origin: Origin::Api,
                object,
            }
        })
        .collect();
    objects.sort_by(|a, b| {
        let key = |o: &Sourced<K>| {
            (
                o.object.meta().namespace.clone(),
                o.object.meta().name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    objects
}

/// Starts one reflector per kind.
struct Watch<'a> {
    client: &'a Client,
    tasks: &'a mut JoinSet<()>,
    changed: &'a Arc<Notify>,
    metrics: &'a ControllerMetrics,
}

impl Watch<'_> {
    fn kind<K>(&mut self) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (reader, writer) = reflector::store();
        let api: Api<K> = Api::all(self.client.clone());
        let kind = K::kind(&()).to_string();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let changed = self.changed.clone();
        let metrics = self.metrics.clone();
        self.tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut listed = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => {
                        if listed {
                            tracing::info!(kind, "watch restarted: relisting");
                            ControllerMetrics::count(&metrics.watch_restarts, "kind", &kind);
                        }
                        listed = true;
                    }
                    Ok(watcher::Event::InitApply(_)) => {}
                    Ok(
                        watcher::Event::Apply(_)
                        | watcher::Event::Delete(_)
                        | watcher::Event::InitDone,
                    ) => changed.notify_one(),
                    Err(error) => {
                        tracing::warn!(kind, %error, "watch failed; resuming");
                        ControllerMetrics::count(&metrics.watch_errors, "kind", &kind);
                    }
                }
            }
        });
        reader
    }
}
