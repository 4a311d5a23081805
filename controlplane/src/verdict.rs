//! What the compiler decided about each Gateway API object it serves: the
//! facts that Gateway and HTTPRoute status conditions report.
//!
//! Reasons are the specification's own (`gateway.networking.k8s.io/v1`
//! condition reasons), so a user reads the same words as with any other
//! implementation.

use gateway_api::experimental::httproutes::HttpRouteParentRefs;

/// One condition's outcome: True or False, with its reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Check {
    /// A condition that holds.
    pub fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// Which object a verdict is about, and the generation it was made for
/// (written back as `observedGeneration`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
}

/// A served Gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayVerdict {
    pub object: ObjectRef,
    pub accepted: Check,
    pub programmed: Check,
    pub listeners: Vec<ListenerVerdict>,
}

/// One listener of a served Gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerVerdict {
    pub name: String,
    pub accepted: Check,
    pub resolved_refs: Check,
    pub conflicted: Check,
    pub programmed: Check,
    /// Route kinds the listener takes (`HTTPRoute` or none).
    pub supported_kinds: Vec<&'static str>,
    pub attached_routes: i32,
}

impl ListenerVerdict {
    /// Whether routes may attach: accepted and not in conflict.
    pub fn serves(&self) -> bool {
        self.accepted.ok && !self.conflicted.ok
    }
}

/// An HTTPRoute's standing with each served Gateway it names.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteVerdict {
    pub object: ObjectRef,
    /// One entry per parentRef naming a served Gateway; empty when the route
    /// names none (any status we wrote before is then withdrawn).
    pub parents: Vec<ParentVerdict>,
}

/// An HTTPRoute's standing with one parent.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentVerdict {
    /// The parentRef as the route wrote it.
    pub parent: HttpRouteParentRefs,
    pub accepted: Check,
    pub resolved_refs: Check,
}

/// A BackendTrafficPolicy's standing: `Accepted` (GEP-713's reasons:
/// Accepted, Invalid, Conflicted, TargetNotFound).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyVerdict {
    pub object: ObjectRef,
    pub accepted: Check,
}

/// Every verdict of one compilation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdicts {
    pub gateways: Vec<GatewayVerdict>,
    pub routes: Vec<RouteVerdict>,
    pub policies: Vec<PolicyVerdict>,
}
