//! A credential's bytes in a type that never prints: `Debug` and `Display` say only that a
//! secret is there, and the bytes are wiped when the last holder drops them.
use std::fmt;

use zeroize::Zeroizing;

pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    /// The bytes, for the few places that must use them: building the header and masking
    /// echoes. Never format them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice() == other.0.as_slice()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_bytes() {
        let s = Secret::new(b"sk-canary-123456".to_vec());
        assert!(!format!("{s:?} {s} {s:#?}").contains("canary"));
        assert_eq!(s.expose(), b"sk-canary-123456");
    }
}
