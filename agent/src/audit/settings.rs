//! The `audit:` section of the agent's configuration.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// How much of a request is recorded. Ordered: a target's `audit_level` may lower the
/// store's level for its requests, never raise it.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing: the store is not opened. The default when `audit:` is absent, so a
    /// configuration written before the store existed writes nothing to disk.
    #[default]
    None,
    /// Who, what, which decision, how it ended; headers with credentials removed; no bodies.
    Metadata,
    /// Metadata, and the bodies after masking: the request as the upstream received it,
    /// the response as the client received it, a stream chunk by chunk with each chunk's
    /// time offset (up to `max_body_bytes` per direction of a request).
    Full,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Metadata => "metadata",
            Level::Full => "full",
        }
    }
}

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fdatasync after every record.
    Record,
    /// One fdatasync shared by every record written since the last: at once when a request
    /// waits on its opening record, else at most `group_commit_ms` after the first unsynced
    /// write.
    #[default]
    Group,
    /// Written to the page cache only; survives the agent's crash, not the host's.
    None,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Whole oldest segments are deleted while the store is larger than this.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Segments whose newest record is older than this are deleted.
    #[serde(default = "default_max_age", with = "humantime_serde_like")]
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    #[serde(default)]
    pub level: Level,
    #[serde(default)]
    pub durability: Durability,
    #[serde(
        rename = "group_commit_ms",
        default = "default_group_commit",
        with = "millis"
    )]
    pub group_commit: Duration,
    /// A segment is closed (and a new one opened) once it is this large.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    #[serde(default)]
    pub retention: Retention,
    /// Refuse requests whose records cannot be written (disk full, I/O error, writer
    /// backlog over `max_backlog`), instead of serving them unrecorded.
    #[serde(default)]
    pub required: bool,
    /// The Ed25519 key file (32 raw bytes, 0600); generated there when missing. Default:
    /// `<dir>/keys/signing.key`.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// A signed checkpoint after this many records...
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: u64,
    /// ...or this many seconds, whichever comes first (and at every segment's close).
    #[serde(
        rename = "checkpoint_secs",
        default = "default_checkpoint_secs",
        with = "secs"
    )]
    pub checkpoint_every: Duration,
    /// Records queued for the store before it counts as falling behind.
    #[serde(default = "default_backlog")]
    pub max_backlog: usize,
    /// At `full`: most body bytes recorded per direction of one request; the rest of a
    /// longer body or stream passes unrecorded and the final record says `truncated`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// At `full`: body bytes queued for the store before it counts as falling behind (as
    /// `max_backlog` counts records): a chunk over it is refused (`required`) or dropped
    /// and counted in its request's final record.
    #[serde(default = "default_max_backlog_bytes")]
    pub max_backlog_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dir: default_dir(),
            level: Level::None,
            durability: Durability::Group,
            group_commit: default_group_commit(),
            segment_bytes: default_segment_bytes(),
            retention: Retention::default(),
            required: false,
            signing_key: None,
            checkpoint_records: default_checkpoint_records(),
            checkpoint_every: default_checkpoint_secs(),
            max_backlog: default_backlog(),
            max_body_bytes: default_max_body_bytes(),
            max_backlog_bytes: default_max_backlog_bytes(),
        }
    }
}

impl Settings {
    pub fn enabled(&self) -> bool {
        self.level != Level::None
    }

    pub fn key_path(&self) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| self.dir.join("keys").join("signing.key"))
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !self.dir.is_absolute() {
            return Err(format!(
                "audit.dir: {} must be an absolute path",
                self.dir.display()
            ));
        }
        if self.segment_bytes < 4096 {
            return Err("audit.segment_bytes: must be at least 4096".into());
        }
        if self.retention.max_bytes < 2 * self.segment_bytes {
            return Err(format!(
                "audit.retention.max_bytes: {} must hold at least two segments ({} bytes each)",
                self.retention.max_bytes, self.segment_bytes
            ));
        }
        if self.checkpoint_records == 0 || self.checkpoint_every.is_zero() {
            return Err("audit.checkpoint_records and checkpoint_secs: must be at least 1".into());
        }
        if self.max_backlog == 0 {
            return Err("audit.max_backlog: must be at least 1".into());
        }
        if self.level == Level::Full && self.max_backlog_bytes < super::tap::PIECE as u64 {
            return Err(format!(
                "audit.max_backlog_bytes: must be at least {} (one body piece)",
                super::tap::PIECE
            ));
        }
        Ok(())
    }
}

fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/sluice/audit")
}
fn default_group_commit() -> Duration {
    Duration::from_millis(5)
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_max_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_checkpoint_records() -> u64 {
    10_000
}
fn default_checkpoint_secs() -> Duration {
    Duration::from_secs(10)
}
fn default_backlog() -> usize {
    16_384
}
fn default_max_body_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_max_backlog_bytes() -> u64 {
    64 * 1024 * 1024
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// `max_age` as humantime writes durations ("30d", "12h").
mod humantime_serde_like {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
    }
}
