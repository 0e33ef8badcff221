//! Serving HTTP on an intercepted connection: HTTP/1.1 (keep-alive, chunked, pipelining)
//! on Sluice's own server (`h1`), or HTTP/2 with prior knowledge (gRPC) on hyper's, told
//! apart by the first bytes. Each request goes through `pipeline::handle`.
//!
//! Timeouts, so a client cannot hold a connection (and its descriptors) for nothing:
//! - `header`: from accept to the end of the first request head, protocol detection
//!   included; for HTTP/1.1 also from the end of a response to the end of the next head;
//! - `idle`: a connection with no request in flight for this long is closed gracefully (the
//!   one idle bound HTTP/2 has; for HTTP/1.1 the shorter of `header` and `idle` applies);
//! - the request body's deadline is the read stage's (`pipeline/read.rs`).
//!
//! On shutdown the connection is closed gracefully (in-flight requests finish, no new ones),
//! and cut when the drain deadline passes.
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    connection::{Conn, Ctx},
    pipeline,
};

pub mod body;
pub mod h1;

pub use body::ClientBody;
pub use h1::Upgrade;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
}

/// The stream of an allowed protocol switch, run by the connection's task once the switch's
/// response head is out.
pub type Tunnel = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` at which the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Set by a request whose protocol switch the policy allowed and the upstream accepted.
    tunnel: std::sync::Mutex<Option<Tunnel>>,
    /// The drain deadline's token: it cuts a tunnel too.
    force: CancellationToken,
}

impl Activity {
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.born + since + idle)
    }
}

/// Marks one request in flight until dropped (with its response body, or early).
pub struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(a.clone())
    }

    /// Where a request puts the tunnel of an allowed switch for its connection's task.
    pub fn tunnel_slot(&self) -> TunnelSlot {
        TunnelSlot(self.0.clone())
    }
}

/// A connection's place for the tunnel that takes it over once its HTTP exchange is over.
pub struct TunnelSlot(Arc<Activity>);

impl TunnelSlot {
    /// Fires when the agent's drain deadline cuts this connection.
    pub fn cut(&self) -> CancellationToken {
        self.0.force.clone()
    }

    /// The tunnel owns the request's end, in-flight mark included, until it finishes.
    pub fn set(self, tunnel: Tunnel) {
        if let Ok(mut slot) = self.0.tunnel.lock() {
            *slot = Some(tunnel);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.born.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

pub async fn serve(ctx: Arc<Ctx>, conn: Arc<Conn>, client: TcpStream, force: CancellationToken) {
    let timeouts = ctx.timeouts;
    // One bound from accept to the end of the first head, protocol detection included.
    let first_head = Instant::now() + timeouts.header;
    let proto = tokio::select! {
        p = tokio::time::timeout_at(first_head, sniff(&client)) => p,
        () = force.cancelled() => return,
    };
    let proto = match proto {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return, // closed before sending anything
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "http connection ended before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!(
                target_name = %conn.target.name, tgid = conn.workload.tgid,
                "no request head within the header timeout; closing"
            );
            return;
        }
    };
    let activity = Arc::new(Activity {
        born: Instant::now(),
        in_flight: AtomicUsize::new(0),
        idle_since_ms: AtomicU64::new(0),
        tunnel: std::sync::Mutex::new(None),
        force: force.clone(),
    });
    match proto {
        Proto::H1 => {
            h1::serve(&ctx, &conn, client, first_head, &activity, &force).await;
            // Taken whatever ended the exchange: the tunnel holds the activity (a cycle).
            let tunnel = activity.tunnel.lock().ok().and_then(|mut t| t.take());
            if let Some(tunnel) = tunnel {
                tunnel.await;
            }
        }
        Proto::H2 => serve_h2(ctx, conn, client, force, activity).await,
    }
}

/// HTTP/2 with prior knowledge, on hyper's server.
async fn serve_h2(
    ctx: Arc<Ctx>,
    conn: Arc<Conn>,
    client: TcpStream,
    force: CancellationToken,
    activity: Arc<Activity>,
) {
    let (timeouts, shutdown) = (ctx.timeouts, ctx.shutdown.clone());
    let (max_header, max_streams) = (ctx.max_header, ctx.max_h2_streams);
    let (recorder, rec_conn) = (ctx.recorder.clone(), conn.clone());
    let svc = {
        let activity = activity.clone();
        service_fn(move |req: hyper::Request<Incoming>| {
            let (ctx, conn) = (ctx.clone(), conn.clone());
            let in_flight = InFlight::enter(&activity);
            let req = req.map(ClientBody::H2);
            async move { Ok::<_, Infallible>(pipeline::handle(&ctx, &conn, req, in_flight).await) }
        })
    };
    let c = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(timeouts.idle.min(Duration::from_secs(30))))
        .keep_alive_timeout(timeouts.header)
        .serve_connection(TokioIo::new(client), svc);
    let Some(e) = drive(c, shutdown, force, &activity, timeouts.idle).await else {
        return;
    };
    let status = if e.is_parse_too_large() {
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    } else if e.is_parse() {
        http::StatusCode::BAD_REQUEST
    } else {
        return;
    };
    record_malformed(&recorder, &rec_conn, status, e.to_string()).await;
}

/// A request head refused before it reached the pipeline (answered 400 or 431, the
/// connection closed) still gets its one record, so the audit trail shows the attempt.
async fn record_malformed(
    recorder: &crate::record::Recorder,
    conn: &Conn,
    status: http::StatusCode,
    why: String,
) {
    let mut g = recorder
        .start(
            &conn.target.name,
            conn.target.server,
            &conn.workload,
            "-",
            "-",
        )
        .await;
    g.set_status(status);
    crate::metrics::refused("sluice_malformed_head");
    g.finish(crate::record::Outcome::Malformed(why));
}

/// Peeks until the bytes are (or cannot be) the HTTP/2 preface. Peeking leaves them for
/// the server that reads them. A client that sent a partial preface is polled briefly until it sends the rest
/// (or the caller's timeout ends it): peek has no "wait for more than I have".
async fn sniff(s: &TcpStream) -> std::io::Result<Option<Proto>> {
    let mut buf = [0u8; 24];
    loop {
        let n = s.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(Proto::H1));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Proto::H2));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// hyper's HTTP/2 connection, as far as driving it goes.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: Pin<&mut Self>);
}

impl<S> Graceful for http2::Connection<TokioIo<TcpStream>, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection until it ends, closing it gracefully on shutdown or when idle, and
/// cutting it when the drain deadline fires. Returns the error it ended with, if any.
async fn drive<C: Graceful>(
    conn: C,
    shutdown: CancellationToken,
    force: CancellationToken,
    activity: &Activity,
    idle: Duration,
) -> Option<hyper::Error> {
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        // While requests are in flight, look again after `idle`; the deadline moves with
        // every request that ends.
        let wake = activity
            .idle_deadline(idle)
            .unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            r = conn.as_mut() => {
                let Err(e) = r else { return None };
                // Malformed requests get their 4xx from hyper; the caller records them.
                tracing::debug!(error = %e, "http connection ended");
                return Some(e);
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful();
            }
            () = force.cancelled() => return None,
            () = tokio::time::sleep_until(wake), if !closing => {
                if activity.idle_deadline(idle).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("closing an idle http connection");
                    closing = true;
                    conn.as_mut().graceful();
                }
            }
        }
    }
}
