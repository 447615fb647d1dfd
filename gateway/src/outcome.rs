//! What a client finally gets for one request: an [`Image`] or a [`Failure`], and how a reply
//! message from a resolver becomes one of them.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use bytes::Bytes;
use imgfetch_common::info::ImageInfo;
use imgfetch_common::protocol::{header, ErrorCode, STATUS_OK};

use crate::archive::Archived;
use serde::Serialize;

/// A fetched image with its metadata.
#[derive(Debug)]
pub struct Image {
    /// The request id.
    pub id: String,
    /// The key that was read.
    pub key: String,
    /// Media type sniffed by the resolver.
    pub content_type: String,
    /// The bytes.
    pub bytes: Bytes,
    /// What the store reported: `size`, `last_modified` and `etag`.
    pub metadata: BTreeMap<String, String>,
    /// The associated information: place, time, device, extras, the request's meta.
    pub info: ImageInfo,
    /// What became of the archive copy.
    pub archived: Archived,
}

/// A terminal error, with a code the client can branch on and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Failure {
    /// The code.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl Failure {
    /// Builds a failure.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The end of one request.
pub type Outcome = Result<Image, Failure>;

/// Reads a resolver's reply.
pub fn from_reply(id: &str, headers: Option<&HeaderMap>, body: Bytes) -> Outcome {
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let status = get(header::STATUS).unwrap_or_default();
    if status != STATUS_OK {
        let code = status.parse::<ErrorCode>().unwrap_or(ErrorCode::Internal);
        let message = String::from_utf8_lossy(&body).into_owned();
        return Err(Failure::new(code, message));
    }
    let mut metadata = BTreeMap::new();
    for (name, key) in [
        (header::SIZE, "size"),
        (header::LAST_MODIFIED, "last_modified"),
        (header::ETAG, "etag"),
    ] {
        if let Some(v) = get(name) {
            metadata.insert(key.to_owned(), v);
        }
    }
    Ok(Image {
        id: id.to_owned(),
        key: get(header::KEY).unwrap_or_default(),
        content_type: get(header::CONTENT_TYPE)
            .unwrap_or_else(|| "application/octet-stream".into()),
        bytes: body,
        metadata,
        info: headers.map(ImageInfo::from_headers).unwrap_or_default(),
        archived: Archived::Disabled,
    })
}
