//! The header fields that frame an HTTP/1.1 message (RFC 9112 §6): `Content-Length`,
//! `Transfer-Encoding`, and the `Connection` options that decide whether the connection
//! carries another message. Strict: a message whose length two readers could read two ways
//! is refused, never guessed.

/// Why a head's framing fields were refused. Values are never repeated: a peer may echo a
/// credential in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("conflicting Content-Length values")]
    ConflictingLength,
    #[error("an invalid Content-Length")]
    BadLength,
    #[error("a Transfer-Encoding other than chunked (only chunked is decoded)")]
    Coding,
}

/// What the framing fields of one head said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    /// The one `Content-Length` (repeats of the same value are one).
    pub length: Option<u64>,
    /// A `Transfer-Encoding` field was present (then `chunked` is true: any other coding
    /// was refused).
    pub coded: bool,
    pub chunked: bool,
    /// `Connection` options.
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl Fields {
    /// Reads one header field; fields that do not frame the message are ignored.
    pub fn scan(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
        if name.eq_ignore_ascii_case("content-length") {
            self.length(value)
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.coding(value)
        } else {
            if name.eq_ignore_ascii_case("connection") {
                self.connection(value);
            }
            Ok(())
        }
    }

    /// Digits only (no sign, no spaces inside), and every value the same: `5, 5` and two
    /// `Content-Length: 5` fields are one length, `5, 6` is two readings.
    fn length(&mut self, value: &[u8]) -> Result<(), Error> {
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(Error::BadLength);
            }
            let v = part.iter().try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            let v = v.ok_or(Error::BadLength)?;
            if self.length.is_some_and(|l| l != v) {
                return Err(Error::ConflictingLength);
            }
            self.length = Some(v);
        }
        Ok(())
    }

    /// `chunked`, once, and nothing else: a coding before it would reach the other side
    /// still applied once the proxy re-frames the body, and `chunked, chunked` or a coding
    /// after it leaves the length unknowable.
    fn coding(&mut self, value: &[u8]) -> Result<(), Error> {
        self.coded = true;
        for coding in value.split(|b| *b == b',') {
            if self.chunked || !coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Error::Coding);
            }
            self.chunked = true;
        }
        Ok(())
    }

    fn connection(&mut self, value: &[u8]) {
        for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            self.close |= t.eq_ignore_ascii_case(b"close");
            self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(fields: &[(&str, &str)]) -> Result<Fields, Error> {
        let mut f = Fields::default();
        for (n, v) in fields {
            f.scan(n, v.as_bytes())?;
        }
        Ok(f)
    }

    #[test]
    fn lengths_are_digits_and_agree() {
        assert_eq!(
            scan(&[("Content-Length", "20")]).map(|f| f.length),
            Ok(Some(20))
        );
        assert_eq!(
            scan(&[("content-length", "5, 5"), ("CONTENT-LENGTH", "5")]).map(|f| f.length),
            Ok(Some(5))
        );
        for bad in [
            "+20",
            "-1",
            "",
            " ",
            "2 0",
            "0x10",
            "20;",
            "99999999999999999999",
        ] {
            assert_eq!(
                scan(&[("content-length", bad)]),
                Err(Error::BadLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            scan(&[("content-length", "20"), ("content-length", "2")]),
            Err(Error::ConflictingLength)
        );
        assert_eq!(
            scan(&[("content-length", "5, 6")]),
            Err(Error::ConflictingLength)
        );
        assert_eq!(
            scan(&[("content-length", "18446744073709551615")]).map(|f| f.length),
            Ok(Some(u64::MAX))
        );
    }

    #[test]
    fn only_a_lone_chunked_is_a_coding() {
        let f = scan(&[("Transfer-Encoding", "Chunked")]).expect("chunked");
        assert!(f.coded && f.chunked);
        for bad in [
            &[("transfer-encoding", "chunked, identity")][..],
            &[("transfer-encoding", "identity")],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "")],
        ] {
            assert_eq!(scan(bad), Err(Error::Coding), "{bad:?}");
        }
    }

    #[test]
    fn connection_options_are_tokens_in_any_case() {
        let f = scan(&[
            ("Connection", "Keep-Alive, Upgrade"),
            ("connection", " CLOSE "),
        ])
        .expect("options");
        assert!(f.close && f.keep_alive && f.upgrade);
        let f = scan(&[("connection", "closed, keep-alive-not")]).expect("options");
        assert!(!f.close && !f.keep_alive && !f.upgrade);
    }
}
