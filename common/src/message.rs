//! The messages that cross NATS, as types. Each one writes its headers with `to_headers` and
//! reads them back with `from_headers`, so no other code spells a header: the resolver, the
//! gateway, the benchmark and the tests all build and read messages through these.
//!
//! - [`RequestHead`]: the headers of a request (its body is a
//!   [`FetchRequest`](crate::protocol::FetchRequest)).
//! - [`ReplyHead`]: the first message of every answer: an inline image, an error, or the head
//!   of a chunked transfer ([`Chunked`]).
//! - [`Chunk`], [`ChunkedEnd`]: the rest of a chunked transfer.
//! - [`Flow`]: credit and cancels from the receiver of a chunked transfer to its sender.
//! - [`Answer`]: any message on a callback subject, told apart.
//! - [`FetchAnswer`]: the gateway's answer on `imgfetch.fetch`.
//! - [`DeadLetter`]: what a dead letter adds to the request it copies.
//! - [`Liveness`]: a gateway's answer on its liveness subject.

use async_nats::HeaderMap;

use crate::info::ImageInfo;
use crate::protocol::{header, http_header, DeadReason, ErrorCode, FLOW_PREFIX, STATUS_OK};

/// Media type of an error's body: its message.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// Media type of an image a store's bytes were not recognised as.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// How a request went: `ok`, or one of the [`ErrorCode`]s (`Imgfetch-Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// An image follows.
    Ok,
    /// It failed; the body says why.
    Error(ErrorCode),
}

impl Status {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => STATUS_OK,
            Status::Error(code) => code.as_str(),
        }
    }

    /// Reads a status. A missing or unknown one is an [`ErrorCode::Internal`]: the sender is
    /// broken or newer, and nobody may take its message for an image.
    pub fn parse(value: Option<&str>) -> Status {
        match value.map(str::trim) {
            Some(STATUS_OK) => Status::Ok,
            Some(other) => Status::Error(other.parse().unwrap_or(ErrorCode::Internal)),
            None => Status::Error(ErrorCode::Internal),
        }
    }

    /// Whether it is `ok`.
    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }

    /// A header map with only the status: a micro protocol endpoint's answer.
    pub fn to_headers(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::STATUS, self.as_str());
        headers
    }
}

fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

fn get_owned(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    get(headers, name).map(str::to_owned)
}

fn number(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    get(headers, name).and_then(|v| v.trim().parse().ok())
}

/// `text` fit for a header value: line breaks and other control characters become spaces.
/// Stores, clients and error messages can hold them; a header value cannot.
pub fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A message that is not what its headers claim.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A header the message needs is missing.
    #[error("{what} has no {header}")]
    Missing {
        /// Which message.
        what: &'static str,
        /// The header's name.
        header: &'static str,
    },
    /// A header's value does not parse.
    #[error("{what} has a bad {header}: {value:?}")]
    Bad {
        /// Which message.
        what: &'static str,
        /// The header's name.
        header: &'static str,
        /// What it held.
        value: String,
    },
}

fn required(
    headers: Option<&HeaderMap>,
    what: &'static str,
    name: &'static str,
) -> Result<u64, MessageError> {
    let value = get(headers, name).ok_or(MessageError::Missing { what, header: name })?;
    value.trim().parse().map_err(|_| MessageError::Bad {
        what,
        header: name,
        value: value.to_owned(),
    })
}

/// The headers of a request on `imgfetch.req.<network>` or `imgfetch.gwreq.<network>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// Where the answer goes (`Imgfetch-Callback`); required, but read as sent so that a
    /// request without one can be told apart and dead-lettered.
    pub callback: Option<String>,
    /// The JetStream de-duplication id (`Nats-Msg-Id`), the request id.
    pub msg_id: Option<String>,
    /// The sender takes a chunked answer (`Imgfetch-Accept-Stream: 1`).
    pub accept_stream: bool,
    /// Unix time in milliseconds after which nobody waits (`Imgfetch-Deadline`); a value that
    /// does not parse is no deadline.
    pub deadline_ms: Option<u128>,
}

impl RequestHead {
    /// The headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(callback) = &self.callback {
            headers.insert(header::CALLBACK, callback.as_str());
        }
        if let Some(id) = &self.msg_id {
            headers.insert(header::MSG_ID, id.as_str());
        }
        if self.accept_stream {
            headers.insert(header::ACCEPT_STREAM, "1");
        }
        if let Some(deadline) = self.deadline_ms {
            headers.insert(header::DEADLINE, deadline.to_string().as_str());
        }
        headers
    }

    /// Reads the headers; what is missing stays `None`.
    pub fn from_headers(headers: Option<&HeaderMap>) -> RequestHead {
        RequestHead {
            callback: get_owned(headers, header::CALLBACK),
            msg_id: get_owned(headers, header::MSG_ID),
            accept_stream: get(headers, header::ACCEPT_STREAM).is_some_and(|v| v.trim() == "1"),
            deadline_ms: get(headers, header::DEADLINE).and_then(|v| v.trim().parse().ok()),
        }
    }
}

/// What an `ok` answer says of its image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageHead {
    /// The key that was read (`Imgfetch-Key`).
    pub key: String,
    /// The sniffed media type (`Content-Type`).
    pub content_type: String,
    /// Bytes of the image (`Imgfetch-Size`).
    pub size: Option<u64>,
    /// Last modification time the store reported, RFC 3339 (`Imgfetch-Last-Modified`).
    pub last_modified: Option<String>,
    /// Entity tag the store reported (`Imgfetch-Etag`).
    pub etag: Option<String>,
    /// SHA-256 of the bytes, on an inline answer (`Imgfetch-Sha256`); a chunked one carries it
    /// on its [`ChunkedEnd`].
    pub sha256: Option<String>,
    /// Where, when and by what it was taken, and the request's `meta`.
    pub info: ImageInfo,
}

/// The first message of an answer on a callback subject: an inline image (the body is the
/// image), an error (the body is its message), or the head of a chunked transfer (no body).
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyHead {
    /// The request id (`Imgfetch-Id`); unknown when the request could not be read.
    pub id: Option<String>,
    /// `ok` or the error.
    pub status: Status,
    /// The network that answered (`Imgfetch-Network`).
    pub network: Option<String>,
    /// The resolver instance that answered (`Imgfetch-Resolver`).
    pub resolver: Option<String>,
    /// The image, on an `ok` answer.
    pub image: Option<ImageHead>,
    /// How the image follows, on the head of a chunked transfer.
    pub chunked: Option<Chunked>,
}

impl ReplyHead {
    /// An error answer's head; its body is the message.
    pub fn error(id: Option<&str>, code: ErrorCode) -> ReplyHead {
        ReplyHead {
            id: id.map(str::to_owned),
            status: Status::Error(code),
            network: None,
            resolver: None,
            image: None,
            chunked: None,
        }
    }

    /// An `ok` answer's head.
    pub fn ok(id: &str, image: ImageHead) -> ReplyHead {
        ReplyHead {
            id: Some(id.to_owned()),
            status: Status::Ok,
            network: None,
            resolver: None,
            image: Some(image),
            chunked: None,
        }
    }

    /// Names who answered.
    pub fn from_resolver(mut self, network: &str, resolver: &str) -> ReplyHead {
        self.network = Some(network.to_owned());
        self.resolver = Some(resolver.to_owned());
        self
    }

    /// The headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(id) = &self.id {
            headers.insert(header::ID, id.as_str());
        }
        headers.insert(header::STATUS, self.status.as_str());
        if let Some(network) = &self.network {
            headers.insert(header::NETWORK, network.as_str());
        }
        if let Some(resolver) = &self.resolver {
            headers.insert(header::RESOLVER, resolver.as_str());
        }
        match (&self.status, &self.image) {
            (Status::Ok, Some(image)) => {
                // The info's network is the answering network's when the reply names one.
                image.info.write_headers(&mut headers);
                if let Some(network) = &self.network {
                    headers.insert(header::NETWORK, network.as_str());
                }
                headers.insert(header::CONTENT_TYPE, image.content_type.as_str());
                headers.insert(header::KEY, header_safe(&image.key).as_str());
                if let Some(size) = image.size {
                    headers.insert(header::SIZE, size.to_string().as_str());
                }
                if let Some(v) = &image.last_modified {
                    headers.insert(header::LAST_MODIFIED, header_safe(v).as_str());
                }
                if let Some(v) = &image.etag {
                    headers.insert(header::ETAG, header_safe(v).as_str());
                }
                // A chunked transfer's SHA-256 comes on its end: on a head it would make the
                // head an end.
                if let (Some(v), None) = (&image.sha256, &self.chunked) {
                    headers.insert(header::SHA256, v.as_str());
                }
            }
            (Status::Error(_), _) => headers.insert(header::CONTENT_TYPE, TEXT_PLAIN),
            (Status::Ok, None) => {}
        }
        if let Some(chunked) = &self.chunked {
            headers.insert(header::FLOW, chunked.flow.as_str());
            headers.insert(header::CHUNK_SIZE, chunked.chunk_size.to_string().as_str());
            headers.insert(header::CHUNKS, chunked.chunks.to_string().as_str());
        }
        headers
    }

    /// Reads the headers. The chunked fields are read only when a flow subject is named, and
    /// must then be whole.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<ReplyHead, MessageError> {
        let status = Status::parse(get(headers, header::STATUS));
        let image = match (status, headers) {
            (Status::Ok, Some(h)) => Some(ImageHead {
                key: get_owned(headers, header::KEY).unwrap_or_default(),
                content_type: get_owned(headers, header::CONTENT_TYPE)
                    .unwrap_or_else(|| OCTET_STREAM.to_owned()),
                size: number(headers, header::SIZE),
                last_modified: get_owned(headers, header::LAST_MODIFIED),
                etag: get_owned(headers, header::ETAG),
                sha256: get(headers, header::SHA256).map(|v| v.trim().to_owned()),
                info: ImageInfo::from_headers(h),
            }),
            _ => None,
        };
        let chunked = match get(headers, header::FLOW) {
            Some(flow) => Some(Chunked {
                flow: flow.trim().to_owned(),
                chunk_size: required(headers, "the stream's head", header::CHUNK_SIZE)?,
                chunks: required(headers, "the stream's head", header::CHUNKS)?,
            }),
            None => None,
        };
        Ok(ReplyHead {
            id: get_owned(headers, header::ID),
            status,
            network: get_owned(headers, header::NETWORK),
            resolver: get_owned(headers, header::RESOLVER),
            image,
            chunked,
        })
    }
}

/// How the image of a chunked transfer follows its head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunked {
    /// The sender's flow subject (`Imgfetch-Flow`): credit and cancels go there, and every
    /// message of the transfer names it.
    pub flow: String,
    /// Bytes per chunk; the last may be shorter (`Imgfetch-Chunk-Size`).
    pub chunk_size: u64,
    /// How many chunks follow (`Imgfetch-Chunks`).
    pub chunks: u64,
}

impl Chunked {
    /// Whether the flow subject is one a resolver listens on (`imgfetch.flow.<token>`, or
    /// `imgfetch.flow.<zone>.<token>` from a resolver of a zone): a head that names any other
    /// subject would have its receiver publish there.
    pub fn flow_is_valid(&self) -> bool {
        let plain = |token: &str| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        };
        self.flow
            .strip_prefix(FLOW_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| match rest.split_once('.') {
                Some((zone, token)) => plain(zone) && plain(token),
                None => plain(rest),
            })
    }
}

/// One chunk of a chunked transfer; the body is its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The request id.
    pub id: String,
    /// The transfer's flow subject.
    pub flow: String,
    /// The chunk's number, from 1 (`Imgfetch-Seq`).
    pub seq: u64,
}

impl Chunk {
    /// The headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = transfer_headers(&self.id, &self.flow);
        headers.insert(header::SEQ, self.seq.to_string().as_str());
        headers
    }
}

/// The last message of a chunked transfer: `ok` with the SHA-256 of all chunks, or the error
/// that stopped it (its body is the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedEnd {
    /// The request id.
    pub id: String,
    /// The transfer's flow subject.
    pub flow: String,
    /// `ok`, or why it stopped.
    pub status: Status,
    /// SHA-256 of the whole image, on an `ok` end.
    pub sha256: Option<String>,
}

impl ChunkedEnd {
    /// The headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = transfer_headers(&self.id, &self.flow);
        headers.insert(header::STATUS, self.status.as_str());
        if let Some(sha256) = &self.sha256 {
            headers.insert(header::SHA256, sha256.as_str());
        }
        if !self.status.is_ok() {
            headers.insert(header::CONTENT_TYPE, TEXT_PLAIN);
        }
        headers
    }
}

fn transfer_headers(id: &str, flow: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ID, id);
    headers.insert(header::FLOW, flow);
    headers
}

/// Any message on a callback subject.
#[derive(Debug)]
pub enum Answer {
    /// The first message of an answer: inline, error, or the head of a chunked transfer.
    Head(Box<ReplyHead>),
    /// A chunk, or one whose number does not parse (`Err` holds it as sent).
    Chunk {
        /// The transfer's flow subject.
        flow: String,
        /// The chunk's number.
        seq: Result<u64, String>,
    },
    /// The end of a chunked transfer.
    End(ChunkedEnd),
    /// A head whose chunked fields are broken: what could be read of it, and what is wrong.
    Malformed {
        /// The request id, if sent.
        id: Option<String>,
        /// The flow subject it names.
        flow: String,
        /// What is wrong.
        error: MessageError,
    },
}

impl Answer {
    /// Tells the message apart by its headers: a flow subject with a number is a chunk, with a
    /// SHA-256 or an error status the end, and anything else is a head.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Answer {
        let head = |headers| match ReplyHead::from_headers(headers) {
            Ok(head) => Answer::Head(Box::new(head)),
            Err(error) => Answer::Malformed {
                id: get_owned(headers, header::ID),
                flow: get(headers, header::FLOW)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                error,
            },
        };
        let Some(flow) = get(headers, header::FLOW).map(str::trim) else {
            return head(headers);
        };
        if let Some(seq) = get(headers, header::SEQ) {
            return Answer::Chunk {
                flow: flow.to_owned(),
                seq: seq.trim().parse().map_err(|_| seq.to_owned()),
            };
        }
        let status = Status::parse(get(headers, header::STATUS));
        let sha256 = get(headers, header::SHA256);
        if sha256.is_some() || !status.is_ok() {
            return Answer::End(ChunkedEnd {
                id: get_owned(headers, header::ID).unwrap_or_default(),
                flow: flow.to_owned(),
                status,
                sha256: sha256.map(|v| v.trim().to_owned()),
            });
        }
        head(headers)
    }
}

/// What the receiver of a chunked transfer tells its sender, on the transfer's flow subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Chunks up to and including this number may be sent (`Imgfetch-Credit`). `0` only says
    /// that the receiver still waits.
    Credit(u64),
    /// Stop sending; the text says why (`Imgfetch-Cancel`).
    Cancel(String),
}

impl Flow {
    /// The headers (the body is empty).
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self {
            Flow::Credit(n) => headers.insert(header::CREDIT, n.to_string().as_str()),
            Flow::Cancel(why) => headers.insert(header::CANCEL, header_safe(why).as_str()),
        }
        headers
    }

    /// Reads a flow message; `None` for one that is neither.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Option<Flow> {
        if let Some(why) = get(headers, header::CANCEL) {
            return Some(Flow::Cancel(why.to_owned()));
        }
        number(headers, header::CREDIT).map(Flow::Credit)
    }
}

/// What a dead letter adds to the headers of the request it copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why the request got no answer.
    pub reason: DeadReason,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// Its sequence in the request stream.
    pub stream_seq: u64,
    /// The server's advisory, as compact JSON, for [`DeadReason::MaxDeliveries`].
    pub advisory: Option<String>,
}

impl DeadLetter {
    /// The copied request's headers with the dead-letter headers added. `Nats-*` headers are
    /// left out (JetStream reads ids, expectations and TTLs from them on publish, and the copy
    /// must not inherit the original's); the copy's de-duplication id is
    /// `dead-<requests stream>-<sequence>`.
    pub fn to_headers(&self, requests_stream: &str, request: Option<&HeaderMap>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, values) in request.into_iter().flat_map(HeaderMap::iter) {
            let reserved = AsRef::<str>::as_ref(name)
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case("nats-"));
            if !reserved {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let seq = self.stream_seq;
        headers.insert(
            header::MSG_ID,
            format!("dead-{requests_stream}-{seq}").as_str(),
        );
        headers.insert(header::DEAD_REASON, self.reason.as_str());
        headers.insert(
            header::DEAD_DELIVERIES,
            self.deliveries.to_string().as_str(),
        );
        headers.insert(header::DEAD_STREAM_SEQ, seq.to_string().as_str());
        if let Some(advisory) = &self.advisory {
            headers.insert(header::DEAD_ADVISORY, advisory.as_str());
        }
        headers
    }

    /// Reads what a dead letter (a message of the dead-letter stream) adds to its request;
    /// the request's own headers are read with [`RequestHead::from_headers`].
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<DeadLetter, MessageError> {
        const WHAT: &str = "dead letter";
        let reason = get(headers, header::DEAD_REASON).ok_or(MessageError::Missing {
            what: WHAT,
            header: header::DEAD_REASON,
        })?;
        let reason = DeadReason::parse(reason).ok_or_else(|| MessageError::Bad {
            what: WHAT,
            header: header::DEAD_REASON,
            value: reason.to_owned(),
        })?;
        Ok(DeadLetter {
            reason,
            deliveries: required(headers, WHAT, header::DEAD_DELIVERIES)?,
            stream_seq: required(headers, WHAT, header::DEAD_STREAM_SEQ)?,
            advisory: get_owned(headers, header::DEAD_ADVISORY),
        })
    }
}

/// The gateway's answer on `imgfetch.fetch`: a resolver's inline answer, plus what became of
/// the archive copy.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchAnswer {
    /// As a resolver's inline answer; the error's message travels as the micro protocol's
    /// error.
    pub head: ReplyHead,
    /// Where the archive copy is written (`imgfetch-archived-as`).
    pub archived_as: Option<String>,
    /// Why there is no archive copy (`imgfetch-archive-error`).
    pub archive_error: Option<String>,
}

impl FetchAnswer {
    /// The headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = self.head.to_headers();
        if let Some(path) = &self.archived_as {
            headers.insert(http_header::ARCHIVED_AS, header_safe(path).as_str());
        }
        if let Some(why) = &self.archive_error {
            headers.insert(http_header::ARCHIVE_ERROR, header_safe(why).as_str());
        }
        headers
    }

    /// Reads an answer.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<FetchAnswer, MessageError> {
        Ok(FetchAnswer {
            head: ReplyHead::from_headers(headers)?,
            archived_as: get_owned(headers, http_header::ARCHIVED_AS),
            archive_error: get_owned(headers, http_header::ARCHIVE_ERROR),
        })
    }
}

/// A gateway's answer on its liveness subject: the random id of the process answering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// `Imgfetch-Incarnation`.
    pub incarnation: String,
}

impl Liveness {
    /// The headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::INCARNATION, self.incarnation.as_str());
        headers
    }

    /// Reads an answer; `None` from a gateway too old to say.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Option<Liveness> {
        get_owned(headers, header::INCARNATION).map(|incarnation| Liveness { incarnation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageHead {
        let mut info = ImageInfo {
            network: "cams".into(),
            device: Some("cam 7".into()),
            ..ImageInfo::default()
        };
        info.meta.insert("who".into(), "me".into());
        ImageHead {
            key: "a/b.jpg".into(),
            content_type: "image/jpeg".into(),
            size: Some(12),
            last_modified: Some("2026-01-01T00:00:00Z".into()),
            etag: Some("\"e\"".into()),
            sha256: Some("ab".repeat(32)),
            info,
        }
    }

    #[test]
    fn requests_round_trip() {
        let head = RequestHead {
            callback: Some("imgfetch.reply.gw.t".into()),
            msg_id: Some("id-1".into()),
            accept_stream: true,
            deadline_ms: Some(1_700_000_000_000),
        };
        assert_eq!(RequestHead::from_headers(Some(&head.to_headers())), head);
        assert_eq!(RequestHead::from_headers(None), RequestHead::default());
    }

    #[test]
    fn replies_round_trip_and_errors_say_their_code() {
        let ok = ReplyHead::ok("id-1", image()).from_resolver("cams", "r1");
        let headers = ok.to_headers();
        assert_eq!(ReplyHead::from_headers(Some(&headers)).unwrap(), ok);
        assert_eq!(headers.get(header::STATUS).unwrap().as_str(), "ok");

        let err = ReplyHead::error(Some("id-2"), ErrorCode::NotFound);
        let headers = err.to_headers();
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap().as_str(),
            TEXT_PLAIN
        );
        let back = ReplyHead::from_headers(Some(&headers)).unwrap();
        assert_eq!(back.status, Status::Error(ErrorCode::NotFound));
        assert_eq!(back.image, None);
    }

    #[test]
    fn a_missing_or_unknown_status_is_internal() {
        assert_eq!(Status::parse(None), Status::Error(ErrorCode::Internal));
        assert_eq!(
            Status::parse(Some("whatever")),
            Status::Error(ErrorCode::Internal)
        );
        assert_eq!(Status::parse(Some(" ok ")), Status::Ok);
    }

    #[test]
    fn chunked_transfers_are_told_apart() {
        let mut head = ReplyHead::ok(
            "id",
            ImageHead {
                sha256: None,
                ..image()
            },
        )
        .from_resolver("cams", "r1");
        head.chunked = Some(Chunked {
            flow: "imgfetch.flow.abc".into(),
            chunk_size: 4,
            chunks: 3,
        });
        let headers = head.to_headers();
        match Answer::from_headers(Some(&headers)) {
            Answer::Head(back) => assert_eq!(*back, head),
            other => panic!("{other:?}"),
        }
        let chunk = Chunk {
            id: "id".into(),
            flow: "imgfetch.flow.abc".into(),
            seq: 2,
        };
        match Answer::from_headers(Some(&chunk.to_headers())) {
            Answer::Chunk { flow, seq } => {
                assert_eq!((flow.as_str(), seq), (chunk.flow.as_str(), Ok(2)))
            }
            other => panic!("{other:?}"),
        }
        for end in [
            ChunkedEnd {
                id: "id".into(),
                flow: "imgfetch.flow.abc".into(),
                status: Status::Ok,
                sha256: Some("cd".repeat(32)),
            },
            ChunkedEnd {
                id: "id".into(),
                flow: "imgfetch.flow.abc".into(),
                status: Status::Error(ErrorCode::StoreUnavailable),
                sha256: None,
            },
        ] {
            match Answer::from_headers(Some(&end.to_headers())) {
                Answer::End(back) => assert_eq!(back, end),
                other => panic!("{other:?}"),
            }
        }
        let mut broken = headers.clone();
        broken.insert(header::CHUNKS, "many");
        assert!(matches!(
            Answer::from_headers(Some(&broken)),
            Answer::Malformed {
                error: MessageError::Bad { .. },
                ..
            }
        ));
    }

    #[test]
    fn flow_subjects_are_checked() {
        let mut chunked = Chunked {
            flow: "imgfetch.flow.a1_b-2".into(),
            chunk_size: 1,
            chunks: 1,
        };
        assert!(chunked.flow_is_valid());
        // A zone's resolver names its zone first.
        chunked.flow = "imgfetch.flow.plant-7.a1_b-2".into();
        assert!(chunked.flow_is_valid());
        for bad in [
            "imgfetch.flow.",
            "imgfetch.flow.a.",
            "imgfetch.flow..b",
            "imgfetch.flow.a.b.c",
            "imgfetch.flow.a.*",
            "imgfetch.flow.>",
            "_INBOX.x",
            "imgfetch.flowx",
        ] {
            chunked.flow = bad.into();
            assert!(!chunked.flow_is_valid(), "{bad}");
        }
    }

    #[test]
    fn flow_messages_round_trip_and_cancels_stay_on_one_line() {
        for flow in [Flow::Credit(7), Flow::Cancel("gone away".into())] {
            assert_eq!(Flow::from_headers(Some(&flow.to_headers())), Some(flow));
        }
        let sent = Flow::Cancel("a\r\nb".into()).to_headers();
        assert_eq!(sent.get(header::CANCEL).unwrap().as_str(), "a  b");
        assert_eq!(Flow::from_headers(Some(&HeaderMap::new())), None);
    }

    #[test]
    fn dead_letters_replace_the_request_id() {
        let request = RequestHead {
            callback: Some("me.x".into()),
            msg_id: Some("id-1".into()),
            ..RequestHead::default()
        }
        .to_headers();
        let letter = DeadLetter {
            reason: DeadReason::NoCallback,
            deliveries: 3,
            stream_seq: 42,
            advisory: None,
        }
        .to_headers("IMGFETCH", Some(&request));
        assert_eq!(
            letter.get(header::MSG_ID).unwrap().as_str(),
            "dead-IMGFETCH-42"
        );
        assert_eq!(letter.get(header::CALLBACK).unwrap().as_str(), "me.x");
        assert_eq!(
            letter.get(header::DEAD_REASON).unwrap().as_str(),
            "no_callback"
        );
    }

    #[test]
    fn dead_letters_round_trip_and_bad_ones_say_why() {
        for reason in [
            DeadReason::MaxDeliveries,
            DeadReason::NoCallback,
            DeadReason::BadCallback,
            DeadReason::CallbackNotAllowed,
        ] {
            let letter = DeadLetter {
                reason,
                deliveries: 5,
                stream_seq: 9,
                advisory: (reason == DeadReason::MaxDeliveries).then(|| "{}".to_owned()),
            };
            let headers = letter.to_headers("IMGFETCH", None);
            assert_eq!(DeadLetter::from_headers(Some(&headers)), Ok(letter));
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::DEAD_REASON, "bored");
        let err = DeadLetter::from_headers(Some(&headers)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dead letter has a bad Imgfetch-Dead-Reason: \"bored\""
        );
        headers.insert(header::DEAD_REASON, "no_callback");
        let err = DeadLetter::from_headers(Some(&headers)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dead letter has no Imgfetch-Dead-Deliveries"
        );
    }
}
