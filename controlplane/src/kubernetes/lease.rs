//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: the holder renews `renewTime`; a replica takes the Lease over
//! when it has seen the same record unchanged for a whole
//! `leaseDurationSeconds` (its own clock, so skew between nodes does not
//! matter). Updates carry the `resourceVersion` read, so two replicas racing
//! for one Lease cannot both win: the API server answers the loser 409.

use super::metrics::ControllerMetrics;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Which Lease, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's holder identity (its pod name).
    pub identity: String,
    /// How long a Lease not renewed stays with its holder.
    pub duration: Duration,
    /// How often the holder renews and the others look.
    pub renew_every: Duration,
}

impl LeaseSettings {
    /// The defaults of client-go's leader election: 15 s, renewed every 2 s.
    pub fn new(namespace: String, identity: String) -> Self {
        Self {
            namespace,
            name: "rauta-gateway-controller".into(),
            identity,
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// The record last read and when it last changed, by our clock.
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    since: Instant,
}

/// Take part in the election until the task is dropped: `leader` says
/// whether this replica holds the Lease; `became_leader` is notified when it
/// starts to.
pub async fn campaign(
    client: Client,
    settings: LeaseSettings,
    leader: Arc<AtomicBool>,
    became_leader: Arc<Notify>,
    metrics: ControllerMetrics,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observed = Observed {
        record: None,
        since: Instant::now(),
    };
    let mut last_renewal: Option<Instant> = None;
    loop {
        let holds = match try_acquire_or_renew(&api, &settings, &mut observed).await {
            Ok(holds) => holds,
            Err(error) => {
                tracing::warn!(lease = %settings.name, %error, "leader election: the Lease could not be read or written");
                // Keep leading only while the Lease cannot have expired for
                // the others yet.
                last_renewal.is_some_and(|at| at.elapsed() < settings.duration * 2 / 3)
            }
        };
        if holds {
            last_renewal = Some(Instant::now());
        }
        let was = leader.swap(holds, Ordering::SeqCst);
        if holds && !was {
            tracing::info!(identity = %settings.identity, lease = %settings.name, "became the leader: writing status");
            became_leader.notify_one();
        } else if was && !holds {
            tracing::warn!(identity = %settings.identity, lease = %settings.name, "lost the leader Lease: status is left to the new leader");
            last_renewal = None;
        }
        metrics.leader.set(i64::from(holds));
        tokio::time::sleep(settings.renew_every).await;
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let duration_seconds = settings.duration.as_secs().max(1) as i32;
    let Some(lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return lost_race_is_false(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = Some((spec.holder_identity.clone(), spec.renew_time.clone()));
    if observed.record != record {
        observed.record = record;
        observed.since = Instant::now();
    }
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    let mine = holder == settings.identity;
    let their_duration = Duration::from_secs(
        spec.lease_duration_seconds
            .unwrap_or(duration_seconds)
            .max(1) as u64,
    );
    let expired = holder.is_empty() || observed.since.elapsed() >= their_duration;
    if !mine && !expired {
        return Ok(false);
    }
    let spec = LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(duration_seconds),
        acquire_time: if mine {
            spec.acquire_time
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
        ..spec
    };
    let updated = Lease {
        metadata: lease.metadata,
        spec: Some(spec),
    };
    lost_race_is_false(
        api.replace(&settings.name, &PostParams::default(), &updated)
            .await,
    )
}

/// Give the Lease up if this replica holds it (holder cleared, duration
/// 1 s), so another replica takes it at its next look instead of after
/// expiry: client-go's ReleaseOnCancel, for rolling updates.
pub async fn release(client: &Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let lease = match api.get_opt(&settings.name).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(lease = %settings.name, %error, "the leader Lease could not be read to release it; it will expire");
            return;
        }
    };
    let spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return;
    }
    let released = Lease {
        metadata: lease.metadata,
        spec: Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..spec
        }),
    };
    match api
        .replace(&settings.name, &PostParams::default(), &released)
        .await
    {
        Ok(_) => tracing::info!(lease = %settings.name, "released the leader Lease"),
        Err(error) => {
            tracing::warn!(lease = %settings.name, %error, "the leader Lease could not be released; it will expire")
        }
    }
}

/// A write another replica won (409 Conflict, or the Lease created
/// meanwhile) means we do not hold it; other errors are errors.
fn lost_race_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}
