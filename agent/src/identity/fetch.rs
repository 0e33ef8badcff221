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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A CA with a name of its own (two CAs of one name would be told apart by signature
    /// only: BadSignature instead of UnknownIssuer).
    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("fetch test CA {name}"));
        CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA")
    }

    /// An https server on 127.0.0.1 answering every request with a small JSON document,
    /// with a certificate for `localhost` issued by `ca`.
    async fn https_server(ca: &CertifiedIssuer<'static, KeyPair>) -> u16 {
        let acceptor = crate::tls::test_acceptor("localhost", ca);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let body = br#"{"keys":[]}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(body).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        port
    }

    fn fetcher(ca: &CertifiedIssuer<'static, KeyPair>) -> Fetcher {
        let dir =
            std::env::temp_dir().join(format!("sluice-fetch-{}-{:p}", std::process::id(), ca));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.pem()).expect("write");
        let cfg = crate::tls::client_config(Some(&path), None, &[b"http/1.1"]).expect("config");
        let _ = std::fs::remove_dir_all(&dir);
        Fetcher {
            mark: 0x51ce,
            timeout: Duration::from_secs(2),
            tls: Ok(Arc::new(cfg)),
        }
    }

    #[tokio::test]
    #[ignore = "needs root: fetch sockets carry SO_MARK (cargo xtask test runs it as root)"]
    async fn https_issuers_are_fetched_over_tls_and_an_unknown_ca_is_refused() {
        let good = ca("good");
        let port = https_server(&good).await;
        let url = format!("https://localhost:{port}/jwks");
        let v = fetcher(&good).json(&url).await.expect("fetched over TLS");
        assert_eq!(v, serde_json::json!({"keys": []}));

        let e = fetcher(&ca("other"))
            .json(&url)
            .await
            .expect_err("other CA");
        assert_eq!(
            e.to_string(),
            "TLS with localhost: invalid peer certificate: UnknownIssuer"
        );
        let none = Fetcher {
            tls: Err("no roots".into()),
            ..fetcher(&good)
        };
        assert!(
            none.json(&url)
                .await
                .is_err_and(|e| e.to_string().contains("no roots"))
        );
    }
}
