//! The sync thread (`sync.rs`) and the store's thread overlapping their work: an item is
//! acknowledged only by a sync that returned, and a failed sync hands its items back.
use std::{
    fs,
    sync::{Arc, Mutex},
};

use super::{
    entry::{Kind, RequestEntry},
    segment::{self, Step},
    sync::{Job, Syncer, Waiter},
    tests::{Dir, record, report, settings, stop},
    *,
};

struct Probe {
    n: u32,
    acked: Arc<Mutex<Vec<u32>>>,
}

impl Waiter for Probe {
    fn durable(&mut self) {
        if let Ok(mut a) = self.acked.lock() {
            a.push(self.n);
        }
    }
}

fn probes(acked: &Arc<Mutex<Vec<u32>>>, ns: std::ops::Range<u32>) -> Vec<Probe> {
    ns.map(|n| Probe {
        n,
        acked: acked.clone(),
    })
    .collect()
}

#[test]
fn a_sync_acknowledges_its_items_once_it_returned_and_a_failed_one_hands_them_back() {
    let d = Dir::new("sync");
    fs::create_dir_all(&d.0).expect("dir");
    let file = Arc::new(segment::open_append(&d.0.join("f")).expect("file"));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut s: Syncer<Probe, u32> = Syncer::spawn().expect("spawn");
    assert!(s.wait().is_none(), "no job, nothing to wait for");
    s.start(Job {
        file,
        point: 7,
        items: probes(&acked, 0..3),
    })
    .map_err(|_| "start")
    .expect("started");
    assert!(s.busy());
    let done = s.wait().expect("done");
    assert!(done.result.is_ok());
    assert_eq!(done.point, 7);
    assert!(
        done.items.is_empty(),
        "acknowledged items are dropped there"
    );
    assert_eq!(*acked.lock().expect("lock"), vec![0, 1, 2]);
    // fdatasync on a pipe fails (EINVAL): a real failed sync, no item acknowledged.
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r);
    s.start(Job {
        file: Arc::new(fs::File::from(w)),
        point: 8,
        items: probes(&acked, 3..5),
    })
    .map_err(|_| "start")
    .expect("started");
    let done = s.wait().expect("done");
    assert!(done.result.is_err());
    assert_eq!(
        done.items.iter().map(|p| p.n).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(acked.lock().expect("lock").len(), 3);
}

/// The ids of the opening records whole in the segments now.
fn opened_in(dir: &std::path::Path) -> Vec<u64> {
    let mut ids = Vec::new();
    for (_, path) in segment::list(dir).expect("segments") {
        let bytes = fs::read(&path).expect("read");
        for step in segment::frames(&bytes, 0) {
            let Step::Frame { frame, .. } = step else {
                break;
            };
            if frame.kind == Kind::Open {
                let e: RequestEntry<'_> = serde_json::from_slice(frame.body).expect("entry");
                ids.push(e.id);
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_records_are_acknowledged_after_their_sync_while_finals_stream() {
    let d = Dir::new("overlap");
    let s = Settings {
        required: true,
        segment_bytes: 256 * 1024,
        checkpoint_records: 500,
        ..settings(&d.0)
    };
    let (handle, thread, _, _) = start(&s).expect("start");
    // Final records keep the store's thread formatting while syncs run.
    let flood = {
        let h = handle.clone();
        tokio::spawn(async move {
            for b in 0..40u64 {
                let batch = (0..256).map(|i| record(100_000 + b * 256 + i, "f", "m", true));
                h.finals(batch.collect()).await;
            }
        })
    };
    for id in 1..=60u64 {
        handle
            .open(record(id, "a", "m", true), vec![])
            .await
            .expect("durable");
        // Acknowledged: its bytes were written before the sync that acknowledged it.
        let dir = d.0.clone();
        let opened = tokio::task::spawn_blocking(move || opened_in(&dir))
            .await
            .expect("read");
        assert!(
            opened.contains(&id),
            "record {id} acknowledged, not in a segment"
        );
    }
    flood.await.expect("flood");
    stop(handle, thread).await;
    let r = report(&d.0);
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(opened_in(&d.0), (1..=60).collect::<Vec<_>>());
    let finals = list(&d.0, &Filter::default(), None).expect("list");
    assert_eq!(finals.len(), 60 + 40 * 256);
    assert!(
        segment::list(&d.0).expect("segments").len() > 2,
        "the segments rotated under load"
    );
}

/// A small `max_backlog`: the records written while a sync runs reach the bound, and the
/// store's thread waits for that sync before it goes on; nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_a_running_sync_stays_bounded() {
    let d = Dir::new("bound");
    let s = Settings {
        max_backlog: 64,
        checkpoint_records: 1000,
        ..settings(&d.0)
    };
    let (handle, thread, _, _) = start(&s).expect("start");
    for b in 0..20u64 {
        let batch = (0..256).map(|i| record(1 + b * 256 + i, "f", "m", true));
        handle.finals(batch.collect()).await;
    }
    stop(handle, thread).await;
    let r = report(&d.0);
    assert!(r.ok(), "{:?}", r.problems);
    let ids: Vec<u64> = list(&d.0, &Filter::default(), None)
        .expect("list")
        .iter()
        .map(|l| l.entry.id)
        .collect();
    assert_eq!(ids, (1..=20 * 256).collect::<Vec<_>>());
}
