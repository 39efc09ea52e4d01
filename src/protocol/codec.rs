//! The two serializers: canonical protobuf JSON and binary protobuf.

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// How messages are put on the wire (`protocol.serializer`).
///
/// `json` is the canonical protobuf JSON mapping (enum names, base64 bytes, int64 as strings,
/// defaults omitted, unknown fields rejected); `proto` is binary protobuf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Serializer {
    #[default]
    Json,
    Proto,
}

/// A frame that is not a valid message for the serializer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid protobuf JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid binary protobuf: {0}")]
    Proto(#[from] prost::DecodeError),
}

impl Serializer {
    /// Decodes one message. Both serializers accept any byte slice; `json` input must be UTF-8.
    pub fn decode<M>(self, bytes: &[u8]) -> Result<M, DecodeError>
    where
        M: prost::Message + Default + DeserializeOwned,
    {
        match self {
            Self::Json => Ok(serde_json::from_slice(bytes)?),
            Self::Proto => Ok(M::decode(bytes)?),
        }
    }

    /// Encodes one message.
    pub fn encode<M>(self, msg: &M) -> Bytes
    where
        M: prost::Message + Serialize,
    {
        match self {
            // pbjson's impls only write strings, numbers and lists: serde_json cannot fail.
            Self::Json => serde_json::to_vec(msg)
                .expect("protobuf JSON encoding of a generated message cannot fail")
                .into(),
            Self::Proto => msg.encode_to_vec().into(),
        }
    }

    /// The name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Proto => "proto",
        }
    }
}

#[cfg(test)]
mod tests {
    //! Byte-exact fixtures from `vectors/protocol.json` (copied into `tests/fixtures/`), produced
    //! by Google's reference implementation.

    use super::*;
    use crate::protocol::pb;
    use serde_json::Value;

    fn vectors() -> Value {
        let text = include_str!("../../tests/fixtures/protocol.json");
        serde_json::from_str(text).expect("fixture is JSON")
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Decodes `json` and `binary_hex` of one vector, checks they agree, and that our encodings
    /// round-trip to the same message (JSON compared as values: field order is free).
    fn check<M>(v: &Value)
    where
        M: prost::Message + Default + DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
    {
        let name = v["name"].as_str().unwrap_or("?");
        let json = v["json"].as_str().expect("json");
        let bin = hex(v["binary_hex"].as_str().expect("binary_hex"));
        let from_json: M = Serializer::Json.decode(json.as_bytes()).expect(name);
        let from_bin: M = Serializer::Proto.decode(&bin).expect(name);
        assert_eq!(from_json, from_bin, "{name}: json and binary disagree");
        assert_eq!(Serializer::Proto.encode(&from_json).as_ref(), bin.as_slice(), "{name}");
        let ours: Value = serde_json::from_slice(&Serializer::Json.encode(&from_bin)).expect(name);
        let theirs: Value = serde_json::from_str(json).expect(name);
        assert_eq!(ours, theirs, "{name}: JSON encoding differs");
    }

    #[test]
    fn encode_vectors_match_reference_implementation() {
        let vectors = vectors();
        let list = vectors["encode"].as_array().expect("encode list");
        assert_eq!(list.len(), 13);
        for v in list {
            match v["type"].as_str() {
                Some("gatewayapi.v1.Message") => check::<pb::Message>(v),
                Some("gatewayapi.v1.OnReceiveResponse") => check::<pb::OnReceiveResponse>(v),
                Some("gatewayapi.v1.NodeList") => check::<pb::NodeList>(v),
                Some("gatewayapi.v1.PushMessage") => check::<pb::PushMessage>(v),
                other => panic!("unexpected type {other:?}"),
            }
        }
    }

    #[test]
    fn decode_inputs_are_accepted_or_rejected_like_the_reference() {
        let vectors = vectors();
        let inputs = vectors["decode_inputs"].as_array().expect("decode_inputs");
        assert_eq!(inputs.len(), 6);
        for v in inputs {
            let input = v["json"].as_str().expect("json");
            let got = Serializer::Json.decode::<pb::Message>(input.as_bytes());
            if v["error"].as_bool() == Some(true) {
                assert!(got.is_err(), "{input} must be rejected");
            } else {
                let means = v["means"].as_str().expect("means");
                let want: pb::Message = Serializer::Json.decode(means.as_bytes()).expect(means);
                assert_eq!(got.expect(input), want, "{input}");
            }
        }
    }

    #[test]
    fn default_values_are_omitted_and_int64_are_strings() {
        let empty = Serializer::Json.encode(&pb::OnReceiveResponse::default());
        assert_eq!(empty.as_ref(), b"{}");
        let r = pb::OnReceiveResponse { msg_id: 7, biz_id: 0 };
        assert_eq!(Serializer::Json.encode(&r).as_ref(), br#"{"msgId":"7"}"#);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [&b""[..], b"{", b"[]", b"null", b"\xff\xfe", b"{\"cmd\":99999999999}"] {
            assert!(Serializer::Json.decode::<pb::Message>(input).is_err(), "{input:?}");
        }
        assert!(Serializer::Proto.decode::<pb::Message>(b"\x0a\xff\xff").is_err());
    }
}
