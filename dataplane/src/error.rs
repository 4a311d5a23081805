//! Why an exchange failed: one enum of causes, each mapped to the status a
//! client gets (when nothing was sent yet), the metric label it is counted
//! under and whether the request may be sent again.
//!
//! The proxy core never carries a bare status code or a string for a
//! failure: it names the [`Cause`], and everything an operator or a retry
//! needs follows from it, in one place.

/// Which side of the gateway a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Routing, the backend, or the way to it
    /// (`rauta_upstream_errors_total`).
    Upstream,
    /// The client (`rauta_downstream_errors_total`).
    Downstream,
}

/// Whether a failed request may be sent (again) to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// No backend saw the request: any request may go again.
    Safe,
    /// A backend may have seen it: only requests whose method is
    /// idempotent (RFC 9110 §9.2.2) and whose body is still at hand.
    IfIdempotent,
    /// Never: the response has begun, or the client is the cause.
    Never,
}

/// One failure cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Cause {
    #[error("no route matches the request")]
    NoRoute,
    #[error("the matched rule cannot be served")]
    RuleNotServable,
    #[error("the rule's backend does not resolve")]
    BackendNotResolved,
    #[error("the backend has no ready endpoint")]
    NoReadyEndpoint,
    /// Every endpoint the request could use has as many requests in
    /// flight as the circuit breaker allows.
    #[error("the backend's endpoints are at their request limit")]
    Overflow,
    /// No connection could be started here (no local port, no memory).
    #[error("no connection to the backend could be opened")]
    ConnectFailed,
    /// Refused or reset while connecting.
    #[error("the backend refused the connection")]
    ConnectRefused,
    #[error("the backend connection did not open in time")]
    ConnectTimeout,
    #[error("the backend closed or reset before the response head")]
    ResetBeforeResponse,
    #[error("the backend closed or reset during the response body")]
    ResetDuringResponse,
    #[error("the backend's response broke the protocol")]
    UpstreamProtocol,
    #[error("no response head in time after the request ended")]
    ResponseHeadTimeout,
    #[error("the backend's response body stalled")]
    ResponseBodyIdle,
    /// The route's `timeouts.request` passed before the response ended.
    #[error("the route's request timeout passed")]
    RequestTimeout,
    /// The route's `timeouts.backendRequest` passed during an attempt.
    #[error("the route's backend request timeout passed")]
    BackendRequestTimeout,
    /// A malformed or over-limit request; the status says which.
    #[error("bad request ({status})")]
    BadRequest { status: u16 },
    #[error("the request head did not complete in time")]
    RequestHeadTimeout,
    #[error("the request body stalled")]
    RequestBodyIdle,
    #[error("the client stopped reading the response")]
    ClientNotReading,
    #[error("the client went away")]
    ClientGone,
}

impl Cause {
    /// Every cause, in [`Cause::index`] order (a bad request stands for
    /// every status it may carry).
    pub const ALL: [Cause; 20] = [
        Cause::NoRoute,
        Cause::RuleNotServable,
        Cause::BackendNotResolved,
        Cause::NoReadyEndpoint,
        Cause::Overflow,
        Cause::ConnectFailed,
        Cause::ConnectRefused,
        Cause::ConnectTimeout,
        Cause::ResetBeforeResponse,
        Cause::ResetDuringResponse,
        Cause::UpstreamProtocol,
        Cause::ResponseHeadTimeout,
        Cause::ResponseBodyIdle,
        Cause::RequestTimeout,
        Cause::BackendRequestTimeout,
        Cause::BadRequest { status: 400 },
        Cause::RequestHeadTimeout,
        Cause::RequestBodyIdle,
        Cause::ClientNotReading,
        Cause::ClientGone,
    ];

    /// Every label, in [`Cause::index`] order.
    pub const LABELS: [&'static str; 20] = [
        "no_route",
        "rule_not_servable",
        "backend_not_resolved",
        "no_ready_endpoint",
        "overflow",
        "connect_failed",
        "connect_refused",
        "connect_timeout",
        "reset_before_response",
        "reset_during_response",
        "upstream_protocol",
        "response_head_timeout",
        "response_body_idle",
        "request_timeout",
        "backend_request_timeout",
        "bad_request",
        "request_head_timeout",
        "request_body_idle",
        "client_not_reading",
        "client_gone",
    ];

    /// Position in [`Cause::LABELS`] (a counter's slot).
    pub fn index(self) -> usize {
        match self {
            Self::NoRoute => 0,
            Self::RuleNotServable => 1,
            Self::BackendNotResolved => 2,
            Self::NoReadyEndpoint => 3,
            Self::Overflow => 4,
            Self::ConnectFailed => 5,
            Self::ConnectRefused => 6,
            Self::ConnectTimeout => 7,
            Self::ResetBeforeResponse => 8,
            Self::ResetDuringResponse => 9,
            Self::UpstreamProtocol => 10,
            Self::ResponseHeadTimeout => 11,
            Self::ResponseBodyIdle => 12,
            Self::RequestTimeout => 13,
            Self::BackendRequestTimeout => 14,
            Self::BadRequest { .. } => 15,
            Self::RequestHeadTimeout => 16,
            Self::RequestBodyIdle => 17,
            Self::ClientNotReading => 18,
            Self::ClientGone => 19,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// The status a client gets when nothing of the response was sent yet
    /// (after that, the only signal left is to abort the connection or
    /// reset the stream).
    pub fn status(self) -> u16 {
        match self {
            Self::NoRoute => 404,
            Self::RuleNotServable | Self::BackendNotResolved => 500,
            // A reset before any answer is Envoy's 503 ("upstream reset
            // before headers"): the request may be fine elsewhere.
            Self::NoReadyEndpoint
            | Self::Overflow
            | Self::ConnectFailed
            | Self::ResetBeforeResponse => 503,
            Self::ConnectRefused | Self::ResetDuringResponse | Self::UpstreamProtocol => 502,
            Self::ConnectTimeout
            | Self::ResponseHeadTimeout
            | Self::ResponseBodyIdle
            | Self::RequestTimeout
            | Self::BackendRequestTimeout => 504,
            Self::BadRequest { status } => status,
            Self::RequestHeadTimeout | Self::RequestBodyIdle => 408,
            // Nobody is left to read it; nginx's convention for the logs.
            Self::ClientNotReading | Self::ClientGone => 499,
        }
    }

    pub fn side(self) -> Side {
        match self {
            Self::BadRequest { .. }
            | Self::RequestHeadTimeout
            | Self::RequestBodyIdle
            | Self::ClientNotReading
            | Self::ClientGone => Side::Downstream,
            _ => Side::Upstream,
        }
    }

    /// A backend (or the way to it) failed, as opposed to routing finding
    /// none to try.
    pub fn is_backend_failure(self) -> bool {
        !matches!(
            self,
            Self::NoRoute
                | Self::RuleNotServable
                | Self::BackendNotResolved
                | Self::NoReadyEndpoint
                | Self::Overflow
        ) && self.side() == Side::Upstream
    }

    /// May the request be sent to a backend again after this?
    pub fn replay(self) -> Replay {
        match self {
            Self::ConnectFailed | Self::ConnectRefused | Self::ConnectTimeout => Replay::Safe,
            Self::ResetBeforeResponse | Self::BackendRequestTimeout => Replay::IfIdempotent,
            _ => Replay::Never,
        }
    }

    /// Which deadline's expiry this cause is, if any.
    pub fn phase(self) -> Option<Phase> {
        match self {
            Self::ConnectTimeout => Some(Phase::Connect),
            Self::ResponseHeadTimeout => Some(Phase::ResponseHead),
            Self::ResponseBodyIdle | Self::ClientNotReading => Some(Phase::ResponseBody),
            Self::RequestHeadTimeout => Some(Phase::RequestHead),
            Self::RequestBodyIdle => Some(Phase::RequestBody),
            Self::RequestTimeout => Some(Phase::Request),
            Self::BackendRequestTimeout => Some(Phase::BackendRequest),
            _ => None,
        }
    }
}

/// A deadline of an exchange or a connection, by the phase it bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A request head, from its first byte (slowloris).
    RequestHead,
    /// A pause in the request body, also while it is discarded.
    RequestBody,
    /// Opening a backend connection.
    Connect,
    /// From the end of the request to the response head.
    ResponseHead,
    /// A pause in relaying the response: backend silent or client not
    /// reading.
    ResponseBody,
    /// An HTTP/1.1 connection between requests.
    KeepAlive,
    /// An HTTP/2 connection with no open stream.
    Http2Idle,
    /// The HTTP/2 preface and first SETTINGS frame.
    Http2Preface,
    /// A route's `timeouts.request`: the whole exchange.
    Request,
    /// A route's `timeouts.backendRequest`: one attempt.
    BackendRequest,
}

impl Phase {
    pub const LABELS: [&'static str; 10] = [
        "request_head",
        "request_body",
        "connect",
        "response_head",
        "response_body",
        "keep_alive",
        "h2_idle",
        "h2_preface",
        "request",
        "backend_request",
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_own_slot_and_label() {
        for (i, cause) in Cause::ALL.iter().enumerate() {
            assert_eq!(cause.index(), i, "{cause:?}");
        }
        let mut labels = Cause::LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Cause::LABELS.len());
    }

    #[test]
    fn only_requests_no_backend_saw_are_always_replayable() {
        for cause in Cause::ALL {
            let expected = match cause {
                Cause::ConnectFailed | Cause::ConnectRefused | Cause::ConnectTimeout => {
                    Replay::Safe
                }
                Cause::ResetBeforeResponse | Cause::BackendRequestTimeout => Replay::IfIdempotent,
                _ => Replay::Never,
            };
            assert_eq!(cause.replay(), expected, "{cause:?}");
        }
        assert_eq!(Cause::BadRequest { status: 431 }.status(), 431);
        assert_eq!(Cause::BadRequest { status: 431 }.label(), "bad_request");
        assert_eq!(Cause::RequestHeadTimeout.status(), 408);
        assert_eq!(Cause::NoReadyEndpoint.status(), 503);
    }

    #[test]
    fn phases_label_in_order() {
        assert_eq!(Phase::Http2Preface.label(), "h2_preface");
        assert_eq!(Phase::RequestHead.label(), "request_head");
        assert_eq!(Phase::ResponseBody.label(), "response_body");
    }
}
