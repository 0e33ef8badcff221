//! The store's thread when a write fails part way: what was already written is still
//! synced and answered (never left waiting for the disk to have room again).
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Health, Item, Syncer, Writer};
use crate::audit::{
    Store,
    tests::{Tmpfs, record, settings},
};

#[test]
#[ignore = "needs root: mounts a small tmpfs (cargo xtask test runs it as root)"]
fn a_written_opening_record_is_answered_when_a_later_write_of_its_round_fails() {
    let t = Tmpfs::new("thread-full", "2m");
    let s = crate::audit::Settings {
        segment_bytes: 64 * 1024 * 1024,
        checkpoint_records: 1_000_000,
        ..settings(&t.0.0.join("audit"))
    };
    let (store, _) = Store::open(&s).expect("open");
    let mut w = Writer {
        store,
        health: Arc::new(Health::default()),
        settings: s,
        pending: Default::default(),
        unsynced: Vec::new(),
        unsynced_since: None,
        unsynced_bytes: 0,
        syncer: Some(Syncer::spawn().expect("sync thread")),
        spare: Vec::new(),
    };
    // Room for the opening record (one write of its own: it is over 256 KiB), not for the
    // finals formatted after it in the same round.
    t.leave(320 * 1024);
    let (tx, mut rx) = oneshot::channel();
    let big = vec![("x-big".to_string(), "v".repeat(270 * 1024))];
    w.pending.push_back(Item::Open(
        Box::new(record(1, "a", "m", true)),
        big,
        Some(tx),
    ));
    w.pending
        .extend((2..1000).map(|i| Item::Final(record(i, "a", "m", true))));
    w.round(false);
    assert!(
        w.health.failed.load(std::sync::atomic::Ordering::Acquire),
        "the finals' write failed (the disk is full)"
    );
    assert!(
        w.pending.len() < 999,
        "the opening record was written before the failure"
    );
    // Its bytes are in the file: it must be synced and answered while the disk stays full.
    let mut answer = None;
    for _ in 0..200 {
        match rx.try_recv() {
            Ok(a) => {
                answer = Some(a);
                break;
            }
            Err(oneshot::error::TryRecvError::Empty) => {
                w.round(false);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(oneshot::error::TryRecvError::Closed) => panic!("its ack was dropped"),
        }
    }
    assert_eq!(
        answer,
        Some(Ok(())),
        "the written opening record was never answered"
    );
    // Room again: the rest is written.
    t.free();
    for _ in 0..200 {
        if w.pending.is_empty() && w.unsynced.is_empty() {
            break;
        }
        w.round(false);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        w.pending.is_empty(),
        "written once there was room: {} left, {}",
        w.pending.len(),
        w.health.reason()
    );
}
