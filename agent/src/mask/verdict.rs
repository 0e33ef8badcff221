//! What masking did to one direction of one request: the honest verdict every record
//! carries, so a skipped scan can never pass for a clean one.
use serde::{Deserialize, Serialize};

/// Why bytes were not scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unscannable {
    /// A `Content-Encoding` other than identity.
    Compressed,
    /// Not text: an image, audio, an octet stream, invalid UTF-8 where text was declared.
    Binary,
    Multipart,
    /// Larger than the scan limit.
    OverLimit,
    Grpc,
    /// A protocol switch (WebSocket, h2c, CONNECT): the tunnel's bytes are not judged.
    Upgrade,
    /// The filter itself failed; the request failed closed unless `pass` was chosen.
    Error,
}

impl Unscannable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unscannable::Compressed => "compressed",
            Unscannable::Binary => "binary",
            Unscannable::Multipart => "multipart",
            Unscannable::OverLimit => "over_limit",
            Unscannable::Grpc => "grpc",
            Unscannable::Upgrade => "upgrade",
            Unscannable::Error => "error",
        }
    }
}

/// One direction's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// No masking rule applied to this direction of this request.
    #[default]
    Off,
    /// Scanned, nothing found.
    Clean,
    /// Scanned; findings replaced. Counts per detector name, never the values.
    Masked { counts: Vec<(String, u64)> },
    /// A finding of a detector whose action is block: the request was refused, or the
    /// stream ended with an error in its own shape.
    Blocked { detector: String },
    /// Not scanned, and why; the request went on only where `on_unscannable: pass`.
    Unscanned { reason: Unscannable },
}

impl Verdict {
    /// The verdict of a finished pass from its counts (`names`: the scanner's detector names).
    pub fn from_counts<'a>(
        counts: &super::Counts,
        mut name: impl FnMut(usize) -> &'a str,
    ) -> Verdict {
        let found: Vec<(String, u64)> = counts
            .per_detector
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (name(i).to_string(), *n))
            .collect();
        if found.is_empty() {
            Verdict::Clean
        } else {
            Verdict::Masked { counts: found }
        }
    }
}
