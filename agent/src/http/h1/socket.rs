//! Reads and writes on the client's socket, shared (`&TcpStream`) between the connection's
//! loop and the request body that reads it: tokio's readiness API, so neither needs the
//! socket to itself.
use std::{
    future::poll_fn,
    io::{self, IoSlice},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{io::Interest, net::TcpStream};

/// Read at least this much at a time.
pub const READ_CHUNK: usize = 8 * 1024;

/// Reads what the socket has into `buf`: `Ok(0)` is the client's EOF.
pub fn poll_fill(
    io: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    loop {
        ready!(io.poll_read_ready(cx))?;
        let spare = buf.capacity() - buf.len();
        match io.try_read_buf(buf) {
            Ok(n) => {
                if n > 0 && n < spare {
                    // A short read drained the socket: the next wait goes straight to the
                    // reactor instead of a read that would only say EAGAIN (tokio's own
                    // `poll_read` does the same; a later arrival is a new edge).
                    let _ = io.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

pub async fn fill(io: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| poll_fill(io, buf, cx)).await
}

/// Writes every slice, trying the socket before waiting for it (a socket with an empty
/// send buffer takes a response at once).
pub async fn write_all(io: &TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match io.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => io.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves when the client closes or resets the connection. Bytes it sends meanwhile
/// (pipelined requests) are kept in `buf`, up to `max`; past that, the connection is no
/// longer watched (a client that pipelines that much waits for its answers anyway).
/// A client that pipelined requests and then closed its side has only half-closed: the
/// requests it sent are still answered (as hyper's server did), and the next read after
/// them sees its end.
pub async fn closed(io: &TcpStream, buf: &mut BytesMut, max: usize) {
    loop {
        if buf.len() >= max {
            return std::future::pending().await;
        }
        match fill(io, buf).await {
            Ok(0) if !buf.is_empty() => return std::future::pending().await,
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Closes a connection whose client may still be sending (a body that was not read, a
/// refused head): the write side first, then what arrives is read and dropped until the
/// client closes too, for a bounded time and amount. Closing with unread bytes would send a
/// reset, which can destroy the answer before the client reads it.
pub async fn linger(io: &TcpStream) {
    const FOR: Duration = Duration::from_secs(1);
    const UP_TO: usize = 1 << 20;
    let _ = socket2::SockRef::from(io).shutdown(std::net::Shutdown::Write);
    let mut sink = BytesMut::with_capacity(READ_CHUNK);
    let drain = async {
        let mut dropped = 0;
        while dropped < UP_TO {
            sink.clear();
            match fill(io, &mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(FOR, drain).await;
}
