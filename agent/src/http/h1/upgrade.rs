//! The client's half of a protocol switch the policy allowed: its connection, handed over
//! by the connection's loop once the switch's response head is out, with any bytes the
//! client sent after its request (the first frames of the new protocol) in front.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::oneshot,
};

/// Resolves to the client's connection once the switch's head went out; fails if the
/// connection ended first. Shared because request extensions must be `Clone`: the first
/// to await it gets the connection.
#[derive(Clone)]
pub struct Upgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl Upgrade {
    pub(super) fn new(rx: oneshot::Receiver<Upgraded>) -> Self {
        Upgrade(Arc::new(Mutex::new(Some(rx))))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the client's connection ended before the switch's response head went out")]
pub struct NotSwitched;

impl Future for Upgrade {
    type Output = Result<Upgraded, NotSwitched>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut rx) = self.0.lock() else {
            return Poll::Ready(Err(NotSwitched));
        };
        let Some(r) = rx.as_mut() else {
            return Poll::Ready(Err(NotSwitched));
        };
        let got = ready!(Pin::new(r).poll(cx));
        *rx = None;
        Poll::Ready(got.map_err(|_| NotSwitched))
    }
}

pub struct Upgraded {
    pub(super) io: TcpStream,
    /// Read before the switch, not yet passed on.
    pub(super) pre: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, b)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
