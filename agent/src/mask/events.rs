//! Masking streams of events (SSE events, NDJSON lines) whose text arrives as token deltas.
//!
//! A model's text is spread over many events, a few characters each, so a secret is
//! usually split across events. Each text channel (an OpenAI choice's `delta.content`, an
//! Anthropic content block's `delta.text` or `partial_json`, an Ollama stream's
//! `message.content` or `response`, a TGI stream's `token.text`) gets one masker over the
//! concatenation of its deltas. When an event arrives its delta is pushed; the text the
//! masker has decided goes into that same event's field, and what it still holds back is
//! carried to the channel's next event. So every event goes out as soon as it arrives (its
//! delta may be shorter, or empty), the count and order of events is kept, and the text the
//! client concatenates equals the whole text masked. A channel is flushed at its finish:
//! the rest goes into the finishing event when it has a place for it (OpenAI's last chunk
//! `delta`, Ollama's `done` line), otherwise into one added delta event just before it
//! (Anthropic's `content_block_stop`, `[DONE]` or the stream's end without a finish).
//!
//! Every other string value of an event is masked on its own, whole; events that do not
//! parse as JSON are masked as text. Only events whose text changed are re-serialised, and
//! only their changed strings: every other byte is kept.
use std::{borrow::Cow, ops::Range};

mod channel;
mod walk;
mod wire;
use channel::{Body, Channel};
use walk::{Kind, Leaf, Role, Walker, decode, int};
use wire::{data_lines, member, place, quoted};

use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;

use super::{
    Counts, JsonError, JsonMasker, Plan, StreamMasker, json,
    restore::{Lookup, Restorer},
};

/// How events are delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `text/event-stream`: `data:` lines, events end with a blank line.
    Sse,
    /// One JSON value a line (Ollama).
    Ndjson,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("a streamed JSON field (tool arguments): {0}")]
    Json(#[from] JsonError),
    #[error("more than {MAX_CHANNELS} text channels in one stream")]
    TooManyChannels,
}

/// Open channels per stream (an OpenAI request may ask for up to 128 choices).
pub const MAX_CHANNELS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fam {
    Openai,
    Anthropic,
    Ollama,
    Tgi,
    /// The OpenAI Responses API's typed events.
    Responses,
}

/// The Responses API's delta event types a channel follows (the event type names the
/// field), and whether their text is JSON.
const RESPONSES_DELTAS: &[(&str, bool)] = &[
    ("response.output_text.delta", false),
    ("response.refusal.delta", false),
    ("response.reasoning_text.delta", false),
    ("response.reasoning_summary_text.delta", false),
    ("response.function_call_arguments.delta", true),
];

/// Which field of an event a channel's text travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// OpenAI `choices[i].delta.<name>`.
    Delta(&'static str),
    /// OpenAI legacy completions `choices[i].text`.
    LegacyText,
    /// OpenAI `choices[i].delta.tool_calls[j].function.arguments` (JSON text), by `index`.
    ToolArgs(i64),
    /// Anthropic `delta.text` / `delta.thinking` / `delta.partial_json` (JSON text).
    Block(&'static str),
    /// Ollama `message.<name>`.
    Message(&'static str),
    /// Ollama `/api/generate` `response`.
    Response,
    /// TGI `token.text`.
    Token,
    /// Responses API `delta` of an event of this type.
    Resp(&'static str),
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Delta(n) | Field::Block(n) | Field::Message(n) => n,
            Field::LegacyText | Field::Token => "text",
            Field::ToolArgs(_) => "arguments",
            Field::Response => "response",
            Field::Resp(_) => "delta",
        }
    }

    /// Whether the concatenated text is JSON (masked as JSON, string values only).
    fn json(self) -> bool {
        match self {
            Field::ToolArgs(_) | Field::Block("partial_json") => true,
            Field::Resp(t) => RESPONSES_DELTAS.iter().any(|(n, json)| *n == t && *json),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChanKey {
    fam: Fam,
    /// The choice index (OpenAI), the content block index (Anthropic), 0 otherwise.
    group: i64,
    field: Field,
}

fn undecodable(l: &Leaf) -> EventError {
    EventError::Json(JsonError::Invalid {
        at: l.range.0 as usize,
        what: "a string that does not decode (a lone surrogate)",
    })
}

/// A change to an event's JSON: `range` becomes `with` (an insertion when empty).
struct Edit {
    range: Range<usize>,
    with: Vec<u8>,
}

/// A channel finished in an event without a field to carry its rest: an added event.
struct Extra {
    key: ChanKey,
    text: Vec<u8>,
}

/// Masks one stream of events.
pub struct EventMasker {
    wire: Wire,
    plan: Plan,
    restore: Option<Lookup>,
    /// Masks every other string value, each on its own.
    other: StreamMasker,
    other_restorer: Option<Restorer>,
    channels: Vec<Channel>,
    /// The last `id`, `object`, `created`, `model`, ... seen (raw JSON values), for added
    /// events.
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    counts: Counts,
    restored: u64,
    leaves: Vec<Leaf>,
    scratch: Vec<u8>,
    scratch2: Vec<u8>,
    /// Short strings recently masked whole without change.
    clean: Vec<Box<[u8]>>,
    clean_next: usize,
}

/// The clean-string memory: how many, and how long each may be.
const CLEAN_SLOTS: usize = 16;
const CLEAN_LEN: usize = 128;

impl EventMasker {
    pub fn new(wire: Wire, plan: Plan, restore: Option<Lookup>) -> Self {
        EventMasker {
            wire,
            other: StreamMasker::new(plan.clone()),
            other_restorer: restore.clone().map(Restorer::new),
            counts: plan.counts(),
            plan,
            restore,
            channels: Vec::new(),
            meta: Vec::new(),
            restored: 0,
            leaves: Vec::new(),
            scratch: Vec::new(),
            scratch2: Vec::new(),
            clean: Vec::new(),
            clean_next: 0,
        }
    }

    /// Findings so far, every channel and field summed.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Adds the counts so far to `total` and zeroes them here.
    pub fn move_counts_to(&mut self, total: &mut Counts) {
        total.absorb(&mut self.counts);
    }

    /// Whether a finding of a block-action detector was decided: the event that carried it
    /// must not be sent.
    pub fn blocked(&self) -> bool {
        self.counts.blocked
    }

    /// Pseudonyms restored so far (those of closed channels and other strings included).
    pub fn restored(&self) -> u64 {
        self.restored
            + self.channels.iter().map(Channel::restored).sum::<u64>()
            + self.other_restorer.as_ref().map_or(0, Restorer::restored)
    }

    /// Text held back over all open channels.
    pub fn held(&self) -> usize {
        self.channels.iter().map(Channel::held).sum()
    }

    /// The most one channel holds back.
    pub fn max_hold(&self) -> usize {
        self.plan.scanner().max_hold() + super::restore::MAX_HOLD + 16
    }

    /// Masks one complete event (an SSE event with its blank line, an NDJSON line) and
    /// appends what the client gets: the event, possibly preceded by added delta events.
    pub fn event(&mut self, unit: &Bytes, out: &mut BytesMut) -> Result<(), EventError> {
        let r = match self.wire {
            Wire::Sse => self.sse(unit, out),
            Wire::Ndjson => self.ndjson(unit, out),
        };
        self.collect_counts();
        r
    }

    /// The stream ended: flushes every open channel into added events.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), EventError> {
        let mut extras = Vec::new();
        self.finish_where(|_| true, &mut extras)?;
        self.write_extras(&extras, out);
        self.collect_counts();
        Ok(())
    }

    fn collect_counts(&mut self) {
        for c in &mut self.channels {
            c.move_counts_to(&mut self.counts);
        }
        self.other.move_counts_to(&mut self.counts);
    }

    fn ndjson(&mut self, unit: &Bytes, out: &mut BytesMut) -> Result<(), EventError> {
        let body_len = unit
            .strip_suffix(b"\n")
            .map_or(unit.len(), |b| b.strip_suffix(b"\r").unwrap_or(b).len());
        let data = &unit[..body_len];
        if data.iter().all(u8::is_ascii_whitespace) {
            out.extend_from_slice(unit);
            return Ok(());
        }
        let mut extras = Vec::new();
        match self.data(data, &mut extras)? {
            None => {
                self.write_extras(&extras, out);
                out.extend_from_slice(unit);
            }
            Some(new) => {
                self.write_extras(&extras, out);
                out.extend_from_slice(&new);
                out.extend_from_slice(&unit[body_len..]);
            }
        }
        Ok(())
    }

    fn sse(&mut self, unit: &Bytes, out: &mut BytesMut) -> Result<(), EventError> {
        // The data lines, joined with "\n" as the SSE spec joins them; every other line
        // (`event:`, `id:`, comments) is masked as text on its own.
        let mut data: Vec<u8> = Vec::new();
        let mut n_data = 0;
        let mut crlf = false;
        let mut other_lines: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut masked = Vec::new();
        for (k, line) in unit.split(|&b| b == b'\n').enumerate() {
            let line = match line.strip_suffix(b"\r") {
                Some(l) => {
                    crlf = true;
                    l
                }
                None => line,
            };
            if let Some(v) = line.strip_prefix(b"data:") {
                let v = v.strip_prefix(b" ").unwrap_or(v);
                if n_data > 0 {
                    data.push(b'\n');
                }
                data.extend_from_slice(v);
                n_data += 1;
            } else if !line.is_empty() {
                masked.clear();
                self.mask_other(line, &mut masked);
                if masked != line {
                    other_lines.push((k, masked.clone()));
                }
            }
        }
        let mut extras = Vec::new();
        let new = if n_data > 0 {
            self.data(&data, &mut extras)?
        } else {
            None
        };
        self.write_extras(&extras, out);
        if new.is_none() && other_lines.is_empty() {
            out.extend_from_slice(unit);
            return Ok(());
        }
        // The event again: its data where its first data line was, its other lines kept (or
        // masked), its line endings kept.
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut first = true;
        let mut lines = unit.split(|&b| b == b'\n').enumerate().peekable();
        while let Some((k, line)) = lines.next() {
            // The piece after the last "\n": empty for a terminated event, else the
            // unterminated last line of the stream's last event.
            let last = lines.peek().is_none();
            let bare = line.strip_suffix(b"\r").unwrap_or(line);
            if bare.starts_with(b"data:") {
                if !first {
                    continue;
                }
                first = false;
                // Unchanged data (only another line changed) is rewritten as it was.
                data_lines(new.as_deref().unwrap_or(&data), eol, !last, out);
                continue;
            }
            match other_lines.iter().find(|(j, _)| *j == k) {
                Some((_, m)) => {
                    out.extend_from_slice(m);
                    if line.ends_with(b"\r") {
                        out.extend_from_slice(b"\r");
                    }
                }
                None => out.extend_from_slice(line),
            }
            if !last {
                out.extend_from_slice(b"\n");
            }
        }
        Ok(())
    }

    /// Masks one event's data; `None` when it is unchanged (the event's bytes then pass as
    /// they came). Channels finished without a place for their rest add to `extras`.
    fn data(
        &mut self,
        data: &[u8],
        extras: &mut Vec<Extra>,
    ) -> Result<Option<Vec<u8>>, EventError> {
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            self.finish_where(|_| true, extras)?;
            return Ok(None);
        }
        if !matches!(trimmed.first(), Some(b'{' | b'['))
            || serde_json::from_slice::<IgnoredAny>(data).is_err()
        {
            // Not JSON: the data is text, masked whole.
            let mut masked = Vec::new();
            self.mask_other(data, &mut masked);
            return Ok((masked != data).then_some(masked));
        }
        let mut leaves = std::mem::take(&mut self.leaves);
        leaves.clear();
        Walker {
            s: data,
            i: 0,
            path: Vec::new(),
            leaves: &mut leaves,
        }
        .value();
        let r = self.json_event(data, &leaves, extras);
        self.leaves = leaves;
        r
    }

    fn json_event(
        &mut self,
        s: &[u8],
        leaves: &[Leaf],
        extras: &mut Vec<Extra>,
    ) -> Result<Option<Vec<u8>>, EventError> {
        // First what the event is: its type, indices, finishes.
        let raw = |l: &Leaf| &s[l.range()];
        let mut ty: &[u8] = b"";
        let mut block: i64 = 0;
        let mut done = false;
        let mut generated = false;
        let mut choice_index: Vec<(u32, i64)> = Vec::new();
        let mut tool_index: Vec<((u32, u32), i64)> = Vec::new();
        let mut finished_choices: Vec<u32> = Vec::new();
        let (mut output_index, mut content_index) = (0i64, 0i64);
        for l in leaves {
            match l.role {
                Role::Type => ty = raw(l),
                Role::OutputIndex => output_index = int(raw(l)).unwrap_or(0),
                Role::ContentIndex => content_index = int(raw(l)).unwrap_or(0),
                Role::BlockIndex => block = int(raw(l)).unwrap_or(0),
                Role::Done => done = l.kind == Kind::True,
                Role::GeneratedText => generated = true,
                Role::ChoiceIndex(p) => choice_index.push((p, int(raw(l)).unwrap_or(p.into()))),
                Role::ToolIndex(p, t) => {
                    tool_index.push(((p, t), int(raw(l)).unwrap_or(t.into())));
                }
                Role::FinishReason(p) => finished_choices.push(p),
                _ => {}
            }
        }
        let choice = |p: u32| {
            choice_index
                .iter()
                .find(|(q, _)| *q == p)
                .map_or(i64::from(p), |(_, v)| *v)
        };
        let anthropic_delta = ty == b"\"content_block_delta\"";
        let bare_ty = ty.get(1..ty.len().saturating_sub(1)).unwrap_or(b"");
        // A Responses API delta event: the field its type names.
        let responses_delta = RESPONSES_DELTAS
            .iter()
            .find(|(n, _)| n.as_bytes() == bare_ty)
            .map(|(n, _)| *n);
        let responses_group = (output_index << 16) | (content_index & 0xFFFF);
        // Which channels end with this event.
        let mut finishing: Vec<(Fam, Option<i64>)> = Vec::new();
        for &p in &finished_choices {
            finishing.push((Fam::Openai, Some(choice(p))));
        }
        match ty {
            b"\"content_block_stop\"" => finishing.push((Fam::Anthropic, Some(block))),
            b"\"message_stop\"" => finishing.push((Fam::Anthropic, None)),
            b"\"response.completed\"" | b"\"response.incomplete\"" | b"\"response.failed\"" => {
                finishing.push((Fam::Responses, None));
            }
            _ => {
                // `response.output_text.done` and the like end their part's channel.
                if let Some(base) = bare_ty.strip_suffix(b".done")
                    && RESPONSES_DELTAS
                        .iter()
                        .any(|(n, _)| n.as_bytes().strip_suffix(b".delta") == Some(base))
                {
                    finishing.push((Fam::Responses, Some(responses_group)));
                }
            }
        }
        if done {
            finishing.push((Fam::Ollama, None));
        }
        if generated {
            finishing.push((Fam::Tgi, None));
        }
        let ends = |k: &ChanKey| {
            finishing
                .iter()
                .any(|(f, g)| *f == k.fam && g.is_none_or(|g| g == k.group))
        };

        let mut edits: Vec<Edit> = Vec::new();
        let mut touched: Vec<ChanKey> = Vec::new();
        for l in leaves {
            match (l.role, l.kind) {
                (
                    Role::Chan {
                        fam,
                        field,
                        choice: p,
                        tool,
                    },
                    _,
                ) if match fam {
                    Fam::Anthropic => anthropic_delta,
                    Fam::Responses => responses_delta.is_some(),
                    _ => true,
                } =>
                {
                    let key = ChanKey {
                        fam,
                        group: match fam {
                            Fam::Openai => choice(p),
                            Fam::Anthropic => block,
                            Fam::Responses => responses_group,
                            _ => 0,
                        },
                        field: match field {
                            Field::Resp(_) => Field::Resp(responses_delta.unwrap_or("")),
                            Field::ToolArgs(_) => Field::ToolArgs(
                                tool_index
                                    .iter()
                                    .find(|(q, _)| *q == (p, tool))
                                    .map_or(i64::from(tool), |(_, v)| *v),
                            ),
                            f => f,
                        },
                    };
                    let text = if l.kind == Kind::Str {
                        decode(raw(l)).ok_or(undecodable(l))?
                    } else {
                        Cow::Borrowed(&b""[..])
                    };
                    let end = ends(&key);
                    let mut released = std::mem::take(&mut self.scratch);
                    released.clear();
                    let ch = self.channel(key)?;
                    ch.push(&text, end, &mut released)?;
                    if end {
                        self.close(key);
                    }
                    touched.push(key);
                    let changed = match l.kind {
                        Kind::Str => released != *text,
                        // `null` stays unless text is released into it.
                        _ => !released.is_empty(),
                    };
                    if changed {
                        edits.push(Edit {
                            range: l.range(),
                            with: quoted(&released),
                        });
                    }
                    self.scratch = released;
                }
                (_, Kind::Str) => {
                    // A string that cannot be decoded (a lone surrogate) cannot be scanned:
                    // the stream fails closed rather than pass it.
                    let text = decode(raw(l)).ok_or(undecodable(l))?;
                    let mut masked = std::mem::take(&mut self.scratch2);
                    masked.clear();
                    self.mask_other(&text, &mut masked);
                    let changed = (masked != *text).then(|| quoted(&masked));
                    if let Role::Meta(a, b) = l.role {
                        let v = changed.as_deref().unwrap_or(raw(l));
                        self.remember_meta(&s[a as usize..b as usize], v);
                    }
                    if let Some(with) = changed {
                        edits.push(Edit {
                            range: l.range(),
                            with,
                        });
                    }
                    self.scratch2 = masked;
                }
                (Role::Meta(a, b), _) => self.remember_meta(&s[a as usize..b as usize], raw(l)),
                _ => {}
            }
        }
        // Channels this event finishes but did not carry: their rest goes into the event's
        // own container for the field when it has one, else into an added event before it.
        let mut rests: Vec<(ChanKey, Vec<u8>)> = Vec::new();
        let mut k = 0;
        while k < self.channels.len() {
            let key = self.channels[k].key;
            if ends(&key) && !touched.contains(&key) {
                let mut rest = Vec::new();
                self.channels[k].push(b"", true, &mut rest)?;
                self.close(key);
                if !rest.is_empty() {
                    rests.push((key, rest));
                }
            } else {
                k += 1;
            }
        }
        place(leaves, &choice, rests, &mut edits, extras);
        if edits.is_empty() {
            return Ok(None);
        }
        edits.sort_by_key(|e| (e.range.start, e.range.end));
        let mut new = Vec::with_capacity(s.len() + 64);
        let mut at = 0;
        for e in &edits {
            new.extend_from_slice(&s[at..e.range.start]);
            new.extend_from_slice(&e.with);
            at = e.range.end;
        }
        new.extend_from_slice(&s[at..]);
        Ok(Some(new))
    }

    /// Keeps the last value of a top-level `id`, `model`, ... (as sent: masked) for added
    /// events.
    fn remember_meta(&mut self, key: &[u8], value: &[u8]) {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => self.meta.push((key.to_vec(), value.to_vec())),
        }
    }

    fn channel(&mut self, key: ChanKey) -> Result<&mut Channel, EventError> {
        let k = match self.channels.iter().position(|c| c.key == key) {
            Some(k) => k,
            None => {
                if self.channels.len() >= MAX_CHANNELS {
                    return Err(EventError::TooManyChannels);
                }
                let body = if key.field.json() {
                    Body::Json(Box::new(JsonMasker::new(
                        self.plan.clone(),
                        self.restore.clone(),
                    )))
                } else {
                    Body::Text {
                        masker: Box::new(StreamMasker::new(self.plan.clone())),
                        restorer: self.restore.clone().map(Restorer::new),
                        scratch: Vec::new(),
                    }
                };
                self.channels.push(Channel {
                    key,
                    body,
                    carry: Vec::new(),
                });
                self.channels.len() - 1
            }
        };
        Ok(&mut self.channels[k])
    }

    fn close(&mut self, key: ChanKey) {
        if let Some(k) = self.channels.iter().position(|c| c.key == key) {
            let mut c = self.channels.swap_remove(k);
            c.move_counts_to(&mut self.counts);
            self.restored += c.restored();
        }
    }

    /// Flushes the channels `which` selects into `extras`.
    fn finish_where(
        &mut self,
        which: impl Fn(&ChanKey) -> bool,
        extras: &mut Vec<Extra>,
    ) -> Result<(), EventError> {
        let mut k = 0;
        while k < self.channels.len() {
            let key = self.channels[k].key;
            if which(&key) {
                let mut rest = Vec::new();
                self.channels[k].push(b"", true, &mut rest)?;
                self.close(key);
                if !rest.is_empty() {
                    extras.push(Extra { key, text: rest });
                }
            } else {
                k += 1;
            }
        }
        Ok(())
    }

    /// One string value masked whole (and its pseudonyms restored), appended to `out`.
    fn mask_other(&mut self, text: &[u8], out: &mut Vec<u8>) {
        // Streams repeat the same ids, model names and roles in every event: a short string
        // seen clean is clean again (masking a whole string is deterministic).
        if text.len() <= CLEAN_LEN && self.clean.iter().any(|c| **c == *text) {
            out.extend_from_slice(text);
            return;
        }
        let from = out.len();
        let found_before = self.other.counts().total();
        match &mut self.other_restorer {
            Some(r) => {
                let mut m = Vec::new();
                self.other.push(text, true, &mut m);
                r.push(&m, true, out);
                r.restart();
            }
            None => self.other.push(text, true, out),
        }
        self.other.restart();
        // Unchanged is not enough: a block-action finding leaves the bytes as they were.
        if text.len() <= CLEAN_LEN
            && out[from..] == *text
            && self.other.counts().total() == found_before
        {
            if self.clean.len() < CLEAN_SLOTS {
                self.clean.push(text.into());
            } else {
                self.clean[self.clean_next] = text.into();
                self.clean_next = (self.clean_next + 1) % CLEAN_SLOTS;
            }
        }
    }

    fn write_extras(&self, extras: &[Extra], out: &mut BytesMut) {
        for e in extras {
            let json = self.added_event(e);
            match self.wire {
                Wire::Sse => {
                    match (e.key.fam, e.key.field) {
                        (Fam::Anthropic, _) => {
                            out.extend_from_slice(b"event: content_block_delta\n");
                        }
                        (Fam::Responses, Field::Resp(t)) => {
                            out.extend_from_slice(b"event: ");
                            out.extend_from_slice(t.as_bytes());
                            out.extend_from_slice(b"\n");
                        }
                        _ => {}
                    }
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&json);
                    out.extend_from_slice(b"\n\n");
                }
                Wire::Ndjson => {
                    out.extend_from_slice(&json);
                    out.extend_from_slice(b"\n");
                }
            }
        }
    }

    /// A delta event of the channel's family carrying `e.text`.
    fn added_event(&self, e: &Extra) -> Vec<u8> {
        let mut o = Vec::with_capacity(e.text.len() + 160);
        let meta = |o: &mut Vec<u8>, keys: &[&[u8]]| {
            for (k, v) in &self.meta {
                if keys.contains(&k.as_slice()) {
                    o.push(b'"');
                    o.extend_from_slice(k);
                    o.extend_from_slice(b"\":");
                    o.extend_from_slice(v);
                    o.push(b',');
                }
            }
        };
        let g = e.key.group.to_string();
        match e.key.fam {
            Fam::Openai => {
                o.push(b'{');
                meta(
                    &mut o,
                    &[
                        b"id",
                        b"object",
                        b"created",
                        b"model",
                        b"system_fingerprint",
                    ],
                );
                o.extend_from_slice(b"\"choices\":[{\"index\":");
                o.extend_from_slice(g.as_bytes());
                if e.key.field == Field::LegacyText {
                    o.push(b',');
                    o.extend_from_slice(&member(e.key, &e.text));
                } else {
                    o.extend_from_slice(b",\"delta\":{");
                    o.extend_from_slice(&member(e.key, &e.text));
                    o.push(b'}');
                }
                o.extend_from_slice(b",\"finish_reason\":null}]}");
            }
            Fam::Anthropic => {
                let kind: &[u8] = match e.key.field.name() {
                    "thinking" => b"thinking_delta",
                    "partial_json" => b"input_json_delta",
                    _ => b"text_delta",
                };
                o.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
                o.extend_from_slice(g.as_bytes());
                o.extend_from_slice(b",\"delta\":{\"type\":\"");
                o.extend_from_slice(kind);
                o.extend_from_slice(b"\",");
                o.extend_from_slice(&member(e.key, &e.text));
                o.extend_from_slice(b"}}");
            }
            Fam::Ollama => {
                o.push(b'{');
                meta(&mut o, &[b"model", b"created_at"]);
                if e.key.field == Field::Response {
                    o.extend_from_slice(&member(e.key, &e.text));
                } else {
                    o.extend_from_slice(b"\"message\":{\"role\":\"assistant\",");
                    o.extend_from_slice(&member(e.key, &e.text));
                    o.push(b'}');
                }
                o.extend_from_slice(b",\"done\":false}");
            }
            Fam::Responses => {
                let ty = match e.key.field {
                    Field::Resp(t) => t,
                    _ => "response.output_text.delta",
                };
                o.extend_from_slice(b"{\"type\":\"");
                o.extend_from_slice(ty.as_bytes());
                o.extend_from_slice(b"\",");
                meta(&mut o, &[b"item_id"]);
                o.extend_from_slice(b"\"output_index\":");
                o.extend_from_slice((e.key.group >> 16).to_string().as_bytes());
                if !e.key.field.json() {
                    o.extend_from_slice(b",\"content_index\":");
                    o.extend_from_slice((e.key.group & 0xFFFF).to_string().as_bytes());
                }
                o.push(b',');
                o.extend_from_slice(&member(e.key, &e.text));
                o.push(b'}');
            }
            Fam::Tgi => {
                o.extend_from_slice(b"{\"token\":{\"id\":0,");
                o.extend_from_slice(&member(e.key, &e.text));
                o.extend_from_slice(b",\"logprob\":0.0,\"special\":false},\"generated_text\":null,\"details\":null}");
            }
        }
        o
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
