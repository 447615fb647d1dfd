//! What a client finally gets for one request: an [`Image`] or a [`Failure`], and how a reply
//! message from a resolver becomes one of them.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use bytes::Bytes;
use imgfetch_common::digest::sha256_hex;
use imgfetch_common::info::ImageInfo;
use imgfetch_common::protocol::{header, ErrorCode, STATUS_OK};

use crate::archive::Archived;
use crate::transfer::Transfer;
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
    /// The bytes, whole or to come.
    pub body: Body,
    /// What the store reported: `size`, `last_modified` and `etag`.
    pub metadata: BTreeMap<String, String>,
    /// The associated information: place, time, device, extras, the request's meta.
    pub info: ImageInfo,
    /// What became of the archive copy.
    pub archived: Archived,
}

/// An image's bytes.
#[derive(Debug)]
pub enum Body {
    /// All of them, verified.
    Inline(Bytes),
    /// To be received chunk by chunk.
    Stream(Box<Transfer>),
}

impl Body {
    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Body::Inline(bytes) => bytes.len() as u64,
            Body::Stream(transfer) => transfer.size(),
        }
    }
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

/// Reads a resolver's inline reply, checking the bytes against its SHA-256 when it has one.
pub fn from_reply(id: &str, headers: Option<&HeaderMap>, body: Bytes) -> Outcome {
    let sent = headers.and_then(|h| h.get(header::SHA256));
    if let (Some(sent), true) = (sent, status_ok(headers)) {
        let actual = sha256_hex(&body);
        if !actual.eq_ignore_ascii_case(sent.as_str().trim()) {
            return Err(Failure::new(
                ErrorCode::Integrity,
                format!(
                    "the image arrived damaged: its SHA-256 is {actual}, the resolver sent {}",
                    sent.as_str()
                ),
            ));
        }
    }
    from_parts(id, headers, Body::Inline(body))
}

/// Whether a reply's status is `ok`.
pub fn status_ok(headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(header::STATUS))
        .is_some_and(|v| v.as_str() == STATUS_OK)
}

/// Reads an error reply's code and message.
pub fn failure_of(headers: Option<&HeaderMap>, body: &[u8]) -> Failure {
    let status = headers
        .and_then(|h| h.get(header::STATUS))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    let code = status.parse::<ErrorCode>().unwrap_or(ErrorCode::Internal);
    Failure::new(code, String::from_utf8_lossy(body).into_owned())
}

/// Builds the outcome of an answer whose bytes are `body`.
pub fn from_parts(id: &str, headers: Option<&HeaderMap>, body: Body) -> Outcome {
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    if !status_ok(headers) {
        let text = match &body {
            Body::Inline(bytes) => bytes.clone(),
            Body::Stream(_) => Bytes::new(),
        };
        return Err(failure_of(headers, &text));
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
        body,
        metadata,
        info: headers.map(ImageInfo::from_headers).unwrap_or_default(),
        archived: Archived::Disabled,
    })
}
