//! Approval ids: 128 random bits from the kernel, in lower-case base32 (26 characters, no
//! padding). Unguessable, so knowing that requests are held tells nobody which id to decide;
//! short enough to type, and without characters a shell or a chat client mangles.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Characters of an id: ceil(128 / 5).
pub const LEN: usize = 26;

#[derive(Debug, thiserror::Error)]
#[error("the system gave no random bytes")]
pub struct NoRandom;

/// A fresh id, from the system's secure random source (the one TLS uses: `getrandom(2)`).
pub fn new() -> Result<String, NoRandom> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| NoRandom)?;
    Ok(encode(&bytes))
}

fn encode(bytes: &[u8; 16]) -> String {
    let v = u128::from_be_bytes(*bytes);
    (0..LEN)
        .map(|i| {
            // The first character carries the top 3 bits, the others 5 each.
            let shift = 5 * (LEN - 1 - i);
            ALPHABET[((v >> shift) & 31) as usize] as char
        })
        .collect()
}

/// Whether `s` has an id's shape (what the CLI and the socket accept before any lookup).
pub fn well_formed(s: &str) -> bool {
    s.len() == LEN && s.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_26_base32_characters_and_differ() {
        let a = new().expect("random");
        let b = new().expect("random");
        assert!(well_formed(&a) && well_formed(&b), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(encode(&[0; 16]), "a".repeat(LEN));
        assert_eq!(encode(&[0xff; 16]), format!("h{}", "7".repeat(LEN - 1)));
        for bad in [
            "",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "abc",
            &format!("{a}a"),
            "0".repeat(LEN).as_str(),
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
