//! Policy: the rules security teams write in `policies/`, loaded, validated and evaluated per
//! request. Evaluation is pure: facts in, a `Decision` out.
//!
//! Precedence (docs/policy.md): a matching `deny` rule wins over any `allow`; with no deny,
//! a matching `allow` permits; with no match, the target's `default` decides (deny unless the
//! target says otherwise). Unknown routes therefore fail closed.
use std::{path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;

pub mod approval;
pub mod cases;
pub mod container;
mod eval;
mod fold;
mod grants;
mod index;
pub mod masking;
mod pack;

pub use eval::{Decision, Denial, Facts, Hold, Permit, Query, Switch};
pub use grants::Grant;
pub use pack::{Action, Policy, load_paths, parse_pack};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: rule {rule}: {message}")]
    Invalid {
        path: PathBuf,
        rule: String,
        message: String,
    },
    /// A masking detector or rule that does not compile or names what no pack defines.
    #[error("{path}: masking {what}: {message}")]
    Masking {
        path: PathBuf,
        what: String,
        message: String,
    },
    #[error("no built-in pack {name:?}; built-in packs: {known}")]
    UnknownBuiltin { name: String, known: String },
    #[error("{path}: no pack.yaml here or in its subdirectories")]
    Empty { path: PathBuf },
}

/// The live policy, swapped atomically on reload. Requests take a snapshot (`current`) when
/// they start and finish under it, whatever happens to the files meanwhile.
pub struct Store {
    paths: Vec<PathBuf>,
    current: ArcSwap<Policy>,
}

impl Store {
    pub fn load(paths: Vec<PathBuf>) -> Result<Self, Error> {
        let policy = load_paths(&paths)?;
        Ok(Store {
            paths,
            current: ArcSwap::from_pointee(policy),
        })
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Loads the files again. A broken file leaves the running policy in place.
    pub fn reload(&self) -> Result<usize, Error> {
        let policy = load_paths(&self.paths)?;
        let n = policy.rule_count();
        self.current.store(Arc::new(policy));
        Ok(n)
    }
}
