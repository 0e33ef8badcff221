//! Credential custody: the upstream key of a target lives in the agent, never in the
//! workload. In the prepare stage every credential the client sent is taken out (`strip`)
//! and the target's key is put in; the response filter `filter::EchoMask` masks the key if
//! the upstream echoes it. Keys come from a file (watched: a rotated file is used from the
//! next request on), an environment variable or a command (re-run every `refresh_secs`
//! when set) (`source`), and live in a
//! [`Secret`] that never prints.
use std::{
    fmt,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, request::Parts};
use zeroize::Zeroizing;

mod secret;
pub mod settings;
pub mod source;
pub mod strip;

pub use secret::Secret;
pub use settings::{Settings, Source};

#[derive(Debug, thiserror::Error)]
#[error("target {target}: credential: {error}")]
pub struct Error {
    target: String,
    error: source::Error,
}

/// One version of a target's key, ready to go in a request.
pub struct Key {
    header: HeaderName,
    /// `scheme key`, marked sensitive (HTTP/2 never indexes it; `Debug` hides it).
    value: HeaderValue,
    secret: Secret,
}

impl Key {
    fn new(settings: &Settings, secret: Secret, what: &str) -> Result<Key, source::Error> {
        let mut v = Zeroizing::new(Vec::with_capacity(secret.len() + 16));
        if let Some(s) = &settings.scheme {
            v.extend_from_slice(s.as_bytes());
            v.push(b' ');
        }
        v.extend_from_slice(secret.expose());
        let mut value =
            HeaderValue::from_bytes(&v).map_err(|_| source::Error::NotHeader(what.to_string()))?;
        value.set_sensitive(true);
        Ok(Key {
            header: settings.header.clone(),
            value,
            secret,
        })
    }

    /// Strips every client credential from the request (also the headers in `also`: those
    /// the target's other keys go in) and puts this key in.
    pub fn apply(&self, parts: &mut Parts, also: &[HeaderName]) {
        strip::headers(&mut parts.headers, also);
        parts.headers.remove(&self.header);
        strip::query(&mut parts.uri);
        parts
            .headers
            .insert(self.header.clone(), self.value.clone());
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("header", &self.header)
            .field("value", &self.secret)
            .finish()
    }
}

/// A target's key and where it comes from; swapped in place when its file changes.
pub struct Keeper {
    target: String,
    settings: Settings,
    current: ArcSwap<Key>,
    /// The file version `current` was read from (or last failed to be): only the watcher's
    /// blocking thread touches it.
    seen: Mutex<Option<source::Stamp>>,
    /// When a `command` source last ran (successfully or not).
    ran: Mutex<std::time::Instant>,
}

impl Keeper {
    /// Reads the key. Blocking.
    pub fn load(target: &str, settings: &Settings) -> Result<Keeper, Error> {
        let err = |error| Error {
            target: target.to_string(),
            error,
        };
        let stamp = match &settings.source {
            Source::File(p) => source::stamp(p),
            _ => None,
        };
        let what = settings.source.to_string();
        let key = source::read(&settings.source)
            .and_then(|s| Key::new(settings, s, &what))
            .map_err(err)?;
        Ok(Keeper {
            target: target.to_string(),
            settings: settings.clone(),
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new(stamp),
            ran: Mutex::new(std::time::Instant::now()),
        })
    }

    /// The key for the next request.
    pub fn current(&self) -> Arc<Key> {
        self.current.load_full()
    }

    /// Re-reads a key file whose stamp changed, or re-runs a command whose `refresh_secs`
    /// passed. A source that cannot be read or holds no valid key keeps the previous key
    /// in use, with one warning per change (per run, for a command). Blocking.
    pub fn refresh(&self) -> Refreshed {
        let what = self.settings.source.to_string();
        let read = match &self.settings.source {
            Source::File(path) => {
                let now = source::stamp(path);
                let Ok(mut seen) = self.seen.lock() else {
                    return Refreshed::Unchanged;
                };
                if *seen == now {
                    return Refreshed::Unchanged;
                }
                *seen = now;
                match now {
                    None => Err(source::Error::Read {
                        what: what.clone(),
                        error: std::io::Error::from(std::io::ErrorKind::NotFound),
                    }),
                    Some(_) => source::read(&self.settings.source),
                }
            }
            Source::Command(_) => {
                let Some(every) = self.settings.refresh else {
                    return Refreshed::Unchanged;
                };
                let Ok(mut ran) = self.ran.lock() else {
                    return Refreshed::Unchanged;
                };
                if ran.elapsed() < every {
                    return Refreshed::Unchanged;
                }
                *ran = std::time::Instant::now();
                source::read(&self.settings.source)
            }
            Source::Env(_) => return Refreshed::Unchanged,
        };
        match read.and_then(|s| {
            if s == *self.current.load().secret() {
                return Ok(None);
            }
            Key::new(&self.settings, s, &what).map(Some)
        }) {
            Ok(Some(key)) => {
                self.current.store(Arc::new(key));
                tracing::info!(target_name = %self.target, source = %what, "credential rotated; new requests use the new key");
                Refreshed::Rotated
            }
            Ok(None) => Refreshed::Unchanged,
            Err(e) => {
                tracing::warn!(target_name = %self.target, error = %e, "credential source changed or was re-run but gave no usable key; keeping the previous key");
                Refreshed::Kept
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    Unchanged,
    Rotated,
    /// The file changed but could not be used: the previous key stays.
    Kept,
}

/// The keepers of all targets, by target id (the index in `targets:`), each target's in the
/// order they are tried (`Target::keys`).
#[derive(Default)]
pub struct Vault(Vec<Held>);

#[derive(Default)]
struct Held {
    keys: Vec<Arc<Keeper>>,
    /// Every header any of the target's keys goes in: all are stripped from each request,
    /// whichever key it goes out with.
    headers: Arc<[HeaderName]>,
}

/// Which key a request goes out with.
pub enum Choice {
    /// The target holds no key: the client's own credential passes as it is.
    NotHeld,
    Key {
        key: Arc<Key>,
        /// The headers of the target's keys (`Key::apply`'s `also`).
        headers: Arc<[HeaderName]>,
    },
    /// The target holds keys, none of them for this caller: refused (never sent with the
    /// client's credential, nor with someone else's key).
    NoneForCaller,
}

impl Vault {
    /// Reads every target's keys. Blocking: call it off the runtime workers.
    pub fn load(targets: &[crate::config::Target]) -> Result<Vault, Error> {
        targets
            .iter()
            .map(|t| {
                let keys = t
                    .keys()
                    .map(|c| Keeper::load(&t.name, c).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut headers: Vec<HeaderName> = t.keys().map(|c| c.header.clone()).collect();
                headers.dedup();
                Ok(Held {
                    keys,
                    headers: headers.into(),
                })
            })
            .collect::<Result<_, _>>()
            .map(Vault)
    }

    /// The first of the target's keys that is for this caller.
    pub fn choose(
        &self,
        target_id: u32,
        who: Option<&crate::identity::Principal>,
        workload: &crate::workload::Workload,
    ) -> Choice {
        let held = match self.0.get(target_id as usize) {
            Some(h) if !h.keys.is_empty() => h,
            _ => return Choice::NotHeld,
        };
        held.keys
            .iter()
            .find(|k| {
                k.settings
                    .when
                    .as_ref()
                    .is_none_or(|w| w.matches(who, workload))
            })
            .map_or(Choice::NoneForCaller, |k| Choice::Key {
                key: k.current(),
                headers: held.headers.clone(),
            })
    }

    fn watched(&self) -> bool {
        self.0
            .iter()
            .flat_map(|h| &h.keys)
            .any(|k| matches!(k.settings.source, Source::File(_)) || k.settings.refresh.is_some())
    }

    /// Blocking.
    fn refresh(&self) {
        for k in self.0.iter().flat_map(|h| &h.keys) {
            k.refresh();
        }
    }
}

/// Checks the key files every second (mtime polling works on every filesystem, including
/// bind mounts and Kubernetes secret volumes, where inotify does not) and re-runs key
/// commands whose `refresh_secs` passed, on a blocking thread so a slow filesystem or
/// secrets manager never stalls proxying.
pub async fn watch(vault: Arc<Vault>, stop: tokio_util::sync::CancellationToken) {
    if !vault.watched() {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let v = vault.clone();
        if tokio::task::spawn_blocking(move || v.refresh())
            .await
            .is_err()
        {
            tracing::error!("credential check failed; keeping the keys in use");
        }
    }
}

#[cfg(test)]
mod tests;
