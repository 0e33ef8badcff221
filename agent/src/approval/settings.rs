//! `approvals:` in the agent's configuration: how many requests may wait for a person, the
//! approvers' socket, the HTTP endpoint, and the webhook that tells approvers a request waits.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Held requests at once, over every caller; one more is refused at once.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Held requests at once for one caller (a token's subject, or a uid without one);
    /// 0 = a quarter of `max_pending`.
    #[serde(default)]
    pub max_pending_per_identity: usize,
    /// Decided approvals `sluice approvals list` still shows.
    #[serde(default = "default_recent")]
    pub recent: usize,
    /// A second socket for approvers who are not root: it answers only `approvals`
    /// commands. `None`: approvals go over the root-only admin socket only.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The group that may use `socket` (mode 0660); required with it.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Where a new held request is announced (Slack-compatible JSON).
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// The HTTP endpoint approvers reach with an OpenID token; `None` (the default): off.
    #[serde(default)]
    pub http: Option<Http>,
}

/// `approvals.http`: list, approve and deny over HTTP, for approvers who hold a token from
/// one of `identity.issuers` rather than an account on this host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Loopback, unless `tls` is set.
    pub listen: SocketAddr,
    /// The `aud` an approver's token must carry, instead of its issuer's `audiences`: a
    /// token a workload sends with its requests never decides an approval.
    pub audience: String,
    /// The `identity.issuers` (by `issuer`) whose tokens are accepted here; empty: all.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Served over TLS with this certificate; required to listen beyond loopback.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Connections served at once; more wait in the listen backlog.
    #[serde(default = "default_http_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// Its PEM private key (mode 0600 or stricter, owned by the agent's user).
    pub key_file: PathBuf,
}

impl Http {
    /// Relative paths are taken from the configuration file's directory.
    pub fn resolve(&mut self, base: &Path) {
        if let Some(t) = &mut self.tls {
            for p in [&mut t.cert_file, &mut t.key_file] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }

    /// The identity settings tokens are checked with here: the accepted issuers, each
    /// accepting only `audience`.
    pub fn identity(&self, id: &crate::identity::Settings) -> crate::identity::Settings {
        let mut s = id.clone();
        s.issuers.retain(|i| self.accepts(&i.issuer));
        for i in &mut s.issuers {
            i.audiences = vec![self.audience.clone()];
        }
        s
    }

    fn accepts(&self, issuer: &str) -> bool {
        self.issuers.is_empty() || self.issuers.iter().any(|i| i == issuer)
    }

    fn validate(&self, id: &crate::identity::Settings) -> Result<(), String> {
        if id.issuers.is_empty() {
            return Err(
                "approvals.http needs identity.issuers: approvers present a token from one of them"
                    .into(),
            );
        }
        if let Some(unknown) = self
            .issuers
            .iter()
            .find(|i| !id.issuers.iter().any(|c| &c.issuer == *i))
        {
            return Err(format!(
                "approvals.http.issuers: {unknown:?} is not in identity.issuers"
            ));
        }
        if self.audience.trim().is_empty() {
            return Err("approvals.http.audience: must not be empty".into());
        }
        if let Some(i) = id
            .issuers
            .iter()
            .filter(|i| self.accepts(&i.issuer))
            .find(|i| i.audiences.contains(&self.audience))
        {
            return Err(format!(
                "approvals.http.audience: {:?} is also an audience of issuer {} for requests; use one only approvers' tokens carry, so a token a workload sends to a model server never decides an approval",
                self.audience, i.issuer
            ));
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "approvals.http.listen: {} is not a loopback address; beyond loopback the endpoint needs approvals.http.tls (tokens and decisions are never sent in clear text over a network)",
                self.listen
            ));
        }
        if self.max_connections == 0 || self.max_connections > MAX_HTTP_CONNECTIONS {
            return Err(format!(
                "approvals.http.max_connections: {} must be 1..={MAX_HTTP_CONNECTIONS}",
                self.max_connections
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://`.
    pub url: String,
    /// One attempt, connect included.
    #[serde(
        rename = "timeout_ms",
        default = "default_webhook_timeout",
        with = "millis"
    )]
    pub timeout: Duration,
    /// Attempts after the first, with exponential backoff (0.5 s, 1 s, 2 s, ... at most 30 s).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_pending: default_max_pending(),
            max_pending_per_identity: 0,
            recent: default_recent(),
            socket: None,
            socket_group: None,
            webhook: None,
            http: None,
        }
    }
}

/// Upper bounds: each held request keeps a connection, a task and its body.
const MAX_PENDING: usize = 65_536;
const MAX_RECENT: usize = 10_000;
const MAX_RETRIES: u32 = 10;
const MAX_HTTP_CONNECTIONS: usize = 1024;

impl Settings {
    /// `identity` is the agent's: the HTTP endpoint checks tokens of its issuers.
    pub fn validate(&self, identity: &crate::identity::Settings) -> Result<(), String> {
        if let Some(h) = &self.http {
            h.validate(identity)?;
        }
        if self.max_pending == 0 || self.max_pending > MAX_PENDING {
            return Err(format!(
                "approvals.max_pending: {} must be 1..={MAX_PENDING}",
                self.max_pending
            ));
        }
        if self.max_pending_per_identity > self.max_pending {
            return Err(format!(
                "approvals.max_pending_per_identity: {} is more than max_pending ({})",
                self.max_pending_per_identity, self.max_pending
            ));
        }
        if self.recent > MAX_RECENT {
            return Err(format!(
                "approvals.recent: {} must be at most {MAX_RECENT}",
                self.recent
            ));
        }
        if self.socket.is_some() != self.socket_group.is_some() {
            return Err(
                "approvals.socket and approvals.socket_group go together: the group says who may use the socket".into(),
            );
        }
        if let Some(w) = &self.webhook {
            check_url(&w.url)?;
            if w.retries > MAX_RETRIES {
                return Err(format!(
                    "approvals.webhook.retries: {} must be at most {MAX_RETRIES}",
                    w.retries
                ));
            }
            if w.timeout.is_zero() || w.timeout > Duration::from_secs(60) {
                return Err("approvals.webhook.timeout_ms must be 1..=60000".into());
            }
        }
        Ok(())
    }

    /// `max_pending_per_identity` with 0 read as a quarter of `max_pending` (at least 1).
    pub fn per_identity(&self) -> usize {
        match self.max_pending_per_identity {
            0 => (self.max_pending / 4).max(1),
            n => n,
        }
    }
}

/// The webhook URL must be http(s) with a host; nothing else is dialled.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("approvals.webhook.url {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "approvals.webhook.url {url:?} must start with http:// or https://"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("approvals.webhook.url {url:?} has no host"));
    }
    Ok(())
}

fn default_max_pending() -> usize {
    1024
}

fn default_recent() -> usize {
    256
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retries() -> u32 {
    3
}

fn default_http_connections() -> usize {
    16
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
