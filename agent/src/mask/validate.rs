//! Checks that turn a pattern match into a finding: checksums (Luhn, IBAN mod-97), Shannon
//! entropy, keyword proximity and shape checks. Each looks only at the window the engine
//! gives it, so a verdict never depends on where a stream was cut.
use std::ops::Range;

/// A check on one candidate. `hay` is the detector's window; `value` and `whole` are ranges
/// in it (the part to mask, and the whole match).
#[derive(Debug, Clone, PartialEq)]
pub enum Validator {
    /// Payment card: Luhn checksum and a card-issuer first digit (2-6).
    Luhn,
    /// IBAN: ISO 13616 mod-97 == 1 and a plausible length.
    Mod97,
    /// Shannon entropy (bits per byte) of the value, and how many of upper/lower/digit it mixes.
    Entropy { min_bits: f64, min_classes: u8 },
    /// A credential-looking value, not a placeholder (`<your-key>`, `${VAR}`, `****`, `null`).
    Secretish,
    /// Letters and digits both present (a token, not a hyphenated phrase).
    Mixed,
    /// JWT: the header decodes to a JSON object naming an `alg`.
    Jwt,
    /// Not a piece of a longer number: no letter or digit group right before or after.
    Standalone,
    /// Four octets <= 255, not part of a longer dotted version string.
    Ipv4,
    /// At least one digit and either eight groups or a `::`.
    Ipv6,
    /// US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000.
    Ssn,
    /// Email whose "domain" is not a file name (`icon@2x.png`).
    EmailTld,
    /// One of `keywords` (ASCII case-insensitive) within `within` bytes before the match.
    Near {
        keywords: Vec<Vec<u8>>,
        within: usize,
    },
}

impl Validator {
    pub fn check(&self, hay: &[u8], value: Range<usize>, whole: Range<usize>) -> bool {
        let v = &hay[value.clone()];
        match self {
            Validator::Luhn => luhn_card(v),
            Validator::Mod97 => iban_mod97(v),
            Validator::Entropy {
                min_bits,
                min_classes,
            } => classes(v) >= *min_classes && shannon_bits(v) >= *min_bits,
            Validator::Secretish => secretish(v),
            Validator::Mixed => {
                v.iter().any(u8::is_ascii_digit) && v.iter().any(u8::is_ascii_alphabetic)
            }
            Validator::Jwt => jwt_header(v),
            Validator::Ipv4 => ipv4(hay, whole),
            Validator::Ipv6 => {
                v.iter().any(u8::is_ascii_digit)
                    && (v.windows(2).any(|w| w == b"::")
                        || v.iter().filter(|c| **c == b':').count() == 7)
            }
            Validator::Ssn => ssn(v),
            Validator::Standalone => standalone(hay, whole),
            Validator::EmailTld => email_tld(v),
            Validator::Near { keywords, within } => {
                let from = whole.start.saturating_sub(*within);
                let before = &hay[from..whole.start];
                keywords.iter().any(|k| contains_ci(before, k))
            }
        }
    }
}

pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Luhn over the digits of `v` (separators skipped), 13 to 19 digits, issuer digit 2-6.
pub fn luhn_card(v: &[u8]) -> bool {
    let digits = || v.iter().filter(|c| c.is_ascii_digit()).map(|c| c - b'0');
    let n = digits().count();
    if !(13..=19).contains(&n) || !matches!(digits().next(), Some(2..=6)) {
        return false;
    }
    luhn(digits())
}

/// The Luhn checksum of a digit sequence (most significant first).
pub fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1.
pub fn iban_mod97(v: &[u8]) -> bool {
    let chars = || v.iter().copied().filter(|c| *c != b' ');
    let n = chars().count();
    if !(15..=34).contains(&n) {
        return false;
    }
    let mut rem: u32 = 0;
    for c in chars().skip(4).chain(chars().take(4)) {
        match c {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + u32::from(c - b'A' + 10)) % 97,
            _ => return false,
        }
    }
    rem == 1
}

/// Shannon entropy in bits per byte.
pub fn shannon_bits(v: &[u8]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for b in v {
        counts[usize::from(*b)] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// How many of upper case, lower case and digits `v` mixes (hex digests and UUIDs: two).
pub fn classes(v: &[u8]) -> u8 {
    u8::from(v.iter().any(u8::is_ascii_uppercase))
        + u8::from(v.iter().any(u8::is_ascii_lowercase))
        + u8::from(v.iter().any(u8::is_ascii_digit))
}

/// A value after `password=` that looks like a credential rather than a placeholder, an
/// environment variable's name or an ordinary word.
fn secretish(v: &[u8]) -> bool {
    const PLACEHOLDERS: &[&[u8]] = &[
        b"null",
        b"none",
        b"true",
        b"false",
        b"undefined",
        b"required",
        b"optional",
        b"string",
        b"redacted",
        b"example",
        b"placeholder",
        b"your",
        b"xxxx",
    ];
    let Some(first) = v.first() else {
        return false;
    };
    if matches!(
        first,
        b'<' | b'{' | b'$' | b'%' | b'[' | b'(' | b'*' | b'.' | b'/'
    ) {
        return false;
    }
    if PLACEHOLDERS.iter().any(|p| contains_ci(v, p)) {
        return false;
    }
    if v.iter().all(|c| *c == *first) {
        return false;
    }
    // An environment variable's name (DB_PASSWORD), or a number (a count, a port).
    if v.iter()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
        && v.contains(&b'_')
        || v.iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    let symbol = v.iter().any(|c| !c.is_ascii_alphanumeric());
    let capitalized_word = v[0].is_ascii_uppercase() && v[1..].iter().all(u8::is_ascii_lowercase);
    (classes(v) + u8::from(symbol) >= 2 && !capitalized_word) || v.len() >= 12
}

fn jwt_header(v: &[u8]) -> bool {
    use base64::Engine;
    let Some(dot) = v.iter().position(|c| *c == b'.') else {
        return false;
    };
    let mut buf = [0u8; 512];
    let head = &v[..dot];
    if head.len() > 640 {
        return false;
    }
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(head, &mut buf) {
        Ok(n) => {
            let h = &buf[..n];
            h.first() == Some(&b'{') && contains_ci(h, b"\"alg\"")
        }
        Err(_) => false,
    }
}

fn ipv4(hay: &[u8], whole: Range<usize>) -> bool {
    let v = &hay[whole.clone()];
    let ok = v.split(|c| *c == b'.').all(|o| {
        !o.is_empty()
            && o.len() <= 3
            && o.iter().fold(0u32, |a, c| a * 10 + u32::from(c - b'0')) <= 255
    });
    // "1.2.3.4.5" is a version, not an address.
    let dotted =
        |a: Option<&u8>, b: Option<&u8>| a == Some(&b'.') && b.is_some_and(u8::is_ascii_digit);
    let before = whole
        .start
        .checked_sub(2)
        .map(|i| (hay.get(i + 1), hay.get(i)));
    let after = (hay.get(whole.end), hay.get(whole.end + 1));
    ok && !before.is_some_and(|(a, b)| dotted(a, b)) && !dotted(after.0, after.1)
}

fn standalone(hay: &[u8], whole: Range<usize>) -> bool {
    let sep = |c: Option<&u8>| matches!(c, Some(b' ' | b'-' | b'.'));
    let digit = |c: Option<&u8>| c.is_some_and(u8::is_ascii_digit);
    let before1 = whole.start.checked_sub(1).and_then(|i| hay.get(i));
    let before2 = whole.start.checked_sub(2).and_then(|i| hay.get(i));
    let glued = before1.is_some_and(u8::is_ascii_alphanumeric);
    let continues = sep(before1) && digit(before2);
    let followed = sep(hay.get(whole.end)) && digit(hay.get(whole.end + 1));
    !(glued || continues || followed)
}

fn ssn(v: &[u8]) -> bool {
    let d: Vec<u8> = v
        .iter()
        .filter(|c| c.is_ascii_digit())
        .map(|c| c - b'0')
        .collect();
    if d.len() != 9 {
        return false;
    }
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    area != 0 && area != 666 && area < 900 && d[3..5] != [0, 0] && d[5..] != [0, 0, 0, 0]
}

fn email_tld(v: &[u8]) -> bool {
    const FILES: &[&[u8]] = &[
        b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"ico", b"js", b"css", b"ts", b"map",
        b"json", b"txt", b"md",
    ];
    let tld = v.rsplit(|c| *c == b'.').next().unwrap_or_default();
    !FILES.iter().any(|f| tld.eq_ignore_ascii_case(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn_card(b"4111 1111 1111 1111"));
        assert!(!luhn_card(b"4111 1111 1111 1112"));
        assert!(!luhn_card(b"1111 1111 1111 1117"), "issuer digit 1");
        assert!(iban_mod97(b"DE89 3704 0044 0532 0130 00"));
        assert!(iban_mod97(b"GB82WEST12345698765432"));
        assert!(!iban_mod97(b"DE89 3704 0044 0532 0130 01"));
        assert!(shannon_bits(b"aaaa") < 0.1);
        assert!(shannon_bits(b"q8Zr2LmX0vTn7YpB4kWs") > 4.0);
        assert!(ssn(b"123-45-6789"));
        assert!(!ssn(b"666-45-6789") && !ssn(b"900-12-3456") && !ssn(b"123-00-6789"));
    }
}
