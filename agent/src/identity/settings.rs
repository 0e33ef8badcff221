//! `identity:` in the agent's configuration. Checked when the configuration is loaded: an
//! issuer that could never verify a token (no audience, `none`, HMAC without a secret, a
//! URL the agent cannot reach safely yet) stops the start with the setting's name.
use std::{path::PathBuf, time::Duration};

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Token issuers; empty (the default) turns token checking off.
    #[serde(default)]
    pub issuers: Vec<IssuerSettings>,
    /// Larger tokens are refused before any parsing.
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    /// Verified tokens remembered (by hash) until they expire.
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            issuers: Vec::new(),
            max_token_bytes: default_max_token(),
            cache_entries: default_cache(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// Exactly the token's `iss`.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted `alg` values.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Where the keys are; without it, `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Claim holding the subject: a dotted path (`sub`, `preferred_username`) or a JSON
    /// pointer (`/kubernetes.io/serviceaccount/name`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim holding the groups (`groups`, `realm_access.roles`, `cognito:groups`); a list
    /// of strings or one string.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(rename = "leeway_secs", default = "default_leeway", with = "secs")]
    pub leeway: Duration,
    /// Keys older than this are fetched again before use.
    #[serde(
        rename = "jwks_max_age_secs",
        default = "default_max_age",
        with = "secs"
    )]
    pub jwks_max_age: Duration,
    /// At most one key fetch per this interval, however many unknown `kid`s arrive.
    #[serde(
        rename = "jwks_min_refresh_secs",
        default = "default_min_refresh",
        with = "secs"
    )]
    pub jwks_min_refresh: Duration,
    /// A file holding the shared secret for HS256/384/512; only with it are HMAC algorithms
    /// accepted.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM CA certificates an https issuer's (and key set's) certificate must lead to;
    /// without it, the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

// Hand-written so the secret's path is the most a debug print shows (the secret itself is
// never held here).
impl std::fmt::Debug for IssuerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerSettings")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("jwks_uri", &self.jwks_uri)
            .field("hmac", &self.hmac_secret_file.is_some())
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// Whether a target's requests must carry a token.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    /// A request without a token goes on as its workload; one with a bad token is refused.
    #[default]
    Optional,
    /// A request without a valid token is refused (401).
    Required,
}

impl IssuerSettings {
    /// The accepted algorithms, parsed (validated at load, so none fails here).
    pub fn parsed_algorithms(&self) -> Vec<Algorithm> {
        self.algorithms
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The discovery document's address.
    pub fn discovery_uri(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

impl Settings {
    /// `Err` names the setting, e.g. `identity.issuers[0].audiences: ...`.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_token_bytes < 256 {
            return Err("identity.max_token_bytes: must be at least 256".into());
        }
        if self.cache_entries == 0 {
            return Err("identity.cache_entries: must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.issuers.iter().enumerate() {
            let at = |field: &str, msg: String| format!("identity.issuers[{i}].{field}: {msg}");
            if !seen.insert(&s.issuer) {
                return Err(at("issuer", format!("duplicate issuer {:?}", s.issuer)));
            }
            check_url(&s.issuer).map_err(|m| at("issuer", m))?;
            if let Some(u) = &s.jwks_uri {
                check_url(u).map_err(|m| at("jwks_uri", m))?;
            }
            if s.audiences.is_empty() || s.audiences.iter().any(String::is_empty) {
                return Err(at(
                    "audiences",
                    "at least one non-empty audience is required (a token for another service must not pass)".into(),
                ));
            }
            if s.algorithms.is_empty() {
                return Err(at(
                    "algorithms",
                    "at least one algorithm is required".into(),
                ));
            }
            for a in &s.algorithms {
                if a.eq_ignore_ascii_case("none") {
                    return Err(at("algorithms", "\"none\" is never accepted".into()));
                }
                let alg: Algorithm = a.parse().map_err(|_| {
                    at(
                        "algorithms",
                        format!("unknown algorithm {a:?}; expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512"),
                    )
                })?;
                if alg.family() == AlgorithmFamily::Hmac && s.hmac_secret_file.is_none() {
                    return Err(at(
                        "algorithms",
                        format!(
                            "{a} needs hmac_secret_file: HMAC is accepted only with an explicitly configured secret"
                        ),
                    ));
                }
            }
            if s.hmac_secret_file.is_some()
                && !s
                    .parsed_algorithms()
                    .iter()
                    .any(|a| a.family() == AlgorithmFamily::Hmac)
            {
                return Err(at(
                    "hmac_secret_file",
                    "set, but algorithms names no HS256/HS384/HS512".into(),
                ));
            }
            crate::identity::claims::Path::parse(&s.subject_claim)
                .map_err(|m| at("subject_claim", m))?;
            if let Some(g) = &s.groups_claim {
                crate::identity::claims::Path::parse(g).map_err(|m| at("groups_claim", m))?;
            }
            if s.leeway > Duration::from_secs(300) {
                return Err(at("leeway_secs", "at most 300".into()));
            }
            if s.jwks_min_refresh.is_zero() {
                return Err(at(
                    "jwks_min_refresh_secs",
                    "must be at least 1 (it is what keeps a flood of unknown key ids off the issuer)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Issuer and JWKS addresses: `http://` on a loopback host only, until the agent has a TLS
/// client (issue #14, "TLS to upstreams"); anything else would send key fetches in the clear.
pub fn check_url(u: &str) -> Result<(), String> {
    let uri: http::Uri = u.parse().map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        // The certificate proves the server, wherever it is.
        Some("https") => return Ok(()),
        Some("http") => {}
        _ => {
            return Err(format!(
                "{u:?} must start with https:// (or http:// on loopback)"
            ));
        }
    }
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        // Keys fetched in cleartext across a network could be swapped on the way: anyone
        // on the path could then mint tokens the agent accepts.
        return Err(format!(
            "{u:?}: plain http is accepted only on loopback (127.0.0.0/8, ::1, localhost); use https"
        ));
    }
    Ok(())
}

fn default_max_token() -> usize {
    8 * 1024
}
fn default_cache() -> usize {
    10_000
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_max_age() -> Duration {
    Duration::from_secs(600)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(30)
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}
