//! Status written back, the way Gateway API users read it: GatewayClass
//! `Accepted`; Gateway `Accepted`/`Programmed` with each listener's
//! `Accepted`, `ResolvedRefs`, `Conflicted`, `Programmed`, `supportedKinds` and
//! `attachedRoutes`; HTTPRoute parent entries (ours only, other controllers'
//! kept) with `Accepted` and `ResolvedRefs`; BackendTrafficPolicy
//! `Accepted`. Every condition carries the
//! generation it was computed for (`observedGeneration`), and keeps its
//! `lastTransitionTime` while its status stays the same.
//!
//! Only what differs from the object's current status is written, as a JSON
//! merge patch on the status subresource.

use super::Stores;
use crate::policy::{BackendTrafficPolicy, BackendTrafficPolicyStatus};
use crate::verdict::{Check, ObjectRef, Verdicts};
use gateway_api::experimental::gatewayclasses::{GatewayClass, GatewayClassStatus};
use gateway_api::experimental::gateways::{
    Gateway, GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds,
};
use gateway_api::experimental::httproutes::{HttpRoute, HttpRouteStatus, HttpRouteStatusParents};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde::Serialize;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Writes what differs; counts what it wrote and what failed.
pub(crate) struct StatusWriter<'a> {
    pub client: &'a Client,
    pub controller_name: &'a str,
    pub addresses: &'a [std::net::IpAddr],
    pub written: usize,
    pub failed: usize,
}

impl StatusWriter<'_> {
    /// Bring every status we own in line with `verdicts`.
    pub async fn write(&mut self, stores: &Stores, verdicts: &Verdicts) {
        for class in stores.classes.state() {
            if class.spec.controller_name != self.controller_name {
                continue;
            }
            let previous = class.status.as_ref().and_then(|s| s.conditions.clone());
            let previous = previous.unwrap_or_default();
            let generation = class.metadata.generation;
            let desired = GatewayClassStatus {
                conditions: Some(vec![condition(
                    "Accepted",
                    &Check::yes("Accepted", "handled by Rauta"),
                    generation,
                    &previous,
                )]),
                ..class.status.clone().unwrap_or_default()
            };
            if class.status.as_ref() != Some(&desired) {
                let api: Api<GatewayClass> = Api::all(self.client.clone());
                let name = class.metadata.name.clone().unwrap_or_default();
                self.patch(&api, &name, &desired).await;
            }
        }

        for verdict in &verdicts.gateways {
            let Some(gateway) = find(&stores.gateways, &verdict.object) else {
                continue;
            };
            let current = gateway.status.clone().unwrap_or_default();
            let previous = current.conditions.clone().unwrap_or_default();
            let generation = verdict.object.generation;
            let listeners = verdict
                .listeners
                .iter()
                .map(|l| {
                    let previous = current
                        .listeners
                        .iter()
                        .flatten()
                        .find(|p| p.name == l.name)
                        .map(|p| p.conditions.clone())
                        .unwrap_or_default();
                    GatewayStatusListeners {
                        attached_routes: l.attached_routes,
                        conditions: [
                            ("Accepted", &l.accepted),
                            ("ResolvedRefs", &l.resolved_refs),
                            ("Conflicted", &l.conflicted),
                            ("Programmed", &l.programmed),
                        ]
                        .iter()
                        .map(|(t, c)| condition(t, c, generation, &previous))
                        .collect(),
                        name: l.name.clone(),
                        supported_kinds: Some(
                            l.supported_kinds
                                .iter()
                                .map(|kind| GatewayStatusListenersSupportedKinds {
                                    group: Some(GATEWAY_GROUP.into()),
                                    kind: (*kind).into(),
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            let addresses = if self.addresses.is_empty() {
                current.addresses.clone()
            } else {
                Some(
                    self.addresses
                        .iter()
                        .map(|ip| GatewayStatusAddresses {
                            r#type: Some("IPAddress".into()),
                            value: ip.to_string(),
                        })
                        .collect(),
                )
            };
            let desired = GatewayStatus {
                addresses,
                conditions: Some(vec![
                    condition("Accepted", &verdict.accepted, generation, &previous),
                    condition("Programmed", &verdict.programmed, generation, &previous),
                ]),
                listeners: Some(listeners),
                ..current.clone()
            };
            if gateway.status.as_ref() != Some(&desired) {
                let api: Api<Gateway> =
                    Api::namespaced(self.client.clone(), &verdict.object.namespace);
                self.patch(&api, &verdict.object.name, &desired).await;
            }
        }

        for verdict in &verdicts.routes {
            let Some(route) = find(&stores.routes, &verdict.object) else {
                continue;
            };
            let current = route.status.clone().unwrap_or_default();
            let generation = verdict.object.generation;
            // Other controllers' entries stay as they are.
            let mut parents: Vec<HttpRouteStatusParents> = current
                .parents
                .iter()
                .filter(|p| p.controller_name != self.controller_name)
                .cloned()
                .collect();
            for parent in &verdict.parents {
                let Ok(parent_ref) =
                    serde_json::to_value(&parent.parent).and_then(serde_json::from_value)
                else {
                    continue;
                };
                let previous = current
                    .parents
                    .iter()
                    .find(|p| {
                        p.controller_name == self.controller_name && p.parent_ref == parent_ref
                    })
                    .map(|p| p.conditions.clone())
                    .unwrap_or_default();
                parents.push(HttpRouteStatusParents {
                    conditions: vec![
                        condition("Accepted", &parent.accepted, generation, &previous),
                        condition("ResolvedRefs", &parent.resolved_refs, generation, &previous),
                    ],
                    controller_name: self.controller_name.to_owned(),
                    parent_ref,
                });
            }
            let desired = HttpRouteStatus { parents };
            let unchanged = match &route.status {
                Some(status) => *status == desired,
                None => desired.parents.is_empty(),
            };
            if !unchanged {
                let api: Api<HttpRoute> =
                    Api::namespaced(self.client.clone(), &verdict.object.namespace);
                self.patch(&api, &verdict.object.name, &desired).await;
            }
        }

        for verdict in &verdicts.policies {
            let Some(policy) = find(&stores.policies, &verdict.object) else {
                continue;
            };
            let previous = policy
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            let desired = BackendTrafficPolicyStatus {
                conditions: vec![condition(
                    "Accepted",
                    &verdict.accepted,
                    verdict.object.generation,
                    &previous,
                )],
            };
            if policy.status.as_ref() != Some(&desired) {
                let api: Api<BackendTrafficPolicy> =
                    Api::namespaced(self.client.clone(), &verdict.object.namespace);
                self.patch(&api, &verdict.object.name, &desired).await;
            }
        }
    }

    async fn patch<K, S>(&mut self, api: &Api<K>, name: &str, status: &S)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        S: Serialize,
    {
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.written += 1,
            Err(error) => {
                self.failed += 1;
                tracing::warn!(name, %error, "status write failed; retried on the next reconcile");
            }
        }
    }
}

fn find<K>(
    store: &kube::runtime::reflector::Store<K>,
    object: &ObjectRef,
) -> Option<std::sync::Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&kube::runtime::reflector::ObjectRef::new(&object.name).within(&object.namespace))
}

/// A condition of `type_` from `check`, keeping the previous transition time
/// while its status is unchanged.
fn condition(
    type_: &str,
    check: &Check,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if check.ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        last_transition_time,
        message: check.message.clone(),
        observed_generation: generation,
        reason: check.reason.into(),
        status: status.into(),
        type_: type_.into(),
    }
}
