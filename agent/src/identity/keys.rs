//! One issuer's signing keys: its JWKS, fetched from the configured `jwks_uri` or the one
//! its discovery document names, and kept until `jwks_max_age`. A token whose `kid` is not
//! there triggers a fetch, but at most one per `jwks_min_refresh` for the issuer: a flood
//! of made-up key ids finds the set just fetched, or waits for the fetch under way, and
//! never reaches the issuer more often than that. Header URLs (`jku`, `x5u`) never lead
//! here: keys come only from the configuration.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, jwk::Jwk};

use super::{IssuerSettings, Rejection, claims, fetch::Fetcher};

/// Most keys taken from one key set.
const MAX_KEYS: usize = 64;

pub struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when the set names one: then only that algorithm may use it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// When this set was fetched; `None` before the first fetch succeeded.
    pub fetched: Option<Instant>,
    /// Counts the sets stored, so a request can tell whether another one refreshed.
    pub generation: u64,
}

impl KeySet {
    /// The key for a token's `kid` and `alg`. A token without `kid` may use the set's only
    /// key of its algorithm's family.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        let fits = |k: &&Key| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut fitting = self.keys.iter().filter(fits);
                let first = fitting.next();
                first.filter(|_| fitting.next().is_none())
            }
        }
    }
}

pub struct Issuer {
    pub settings: IssuerSettings,
    pub name: Arc<str>,
    pub algorithms: Vec<Algorithm>,
    pub subject: claims::Path,
    pub groups: Option<claims::Path>,
    /// HS256/384/512's shared secret, when configured.
    pub secret: Option<DecodingKey>,
    keys: ArcSwap<KeySet>,
    /// Held while a fetch is under way; the time of the last attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    fetcher: Fetcher,
    /// Fetch attempts so far (what the rate limit bounds).
    pub fetches: AtomicU64,
}

impl Issuer {
    pub fn new(settings: IssuerSettings, secret: Option<DecodingKey>, fetcher: Fetcher) -> Self {
        // The paths were checked when the configuration was loaded.
        let subject = claims::Path::parse(&settings.subject_claim)
            .unwrap_or_else(|_| claims::Path::named("sub"));
        let groups = settings
            .groups_claim
            .as_deref()
            .and_then(|g| claims::Path::parse(g).ok());
        Issuer {
            name: settings.issuer.as_str().into(),
            algorithms: settings.parsed_algorithms(),
            subject,
            groups,
            secret,
            keys: ArcSwap::from_pointee(KeySet::default()),
            refresh: tokio::sync::Mutex::new(None),
            fetcher,
            fetches: AtomicU64::new(0),
            settings,
        }
    }

    /// Runs `with` on the key for this token: from the set in hand when it has one and is
    /// fresh, else after a (rate-limited) refresh.
    pub async fn with_key<T>(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        with: impl FnOnce(&DecodingKey) -> T,
    ) -> Result<T, Rejection> {
        if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return self.secret.as_ref().map(with).ok_or(Rejection::Algorithm);
        }
        let set = self.keys.load();
        let fresh = set
            .fetched
            .is_some_and(|t| t.elapsed() < self.settings.jwks_max_age);
        if fresh && let Some(k) = set.find(kid, alg) {
            return Ok(with(&k.key));
        }
        let generation = set.generation;
        drop(set);
        self.refresh(generation).await;
        let set = self.keys.load();
        match set.find(kid, alg) {
            Some(k) => Ok(with(&k.key)),
            None if set.fetched.is_none() => Err(Rejection::KeysUnavailable),
            None => Err(Rejection::UnknownKey),
        }
    }

    /// The first fetch, at start.
    pub async fn prefetch(&self) {
        self.refresh(0).await;
    }

    /// Fetches the key set unless another request did since `seen` or the last attempt was
    /// too recent. A failed fetch keeps the keys in hand.
    async fn refresh(&self, seen: u64) {
        let mut last = self.refresh.lock().await;
        if self.keys.load().generation != seen {
            return;
        }
        if last.is_some_and(|t| t.elapsed() < self.settings.jwks_min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(issuer = %self.name, keys = keys.len(), "fetched the issuer's keys");
                self.keys.store(Arc::new(KeySet {
                    keys,
                    fetched: Some(Instant::now()),
                    generation: seen + 1,
                }));
            }
            Err(e) => {
                tracing::warn!(issuer = %self.name, error = %e, "could not fetch the issuer's keys; keeping the ones in hand");
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let jwks_uri = match &self.settings.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = self.settings.discovery_uri();
                let doc = self
                    .fetcher
                    .json(&url)
                    .await
                    .map_err(|e| format!("discovery {url}: {e}"))?;
                // OpenID Connect Discovery §4.3: the document must name the issuer asked.
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.settings.issuer.as_str())
                {
                    return Err(format!("discovery {url}: its issuer is not {}", self.name));
                }
                doc.get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("discovery {url}: no jwks_uri"))?
                    .to_string()
            }
        };
        let set = self
            .fetcher
            .json(&jwks_uri)
            .await
            .map_err(|e| format!("{jwks_uri}: {e}"))?;
        let keys = parse_set(&set);
        // A set with no usable key is a broken answer, not a revocation of every key.
        if keys.is_empty() {
            return Err(format!("{jwks_uri}: no usable signing key in the key set"));
        }
        Ok(keys)
    }
}

/// The signing keys of a JWKS document; keys of unknown types, encryption keys and keys
/// that do not parse are skipped.
pub fn parse_set(doc: &serde_json::Value) -> Vec<Key> {
    let Some(keys) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Vec::new();
    };
    keys.iter()
        .filter(|k| {
            k.get("use")
                .and_then(|u| u.as_str())
                .is_none_or(|u| u == "sig")
        })
        .filter_map(|k| {
            let jwk: Jwk = serde_json::from_value(k.clone()).ok()?;
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
                // A symmetric key in a public set is a configuration error, never a key.
                return None;
            }
            let alg = match k.get("alg").and_then(|a| a.as_str()) {
                None => None,
                Some(a) => Some(a.parse::<Algorithm>().ok()?),
            };
            Some(Key {
                kid: k.get("kid").and_then(|v| v.as_str()).map(String::from),
                alg,
                key,
            })
        })
        .take(MAX_KEYS)
        .collect()
}
