//! The HTTP client towards model servers: pooled connections, every socket carrying the
//! bypass mark. Only a `Permit` opens a request: nothing reaches a server undecided.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client as HyperClient,
    rt::{TokioExecutor, TokioIo},
};

use super::dial;
use crate::{policy::Permit, respond::Body};

/// Dials `host:port` of the request URI with the bypass mark.
#[derive(Clone)]
pub struct MarkedConnector {
    mark: u32,
    timeout: Duration,
}

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mark, timeout) = (self.mark, self.timeout);
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
            for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
                match dial(addr, mark, timeout).await {
                    Ok(s) => return Ok(TokioIo::new(s)),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }
}

/// HTTP/1.1 and HTTP/2 (for gRPC) pools.
pub struct Client {
    h1: HyperClient<MarkedConnector, Body>,
    h2: HyperClient<MarkedConnector, Body>,
}

impl Client {
    pub fn new(mark: u32, timeout: Duration) -> Self {
        let c = MarkedConnector { mark, timeout };
        Client {
            h1: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(c.clone()),
            h2: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .http2_only(true)
                .build(c),
        }
    }

    /// Sends a permitted request to `authority` ("host:port"). gRPC goes over HTTP/2, the
    /// rest over HTTP/1.1 whatever the client spoke (model servers speak HTTP/1.1).
    pub async fn send(
        &self,
        _permit: &Permit,
        authority: &str,
        mut req: Request<Body>,
        grpc: bool,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        if let Ok(uri) = format!("http://{authority}{pq}").parse::<Uri>() {
            *req.uri_mut() = uri;
        }
        strip_hop_by_hop(req.headers_mut(), grpc);
        if grpc {
            *req.version_mut() = Version::HTTP_2;
            self.h2.request(req).await
        } else {
            if req.version() == Version::HTTP_2 {
                // An HTTP/2 client has no Host header; HTTP/1.1 needs one.
                if let Some(a) = req.uri().authority().cloned()
                    && !req.headers().contains_key(header::HOST)
                    && let Ok(v) = header::HeaderValue::from_str(a.as_str())
                {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            *req.version_mut() = Version::HTTP_11;
            self.h1.request(req).await
        }
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_te_trailers: bool) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        h.remove(name);
    }
    if !keep_te_trailers {
        h.remove(header::TE);
    }
}
