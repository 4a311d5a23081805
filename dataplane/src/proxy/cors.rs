//! CORS (the HTTPRoute CORS filter, per the Fetch standard's CORS
//! protocol): a preflight is answered by the gateway itself; an actual
//! cross-origin request goes to the backend and its response gets the
//! `Access-Control-*` fields. An origin the rule does not allow gets none
//! of them, and the browser refuses the exchange.

use crate::config::Cors;
use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD,
    ORIGIN, VARY,
};
use http::Method;

/// The request's `Origin`, when `cors` allows it.
pub(super) fn allowed_origin(cors: &Cors, head: &http::request::Parts) -> Option<HeaderValue> {
    let origin = head.headers.get(ORIGIN)?;
    cors.allows(origin.to_str().ok()?).then(|| origin.clone())
}

/// Whether `head` is a CORS preflight: `OPTIONS` asking about a method.
pub(super) fn is_preflight(head: &http::request::Parts) -> bool {
    head.method == Method::OPTIONS
        && head.headers.contains_key(ORIGIN)
        && head.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The fields of the gateway's answer to a preflight: none for an origin
/// not allowed. A `*` in the rule's methods or headers is answered with
/// what the request asked for, which a credentialed request needs and any
/// other accepts.
pub(super) fn preflight_fields(
    cors: &Cors,
    head: &http::request::Parts,
) -> Vec<(&'static str, String)> {
    let Some(origin) = allowed_origin(cors, head) else {
        return Vec::new();
    };
    let asked = |name| {
        head.headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let list = |allowed: &[String], asked: String| {
        if allowed.iter().any(|a| a == "*") {
            asked
        } else {
            allowed.join(", ")
        }
    };
    let mut fields = vec![
        (
            "access-control-allow-origin",
            origin.to_str().unwrap_or_default().to_owned(),
        ),
        ("vary", "Origin".to_owned()),
        (
            "access-control-allow-methods",
            list(&cors.allow_methods, asked(ACCESS_CONTROL_REQUEST_METHOD)),
        ),
        ("access-control-max-age", cors.max_age.to_string()),
    ];
    let headers = list(&cors.allow_headers, asked(ACCESS_CONTROL_REQUEST_HEADERS));
    if !headers.is_empty() {
        fields.push(("access-control-allow-headers", headers));
    }
    if !cors.expose_headers.is_empty() {
        fields.push((
            "access-control-expose-headers",
            cors.expose_headers.join(", "),
        ));
    }
    if cors.allow_credentials {
        fields.push(("access-control-allow-credentials", "true".to_owned()));
    }
    fields
}

/// The fields of an actual cross-origin response, from an allowed
/// `origin`.
pub(super) fn add_response_fields(cors: &Cors, origin: HeaderValue, headers: &mut HeaderMap) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(VARY, HeaderValue::from_static("Origin"));
    if cors.allow_credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&cors.expose_headers.join(", ")) {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, fields: &[(&str, &str)]) -> http::request::Parts {
        let mut request = http::Request::builder().method(method).uri("/");
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn cors() -> Cors {
        Cors {
            allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec!["x-3".into()],
            allow_credentials: true,
            max_age: 3600,
        }
    }

    #[test]
    fn origins_match_exactly_or_by_a_leading_wildcard() {
        let cors = cors();
        assert!(cors.allows("https://www.foo.com"));
        assert!(cors.allows("https://a.b.bar.com"));
        assert!(!cors.allows("http://www.foo.com"), "another scheme");
        assert!(
            !cors.allows("https://bar.com"),
            "the wildcard needs a label"
        );
        assert!(!cors.allows("https://foobar.com"));
    }

    #[test]
    fn a_preflight_is_answered_for_an_allowed_origin_only() {
        let ask = head(
            "OPTIONS",
            &[
                ("origin", "https://x.bar.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-1, x-2"),
            ],
        );
        assert!(is_preflight(&ask));
        let fields = preflight_fields(&cors(), &ask);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("access-control-allow-origin"),
            Some("https://x.bar.com")
        );
        assert_eq!(get("access-control-allow-methods"), Some("GET, OPTIONS"));
        assert_eq!(get("access-control-allow-headers"), Some("x-1, x-2"));
        assert_eq!(get("access-control-allow-credentials"), Some("true"));
        assert_eq!(get("access-control-max-age"), Some("3600"));
        let stranger = head(
            "OPTIONS",
            &[
                ("origin", "https://foobar.com"),
                ("access-control-request-method", "GET"),
            ],
        );
        assert!(preflight_fields(&cors(), &stranger).is_empty());
        assert!(!is_preflight(&head(
            "OPTIONS",
            &[("origin", "https://www.foo.com")]
        )));
    }
}
