//! Protocol switches: `Upgrade: websocket`, `Upgrade: h2c` and `CONNECT` turn the connection
//! into a stream Sluice cannot judge request by request. `requested` names the switch a
//! request asks for (admit refuses any it cannot name); the policy lets it through only by an
//! allow rule that names it (`policy::Switch`); `Tunnel` then carries the switched stream
//! byte for byte, and its record says it was not judged.
use http::{HeaderValue, Method, StatusCode, Version, header, request::Parts};
use hyper::upgrade::OnUpgrade;
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

/// Whether the upstream's answer is the switch asked for: `101` to an `Upgrade`, `2xx` to a
/// `CONNECT`. Anything else is an ordinary response and the connection stays HTTP.
pub fn accepted(switch: Switch, status: StatusCode) -> bool {
    match switch {
        Switch::Connect => status.is_success(),
        Switch::Websocket | Switch::H2c => status == StatusCode::SWITCHING_PROTOCOLS,
    }
}

/// The two halves of an allowed switch, joined once the client's connection has sent the
/// switch's response head (hyper hands both sockets over only then).
pub struct Tunnel {
    pub switch: Switch,
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
}

impl Tunnel {
    /// Copies both ways until either side ends, then finishes the request's record with the
    /// bytes each way and how it ended. Each direction's buffer is bounded (tokio's copy).
    pub async fn run(self, mut end: RequestEnd, cut: tokio_util::sync::CancellationToken) {
        let (client, upstream) = tokio::join!(self.client, self.upstream);
        let (client, upstream) = match (client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) | (_, Err(e)) => {
                end.record.finish(Outcome::Switched {
                    to: self.switch,
                    error: Some(format!("the switch did not complete: {e}")),
                });
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        let copied = tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => r.map_err(|e| e.to_string()),
            () = cut.cancelled() => Err("cut by drain".to_string()),
        };
        let error = match copied {
            Ok((up, down)) => {
                end.record.set_request_bytes(up as usize);
                end.record.add_bytes(down as usize);
                None
            }
            Err(e) => Some(e),
        };
        end.record.finish(Outcome::Switched {
            to: self.switch,
            error,
        });
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
    fn only_the_switch_asked_for_counts_as_accepted() {
        assert!(accepted(Switch::Websocket, StatusCode::SWITCHING_PROTOCOLS));
        assert!(!accepted(Switch::Websocket, StatusCode::OK));
        assert!(accepted(Switch::Connect, StatusCode::OK));
        assert!(!accepted(Switch::Connect, StatusCode::SWITCHING_PROTOCOLS));
        assert!(!accepted(Switch::H2c, StatusCode::FORBIDDEN));
    }
}
