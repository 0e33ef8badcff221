//! Reading a unary gRPC request the way its server will: one length-prefixed protobuf
//! message, whose top-level string fields (the model name among them) policy can match.
//!
//! Written by hand because only the wire format is needed, not the service's schema: prost
//! decodes into generated types, and Sluice must read fields of messages it has no `.proto`
//! for. Protobuf's own rule applies: a scalar field given twice is the last one; Sluice
//! refuses two different values instead of guessing which one a server honours.
use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Map, Value};

use crate::respond::Refusal;

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal::client(StatusCode::BAD_REQUEST, "sluice_bad_grpc", msg)
}

/// The top-level string fields of the request's one message, as a JSON object keyed by
/// field number (`{"1": "model-name", ...}`): route tables name the model's field.
pub fn message_strings(body: &[u8]) -> Result<Value, Refusal> {
    let [flag, l0, l1, l2, l3, msg @ ..] = body else {
        return Err(bad("a gRPC request body shorter than its message header"));
    };
    if *flag != 0 {
        return Err(Refusal::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sluice_encoded_body",
            "compressed gRPC messages are not accepted: Sluice must read the request to apply policy",
        ));
    }
    let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
    if len != msg.len() {
        return Err(bad(
            "a unary gRPC request must carry exactly one whole message",
        ));
    }
    let mut fields: BTreeMap<u64, String> = BTreeMap::new();
    let mut rest = msg;
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut rest)?;
            }
            1 => rest = skip(rest, 8)?,
            5 => rest = skip(rest, 4)?,
            2 => {
                let n = usize::try_from(varint(&mut rest)?)
                    .map_err(|_| bad("a gRPC field length does not fit"))?;
                let (value, tail) = (rest.get(..n), rest.get(n..));
                let (Some(value), Some(tail)) = (value, tail) else {
                    return Err(bad("a gRPC field runs past its message"));
                };
                rest = tail;
                // Only valid UTF-8 can be a protobuf `string`; other bytes fields are not
                // names policy matches.
                if let Ok(s) = std::str::from_utf8(value) {
                    if let Some(earlier) = fields.get(&number)
                        && earlier != s
                    {
                        return Err(bad(format!(
                            "the gRPC message gives field {number} twice, with different values"
                        )));
                    }
                    fields.insert(number, s.to_string());
                }
            }
            _ => return Err(bad("a gRPC message with an unknown wire type")),
        }
    }
    let map: Map<String, Value> = fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    Ok(Value::Object(map))
}

fn varint(buf: &mut &[u8]) -> Result<u64, Refusal> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((b, rest)) = buf.split_first() else {
            return Err(bad("a gRPC message ends inside a number"));
        };
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("a gRPC number is longer than ten bytes"))
}

fn skip(buf: &[u8], n: usize) -> Result<&[u8], Refusal> {
    buf.get(n..)
        .ok_or_else(|| bad("a gRPC field runs past its message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0];
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(msg);
        b
    }

    #[test]
    fn reads_top_level_string_fields_by_number() {
        // model_name = "secret-model" (1), model_version = "2" (2), id (varint field 3).
        let mut msg = vec![0x0a, 12];
        msg.extend_from_slice(b"secret-model");
        msg.extend_from_slice(&[0x12, 1, b'2', 0x18, 0x96, 0x01]);
        let v = message_strings(&frame(&msg)).expect("valid");
        assert_eq!(v["1"], "secret-model");
        assert_eq!(v["2"], "2");
    }

    #[test]
    fn refuses_what_a_server_could_read_differently() {
        let twice = [0x0a, 1, b'a', 0x0a, 1, b'b'];
        assert!(
            message_strings(&frame(&twice)).is_err(),
            "field given twice"
        );
        let same_twice = [0x0a, 1, b'a', 0x0a, 1, b'a'];
        assert_eq!(
            message_strings(&frame(&same_twice)).expect("same")["1"],
            "a"
        );
        let mut two = frame(&[0x0a, 1, b'a']);
        two.extend(frame(&[0x0a, 1, b'b']));
        assert!(message_strings(&two).is_err(), "two messages");
        let mut compressed = frame(&[0x0a, 1, b'a']);
        compressed[0] = 1;
        assert_eq!(
            message_strings(&compressed).expect_err("compressed").status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert!(
            message_strings(&frame(&[0x0a, 9, b'a'])).is_err(),
            "runs past"
        );
        assert!(message_strings(&[0, 0]).is_err(), "short");
        assert!(message_strings(&frame(&[0x0b])).is_err(), "wire type 3");
    }
}
