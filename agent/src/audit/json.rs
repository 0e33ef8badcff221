//! A request's entry written as JSON straight from its record, byte for byte what
//! `serde_json` writes for [`RequestEntry::of`](super::RequestEntry::of) (a unit test holds
//! the two together; readers still parse `RequestEntry`). The store's thread formats every
//! record: building the borrowed entry first (vectors of rules, groups and headers, the
//! outcome as a string) and serialising it through serde's field calls, which escape every
//! key again, cost more than the record's hash.
use std::fmt::Write as _;

use super::entry::{Kind, decision_of, sanitize_path};
use crate::record::Record;

/// Appends the entry of `r` as its opening (`Kind::Open`) or final (`Kind::Final`) record;
/// `scratch` is a buffer for the outcome's text, kept by the caller across records.
pub fn request(
    out: &mut Vec<u8>,
    scratch: &mut String,
    r: &Record,
    kind: Kind,
    headers: &[(String, String)],
) {
    let fin = kind == Kind::Final;
    let w = &r.workload;
    out.extend_from_slice(b"{\"id\":");
    num(out, r.id);
    key(out, "unix_ms");
    num(out, r.unix_ms);
    key(out, "target");
    string(out, &r.target);
    key(out, "server");
    string(out, r.server.name());
    key(out, "workload");
    out.extend_from_slice(b"{\"pid\":");
    num(out, w.tgid);
    key(out, "uid");
    num(out, w.uid);
    key(out, "gid");
    num(out, w.gid);
    key(out, "comm");
    string(out, &w.comm);
    opt(out, "exe", w.exe.as_deref());
    opt(out, "user", w.user.as_deref());
    opt(out, "cgroup", w.cgroup.as_deref());
    opt(out, "unit", w.unit.as_deref());
    opt(
        out,
        "container",
        w.container.as_ref().map(|c| c.id.as_str()),
    );
    opt(out, "pod_uid", w.pod_uid.as_deref());
    out.push(b'}');
    if let Some(p) = &r.principal {
        key(out, "principal");
        out.extend_from_slice(b"{\"issuer\":");
        string(out, &p.issuer);
        key(out, "subject");
        string(out, &p.subject);
        key(out, "groups");
        list(out, p.groups.iter().map(String::as_str));
        out.push(b'}');
    }
    key(out, "method");
    string(out, &r.method);
    key(out, "path");
    string(out, &sanitize_path(&r.path));
    let op = r.operation.as_ref();
    opt(out, "operation", op.map(|o| o.class.as_str()));
    opt(out, "route", op.map(|o| o.route));
    opt(out, "model", op.and_then(|o| o.model.as_deref()));
    key(out, "streaming");
    out.extend_from_slice(if op.is_some_and(|o| o.streaming) {
        b"true"
    } else {
        b"false"
    });
    key(out, "decision");
    string(out, decision_of(r, kind));
    if let Some(d) = &r.decision
        && d.rules().next().is_some()
    {
        key(out, "rules");
        list(out, d.rules());
    }
    opt(
        out,
        "reason",
        match &r.decision {
            Some(crate::policy::Decision::Deny(d)) => Some(d.reason.as_str()),
            Some(crate::policy::Decision::Hold(h)) => Some(h.reason.as_str()),
            _ => None,
        },
    );
    if !headers.is_empty() {
        key(out, "headers");
        out.push(b'[');
        for (i, (k, v)) in headers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            string(out, k);
            out.push(b',');
            string(out, v);
            out.push(b']');
        }
        out.push(b']');
    }
    if !fin {
        out.push(b'}');
        return;
    }
    key(out, "status");
    num(out, r.status.map_or(0, |s| s.as_u16()));
    key(out, "outcome");
    scratch.clear();
    // Writing into a String cannot fail.
    let _ = write!(scratch, "{}", r.outcome);
    string(out, scratch);
    key(out, "request_bytes");
    num(out, r.request_bytes);
    key(out, "response_bytes");
    num(out, r.response_bytes);
    if let Some(ms) = r.headers_ms {
        key(out, "headers_ms");
        num(out, ms);
    }
    key(out, "duration_ms");
    num(out, r.duration_ms);
    // Rare and nested: serde_json writes them, as it would inside the entry.
    for (name, v) in [
        ("mask_request", &r.mask_request),
        ("mask_response", &r.mask_response),
    ] {
        if *v != crate::mask::Verdict::Off {
            key(out, name);
            let _ = serde_json::to_writer(&mut *out, v);
        }
    }
    if let Some(a) = &r.approval {
        key(out, "approval_id");
        string(out, &a.id);
        key(out, "approval");
        string(out, a.outcome);
        key(out, "approved_by");
        string(out, &a.decided_by);
    }
    if let Some(b) = &r.body {
        key(out, "body");
        let _ = serde_json::to_writer(&mut *out, b);
    }
    out.push(b'}');
}

/// `,"name":` (names are plain ASCII: nothing to escape).
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn opt(out: &mut Vec<u8>, name: &str, v: Option<&str>) {
    if let Some(v) = v {
        key(out, name);
        string(out, v);
    }
}

fn list<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>) {
    out.push(b'[');
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, s);
    }
    out.push(b']');
}

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

/// A JSON string as serde_json escapes it: `"` and `\`, control bytes as `\b \t \n \f \r`
/// or `\u00xx`; everything else (UTF-8 included) as it is.
pub fn string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.push(b'"');
    // Eight bytes at a time while none needs escaping: most strings never do.
    let mut clean = 0;
    while clean + 8 <= b.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[clean..clean + 8]);
        if needs_escape(u64::from_ne_bytes(w)) {
            break;
        }
        clean += 8;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate().skip(clean) {
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
    out.push(b'"');
}
