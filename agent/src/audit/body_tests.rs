//! `level: full` (body entries, their bounds), `export` and its following reader, and
//! `replay`'s pacing.
use std::{fs, io::Write as _, time::Instant};

use bytes::Bytes;

use super::{
    entry::{self, BodyEntry, Direction, Kind},
    export::Exporter,
    frame, reader, replay, segment, tap,
    tests::{Dir, record, report, settings, stop},
    *,
};

fn full(dir: &std::path::Path) -> Settings {
    Settings {
        level: Level::Full,
        ..settings(dir)
    }
}

/// One request through a tap: its opening record, its request body, `chunks` as its
/// response, then its final record with the tap's note.
async fn exchange_through(handle: &Handle, id: u64, body: &[u8], chunks: &[&[u8]]) -> BodyNote {
    handle
        .open(record(id, "alice", "gpt", true), vec![])
        .await
        .expect("opened");
    let mut tap = Tap::new(handle.clone(), id, Instant::now());
    tap.request(&Bytes::copy_from_slice(body)).expect("request");
    for c in chunks {
        tap.response(&Bytes::copy_from_slice(c)).expect("chunk");
    }
    let note = tap.note();
    let mut fin = record(id, "alice", "gpt", true);
    fin.body = Some(note.clone());
    handle.finals(vec![fin]).await;
    note
}

#[tokio::test]
async fn full_level_records_bodies_after_the_opening_record_and_replay_rebuilds_them() {
    let d = Dir::new("full");
    let (handle, thread, _, _) = start(&full(&d.0)).expect("start");
    let chunks: [&[u8]; 3] = [
        b"data: {\"a\":1}\n\n",
        b"data: \xff\xfe binary\n\n",
        b"data: [DONE]\n\n",
    ];
    let note = exchange_through(&handle, 1, br#"{"model":"gpt","messages":[]}"#, &chunks).await;
    exchange_through(&handle, 2, b"second", &[b"other"]).await;
    stop(handle, thread).await;
    assert_eq!(
        (note.response_chunks, note.response_bytes, note.dropped),
        (3, chunks.iter().map(|c| c.len() as u64).sum(), 0)
    );
    assert!(!note.response_truncated && !note.request_truncated);
    let r = report(&d.0);
    assert!(
        r.ok(),
        "body entries are chained and signed: {:?}",
        r.problems
    );

    let x = exchange(&d.0, 1).expect("reads").expect("found");
    assert_eq!(x.request_body(), br#"{"model":"gpt","messages":[]}"#);
    let got: Vec<Vec<u8>> = x.response.iter().map(BodyEntry::data).collect();
    assert_eq!(got, chunks.iter().map(|c| c.to_vec()).collect::<Vec<_>>());
    assert!(
        x.response[1].b64.is_some(),
        "bytes that are not UTF-8 go as base64"
    );
    assert!(x.response[0].text.is_some(), "UTF-8 stays readable");
    assert_eq!(
        x.response.iter().map(|c| c.n).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(x.response.windows(2).all(|w| w[0].t_us <= w[1].t_us));
    assert_eq!(x.last.as_ref().and_then(|l| l.body.clone()), Some(note));
    // Another request's bodies stay its own.
    let y = exchange(&d.0, 2).expect("reads").expect("found");
    assert_eq!(
        (y.request_body(), y.response.len()),
        (b"second".to_vec(), 1)
    );
    // `list` (through the index) still lists requests only.
    assert_eq!(list(&d.0, &Filter::default(), None).expect("list").len(), 2);

    let mut out = Vec::new();
    replay::print(&x, 0.0, &mut out).expect("printed");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("> POST /v1/chat/completions"), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("# end: 3 chunk(s)"), "{text}");
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_truncated_and_large_ones_split_into_pieces() {
    let d = Dir::new("cap");
    let s = Settings {
        max_body_bytes: 10,
        ..full(&d.0)
    };
    let (handle, thread, _, _) = start(&s).expect("start");
    let note = exchange_through(
        &handle,
        1,
        b"0123456789abcdef",
        &[b"123456", b"789abc", b"def"],
    )
    .await;
    stop(handle, thread).await;
    assert_eq!((note.request_bytes, note.request_truncated), (10, true));
    assert_eq!(
        (
            note.response_bytes,
            note.response_chunks,
            note.response_truncated
        ),
        (10, 2, true),
        "the chunk that crosses the cap is cut, the ones after it are not recorded"
    );
    let x = exchange(&d.0, 1).expect("reads").expect("found");
    assert_eq!(x.request_body(), b"0123456789");
    let got: Vec<u8> = x.response.iter().flat_map(BodyEntry::data).collect();
    assert_eq!(got, b"123456789a");

    // A body larger than one piece goes in pieces that fit a frame, and comes back whole.
    let d = Dir::new("pieces");
    let (handle, thread, _, _) = start(&full(&d.0)).expect("start");
    let big: Vec<u8> = (0..(tap::PIECE * 2 + 100))
        .map(|i| (i % 251) as u8)
        .collect();
    let note = exchange_through(&handle, 1, &big, &[]).await;
    stop(handle, thread).await;
    assert_eq!(note.request_bytes, big.len() as u64);
    let x = exchange(&d.0, 1).expect("reads").expect("found");
    assert_eq!(x.request.len(), 3);
    assert_eq!(x.request_body(), big);
    assert!(report(&d.0).ok());
}

#[tokio::test]
async fn a_writer_behind_drops_pieces_and_says_so_or_refuses_when_required() {
    for required in [false, true] {
        let d = Dir::new("behind");
        let s = Settings {
            max_backlog_bytes: 8,
            required,
            ..full(&d.0)
        };
        let (handle, thread, _, _) = start(&s).expect("start");
        handle
            .open(record(1, "a", "m", true), vec![])
            .await
            .expect("opened");
        let mut tap = Tap::new(handle.clone(), 1, Instant::now());
        tap.response(&Bytes::from_static(b"1234")).expect("fits");
        let over = tap.response(&Bytes::from_static(b"0123456789abcdef"));
        if required {
            let why = over.expect_err("a chunk the store cannot take fails the request");
            assert!(why.0.contains("max_backlog_bytes"), "{why}");
        } else {
            over.expect("not required: the chunk passes unrecorded");
            assert_eq!((tap.note().dropped, tap.note().response_chunks), (1, 1));
        }
        // The tap holds a handle: the thread ends once every one is dropped.
        drop(tap);
        stop(handle, thread).await;
    }
}

/// Appends `n` requests with a body entry each to an open store.
fn append(st: &mut Store, from: u64, n: u64) {
    for id in from..from + n {
        let r = record(id, &format!("user-{}", id % 2), "m", true);
        st.append(Kind::Open, &r, &[]);
        st.append_body(&Piece {
            id,
            dir: Direction::Response,
            n: 0,
            at: 0,
            t_us: 5,
            data: Bytes::from(format!("chunk of {id}")),
        });
        st.append(Kind::Final, &r, &[]);
        st.flush().expect("flush");
        st.maintain(false).expect("maintain");
    }
}

fn lines(ex: &mut Exporter) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    ex.step(&mut out).expect("step");
    String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn export_follows_new_records_across_rotation_and_retention_without_repeats() {
    let d = Dir::new("export");
    let s = Settings {
        segment_bytes: 4096,
        retention: Retention {
            max_bytes: 3 * 4096 + 2048,
            max_age: std::time::Duration::from_secs(3600),
        },
        ..full(&d.0)
    };
    let (mut st, _) = Store::open(&s).expect("open");
    append(&mut st, 1, 3);
    let mut ex = Exporter::new(&d.0, Filter::default(), true, 0);
    let first = lines(&mut ex);
    assert_eq!(first.len(), 9, "open, body, final per request");
    assert_eq!(first[1]["text"], "chunk of 1");
    assert_eq!(first[1]["record"]["kind"], "body");
    assert!(lines(&mut ex).is_empty(), "nothing new, nothing printed");
    // Read as it is written, through several rotations and retention deleting segments
    // already read.
    let mut seen: Vec<u64> = first
        .iter()
        .map(|v| v["record"]["seq"].as_u64().expect("seq"))
        .collect();
    let finals = |v: &[serde_json::Value]| -> Vec<u64> {
        v.iter()
            .filter(|v| v["record"]["kind"] == "final")
            .map(|v| v["id"].as_u64().expect("id"))
            .collect()
    };
    let mut ids = Vec::new();
    for round in 0..30 {
        append(&mut st, 4 + round * 2, 2);
        let got = lines(&mut ex);
        seen.extend(
            got.iter()
                .map(|v| v["record"]["seq"].as_u64().expect("seq")),
        );
        ids.extend(finals(&got));
    }
    assert_eq!(
        ids,
        (4..64).collect::<Vec<u64>>(),
        "every request, once, in order"
    );
    assert!(
        segment::list(&d.0).expect("list")[0].0 > 1,
        "retention deleted the first segments"
    );
    // The exporter falls behind: retention deletes the segment it was in, and it goes on
    // with the oldest one left.
    append(&mut st, 64, 30);
    let oldest = segment::list(&d.0).expect("list")[0].0;
    let got = lines(&mut ex);
    assert_eq!(got[0]["record"]["segment"].as_u64(), Some(oldest));
    let late = finals(&got);
    assert!(!late.is_empty() && late.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(late.last(), Some(&93));
    seen.extend(
        got.iter()
            .map(|v| v["record"]["seq"].as_u64().expect("seq")),
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    // Resuming after the last seq exported prints only what is new.
    let last = *seen.last().expect("some");
    append(&mut st, 100, 1);
    let mut resumed = Exporter::new(&d.0, Filter::default(), true, last);
    assert_eq!(lines(&mut resumed).len(), 3);
    st.close().expect("close");
    assert!(report(&d.0).ok());
}

#[test]
fn a_filtered_export_keeps_the_bodies_of_the_requests_it_keeps() {
    let d = Dir::new("exportf");
    let (mut st, _) = Store::open(&full(&d.0)).expect("open");
    append(&mut st, 1, 4);
    st.close().expect("close");
    let f = Filter {
        subject: Some("user-1".into()),
        ..Filter::default()
    };
    let got = lines(&mut Exporter::new(&d.0, f.clone(), true, 0));
    let ids: Vec<u64> = got.iter().map(|v| v["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, [1, 1, 1, 3, 3, 3]);
    let no_bodies = lines(&mut Exporter::new(&d.0, f, false, 0));
    assert_eq!(no_bodies.len(), 4);
    assert!(no_bodies.iter().all(|v| v["record"]["kind"] != "body"));
}

#[test]
fn the_reader_waits_for_a_frame_still_being_written() {
    let d = Dir::new("torn");
    fs::create_dir_all(&d.0).expect("dir");
    let path = d.0.join(segment::seg_name(1));
    let mut one = Vec::new();
    let h = frame::encode(
        &mut one,
        Kind::Start,
        1,
        &[0; 32],
        br#"{"segment":1,"unix_ms":0}"#,
    );
    let mut two = Vec::new();
    frame::encode(
        &mut two,
        Kind::Body,
        2,
        &h,
        br#"{"id":1,"dir":"request","n":0,"at":0,"t_us":0,"text":"x"}"#,
    );
    let mut f = fs::File::create(&path).expect("create");
    f.write_all(&one).expect("write");
    f.write_all(&two[..10]).expect("write half");
    let mut r = reader::Reader::new(&d.0, 0);
    let mut got = Vec::new();
    r.poll(|x| {
        got.push(x.seq);
        true
    })
    .expect("poll");
    assert_eq!(got, [1], "half a frame is not a record yet");
    f.write_all(&two[10..]).expect("write the rest");
    r.poll(|x| {
        got.push(x.seq);
        true
    })
    .expect("poll");
    assert_eq!(got, [1, 2]);
}

fn entry(n: u64, dir: Direction, t_us: u64) -> BodyEntry<'static> {
    BodyEntry::new(n, dir, n, 0, t_us, b"x").into_owned()
}

#[test]
fn replay_paces_chunks_by_their_recorded_offsets_from_the_request_going_upstream() {
    let x = Exchange {
        open: None,
        last: None,
        request: vec![entry(0, Direction::Request, 1_000)],
        response: [101_000, 301_000, 351_000]
            .iter()
            .map(|&t| entry(0, Direction::Response, t))
            .collect(),
    };
    let ms = |v: Vec<std::time::Duration>| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
    assert_eq!(ms(replay::schedule(&x, 1.0)), [100, 300, 350]);
    assert_eq!(ms(replay::schedule(&x, 2.0)), [50, 150, 175]);
    assert_eq!(ms(replay::schedule(&x, 0.0)), [0, 0, 0]);
    // Without a recorded request body the request's first byte is the zero.
    let y = Exchange {
        request: Vec::new(),
        ..x
    };
    assert_eq!(ms(replay::schedule(&y, 1.0)), [101, 301, 351]);
}

#[test]
fn replay_to_sends_the_request_without_credentials() {
    let mut open = tests_entry();
    open.headers = vec![
        ("authorization".into(), entry::REMOVED.into()),
        ("content-type".into(), "application/json".into()),
        ("content-length".into(), "99".into()),
        ("x-trace".into(), "t1".into()),
    ];
    let x = Exchange {
        open: Some(open),
        last: None,
        request: vec![BodyEntry::new(1, Direction::Request, 0, 0, 0, b"{\"a\":1}").into_owned()],
        response: Vec::new(),
    };
    let uri: http::Uri = "http://127.0.0.1:9/base/".parse().expect("uri");
    let req = replay::request(&x, &uri).expect("built");
    assert_eq!(req.uri().path(), "/base/v1/chat/completions");
    assert_eq!(req.method(), "POST");
    let h = req.headers();
    assert!(h.get("authorization").is_none());
    assert_eq!(
        h.get("content-length").map(|v| v.as_bytes()),
        Some(&b"7"[..])
    );
    assert_eq!(
        h.get("host").map(|v| v.as_bytes()),
        Some(&b"127.0.0.1:9"[..])
    );
    assert_eq!(h.get("x-trace").map(|v| v.as_bytes()), Some(&b"t1"[..]));
}

fn tests_entry() -> RequestEntry<'static> {
    let r = record(1, "alice", "gpt", true);
    let e = RequestEntry::of(&r, Kind::Open, &[]);
    serde_json::from_value(serde_json::to_value(&e).expect("json")).expect("owned")
}
