//! Who a request is from when it carries a token: OpenID Connect JWTs, verified against the
//! keys of the issuers in `identity.issuers` (docs/configuration.md, "Identity").
//!
//! The request path pays for this only when issuers are configured: the context then holds
//! an `Identity`, and `authenticate` costs a header scan, a blake3 hash and one cache lookup
//! for a token seen before. A token seen for the first time is checked in full (`verify`);
//! keys come from the issuer's JWKS (`keys`), fetched with the bypass mark so the agent
//! never intercepts itself.
//!
//! Nothing here keeps, logs or returns the token: refusals carry a `Rejection`, whose text
//! is fixed, and the cache is keyed by the token's hash.
use std::{sync::Arc, time::Duration};

mod cache;
pub mod claims;
mod credential;
mod fetch;
mod keys;
mod settings;
mod verify;

pub use credential::TokenHeaders;
pub use settings::{IssuerSettings, Requirement, Settings};

/// The identity a verified token carries: what policy, records and refusals see.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// The issuer as configured (equal to the token's `iss`).
    pub issuer: Arc<str>,
    pub subject: String,
    pub groups: Vec<String>,
    /// The verified token's payload, for `match.identity.claims` (never the token itself;
    /// records show only issuer, subject and groups).
    pub claims: Arc<serde_json::Value>,
}

/// Why a request's credential was refused. The text is fixed: it never repeats any part of
/// the token (a `kid` or an `iss` is the caller's text too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "the request carries two different credentials (Authorization, x-api-key, api-key); send one"
    )]
    Conflicting,
    #[error(
        "a token in the query string is refused (URLs are logged and cached); send it in the Authorization header"
    )]
    InQuery,
    #[error(
        "this target requires a token (Authorization: Bearer, x-api-key or api-key) and the request has none"
    )]
    Missing,
    #[error("the token is larger than identity.max_token_bytes")]
    Oversized,
    #[error("the token is encrypted (JWE); only signed tokens (JWS) are accepted")]
    Encrypted,
    #[error("the token is not a well-formed signed JWT")]
    Malformed,
    #[error("the token has no signature")]
    Unsigned,
    #[error("the token's algorithm is not accepted for its issuer")]
    Algorithm,
    #[error(
        "the token names a key URL (jku, x5u) or embeds a key (jwk); keys come only from the issuer's configured JWKS"
    )]
    HeaderKey,
    #[error("the token has a critical header extension (crit) this agent does not understand")]
    Critical,
    #[error("the token's issuer is not configured")]
    Issuer,
    #[error("the token's audience is not accepted for its issuer")]
    Audience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token is missing a required claim (exp, iss, aud, or the subject claim)")]
    MissingClaim,
    #[error("the token's signing key is not among its issuer's keys")]
    UnknownKey,
    #[error("the token's issuer's keys could not be fetched")]
    KeysUnavailable,
    #[error("the token's signature does not verify")]
    Signature,
}

/// Everything needed to authenticate requests; built once at start, shared by every runtime.
pub struct Identity {
    issuers: Vec<Arc<keys::Issuer>>,
    cache: cache::Cache,
    max_token_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("identity.issuers[{index}].hmac_secret_file: cannot read {path}: {source}")]
    Secret {
        index: usize,
        path: String,
        source: std::io::Error,
    },
    #[error("identity.issuers[{index}].hmac_secret_file: {path} is empty")]
    EmptySecret { index: usize, path: String },
    #[error("identity.issuers[{index}].{source}")]
    Tls {
        index: usize,
        source: crate::tls::Error,
    },
}

impl Identity {
    /// `None` when no issuer is configured: requests then pay nothing for identity.
    /// `mark` and `timeout` are the upstream sockets' bypass mark and connect timeout.
    pub fn new(s: &Settings, mark: u32, timeout: Duration) -> Result<Option<Arc<Self>>, Error> {
        if s.issuers.is_empty() {
            return Ok(None);
        }
        let mut issuers = Vec::with_capacity(s.issuers.len());
        for (index, i) in s.issuers.iter().enumerate() {
            let secret = match &i.hmac_secret_file {
                None => None,
                Some(path) => {
                    let bytes = std::fs::read(path).map_err(|source| Error::Secret {
                        index,
                        path: path.display().to_string(),
                        source,
                    })?;
                    let trimmed = bytes.trim_ascii();
                    if trimmed.is_empty() {
                        return Err(Error::EmptySecret {
                            index,
                            path: path.display().to_string(),
                        });
                    }
                    Some(jsonwebtoken::DecodingKey::from_secret(trimmed))
                }
            };
            // https fetches verify against the issuer's `ca_file`, else the system's roots;
            // without either (no roots on this host) only the https fetches fail, each with
            // the reason.
            let tls = match &i.ca_file {
                Some(ca) => Ok(Arc::new(
                    crate::tls::client_config(Some(ca), None, &[b"http/1.1"])
                        .map_err(|source| Error::Tls { index, source })?,
                )),
                None => crate::tls::client_config(None, None, &[b"http/1.1"])
                    .map(Arc::new)
                    .map_err(|e| e.to_string()),
            };
            issuers.push(Arc::new(keys::Issuer::new(
                i.clone(),
                secret,
                fetch::Fetcher { mark, timeout, tls },
            )));
        }
        Ok(Some(Arc::new(Identity {
            issuers,
            cache: cache::Cache::new(s.cache_entries),
            max_token_bytes: s.max_token_bytes,
        })))
    }

    /// Fetches every issuer's keys once, in the background, so the first requests find them.
    pub fn prefetch(self: &Arc<Self>) {
        for i in &self.issuers {
            let i = i.clone();
            tokio::spawn(async move { i.prefetch().await });
        }
    }

    /// The request's principal and the headers its token came in (to strip before
    /// forwarding): `None` when it carries no token, a `Rejection` when it carries one that
    /// does not verify (or credentials in a form that is refused).
    pub async fn authenticate(
        &self,
        parts: &http::request::Parts,
    ) -> Result<Option<(Arc<Principal>, TokenHeaders)>, Rejection> {
        let Some((token, carried)) = credential::find(parts)? else {
            return Ok(None);
        };
        Ok(Some((self.verify_token(token).await?, carried)))
    }

    /// Checks one token, from the cache when it was verified before.
    pub async fn verify_token(&self, token: &str) -> Result<Arc<Principal>, Rejection> {
        if token.len() > self.max_token_bytes {
            return Err(Rejection::Oversized);
        }
        let key = cache::key(token);
        let now = verify::now();
        if let Some(p) = self.cache.get(&key, now) {
            return Ok(p);
        }
        let (principal, exp) = verify::verify(token, &self.issuers, now).await?;
        let principal = Arc::new(principal);
        self.cache.insert(key, principal.clone(), exp, now);
        Ok(principal)
    }
}

#[cfg(test)]
mod tests;
