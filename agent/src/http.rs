//! Serving HTTP on an intercepted connection: HTTP/1.1 (keep-alive, chunked) or HTTP/2 with
//! prior knowledge (gRPC), detected from the first bytes. Each request goes through
//! `pipeline::handle`. On shutdown the connection is closed gracefully (in-flight requests
//! finish, no new ones), and cut when the drain deadline passes.
use std::{convert::Infallible, sync::Arc};

use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    connection::{Conn, Ctx},
    pipeline,
};

pub async fn serve(ctx: Arc<Ctx>, conn: Arc<Conn>, client: TcpStream, force: CancellationToken) {
    let shutdown = ctx.shutdown.clone();
    let max_header = ctx.max_header;
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let (ctx, conn) = (ctx.clone(), conn.clone());
        async move { Ok::<_, Infallible>(pipeline::handle(&ctx, &conn, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(max_header.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX));
    let served = builder.serve_connection(TokioIo::new(client), svc);
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => { log_end(r); return; }
        () = shutdown.cancelled() => served.as_mut().graceful_shutdown(),
        () = force.cancelled() => return,
    }
    tokio::select! {
        r = served => log_end(r),
        () = force.cancelled() => {}
    }
}

fn log_end(r: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = r {
        // Malformed requests get their 4xx from hyper; this only records why the
        // connection ended.
        tracing::debug!(error = %e, "http connection ended");
    }
}
