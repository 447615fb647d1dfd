//! The websocket protocol's frames (`/v1/ws`), defined once for the gateway and for any Rust
//! client: JSON text frames from the client, JSON text frames to it, each image's bytes in the
//! binary frames its `image` frame announces. `docs/API.md#websocket-v1ws` describes the exchange.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::info::ImageInfo;
use crate::protocol::ErrorCode;

/// A frame from the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Fetch one image.
    Fetch {
        /// Request id; the gateway makes one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Network tag.
        network: String,
        /// Image key.
        key: String,
        /// Carried through to the answer.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        meta: BTreeMap<String, String>,
    },
    /// Replay the answer to an earlier request, by id, from any gateway: answered like a fetch
    /// (an `image` frame and its binary frames, or an `error` frame), without `accepted`.
    Result {
        /// The earlier request's id.
        id: String,
    },
}

/// A JSON frame to the client. The gateway writes it from borrowed values; a client reads it
/// into owned ones (`ServerFrame<'static>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// A frame lives only from its making to its JSON text: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ServerFrame<'a> {
    /// JetStream stored the request.
    Accepted {
        /// Request id.
        id: Cow<'a, str>,
    },
    /// The image follows in the next (binary) frame.
    Image {
        /// Request id.
        id: Cow<'a, str>,
        /// Network tag.
        network: Cow<'a, str>,
        /// Image key.
        key: Cow<'a, str>,
        /// Sniffed media type.
        content_type: Cow<'a, str>,
        /// Bytes of the image.
        size: u64,
        /// Binary frames that follow.
        frames: u64,
        /// Most bytes in one binary frame.
        frame_bytes: u64,
        /// What the store reported.
        metadata: Cow<'a, BTreeMap<String, String>>,
        /// The request's own `meta`.
        meta: Cow<'a, BTreeMap<String, String>>,
        /// Where and when it was taken, and by what.
        info: Cow<'a, ImageInfo>,
        /// Where the archive copy is being written.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        archived_as: Option<Cow<'a, str>>,
        /// Why there will be no archive copy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        archive_error: Option<Cow<'a, str>>,
    },
    /// The archive write announced in an `image` frame failed afterwards.
    ArchiveFailed {
        /// Request id.
        id: Cow<'a, str>,
        /// The path that was not written.
        archived_as: Cow<'a, str>,
        /// Why.
        message: Cow<'a, str>,
    },
    /// The request ended in an error.
    Error {
        /// Request id, when one is known.
        id: Option<Cow<'a, str>>,
        /// Error code.
        code: ErrorCode,
        /// What happened.
        message: Cow<'a, str>,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_both_ways() {
        let fetch = ClientFrame::Fetch {
            id: Some("a1".into()),
            network: "cams".into(),
            key: "x.jpg".into(),
            meta: BTreeMap::from([("k".into(), "v".into())]),
        };
        let text = serde_json::to_string(&fetch).unwrap();
        assert_eq!(serde_json::from_str::<ClientFrame>(&text).unwrap(), fetch);
        let bare: ClientFrame =
            serde_json::from_str(r#"{"type":"fetch","network":"n","key":"k"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"type":"fetch","network":"n","key":"k"}"#
        );

        let info = ImageInfo::default();
        let meta = BTreeMap::new();
        let image = ServerFrame::Image {
            id: "a1".into(),
            network: "cams".into(),
            key: "x \"quoted\".jpg".into(),
            content_type: "image/jpeg".into(),
            size: 3,
            frames: 1,
            frame_bytes: 3,
            metadata: Cow::Borrowed(&meta),
            meta: Cow::Borrowed(&meta),
            info: Cow::Borrowed(&info),
            archived_as: None,
            archive_error: Some("disk full".into()),
        };
        let back: ServerFrame<'static> = serde_json::from_str(&image.to_json()).unwrap();
        assert_eq!(back, image);
        let error = ServerFrame::Error {
            id: None,
            code: ErrorCode::NotFound,
            message: "gone".into(),
        };
        assert_eq!(
            serde_json::from_str::<ServerFrame<'static>>(&error.to_json()).unwrap(),
            error
        );
    }
}
