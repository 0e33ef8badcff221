//! GETs of discovery documents and key sets. Sockets carry the bypass mark (as upstream
//! sockets do, `upstream::dial_host`), so the agent's hooks never redirect its own fetches;
//! everything is async with a deadline and a size limit, so a slow or huge answer costs a
//! waiting task, never a runtime thread. https goes over the agent's one TLS stack
//! (`crate::tls`): the issuer's `ca_file` or the system's roots.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Largest discovery document or key set read.
const MAX_BYTES: usize = 1024 * 1024;
/// The whole fetch, connect included.
const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Url(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS with {host}: {why}")]
    Tls { host: String, why: String },
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

#[derive(Clone)]
pub struct Fetcher {
    pub mark: u32,
    pub timeout: Duration,
    /// For https URLs; `Err` says why there is none (no roots on this host).
    pub tls: Result<Arc<rustls::ClientConfig>, String>,
}

impl Fetcher {
    pub async fn json(&self, url: &str) -> Result<serde_json::Value, Error> {
        match tokio::time::timeout(DEADLINE, self.get(url)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(DEADLINE)),
        }
    }

    async fn get(&self, url: &str) -> Result<serde_json::Value, Error> {
        // Checked again here: a discovery document may name any jwks_uri.
        super::settings::check_url(url).map_err(Error::Url)?;
        let uri: http::Uri = url.parse().map_err(|_| Error::Url(url.to_string()))?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let (stream, _) = crate::upstream::dial_host(host, port, self.mark, self.timeout, None)
            .await
            .map_err(Error::Connect)?;
        let (mut tx, driver) = if https {
            let tls_err = |why: String| Error::Tls {
                host: host.to_string(),
                why,
            };
            let cfg = self.tls.clone().map_err(tls_err)?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| tls_err(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, stream)
                .await
                .map_err(|e| tls_err(crate::tls::describe(&e)))?;
            let (tx, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await?;
            (
                tx,
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (tx, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await?;
            (
                tx,
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        let authority = uri.authority().map_or("", |a| a.as_str()).to_string();
        let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "sluice")
            .body(Empty::new())
            .map_err(|e| Error::Url(e.to_string()))?;
        let result = async {
            let resp = tx.send_request(req).await?;
            if !resp.status().is_success() {
                return Err(Error::Status(resp.status()));
            }
            let body = Limited::new(resp.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| Error::Body(e.to_string()))?
                .to_bytes();
            Ok(serde_json::from_slice(&body)?)
        }
        .await;
        driver.abort();
        result
    }
}
