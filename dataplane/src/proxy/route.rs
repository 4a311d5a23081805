//! Route match: the listener for the port and Host, the rule for the
//! request by the Gateway API's precedence, and what the rule says to do —
//! redirect (answered here), refuse, or forward. A pure function of the
//! head and the table in force.

use super::cors;
use crate::config::{GatewayConfig, Redirect, RuleAction};
use crate::error::Cause;
use crate::routes::{host_without_port, PathMatch, RequestView};
use http::Uri;
use std::sync::Arc;

/// The request's path and query, split once.
pub(super) struct Target<'h> {
    pub path: &'h str,
    pub query: &'h str,
}

impl<'h> Target<'h> {
    pub fn of(uri: &'h Uri) -> Self {
        Self {
            path: uri.path(),
            query: uri.query().unwrap_or(""),
        }
    }

    /// `path` with the query, if any, after it.
    pub fn with_path(&self, path: String) -> String {
        let mut out = path;
        if !self.query.is_empty() {
            out.push('?');
            out.push_str(self.query);
        }
        out
    }
}

/// What the route phase decided.
pub(super) enum Routed<'a> {
    /// Answered here: the rule's RequestRedirect, or a CORS preflight.
    Answer {
        rule: &'a Arc<RuleAction>,
        status: u16,
        fields: Vec<(&'static str, String)>,
    },
    /// Answered here with an error.
    Refused {
        rule: Option<&'a Arc<RuleAction>>,
        cause: Cause,
    },
    Forward(Matched<'a>),
}

/// A rule that forwards, and what of the request it matched.
pub(super) struct Matched<'a> {
    pub action: &'a Arc<RuleAction>,
    /// The PathPrefix the rule matched (ReplacePrefixMatch rewrites it).
    pub prefix: Option<&'a str>,
}

/// The rule for `head`, arriving on `local_port` with Host `host`.
pub(super) fn route<'a>(
    config: &'a GatewayConfig,
    head: &http::request::Parts,
    host: &str,
    local_port: u16,
) -> Routed<'a> {
    let target = Target::of(&head.uri);
    let query = parse_query(target.query);
    let view = RequestView {
        host,
        method: head.method.as_str(),
        path: target.path,
        query: &query,
        headers: &head.headers,
    };
    let hit = config
        .listener(local_port, host)
        .and_then(|l| l.routes.find(&view));
    let Some(hit) = hit else {
        return Routed::Refused {
            rule: None,
            cause: Cause::NoRoute,
        };
    };
    let action: &'a Arc<RuleAction> = hit.action;
    let prefix = match &hit.matched.path {
        PathMatch::Prefix(p) => Some(p.as_str()),
        _ => None,
    };
    if let Some(redirect) = &action.redirect {
        return Routed::Answer {
            rule: action,
            status: redirect.status,
            fields: vec![(
                "location",
                location(redirect, &target, host, local_port, prefix),
            )],
        };
    }
    if let Some(cors) = action.cors.as_ref().filter(|_| cors::is_preflight(head)) {
        return Routed::Answer {
            rule: action,
            status: 200,
            fields: cors::preflight_fields(cors, head),
        };
    }
    if let Some(why) = &action.invalid {
        tracing::debug!(route = %action.route, why, "rule cannot be served");
        return Routed::Refused {
            rule: Some(action),
            cause: Cause::RuleNotServable,
        };
    }
    Routed::Forward(Matched { action, prefix })
}

/// Where a RequestRedirect sends a request for `target` that came with
/// Host `host` to `local_port` (`prefix`: the PathPrefix its rule
/// matched).
pub(super) fn location(
    redirect: &Redirect,
    target: &Target,
    host: &str,
    local_port: u16,
    prefix: Option<&str>,
) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or("http");
    let hostname = redirect
        .hostname
        .as_deref()
        .unwrap_or_else(|| host_without_port(host));
    let port = match (redirect.port, &redirect.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(local_port),
    };
    let port = port.filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = redirect
        .path
        .as_ref()
        .map_or_else(|| target.path.to_owned(), |m| m.apply(target.path, prefix));
    let mut location = format!("{scheme}://{hostname}");
    if let Some(port) = port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&target.with_path(path));
    location
}

/// Query parameters in order, percent-decoded (`+` stays as sent: the
/// Gateway API compares values as sent).
pub(super) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
