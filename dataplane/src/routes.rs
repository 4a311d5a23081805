//! The route table workers look requests up in: Gateway API HTTPRoute
//! matching with the specification's precedence, compiled once into an
//! immutable, indexed table (the control plane builds it; workers only read).
//!
//! Precedence (Gateway API, HTTPRoute `rules` and `hostnames`):
//! 1. the most specific matching hostname: an exact name before wildcards,
//!    longer wildcard suffixes before shorter, routes without hostnames last;
//! 2. within a hostname, rules ordered by: Exact path before prefix (and
//!    regular expression, ours: after prefixes), longer prefixes first, a
//!    method match, more header matches, more query matches;
//! 3. ties: the oldest route, then `namespace/name` alphabetically, then the
//!    order of rules and matches within the route.
//!
//! The action a match leads to is the table's type parameter: the control
//! plane decides what it holds (backends, filters).

use regex::Regex;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

/// How a path is matched.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The whole path, byte for byte.
    Exact(String),
    /// Whole path elements: `/foo` matches `/foo`, `/foo/` and `/foo/bar`,
    /// not `/foobar`.
    Prefix(String),
    /// The whole path matches the expression.
    RegularExpression(Regex),
}

/// How a header or query value is matched.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    RegularExpression(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::RegularExpression(re) => re.is_match(value),
        }
    }
}

/// One `HTTPRouteMatch`: every condition must hold.
#[derive(Clone, Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Header names are case-insensitive (stored lowercase).
    pub headers: Vec<(String, ValueMatch)>,
    /// Query parameter names are case-sensitive.
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<String>,
}

impl Default for RouteMatch {
    /// The Gateway API default: path prefix `/`.
    fn default() -> Self {
        Self {
            path: PathMatch::Prefix("/".to_owned()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }
}

/// What a request looks like to the table.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The Host header (or :authority), port allowed.
    pub host: &'a str,
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    /// Query parameters in order (decoded by the caller).
    pub query: &'a [(String, String)],
    /// Header fields.
    pub headers: &'a http::HeaderMap,
}

impl RouteMatch {
    fn matches(&self, request: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => request.path == p,
            PathMatch::Prefix(p) => prefix_matches(p, request.path),
            PathMatch::RegularExpression(re) => full_match(re, request.path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == request.method)
            && self.headers.iter().all(|(name, value)| {
                // The first field of the name decides (repeated fields are
                // implementation-specific in the spec).
                request
                    .headers
                    .get(name.to_ascii_lowercase().as_str())
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| value.matches(v))
            })
            && self.query.iter().all(|(name, value)| {
                request
                    .query
                    .iter()
                    .find(|(n, _)| n == name)
                    .is_some_and(|(_, v)| value.matches(v))
            })
    }

    /// Sort key within a hostname: smaller sorts first.
    fn precedence(&self) -> MatchPrecedence {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Prefix(p) => (1, p.trim_end_matches('/').len()),
            PathMatch::RegularExpression(re) => (2, re.as_str().len()),
        };
        (
            kind,
            Reverse(len),
            self.method.is_none(),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
        )
    }
}

fn full_match(re: &Regex, text: &str) -> bool {
    re.find(text)
        .is_some_and(|m| m.start() == 0 && m.end() == text.len())
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path.starts_with('/');
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One route as the compiler hands it over.
#[derive(Clone, Debug)]
pub struct Route<A> {
    /// `namespace/name`, for the tie-break and for diagnostics.
    pub name: String,
    /// Creation time (seconds since the epoch): older wins ties.
    pub created: i64,
    /// Hostnames (`*.example.com` allowed); empty: any host.
    pub hostnames: Vec<String>,
    /// Rules in order: their matches (empty: the default match) and action.
    pub rules: Vec<(Vec<RouteMatch>, A)>,
}

/// A match's own precedence: path kind (exact, prefix, regex), path length
/// (longer first), method (present first), header and query counts (more
/// first).
type MatchPrecedence = (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>);

/// The full order: the match's precedence, then route age, route name, rule
/// index and match index.
type EntryKey = (MatchPrecedence, i64, String, usize, usize);

struct Entry<A> {
    matcher: RouteMatch,
    action: Arc<A>,
    key: EntryKey,
}

/// The immutable table: requests in, the winning rule's action out.
pub struct RouteTable<A> {
    exact: HashMap<String, Vec<Entry<A>>>,
    /// Wildcard suffixes (`.example.com`), longest first.
    wildcards: Vec<(String, Vec<Entry<A>>)>,
    any: Vec<Entry<A>>,
}

impl<A> RouteTable<A> {
    /// Every rule's action (once per match).
    pub fn actions(&self) -> impl Iterator<Item = &A> {
        self.exact
            .values()
            .flatten()
            .chain(self.wildcards.iter().flat_map(|(_, e)| e))
            .chain(&self.any)
            .map(|e| &*e.action)
    }

    /// Compile `routes`.
    pub fn new(routes: Vec<Route<A>>) -> Self {
        let mut exact: HashMap<String, Vec<Entry<A>>> = HashMap::new();
        let mut wildcards: HashMap<String, Vec<Entry<A>>> = HashMap::new();
        let mut any = Vec::new();
        for route in routes {
            let entries_for = |bucket: &mut Vec<Entry<A>>, rules: &[(Vec<RouteMatch>, Arc<A>)]| {
                for (rule_index, (matches, action)) in rules.iter().enumerate() {
                    let defaults = [RouteMatch::default()];
                    let matches = if matches.is_empty() {
                        &defaults[..]
                    } else {
                        matches
                    };
                    for (match_index, matcher) in matches.iter().enumerate() {
                        bucket.push(Entry {
                            key: (
                                matcher.precedence(),
                                route.created,
                                route.name.clone(),
                                rule_index,
                                match_index,
                            ),
                            matcher: matcher.clone(),
                            action: action.clone(),
                        });
                    }
                }
            };
            let rules: Vec<(Vec<RouteMatch>, Arc<A>)> = route
                .rules
                .into_iter()
                .map(|(m, a)| (m, Arc::new(a)))
                .collect();
            if route.hostnames.is_empty() {
                entries_for(&mut any, &rules);
            }
            for host in &route.hostnames {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => {
                        entries_for(wildcards.entry(suffix.to_owned()).or_default(), &rules)
                    }
                    None => entries_for(exact.entry(host).or_default(), &rules),
                }
            }
        }
        let sort = |entries: &mut Vec<Entry<A>>| entries.sort_by(|a, b| a.key.cmp(&b.key));
        exact.values_mut().for_each(sort);
        sort(&mut any);
        let mut wildcards: Vec<(String, Vec<Entry<A>>)> = wildcards.into_iter().collect();
        wildcards.iter_mut().for_each(|(_, e)| sort(e));
        wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Self {
            exact,
            wildcards,
            any,
        }
    }

    /// The action of the rule that wins `request`, if any matches.
    pub fn lookup<'t>(&'t self, request: &RequestView<'_>) -> Option<&'t Arc<A>> {
        self.find(request).map(|hit| hit.action)
    }

    /// The winning rule: its action and the match that selected it (path
    /// rewrites of a prefix need to know which prefix matched).
    pub fn find<'t>(&'t self, request: &RequestView<'_>) -> Option<Hit<'t, A>> {
        let host = host_without_port(request.host).to_ascii_lowercase();
        let first = |entries: &'t [Entry<A>]| -> Option<Hit<'t, A>> {
            entries
                .iter()
                .find(|e| e.matcher.matches(request))
                .map(|e| Hit {
                    matched: &e.matcher,
                    action: &e.action,
                })
        };
        if let Some(found) = self.exact.get(&host).and_then(|e| first(e)) {
            return Some(found);
        }
        for (suffix, entries) in &self.wildcards {
            // `*.example.com` matches `a.example.com` and `a.b.example.com`,
            // not `example.com`.
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(found) = first(entries) {
                    return Some(found);
                }
            }
        }
        first(&self.any)
    }

    /// Rules in the table (one per match).
    pub fn len(&self) -> usize {
        self.exact.values().map(Vec::len).sum::<usize>()
            + self.wildcards.iter().map(|(_, e)| e.len()).sum::<usize>()
            + self.any.len()
    }

    /// Whether no rule is in the table.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A lookup's result.
pub struct Hit<'t, A> {
    /// The match that selected the rule.
    pub matched: &'t RouteMatch,
    pub action: &'t Arc<A>,
}

/// The host part of a Host header value (port and IPv6 brackets removed).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(host: &'a str, method: &'a str, path: &'a str) -> RequestView<'a> {
        RequestView {
            host,
            method,
            path,
            query: &[],
            headers: Box::leak(Box::default()),
        }
    }

    fn path(kind: &str, p: &str) -> RouteMatch {
        RouteMatch {
            path: match kind {
                "exact" => PathMatch::Exact(p.to_owned()),
                "prefix" => PathMatch::Prefix(p.to_owned()),
                _ => PathMatch::RegularExpression(Regex::new(p).unwrap()),
            },
            ..RouteMatch::default()
        }
    }

    fn route(
        name: &str,
        created: i64,
        hosts: &[&str],
        rules: Vec<(Vec<RouteMatch>, &'static str)>,
    ) -> Route<&'static str> {
        Route {
            name: name.to_owned(),
            created,
            hostnames: hosts.iter().map(|h| h.to_string()).collect(),
            rules,
        }
    }

    #[test]
    fn prefixes_match_whole_path_elements() {
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(prefix_matches("/foo/", "/foo"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn exact_beats_longer_prefix_beats_shorter_prefix() {
        let table = RouteTable::new(vec![route(
            "ns/a",
            1,
            &[],
            vec![
                (vec![path("prefix", "/")], "root"),
                (vec![path("prefix", "/v1")], "v1"),
                (vec![path("exact", "/v1/exact")], "exact"),
                (vec![path("regex", "/v1/[0-9]+")], "regex"),
            ],
        )]);
        let hit = |p| table.lookup(&view("x", "GET", p)).map(|a| **a);
        assert_eq!(hit("/v1/exact"), Some("exact"));
        assert_eq!(hit("/v1/other"), Some("v1"));
        assert_eq!(hit("/v1/123"), Some("v1"), "prefix before regex");
        assert_eq!(hit("/v10"), Some("root"));
    }

    #[test]
    fn method_headers_and_query_break_ties_then_age_then_name() {
        let with_method = RouteMatch {
            method: Some("POST".into()),
            ..RouteMatch::default()
        };
        let with_header = RouteMatch {
            headers: vec![("version".into(), ValueMatch::Exact("2".into()))],
            ..RouteMatch::default()
        };
        let table = RouteTable::new(vec![
            route(
                "ns/b",
                5,
                &[],
                vec![(vec![RouteMatch::default()], "b-newer")],
            ),
            route(
                "ns/a",
                5,
                &[],
                vec![(vec![RouteMatch::default()], "a-same-age")],
            ),
            route(
                "ns/c",
                3,
                &[],
                vec![(vec![with_header], "header"), (vec![with_method], "method")],
            ),
        ]);
        let mut headers = http::HeaderMap::new();
        headers.insert("version", http::HeaderValue::from_static("2"));
        let empty = http::HeaderMap::new();
        let mut request = view("x", "POST", "/");
        assert_eq!(table.lookup(&request).map(|a| **a), Some("method"));
        request.method = "GET";
        request.headers = &headers;
        assert_eq!(table.lookup(&request).map(|a| **a), Some("header"));
        request.headers = &empty;
        // ns/a and ns/b are the same age: the name decides.
        assert_eq!(table.lookup(&request).map(|a| **a), Some("a-same-age"));
    }

    #[test]
    fn hostnames_exact_then_longest_wildcard_then_any() {
        let table = RouteTable::new(vec![
            route("ns/any", 1, &[], vec![(vec![], "any")]),
            route("ns/wild", 1, &["*.example.com"], vec![(vec![], "wild")]),
            route(
                "ns/wild2",
                1,
                &["*.foo.example.com"],
                vec![(vec![], "wild2")],
            ),
            route(
                "ns/exact",
                1,
                &["a.example.com"],
                vec![(vec![path("exact", "/only")], "exact")],
            ),
        ]);
        let hit = |h, p| table.lookup(&view(h, "GET", p)).map(|a| **a);
        assert_eq!(hit("a.example.com:8080", "/only"), Some("exact"));
        assert_eq!(
            hit("A.Example.com", "/other"),
            Some("wild"),
            "falls through to the wildcard"
        );
        assert_eq!(hit("x.foo.example.com", "/"), Some("wild2"));
        assert_eq!(
            hit("example.com", "/"),
            Some("any"),
            "a wildcard needs a label"
        );
        assert_eq!(hit("[::1]:80", "/"), Some("any"));
    }

    #[test]
    fn query_and_regex_values() {
        let m = RouteMatch {
            query: vec![(
                "animal".into(),
                ValueMatch::RegularExpression(Regex::new("^(whale|dolphin)$").unwrap()),
            )],
            ..RouteMatch::default()
        };
        let table = RouteTable::new(vec![route("ns/q", 1, &[], vec![(vec![m], "sea")])]);
        let query = [("animal".to_string(), "whale".to_string())];
        let mut request = view("x", "GET", "/");
        request.query = &query;
        assert_eq!(table.lookup(&request).map(|a| **a), Some("sea"));
        let query = [("Animal".to_string(), "whale".to_string())];
        request.query = &query;
        assert_eq!(
            table.lookup(&request),
            None,
            "query names are case-sensitive"
        );
    }
}
