//! The controller's own metrics, served on the admin server's `/metrics`
//! beside the data path's.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Counters and gauges of reconciles, watches, the published table and the
/// leader election. Cheap to clone: every metric is shared.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    /// Reconciles by result: `published`, `unchanged` or `rejected`.
    pub reconciles: Family<Labels, Counter>,
    /// Relists after the first (a broken watch, 410 Gone), by kind.
    pub watch_restarts: Family<Labels, Counter>,
    /// Watch and list errors, by kind.
    pub watch_errors: Family<Labels, Counter>,
    /// Rules in the published table.
    pub table_rules: Gauge,
    /// Listeners (ports × hostnames) in the published table.
    pub table_listeners: Gauge,
    /// Seconds from a snapshot of the watched objects to the new table being
    /// visible to workers (compile and swap).
    pub swap_seconds: Histogram,
    /// Status writes by result: `written` or `failed`.
    pub status_writes: Family<Labels, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            watch_restarts: Family::default(),
            watch_errors: Family::default(),
            table_rules: Gauge::default(),
            table_listeners: Gauge::default(),
            swap_seconds: Histogram::new(exponential_buckets(0.000_05, 4.0, 10)),
            status_writes: Family::default(),
            leader: Gauge::default(),
        }
    }
}

impl ControllerMetrics {
    /// Add every metric to `registry`, prefixed `rauta_controller_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rauta_controller");
        r.register(
            "reconciles",
            "Reconciles of the watched objects, by result",
            self.reconciles.clone(),
        );
        r.register(
            "watch_restarts",
            "Relists after a watch broke (410 Gone or an error), by kind",
            self.watch_restarts.clone(),
        );
        r.register(
            "watch_errors",
            "Watch and list errors, by kind",
            self.watch_errors.clone(),
        );
        r.register(
            "table_rules",
            "Rules in the published route table",
            self.table_rules.clone(),
        );
        r.register(
            "table_listeners",
            "Listeners in the published route table",
            self.table_listeners.clone(),
        );
        r.register(
            "swap_seconds",
            "Compile and swap of a new route table, seconds",
            self.swap_seconds.clone(),
        );
        r.register(
            "status_writes",
            "Status subresource writes, by result",
            self.status_writes.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
    }

    pub(crate) fn count(family: &Family<Labels, Counter>, key: &'static str, value: &str) {
        family.get_or_create(&vec![(key, value.to_owned())]).inc();
    }
}
