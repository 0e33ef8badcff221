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

/// The token the request carries, if any.
pub fn find(parts: &Parts) -> Result<Option<&str>, Rejection> {
    if let Some(q) = parts.uri.query()
        && query_has_token(q)
    {
        return Err(Rejection::InQuery);
    }
    let mut found: Option<&str> = None;
    let bearer = parts
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| {
            v.to_str().ok().and_then(|s| {
                let (scheme, rest) = s.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
        });
    let keys = API_KEY_HEADERS
        .iter()
        .flat_map(|h| parts.headers.get_all(h).iter())
        .map(|v| v.to_str().ok().map(str::trim));
    for value in bearer.chain(keys) {
        // An unreadable value or another Authorization scheme is no credential of ours.
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        match found {
            Some(f) if f != v => return Err(Rejection::Conflicting),
            _ => found = Some(v),
        }
    }
    Ok(found.filter(|v| looks_like_token(v)))
}

/// Removes the headers that carried a token (`find`): once verified, it is Sluice's to judge
/// by and no business of the model server's, and forwarded it could be replayed by anyone
/// who can read that server's logs or traffic. Provider keys beside it stay.
pub fn strip_token(headers: &mut http::HeaderMap) {
    let carries = |v: &http::HeaderValue, bearer: bool| {
        v.to_str().ok().is_some_and(|s| {
            let s = s.trim();
            let value = if bearer {
                match s.split_once(' ') {
                    Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                    _ => return false,
                }
            } else {
                s
            };
            looks_like_token(value)
        })
    };
    if headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .any(|v| carries(v, true))
    {
        headers.remove(http::header::AUTHORIZATION);
    }
    for h in &API_KEY_HEADERS {
        if headers.get_all(h).iter().any(|v| carries(v, false)) {
            headers.remove(h);
        }
    }
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

    #[test]
    fn a_verified_token_is_stripped_and_a_provider_key_stays() {
        let mut p = parts(
            "/v1/models",
            &[
                ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"),
                ("x-api-key", "sk-provider-key"),
                ("content-type", "application/json"),
            ],
        );
        strip_token(&mut p.headers);
        assert!(!p.headers.contains_key("authorization"));
        assert_eq!(p.headers["x-api-key"], "sk-provider-key");
        let mut p = parts(
            "/",
            &[("api-key", "eyJx.y.z"), ("authorization", "Bearer sk-x")],
        );
        strip_token(&mut p.headers);
        assert!(!p.headers.contains_key("api-key"));
        assert_eq!(p.headers["authorization"], "Bearer sk-x");
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
            assert_eq!(find(&parts("/v1", &[h])), Ok(Some(t)), "{h:?}");
        }
        // The same token twice is one credential.
        assert_eq!(
            find(&parts(
                "/v1",
                &[("authorization", &bearer), ("x-api-key", t)]
            )),
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
