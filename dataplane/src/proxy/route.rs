//! Route match, and the start of a forwarded request: the listener and
//! rule for the head, a redirect or a refusal answered here, otherwise the
//! backend (upstream selection), the head it gets (filters) and a
//! connection (connect or pool checkout).

use super::{
    backend_request_head, BackendLeg, BodyReader, BodyWriter, InFlight, Proxy, ResponseState,
    Transport,
};
use crate::config::RuleAction;
use crate::error::Cause;
use crate::http1::{self, BodyFraming, ChunkedDecoder, RequestHead};
use crate::routes::{host_without_port, PathMatch, RequestView};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

impl<C: Copy + Eq + Hash + Debug> Proxy<C> {
    pub(super) fn start_request<T: Transport<Conn = C>>(
        &mut self,
        io: &mut T,
        id: usize,
        head: RequestHead,
        now: Instant,
    ) {
        let exchange = &mut self.exchanges[id];
        if !std::mem::replace(&mut exchange.served, true) && http1::is_h2c_upgrade(&head) {
            self.hand_off(id, Some(head));
            return;
        }
        let config = self.config.load();
        let exchange = &mut self.exchanges[id];
        let (path, query) = head
            .target
            .split_once('?')
            .map_or((head.target.as_str(), ""), |(p, q)| (p, q));
        let host = head
            .values("host")
            .next()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        let headers: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let query_pairs = parse_query(query);
        let view = RequestView {
            host: &host,
            method: &head.method,
            path,
            query: &query_pairs,
            headers: &headers,
        };
        let keep_alive = head.keep_alive && !exchange.closing;
        let body = match head.framing {
            BodyFraming::Empty => BodyReader::Done,
            BodyFraming::Length(n) => BodyReader::Length(n),
            BodyFraming::Chunked => {
                BodyReader::Chunked(ChunkedDecoder::new(self.settings.limits.clone()))
            }
        };
        let mut request = InFlight {
            method: head.method.clone(),
            version: head.version,
            keep_alive,
            started: now,
            body,
            body_writer: BodyWriter::Raw,
            response_headers: Vec::new(),
            backend: None,
            response: ResponseState::Head,
            replay: None,
            body_moved: now,
            request_end: None,
            route: None,
            backend_name: None,
        };
        exchange.head_started = None;
        if !keep_alive {
            exchange.closing = true;
        }
        let listener = config.listener(exchange.local_port, &host);
        let hit = listener.and_then(|l| l.routes.find(&view));
        let Some(hit) = hit else {
            exchange.request = Some(request);
            self.refuse(id, Cause::NoRoute);
            return;
        };
        let action: &RuleAction = hit.action;
        request.route = Some(action.route.clone());
        let matched_prefix = match &hit.matched.path {
            PathMatch::Prefix(p) => Some(p.as_str()),
            _ => None,
        };
        if let Some(redirect) = &action.redirect {
            let scheme = redirect.scheme.as_deref().unwrap_or("http");
            let hostname = redirect
                .hostname
                .clone()
                .unwrap_or_else(|| host_without_port(&host).to_owned());
            let port = match (redirect.port, &redirect.scheme) {
                (Some(p), _) => Some(p),
                (None, Some(_)) => None,
                (None, None) => Some(exchange.local_port),
            };
            let port = port.filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
            let new_path = redirect
                .path
                .as_ref()
                .map_or_else(|| path.to_owned(), |m| m.apply(path, matched_prefix));
            let mut location = format!("{scheme}://{hostname}");
            if let Some(port) = port {
                location.push_str(&format!(":{port}"));
            }
            location.push_str(&new_path);
            if !query.is_empty() {
                location.push('?');
                location.push_str(query);
            }
            request
                .response_headers
                .push(action.response_headers.clone());
            exchange.request = Some(request);
            self.local_response(id, redirect.status, "", &[("Location", location)]);
            return;
        }
        if let Some(why) = &action.invalid {
            tracing::debug!(route = %action.route, why, "rule cannot be served");
            exchange.request = Some(request);
            self.refuse(id, Cause::RuleNotServable);
            return;
        }
        let turn = self.cursors.turn(&config, &action.backends);
        let Some(backend) = action.backends.pick(turn) else {
            exchange.request = Some(request);
            self.refuse(id, Cause::BackendNotResolved);
            return;
        };
        if backend.invalid.is_some() {
            exchange.request = Some(request);
            self.refuse(id, Cause::BackendNotResolved);
            return;
        }
        let turn = self.cursors.turn(&config, backend);
        let Some(endpoint) = backend.endpoint(turn) else {
            exchange.request = Some(request);
            self.refuse(id, Cause::NoReadyEndpoint);
            return;
        };
        request
            .response_headers
            .push(action.response_headers.clone());
        request
            .response_headers
            .push(backend.response_headers.clone());
        request.backend_name = Some(backend.name.clone());

        // The request as the backend sees it.
        let (mut target, mut host_out) = (head.target.clone(), host.clone());
        if let Some(rewrite) = &action.rewrite {
            if let Some(h) = &rewrite.hostname {
                host_out = h.clone();
            }
            if let Some(m) = &rewrite.path {
                target = m.apply(path, matched_prefix);
                if !query.is_empty() {
                    target.push('?');
                    target.push_str(query);
                }
            }
        }
        let out_head =
            backend_request_head(&head, &target, &host_out, exchange.peer, action, backend);
        request.body_writer = match head.framing {
            BodyFraming::Chunked => BodyWriter::Chunked,
            _ => BodyWriter::Raw,
        };
        if head.expect_continue && !request.body.is_done() {
            exchange
                .tx
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let no_body = request.body.is_done();
        exchange.request = Some(request);
        let protocol = backend.protocol;
        drop(config);
        match self.backend_conn(io, id, endpoint, protocol) {
            Some((conn, reused)) => {
                let request = self.exchanges[id].request.as_mut().expect("just set");
                if reused && no_body {
                    request.replay = Some(out_head.clone());
                }
                request.backend = Some(BackendLeg {
                    conn,
                    endpoint,
                    protocol,
                    reused,
                    rx: Vec::new(),
                    tx: out_head,
                    eof: false,
                    answered: false,
                    opened: now,
                    connected: reused,
                    heard: now,
                    sent: now,
                });
                self.metrics.backend_request();
            }
            None => self.refuse(id, Cause::ConnectFailed),
        }
    }
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
