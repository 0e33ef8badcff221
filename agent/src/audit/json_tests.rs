//! The store writes entries and index lines by hand (`json.rs`, `index.rs`): they must be
//! byte for byte what serde_json writes for `RequestEntry`, which every reader parses.
use std::sync::Arc;

use super::{
    entry::{BodyNote, Kind, RequestEntry},
    index::{At, Index, Writer},
    json,
    tests::record,
};
use crate::{
    mask::Verdict,
    policy::{Decision, Denial, Hold},
    record::{ApprovalNote, Outcome, Phase, Record},
    workload::Workload,
};

/// Strings a record may carry, with every kind of byte serde_json escapes, at every
/// position relative to the 8-byte steps of the fast path.
fn awkward() -> Vec<String> {
    let mut v = vec![
        String::new(),
        "plain".into(),
        "exactly8".into(),
        "sixteen bytes ok".into(),
        "quote\" and back\\slash".into(),
        "tab\tnl\ncr\rff\u{c}bs\u{8}".into(),
        "nul\u{0}and\u{1f}unit\u{7f}del".into(),
        "ünïcödé ✓ 𝄞 and \"quotes\"".into(),
        "/v1/chat?api_key=s3cret&x=1".into(),
    ];
    for at in 0..17 {
        for c in ['"', '\\', '\n', '\u{1}', 'é'] {
            let mut s = "a".repeat(at);
            s.push(c);
            s.push_str("tail-0123456789");
            v.push(s);
        }
    }
    v
}

#[test]
fn strings_escape_as_serde_json_does() {
    for s in awkward() {
        let mut out = Vec::new();
        json::string(&mut out, &s);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            serde_json::to_string(&s).expect("json"),
            "{s:?}"
        );
    }
    for b in 0u8..128 {
        let s = format!("0123456789{}x", b as char);
        let mut out = Vec::new();
        json::string(&mut out, &s);
        assert_eq!(out, serde_json::to_vec(&s).expect("json"), "byte {b}");
    }
}

fn hold() -> Decision {
    Decision::Hold(Hold {
        rule: "big-model".into(),
        reason: "needs \"sign-off\"".into(),
        approval: Arc::new(crate::policy::approval::Approval {
            reason: "needs sign-off".into(),
            users: vec!["alice".into()],
            groups: Vec::new(),
            require: crate::policy::approval::Require::Any,
            justification_header: None,
            justification_required: false,
            timeout: std::time::Duration::from_secs(60),
            grant: None,
        }),
    })
}

/// Records covering every optional field, present and absent, with awkward strings.
fn records() -> Vec<Record> {
    let mut out = Vec::new();
    for (i, s) in awkward().into_iter().enumerate() {
        let mut r = record(i as u64 + 1, &s, &s, i % 2 == 0);
        let mut w = Workload::described(1000 + i as u32, 7, s.clone(), Some(s.clone()))
            .named(Some(format!("user {s}")))
            .in_cgroup(format!(
                "/kubepods.slice/kubepods-pod1234.slice/cri-containerd-{}.scope",
                "ab".repeat(32)
            ));
        w.tgid = 4321;
        if i % 3 == 0 {
            w = Workload::described(0, 0, s.clone(), None);
        }
        r.workload = Arc::new(w);
        r.target = s.clone();
        r.method = s.clone();
        r.path = format!("/v1/x?key={s}&n=1");
        r.response_headers = vec![(s.clone(), s.clone()), ("x".into(), "y".into())];
        match i % 6 {
            0 => r.principal = None,
            1 => r.decision = None,
            2 => r.decision = Some(hold()),
            3 => {
                r.decision = Some(Decision::Deny(Denial {
                    rule: None,
                    reason: s.clone(),
                }))
            }
            4 => r.operation = None,
            _ => {
                r.status = None;
                r.headers_ms = None;
                r.response_headers.clear();
            }
        }
        r.outcome = match i % 4 {
            0 => Outcome::Complete,
            1 => Outcome::Ended(s.clone()),
            2 => Outcome::ClientGone(Phase::Approval),
            _ => Outcome::Malformed(s.clone()),
        };
        if i % 2 == 1 {
            r.mask_request = Verdict::Masked {
                counts: vec![(s.clone(), 3), ("email".into(), 1)],
            };
            r.mask_response = Verdict::Clean;
            r.approval = Some(ApprovalNote {
                id: s.clone(),
                outcome: "approved",
                decided_by: s.clone(),
                waited_ms: Some(5),
            });
            r.body = Some(BodyNote {
                request_bytes: 10,
                response_bytes: 20,
                response_chunks: 2,
                request_truncated: true,
                dropped: 1,
                ..BodyNote::default()
            });
        }
        out.push(r);
    }
    out
}

#[test]
fn entries_are_what_serde_json_writes() {
    let mut scratch = String::new();
    for r in records() {
        for (kind, headers) in [
            (
                Kind::Open,
                vec![("authorization".into(), "[removed]".into())],
            ),
            (Kind::Open, Vec::new()),
            (Kind::Final, r.response_headers.clone()),
        ] {
            let mut out = Vec::new();
            json::request(&mut out, &mut scratch, &r, kind, &headers);
            let want = serde_json::to_vec(&RequestEntry::of(&r, kind, &headers)).expect("json");
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want),
                "record {} {kind:?}",
                r.id
            );
        }
    }
}

#[test]
fn index_lines_from_records_and_entries_agree() {
    let (mut from_records, mut from_entries) = (Writer::default(), Writer::default());
    let mut scratch = String::new();
    let mut n = 0;
    for r in records() {
        for kind in [Kind::Open, Kind::Final] {
            n += 1;
            let at = At {
                seq: n,
                offset: n * 1000,
                size: 900 + n as usize,
            };
            from_records.add_record(at, kind, &r);
            let mut body = Vec::new();
            json::request(&mut body, &mut scratch, &r, kind, &[]);
            let e: RequestEntry<'_> = serde_json::from_slice(&body).expect("entry");
            from_entries.add_entry(at, kind, &e);
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&from_records.buf),
        String::from_utf8_lossy(&from_entries.buf)
    );
    // Each line as serde_json wrote it before (the tuple and the `{"d": [id, name]}` map).
    let ix = Index::parse(&from_records.buf);
    assert_eq!(ix.entries.len() as u64, n);
    let mut want = Vec::new();
    let mut named = 0;
    for line in from_records
        .buf
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        if line[0] == b'{' {
            let name = &ix.names[named];
            named += 1;
            serde_json::to_writer(&mut want, &serde_json::json!({ "d": [named, name] }))
                .expect("json");
        } else {
            let e = &ix.entries[want.iter().filter(|&&b| b == b'\n').count() - named];
            let kind: u8 = serde_json::from_slice::<Vec<serde_json::Value>>(line).expect("line")[3]
                .as_u64()
                .expect("kind") as u8;
            let tuple = (
                e.seq, e.offset, e.size, kind, e.id, e.unix_ms, e.fields, &e.groups, &e.rules,
            );
            serde_json::to_writer(&mut want, &tuple).expect("json");
        }
        want.push(b'\n');
    }
    assert_eq!(
        String::from_utf8_lossy(&from_records.buf),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(named, ix.names.len());
}
