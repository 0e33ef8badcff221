//! JSON-aware streaming masking: only string values are scanned, each on its own, after
//! their escapes are decoded (`\u0040` is `@`), and what they become is re-encoded as valid
//! string content. Everything outside strings (and object keys) passes byte for byte as it
//! arrives; inside a string the output lags by the masker's hold-back plus at most one
//! unfinished escape (12 bytes: a surrogate pair). Invalid JSON is an error the caller
//! treats as unscannable: nothing after the error is released.
use super::{
    Counts, Plan, StreamMasker,
    restore::{Lookup, Restorer},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Never quotes the bytes: they may be the secret.
    #[error("invalid JSON at byte {at}: {what}")]
    Invalid { at: usize, what: &'static str },
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Deeper nesting is refused rather than tracked without bound.
pub const MAX_DEPTH: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (top level, after `:`, after `,` in an array).
    Value,
    /// A value or `]` (right after `[`).
    ValueOrClose,
    /// A key or `}` (right after `{`).
    KeyOrClose,
    /// A key (after `,` in an object).
    Key,
    Colon,
    CommaOrClose,
    /// The top-level value is complete: only whitespace may follow.
    Done,
}

/// The JSON number grammar, one state per position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn accepting(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }

    /// The next state on `b`, `None` if `b` ends the number (or is invalid in it).
    fn step(self, b: u8) -> Option<Num> {
        let d = b.is_ascii_digit();
        Some(match (self, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, _) if d => Num::Int,
            (Num::Int, _) if d => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::E,
            (Num::Dot | Num::Frac, _) if d => Num::Frac,
            (Num::E, b'+' | b'-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, _) if d => Num::Exp,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and `n` hex digits of value `v`.
    U {
        n: u8,
        v: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens.
    Between,
    Str {
        key: bool,
    },
    Lit {
        word: &'static [u8],
        at: u8,
    },
    Num(Num),
}

/// Validates UTF-8 one byte at a time (JSON text must be UTF-8; the bytes are re-emitted).
#[derive(Debug, Clone, Copy, Default)]
struct Utf8 {
    need: u8,
    lo: u8,
    hi: u8,
}

impl Utf8 {
    /// `false` if `b` cannot come next.
    fn step(&mut self, b: u8) -> bool {
        if self.need > 0 {
            if b < self.lo || b > self.hi {
                return false;
            }
            self.need -= 1;
            (self.lo, self.hi) = (0x80, 0xBF);
            return true;
        }
        let (need, lo, hi) = match b {
            0x00..=0x7F => return true,
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xE1..=0xEF => (2, 0x80, 0xBF),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return false,
        };
        *self = Utf8 { need, lo, hi };
        true
    }
}

/// Masks the string values of one JSON text, streamed.
pub struct JsonMasker {
    masker: StreamMasker,
    restorer: Option<Restorer>,
    expect: Expect,
    lex: Lex,
    esc: Esc,
    /// A high surrogate waiting for its low half.
    high: Option<u16>,
    utf8: Utf8,
    /// `true` per open object, `false` per open array.
    stack: Vec<bool>,
    /// Absolute offset of the next byte (for error positions).
    pos: usize,
    /// Decoded bytes of the current string value, not yet given to the masker.
    dec: Vec<u8>,
    masked: Vec<u8>,
    restored: Vec<u8>,
    failed: Option<JsonError>,
}

impl JsonMasker {
    pub fn new(plan: Plan, restore: Option<Lookup>) -> Self {
        JsonMasker {
            masker: StreamMasker::new(plan),
            restorer: restore.map(Restorer::new),
            expect: Expect::Value,
            lex: Lex::Between,
            esc: Esc::None,
            high: None,
            utf8: Utf8::default(),
            stack: Vec::new(),
            pos: 0,
            dec: Vec::new(),
            masked: Vec::new(),
            restored: Vec::new(),
            failed: None,
        }
    }

    pub fn counts(&self) -> &Counts {
        self.masker.counts()
    }

    pub fn move_counts_to(&mut self, total: &mut Counts) {
        self.masker.move_counts_to(total);
    }

    /// Pseudonyms restored so far.
    pub fn restored(&self) -> u64 {
        self.restorer.as_ref().map_or(0, Restorer::restored)
    }

    /// Decoded bytes inside the current string not yet released.
    pub fn held(&self) -> usize {
        self.masker.held() + self.restorer.as_ref().map_or(0, Restorer::held)
    }

    /// Feeds `data` (`end`: the text is over) and appends what is decided to `out`. After
    /// an error every later call fails too.
    pub fn push(&mut self, data: &[u8], end: bool, out: &mut Vec<u8>) -> Result<(), JsonError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.run(data, end, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn bad(&self, at: usize, what: &'static str) -> JsonError {
        JsonError::Invalid {
            at: self.pos + at,
            what,
        }
    }

    fn run(&mut self, data: &[u8], end: bool, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let mut i = 0;
        while i < data.len() {
            match self.lex {
                Lex::Str { key } => {
                    i = self.string(data, i, key, out)?;
                }
                Lex::Lit { word, at } => {
                    if data[i] != word[at as usize] {
                        return Err(self.bad(i, "expected a literal"));
                    }
                    out.push(data[i]);
                    i += 1;
                    if at as usize + 1 == word.len() {
                        self.lex = Lex::Between;
                        self.after_value();
                    } else {
                        self.lex = Lex::Lit { word, at: at + 1 };
                    }
                }
                Lex::Num(n) => match n.step(data[i]) {
                    Some(next) => {
                        out.push(data[i]);
                        self.lex = Lex::Num(next);
                        i += 1;
                    }
                    None => {
                        if !n.accepting() {
                            return Err(self.bad(i, "malformed number"));
                        }
                        self.lex = Lex::Between;
                        self.after_value();
                        // The byte that ended the number is read again as structure.
                    }
                },
                Lex::Between => {
                    self.structural(data[i], i, out)?;
                    i += 1;
                }
            }
        }
        if let Lex::Str { key: false } = self.lex {
            self.release(false, out);
        }
        self.pos += data.len();
        if end {
            if let Lex::Num(n) = self.lex
                && n.accepting()
            {
                self.lex = Lex::Between;
                self.after_value();
            }
            let empty = self.expect == Expect::Value && self.stack.is_empty();
            if self.lex != Lex::Between || !(self.expect == Expect::Done || empty) {
                return Err(self.bad(0, "the text ends inside a value"));
            }
        }
        Ok(())
    }

    fn after_value(&mut self) {
        self.expect = if self.stack.is_empty() {
            Expect::Done
        } else {
            Expect::CommaOrClose
        };
    }

    fn structural(&mut self, b: u8, i: usize, out: &mut Vec<u8>) -> Result<(), JsonError> {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            return Ok(());
        }
        let top_obj = self.stack.last().copied();
        match (self.expect, b) {
            (Expect::Value | Expect::ValueOrClose, b'{' | b'[') => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
                self.stack.push(b == b'{');
                self.expect = if b == b'{' {
                    Expect::KeyOrClose
                } else {
                    Expect::ValueOrClose
                };
            }
            (Expect::Value | Expect::ValueOrClose, b'"') => {
                self.lex = Lex::Str { key: false };
            }
            (Expect::Value | Expect::ValueOrClose, b't' | b'f' | b'n') => {
                let word: &'static [u8] = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.lex = Lex::Lit { word, at: 1 };
            }
            (Expect::Value | Expect::ValueOrClose, b'-') => self.lex = Lex::Num(Num::Minus),
            (Expect::Value | Expect::ValueOrClose, b'0') => self.lex = Lex::Num(Num::Zero),
            (Expect::Value | Expect::ValueOrClose, b'1'..=b'9') => self.lex = Lex::Num(Num::Int),
            (Expect::KeyOrClose | Expect::Key, b'"') => self.lex = Lex::Str { key: true },
            (Expect::Colon, b':') => self.expect = Expect::Value,
            (Expect::CommaOrClose, b',') => {
                self.expect = if top_obj == Some(true) {
                    Expect::Key
                } else {
                    Expect::Value
                };
            }
            (Expect::CommaOrClose | Expect::KeyOrClose, b'}') if top_obj == Some(true) => {
                self.stack.pop();
                self.after_value();
            }
            (Expect::CommaOrClose | Expect::ValueOrClose, b']') if top_obj == Some(false) => {
                self.stack.pop();
                self.after_value();
            }
            _ => return Err(self.bad(i, "unexpected byte")),
        }
        out.push(b);
        Ok(())
    }

    /// Reads string bytes from `data[i..]` up to and including the closing quote; returns
    /// where it stopped.
    fn string(
        &mut self,
        data: &[u8],
        mut i: usize,
        key: bool,
        out: &mut Vec<u8>,
    ) -> Result<usize, JsonError> {
        while i < data.len() {
            let b = data[i];
            match self.esc {
                Esc::Backslash => {
                    let c = match b {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            self.esc = Esc::U { n: 0, v: 0 };
                            self.raw_key(key, b, out);
                            i += 1;
                            continue;
                        }
                        _ => return Err(self.bad(i, "invalid escape")),
                    };
                    if self.high.is_some() {
                        return Err(self.bad(i, "unpaired surrogate"));
                    }
                    self.esc = Esc::None;
                    self.raw_key(key, b, out);
                    if !key {
                        self.dec.push(c);
                    }
                    i += 1;
                }
                Esc::U { n, v } => {
                    let Some(h) = (b as char).to_digit(16) else {
                        return Err(self.bad(i, "invalid \\u escape"));
                    };
                    let v = (v << 4) | h as u16;
                    self.raw_key(key, b, out);
                    i += 1;
                    if n < 3 {
                        self.esc = Esc::U { n: n + 1, v };
                        continue;
                    }
                    self.esc = Esc::None;
                    let cp = match (self.high.take(), v) {
                        (None, 0xD800..=0xDBFF) => {
                            self.high = Some(v);
                            continue;
                        }
                        (Some(hi), 0xDC00..=0xDFFF) => {
                            0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(v) - 0xDC00)
                        }
                        (None, 0xDC00..=0xDFFF) | (Some(_), _) => {
                            return Err(self.bad(i, "unpaired surrogate"));
                        }
                        (None, v) => u32::from(v),
                    };
                    let Some(c) = char::from_u32(cp) else {
                        return Err(self.bad(i, "invalid code point"));
                    };
                    if !key {
                        let mut buf = [0u8; 4];
                        self.dec
                            .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                Esc::None => {
                    if self.high.is_some() && b != b'\\' {
                        return Err(self.bad(i, "unpaired surrogate"));
                    }
                    match b {
                        b'"' if self.utf8.need == 0 => {
                            i += 1;
                            if !key {
                                self.release(true, out);
                                self.masker.restart();
                                if let Some(r) = &mut self.restorer {
                                    r.restart();
                                }
                            }
                            out.push(b'"');
                            self.lex = Lex::Between;
                            if key {
                                self.expect = Expect::Colon;
                            } else {
                                self.after_value();
                            }
                            return Ok(i);
                        }
                        b'\\' if self.utf8.need == 0 => {
                            self.esc = Esc::Backslash;
                            self.raw_key(key, b, out);
                            i += 1;
                        }
                        0x20..=0x7F if self.utf8.need == 0 => {
                            // A run of plain ASCII: the common case, copied at once.
                            let run = data[i..]
                                .iter()
                                .position(|&c| {
                                    !(0x20..0x80).contains(&c) || c == b'"' || c == b'\\'
                                })
                                .unwrap_or(data.len() - i);
                            let s = &data[i..i + run];
                            if key {
                                out.extend_from_slice(s);
                            } else {
                                self.dec.extend_from_slice(s);
                            }
                            i += run;
                        }
                        _ => {
                            if b < 0x20 || !self.utf8.step(b) {
                                return Err(self.bad(i, "invalid byte in a string"));
                            }
                            if key {
                                out.push(b);
                            } else {
                                self.dec.push(b);
                            }
                            i += 1;
                        }
                    }
                }
            }
        }
        Ok(i)
    }

    /// Keys pass as they came, escapes included.
    fn raw_key(&self, key: bool, b: u8, out: &mut Vec<u8>) {
        if key {
            out.push(b);
        }
    }

    /// Masks the decoded bytes gathered so far and appends them, re-encoded.
    fn release(&mut self, end: bool, out: &mut Vec<u8>) {
        self.masked.clear();
        self.masker.push(&self.dec, end, &mut self.masked);
        self.dec.clear();
        let text = match &mut self.restorer {
            Some(r) => {
                self.restored.clear();
                r.push(&self.masked, end, &mut self.restored);
                &self.restored
            }
            None => &self.masked,
        };
        encode(text, out);
    }
}

/// Appends `src` as JSON string content (without the quotes).
pub fn encode(src: &[u8], out: &mut Vec<u8>) {
    let mut at = 0;
    for (i, &b) in src.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&src[at..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        } else {
            out.extend_from_slice(short);
        }
        at = i + 1;
    }
    out.extend_from_slice(&src[at..]);
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
