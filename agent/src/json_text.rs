//! JSON text written by hand, byte for byte as `serde_json` writes it: the recording
//! store's entries and index lines (`audit::json`) and the log line of every request
//! (`record::line`) are formatted on hot threads, where serde's per-field calls and its
//! byte-at-a-time escaping were most of the cost (docs/benchmarks.md, "The hot path" and
//! "Recording store"). Unit tests here and in those modules hold the bytes to serde_json's.
use std::fmt;

pub fn num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

const LO: u64 = u64::from_ne_bytes([0x01; 8]);
const HI: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether any of the 8 bytes in `x` must be escaped: a control byte, `"` or `\`.
fn needs_escape(x: u64) -> bool {
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let control = x.wrapping_sub(LO * 0x20) & !x & HI;
    (control | zero(x ^ (LO * b'"' as u64)) | zero(x ^ (LO * b'\\' as u64))) != 0
}

/// Whether no byte of `b` needs escaping, eight at a time (the last eight overlapping
/// the ones before; a short string byte by byte): most strings never do, and are then
/// copied whole.
fn clean(b: &[u8]) -> bool {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let n = b.len();
    if n < 8 {
        return b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\');
    }
    let mut at = 0;
    while at + 8 < n {
        if needs_escape(word(at)) {
            return false;
        }
        at += 8;
    }
    !needs_escape(word(n - 8))
}

/// A JSON string as serde_json escapes it: `"` and `\`, control bytes as `\b \t \n \f \r`
/// or `\u00xx`; everything else (UTF-8 included) as it is.
pub fn string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    if clean(b) {
        out.extend_from_slice(b);
    } else {
        escaped(out, b);
    }
    out.push(b'"');
}

fn escaped(out: &mut Vec<u8>, b: &[u8]) {
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0..0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&b[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

/// A `Display` value as a JSON string, as serde's `collect_str` writes it, formatted straight
/// into `out` (no intermediate `String`) and escaped only when it has to be.
pub fn display(out: &mut Vec<u8>, v: impl fmt::Display) {
    let at = out.len();
    out.push(b'"');
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_fmt(out, format_args!("{v}"));
    if !clean(&out[at + 1..]) {
        let raw = out.split_off(at + 1);
        escaped(out, &raw);
    }
    out.push(b'"');
}

/// `true` or `false`.
pub fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}
