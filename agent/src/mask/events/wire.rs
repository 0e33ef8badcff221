//! Writing what the masker changed back into events: members inserted into an event's
//! objects, SSE data lines, JSON string literals.
use bytes::BytesMut;

use super::walk::{Kind, Leaf, Role};
use super::{ChanKey, Edit, Extra, Fam, Field, json};

/// Puts each finished channel's rest into this event (as a new member of the object
/// that holds its field), or into an added event when the event has no such object.
pub(super) fn place(
    leaves: &[Leaf],
    choice: &dyn Fn(u32) -> i64,
    rests: Vec<(ChanKey, Vec<u8>)>,
    edits: &mut Vec<Edit>,
    extras: &mut Vec<Extra>,
) {
    // Members to insert per container (the position just after its `{`). Tool arguments
    // always get an added event: the finishing delta may hold a `tool_calls` of its own, and
    // their JSON masker rarely holds anything back at the end (a JSON text ends outside a
    // string).
    let mut inserts: Vec<(usize, bool, Vec<u8>)> = Vec::new();
    for (key, text) in rests {
        let container = leaves.iter().find(|l| match (l.role, key.fam, key.field) {
            (Role::DeltaObj(p), Fam::Openai, Field::Delta(_))
            | (Role::ChoiceObj(p), Fam::Openai, Field::LegacyText) => choice(p) == key.group,
            (Role::MessageObj, Fam::Ollama, Field::Message(_))
            | (Role::RootObj, Fam::Ollama, Field::Response) => true,
            _ => false,
        });
        let Some(c) = container else {
            extras.push(Extra { key, text });
            continue;
        };
        let member = member(key, &text);
        let at = c.range.1 as usize;
        let empty = matches!(c.kind, Kind::Obj { empty: true });
        match inserts.iter_mut().find(|(p, _, _)| *p == at) {
            Some((_, _, m)) => {
                m.push(b',');
                m.extend_from_slice(&member);
            }
            None => inserts.push((at, empty, member)),
        }
    }
    for (at, empty, mut m) in inserts {
        if !empty {
            m.push(b',');
        }
        edits.push(Edit {
            range: at..at,
            with: m,
        });
    }
}

/// Writes `data` as SSE `data:` lines (a newline in it, the whitespace of a pretty-printed
/// JSON value, starts a new line: SSE joins them back with newlines).
pub(super) fn data_lines(data: &[u8], eol: &[u8], terminate: bool, out: &mut BytesMut) {
    let mut lines = data.split(|&b| b == b'\n').peekable();
    while let Some(l) = lines.next() {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(l.strip_suffix(b"\r").unwrap_or(l));
        if terminate || lines.peek().is_some() {
            out.extend_from_slice(eol);
        }
    }
}

/// `"<field>":"<text>"` (for tool arguments, the `tool_calls` member around it).
pub(super) fn member(key: ChanKey, text: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(text.len() + 48);
    if let Field::ToolArgs(j) = key.field {
        m.extend_from_slice(b"\"tool_calls\":[{\"index\":");
        m.extend_from_slice(j.to_string().as_bytes());
        m.extend_from_slice(b",\"function\":{\"arguments\":");
        m.extend_from_slice(&quoted(text));
        m.extend_from_slice(b"}}]");
        return m;
    }
    m.push(b'"');
    m.extend_from_slice(key.field.name().as_bytes());
    m.extend_from_slice(b"\":");
    m.extend_from_slice(&quoted(text));
    m
}

pub(super) fn quoted(text: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(text.len() + 2);
    q.push(b'"');
    json::encode(text, &mut q);
    q.push(b'"');
    q
}
