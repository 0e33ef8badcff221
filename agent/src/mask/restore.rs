//! Reversible pseudonyms, response side: tokens the request side issued for this caller
//! (`[email:0123456789ab]`, see [`Action::Pseudonym`]) are replaced by their originals in
//! the text going back to that caller. Who issued what is the vault's business; this only
//! finds tokens, across any split of the stream, and asks a lookup.
//!
//! [`Action::Pseudonym`]: super::Action::Pseudonym
use std::sync::Arc;

use zeroize::Zeroizing;

/// Maps a whole token (`[email:0123456789ab]`, brackets included) to its original, `None`
/// for a token this caller was not issued (it then passes unchanged).
pub type Lookup = Arc<dyn Fn(&str) -> Option<Zeroizing<String>> + Send + Sync>;

/// The longest detector name a token may carry.
const MAX_NAME: usize = 64;
const HEX: usize = 12;
/// The most a restorer holds back: a token's bytes but its last.
pub const MAX_HOLD: usize = 1 + MAX_NAME + 1 + HEX;

/// Restores tokens in one text stream. Holds back at most [`MAX_HOLD`] bytes, and only
/// from a `[` that may still start a token.
pub struct Restorer {
    lookup: Lookup,
    held: Vec<u8>,
    restored: u64,
    work: Vec<u8>,
}

enum Token {
    /// A whole token of this many bytes.
    Whole(usize),
    /// A token's start, cut by the end of the input.
    Prefix,
    No,
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Whether `s` (starting at a `[`) is a token, or could become one with more bytes.
fn token(s: &[u8]) -> Token {
    let mut i = 1;
    while i < s.len() && name_byte(s[i]) {
        i += 1;
        if i > 1 + MAX_NAME {
            return Token::No;
        }
    }
    if i == s.len() {
        return Token::Prefix;
    }
    if i == 1 || s[i] != b':' {
        return Token::No;
    }
    let hex0 = i + 1;
    for k in 0..=HEX {
        let Some(&b) = s.get(hex0 + k) else {
            return Token::Prefix;
        };
        let ok = if k == HEX {
            b == b']'
        } else {
            b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
        };
        if !ok {
            return Token::No;
        }
    }
    Token::Whole(hex0 + HEX + 1)
}

impl Restorer {
    pub fn new(lookup: Lookup) -> Self {
        Restorer {
            lookup,
            held: Vec::new(),
            restored: 0,
            work: Vec::new(),
        }
    }

    /// Tokens replaced so far.
    pub fn restored(&self) -> u64 {
        self.restored
    }

    /// Bytes received but not yet released.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Forgets a held token start (a new, unrelated text follows). Call after `end`.
    pub fn restart(&mut self) {
        self.held.clear();
    }

    /// Feeds `data` (`end`: the text is over) and appends what is decided to `out`.
    pub fn push(&mut self, data: &[u8], end: bool, out: &mut Vec<u8>) {
        if self.held.is_empty() && memchr::memchr(b'[', data).is_none() {
            out.extend_from_slice(data);
            return;
        }
        let mut work = std::mem::take(&mut self.work);
        work.clear();
        work.append(&mut self.held);
        work.extend_from_slice(data);
        let mut at = 0;
        while let Some(i) = memchr::memchr(b'[', &work[at..]) {
            let p = at + i;
            out.extend_from_slice(&work[at..p]);
            match token(&work[p..]) {
                Token::Whole(n) => {
                    let t = &work[p..p + n];
                    // The token is ASCII by construction.
                    let original = std::str::from_utf8(t).ok().and_then(|s| (self.lookup)(s));
                    match original {
                        Some(o) => {
                            out.extend_from_slice(o.as_bytes());
                            self.restored += 1;
                        }
                        None => out.extend_from_slice(t),
                    }
                    at = p + n;
                }
                Token::Prefix if !end => {
                    self.held.extend_from_slice(&work[p..]);
                    at = work.len();
                }
                Token::Prefix | Token::No => {
                    out.push(b'[');
                    at = p + 1;
                }
            }
        }
        out.extend_from_slice(&work[at..]);
        self.work = work;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup() -> Lookup {
        Arc::new(|t: &str| {
            (t == "[email:0123456789ab]").then(|| Zeroizing::new("jane@example.com".to_string()))
        })
    }

    fn run(text: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut r = Restorer::new(lookup());
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts {
            let c = c.clamp(at, text.len());
            r.push(&text[at..c], false, &mut out);
            assert!(r.held() <= MAX_HOLD);
            at = c;
        }
        r.push(&text[at..], true, &mut out);
        assert_eq!(r.held(), 0);
        out
    }

    #[test]
    fn tokens_are_restored_across_any_split_and_others_pass() {
        let text = b"mail [email:0123456789ab], [email:ffffffffffff] [x [email:0123456789a] [[email:0123456789ab]] [email:0123456789ab";
        let want = b"mail jane@example.com, [email:ffffffffffff] [x [email:0123456789a] [jane@example.com] [email:0123456789ab".to_vec();
        assert_eq!(run(text, &[]), want);
        for a in 0..text.len() {
            for b in [a, a + 1, a + 5, a + 13] {
                assert_eq!(run(text, &[a, b]), want, "cut at {a}, {b}");
            }
        }
        let cuts: Vec<usize> = (1..text.len()).collect();
        assert_eq!(run(text, &cuts), want);
    }

    #[test]
    fn holds_back_only_a_possible_token() {
        let mut r = Restorer::new(lookup());
        let mut out = Vec::new();
        r.push(b"see [ema", false, &mut out);
        assert_eq!(out, b"see ");
        r.push(b"il:01", false, &mut out);
        r.push(b"23456789ab] done", false, &mut out);
        assert_eq!(out, b"see jane@example.com done");
        assert_eq!(r.restored(), 1);
        out.clear();
        r.push(&[b'['; 3], false, &mut out);
        assert_eq!(out, b"[[", "only the last bracket may start a token");
    }
}
