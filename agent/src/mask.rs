//! Finding secrets and personal data in bytes, and masking them: the detector engine of
//! issue 15. Policy (`policy::masking`) turns its rules into a [`Plan`] per request and
//! direction; the pipeline masks request bodies with [`body`] and keeps pseudonyms in a
//! session's [`Vault`] so responses can restore them.
//!
//! [`Scanner`] compiles [`Detector`]s (the built-ins, or custom ones from a
//! [`CustomSpec`]) into one aho-corasick automaton over their literal anchors plus a
//! digit-run trigger; [`Scanner::find`] lists findings; a [`Plan`] (the scanner and an
//! [`Action`] per detector) masks a whole text, and [`StreamMasker`] does the same chunk by
//! chunk with a bounded hold-back.
mod action;
mod anchors;
pub mod body;
mod detector;
pub mod events;
pub mod json;
mod plan;
pub mod restore;
pub mod sample;
mod scan;
mod stream;
mod validate;
mod vault;
mod verdict;

pub use action::{Action, PseudonymKey};
pub use detector::{Class, ClassSpec, CustomSpec, Detector, ValidatorSpec};
pub use events::{EventError, EventMasker, Wire};
pub use json::{JsonError, JsonMasker};
pub use plan::{Counts, Plan};
pub use restore::{Lookup, Restorer};
pub use scan::{Finding, Scanner};
pub use stream::{StreamMasker, mask};
pub use validate::Validator;
pub use vault::{Session, Sessions, Vault};
pub use verdict::{Unscannable, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("detector {detector}: {error}")]
    Regex { detector: String, error: String },
    #[error("building the prefilter: {0}")]
    Prefilter(String),
}

#[cfg(test)]
mod tests;
