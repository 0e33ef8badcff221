//! Copying bytes both ways between client and upstream.
//!
//! Uses splice(2) through a pipe per direction, so payload bytes move between the two
//! sockets inside the kernel, never through a userspace buffer. Backpressure is natural:
//! nothing more is read from one side until the pipe has drained into the other. A FIN from
//! one side becomes a write shutdown on the other (half-close); an error on either side ends
//! both directions. Written by hand because tokio offers only buffered copies.
use std::{io, net::Shutdown};

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

pub async fn relay(client: &TcpStream, upstream: &TcpStream) -> io::Result<Transferred> {
    let (up, down) = tokio::try_join!(pump(client, upstream), pump(upstream, client))?;
    Ok(Transferred { up, down })
}

async fn pump(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_r, pipe_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
    // A bigger pipe means fewer wakeups for bulk transfers; the default (64 KiB) still works.
    let _ = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
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
        total += n as u64;
    }
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(total),
    }
}
