//! Floor C: floor B's job done by hyper, as the agent does it minus the pipeline: hyper's
//! HTTP/1 server connection (its timer and header timeout, keep-alive) on the client side,
//! one hyper HTTP/1 client connection per downstream connection (its own task, like
//! `upstream/h1.rs`), the request and the response passed through with their streaming
//! bodies. The gap C − B is what hyper itself costs on this path.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{
    Request, body::Incoming, client::conn::http1 as client, server::conn::http1 as server,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// The agent's default `timeouts.header`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = client::handshake(TokioIo::new(up)).await else {
        return;
    };
    tokio::spawn(conn);
    // One exchange at a time on an HTTP/1 connection: the lock is never contended (hyper's
    // server asks for the next response only once the previous one is written).
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let svc = service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut s = sender.lock().await;
            s.ready().await?;
            s.send_request(req).await
        }
    });
    let _ = server::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(client), svc)
        .await;
}
