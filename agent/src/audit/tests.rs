use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use super::{
    checkpoint::{self, Reason},
    entry::Kind,
    frame, key,
    segment::{self, Step},
    *,
};
use crate::{
    adapter::{OpClass, Operation, Server},
    identity::Principal,
    policy::{Decision, Denial, Permit},
    record::{Outcome, Record},
    workload::Workload,
};

pub(super) struct Dir(pub(super) PathBuf);

impl Dir {
    pub(super) fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluice-audit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A small tmpfs mounted for a test (root only), unmounted on drop: a real full disk.
pub(super) struct Tmpfs(pub(super) Dir);

impl Tmpfs {
    pub(super) fn new(tag: &str, size: &str) -> Tmpfs {
        let d = Dir::new(tag);
        fs::create_dir_all(&d.0).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&d.0)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount tmpfs");
        Tmpfs(d)
    }

    /// Fills the filesystem, then frees the filler's last `free` bytes (whole pages).
    pub(super) fn leave(&self, free: u64) {
        use std::io::Write as _;
        let path = self.0.0.join("filler");
        let mut f = fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
        let len = f.metadata().expect("stat").len();
        f.set_len(len.saturating_sub(free)).expect("truncate");
    }

    /// Frees everything the filler held.
    pub(super) fn free(&self) {
        let _ = fs::remove_file(self.0.0.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0.0)
            .status();
    }
}

pub(super) fn settings(dir: &Path) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        level: Level::Metadata,
        segment_bytes: 16 * 1024,
        checkpoint_records: 20,
        retention: Retention {
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
        },
        ..Settings::default()
    }
}

pub(super) fn record(id: u64, subject: &str, model: &str, allow: bool) -> Record {
    Record {
        id,
        unix_ms: 1_700_000_000_000 + id,
        target: "openai".into(),
        server: Server::Openai,
        workload: Arc::new(Workload::described(
            1000,
            1000,
            "python3".into(),
            Some("/usr/bin/python3".into()),
        )),
        principal: Some(Arc::new(Principal {
            issuer: "https://idp.example".into(),
            subject: subject.into(),
            groups: vec!["team-a".into(), format!("g-{}", id % 7)],
            claims: Arc::new(serde_json::Value::Null),
        })),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        operation: Some(Operation {
            class: OpClass::Inference,
            route: "openai.chat.completions",
            model: Some(model.into()),
            streaming: false,
        }),
        decision: Some(if allow {
            Decision::Permit(Permit {
                rules: vec!["allow-chat".into()],
                by_default: false,
            })
        } else {
            Decision::Deny(Denial {
                rule: Some("no-big".into()),
                reason: "too big".into(),
            })
        }),
        status: Some(http::StatusCode::OK),
        request_bytes: 100,
        response_bytes: 200,
        outcome: Outcome::Complete,
        headers_ms: Some(1),
        duration_ms: 2,
        response_headers: vec![("content-type".into(), "application/json".into())],
        mask_request: crate::mask::Verdict::Off,
        mask_response: crate::mask::Verdict::Off,
        approval: None,
        body: None,
        unaudited: false,
    }
}

/// A store with `n` requests (opening and final records each), closed.
fn filled(dir: &Path, s: &Settings, n: u64) {
    let (mut st, _) = Store::open(s).expect("open");
    for i in 1..=n {
        let r = record(
            i,
            &format!("user-{}", i % 10),
            &format!("m-{}", i % 3),
            i % 5 != 0,
        );
        st.append(
            Kind::Open,
            &r,
            &[("authorization".into(), "[removed]".into())],
        );
        st.append(Kind::Final, &r, &r.response_headers);
        st.flush().expect("flush");
        st.maintain(false).expect("maintain");
    }
    st.close().expect("close");
    assert!(segment::list(dir).is_ok_and(|l| !l.is_empty()));
}

/// Flushes, closes the handle and joins the store's thread.
pub(super) async fn stop(handle: Handle, thread: std::thread::JoinHandle<()>) {
    handle.flush().await.expect("flushed");
    drop(handle);
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("thread");
}

pub(super) fn report(dir: &Path) -> Report {
    let k = key::read(&dir.join("keys/signing.key")).expect("key");
    verify(dir, Some(k.verifying_key())).expect("verify runs")
}

fn problems(dir: &Path) -> String {
    let r = report(dir);
    assert!(!r.ok(), "tampering was not detected");
    r.problems.join("\n")
}

/// (offset, size, seq, kind) of every frame of a segment.
fn frames_of(path: &Path) -> Vec<(usize, usize, u64, Kind)> {
    let bytes = fs::read(path).expect("read");
    segment::frames(&bytes, 0)
        .filter_map(|s| match s {
            Step::Frame { offset, frame } => {
                Some((offset as usize, frame.size(), frame.seq, frame.kind))
            }
            Step::Bad { .. } => None,
        })
        .collect()
}

#[test]
fn frames_round_trip_and_a_flipped_byte_fails_the_checksum() {
    let mut buf = Vec::new();
    let h = frame::encode(&mut buf, Kind::Final, 7, &[1; 32], b"{\"a\":1}");
    let f = frame::decode(&buf).expect("decodes");
    assert_eq!(
        (f.seq, f.prev, f.body, f.hash),
        (7, [1; 32], &b"{\"a\":1}"[..], h)
    );
    let mut bad = buf.clone();
    bad[frame::HEAD + 2] ^= 1;
    assert!(matches!(
        frame::decode(&bad),
        Err(frame::Bad::Checksum { seq: 7, .. })
    ));
    assert_eq!(
        frame::decode(&buf[..buf.len() - 1]).err(),
        Some(frame::Bad::Short)
    );
}

#[test]
fn a_closed_store_verifies_with_restricted_permissions() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = Dir::new("ok");
    let s = settings(&d.0);
    filled(&d.0, &s, 200);
    let r = report(&d.0);
    assert!(r.ok(), "{:?}", r.problems);
    assert!(r.segments > 2, "small segments rotate: {}", r.segments);
    assert!(r.checkpoints >= r.segments);
    assert_eq!(
        fs::metadata(&d.0).expect("dir").permissions().mode() & 0o777,
        0o700
    );
    for e in fs::read_dir(&d.0).expect("ls") {
        let e = e.expect("entry");
        if e.path().is_file() {
            assert_eq!(
                e.metadata().expect("meta").permissions().mode() & 0o777,
                0o600,
                "{:?}",
                e.path()
            );
        }
    }
    let k = d.0.join("keys/signing.key");
    assert_eq!(
        fs::metadata(&k).expect("key").permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn list_filters_through_the_index_and_the_unindexed_tail() {
    let d = Dir::new("list");
    let s = settings(&d.0);
    filled(&d.0, &s, 100);
    let all = list(&d.0, &Filter::default(), None).expect("list");
    assert_eq!(all.len(), 100, "one row per request");
    assert!(all.iter().all(|l| l.kind == Kind::Final));
    let f = Filter {
        subject: Some("user-3".into()),
        ..Filter::default()
    };
    let got = list(&d.0, &f, None).expect("list");
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|l| {
        l.entry
            .principal
            .as_ref()
            .is_some_and(|p| p.subject == "user-3")
    }));
    let f = Filter {
        decision: Some("deny".into()),
        rule: Some("no-big".into()),
        model: Some("m-1".into()),
        ..Filter::default()
    };
    let got: Vec<u64> = list(&d.0, &f, None)
        .expect("list")
        .iter()
        .map(|l| l.entry.id)
        .collect();
    let want: Vec<u64> = (1..=100).filter(|i| i % 5 == 0 && i % 3 == 1).collect();
    assert_eq!(got, want);
    let f = Filter {
        group: Some("g-2".into()),
        workload: Some("/usr/bin/python3".into()),
        since_ms: Some(1_700_000_000_050),
        ..Filter::default()
    };
    let got = list(&d.0, &f, None).expect("list");
    assert!(got.iter().all(|l| l.entry.id >= 50 && l.entry.id % 7 == 2));
    assert_eq!(got.len(), (50..=100).filter(|i| i % 7 == 2).count());
    // Without the index files, the records themselves answer the same.
    for (n, _) in segment::list(&d.0).expect("segments") {
        fs::remove_file(d.0.join(segment::idx_name(n))).expect("rm idx");
    }
    assert_eq!(list(&d.0, &f, None).expect("list").len(), got.len());
    let shown = show(&d.0, 42).expect("show");
    assert_eq!(
        shown.iter().map(|l| l.kind).collect::<Vec<_>>(),
        [Kind::Open, Kind::Final]
    );
    assert_eq!(shown[0].entry.headers[0].1, "[removed]");
}

#[test]
fn a_flipped_byte_is_located() {
    let d = Dir::new("flip");
    filled(&d.0, &settings(&d.0), 60);
    let seg = d.0.join(segment::seg_name(2));
    let fr = frames_of(&seg);
    let (off, _, seq, _) = fr[3];
    let mut b = fs::read(&seg).expect("read");
    b[off + frame::HEAD + 5] ^= 0x20;
    fs::write(&seg, b).expect("write");
    let p = problems(&d.0);
    assert!(
        p.contains(&format!(
            "segment 2 (00000002.seg), record seq {seq} at offset {off}: checksum mismatch"
        )),
        "{p}"
    );
}

#[test]
fn a_deleted_record_is_located() {
    let d = Dir::new("delete");
    filled(&d.0, &settings(&d.0), 60);
    let seg = d.0.join(segment::seg_name(2));
    let fr = frames_of(&seg);
    let (off, size, seq, _) = fr[4];
    let mut b = fs::read(&seg).expect("read");
    b.drain(off..off + size);
    fs::write(&seg, b).expect("write");
    let p = problems(&d.0);
    assert!(
        p.contains(&format!("record seq {seq} is missing: deleted")),
        "{p}"
    );
    assert!(p.contains("segment 2 (00000002.seg)"), "{p}");
}

#[test]
fn two_reordered_records_are_located() {
    let d = Dir::new("reorder");
    filled(&d.0, &settings(&d.0), 60);
    let seg = d.0.join(segment::seg_name(2));
    let fr = frames_of(&seg);
    let ((a, sa, qa, _), (b_off, sb, _, _)) = (fr[3], fr[4]);
    let b = fs::read(&seg).expect("read");
    let mut out = b[..a].to_vec();
    out.extend_from_slice(&b[b_off..b_off + sb]);
    out.extend_from_slice(&b[a..a + sa]);
    out.extend_from_slice(&b[b_off + sb..]);
    fs::write(&seg, out).expect("write");
    let p = problems(&d.0);
    assert!(
        p.contains(&format!("record seq {qa} is missing")) || p.contains("out of order"),
        "{p}"
    );
    assert!(
        p.contains(&format!("seq {qa} follows seq {}", qa + 1)),
        "{p}"
    );
}

#[test]
fn a_truncated_segment_is_located() {
    let d = Dir::new("truncate");
    filled(&d.0, &settings(&d.0), 60);
    let seg = d.0.join(segment::seg_name(2));
    let fr = frames_of(&seg);
    let (off, _, _, _) = fr[fr.len() - 3];
    let f = fs::OpenOptions::new().write(true).open(&seg).expect("open");
    f.set_len(off as u64 + 10).expect("truncate");
    let p = problems(&d.0);
    assert!(p.contains("segment 2 (00000002.seg)"), "{p}");
    assert!(p.contains("truncated"), "{p}");
}

#[test]
fn two_swapped_segments_are_located() {
    let d = Dir::new("swap");
    filled(&d.0, &settings(&d.0), 60);
    let (a, b) = (
        d.0.join(segment::seg_name(2)),
        d.0.join(segment::seg_name(3)),
    );
    let tmp = d.0.join("tmp");
    fs::rename(&a, &tmp).expect("mv");
    fs::rename(&b, &a).expect("mv");
    fs::rename(&tmp, &b).expect("mv");
    let p = problems(&d.0);
    assert!(p.contains("00000002.seg holds segment 3's records"), "{p}");
    assert!(p.contains("00000003.seg holds segment 2's records"), "{p}");
}

/// Replaces the newest segment's last record, a checkpoint, with one signed by `signer`
/// (naming it as its key; `edit` changes the rest); (segment, seq) of it.
fn resign_last_checkpoint(
    dir: &Path,
    signer: &ed25519_dalek::SigningKey,
    edit: impl FnOnce(&mut checkpoint::Body),
) -> (u64, u64) {
    let segs = segment::list(dir).expect("segments");
    let (n, seg) = segs.last().expect("a segment").clone();
    let fr = frames_of(&seg);
    let (off, size, seq, kind) = *fr.last().expect("frames");
    assert_eq!(kind, Kind::Checkpoint);
    let b = fs::read(&seg).expect("read");
    let f = frame::decode(&b[off..]).expect("frame");
    let prev = f.prev;
    let mut c: checkpoint::Checkpoint = serde_json::from_slice(f.body).expect("checkpoint");
    c.body.key_id = key::id(&signer.verifying_key());
    c.body.public_key = frame::hex(signer.verifying_key().as_bytes());
    edit(&mut c.body);
    let forged = checkpoint::sign(signer, seq, &prev, c.body);
    let mut out = b[..off].to_vec();
    frame::encode(
        &mut out,
        Kind::Checkpoint,
        seq,
        &prev,
        &serde_json::to_vec(&forged).expect("json"),
    );
    out.extend_from_slice(&b[off + size..]);
    fs::write(&seg, out).expect("write");
    (n, seq)
}

#[test]
fn a_last_checkpoint_signed_by_another_key_is_located() {
    let d = Dir::new("forge");
    filled(&d.0, &settings(&d.0), 30);
    let other = key::generate(&d.0.join("other.key")).expect("key");
    let (n, seq) = resign_last_checkpoint(&d.0, &other, |_| {});
    let p = problems(&d.0);
    assert!(
        p.contains(&format!(
            "segment {n}, checkpoint seq {seq}: signed by key {}",
            key::id(&other.verifying_key())
        )),
        "{p}"
    );
}

#[test]
fn a_torn_tail_is_cut_at_start_and_the_chain_continues() {
    let d = Dir::new("torn");
    let s = settings(&d.0);
    let (mut st, _) = Store::open(&s).expect("open");
    for i in 1..=5 {
        st.append(Kind::Final, &record(i, "a", "m", true), &[]);
    }
    st.flush().expect("flush");
    let last = st.last_seq();
    // A crash: no closing checkpoint, and half of a record on disk.
    std::mem::forget(st);
    let seg = d.0.join(segment::seg_name(1));
    let mut half = Vec::new();
    frame::encode(&mut half, Kind::Final, last + 1, &[0; 32], b"{\"id\":6}");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .expect("open");
    std::io::Write::write_all(&mut f, &half[..half.len() / 2]).expect("write");
    drop(f);
    let before = report(&d.0);
    assert!(
        before.ok(),
        "a torn tail is not tampering: {:?}",
        before.problems
    );
    assert!(
        before.notes.iter().any(|n| n.contains("incomplete record")),
        "{:?}",
        before.notes
    );
    // The lock of the forgotten store is released with its file only at exit: take it over.
    let _ = fs::remove_file(d.0.join("lock"));
    let (mut st, rec) = Store::open(&s).expect("reopen");
    assert_eq!(rec.torn_bytes, (half.len() / 2) as u64);
    assert!(rec.closed_after_crash);
    assert_eq!(st.next_request_id(), 6, "request ids continue");
    st.append(Kind::Final, &record(6, "a", "m", true), &[]);
    st.flush().expect("flush");
    st.close().expect("close");
    let r = report(&d.0);
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(list(&d.0, &Filter::default(), None).expect("list").len(), 6);
    assert!(
        d.0.join("00000001.torn").exists(),
        "the torn bytes are kept"
    );
}

#[test]
fn retention_deletes_whole_oldest_segments_behind_a_signed_cut() {
    let d = Dir::new("retention");
    let mut s = settings(&d.0);
    s.retention.max_bytes = 64 * 1024;
    filled(&d.0, &s, 400);
    let segs = segment::list(&d.0).expect("segments");
    assert!(segs[0].0 > 1, "oldest segments deleted: {segs:?}");
    let total: u64 = fs::read_dir(&d.0)
        .expect("ls")
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(total < 64 * 1024 + 2 * s.segment_bytes, "{total}");
    let r = report(&d.0);
    assert!(r.ok(), "{:?}", r.problems);
    assert!(
        r.notes.iter().any(|n| n.contains("deleted by retention")),
        "{:?}",
        r.notes
    );
    // Deleting one more segment by hand is not retention.
    fs::remove_file(&segs[0].1).expect("rm");
    let p = problems(&d.0);
    assert!(p.contains("no signed retention cut"), "{p}");
}

#[test]
fn a_rotated_key_is_trusted_through_the_chain_and_a_stranger_is_not() {
    let d = Dir::new("rotate");
    let s = settings(&d.0);
    filled(&d.0, &s, 10);
    let old = key::read(&s.key_path()).expect("key").verifying_key();
    key::generate(&key::next_path(&s.key_path())).expect("next key");
    let (mut st, rec) = Store::open(&s).expect("open");
    assert_eq!(rec.rotated_from.as_deref(), Some(key::id(&old).as_str()));
    st.append(Kind::Final, &record(11, "a", "m", true), &[]);
    st.flush().expect("flush");
    st.close().expect("close");
    let new = key::read(&s.key_path()).expect("key").verifying_key();
    assert_ne!(key::id(&new), key::id(&old));
    for anchor in [old, new] {
        let r = verify(&d.0, Some(anchor)).expect("verify");
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.keys.len(), 2);
    }
    let stranger = key::generate(&d.0.join("x.key"))
        .expect("key")
        .verifying_key();
    let r = verify(&d.0, Some(stranger)).expect("verify");
    assert!(!r.ok());
    assert!(!key::next_path(&s.key_path()).exists());
}

#[test]
fn a_second_writer_is_refused() {
    let d = Dir::new("lock");
    let s = settings(&d.0);
    let _first = Store::open(&s).expect("open");
    assert!(matches!(Store::open(&s), Err(Error::Locked(_))));
}

#[test]
fn credentials_never_reach_the_record() {
    let mut h = http::HeaderMap::new();
    h.insert("authorization", "Bearer sk-canary".parse().expect("v"));
    h.insert("x-api-key", "sk-canary".parse().expect("v"));
    h.insert("cookie", "s=sk-canary".parse().expect("v"));
    h.insert("x-custom", "Bearer sk-canary".parse().expect("v"));
    h.insert("x-other", "bearer sk-canary".parse().expect("v"));
    h.insert(
        "x-forwarded-id",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzay1jYW5hcnkifQ.sk-canary"
            .parse()
            .expect("v"),
    );
    h.insert("cf-access-jwt-assertion", "sk-canary".parse().expect("v"));
    h.insert("content-type", "application/json".parse().expect("v"));
    let got = sanitize_headers(&h);
    assert!(got.iter().all(|(_, v)| !v.contains("sk-canary")), "{got:?}");
    assert!(got.contains(&("content-type".into(), "application/json".into())));
    assert_eq!(
        super::entry::sanitize_path("/v1/models?key=sk-canary&x=1"),
        "/v1/models?key=[removed]&x=1"
    );
}

#[tokio::test]
async fn the_thread_acknowledges_opening_records_once_durable() {
    let d = Dir::new("thread");
    let s = Settings {
        required: true,
        ..settings(&d.0)
    };
    let (handle, thread, _, first) = start(&s).expect("start");
    assert_eq!(first, 1);
    handle
        .open(record(1, "a", "m", true), vec![])
        .await
        .expect("durable");
    handle.finals(vec![record(1, "a", "m", true)]).await;
    handle.flush().await.expect("flushed");
    handle.flush().await.expect("flushed again");
    assert!(
        handle.refusal().is_none(),
        "a healthy store with nothing queued refuses nothing"
    );
    stop(handle, thread).await;
    let r = report(&d.0);
    assert!(r.ok(), "{:?}", r.problems);
    let shown = show(&d.0, 1).expect("show");
    assert_eq!(shown.len(), 2);
    // A closed store ends with a closing checkpoint.
    let segs = segment::list(&d.0).expect("segs");
    let fr = frames_of(&segs.last().expect("seg").1);
    let last = fr.last().expect("frame");
    assert_eq!(last.3, Kind::Checkpoint);
    let b = fs::read(&segs.last().expect("seg").1).expect("read");
    let c: checkpoint::Checkpoint =
        serde_json::from_slice(frame::decode(&b[last.0..]).expect("frame").body).expect("cp");
    assert_eq!(c.body.reason, Reason::Close);
}

/// 100k requests through the store API, then filtered lists; the time is printed (and
/// recorded in docs/benchmarks.md), never asserted.
#[test]
fn listing_100k_requests_with_filters() {
    let d = Dir::new("100k");
    let mut s = settings(&d.0);
    s.segment_bytes = 64 * 1024 * 1024;
    s.checkpoint_records = 10_000;
    let (mut st, _) = Store::open(&s).expect("open");
    let n = 100_000u64;
    for i in 1..=n {
        let r = record(
            i,
            &format!("user-{}", i % 1000),
            &format!("m-{}", i % 50),
            i % 5 != 0,
        );
        st.append(Kind::Final, &r, &r.response_headers);
        if i % 1000 == 0 {
            st.flush().expect("flush");
            st.maintain(false).expect("maintain");
        }
    }
    st.close().expect("close");
    for (name, f) in [
        (
            "subject",
            Filter {
                subject: Some("user-7".into()),
                ..Filter::default()
            },
        ),
        (
            "model+decision+rule",
            Filter {
                model: Some("m-5".into()),
                decision: Some("deny".into()),
                rule: Some("no-big".into()),
                ..Filter::default()
            },
        ),
        (
            "group+time",
            Filter {
                group: Some("g-3".into()),
                since_ms: Some(1_700_000_090_000),
                ..Filter::default()
            },
        ),
    ] {
        let t = std::time::Instant::now();
        let got = list(&d.0, &f, None).expect("list");
        println!(
            "list over {n} records, filter {name}: {} rows in {:?}",
            got.len(),
            t.elapsed()
        );
        assert!(!got.is_empty());
    }
}

#[test]
fn the_shipped_config_records_and_a_config_without_audit_does_not() {
    let builtin = crate::config::Config::builtin().expect("builtin");
    assert!(builtin.audit.enabled());
    assert_eq!(builtin.audit.dir, PathBuf::from("/var/lib/sluice/audit"));
    assert_eq!(builtin.audit.durability, Durability::Group);
    assert!(!builtin.audit.required);
    let base = "listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: 127.0.0.1:80\n";
    let off = crate::config::Config::parse(base, "t").expect("parses");
    assert!(!off.audit.enabled());
    let on = crate::config::Config::parse(
        &format!("{base}audit: {{dir: /x, level: metadata, durability: record, required: true, retention: {{max_age: 7d}}}}\n"),
        "t",
    )
    .expect("parses");
    assert_eq!(on.audit.retention.max_age, Duration::from_secs(7 * 86400));
    assert_eq!(on.audit.durability, Durability::Record);
    let full = crate::config::Config::parse(
        &format!("{base}audit: {{dir: /x, level: full, max_body_bytes: 1024}}\n"),
        "t",
    )
    .expect("full parses");
    assert_eq!(
        (full.audit.level, full.audit.max_body_bytes),
        (Level::Full, 1024)
    );
    // A target may lower its level (bodies out, or its requests out), never raise it.
    let target = |level: &str, audit: &str| {
        crate::config::Config::parse(
            &format!(
                "listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: 127.0.0.1:80\n    audit_level: {level}\naudit: {{dir: /x, level: {audit}}}\n"
            ),
            "t",
        )
    };
    assert!(target("metadata", "full").is_ok());
    assert!(target("full", "full").is_ok());
    assert!(target("full", "metadata").is_err());
    assert!(target("none", "full").is_ok());
    assert!(target("metadata", "none").is_err());
    for bad in [
        "audit: {dir: relative, level: metadata}",
        "audit: {dir: /x, level: metadata, segment_bytes: 10}",
        "audit: {dir: /x, levle: metadata}",
    ] {
        assert!(
            crate::config::Config::parse(&format!("{base}{bad}\n"), "t").is_err(),
            "{bad}"
        );
    }
}

#[test]
fn a_middle_records_length_raised_past_the_end_is_damage_not_a_torn_tail() {
    let d = Dir::new("raised");
    let s = settings(&d.0);
    let (mut st, _) = Store::open(&s).expect("open");
    for i in 1..=6 {
        st.append(Kind::Final, &record(i, "a", "m", true), &[]);
    }
    st.flush().expect("flush");
    std::mem::forget(st);
    let seg = d.0.join(segment::seg_name(1));
    let fr = frames_of(&seg);
    let (off, _, _, _) = fr[2];
    let mut b = fs::read(&seg).expect("read");
    // The third record now claims to run past the end of the file: it reads as `Short`.
    let len = u32::try_from(b.len()).expect("small");
    b[off..off + 4].copy_from_slice(&len.to_le_bytes());
    fs::write(&seg, &b).expect("write");
    let _ = fs::remove_file(d.0.join("lock"));
    match Store::open(&s) {
        Err(Error::Damaged(why)) => assert!(why.contains("whole records follow"), "{why}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("recovery cut the records after the edited one"),
    }
    assert_eq!(fs::read(&seg).expect("read"), b, "nothing was cut");
    assert!(!d.0.join("00000001.torn").exists());
}

#[test]
fn a_retired_key_signs_nothing_after_its_rotation() {
    let d = Dir::new("retired");
    let s = settings(&d.0);
    filled(&d.0, &s, 10);
    let old = key::read(&s.key_path()).expect("key");
    key::generate(&key::next_path(&s.key_path())).expect("next key");
    let (mut st, _) = Store::open(&s).expect("open");
    st.append(Kind::Final, &record(11, "a", "m", true), &[]);
    st.flush().expect("flush");
    st.close().expect("close");
    let new = key::read(&s.key_path()).expect("key").verifying_key();
    // The old key leaked: the last checkpoint, after the rotation, re-signed with it.
    let (n, seq) = resign_last_checkpoint(&d.0, &old, |c| c.previous_key = None);
    for anchor in [new, old.verifying_key()] {
        let r = verify(&d.0, Some(anchor)).expect("verify");
        let p = r.problems.join("\n");
        assert!(
            p.contains(&format!("segment {n}, checkpoint seq {seq}"))
                && p.contains("a rotation had retired"),
            "{p}"
        );
    }
}

#[test]
fn an_index_with_lines_removed_hides_no_record_from_show() {
    let d = Dir::new("hide");
    let s = settings(&d.0);
    filled(&d.0, &s, 12);
    // Every index line of request 7 removed (the lines are `[seq, offset, size, kind, id, ...]`),
    // so the index still covers the whole segment.
    let mut hidden = 0;
    for (n, _) in segment::list(&d.0).expect("segments") {
        let ix = d.0.join(segment::idx_name(n));
        let Ok(text) = fs::read_to_string(&ix) else {
            continue;
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                let hide = v.get(4).and_then(serde_json::Value::as_u64) == Some(7);
                hidden += usize::from(hide);
                !hide
            })
            .collect();
        fs::write(&ix, kept.join("\n") + "\n").expect("write index");
    }
    assert_eq!(hidden, 2, "the opening and final records' lines");
    let shown = show(&d.0, 7).expect("show");
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(shown.iter().all(|l| l.entry.id == 7));
}

/// The index's write failing while the segment's succeeded (a full disk; the index is not
/// synced, and its failure is not the store's) must not hide that record from `list`: later
/// lines would make the index claim the part of the segment that holds it.
#[test]
#[ignore = "needs root: mounts a small tmpfs (cargo xtask test runs it as root)"]
fn a_failed_index_write_hides_no_record_from_list() {
    const PAGE: u64 = 4096;
    let t = Tmpfs::new("index-full", "1m");
    let s = Settings {
        segment_bytes: 64 * 1024 * 1024,
        ..settings(&t.0.0.join("audit"))
    };
    let (mut st, _) = Store::open(&s).expect("open");
    let seg = s.dir.join(segment::seg_name(1));
    let idx = s.dir.join(segment::idx_name(1));
    let len = |p: &Path| fs::metadata(p).expect("stat").len();
    let mut id = 0;
    let mut slack = 0;
    // Records until the index's last page has room for a name line of our choosing.
    while slack < 64 {
        id += 1;
        st.append(
            Kind::Final,
            &record(id, &format!("pad-{id}"), "m", true),
            &[],
        );
        st.flush().expect("flush");
        slack = (PAGE - len(&idx) % PAGE) % PAGE;
    }
    // The next record's first new name (its subject) fills the index's page exactly; its
    // model, group and line need a page the disk will not have.
    let names = fs::read_to_string(&idx)
        .expect("idx")
        .matches("{\"d\"")
        .count();
    let digits = (names + 1).to_string().len() as u64;
    let subject = "s".repeat((slack - 12 - digits) as usize);
    let model = "m".repeat(6000);
    let hidden = 13;
    st.append(Kind::Final, &record(hidden, &subject, &model, true), &[]);
    let need = (len(&seg) + st.buffered() as u64).div_ceil(PAGE) - len(&seg).div_ceil(PAGE);
    t.leave(need * PAGE);
    st.flush().expect("the segment's write fits");
    assert_eq!(len(&idx) % PAGE, 0, "the index's write stopped at its page");
    t.free();
    // Its names are known now: the next record's line is only numbers (its group, g-6, too).
    st.append(Kind::Final, &record(20, &subject, &model, true), &[]);
    st.flush().expect("flush");
    st.close().expect("close");
    let ids: Vec<u64> = list(&s.dir, &Filter::default(), None)
        .expect("list")
        .iter()
        .map(|l| l.entry.id)
        .collect();
    assert!(ids.contains(&hidden), "record {hidden} not listed: {ids:?}");
    assert!(ids.contains(&20), "{ids:?}");
    let by_model = list(
        &s.dir,
        &Filter {
            model: Some(model.clone()),
            ..Filter::default()
        },
        None,
    )
    .expect("list");
    assert_eq!(by_model.len(), 2, "{by_model:?}");
}

/// A failed fsync cuts the file back and the same records are written again at the same
/// places: the index then names each of them twice, and `show` must still print each once.
/// (The error is made up: `sync_failed` is what the store's thread calls when the sync
/// thread's fdatasync failed, `thread.rs`.)
#[test]
fn records_written_again_after_a_failed_sync_are_shown_once() {
    let d = Dir::new("resync");
    let s = settings(&d.0);
    let (mut st, _) = Store::open(&s).expect("open");
    let r = record(1, "a", "m", true);
    let write = |st: &mut Store| {
        st.append(Kind::Open, &r, &[]);
        st.append(Kind::Final, &r, &r.response_headers);
        st.flush().expect("flush");
    };
    write(&mut st);
    let _ = st.sync_failed(std::io::Error::other("EIO"));
    write(&mut st);
    st.close().expect("close");
    let rep = report(&d.0);
    assert!(rep.ok(), "{:?}", rep.problems);
    let shown = show(&d.0, 1).expect("show");
    assert_eq!(
        shown.iter().map(|l| l.kind).collect::<Vec<_>>(),
        vec![Kind::Open, Kind::Final]
    );
    assert_eq!(list(&d.0, &Filter::default(), None).expect("list").len(), 1);
}
