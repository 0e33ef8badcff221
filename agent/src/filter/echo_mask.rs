//! Masks a target's injected key if the upstream echoes it back (a debug route, an error
//! message quoting the request's headers). The mask has the key's length, so a declared
//! `Content-Length` stays true. A key split across chunks is caught by holding back only
//! the end of a chunk that could be the start of the key: at most `len(key) - 1` bytes,
//! never the stream.
use bytes::{Bytes, BytesMut};
use memchr::memmem;

use super::{Filter, Stop};

pub struct EchoMask {
    finder: memmem::Finder<'static>,
    mask: Bytes,
    /// The end of the last chunk that may be the start of an echo.
    held: BytesMut,
}

/// What an echo becomes: `[REDACTED]` padded with `*` (or cut) to the key's length.
pub fn mask_for(len: usize) -> Bytes {
    let mut m: Vec<u8> = b"[REDACTED]".iter().copied().take(len).collect();
    m.resize(len, b'*');
    Bytes::from(m)
}

impl EchoMask {
    /// `key` is never empty (custody refuses keys shorter than 8 bytes).
    pub fn new(key: &[u8]) -> Self {
        EchoMask {
            finder: memmem::Finder::new(key).into_owned(),
            mask: mask_for(key.len()),
            held: BytesMut::new(),
        }
    }

    /// Replaces every echo in `buf` in place; returns how many there were.
    fn replace(&self, buf: &mut [u8]) -> usize {
        let n = self.mask.len();
        let mut at = 0;
        let mut count = 0;
        while let Some(i) = self.finder.find(&buf[at..]) {
            let start = at + i;
            buf[start..start + n].copy_from_slice(&self.mask);
            at = start + n;
            count += 1;
        }
        count
    }

    /// The length of the longest end of `buf` that is a start of the key (shorter than it).
    fn partial_tail(&self, buf: &[u8]) -> usize {
        let key = self.finder.needle();
        let most = buf.len().min(key.len() - 1);
        (1..=most)
            .rev()
            .find(|&k| buf[buf.len() - k] == key[0] && buf.ends_with(&key[..k]))
            .unwrap_or(0)
    }
}

impl Filter for EchoMask {
    fn on_data(&mut self, data: Bytes, end: bool) -> Result<Bytes, Stop> {
        // The common case: nothing held, no echo, no possible start at the end: the chunk
        // goes on as it came, without a copy.
        if self.held.is_empty()
            && self.finder.find(&data).is_none()
            && (end || self.partial_tail(&data) == 0)
        {
            return Ok(data);
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(&data);
        self.replace(&mut buf);
        if !end {
            let keep = self.partial_tail(&buf);
            self.held = buf.split_off(buf.len() - keep);
        }
        Ok(buf.freeze())
    }

    fn on_trailers(&mut self, trailers: &mut http::HeaderMap) {
        let key = self.finder.needle();
        for v in trailers.values_mut() {
            if let Some(masked) = mask_value(key, v.as_bytes())
                && let Ok(m) = http::HeaderValue::from_bytes(&masked)
            {
                *v = m;
            }
        }
    }
}

/// Masks echoes in a header value; `None` if there is none.
pub fn mask_value(key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let finder = memmem::Finder::new(key);
    finder.find(value)?;
    let mut m = EchoMask::new(key);
    let mut out = value.to_vec();
    m.replace(&mut out);
    m.held.clear();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"sk-canary-0123456789";

    /// Feeds `body` cut at `cuts` and returns what the client gets.
    fn through(body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut f = EchoMask::new(KEY);
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&body.len())) {
            let chunk = Bytes::copy_from_slice(&body[from..c]);
            out.extend_from_slice(&f.on_data(chunk, false).expect("pass"));
            from = c;
        }
        out.extend_from_slice(&f.on_data(Bytes::new(), true).expect("end"));
        out
    }

    #[test]
    fn an_echo_is_masked_wherever_the_chunks_are_cut() {
        let body = b"{\"headers\":{\"authorization\":\"Bearer sk-canary-0123456789\"},\"again\":\"sk-canary-0123456789sk-canary-0123456789\"}";
        let want =
            String::from_utf8_lossy(body).replace("sk-canary-0123456789", "[REDACTED]**********");
        for a in 0..=body.len() {
            for b in [a, a + 1, a + 7, a + 19, a + 20, a + 21] {
                let b = b.min(body.len());
                let got = through(body, &[a, b]);
                assert_eq!(String::from_utf8_lossy(&got), want, "cut at {a}, {b}");
            }
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..body.len()).collect();
        assert_eq!(String::from_utf8_lossy(&through(body, &cuts)), want);
    }

    #[test]
    fn holds_back_only_a_possible_start_and_releases_it_at_the_end() {
        let mut f = EchoMask::new(KEY);
        let a = Bytes::from_static(b"data: plain\n\n");
        assert_eq!(f.on_data(a.clone(), false), Ok(a), "passed whole, uncopied");
        let out = f
            .on_data(Bytes::from_static(b"tail sk-can"), false)
            .expect("pass");
        assert_eq!(&out[..], b"tail ");
        assert_eq!(
            &f.on_data(Bytes::from_static(b"dy"), false).expect("pass")[..],
            b"sk-candy"
        );
        let out = f
            .on_data(Bytes::from_static(b"x sk-canary-01"), false)
            .expect("pass");
        assert_eq!(&out[..], b"x ");
        assert_eq!(
            &f.on_data(Bytes::new(), true).expect("end")[..],
            b"sk-canary-01"
        );
    }

    #[test]
    fn the_mask_keeps_the_length_and_header_values_are_masked_too() {
        for n in [8, 10, 64] {
            assert_eq!(mask_for(n).len(), n);
        }
        assert_eq!(&mask_for(8)[..], b"[REDACTE");
        assert_eq!(
            mask_value(KEY, b"Bearer sk-canary-0123456789").as_deref(),
            Some(&b"Bearer [REDACTED]**********"[..])
        );
        assert_eq!(mask_value(KEY, b"Bearer other"), None);
    }

    #[test]
    fn trailers_are_masked_too() {
        let mut f = EchoMask::new(KEY);
        let mut t = http::HeaderMap::new();
        t.insert(
            "grpc-message",
            http::HeaderValue::from_static("bad key sk-canary-0123456789"),
        );
        t.insert("grpc-status", http::HeaderValue::from_static("16"));
        f.on_trailers(&mut t);
        assert_eq!(t["grpc-message"], "bad key [REDACTED]**********");
        assert_eq!(t["grpc-status"], "16");
    }
}
