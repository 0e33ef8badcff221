//! How servers match JSON object keys to the fields they read. Go's `encoding/json` (Ollama)
//! takes an exact match first, else a case-insensitive one, and the last of several matching
//! keys wins: `{"model":"llama3","Model":"x:cloud"}` runs `x:cloud`. Sluice therefore refuses
//! keys that collide under the server's matching and reads fields the way the server does.
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMatch {
    /// Keys match exactly; only a key given twice is ambiguous.
    Exact,
    /// Go `encoding/json` case folding.
    GoFold,
}

impl KeyMatch {
    /// The form under which two keys are the same field for the server.
    pub fn canonical(self, key: &str) -> Cow<'_, str> {
        match self {
            KeyMatch::Exact => Cow::Borrowed(key),
            KeyMatch::GoFold => go_fold(key),
        }
    }
}

/// Go `encoding/json`'s key folding (`foldName` in fold.go), spelled in lower case: ASCII
/// letters fold to one case, and other runes to one member of their simple-fold orbit. Written
/// by hand because no crate offers Go's simple case folding. It is exact for every key that
/// can match an (ASCII) struct field: the only non-ASCII runes whose orbit holds an ASCII
/// letter are KELVIN SIGN (k) and LATIN SMALL LETTER LONG S (s). For other runes it uses
/// lower(upper(c)), which puts σ, ς and Σ together as Go does; it may differ from Go for
/// a rare rune whose case mapping is not one rune, which only matters for keys no field has.
pub fn go_fold(key: &str) -> Cow<'_, str> {
    let folded = |c: char| -> char {
        if c.is_ascii() {
            return c.to_ascii_lowercase();
        }
        let up = single(c.to_uppercase()).unwrap_or(c);
        match single(up.to_lowercase()) {
            // Only these two have ASCII letters in their Go fold orbit (dotless ı does not).
            Some(f) if f.is_ascii() => {
                if matches!(c, '\u{212A}' | '\u{17F}') {
                    f
                } else {
                    c
                }
            }
            Some(f) => f,
            None => c,
        }
    };
    if key.chars().all(|c| folded(c) == c) {
        return Cow::Borrowed(key);
    }
    Cow::Owned(key.chars().map(folded).collect())
}

fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
    let c = it.next()?;
    it.next().is_none().then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_fold_matches_ascii_case_and_the_two_runes_that_fold_into_ascii() {
        assert_eq!(go_fold("Model"), "model");
        assert_eq!(go_fold("KEEP_ALIVE"), "keep_alive");
        // KELVIN SIGN and LONG S fold onto ASCII letters in Go.
        assert_eq!(go_fold("\u{212A}eep_alive"), "keep_alive");
        assert_eq!(go_fold("\u{17F}tream"), "stream");
        // Greek sigma forms fold together; dotted I does not fold onto i.
        assert_eq!(go_fold("Σ"), go_fold("ς"));
        assert_eq!(go_fold("σ"), go_fold("ς"));
        assert_ne!(go_fold("\u{130}d"), "id");
        assert_ne!(go_fold("\u{131}d"), "id");
        assert!(matches!(go_fold("model"), Cow::Borrowed(_)));
        assert_eq!(KeyMatch::Exact.canonical("Model"), "Model");
    }
}
