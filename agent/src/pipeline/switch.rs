//! Protocol switches: `Upgrade: websocket`, `Upgrade: h2c` and `CONNECT` turn the connection
//! into a stream Sluice cannot judge request by request. `requested` names the switch a
//! request asks for (admit refuses any it cannot name); the policy lets it through only by an
//! allow rule that names it (`policy::Switch`); `Tunnel` then carries the switched stream
//! byte for byte, and its record says it was not judged.
use http::{HeaderValue, Method, StatusCode, Version, header, request::Parts};
use hyper::upgrade::OnUpgrade;

use crate::http::Upgrade;
use hyper_util::rt::TokioIo;

use crate::{filter::RequestEnd, policy::Switch, record::Outcome, respond::Refusal};

/// The switch a request asks for, or a refusal when Sluice could not say which one the
/// server would make: several protocols offered, one it has no name for, or a switch over
/// HTTP/1.0 or HTTP/2 (neither has HTTP/1.1's upgrade; HTTP/2's CONNECT would open a tunnel
/// per stream).
pub fn requested(parts: &Parts) -> Result<Option<Switch>, Refusal> {
    let upgrade = parts.headers.get(header::UPGRADE);
    if parts.method != Method::CONNECT && upgrade.is_none() {
        return Ok(None);
    }
    if parts.version != Version::HTTP_11 {
        return Err(refuse(format!(
            "a protocol switch over {:?} is not supported",
            parts.version
        )));
    }
    if parts.method == Method::CONNECT {
        if upgrade.is_some() {
            return Err(refuse("CONNECT with an Upgrade header".to_string()));
        }
        // CONNECT has no content (RFC 9110 §9.3.6): bytes framed as a body would be tunnel
        // data to the server and a body to Sluice.
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
        if declared || parts.headers.contains_key(header::TRANSFER_ENCODING) {
            return Err(refuse("CONNECT with a body".to_string()));
        }
        return Ok(Some(Switch::Connect));
    }
    let value = upgrade.map_or(&b""[..], HeaderValue::as_bytes);
    let shown = String::from_utf8_lossy(value);
    if parts.headers.get_all(header::UPGRADE).iter().count() > 1 || value.contains(&b',') {
        return Err(refuse(format!(
            "Upgrade {shown:?} offers several protocols; Sluice cannot tell which the server would pick"
        )));
    }
    // `websocket`, `h2c`, with an optional `/version` (RFC 9110 §7.8), in any case.
    let name = value.split(|b| *b == b'/').next().unwrap_or_default();
    let name = std::str::from_utf8(name).unwrap_or_default().trim();
    if name.eq_ignore_ascii_case("websocket") {
        Ok(Some(Switch::Websocket))
    } else if name.eq_ignore_ascii_case("h2c") {
        Ok(Some(Switch::H2c))
    } else {
        Err(refuse(format!(
            "Upgrade {shown:?} names a protocol Sluice does not pass (websocket and h2c can be allowed by policy)"
        )))
    }
}

fn refuse(what: String) -> Refusal {
    Refusal::policy(
        None,
        &format!(
            "{what}: a protocol switch turns the connection into a stream Sluice cannot judge request by request"
        ),
    )
}

/// Whether the upstream's answer is the switch asked for: `2xx` to a `CONNECT`, `101` naming
/// the protocol asked for to an `Upgrade`. A non-2xx to `CONNECT` or a final status to an
/// `Upgrade` is an ordinary response and the connection stays HTTP; a `101` to anything else
/// (another protocol, or none named) is refused by `pipeline::response` as a switch nobody
/// allowed.
pub fn accepted(switch: Switch, status: StatusCode, upgrade: Option<&HeaderValue>) -> bool {
    match switch {
        Switch::Connect => status.is_success(),
        Switch::Websocket | Switch::H2c => {
            status == StatusCode::SWITCHING_PROTOCOLS
                && upgrade.is_some_and(|u| {
                    let name = u
                        .as_bytes()
                        .split(|b| *b == b'/')
                        .next()
                        .unwrap_or_default();
                    name.trim_ascii()
                        .eq_ignore_ascii_case(switch.as_str().as_bytes())
                })
        }
    }
}

/// The two halves of an allowed switch, joined once the client's connection has sent the
/// switch's response head (`http::h1` hands the client's socket over only then).
pub struct Tunnel {
    pub switch: Switch,
    pub client: Upgrade,
    pub upstream: OnUpgrade,
}

impl Tunnel {
    /// Copies both ways (a half-close is passed on) until both directions have ended, or
    /// the drain deadline cuts it, then finishes the request's record with the bytes each
    /// way and how it ended. Each direction's buffer is bounded (tokio's copy). `end` holds
    /// the request's in-flight mark until then.
    pub async fn run(self, mut end: RequestEnd, cut: tokio_util::sync::CancellationToken) {
        let switch = self.switch;
        let outcome = tokio::select! {
            r = self.join() => r,
            () = cut.cancelled() => Err("cut by drain".to_string()),
        };
        let error = match outcome {
            Ok((up, down)) => {
                end.record.add_request_bytes(up as usize);
                end.record.add_bytes(down as usize);
                None
            }
            Err(e) => Some(e),
        };
        end.record.finish(Outcome::Switched { to: switch, error });
    }

    /// Both halves once they are handed over, then the copy: (bytes up, bytes down).
    async fn join(self) -> Result<(u64, u64), String> {
        let (client, upstream) = tokio::join!(self.client, self.upstream);
        let (client, upstream) = match (client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) => return Err(format!("the switch did not complete: {e}")),
            (_, Err(e)) => return Err(format!("the switch did not complete: {e}")),
        };
        let mut upstream = TokioIo::new(upstream);
        let mut client = client;
        tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, version: Version, upgrade: &[&str]) -> Parts {
        let mut b = http::Request::builder()
            .method(method)
            .version(version)
            .uri("/ws");
        for u in upgrade {
            b = b.header(header::UPGRADE, *u);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn switches_are_named_and_what_cannot_be_named_is_refused() {
        let h11 = Version::HTTP_11;
        let ok = |m, u: &[&str]| requested(&parts(m, h11, u)).expect("judged");
        assert_eq!(ok(Method::POST, &[]), None);
        assert_eq!(ok(Method::GET, &["websocket"]), Some(Switch::Websocket));
        assert_eq!(ok(Method::GET, &["WebSocket"]), Some(Switch::Websocket));
        assert_eq!(ok(Method::GET, &["h2c"]), Some(Switch::H2c));
        assert_eq!(ok(Method::CONNECT, &[]), Some(Switch::Connect));
        for (m, v, u) in [
            (Method::GET, h11, vec!["websocket, h2c"]),
            (Method::GET, h11, vec!["websocket", "h2c"]),
            (Method::GET, h11, vec!["TLS/1.0"]),
            (Method::GET, h11, vec!["websocketx"]),
            (Method::GET, h11, vec![""]),
            (Method::GET, Version::HTTP_10, vec!["websocket"]),
            (Method::CONNECT, Version::HTTP_2, vec![]),
            (Method::CONNECT, h11, vec!["websocket"]),
        ] {
            let r = requested(&parts(m.clone(), v, &u)).expect_err("refused");
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {v:?} {u:?}");
            assert!(r.message.contains("cannot judge"), "{}", r.message);
        }
    }

    #[test]
    fn a_connect_with_a_body_is_refused() {
        for (name, value) in [("content-length", "5"), ("transfer-encoding", "chunked")] {
            let mut p = parts(Method::CONNECT, Version::HTTP_11, &[]);
            p.headers.insert(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            let r = requested(&p).expect_err("a body");
            assert!(r.message.contains("CONNECT with a body"), "{}", r.message);
        }
        let mut p = parts(Method::CONNECT, Version::HTTP_11, &[]);
        p.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert_eq!(requested(&p).expect("no body"), Some(Switch::Connect));
    }

    #[test]
    fn only_the_switch_asked_for_counts_as_accepted() {
        let ws = HeaderValue::from_static("WebSocket");
        let h2c = HeaderValue::from_static("h2c");
        let s101 = StatusCode::SWITCHING_PROTOCOLS;
        assert!(accepted(Switch::Websocket, s101, Some(&ws)));
        assert!(accepted(Switch::H2c, s101, Some(&h2c)));
        // Another protocol than the one allowed, or none named: not this switch.
        assert!(!accepted(Switch::Websocket, s101, Some(&h2c)));
        assert!(!accepted(Switch::Websocket, s101, None));
        assert!(!accepted(Switch::Websocket, StatusCode::OK, Some(&ws)));
        assert!(accepted(Switch::Connect, StatusCode::OK, None));
        assert!(!accepted(Switch::Connect, s101, None));
        assert!(!accepted(Switch::H2c, StatusCode::FORBIDDEN, Some(&h2c)));
    }
}
