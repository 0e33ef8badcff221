//! Walking one event's JSON (already validated) to find what each value means to the
//! masker: a channel's text, an index, a finish, the object a field belongs in.
use std::{borrow::Cow, ops::Range};

use super::{Fam, Field};

/// One step of a path inside an event's JSON: a key (its raw bytes' range) or an index.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seg {
    Key(u32, u32),
    Idx(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Num,
    True,
    False,
    Null,
    /// An object; `empty`: `{}`. Its range is the `{` alone.
    Obj {
        empty: bool,
    },
    Arr,
}

/// What a value means to the masker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Other,
    /// A channel's text; `choice`/`tool`: array positions, resolved by their `index` fields.
    Chan {
        fam: Fam,
        field: Field,
        choice: u32,
        tool: u32,
    },
    ChoiceIndex(u32),
    ToolIndex(u32, u32),
    FinishReason(u32),
    DeltaObj(u32),
    ChoiceObj(u32),
    MessageObj,
    RootObj,
    Type,
    BlockIndex,
    Done,
    GeneratedText,
    /// OpenAI Responses API `output_index` / `content_index`.
    OutputIndex,
    ContentIndex,
    /// A top-level `id`, `model`, ...: the key's raw range.
    Meta(u32, u32),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Leaf {
    pub(super) role: Role,
    pub(super) kind: Kind,
    pub(super) range: (u32, u32),
}

impl Leaf {
    pub(super) fn range(&self) -> Range<usize> {
        self.range.0 as usize..self.range.1 as usize
    }
}

pub(super) fn role(s: &[u8], path: &[Seg], kind: Kind) -> Role {
    let k = |seg: &Seg| -> &[u8] {
        match *seg {
            Seg::Key(a, b) => &s[a as usize..b as usize],
            Seg::Idx(_) => b"",
        }
    };
    let is_str = matches!(kind, Kind::Str | Kind::Null);
    let chan = |fam, field, choice, tool| Role::Chan {
        fam,
        field,
        choice,
        tool,
    };
    match path {
        [] if matches!(kind, Kind::Obj { .. }) => Role::RootObj,
        [c, Seg::Idx(i), rest @ ..] if k(c) == b"choices" => {
            let i = *i;
            match rest {
                [] if matches!(kind, Kind::Obj { .. }) => Role::ChoiceObj(i),
                [f] if k(f) == b"index" && kind == Kind::Num => Role::ChoiceIndex(i),
                [f] if k(f) == b"finish_reason" && kind == Kind::Str => Role::FinishReason(i),
                [f] if k(f) == b"text" && is_str => chan(Fam::Openai, Field::LegacyText, i, 0),
                [d] if k(d) == b"delta" && matches!(kind, Kind::Obj { .. }) => Role::DeltaObj(i),
                [d, f] if k(d) == b"delta" && is_str => match k(f) {
                    b"content" => chan(Fam::Openai, Field::Delta("content"), i, 0),
                    b"reasoning_content" => {
                        chan(Fam::Openai, Field::Delta("reasoning_content"), i, 0)
                    }
                    b"reasoning" => chan(Fam::Openai, Field::Delta("reasoning"), i, 0),
                    b"refusal" => chan(Fam::Openai, Field::Delta("refusal"), i, 0),
                    _ => Role::Other,
                },
                [d, t, Seg::Idx(j), f] if k(d) == b"delta" && k(t) == b"tool_calls" => {
                    if k(f) == b"index" && kind == Kind::Num {
                        Role::ToolIndex(i, *j)
                    } else {
                        Role::Other
                    }
                }
                [d, t, Seg::Idx(j), f, a]
                    if k(d) == b"delta"
                        && k(t) == b"tool_calls"
                        && k(f) == b"function"
                        && k(a) == b"arguments"
                        && is_str =>
                {
                    chan(Fam::Openai, Field::ToolArgs(0), i, *j)
                }
                _ => Role::Other,
            }
        }
        [t] if k(t) == b"type" && kind == Kind::Str => Role::Type,
        // OpenAI Responses API: `{"type":"response.output_text.delta", "delta": "..."}`.
        [d] if k(d) == b"delta" && is_str => chan(Fam::Responses, Field::Resp(""), 0, 0),
        [o] if k(o) == b"output_index" && kind == Kind::Num => Role::OutputIndex,
        [c] if k(c) == b"content_index" && kind == Kind::Num => Role::ContentIndex,
        [t] if k(t) == b"index" && kind == Kind::Num => Role::BlockIndex,
        [d, f] if k(d) == b"delta" && kind == Kind::Str => match k(f) {
            b"text" => chan(Fam::Anthropic, Field::Block("text"), 0, 0),
            b"thinking" => chan(Fam::Anthropic, Field::Block("thinking"), 0, 0),
            b"partial_json" => chan(Fam::Anthropic, Field::Block("partial_json"), 0, 0),
            _ => Role::Other,
        },
        [m] if k(m) == b"message" && matches!(kind, Kind::Obj { .. }) => Role::MessageObj,
        [m, f] if k(m) == b"message" && is_str => match k(f) {
            b"content" => chan(Fam::Ollama, Field::Message("content"), 0, 0),
            b"thinking" => chan(Fam::Ollama, Field::Message("thinking"), 0, 0),
            _ => Role::Other,
        },
        [r] if k(r) == b"response" && is_str => chan(Fam::Ollama, Field::Response, 0, 0),
        [d] if k(d) == b"done" && matches!(kind, Kind::True | Kind::False) => Role::Done,
        [t, f] if k(t) == b"token" && k(f) == b"text" && is_str => {
            chan(Fam::Tgi, Field::Token, 0, 0)
        }
        [g] if k(g) == b"generated_text" && kind == Kind::Str => Role::GeneratedText,
        [Seg::Key(a, b)]
            if matches!(
                &s[*a as usize..*b as usize],
                b"id"
                    | b"object"
                    | b"created"
                    | b"model"
                    | b"created_at"
                    | b"system_fingerprint"
                    | b"item_id"
            ) && !matches!(kind, Kind::Obj { .. } | Kind::Arr) =>
        {
            Role::Meta(*a, *b)
        }
        _ => Role::Other,
    }
}

/// Walks a JSON text already known to be valid, listing every value with its role.
pub(super) struct Walker<'a> {
    pub(super) s: &'a [u8],
    pub(super) i: usize,
    pub(super) path: Vec<Seg>,
    pub(super) leaves: &'a mut Vec<Leaf>,
}

impl Walker<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    /// Index just past the string starting at `i` (its opening quote).
    fn string_end(&self, mut i: usize) -> usize {
        i += 1;
        while i < self.s.len() {
            match self.s[i] {
                b'"' => return i + 1,
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        i
    }

    fn leaf(&mut self, kind: Kind, a: usize, b: usize) {
        let role = role(self.s, &self.path, kind);
        self.leaves.push(Leaf {
            role,
            kind,
            range: (a as u32, b as u32),
        });
    }

    pub(super) fn value(&mut self) {
        self.ws();
        let Some(&c) = self.s.get(self.i) else {
            return;
        };
        let a = self.i;
        match c {
            b'{' => {
                self.i += 1;
                self.ws();
                let empty = self.s.get(self.i) == Some(&b'}');
                self.leaf(Kind::Obj { empty }, a, a + 1);
                while self.i < self.s.len() && self.s[self.i] != b'}' {
                    self.ws();
                    let ka = self.i;
                    let kb = self.string_end(ka);
                    self.i = kb;
                    self.ws();
                    self.i += 1; // ':'
                    self.path.push(Seg::Key(ka as u32 + 1, kb as u32 - 1));
                    self.value();
                    self.path.pop();
                    self.ws();
                    if self.s.get(self.i) == Some(&b',') {
                        self.i += 1;
                    }
                }
                self.i += 1;
            }
            b'[' => {
                self.i += 1;
                self.leaf(Kind::Arr, a, a + 1);
                let mut n = 0u32;
                self.ws();
                while self.i < self.s.len() && self.s[self.i] != b']' {
                    self.path.push(Seg::Idx(n));
                    self.value();
                    self.path.pop();
                    n += 1;
                    self.ws();
                    if self.s.get(self.i) == Some(&b',') {
                        self.i += 1;
                    }
                    self.ws();
                }
                self.i += 1;
            }
            b'"' => {
                self.i = self.string_end(a);
                self.leaf(Kind::Str, a, self.i);
            }
            b't' | b'n' | b'f' => {
                let (kind, n) = match c {
                    b't' => (Kind::True, 4),
                    b'n' => (Kind::Null, 4),
                    _ => (Kind::False, 5),
                };
                self.i += n;
                self.leaf(kind, a, self.i);
            }
            _ => {
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'
                    )
                {
                    self.i += 1;
                }
                self.leaf(Kind::Num, a, self.i);
            }
        }
    }
}

/// The decoded text of a JSON string literal (quotes included in `raw`).
pub(super) fn decode(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if !inner.contains(&b'\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_slice::<String>(raw)
        .ok()
        .map(|s| Cow::Owned(s.into_bytes()))
}

pub(super) fn int(raw: &[u8]) -> Option<i64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}
