//! Taking the client's credentials out of a request bound for a target whose key Sluice
//! holds: every header an SDK puts a key or token in, and the query parameters some APIs
//! take a key in. What the client sent is never forwarded next to (or instead of) the real
//! key, so a workload cannot spend someone else's key nor learn whether its own works.
use http::{HeaderMap, HeaderName, Uri, header, uri::PathAndQuery};

static CLIENT_HEADERS: [HeaderName; 12] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("ocp-apim-subscription-key"),
    header::COOKIE,
    // The client must not choose which organization or project the agent's key bills.
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    // Nor which virtual host behind the upstream receives the key: `Host` is set from the
    // upstream Sluice dials (`upstream::http`), and forwarding hints are dropped.
    header::HOST,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("forwarded"),
];

/// Query parameter names (compared case-insensitively, after percent-decoding) that carry
/// keys or tokens: `key` (Google-style), `api_key` and spellings of it, OAuth's tokens.
const QUERY_KEYS: [&str; 6] = [
    "key",
    "api_key",
    "api-key",
    "apikey",
    "access_token",
    "id_token",
];

/// Removes every client credential header and also `extra` (the headers the target's keys
/// go in, when they are others).
pub fn headers(h: &mut HeaderMap, extra: &[HeaderName]) {
    for name in CLIENT_HEADERS.iter().chain(extra) {
        h.remove(name);
    }
}

/// Rewrites `uri` without credential query parameters; the other parameters keep their
/// order and their exact encoding. Returns whether anything was removed.
pub fn query(uri: &mut Uri) -> bool {
    let Some(q) = uri.query() else {
        return false;
    };
    if !q.split('&').any(is_credential) {
        return false;
    }
    let kept: Vec<&str> = q.split('&').filter(|p| !is_credential(p)).collect();
    let path = uri.path();
    let pq = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    // The pieces came out of a valid URI, so this parses; if it ever did not, the whole
    // query goes rather than any chance of the key.
    let pq = PathAndQuery::try_from(pq)
        .or_else(|_| PathAndQuery::try_from(path))
        .unwrap_or_else(|_| PathAndQuery::from_static("/"));
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq.clone());
    *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from(pq));
    true
}

fn is_credential(pair: &str) -> bool {
    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    let name = name.trim();
    QUERY_KEYS.iter().any(|k| name.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> (String, bool) {
        let mut u: Uri = s.parse().expect("uri");
        let changed = query(&mut u);
        (u.to_string(), changed)
    }

    #[test]
    fn credential_parameters_go_and_the_rest_stay_exactly() {
        assert_eq!(
            q("/v1/models?key=sk-1&b=2"),
            ("/v1/models?b=2".into(), true)
        );
        assert_eq!(
            q("/v1/x?a=%20x&API_KEY=k&c&Key=z&d=1"),
            ("/v1/x?a=%20x&c&d=1".into(), true)
        );
        assert_eq!(q("/v1/x?%6Bey=sk-encoded"), ("/v1/x".into(), true));
        assert_eq!(
            q("/v1/x?api-key=1&apikey=2&access_token=3"),
            ("/v1/x".into(), true)
        );
        assert_eq!(
            q("/v1/x?keys=1&monkey=2"),
            ("/v1/x?keys=1&monkey=2".into(), false)
        );
        assert_eq!(q("/v1/x"), ("/v1/x".into(), false));
        assert_eq!(
            q("http://models.local:8000/v1/x?key=1&m=a"),
            ("http://models.local:8000/v1/x?m=a".into(), true)
        );
    }

    #[test]
    fn every_client_credential_header_goes() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer sk-client"),
            ("authorization", "Basic Zm9vOmJhcg=="),
            ("x-api-key", "sk-ant"),
            ("api-key", "azure"),
            ("x-goog-api-key", "g"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "session=1"),
            ("openai-organization", "org-other"),
            ("host", "attacker-app.example"),
            ("x-forwarded-host", "attacker-app.example"),
            ("x-custom-key", "k"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().expect("value"));
        }
        headers(&mut h, &[HeaderName::from_static("x-custom-key")]);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));
    }
}
