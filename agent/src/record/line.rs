//! A finished record as one log line, in the shape the agent's other log lines have (the
//! `request` event of target `sluice::record::writer`), written straight into the writer's
//! batch.
//!
//! Why not `tracing::info!`: formatting the record as an event cost ~44,000 instructions per
//! request (callgrind) — a visitor call, a `fmt` round trip and a UTF-8 check per field, and a
//! timestamp formatted by hand per line — a third of everything the agent spent on a
//! request. Serialising a borrowed struct costs a small fraction of that, and the line is
//! byte-for-byte what the subscriber wrote, so log readers see no change. The agent's log
//! level still decides whether records are written (see `writer::enabled`).
use std::{
    fmt::{self, Write as _},
    time::SystemTime,
};

use super::Record;
use crate::mask::Verdict;

/// The event's target, as `tracing` names the writer module.
const TARGET: &str = "sluice::record::writer";
/// Shown for a field the record does not have (no operation, no executable).
const NONE: &str = "-";

/// Appends `r` as one JSON line (`--log-format json`), field for field in the order the
/// event had, byte for byte what serde_json wrote for it (a unit test holds the two
/// together). Written by hand: serde's per-field calls and byte-at-a-time escaping were
/// ~13,000 instructions per request on the writer's thread (docs/benchmarks.md, "The hot
/// path", 16).
pub fn json(out: &mut Vec<u8>, r: &Record, now: SystemTime) {
    use crate::json_text::{boolean, display, num, string};
    /// `,"name":`, one literal (names are plain ASCII: nothing to escape).
    macro_rules! k {
        ($name:literal) => {
            out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
        };
    }
    let f = Fields::of(r);
    let w = &r.workload;
    out.extend_from_slice(b"{\"timestamp\":");
    display(out, humantime::format_rfc3339_micros(now));
    out.extend_from_slice(b",\"level\":\"INFO\",\"message\":\"request\"");
    k!("request_id");
    num(out, r.id);
    k!("unix_ms");
    num(out, r.unix_ms);
    k!("target_name");
    string(out, &r.target);
    k!("pid");
    num(out, w.pid);
    k!("tgid");
    num(out, w.tgid);
    k!("uid");
    num(out, w.uid);
    k!("gid");
    num(out, w.gid);
    k!("cgroup_id");
    num(out, w.cgroup_id);
    k!("comm");
    string(out, &w.comm);
    k!("exe");
    string(out, f.exe);
    k!("user");
    string(out, f.user);
    k!("cgroup");
    string(out, f.cgroup);
    k!("unit");
    string(out, f.unit);
    k!("container_id");
    string(out, f.container_id);
    k!("container_runtime");
    string(out, f.container_runtime);
    k!("pod_uid");
    string(out, f.pod_uid);
    k!("issuer");
    string(out, f.issuer);
    k!("subject");
    string(out, f.subject);
    k!("groups");
    out.push(b'[');
    for (i, g) in f.groups.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, g);
    }
    out.push(b']');
    k!("method");
    string(out, &r.method);
    k!("path");
    string(out, &r.path);
    k!("operation");
    string(out, f.operation);
    k!("route");
    string(out, f.route);
    k!("model");
    string(out, f.model);
    k!("streaming");
    boolean(out, f.streaming);
    k!("decision");
    string(out, r.action());
    k!("rules");
    display(out, r.rules());
    k!("status");
    num(out, f.status);
    k!("request_bytes");
    num(out, r.request_bytes);
    k!("response_bytes");
    num(out, r.response_bytes);
    k!("outcome");
    display(out, &r.outcome);
    if let Some(ms) = r.headers_ms {
        k!("headers_ms");
        num(out, ms);
    }
    k!("duration_ms");
    num(out, r.duration_ms);
    k!("mask_request");
    mask_json(out, &r.mask_request);
    k!("mask_response");
    mask_json(out, &r.mask_response);
    if let Some(a) = &r.approval {
        k!("approval_id");
        string(out, &a.id);
        k!("approval");
        string(out, a.outcome);
        k!("approved_by");
        string(out, &a.decided_by);
        if let Some(ms) = a.waited_ms {
            k!("approval_wait_ms");
            num(out, ms);
        }
    }
    k!("target");
    string(out, TARGET);
    out.extend_from_slice(b"}\n");
}

/// A masking verdict as a JSON object: `{"verdict":"masked","counts":{"email":2}}`,
/// `{"verdict":"blocked","detector":"aws_access_key"}`, `{"verdict":"unscanned",
/// "reason":"compressed"}`, `{"verdict":"clean"}`, `{"verdict":"off"}`. Counts and names,
/// never values.
fn mask_json(out: &mut Vec<u8>, v: &Verdict) {
    use crate::json_text::{num, string};
    out.extend_from_slice(b"{\"verdict\":");
    match v {
        Verdict::Off => out.extend_from_slice(b"\"off\""),
        Verdict::Clean => out.extend_from_slice(b"\"clean\""),
        Verdict::Masked { counts } => {
            out.extend_from_slice(b"\"masked\",\"counts\":{");
            for (i, (name, n)) in counts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, name);
                out.push(b':');
                num(out, *n);
            }
            out.push(b'}');
        }
        Verdict::Blocked { detector } => {
            out.extend_from_slice(b"\"blocked\",\"detector\":");
            string(out, detector);
        }
        Verdict::Unscanned { reason } => {
            out.extend_from_slice(b"\"unscanned\",\"reason\":");
            string(out, reason.as_str());
        }
    }
    out.push(b'}');
}

/// Appends `r` as one text line (`--log-format text`): `name=value` fields, every value
/// escaped as `logging` escapes the text format, strings quoted where the event quoted them.
pub fn text(out: &mut Vec<u8>, r: &Record, now: SystemTime) {
    let f = Fields::of(r);
    let mut s = String::with_capacity(512);
    // Writing into a String cannot fail.
    let _ = (|| -> fmt::Result {
        write!(
            s,
            "{}  INFO {TARGET}: request request_id={} unix_ms={} target_name=",
            humantime::format_rfc3339_micros(now),
            r.id,
            r.unix_ms
        )?;
        crate::logging::write_escaped(&mut s, &r.target)?;
        let w = &r.workload;
        write!(
            s,
            " pid={} tgid={} uid={} gid={} cgroup_id={} comm=",
            w.pid, w.tgid, w.uid, w.gid, w.cgroup_id
        )?;
        crate::logging::write_escaped(&mut s, &w.comm)?;
        quoted(&mut s, " exe=", f.exe)?;
        quoted(&mut s, " user=", f.user)?;
        quoted(&mut s, " cgroup=", f.cgroup)?;
        quoted(&mut s, " unit=", f.unit)?;
        quoted(&mut s, " container_id=", f.container_id)?;
        quoted(&mut s, " container_runtime=", f.container_runtime)?;
        quoted(&mut s, " pod_uid=", f.pod_uid)?;
        quoted(&mut s, " issuer=", f.issuer)?;
        quoted(&mut s, " subject=", f.subject)?;
        quoted(&mut s, " groups=", &f.groups.join(","))?;
        s.push_str(" method=");
        crate::logging::write_escaped(&mut s, &r.method)?;
        s.push_str(" path=");
        crate::logging::write_escaped(&mut s, &r.path)?;
        write!(s, " operation={}", f.operation)?;
        quoted(&mut s, " route=", f.route)?;
        quoted(&mut s, " model=", f.model)?;
        write!(s, " streaming={}", f.streaming)?;
        quoted(&mut s, " decision=", r.action())?;
        s.push_str(" rules=");
        crate::logging::write_escaped(&mut s, r.rules())?;
        write!(
            s,
            " status={} request_bytes={} response_bytes={} outcome=",
            f.status, r.request_bytes, r.response_bytes
        )?;
        crate::logging::write_escaped(&mut s, &r.outcome)?;
        if let Some(ms) = r.headers_ms {
            write!(s, " headers_ms={ms}")?;
        }
        write!(s, " duration_ms={}", r.duration_ms)?;
        quoted(
            &mut s,
            " mask_request=",
            &MaskText(&r.mask_request).to_string(),
        )?;
        quoted(
            &mut s,
            " mask_response=",
            &MaskText(&r.mask_response).to_string(),
        )?;
        if let Some(a) = &r.approval {
            quoted(&mut s, " approval_id=", &a.id)?;
            quoted(&mut s, " approval=", a.outcome)?;
            quoted(&mut s, " approved_by=", &a.decided_by)?;
            if let Some(ms) = a.waited_ms {
                write!(s, " approval_wait_ms={ms}")?;
            }
        }
        writeln!(s)
    })();
    out.extend_from_slice(s.as_bytes());
}

/// ` name="value"`, quoted and escaped as `Debug` then the text escaper do for a `&str`
/// field of an event.
fn quoted(s: &mut String, name: &str, value: &str) -> fmt::Result {
    s.push_str(name);
    crate::logging::write_escaped(s, format_args!("{value:?}"))
}

/// The record's fields that need a choice made for a missing value.
struct Fields<'a> {
    exe: &'a str,
    user: &'a str,
    cgroup: &'a str,
    unit: &'a str,
    container_id: &'a str,
    container_runtime: &'static str,
    pod_uid: &'a str,
    /// The token's issuer and subject, "-" without one; its groups (never the token).
    issuer: &'a str,
    subject: &'a str,
    groups: &'a [String],
    operation: &'static str,
    route: &'static str,
    model: &'a str,
    streaming: bool,
    status: u16,
}

impl<'a> Fields<'a> {
    fn of(r: &'a Record) -> Self {
        let (op, w) = (r.operation.as_ref(), &r.workload);
        Fields {
            exe: w.exe.as_deref().unwrap_or("?"),
            user: w.user.as_deref().unwrap_or(NONE),
            cgroup: w.cgroup.as_deref().unwrap_or("?"),
            unit: w.unit.as_deref().unwrap_or(NONE),
            container_id: w.container.as_ref().map_or(NONE, |c| c.id.as_str()),
            container_runtime: w
                .container
                .as_ref()
                .and_then(|c| c.runtime)
                .map_or(NONE, |r| r.name()),
            pod_uid: w.pod_uid.as_deref().unwrap_or(NONE),
            issuer: r.principal.as_ref().map_or(NONE, |p| &p.issuer),
            subject: r.principal.as_ref().map_or(NONE, |p| p.subject.as_str()),
            groups: r.principal.as_ref().map_or(&[], |p| p.groups.as_slice()),
            operation: op.map_or(NONE, |o| o.class.as_str()),
            route: op.map_or(NONE, |o| o.route),
            model: op.and_then(|o| o.model.as_deref()).unwrap_or(NONE),
            streaming: op.is_some_and(|o| o.streaming),
            status: r.status.map_or(0, |s| s.as_u16()),
        }
    }
}

/// A masking verdict in the text line: `off`, `clean`, `masked email=2,phone=1`,
/// `blocked aws_access_key`, `unscanned compressed`.
struct MaskText<'a>(&'a Verdict);

impl fmt::Display for MaskText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Verdict::Off => f.write_str("off"),
            Verdict::Clean => f.write_str("clean"),
            Verdict::Masked { counts } => {
                f.write_str("masked ")?;
                for (i, (name, n)) in counts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{name}={n}")?;
                }
                Ok(())
            }
            Verdict::Blocked { detector } => write!(f, "blocked {detector}"),
            Verdict::Unscanned { reason } => write!(f, "unscanned {}", reason.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use http::StatusCode;

    use serde::Serialize;

    use super::*;
    use crate::{
        adapter::{OpClass, Operation, Server},
        policy::{Decision, Permit},
        record::Outcome,
        workload::{Container, Runtime, Workload},
    };

    fn record() -> Record {
        Record {
            id: 7,
            unix_ms: 1_795_661_930_593,
            target: "m".into(),
            server: Server::Openai,
            workload: std::sync::Arc::new(Workload {
                pid: 11,
                tgid: 10,
                uid: 1000,
                gid: 1001,
                cgroup_id: 42,
                comm: "a\nINFO forged \"x\"".into(),
                exe: Some("/usr/bin/py\u{202e}thon".into()),
                cgroup: Some(format!("/system.slice/docker-{}.scope", "ab".repeat(32))),
                container: Some(Container {
                    id: "ab".repeat(32),
                    runtime: Some(Runtime::Docker),
                }),
                pod_uid: None,
                user: Some("svc \"x\"".into()),
                unit: Some(format!("docker-{}.scope", "ab".repeat(32))),
            }),
            principal: Some(std::sync::Arc::new(crate::identity::Principal {
                issuer: "http://127.0.0.1:9/\"x".into(),
                subject: "alice\nINFO forged".into(),
                groups: vec!["ml-eng".into(), "ops".into()],
                claims: Default::default(),
            })),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            operation: Some(Operation {
                class: OpClass::ModelExport,
                route: "openai.chat.completions",
                model: Some("gpt-4o\n\"".into()),
                streaming: true,
            }),
            decision: Some(Decision::Permit(Permit {
                rules: vec!["a".into(), "b".into()],
                by_default: false,
            })),
            status: Some(StatusCode::OK),
            request_bytes: 62,
            response_bytes: 130,
            outcome: Outcome::Ended("too \"long\"".into()),
            headers_ms: Some(3),
            duration_ms: 9,
            mask_request: Verdict::Masked {
                counts: vec![("email".into(), 2), ("payment_card".into(), 1)],
            },
            mask_response: Verdict::Unscanned {
                reason: crate::mask::Unscannable::Compressed,
            },
            response_headers: Vec::new(),
            approval: None,
            body: None,
            unaudited: false,
        }
    }

    const NOW: Duration = Duration::from_micros(1_795_661_930_720_561);

    /// The JSON line, field for field in the order the event had.
    #[derive(Serialize)]
    struct Json<'a> {
        timestamp: Shown<humantime::Rfc3339Timestamp>,
        level: &'static str,
        message: &'static str,
        request_id: u64,
        unix_ms: u64,
        target_name: &'a str,
        pid: u32,
        tgid: u32,
        uid: u32,
        gid: u32,
        cgroup_id: u64,
        comm: &'a str,
        exe: &'a str,
        user: &'a str,
        cgroup: &'a str,
        unit: &'a str,
        container_id: &'a str,
        container_runtime: &'static str,
        pod_uid: &'a str,
        issuer: &'a str,
        subject: &'a str,
        groups: &'a [String],
        method: &'a str,
        path: &'a str,
        operation: &'static str,
        route: &'static str,
        model: &'a str,
        streaming: bool,
        decision: &'static str,
        rules: Shown<crate::record::Rules<'a>>,
        status: u16,
        request_bytes: u64,
        response_bytes: u64,
        outcome: Shown<&'a crate::record::Outcome>,
        #[serde(skip_serializing_if = "Option::is_none")]
        headers_ms: Option<u64>,
        duration_ms: u64,
        mask_request: MaskJson<'a>,
        mask_response: MaskJson<'a>,
        /// Only on requests a rule held for approval.
        #[serde(skip_serializing_if = "Option::is_none")]
        approval_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        approval: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        approved_by: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        approval_wait_ms: Option<u64>,
        target: &'static str,
    }

    /// A masking verdict as a JSON object: `{"verdict":"masked","counts":{"email":2}}`,
    /// `{"verdict":"blocked","detector":"aws_access_key"}`, `{"verdict":"unscanned",
    /// "reason":"compressed"}`, `{"verdict":"clean"}`, `{"verdict":"off"}`. Counts and names,
    /// never values.
    struct MaskJson<'a>(&'a Verdict);

    impl Serialize for MaskJson<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap as _;
            let mut m = s.serialize_map(None)?;
            match self.0 {
                Verdict::Off => m.serialize_entry("verdict", "off")?,
                Verdict::Clean => m.serialize_entry("verdict", "clean")?,
                Verdict::Masked { counts } => {
                    m.serialize_entry("verdict", "masked")?;
                    m.serialize_entry("counts", &Counts(counts))?;
                }
                Verdict::Blocked { detector } => {
                    m.serialize_entry("verdict", "blocked")?;
                    m.serialize_entry("detector", detector)?;
                }
                Verdict::Unscanned { reason } => {
                    m.serialize_entry("verdict", "unscanned")?;
                    m.serialize_entry("reason", reason.as_str())?;
                }
            }
            m.end()
        }
    }

    struct Counts<'a>(&'a [(String, u64)]);

    impl Serialize for Counts<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }

    /// A `Display` value serialised as a JSON string, without an intermediate `String`.
    struct Shown<T>(T);

    impl<T: fmt::Display> Serialize for Shown<T> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&self.0)
        }
    }

    /// The line as serde_json wrote it before `json` was written by hand: the reference
    /// the hand-written bytes are held to.
    fn serde_line(r: &Record, now: SystemTime) -> Vec<u8> {
        let f = Fields::of(r);
        let line = Json {
            timestamp: Shown(humantime::format_rfc3339_micros(now)),
            level: "INFO",
            message: "request",
            request_id: r.id,
            unix_ms: r.unix_ms,
            target_name: &r.target,
            pid: r.workload.pid,
            tgid: r.workload.tgid,
            uid: r.workload.uid,
            gid: r.workload.gid,
            cgroup_id: r.workload.cgroup_id,
            comm: &r.workload.comm,
            exe: f.exe,
            user: f.user,
            cgroup: f.cgroup,
            unit: f.unit,
            container_id: f.container_id,
            container_runtime: f.container_runtime,
            pod_uid: f.pod_uid,
            issuer: f.issuer,
            subject: f.subject,
            groups: f.groups,
            method: &r.method,
            path: &r.path,
            operation: f.operation,
            route: f.route,
            model: f.model,
            streaming: f.streaming,
            decision: r.action(),
            rules: Shown(r.rules()),
            status: f.status,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            outcome: Shown(&r.outcome),
            headers_ms: r.headers_ms,
            duration_ms: r.duration_ms,
            mask_request: MaskJson(&r.mask_request),
            mask_response: MaskJson(&r.mask_response),
            approval_id: r.approval.as_ref().map(|a| a.id.as_str()),
            approval: r.approval.as_ref().map(|a| a.outcome),
            approved_by: r.approval.as_ref().map(|a| a.decided_by.as_str()),
            approval_wait_ms: r.approval.as_ref().and_then(|a| a.waited_ms),
            target: TARGET,
        };
        let mut out = serde_json::to_vec(&line).expect("serialises");
        out.push(b'\n');
        out
    }

    #[test]
    fn json_line_has_every_field_in_the_event_order_and_escapes_values() {
        let mut out = Vec::new();
        json(&mut out, &record(), UNIX_EPOCH + NOW);
        let line = String::from_utf8(out).expect("utf-8");
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        assert!(
            line.starts_with(
                r#"{"timestamp":"2026-11-26T02:58:50.720561Z","level":"INFO","message":"request","request_id":7,"unix_ms":1795661930593,"target_name":"m","pid":11,"tgid":10,"uid":1000,"gid":1001,"cgroup_id":42,"comm":"a\nINFO forged \"x\"","#
            ),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(v["exe"], "/usr/bin/py\u{202e}thon");
        assert_eq!(v["user"], "svc \"x\"");
        assert_eq!(v["unit"], format!("docker-{}.scope", "ab".repeat(32)));
        assert_eq!(v["container_id"], "ab".repeat(32));
        assert_eq!(v["container_runtime"], "docker");
        assert_eq!(v["pod_uid"], "-");
        assert_eq!(v["issuer"], "http://127.0.0.1:9/\"x");
        assert_eq!(v["subject"], "alice\nINFO forged");
        assert_eq!(v["groups"], serde_json::json!(["ml-eng", "ops"]));
        assert_eq!(v["operation"], "model-export");
        assert_eq!(v["model"], "gpt-4o\n\"");
        assert_eq!(v["streaming"], true);
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["rules"], "a,b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["outcome"], "ended by sluice: too \"long\"");
        assert_eq!(v["headers_ms"], 3);
        assert_eq!(v["duration_ms"], 9);
        assert_eq!(
            v["mask_request"],
            serde_json::json!({"verdict": "masked", "counts": {"email": 2, "payment_card": 1}})
        );
        assert_eq!(
            v["mask_response"],
            serde_json::json!({"verdict": "unscanned", "reason": "compressed"})
        );
        assert_eq!(v["target"], TARGET);
    }

    /// The hand-written line is byte for byte serde_json's, for every shape a record takes:
    /// every optional field there and not, every verdict, values that need escaping.
    #[test]
    fn json_line_is_byte_for_byte_what_serde_json_wrote() {
        let mut records = vec![record()];
        let mut lacking = record();
        lacking.operation = None;
        lacking.decision = None;
        lacking.status = None;
        lacking.headers_ms = None;
        lacking.principal = None;
        lacking.outcome = Outcome::Ended("\u{1}\t\\ \u{7f} \u{2028} é".into());
        std::sync::Arc::make_mut(&mut lacking.workload).exe = None;
        records.push(lacking);
        for (i, verdict) in [
            Verdict::Off,
            Verdict::Clean,
            Verdict::Blocked {
                detector: "aws\"key".into(),
            },
            Verdict::Masked { counts: Vec::new() },
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = record();
            r.mask_request = verdict.clone();
            r.mask_response = verdict;
            r.approval = Some(crate::record::ApprovalNote {
                id: format!("ap-{i}\n"),
                outcome: "approved",
                decided_by: "alice \"a\"".into(),
                waited_ms: (i % 2 == 0).then_some(1234),
            });
            records.push(r);
        }
        for r in &records {
            let mut ours = Vec::new();
            json(&mut ours, r, UNIX_EPOCH + NOW);
            let theirs = serde_line(r, UNIX_EPOCH + NOW);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }

    #[test]
    fn json_line_leaves_out_what_the_record_lacks() {
        let mut r = record();
        r.operation = None;
        r.decision = None;
        r.status = None;
        r.headers_ms = None;
        r.principal = None;
        std::sync::Arc::make_mut(&mut r.workload).exe = None;
        let mut out = Vec::new();
        json(&mut out, &r, UNIX_EPOCH + NOW);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["operation"], "-");
        assert_eq!(v["route"], "-");
        assert_eq!(v["model"], "-");
        assert_eq!(v["exe"], "?");
        assert_eq!(
            (&v["issuer"], &v["subject"]),
            (&serde_json::json!("-"), &serde_json::json!("-"))
        );
        assert_eq!(v["groups"], serde_json::json!([]));
        assert_eq!(v["decision"], "refuse");
        assert_eq!(v["rules"], "");
        assert_eq!(v["status"], 0);
        assert!(v.get("headers_ms").is_none(), "{v}");
    }

    #[test]
    fn text_line_is_the_event_line_with_every_value_escaped() {
        let mut out = Vec::new();
        text(&mut out, &record(), UNIX_EPOCH + NOW);
        let line = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            line,
            "2026-11-26T02:58:50.720561Z  INFO sluice::record::writer: request request_id=7 \
             unix_ms=1795661930593 target_name=m pid=11 tgid=10 uid=1000 gid=1001 cgroup_id=42 \
             comm=a\\nINFO forged \"x\" exe=\"/usr/bin/py\\u{202e}thon\" user=\"svc \\\"x\\\"\" \
             cgroup=\"/system.slice/docker-abababababababababababababababababababababababababababababababab.scope\" \
             unit=\"docker-abababababababababababababababababababababababababababababababab.scope\" \
             container_id=\"abababababababababababababababababababababababababababababababab\" \
             container_runtime=\"docker\" pod_uid=\"-\" issuer=\"http://127.0.0.1:9/\\\"x\" \
             subject=\"alice\\nINFO forged\" groups=\"ml-eng,ops\" method=POST \
             path=/v1/chat/completions operation=model-export route=\"openai.chat.completions\" \
             model=\"gpt-4o\\n\\\"\" streaming=true decision=\"allow\" rules=a,b status=200 \
             request_bytes=62 response_bytes=130 outcome=ended by sluice: too \"long\" \
             headers_ms=3 duration_ms=9 mask_request=\"masked email=2,payment_card=1\" \
             mask_response=\"unscanned compressed\"\n"
        );
    }

    /// The line the `tracing` text subscriber wrote for the same record, field for field:
    /// log readers (and the text-format tests) see no change.
    #[test]
    fn text_line_matches_what_the_text_subscriber_wrote() {
        let r = record();
        let mut out = Vec::new();
        text(&mut out, &r, UNIX_EPOCH + NOW);
        let ours = String::from_utf8(out).expect("utf-8");
        let theirs = crate::logging::tests::logged(|| {
            let f = Fields::of(&r);
            let w = &r.workload;
            tracing::info!(
                target: "sluice::record::writer",
                request_id = r.id, unix_ms = r.unix_ms,
                target_name = %r.target, pid = w.pid, tgid = w.tgid, uid = w.uid, gid = w.gid,
                cgroup_id = w.cgroup_id, comm = %w.comm, exe = f.exe, user = f.user,
                cgroup = f.cgroup, unit = f.unit,
                container_id = f.container_id, container_runtime = f.container_runtime,
                pod_uid = f.pod_uid, issuer = f.issuer, subject = f.subject,
                groups = f.groups.join(",").as_str(),
                method = %r.method, path = %r.path,
                operation = %f.operation, route = f.route, model = f.model,
                streaming = f.streaming, decision = r.action(), rules = %r.rules(),
                status = f.status, request_bytes = r.request_bytes,
                response_bytes = r.response_bytes, outcome = %r.outcome,
                headers_ms = r.headers_ms, duration_ms = r.duration_ms,
                mask_request = MaskText(&r.mask_request).to_string().as_str(),
                mask_response = MaskText(&r.mask_response).to_string().as_str(),
                "request"
            );
        });
        // The subscriber's timestamp is its own clock's: compare from the level on.
        let strip = |l: &str| l.split_once("  INFO ").map(|(_, rest)| rest.to_string());
        assert_eq!(strip(&ours), strip(&theirs), "{ours}\n{theirs}");
    }
}
