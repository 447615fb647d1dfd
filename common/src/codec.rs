//! Request bodies on the wire: msgpack from the gateway, JSON from people with the NATS CLI.

use bytes::Bytes;

use crate::protocol::FetchRequest;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body looked like JSON but was not a valid request.
    #[error("malformed JSON request: {0}")]
    Json(#[from] serde_json::Error),
    /// The body was not JSON and not a valid msgpack request.
    #[error("malformed msgpack request: {0}")]
    Msgpack(#[from] rmp_serde::decode::Error),
    /// The body was empty.
    #[error("empty request body")]
    Empty,
}

/// Encodes a request as msgpack with named fields, so that any msgpack reader sees field names.
pub fn encode(request: &FetchRequest) -> Bytes {
    // Serialising a struct of strings and a string map into a Vec cannot fail.
    Bytes::from(rmp_serde::to_vec_named(request).expect("FetchRequest always serialises"))
}

/// Decodes a request body. A body whose first non-blank byte is `{` is JSON; anything else is
/// msgpack. (`{` is a positive fixint in msgpack, never the start of a map.)
pub fn decode(body: &[u8]) -> Result<FetchRequest, DecodeError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(DecodeError::Empty),
        Some(b'{') => Ok(serde_json::from_slice(body)?),
        Some(_) => Ok(rmp_serde::from_slice(body)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FetchRequest {
        FetchRequest {
            id: "r1".into(),
            network: Some("cams".into()),
            key: "a/b.jpg".into(),
            meta: [("who".to_string(), "me".to_string())].into(),
        }
    }

    #[test]
    fn msgpack_round_trips() {
        let req = sample();
        assert_eq!(decode(&encode(&req)).unwrap(), req);
    }

    #[test]
    fn json_is_accepted_with_or_without_optional_fields() {
        let req = decode(br#" {"id":"r1","network":"cams","key":"a/b.jpg","meta":{"who":"me"}}"#)
            .unwrap();
        assert_eq!(req, sample());
        let bare = decode(br#"{"id":"r2","key":"x.png"}"#).unwrap();
        assert_eq!(bare.network, None);
        assert!(bare.meta.is_empty());
    }

    #[test]
    fn garbage_and_typos_are_errors() {
        assert!(matches!(decode(b""), Err(DecodeError::Empty)));
        assert!(matches!(decode(b"{not json"), Err(DecodeError::Json(_))));
        assert!(matches!(
            decode(br#"{"id":"r","kye":"x"}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(decode(b"\xc1\xc1"), Err(DecodeError::Msgpack(_))));
    }
}
