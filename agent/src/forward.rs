//! Copying bytes both ways between client and upstream.
//!
//! Uses splice(2) through a pipe per direction, so payload bytes move between the two
//! sockets inside the kernel, never through a userspace buffer. Backpressure is natural:
//! nothing more is read from one side until the pipe has drained into the other. A FIN from
//! one side becomes a write shutdown on the other (half-close); an error on either side ends
//! both directions. Written by hand because tokio offers only buffered copies.
use std::{
    io,
    net::Shutdown,
    sync::atomic::{AtomicU64, Ordering},
};

use nix::{
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    unistd::pipe2,
};
use tokio::{io::Interest, net::TcpStream};

/// Largest single splice; also the pipe capacity we ask for.
const CHUNK: usize = 256 * 1024;

/// Bytes moved client→upstream and upstream→client.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub up: u64,
    pub down: u64,
}

/// Bytes moved so far, kept up to date while the relay runs: a connection that ends in an
/// error (a reset, the agent's drain) still reports what it carried.
#[derive(Debug, Default)]
pub struct Moved {
    up: AtomicU64,
    down: AtomicU64,
}

impl Moved {
    pub fn get(&self) -> Transferred {
        Transferred {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
        }
    }

    /// Both totals, as the kernel relay measures them.
    pub fn set(&self, t: Transferred) {
        self.up.store(t.up, Ordering::Relaxed);
        self.down.store(t.down, Ordering::Relaxed);
    }
}

pub async fn relay(client: &TcpStream, upstream: &TcpStream, moved: &Moved) -> io::Result<()> {
    tokio::try_join!(
        pump(client, upstream, &moved.up),
        pump(upstream, client, &moved.down)
    )?;
    Ok(())
}

async fn pump(from: &TcpStream, to: &TcpStream, moved: &AtomicU64) -> io::Result<()> {
    let (pipe_r, pipe_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
    // A bigger pipe means fewer wakeups for bulk transfers; the default (64 KiB) still works.
    let _ = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        from.readable().await?;
        let n = match from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}
