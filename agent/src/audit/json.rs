//! A request's entry written as JSON straight from its record, byte for byte what
//! `serde_json` writes for [`RequestEntry::of`](super::RequestEntry::of) (a unit test holds
//! the two together; readers still parse `RequestEntry`). The store's thread formats every
//! record: building the borrowed entry first (vectors of rules, groups and headers, the
//! outcome as a string) and serialising it through serde's field calls, which escape every
//! key again, cost more than the record's hash.
use std::fmt::Write as _;

/// `,"name":`, one literal (names are plain ASCII: nothing to escape).
macro_rules! k {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

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
    out.extend_from_slice(k!("unix_ms"));
    num(out, r.unix_ms);
    out.extend_from_slice(k!("target"));
    string(out, &r.target);
    out.extend_from_slice(k!("server"));
    string(out, r.server.name());
    out.extend_from_slice(k!("workload"));
    out.extend_from_slice(b"{\"pid\":");
    num(out, w.tgid);
    out.extend_from_slice(k!("uid"));
    num(out, w.uid);
    out.extend_from_slice(k!("gid"));
    num(out, w.gid);
    out.extend_from_slice(k!("comm"));
    string(out, &w.comm);
    opt(out, k!("exe"), w.exe.as_deref());
    opt(out, k!("user"), w.user.as_deref());
    opt(out, k!("cgroup"), w.cgroup.as_deref());
    opt(out, k!("unit"), w.unit.as_deref());
    opt(
        out,
        k!("container"),
        w.container.as_ref().map(|c| c.id.as_str()),
    );
    opt(out, k!("pod_uid"), w.pod_uid.as_deref());
    out.push(b'}');
    if let Some(p) = &r.principal {
        out.extend_from_slice(k!("principal"));
        out.extend_from_slice(b"{\"issuer\":");
        string(out, &p.issuer);
        out.extend_from_slice(k!("subject"));
        string(out, &p.subject);
        out.extend_from_slice(k!("groups"));
        list(out, p.groups.iter().map(String::as_str));
        out.push(b'}');
    }
    out.extend_from_slice(k!("method"));
    string(out, &r.method);
    out.extend_from_slice(k!("path"));
    string(out, &sanitize_path(&r.path));
    let op = r.operation.as_ref();
    opt(out, k!("operation"), op.map(|o| o.class.as_str()));
    opt(out, k!("route"), op.map(|o| o.route));
    opt(out, k!("model"), op.and_then(|o| o.model.as_deref()));
    out.extend_from_slice(k!("streaming"));
    out.extend_from_slice(if op.is_some_and(|o| o.streaming) {
        b"true"
    } else {
        b"false"
    });
    out.extend_from_slice(k!("decision"));
    string(out, decision_of(r, kind));
    if let Some(d) = &r.decision
        && d.rules().next().is_some()
    {
        out.extend_from_slice(k!("rules"));
        list(out, d.rules());
    }
    opt(
        out,
        k!("reason"),
        match &r.decision {
            Some(crate::policy::Decision::Deny(d)) => Some(d.reason.as_str()),
            Some(crate::policy::Decision::Hold(h)) => Some(h.reason.as_str()),
            _ => None,
        },
    );
    if !headers.is_empty() {
        out.extend_from_slice(k!("headers"));
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
    out.extend_from_slice(k!("status"));
    num(out, r.status.map_or(0, |s| s.as_u16()));
    out.extend_from_slice(k!("outcome"));
    scratch.clear();
    // Writing into a String cannot fail.
    let _ = write!(scratch, "{}", r.outcome);
    string(out, scratch);
    out.extend_from_slice(k!("request_bytes"));
    num(out, r.request_bytes);
    out.extend_from_slice(k!("response_bytes"));
    num(out, r.response_bytes);
    if let Some(ms) = r.headers_ms {
        out.extend_from_slice(k!("headers_ms"));
        num(out, ms);
    }
    out.extend_from_slice(k!("duration_ms"));
    num(out, r.duration_ms);
    // Rare and nested: serde_json writes them, as it would inside the entry.
    for (name, v) in [
        (k!("mask_request"), &r.mask_request),
        (k!("mask_response"), &r.mask_response),
    ] {
        if *v != crate::mask::Verdict::Off {
            out.extend_from_slice(name);
            let _ = serde_json::to_writer(&mut *out, v);
        }
    }
    if let Some(a) = &r.approval {
        out.extend_from_slice(k!("approval_id"));
        string(out, &a.id);
        out.extend_from_slice(k!("approval"));
        string(out, a.outcome);
        out.extend_from_slice(k!("approved_by"));
        string(out, &a.decided_by);
    }
    if let Some(b) = &r.body {
        out.extend_from_slice(k!("body"));
        let _ = serde_json::to_writer(&mut *out, b);
    }
    out.push(b'}');
}

fn opt(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
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

pub use crate::json_text::{num, string};
