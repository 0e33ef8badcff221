//! The agent's YAML configuration: where to listen, which cgroup to watch, which destinations
//! are targets. Parsing errors carry `file:line:column` and what was expected; unknown fields
//! are rejected so a typo never silently weakens interception.
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

mod endpoint;

pub use endpoint::{
    Endpoint, HostSpec, LOOPBACK_NETS, TargetMatch, canonical as endpoint_canonical,
    static_entry_count,
};

/// The configuration shipped inside the binary, used when no `--config` is given.
pub const DEFAULT_YAML: &str = include_str!("config/default.yaml");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// IPv4 listener that redirected connections land on. Must be a loopback address: the
    /// connect hook rewrites into the caller's own network namespace.
    pub listen: SocketAddr,
    /// IPv6 listener; `null` disables IPv6 interception (IPv6 targets then fail open and the
    /// agent warns at start).
    #[serde(default = "default_listen_v6")]
    pub listen_v6: Option<SocketAddr>,
    /// cgroup v2 path, relative to the cgroup2 mount, whose subtree is intercepted.
    #[serde(default = "default_cgroup")]
    pub cgroup: PathBuf,
    #[serde(default)]
    pub fail_mode: FailMode,
    /// bpffs directory holding this agent's pinned links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Unix socket for `sluice connections`.
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// SO_MARK put on the agent's upstream sockets so the hooks never redirect them.
    #[serde(default = "default_bypass_mark")]
    pub bypass_mark: u32,
    /// Longest time between two resolutions of a hostname target (TTLs shorten it).
    #[serde(
        rename = "dns_refresh_secs",
        default = "default_dns_refresh",
        with = "secs"
    )]
    pub dns_refresh: Duration,
    #[serde(
        rename = "connect_timeout_ms",
        default = "default_connect_timeout",
        with = "millis"
    )]
    pub connect_timeout: Duration,
    /// From the end of writing a request upstream to the end of the response head (504
    /// beyond). Long by default: a non-streaming completion sends its head only once the
    /// model has finished.
    #[serde(
        rename = "upstream_head_timeout_ms",
        default = "default_upstream_head_timeout",
        with = "millis"
    )]
    pub upstream_head_timeout: Duration,
    /// The longest silence between two reads of a response body, streams included; past it
    /// the body is cut as if the upstream had died.
    #[serde(
        rename = "upstream_idle_timeout_ms",
        default = "default_upstream_idle_timeout",
        with = "millis"
    )]
    pub upstream_idle_timeout: Duration,
    /// How long a backend that refused a connection is skipped.
    #[serde(
        rename = "dead_backend_secs",
        default = "default_dead_backend",
        with = "secs"
    )]
    pub dead_backend_for: Duration,
    /// Time in-flight connections get to finish after SIGTERM/SIGINT.
    #[serde(
        rename = "drain_timeout_secs",
        default = "default_drain",
        with = "secs"
    )]
    pub drain_timeout: Duration,
    /// Policy packs (files or directories) for `protocol: http` targets; relative paths are
    /// resolved against the config file's directory.
    #[serde(default)]
    pub policies: Vec<PathBuf>,
    /// Largest request body Sluice reads to classify a request (413 beyond).
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: usize,
    /// Largest request head (request line + headers) accepted (431 beyond).
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// Live intercepted connections at once; 0 = as many as the open-file limit allows (two
    /// descriptors each, after raising the soft limit to the hard one).
    #[serde(default)]
    pub max_connections: usize,
    /// Live connections one cgroup may hold; 0 = a quarter of `max_connections`.
    #[serde(default)]
    pub max_connections_per_cgroup: usize,
    /// Network namespaces (containers, pods) other than the agent's own that get a listener
    /// of their own; 0 serves none. Beyond it, a namespace's target connections are refused
    /// (`fail_mode: closed`) or go direct (`open`), counted and logged.
    #[serde(default = "default_max_namespaces")]
    pub max_namespaces: usize,
    /// Memory all buffered request bodies may hold together; past it requests get 503 with
    /// `Retry-After` in the server's dialect.
    #[serde(default = "default_body_budget")]
    pub max_buffered_body_bytes: usize,
    /// The part of that budget one cgroup may hold; 0 = a quarter of it, and never less
    /// than one largest body.
    #[serde(default)]
    pub max_buffered_body_bytes_per_cgroup: usize,
    /// From accept to the end of the first request head (and, for HTTP/1.1, from the end of
    /// one response to the end of the next head).
    #[serde(
        rename = "header_timeout_ms",
        default = "default_header_timeout",
        with = "millis"
    )]
    pub header_timeout: Duration,
    /// Time to receive a whole request body (408 beyond).
    #[serde(
        rename = "body_timeout_ms",
        default = "default_body_timeout",
        with = "millis"
    )]
    pub body_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    #[serde(
        rename = "idle_timeout_secs",
        default = "default_idle_timeout",
        with = "secs"
    )]
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per client connection.
    #[serde(default = "default_h2_streams")]
    pub max_h2_streams: u32,
    /// Idle pooled connections kept per upstream.
    #[serde(default = "default_upstream_idle")]
    pub upstream_max_idle: usize,
    /// Threads serving connections: 0 = one per CPU.
    #[serde(default)]
    pub worker_threads: usize,
    /// How those threads share work (see `Runtime`).
    #[serde(default)]
    pub runtime: Runtime,
    /// Address of the Prometheus `/metrics` endpoint; `null` (the default) turns metrics
    /// off. Must be a loopback address: the series name targets and rules.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Adds `x-sluice-overhead-us` to every HTTP response: the microseconds the agent itself
    /// spent on the request, without the upstream's time.
    #[serde(default)]
    pub overhead_header: bool,
    /// How `protocol: tcp` connections move their bytes: in the kernel (sockmap redirect),
    /// with splice(2), or `auto` (splice until the kernel path has back-pressure).
    #[serde(default)]
    pub l4_relay: L4Relay,
    /// With `l4_relay: kernel`: most bytes the kernel may hold queued for one direction of a
    /// connection (its redirect queue has no back-pressure); past it the connection is reset.
    #[serde(default = "default_kernel_queue")]
    pub l4_kernel_max_queue_bytes: u64,
    /// Token issuers whose JWTs name the caller (docs/configuration.md, "Identity").
    #[serde(default)]
    pub identity: crate::identity::Settings,
    /// The recording store (docs/configuration.md, "Recording"); off when absent.
    #[serde(default)]
    pub audit: crate::audit::Settings,
    /// Requests held for a person's approval (docs/configuration.md, "Approvals").
    #[serde(default)]
    pub approvals: crate::approval::Settings,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Programs stay attached while the agent is down: target connections are refused.
    #[default]
    Closed,
    /// Programs are detached on exit: target connections go straight to the server.
    Open,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L4Relay {
    /// What keeps every L4 guarantee on this kernel: splice today, because the kernel's
    /// redirect queue gives no back-pressure (docs/architecture.md, "In-kernel L4 relay").
    #[default]
    Auto,
    /// The kernel relay; the agent refuses to start without it, and a connection that does
    /// not fit its maps falls back to splice with a warning.
    Kernel,
    /// splice(2) through a pipe for every connection.
    Splice,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: TargetMatch,
    /// Where to forward; empty means the address the client dialled.
    #[serde(default, deserialize_with = "one_or_many")]
    pub upstream: Vec<Endpoint>,
    #[serde(default)]
    pub protocol: Protocol,
    /// API family of the server (for `protocol: http`): decides how requests are classified
    /// and how refusals are worded.
    #[serde(default)]
    pub server: crate::adapter::Server,
    /// What happens to requests no policy rule matches (for `protocol: http`).
    #[serde(default)]
    pub default: crate::policy::Action,
    /// Most bytes of one response body passed to the client (for `protocol: http`); a longer
    /// stream is ended with an error in the server's own stream format.
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    /// Whether requests must carry a valid token (`required`) or may come as their workload
    /// alone (`optional`, the default). A token that is sent is always checked.
    #[serde(default)]
    pub identity: crate::identity::Requirement,
    /// The upstream key Sluice puts in every request of this target in place of whatever
    /// credential the client sent (for `protocol: http`; docs/configuration.md, "Credential
    /// custody").
    #[serde(default)]
    pub credential: Option<crate::custody::Settings>,
    /// Keys chosen per caller (each with `when`), tried in order before `credential`; a
    /// caller none is for, on a target without `credential`, is refused.
    #[serde(default)]
    pub credentials: Vec<crate::custody::Settings>,
    /// TLS the agent originates to the upstream (for `protocol: http`; docs/configuration.md,
    /// "TLS to upstreams"). Without it the upstream is spoken to in cleartext.
    #[serde(default)]
    pub tls: Option<crate::tls::Settings>,
    /// A body that a masking rule applies to but Sluice cannot scan (compressed, binary,
    /// multipart, gRPC, a protocol switch): `refuse` (the default) or `pass`, recorded as
    /// unscanned (docs/configuration.md, "Masking").
    #[serde(default)]
    pub on_unscannable: crate::policy::masking::OnUnscannable,
    /// This target's recording level, at most `audit.level`: `metadata` keeps its bodies
    /// out of a store that records others' at `full`, `none` keeps its requests out
    /// altogether; default: `audit.level`.
    #[serde(default)]
    pub audit_level: Option<crate::audit::Level>,
}

impl Target {
    /// The target's keys in the order they are tried: `credentials`, then `credential`.
    pub fn keys(&self) -> impl Iterator<Item = &crate::custody::Settings> {
        self.credentials.iter().chain(&self.credential)
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// One single-threaded runtime per worker thread, each with its own `SO_REUSEPORT`
    /// listeners and upstream pools: a connection lives on one thread from accept to close,
    /// so a request never wakes another thread (the kernel spreads connections by hash).
    #[default]
    PerCore,
    /// One multi-threaded runtime with work stealing (tokio's default): an idle thread may
    /// take over a busy one's connections, at the price of cross-thread wakeups.
    Shared,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Layer 4: bytes are relayed untouched.
    #[default]
    Tcp,
    /// HTTP/1.1 and HTTP/2 (prior knowledge): every request is classified and decided by
    /// policy.
    Http,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in &mut cfg.policies {
            let builtin = p.to_str().is_some_and(|s| s.starts_with("builtin:"));
            if p.is_relative() && !builtin {
                *p = base.join(&*p);
            }
        }
        for t in &mut cfg.targets {
            for c in t.credentials.iter_mut().chain(&mut t.credential) {
                if let crate::custody::Source::File(p) = &mut c.source
                    && p.is_relative()
                {
                    *p = base.join(&*p);
                }
            }
            if let Some(tls) = &mut t.tls {
                tls.resolve(base);
            }
        }
        if let Some(h) = &mut cfg.approvals.http {
            h.resolve(base);
        }
        Ok(cfg)
    }

    pub fn builtin() -> Result<Self, Error> {
        Self::parse(DEFAULT_YAML, "<built-in default config>")
    }

    /// `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let cfg: Config = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = crate::yaml::location(text, &e);
            Error::Syntax {
                path: origin.to_string(),
                line,
                column,
                message: crate::yaml::message(&e),
            }
        })?;
        cfg.validate().map_err(|message| Error::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.listen.is_ipv4() {
            return Err(format!(
                "listen: {} must be an IPv4 loopback address; put the IPv6 listener in listen_v6",
                self.listen
            ));
        }
        if !self.listen.ip().is_loopback() {
            return Err(format!(
                "listen: {} is not a loopback address; the connect hook redirects into the caller's namespace, so the listener must be on loopback",
                self.listen
            ));
        }
        if let Some(v6) = self.listen_v6
            && (!v6.is_ipv6() || !v6.ip().is_loopback())
        {
            return Err(format!(
                "listen_v6: {v6} must be the IPv6 loopback, e.g. \"[::1]:15001\""
            ));
        }
        if let Some(m) = self.metrics_listen {
            if !m.ip().is_loopback() {
                return Err(format!(
                    "metrics_listen: {m} is not a loopback address; /metrics names targets and rules, so it is served on loopback only (scrape it through a local agent or a port-forward)"
                ));
            }
            if std::iter::once(self.listen)
                .chain(self.listen_v6)
                .any(|l| l == m)
            {
                return Err(format!(
                    "metrics_listen: {m} is the agent's intercept listener; pick another port"
                ));
            }
        }
        if self.targets.is_empty() {
            return Err("targets: at least one target is required".into());
        }
        if self.max_namespaces > agent_common::MAX_NETNS as usize {
            return Err(format!(
                "max_namespaces: {} is more than the {} the kernel maps can track",
                self.max_namespaces,
                agent_common::MAX_NETNS
            ));
        }
        if self.max_buffered_body_bytes < self.max_request_body_bytes {
            // A body within its own limit could then never fit the shared budget: it would
            // get 503 forever instead of a clear answer.
            return Err(format!(
                "max_buffered_body_bytes: {} is smaller than max_request_body_bytes ({}); one largest body must fit the shared budget",
                self.max_buffered_body_bytes, self.max_request_body_bytes
            ));
        }
        if self.max_buffered_body_bytes_per_cgroup != 0
            && self.max_buffered_body_bytes_per_cgroup < self.max_request_body_bytes
        {
            return Err(format!(
                "max_buffered_body_bytes_per_cgroup: {} is smaller than max_request_body_bytes ({}); one largest body must fit a cgroup's share",
                self.max_buffered_body_bytes_per_cgroup, self.max_request_body_bytes
            ));
        }
        if self.max_h2_streams == 0 {
            return Err("max_h2_streams: must be at least 1".into());
        }
        // 0 is not "off": an upstream that never answers would then hold its requests for
        // good. A slow model gets a large value instead.
        for (name, t) in [
            ("upstream_head_timeout_ms", self.upstream_head_timeout),
            ("upstream_idle_timeout_ms", self.upstream_idle_timeout),
        ] {
            if t.is_zero() {
                return Err(format!(
                    "{name}: must be at least 1 (there is no \"off\": an upstream that stops answering would hold its requests for good; give slow models a large value, e.g. 3600000)"
                ));
            }
        }
        let entries = endpoint::static_entry_count(self.targets.iter().map(|t| &t.matches));
        if entries > agent_common::MAX_TARGETS as usize {
            return Err(format!(
                "targets: the kernel's target map holds {} entries (one per address or network and port) and these targets need {entries}; use CIDRs or fewer ports",
                agent_common::MAX_TARGETS
            ));
        }
        self.identity.validate()?;
        self.audit.validate()?;
        self.approvals.validate(&self.identity)?;
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if let Some(l) = t.audit_level
                && l > self.audit.level
            {
                return Err(format!(
                    "targets[{i}] ({}): audit_level: {} is above audit.level ({}): a target may lower its recording, not raise it",
                    t.name,
                    l.name(),
                    self.audit.level.name()
                ));
            }
            if t.identity == crate::identity::Requirement::Required {
                if self.identity.issuers.is_empty() {
                    return Err(format!(
                        "targets[{i}] ({}): identity: required needs at least one identity.issuers entry",
                        t.name
                    ));
                }
                if t.protocol != Protocol::Http {
                    return Err(format!(
                        "targets[{i}] ({}): identity: required needs protocol: http (a tcp target's bytes are not read)",
                        t.name
                    ));
                }
            }
            if t.keys().next().is_some() && t.protocol != Protocol::Http {
                return Err(format!(
                    "targets[{i}] ({}): credential needs protocol: http (a tcp target's requests are not read, so no key can be put in them)",
                    t.name
                ));
            }
            if t.keys().next().is_some() && t.upstream.is_empty() {
                return Err(format!(
                    "targets[{i}] ({}): credential needs upstream: (without it the key would go to whatever address the client dialled, and a workload can dial one it listens on)",
                    t.name
                ));
            }
            if t.credential.as_ref().is_some_and(|c| c.when.is_some()) {
                return Err(format!(
                    "targets[{i}] ({}): credential.when: the target's credential is for every caller; put keys for some callers under credentials:",
                    t.name
                ));
            }
            if self.identity.issuers.len() > 1
                && let Some(n) = t
                    .credentials
                    .iter()
                    .position(|c| c.when.as_ref().is_some_and(|w| w.trusts_any_issuer()))
            {
                return Err(format!(
                    "targets[{i}] ({}): credentials[{n}].when: with several issuers configured, groups and subjects need issuers (another issuer's token could carry the same names)",
                    t.name
                ));
            }
            if let Some(n) = t.credentials.iter().position(|c| c.when.is_none()) {
                return Err(format!(
                    "targets[{i}] ({}): credentials[{n}]: needs when (which callers the key is for); the key for everyone else is credential:",
                    t.name
                ));
            }
            if let Some(tls) = &t.tls {
                if t.protocol != Protocol::Http {
                    return Err(format!(
                        "targets[{i}] ({}): tls needs protocol: http (a tcp target's bytes are relayed in the kernel or by splice, never through a TLS session)",
                        t.name
                    ));
                }
                tls.validate()
                    .map_err(|m| format!("targets[{i}] ({}): tls.{m}", t.name))?;
            }
            if t.name.is_empty() {
                return Err(format!("targets[{i}].name: must not be empty"));
            }
            if !seen.insert(&t.name) {
                return Err(format!(
                    "targets[{i}].name: duplicate target name {:?}",
                    t.name
                ));
            }
            for listener in std::iter::once(self.listen).chain(self.listen_v6) {
                if t.matches.covers(listener) {
                    return Err(format!(
                        "targets[{i}] ({}): match {} covers the agent's own listener {listener}",
                        t.name, t.matches
                    ));
                }
            }
        }
        Ok(())
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Endpoint>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "an address \"host:port\" or a list of them")]
    enum OneOrMany {
        One(Endpoint),
        Many(Vec<Endpoint>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(e) => vec![e],
        OneOrMany::Many(v) => v,
    })
}

fn default_max_namespaces() -> usize {
    256
}

fn default_listen_v6() -> Option<SocketAddr> {
    Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 15001)))
}
fn default_cgroup() -> PathBuf {
    PathBuf::from("/")
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/sluice")
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/sluice/admin.sock")
}
fn default_bypass_mark() -> u32 {
    // Arbitrary, documented in docs/operations.md; change it if it clashes with policy routing.
    0x5_1ce
}
fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_millis(3000)
}
fn default_upstream_head_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_upstream_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_dead_backend() -> Duration {
    Duration::from_secs(5)
}
fn default_max_body() -> usize {
    16 * 1024 * 1024
}
fn default_max_header() -> usize {
    64 * 1024
}
fn default_body_budget() -> usize {
    128 * 1024 * 1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_h2_streams() -> u32 {
    128
}
fn default_upstream_idle() -> usize {
    64
}
fn default_kernel_queue() -> u64 {
    64 * 1024 * 1024
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl fmt::Display for FailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        })
    }
}

#[cfg(test)]
mod tests;
