//! The `/metrics` endpoint: plain HTTP/1.1 on a loopback address (config validation refuses
//! any other), answering `GET /metrics` with the OpenMetrics text and 404 otherwise. Scrapes
//! are few: a small bounded number are served at once, each with a deadline for its head
//! and one for the whole exchange, so a stuck scraper cannot hold the agent's resources.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// Scrapes served at once; more wait in the listen backlog.
const CONCURRENT: usize = 8;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole exchange, so a scraper that never reads its answer cannot keep a slot.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, metrics: &'static Metrics, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    while let Some((stream, permit)) =
        crate::limits::accept_bounded(&listener, &slots, &stop, "metrics").await
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(answer(metrics, req.method(), req.uri().path()))
                    }),
                );
            tokio::select! {
                _ = tokio::time::timeout(EXCHANGE_TIMEOUT, conn) => {}
                () = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

fn answer(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "sluice serves /metrics only\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    async fn body(r: Response<Full<Bytes>>) -> String {
        let b = r.into_body().collect().await.expect("full body").to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn only_get_metrics_is_served() {
        let m = Metrics::new();
        m.refusal("sluice_policy_denied");
        let ok = answer(&m, &Method::GET, "/metrics");
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(CONTENT_TYPE.as_bytes())
        );
        let text = body(ok).await;
        assert!(
            text.contains(r#"sluice_refusals_total{reason="sluice_policy_denied"} 1"#),
            "{text}"
        );
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with EOF: {text}"
        );
        assert_eq!(
            answer(&m, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            answer(&m, &Method::GET, "/").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            answer(&m, &Method::GET, "/metrics/../admin").status(),
            StatusCode::NOT_FOUND
        );
    }
}
