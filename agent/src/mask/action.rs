//! What replaces a finding.
use std::fmt::Write as _;

use zeroize::Zeroizing;

/// The action for every finding of a masking pass.
#[derive(Clone)]
pub enum Action {
    /// `[REDACTED:<detector>]`.
    Redact,
    /// `[REDACTED:<detector>:…<last 4>]`; values of 4 characters or fewer are redacted whole.
    Partial,
    /// `[<detector>:<12 hex>]`, a blake3 hash keyed per session: the same value gives the
    /// same token within the session and an unrelated one in any other.
    Pseudonym(PseudonymKey),
    /// Leave the bytes; the caller refuses on any finding.
    Block,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Redact => "Redact",
            Action::Partial => "Partial",
            Action::Pseudonym(_) => "Pseudonym",
            Action::Block => "Block",
        })
    }
}

/// The per-session key of pseudonyms (never logged; wiped on drop).
#[derive(Clone)]
pub struct PseudonymKey(Zeroizing<[u8; 32]>);

impl PseudonymKey {
    pub fn new(key: [u8; 32]) -> Self {
        PseudonymKey(Zeroizing::new(key))
    }
}

impl Action {
    /// Appends what replaces `value` (found by `detector`) to `out`.
    pub fn replace(&self, detector: &str, value: &[u8], out: &mut Vec<u8>) {
        match self {
            Action::Block => out.extend_from_slice(value),
            Action::Redact => push_fmt(out, format_args!("[REDACTED:{detector}]")),
            Action::Partial => {
                let text = String::from_utf8_lossy(value);
                let n = text.chars().count();
                if n <= 4 {
                    push_fmt(out, format_args!("[REDACTED:{detector}]"));
                } else {
                    let tail: String = text.chars().skip(n - 4).collect();
                    push_fmt(out, format_args!("[REDACTED:{detector}:…{tail}]"));
                }
            }
            Action::Pseudonym(key) => {
                let h = blake3::keyed_hash(&key.0, value);
                let mut hex = String::with_capacity(12);
                for b in &h.as_bytes()[..6] {
                    let _ = write!(hex, "{b:02x}");
                }
                push_fmt(out, format_args!("[{detector}:{hex}]"));
            }
        }
    }
}

fn push_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = out.write_fmt(args);
}
