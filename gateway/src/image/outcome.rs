//! What a client finally gets for one request: an [`Image`] or a [`Failure`], and how a reply
//! message from a resolver becomes one of them.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use imgfetch_common::digest::{sha256_hex, Hasher};
use imgfetch_common::info::ImageInfo;
use imgfetch_common::message::{ReplyHead, Status};
use imgfetch_common::protocol::ErrorCode;

use crate::archive::Archived;
pub use crate::failure::Failure;
use crate::image::transfer::Transfer;

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
    /// To be read from the archive, frame by frame (a result replayed by id).
    Stored(Box<Stored>),
}

impl Body {
    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Body::Inline(bytes) => bytes.len() as u64,
            Body::Stream(transfer) => transfer.size(),
            Body::Stored(stored) => stored.size,
        }
    }

    /// How many parts [`next_chunk`](Body::next_chunk) yields: one for an inline body.
    pub fn chunks(&self) -> u64 {
        match self {
            Body::Inline(_) => 1,
            Body::Stream(transfer) => transfer.chunks(),
            Body::Stored(stored) => stored.chunks(),
        }
    }

    /// The most bytes in one part.
    pub fn chunk_size(&self) -> u64 {
        match self {
            Body::Inline(bytes) => bytes.len() as u64,
            Body::Stream(transfer) => transfer.chunk_size(),
            Body::Stored(_) => STORED_FRAME_BYTES,
        }
    }

    /// The next part; `None` once all were given. After an error, nothing more comes.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, Failure>> {
        match self {
            Body::Inline(bytes) if bytes.is_empty() => None,
            Body::Inline(bytes) => Some(Ok(std::mem::take(bytes))),
            Body::Stream(transfer) => transfer.next().await,
            Body::Stored(stored) => stored.next().await,
        }
    }
}

/// Bytes per part of an image read back from the archive: what the gateway holds of it at once.
pub const STORED_FRAME_BYTES: u64 = 1 << 20;

/// An image read back from the archive in parts of [`STORED_FRAME_BYTES`], whatever sizes the
/// store reads in. Its size is checked, and its SHA-256 when one was recorded: the last part is
/// only given once the image is verified, like a streamed image's.
pub struct Stored {
    size: u64,
    sha256: Option<String>,
    hasher: Hasher,
    source: BoxStream<'static, Result<Bytes, String>>,
    buffer: BytesMut,
    given: u64,
    parts: u64,
    done: bool,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("size", &self.size)
            .field("given", &self.given)
            .finish_non_exhaustive()
    }
}

impl Stored {
    /// Reads `size` bytes from `source`, checked against `sha256` when known.
    pub fn new(
        size: u64,
        sha256: Option<String>,
        source: BoxStream<'static, Result<Bytes, String>>,
    ) -> Stored {
        Stored {
            size,
            sha256,
            hasher: Hasher::new(),
            source,
            buffer: BytesMut::new(),
            given: 0,
            parts: 0,
            done: false,
        }
    }

    /// Parts in the image (one for an empty image).
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(STORED_FRAME_BYTES).max(1)
    }

    /// The next part.
    pub async fn next(&mut self) -> Option<Result<Bytes, Failure>> {
        if self.done {
            return None;
        }
        loop {
            let last = self.parts + 1 == self.chunks();
            let want = if last {
                (self.size - self.given) as usize
            } else {
                STORED_FRAME_BYTES as usize
            };
            if self.buffer.len() >= want && !last {
                let part = self.buffer.split_to(want).freeze();
                self.hasher.update(&part);
                self.given += part.len() as u64;
                self.parts += 1;
                return Some(Ok(part));
            }
            match self.source.next().await {
                Some(Ok(bytes)) => {
                    if self.given + (self.buffer.len() + bytes.len()) as u64 > self.size {
                        return Some(self.fail("the archive copy is longer than recorded"));
                    }
                    self.buffer.extend_from_slice(&bytes);
                }
                Some(Err(why)) => return Some(self.fail(&format!("reading it failed: {why}"))),
                None if self.buffer.len() != want => {
                    return Some(self.fail("the archive copy is shorter than recorded"))
                }
                None => {
                    let part = std::mem::take(&mut self.buffer).freeze();
                    self.hasher.update(&part);
                    let actual = std::mem::take(&mut self.hasher).finish();
                    if let Some(sent) = &self.sha256 {
                        if !actual.eq_ignore_ascii_case(sent) {
                            return Some(self.fail(&format!(
                                "the archive copy's SHA-256 is {actual}, {sent} was recorded"
                            )));
                        }
                    }
                    self.done = true;
                    self.given += part.len() as u64;
                    return Some(Ok(part));
                }
            }
        }
    }

    fn fail(&mut self, why: &str) -> Result<Bytes, Failure> {
        self.done = true;
        tracing::warn!(why, "archive copy of a result unreadable");
        Err(Failure::new(
            ErrorCode::ResultUnavailable,
            format!("the image's archive copy cannot be replayed: {why}; request it again"),
        ))
    }
}

/// The end of one request.
pub type Outcome = Result<Image, Failure>;

/// Reads a resolver's inline reply, checking the bytes against its SHA-256 when it has one.
pub fn from_reply(id: &str, head: ReplyHead, body: Bytes) -> Outcome {
    let sent = head
        .image
        .as_ref()
        .and_then(|image| image.sha256.as_deref());
    if let (Some(sent), true) = (sent, head.status.is_ok()) {
        let actual = sha256_hex(&body);
        if !actual.eq_ignore_ascii_case(sent) {
            return Err(Failure::new(
                ErrorCode::Integrity,
                format!(
                    "the image arrived damaged: its SHA-256 is {actual}, the resolver sent {sent}"
                ),
            ));
        }
    }
    from_head(id, head, Body::Inline(body))
}

/// An error answer's failure: its code (an `ok` status here is a broken sender's) and message.
pub fn failure_of(status: Status, body: &[u8]) -> Failure {
    let code = match status {
        Status::Error(code) => code,
        Status::Ok => ErrorCode::Internal,
    };
    Failure::new(code, String::from_utf8_lossy(body).into_owned())
}

/// Builds the outcome of an answer whose bytes are `body`.
pub fn from_head(id: &str, head: ReplyHead, body: Body) -> Outcome {
    let image = match (head.status, head.image) {
        (Status::Ok, Some(image)) => image,
        (status, _) => {
            let text = match &body {
                Body::Inline(bytes) => bytes.clone(),
                Body::Stream(_) | Body::Stored(_) => Bytes::new(),
            };
            return Err(failure_of(status, &text));
        }
    };
    let mut metadata = BTreeMap::new();
    let size = image.size.map(|size| size.to_string());
    for (key, value) in [
        ("size", size),
        ("last_modified", image.last_modified),
        ("etag", image.etag),
    ] {
        if let Some(value) = value {
            metadata.insert(key.to_owned(), value);
        }
    }
    Ok(Image {
        id: id.to_owned(),
        key: image.key,
        content_type: image.content_type,
        body,
        metadata,
        info: image.info,
        archived: Archived::Disabled,
    })
}
