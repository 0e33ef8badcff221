//! The approvals endpoint (`approvals.http`): HTTP/1.1, over TLS when configured, served on
//! the agent's main runtime like the admin socket. Approvers are few, so it is small and
//! bounded: `max_connections` served at once (more wait in the listen backlog), a deadline
//! for the TLS handshake and the request head, one for the whole exchange, a cap on the head
//! and on the body, and one request per connection.
use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{
    Approvals,
    api::{self, Api},
    settings::Http,
};
use crate::identity::Identity;

/// The TLS handshake and the request's head, from accept.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole exchange: a first token may need its issuer's keys fetched.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Request head bytes (a token is at most `identity.max_token_bytes`, 8 KiB by default).
const MAX_HEAD: usize = 32 * 1024;
/// Request body bytes: a deny reason is a sentence.
const MAX_BODY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("approvals.http.listen {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("approvals.http.tls.{0}")]
    Tls(#[from] crate::tls::Error),
    #[error("approvals.http: {0}")]
    Identity(#[from] crate::identity::Error),
    #[error(
        "approvals.http: no identity issuer accepted (identity.issuers, approvals.http.issuers)"
    )]
    NoIssuer,
}

/// The endpoint, bound and ready to serve.
pub struct Endpoint {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    identity: Arc<Identity>,
    max_connections: usize,
}

/// Reads the TLS files and the issuers' settings (blocking: called off the runtime's
/// workers), then binds. `mark` and `timeout` are the key fetches' bypass mark and connect
/// timeout, as for requests' tokens.
pub async fn open(
    h: &Http,
    identity: &crate::identity::Settings,
    mark: u32,
    timeout: Duration,
) -> anyhow::Result<Endpoint> {
    let (h2, ids) = (h.clone(), h.identity(identity));
    let (tls, identity) = tokio::task::spawn_blocking(move || {
        let tls = match &h2.tls {
            Some(t) => Some(TlsAcceptor::from(Arc::new(crate::tls::server_config(
                &t.cert_file,
                &t.key_file,
                &[b"http/1.1"],
            )?))),
            None => None,
        };
        let identity = Identity::new(&ids, mark, timeout)?.ok_or(Error::NoIssuer)?;
        Ok::<_, Error>((tls, identity))
    })
    .await??;
    let listener = TcpListener::bind(h.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: h.listen,
            source,
        })?;
    Ok(Endpoint {
        listener,
        tls,
        identity,
        max_connections: h.max_connections,
    })
}

impl Endpoint {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop`.
    pub async fn serve(self, approvals: Arc<Approvals>, stop: CancellationToken) {
        self.identity.prefetch();
        let api = Arc::new(Api {
            approvals,
            identity: self.identity,
        });
        let slots = Arc::new(Semaphore::new(self.max_connections));
        while let Some((stream, permit)) =
            crate::limits::accept_bounded(&self.listener, &slots, &stop, "approvals endpoint").await
        {
            let (api, tls, stop) = (api.clone(), self.tls.clone(), stop.clone());
            tokio::spawn(async move {
                let served = async {
                    match tls {
                        None => exchange(stream, api).await,
                        // A failed handshake is not logged: it says nothing the client did
                        // not see.
                        Some(tls) => {
                            if let Ok(Ok(s)) =
                                tokio::time::timeout(HEAD_TIMEOUT, tls.accept(stream)).await
                            {
                                exchange(s, api).await;
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::time::timeout(EXCHANGE_TIMEOUT, served) => {}
                    () = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
    }
}

/// One request on one connection.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, api: Arc<Api>) {
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |req: Request<Incoming>| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(handle(&api, req).await) }
            }),
        );
    let _ = conn.await;
}

async fn handle(api: &Api, req: Request<Incoming>) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let f = if e.is::<http_body_util::LengthLimitError>() {
                api::Failure {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    code: "body_too_large",
                    message: format!("the body is larger than {MAX_BODY} bytes"),
                }
            } else {
                api::Failure {
                    status: StatusCode::BAD_REQUEST,
                    code: "bad_request",
                    message: "the body could not be read".into(),
                }
            };
            return api::failure(&f);
        }
    };
    api::answer(api, &parts, &body).await
}

#[cfg(test)]
mod tests;
