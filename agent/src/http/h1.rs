//! Sluice's own HTTP/1.1 server for an intercepted connection: one task per connection
//! reads a head (`head.rs`), hands the request to `pipeline::handle`, and writes the
//! response (`write.rs`), then the next request on the same connection, pipelined ones
//! included. Written on `httparse` rather than with hyper's server because the request's
//! path is the agent's hot path: one read and one write per request, no connection task
//! in between, one allocation for the whole head (docs/benchmarks.md, "The hot path").
//!
//! While a request is handled, the client is watched: a client that closes or resets its
//! connection ends the request (its record says so), as hyper's server did.
use std::sync::Arc;

use bytes::BytesMut;
use http::StatusCode;
use tokio::{net::TcpStream, sync::oneshot, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Activity, InFlight, body::ClientBody};
use crate::{
    connection::{Conn, Ctx},
    pipeline,
};

mod body;
mod frames;
mod head;
mod socket;
mod upgrade;
mod write;

#[cfg(test)]
mod tests;

pub use body::{Body, BodyError};
#[doc(hidden)]
pub use frames::{Framed, Stop, frame_all};
pub use upgrade::{Upgrade, Upgraded};

/// Where the connection's read buffer is while a request is handled.
enum Reading {
    /// Here: the request had no body, or its body was read to its end.
    Here,
    /// With the request body, until it is read to its end.
    Body(oneshot::Receiver<BytesMut>),
    /// The body was dropped before its end: where a next request would start is unknown.
    Lost,
}

impl Reading {
    /// Takes the buffer back if the body has ended by now, or notes that it was dropped
    /// unread; a body still being read stays as it is.
    fn settle(&mut self, buf: &mut BytesMut) {
        if let Reading::Body(rx) = self {
            match rx.try_recv() {
                Ok(b) => *self = take_back(Ok(b), buf),
                Err(oneshot::error::TryRecvError::Closed) => *self = Reading::Lost,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
    }

    /// Resolves when the body gives the buffer back (or is dropped without).
    async fn back(&mut self) -> Result<BytesMut, ()> {
        match self {
            Reading::Body(rx) => rx.await.map_err(|_| ()),
            _ => std::future::pending().await,
        }
    }
}

/// What the connection does after a request.
enum Next {
    Keep,
    /// Close; `linger` when the client may still be sending.
    Close {
        linger: bool,
    },
    /// The client went away, or the drain cut the connection.
    Gone,
    /// An allowed protocol switch: the connection goes to the tunnel.
    Switch(oneshot::Sender<Upgraded>),
}

/// A head that could not be read.
enum Failed {
    Head(head::HeadError),
    Io,
}

pub(super) async fn serve(
    ctx: &Arc<Ctx>,
    conn: &Arc<Conn>,
    client: TcpStream,
    first_head: Instant,
    activity: &Arc<Activity>,
    force: &CancellationToken,
) {
    let io = Arc::new(client);
    let mut buf = BytesMut::with_capacity(socket::READ_CHUNK);
    // The drain's cut ends the connection wherever it is: one wait for it, registered
    // once, rather than one in every wait of every request.
    let next = tokio::select! {
        biased;
        () = force.cancelled() => return,
        next = requests(ctx, conn, &io, &mut buf, first_head, activity) => next,
    };
    match next {
        Next::Close { linger: true } => {
            tokio::select! {
                () = socket::linger(&io) => {}
                () = force.cancelled() => {}
            }
        }
        Next::Switch(tx) => {
            // The body and the watch are gone: the socket is the loop's alone.
            if let Ok(io) = Arc::try_unwrap(io) {
                let _ = tx.send(Upgraded {
                    io,
                    pre: buf.split().freeze(),
                });
            }
        }
        _ => {}
    }
}

/// The connection's requests, one after another, until one ends it.
async fn requests(
    ctx: &Arc<Ctx>,
    conn: &Arc<Conn>,
    io: &Arc<TcpStream>,
    buf: &mut BytesMut,
    first_head: Instant,
    activity: &Arc<Activity>,
) -> Next {
    let mut out = Vec::with_capacity(1024);
    // hyper's server took at least 8 KiB of head; the setting only raises it.
    let max = ctx.max_header.max(8192);
    let t = ctx.timeouts;
    // Shutdown closes an idle connection; one with a request arriving answers it.
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    // One timer for the connection, re-armed only when it fires before the head it guards
    // is due: a keep-alive connection's requests do not each insert and remove a timer.
    let timer = tokio::time::sleep_until(first_head);
    tokio::pin!(timer);
    // The first head is due `header` after accept (the caller's deadline).
    let mut due = first_head;
    loop {
        let head = loop {
            tokio::select! {
                biased;
                () = &mut shutdown, if buf.is_empty() => return Next::Gone,
                r = read_head(io, buf, max) => break r,
                () = &mut timer => {
                    if Instant::now() >= due {
                        return Next::Gone;
                    }
                    timer.as_mut().reset(due);
                }
            }
        };
        let head = match head {
            Ok(Some(h)) => h,
            // Closed, or a failed read: nothing to answer.
            Ok(None) | Err(Failed::Io) => return Next::Gone,
            Err(Failed::Head(e)) => {
                refuse_head(ctx, conn, io, &e, &mut out).await;
                return Next::Close { linger: true };
            }
        };
        match exchange(ctx, conn, io, head, buf, &mut out, activity).await {
            Next::Keep => {}
            next => return next,
        }
        // A large response grew the staging buffer: an idle connection does not keep it.
        if out.capacity() > 16 * 1024 {
            out = Vec::with_capacity(1024);
        }
        // After a response: the shorter of the header and idle bounds, from now.
        due = Instant::now() + t.header.min(t.idle);
    }
}

/// Reads until a complete head is at the start of `buf`: `None` when the client closed
/// first.
async fn read_head(
    io: &TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<head::Head>, Failed> {
    loop {
        if !buf.is_empty()
            && let Some(h) = head::parse(buf, max).map_err(Failed::Head)?
        {
            return Ok(Some(h));
        }
        match socket::fill(io, buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(_) => return Err(Failed::Io),
        }
    }
}

/// One request: through the pipeline, its response written. The client is watched for
/// going away throughout, once its body is read.
async fn exchange(
    ctx: &Arc<Ctx>,
    conn: &Arc<Conn>,
    io: &Arc<TcpStream>,
    head: head::Head,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    activity: &Arc<Activity>,
) -> Next {
    let head::Head {
        mut parts,
        kind,
        keep_alive,
        expect_continue,
        upgrade,
    } = head;
    let max = ctx.max_header.max(8192);
    let asked = write::asked(&parts.method, parts.version);
    let switch = upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        parts.extensions.insert(Upgrade::new(rx));
        tx
    });
    let (body, mut reading) = match kind {
        head::Kind::Empty => (ClientBody::Empty, Reading::Here),
        kind => {
            let (tx, rx) = oneshot::channel();
            let buf = std::mem::take(buf);
            let body = Body::new(io.clone(), buf, kind, expect_continue, tx, max);
            (ClientBody::H1(body), Reading::Body(rx))
        }
    };
    // Pinned here and lent to `watched`: a future moved by value is copied whole, and the
    // pipeline's is kilobytes. Its block ends its storage before the response is written.
    let response = {
        let handled = std::pin::pin!(pipeline::handle(
            ctx,
            conn,
            http::Request::from_parts(parts, body),
            InFlight::enter(activity),
        ));
        watched(handled, &mut reading, io, buf, max).await
    };
    let Some(response) = response else {
        return Next::Gone;
    };
    // The pipeline may have read the body to its end, or dropped it unread, in the poll that
    // made the response: the head must know which before it says the connection stays.
    reading.settle(buf);
    let (mut parts, mut body) = response.into_parts();
    let status = parts.status;
    // Only a connection whose next request is known to start in `buf` stays open.
    let keep = keep_alive && !ctx.shutdown.is_cancelled() && matches!(reading, Reading::Here);
    let (framing, keep) = write::head(out, &mut parts, &body, asked, keep);
    let written = {
        let written = std::pin::pin!(write::body(io, out, &mut body, framing));
        watched(written, &mut reading, io, buf, max).await
    };
    let Some(written) = written else {
        return Next::Gone;
    };
    if let Err(e) = written {
        tracing::debug!(error = %e, "response not written to its end; closing");
        return Next::Gone;
    }
    drop(body);
    // A body still unread now (`Reading::Body`) closes the connection as a lost one does.
    reading.settle(buf);
    let switched =
        status == StatusCode::SWITCHING_PROTOCOLS || (asked.connect && status.is_success());
    match (switch, reading) {
        (Some(tx), Reading::Here) if switched && !tx.is_closed() => Next::Switch(tx),
        // A switch nobody takes (the upstream refused it, or the policy): not HTTP after it.
        _ if switched => Next::Close { linger: false },
        (_, Reading::Here) if keep && !ctx.shutdown.is_cancelled() => Next::Keep,
        (_, Reading::Here) => Next::Close { linger: false },
        _ => Next::Close { linger: true },
    }
}

/// Runs `fut` while watching the client: the read buffer is taken back when the body ends,
/// and a client that goes away ends the wait (`None`).
async fn watched<F: std::future::Future>(
    mut fut: std::pin::Pin<&mut F>,
    reading: &mut Reading,
    io: &TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Option<F::Output> {
    loop {
        let back = tokio::select! {
            biased;
            r = fut.as_mut() => return Some(r),
            back = reading.back() => back,
            () = socket::closed(io, buf, max), if matches!(reading, Reading::Here) => return None,
        };
        *reading = take_back(back, buf);
    }
}

fn take_back(back: Result<BytesMut, ()>, buf: &mut BytesMut) -> Reading {
    match back {
        Ok(b) => {
            *buf = b;
            Reading::Here
        }
        Err(()) => Reading::Lost,
    }
}

/// A head Sluice cannot read gets its 4xx and one record; the connection then closes.
async fn refuse_head(
    ctx: &Ctx,
    conn: &Conn,
    io: &TcpStream,
    e: &head::HeadError,
    out: &mut Vec<u8>,
) {
    let status = e.status();
    tracing::debug!(error = %e, "refused a malformed request head");
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let mut answer = [std::io::IoSlice::new(out)];
    let _ = socket::write_all(io, &mut answer).await;
    super::record_malformed(&ctx.recorder, conn, status, e.to_string()).await;
}
