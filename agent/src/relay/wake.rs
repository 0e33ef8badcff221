//! Wake-ups for the kernel relay's connection tasks. A relayed socket is never readable (the
//! verdict program takes its data before poll could report it), so nothing would tell a task
//! that bytes moved, and a queue growing toward `l4_kernel_max_queue_bytes` would go unseen.
//! The verdict program writes a socket's cookie to the RELAY_WAKE ring buffer each time its
//! redirected bytes pass a multiple of `wake_every`; one thread here hands each note to the
//! task that owns the socket.
use std::{
    collections::HashMap,
    io,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex, Weak},
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::Notify;

/// How long the thread waits for a note before it checks whether the relay is still there.
const POLL_MS: i32 = 200;

/// Socket cookie → the task of its connection: two entries a paired connection, added
/// before its sockets are paired and removed with the pairing, so bounded by the relay's
/// places.
#[derive(Default)]
pub struct Wakers(Mutex<HashMap<u64, Arc<Notify>>>);

impl Wakers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Notify>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn add(&self, (a, b): (u64, u64), task: &Arc<Notify>) {
        let mut m = self.map();
        m.insert(a, task.clone());
        m.insert(b, task.clone());
    }

    pub fn remove(&self, (a, b): (u64, u64)) {
        let mut m = self.map();
        m.remove(&a);
        m.remove(&b);
    }

    /// Wakes the task that owns the socket; a permit is kept if it is not waiting.
    pub fn wake(&self, cookie: u64) {
        if let Some(task) = self.map().get(&cookie) {
            task.notify_one();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// Reads RELAY_WAKE on its own thread until the relay (the owner of `wakers`) is dropped.
pub fn spawn(mut ring: RingBuf<MapData>, wakers: Weak<Wakers>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("sluice-relay-wake".into())
        .spawn(move || {
            loop {
                let mut p = libc::pollfd {
                    fd: ring.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd. An error (EINTR) is a spurious wake-up: the loop
                // reads the ring, finds nothing or something, and waits again.
                unsafe { libc::poll(&mut p, 1, POLL_MS) };
                let Some(w) = wakers.upgrade() else {
                    return;
                };
                while let Some(item) = ring.next() {
                    if let Ok(cookie) = <[u8; 8]>::try_from(&*item) {
                        w.wake(u64::from_ne_bytes(cookie));
                    }
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_wakes_the_owner_of_either_socket_until_removed() {
        let w = Wakers::default();
        let task = Arc::new(Notify::new());
        w.add((1, 2), &task);
        assert!(!w.is_empty());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for cookie in [1, 2] {
            w.wake(cookie);
            // The permit is kept for a task that was not waiting yet.
            rt.block_on(task.notified());
        }
        w.wake(3);
        w.remove((1, 2));
        assert!(w.is_empty());
    }
}
