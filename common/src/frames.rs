//! The websocket protocol's frames (`/v1/ws`), defined once for the gateway and for any Rust
//! client: JSON text frames from the client, JSON text frames to it, each image's bytes in the
//! binary frames its `image` frame announces. `docs/PROTOCOL.md` describes the exchange.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::info::ImageInfo;
use crate::protocol::ErrorCode;

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Fetch one image.
    Fetch {
        /// Request id; the gateway makes one when absent.
        id: Option<String>,
        /// Network tag.
        network: String,
        /// Image key.
        key: String,
        /// Carried through to the answer.
        #[serde(default)]
        meta: BTreeMap<String, String>,
    },
    /// Replay the answer to an earlier request, by id, from any gateway: answered like a fetch
    /// (an `image` frame and its binary frames, or an `error` frame), without `accepted`.
    Result {
        /// The earlier request's id.
        id: String,
    },
}

/// A JSON frame to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// JetStream stored the request.
    Accepted {
        /// Request id.
        id: &'a str,
    },
    /// The image follows in the next (binary) frame.
    Image {
        /// Request id.
        id: &'a str,
        /// Network tag.
        network: &'a str,
        /// Image key.
        key: &'a str,
        /// Sniffed media type.
        content_type: &'a str,
        /// Bytes of the image.
        size: u64,
        /// Binary frames that follow.
        frames: u64,
        /// Most bytes in one binary frame.
        frame_bytes: u64,
        /// What the store reported.
        metadata: &'a BTreeMap<String, String>,
        /// The request's own `meta`.
        meta: &'a BTreeMap<String, String>,
        /// Where and when it was taken, and by what.
        info: &'a ImageInfo,
        /// Where the archive copy is being written.
        #[serde(skip_serializing_if = "Option::is_none")]
        archived_as: Option<&'a str>,
        /// Why there will be no archive copy.
        #[serde(skip_serializing_if = "Option::is_none")]
        archive_error: Option<&'a str>,
    },
    /// The archive write announced in an `image` frame failed afterwards.
    ArchiveFailed {
        /// Request id.
        id: &'a str,
        /// The path that was not written.
        archived_as: &'a str,
        /// Why.
        message: &'a str,
    },
    /// The request ended in an error.
    Error {
        /// Request id, when one is known.
        id: Option<&'a str>,
        /// Error code.
        code: ErrorCode,
        /// What happened.
        message: &'a str,
    },
}
