//! Where a request's token is: the header the client's SDK already uses for a provider key
//! (`Authorization: Bearer` for OpenAI-style SDKs and Ollama, `x-api-key` for Anthropic's,
//! `api-key` for Azure-style ones), so an unmodified client can send a token in its place.
//!
//! A value that is not shaped like a JWT or JWE (`eyJ…`, base64 of `{"`) is not a token: it is
//! a provider key and goes on as before, and the request is its workload's. Two different
//! credentials in one request are refused (which one would the policy have meant?), and so
//! is a token in the query string, where proxies and access logs keep it.
use http::{HeaderName, request::Parts};

use super::Rejection;

static API_KEY_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];
/// Query parameters that carry OAuth tokens by convention (RFC 6750 §2.3).
const QUERY_TOKEN_NAMES: [&str; 2] = ["access_token", "id_token"];

/// The headers a request's token came in (`find`), so that forwarding drops them without
/// reading the value again: scanning the headers a second time (the token's bytes checked
/// as visible ASCII, the scheme split off, three header lookups) cost ~1,200 instructions per
/// request, as much as the rest of the token's path outside blake3 (callgrind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenHeaders {
    authorization: bool,
    /// Per `API_KEY_HEADERS`.
    api_keys: [bool; 2],
}

impl TokenHeaders {
    /// Removes the headers that carried the token: once verified, it is Sluice's to judge by
    /// and no business of the model server's, and forwarded it could be replayed by anyone
    /// who can read that server's logs or traffic. Other headers (another `Authorization`
    /// scheme beside an `api-key` token) stay.
    pub fn strip(self, headers: &mut http::HeaderMap) {
        if self.authorization {
            headers.remove(http::header::AUTHORIZATION);
        }
        for (h, carried) in API_KEY_HEADERS.iter().zip(self.api_keys) {
            if carried {
                headers.remove(h);
            }
        }
    }
}

/// The token the request carries, if any, and the headers it came in. Every credential value
/// of a request with a token is that token (two different ones are refused), so the headers
/// that held a credential are exactly those that held the token.
pub fn find(parts: &Parts) -> Result<Option<(&str, TokenHeaders)>, Rejection> {
    if let Some(q) = parts.uri.query()
        && query_has_token(q)
    {
        return Err(Rejection::InQuery);
    }
    let mut found: Option<&str> = None;
    let mut carried = TokenHeaders::default();
    let bearer = parts
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| {
            let value = v.to_str().ok().and_then(|s| {
                let (scheme, rest) = s.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
            (None, value)
        });
    let keys = API_KEY_HEADERS.iter().enumerate().flat_map(|(i, h)| {
        parts
            .headers
            .get_all(h)
            .iter()
            .map(move |v| (Some(i), v.to_str().ok().map(str::trim)))
    });
    for (header, value) in bearer.chain(keys) {
        // An unreadable value or another Authorization scheme is no credential of ours.
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        match found {
            Some(f) if f != v => return Err(Rejection::Conflicting),
            _ => found = Some(v),
        }
        match header {
            None => carried.authorization = true,
            Some(i) => carried.api_keys[i] = true,
        }
    }
    Ok(found.filter(|v| looks_like_token(v)).map(|t| (t, carried)))
}

/// JWS and JWE compact forms start with a base64url JSON object.
fn looks_like_token(v: &str) -> bool {
    v.starts_with("eyJ")
}

fn query_has_token(q: &str) -> bool {
    q.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        QUERY_TOKEN_NAMES
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
            || looks_like_token(value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `find`, then strip what it found, as the send stage does.
    fn strip_token(p: &mut Parts) {
        if let Ok(Some((_, carried))) = find(p) {
            carried.strip(&mut p.headers);
        }
    }

    #[test]
    fn a_verified_token_is_stripped_and_other_headers_stay() {
        let mut p = parts(
            "/v1/models",
            &[
                ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"),
                ("x-api-key", "sk-provider-key"),
                ("content-type", "application/json"),
            ],
        );
        // A provider key beside a token is two credentials: refused, never forwarded.
        assert_eq!(find(&p), Err(Rejection::Conflicting));
        p.headers.remove("x-api-key");
        p.headers.insert("x-other", "kept".parse().expect("value"));
        strip_token(&mut p);
        assert!(!p.headers.contains_key("authorization"));
        assert_eq!(p.headers["x-other"], "kept");
        let p = parts(
            "/",
            &[("api-key", "eyJx.y.z"), ("authorization", "Bearer sk-x")],
        );
        assert_eq!(find(&p), Err(Rejection::Conflicting));
        let mut p = parts(
            "/",
            &[
                ("api-key", "eyJx.y.z"),
                ("authorization", "Basic c2stcHJvdmlkZXI="),
            ],
        );
        strip_token(&mut p);
        assert!(!p.headers.contains_key("api-key"));
        assert_eq!(p.headers["authorization"], "Basic c2stcHJvdmlkZXI=");
        // The same token in two headers: both go.
        let t = "eyJhbGciOiJSUzI1NiJ9.e30.sig";
        let mut p = parts(
            "/",
            &[("authorization", &format!("Bearer {t}")), ("x-api-key", t)],
        );
        strip_token(&mut p);
        assert!(!p.headers.contains_key("authorization"));
        assert!(!p.headers.contains_key("x-api-key"));
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn tokens_come_from_the_sdk_headers() {
        let t = "eyJhbGciOiJSUzI1NiJ9.e30.sig";
        let bearer = format!("Bearer {t}");
        for h in [
            ("authorization", bearer.as_str()),
            ("x-api-key", t),
            ("api-key", t),
        ] {
            assert_eq!(
                find(&parts("/v1", &[h])).map(|f| f.map(|f| f.0)),
                Ok(Some(t)),
                "{h:?}"
            );
        }
        // The same token twice is one credential.
        assert_eq!(
            find(&parts(
                "/v1",
                &[("authorization", &bearer), ("x-api-key", t)]
            ))
            .map(|f| f.map(|f| f.0)),
            Ok(Some(t))
        );
        // A provider key is not a token; nor is another scheme.
        assert_eq!(
            find(&parts("/v1", &[("authorization", "Bearer sk-abc")])),
            Ok(None)
        );
        assert_eq!(
            find(&parts("/v1", &[("authorization", "Basic eyJhYmM=")])),
            Ok(None)
        );
        assert_eq!(find(&parts("/v1", &[])), Ok(None));
    }

    #[test]
    fn conflicts_and_query_tokens_are_refused() {
        let t = "eyJhbGciOiJSUzI1NiJ9.e30.sig";
        let bearer = format!("Bearer {t}");
        assert_eq!(
            find(&parts(
                "/v1",
                &[("authorization", &bearer), ("x-api-key", "sk-x")]
            )),
            Err(Rejection::Conflicting)
        );
        assert_eq!(
            find(&parts("/v1", &[("api-key", t), ("api-key", "eyJother")])),
            Err(Rejection::Conflicting)
        );
        for q in [
            "/v1?access_token=abc",
            "/v1?a=1&ID_TOKEN=x",
            "/v1?key=eyJhbGciOiJub25lIn0",
            "/v1?key=%65yJhbGci",
        ] {
            assert_eq!(find(&parts(q, &[])), Err(Rejection::InQuery), "{q}");
        }
        assert_eq!(find(&parts("/v1?stream=true&n=1", &[])), Ok(None));
    }
}
