//! The recording store: every request's records, appended to segment files that nobody can
//! edit, reorder, truncate or swap without `sluice audit verify` saying where.
//!
//! Layout of the store directory (0700, every file 0600):
//! - `NNNNNNNN.seg`: append-only segments of frames (`frame.rs`), each record chained to the
//!   one before it by BLAKE3; a segment opens with a `start` entry naming its number and
//!   closes with a signed checkpoint.
//! - `NNNNNNNN.idx`: the segment's index (`index.rs`), derived data that lets `list` filter
//!   without parsing record bodies; `verify` never trusts it.
//! - `keys/signing.key`: the Ed25519 key that signs checkpoints (`key.rs`), unless
//!   `signing_key` names another file; `keys/signing.key.next` is a rotation waiting.
//! - `lock`: held by the one agent writing the store.
//!
//! Writes run on one thread of their own (`thread.rs`), never on a runtime worker; the
//! request path only queues records and, for a request's opening record, waits for the
//! durability the configuration asks for (`Handle::open`).
mod checkpoint;
pub mod cli;

mod entry;
pub mod export;
mod frame;
mod index;
mod json;
mod key;
mod query;
pub mod reader;
pub mod replay;

mod segment;
mod settings;
mod store;
mod sync;
mod tap;
mod thread;
mod verify;

pub use entry::{BodyEntry, BodyNote, Direction, Kind, RequestEntry, sanitize_headers};

pub use query::{Exchange, Filter, Listed, exchange, list, show};
pub use settings::{Durability, Level, Retention, Settings};
pub use store::{Recovered, Store};
pub use tap::Tap;
pub use thread::{Handle, Opened, Piece, Unavailable, spawn, start};
pub use verify::{Report, verify};

/// Errors of the store, the key and the readers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Damaged(String),
    #[error("audit store {0} is locked by another process (another agent writing it)")]
    Locked(String),
    #[error("signing key {path}: {message}")]
    Key { path: String, message: String },
}

impl Error {
    fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod body_tests;
#[cfg(test)]
mod json_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
