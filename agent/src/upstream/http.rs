//! The HTTP client towards model servers: pooled connections, every socket carrying the
//! bypass mark. Requests reach it only through `pipeline::send`, which takes a `Forward`
//! that only a `Permit` makes: nothing reaches a server undecided.
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

use super::{
    Payload, Timeouts, dial_host,
    idle::{Counted, Idle, Sent},
};
use crate::respond::Body;
use crate::{intercept::netns::Served, policy::Switch, tls::Origin};
use http_body_util::BodyExt as _;
use std::sync::Arc;

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
            // The pooled client: the agent's namespace only (`Client::h2_from` serves the others).
            let (s, _) = dial_host(&host, port, mark, timeout, None).await?;
            Ok(TokioIo::new(s))
        })
    }
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    H1(#[from] super::h1::Error),
    #[error("{0}")]
    H2(#[from] hyper_util::client::legacy::Error),
    /// HTTP/2 from another network namespace (not pooled): connect or handshake failed.
    #[error("connect {authority}: {message}")]
    H2Connect { authority: String, message: String },
    #[error("{0}")]
    H2Request(hyper::Error),
    /// HTTP/2 over TLS: the handshake failed, nothing was sent.
    #[error("upstream {authority} {failure}")]
    H2Tls {
        authority: String,
        failure: crate::tls::Failure,
    },
    /// gRPC: the call went out and no response head came in time; its stream is reset.
    #[error(
        "upstream {authority} sent no response head within {} ms (upstream_head_timeout_ms)",
        .after.as_millis()
    )]
    Timeout { authority: String, after: Duration },
}

impl Error {
    /// Nothing reached the server: another backend may be tried.
    pub fn is_connect(&self) -> bool {
        match self {
            Error::H1(e) => e.is_connect(),
            Error::H2(e) => e.is_connect(),
            Error::H2Connect { .. } | Error::H2Tls { .. } => true,
            Error::H2Request(_) | Error::Timeout { .. } => false,
        }
    }

    /// The request went out and no response head came within `upstream_head_timeout_ms`.
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::H1(e) => e.is_timeout(),
            Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// A TLS handshake failed; the message names the upstream, target, name and reason.
    pub fn is_tls(&self) -> bool {
        match self {
            Error::H1(e) => e.is_tls(),
            Error::H2Tls { .. } => true,
            _ => false,
        }
    }
}

/// HTTP/1.1 and HTTP/2 (for gRPC) pools.
pub struct Client {
    h1: super::h1::Pool,
    h2: HyperClient<MarkedConnector, Body>,
    /// gRPC connections from a client's namespace or over TLS.
    h2_own: super::h2::Pool,
    mark: u32,
    timeouts: Timeouts,
}

impl Client {
    /// `max_idle` bounds the idle pooled connections kept per upstream; `max_header` the
    /// response heads taken from HTTP/1.1 servers.
    pub fn new(mark: u32, timeouts: Timeouts, max_idle: usize, max_header: usize) -> Self {
        let c = MarkedConnector {
            mark,
            timeout: timeouts.connect,
        };
        Client {
            h1: super::h1::Pool::new(mark, timeouts, max_idle, max_header),
            h2: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(max_idle)
                .http2_only(true)
                .build(c),
            h2_own: super::h2::Pool::new(max_idle.max(16)),
            mark,
            timeouts,
        }
    }

    /// Sends a permitted request to `authority` ("host:port"). gRPC goes over HTTP/2, the
    /// rest over HTTP/1.1 whatever the client spoke (model servers speak HTTP/1.1), dialled
    /// from the client's namespace `ns` (`None`: the agent's own), over TLS when the target
    /// has `tls`.
    pub async fn send(
        &self,
        authority: &str,
        ns: Option<&Arc<Served>>,
        tls: Option<&Origin>,
        mut req: Request<Payload>,
        grpc: bool,
    ) -> Result<Response<Body>, Error> {
        strip_hop_by_hop(req.headers_mut(), grpc);
        if grpc {
            // Boxed: hyper's HTTP/2 futures are kilobytes, and every HTTP/1.1 request's
            // future would otherwise be as large (and copied as large).
            return Box::pin(self.grpc(authority, ns, tls, req)).await;
        }
        pin_host(&mut req, authority, tls);
        h1_form(&mut req, authority, true);
        Ok(self.h1.send(authority, ns, tls, req).await?)
    }

    /// A gRPC call, over HTTP/2.
    async fn grpc(
        &self,
        authority: &str,
        ns: Option<&Arc<Served>>,
        tls: Option<&Origin>,
        req: Request<Payload>,
    ) -> Result<Response<Body>, Error> {
        // A streaming call's messages keep its response from counting as silent.
        let sent = matches!(req.body(), Payload::Stream(_)).then(Sent::default);
        let mut req = req.map(|p| match (p, &sent) {
            (Payload::Stream(b), Some(s)) => Counted::new(b, s.clone()).boxed(),
            (p, _) => p.into_body(),
        });
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        if let Ok(uri) = format!("http://{authority}{pq}").parse::<Uri>() {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_2;
        // The pooled client dials cleartext from the agent's namespace only.
        let resp = if ns.is_some() || tls.is_some() {
            self.h2_from(ns.map(|n| &**n), tls, authority, req).await?
        } else {
            // Dropped at the deadline, the call's stream is reset; the connection
            // carries the other calls on it.
            self.within_head(authority, self.h2.request(req))
                .await?
                .map_err(Error::H2)?
        };
        Ok(self.incoming(resp, authority, sent))
    }

    /// `response` unless the upstream's head takes longer than `upstream_head_timeout_ms`.
    async fn within_head<T>(
        &self,
        authority: &str,
        response: impl Future<Output = T>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeouts.head, response)
            .await
            .map_err(|_| Error::Timeout {
                authority: authority.to_string(),
                after: self.timeouts.head,
            })
    }

    /// A hyper response's body as every other response body, cut when it stays silent for
    /// `upstream_idle_timeout_ms` (and the request's stream, if `sent` counts one, too).
    fn incoming(
        &self,
        r: Response<Incoming>,
        authority: &str,
        sent: Option<Sent>,
    ) -> Response<Body> {
        let idle = self.timeouts.idle;
        r.map(|b| Idle::new(b, idle, authority, sent).boxed())
    }
}

impl Client {
    /// Closes pooled HTTP/1.1 connections past their bounds (`h1::Pool::sweep`) and idle or
    /// closed gRPC ones of namespaces and TLS (`h2::Pool::sweep`); hyper-util's HTTP/2 pool
    /// bounds its own.
    pub fn sweep(&self) {
        self.h1.sweep();
        self.h2_own.sweep();
    }

    /// Sends a request whose protocol switch the policy allowed, on a connection of its own
    /// (after the switch it carries the tunnel). The headers the switch needs are kept:
    /// `Upgrade`, and h2c's `HTTP2-Settings`; every other hop-by-hop header is dropped as
    /// for any request.
    pub async fn switch(
        &self,
        authority: &str,
        ns: Option<&Arc<Served>>,
        tls: Option<&Origin>,
        mut req: Request<Body>,
        switch: Switch,
    ) -> Result<Response<Body>, Error> {
        const SETTINGS: header::HeaderName = header::HeaderName::from_static("http2-settings");
        let upgrade = req.headers().get(header::UPGRADE).cloned();
        let settings = req.headers().get(&SETTINGS).cloned();
        strip_hop_by_hop(req.headers_mut(), false);
        let h = req.headers_mut();
        match (switch, upgrade) {
            (Switch::Connect, _) | (_, None) => {}
            (Switch::H2c, Some(u)) => {
                h.insert(header::UPGRADE, u);
                if let Some(s) = settings {
                    h.insert(SETTINGS, s);
                }
                h.insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("upgrade, http2-settings"),
                );
            }
            (Switch::Websocket, Some(u)) => {
                h.insert(header::UPGRADE, u);
                h.insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("upgrade"),
                );
            }
        }
        pin_host(&mut req, authority, tls);
        // CONNECT's target is its authority, never an origin-form path.
        h1_form(&mut req, authority, switch != Switch::Connect);
        // The upgrade travels in the response's extensions, which the body's wrapper keeps;
        // a switch's tunnel is bytes, not this body, and has no idle time of its own here.
        let resp = self.h1.dedicated(authority, ns, tls, req).await?;
        Ok(self.incoming(resp, authority, None))
    }

    /// HTTP/2 to `authority` from a socket in the client's namespace `ns`, or over TLS
    /// (ALPN h2): one connection per request, not pooled (the pooled client dials cleartext
    /// from the agent's namespace only).
    async fn h2_from(
        &self,
        ns: Option<&Served>,
        tls: Option<&Origin>,
        authority: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Error> {
        let key: super::h2::Key = (
            ns.map_or(0, |n| n.cookie),
            tls.map_or(0, |t| t.id),
            authority.into(),
        );
        if let Some(mut sender) = self.h2_own.take(&key) {
            let sent = self
                .within_head(authority, sender.try_send_request(req))
                .await
                .inspect_err(|_| {
                    // A connection whose server went quiet is not given the next call.
                    self.h2_own.forget(&key);
                })?;
            match sent {
                Ok(resp) => return Ok(resp),
                // Closed before the call went out: it goes on a new connection.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Error::H2Request(e.into_error())),
                },
            }
        }
        let connect_err = |message: String| Error::H2Connect {
            authority: authority.to_string(),
            message,
        };
        let (host, port) = super::h1::split_authority(authority)
            .ok_or_else(|| connect_err("not host:port".to_string()))?;
        let connect = self.timeouts.connect;
        let (stream, _) = dial_host(host, port, self.mark, connect, ns)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        // A server that accepts and never answers the TLS handshake is a failed connect
        // (nothing was sent): the next backend is tried.
        let handshake = async {
            match tls {
                None => Ok(h2_handshake(stream).await),
                Some(t) => match t.connect(stream, host, true).await {
                    Ok(stream) => Ok(h2_handshake(stream).await),
                    Err(failure) => Err(Error::H2Tls {
                        authority: authority.to_string(),
                        failure,
                    }),
                },
            }
        };
        let mut sender = tokio::time::timeout(connect, handshake)
            .await
            .map_err(|_| {
                connect_err(format!(
                    "no handshake within {} ms (connect_timeout_ms)",
                    connect.as_millis()
                ))
            })??
            .map_err(|e| connect_err(e.to_string()))?;
        self.h2_own.put(key.clone(), sender.clone());
        let sent = self.within_head(authority, sender.send_request(req)).await;
        if sent.is_err() {
            self.h2_own.forget(&key);
        }
        sent?.map_err(Error::H2Request)
    }
}

/// HTTP/2 on a dialled stream, cleartext or TLS; the connection's task ends when its last
/// stream is over and every sender is gone (the pool's included).
pub(super) async fn h2_handshake<S>(
    io: S,
) -> Result<hyper::client::conn::http2::SendRequest<Body>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// A TLS target's servers get the `Host` the target names (`Origin::host_header`), never the
/// client's.
fn pin_host<B>(req: &mut Request<B>, authority: &str, tls: Option<&Origin>) {
    if let Some(host) = tls.and_then(|t| t.host_header(authority)) {
        req.headers_mut().insert(header::HOST, host);
    }
}

/// The request as HTTP/1.1 carries it: the origin form on the request line (an HTTP/2
/// client's URI is absolute), and `Host` set (HTTP/2 and HTTP/1.0 clients may send none).
fn h1_form<B>(req: &mut Request<B>, authority: &str, origin_form: bool) {
    if origin_form && (req.uri().scheme().is_some() || req.uri().authority().is_some()) {
        let origin = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse::<Uri>();
        if let Ok(uri) = origin {
            *req.uri_mut() = uri;
        }
    }
    if !req.headers().contains_key(header::HOST)
        && let Ok(v) = header::HeaderValue::from_str(authority)
    {
        req.headers_mut().insert(header::HOST, v);
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), including every header
/// the `Connection` header names: a client must not be able to make Sluice drop a header
/// the server needs, or pass one only this hop should see.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_te_trailers: bool) {
    // Runs twice per request, and most messages carry `Connection: keep-alive` at most: one
    // pass over the names notes which hop-by-hop ones are there, so only those are removed
    // (a removal is a hash lookup), and the options `keep-alive` and `close` (the usual
    // ones) never become a list of names to remove.
    const KEEP_ALIVE: header::HeaderName = header::HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: header::HeaderName =
        header::HeaderName::from_static("proxy-connection");
    const CLOSE: header::HeaderName = header::HeaderName::from_static("close");
    let hops = [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        // Not hop-by-hop itself: removed only when `Connection` names it.
        CLOSE,
    ];
    let mut present = 0u8;
    for n in h.keys() {
        if let Some(i) = hops.iter().position(|hop| hop == n) {
            present |= 1 << i;
        }
    }
    const CONNECTION: u8 = 1;
    const NAMED_CLOSE: u8 = 1 << 6;
    if present & !NAMED_CLOSE == 0 {
        return;
    }
    let mut named: Vec<header::HeaderName> = Vec::new();
    if present & CONNECTION != 0 {
        for option in h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
        {
            if option.eq_ignore_ascii_case("keep-alive") {
                continue; // removed below in any case
            }
            if option.eq_ignore_ascii_case("close") {
                if present & NAMED_CLOSE != 0 {
                    named.push(CLOSE);
                }
                continue;
            }
            if let Ok(name) = header::HeaderName::from_bytes(option.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        // `Connection: te` must not remove the `te: trailers` gRPC needs.
        if !(keep_te_trailers && name == header::TE) {
            h.remove(name);
        }
    }
    // Every hop-by-hop header there (not `close`), but gRPC's `te: trailers`.
    for (i, name) in hops.into_iter().enumerate().take(6) {
        if present & (1 << i) != 0 && !(keep_te_trailers && name == header::TE) {
            h.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real HTTP/2 server on loopback: `/never` never answers, `/stalls` sends its head
    /// and one data frame, then nothing while the stream stays open.
    async fn stalling_h2_server() -> std::net::SocketAddr {
        use bytes::Bytes;
        use futures_util::StreamExt as _;
        use http_body_util::BodyExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        if req.uri().path() == "/never" {
                            std::future::pending::<()>().await;
                        }
                        let frames = futures_util::stream::once(async {
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                Bytes::from_static(b"\0\0\0\0\0"),
                            ))
                        })
                        .chain(futures_util::stream::pending());
                        let body = BodyExt::boxed(http_body_util::StreamBody::new(frames));
                        Ok::<_, std::convert::Infallible>(Response::new(body))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn grpc_call(authority: &str, path: &str) -> Request<Payload> {
        Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{authority}{path}"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Payload::Full(bytes::Bytes::from_static(b"\0\0\0\0\0")))
            .expect("request")
    }

    /// gRPC on hyper's HTTP/2 client: a call with no head in time is a timeout, and a
    /// response that goes silent is cut with an error, never a clean end.
    #[tokio::test]
    async fn grpc_calls_get_the_head_and_idle_timeouts_too() {
        use futures_util::StreamExt as _;
        let addr = stalling_h2_server().await.to_string();
        let client = Client::new(
            0,
            Timeouts {
                connect: Duration::from_secs(2),
                head: Duration::from_millis(300),
                idle: Duration::from_millis(300),
            },
            4,
            16384,
        );
        let hung = Duration::from_secs(10);
        let e = tokio::time::timeout(
            hung,
            client.send(&addr, None, None, grpc_call(&addr, "/never"), true),
        )
        .await
        .expect("ended by the head timeout, not hung")
        .expect_err("no head");
        assert!(e.is_timeout() && !e.is_connect(), "{e}");
        assert!(e.to_string().contains(&addr), "{e}");

        let resp = tokio::time::timeout(
            hung,
            client.send(&addr, None, None, grpc_call(&addr, "/stalls"), true),
        )
        .await
        .expect("not hung")
        .expect("the head came");
        let mut body = resp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        let e = tokio::time::timeout(hung, body.frame())
            .await
            .expect("ended by the idle timeout, not hung")
            .expect("an error, never a clean end")
            .expect_err("cut");
        assert!(
            matches!(e, crate::respond::BodyError::UpstreamSilent(_)),
            "{e:?}"
        );

        // A streaming call whose client has gone quiet too (its stream still open) is cut
        // the same way: only messages the client sends start the time over.
        let quiet = futures_util::stream::once(async {
            Ok::<_, crate::respond::BodyError>(http_body::Frame::data(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
        })
        .chain(futures_util::stream::pending());
        let mut call = grpc_call(&addr, "/stalls");
        *call.body_mut() = Payload::Stream(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(Box::pin(quiet)),
        ));
        let resp = tokio::time::timeout(hung, client.send(&addr, None, None, call, true))
            .await
            .expect("not hung")
            .expect("the head came");
        let e = tokio::time::timeout(hung, resp.into_body().collect())
            .await
            .expect("ended by the idle timeout, not hung")
            .expect_err("cut");
        assert!(
            matches!(e, crate::respond::BodyError::UpstreamSilent(_)),
            "{e:?}"
        );
    }

    /// A client-streaming (or bidi) gRPC call: the server sends its head at once and its
    /// one message only once the client's stream has ended. While the client still sends,
    /// the response's silence is the call waiting on the client, not a silent upstream.
    #[tokio::test]
    async fn a_grpc_response_waiting_on_a_client_that_still_sends_is_not_cut() {
        use bytes::Bytes;
        use futures_util::StreamExt as _;
        use http_body_util::BodyExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        // Answers with the count of request bytes, after the request's end.
                        let answer = futures_util::stream::once(async move {
                            let n = req
                                .into_body()
                                .collect()
                                .await
                                .map_or(0, |b| b.to_bytes().len());
                            Ok::<_, hyper::Error>(http_body::Frame::data(Bytes::from(
                                n.to_string(),
                            )))
                        });
                        Ok::<_, std::convert::Infallible>(Response::new(
                            http_body_util::StreamBody::new(answer),
                        ))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let client = Client::new(
            0,
            Timeouts {
                connect: Duration::from_secs(2),
                head: Duration::from_secs(10),
                idle: Duration::from_millis(300),
            },
            4,
            16384,
        );
        // Ten messages 100 ms apart: a second in all, each pause far under the idle time.
        let messages = futures_util::stream::iter(0..10).then(|_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, crate::respond::BodyError>(http_body::Frame::data(Bytes::from_static(
                b"\0\0\0\0\0",
            )))
        });
        let mut call = grpc_call(&addr, "/stream");
        *call.body_mut() = Payload::Stream(BodyExt::boxed(http_body_util::StreamBody::new(
            Box::pin(messages),
        )));
        let hung = Duration::from_secs(10);
        let resp = tokio::time::timeout(hung, client.send(&addr, None, None, call, true))
            .await
            .expect("not hung")
            .expect("the head came");
        let body = tokio::time::timeout(hung, resp.into_body().collect())
            .await
            .expect("not hung")
            .expect("not cut while the client was sending")
            .to_bytes();
        assert_eq!(&body[..], b"50");
    }

    #[test]
    fn headers_named_in_connection_are_removed_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, X-Secret-Hop , te".parse().expect("hv"),
        );
        h.insert("x-secret-hop", "1".parse().expect("hv"));
        h.insert(header::TE, "trailers".parse().expect("hv"));
        h.insert("x-kept", "1".parse().expect("hv"));
        h.insert(header::UPGRADE, "h2c".parse().expect("hv"));
        let mut grpc = h.clone();
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
        strip_hop_by_hop(&mut grpc, true);
        assert!(grpc.contains_key(header::TE) && !grpc.contains_key("x-secret-hop"));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed_and_others_are_left_alone() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert("content-type", "application/json".parse().expect("hv"));
            h.insert(
                header::HeaderName::from_static(name),
                "x".parse().expect("hv"),
            );
            strip_hop_by_hop(&mut h, false);
            let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, vec!["content-type"], "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().expect("hv"));
        h.insert("x-other", "1".parse().expect("hv"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    /// The usual options: `keep-alive` and `close` name no header to remove unless one by
    /// that name is there; a `close` header no `Connection` names stays.
    #[test]
    fn the_usual_connection_options_remove_only_what_they_name() {
        let strip = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(header::HeaderName::from_static(n), v.parse().expect("hv"));
            }
            strip_hop_by_hop(&mut h, false);
            let mut left: Vec<String> = h.keys().map(|k| k.to_string()).collect();
            left.sort();
            left
        };
        assert_eq!(
            strip(&[
                ("connection", "Keep-Alive"),
                ("keep-alive", "timeout=5"),
                ("x-a", "1")
            ]),
            ["x-a"]
        );
        assert_eq!(
            strip(&[("connection", "close"), ("close", "1"), ("x-a", "1")]),
            ["x-a"]
        );
        assert_eq!(strip(&[("close", "1"), ("x-a", "1")]), ["close", "x-a"]);
        assert_eq!(
            strip(&[
                ("connection", "close"),
                ("connection", "x-b, CLOSE"),
                ("x-b", "1"),
                ("x-a", "1")
            ]),
            ["x-a"]
        );
    }
}
