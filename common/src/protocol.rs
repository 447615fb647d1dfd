//! Subjects, headers, error codes and the request body: the whole wire contract.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Default name of the JetStream stream that holds pending requests.
pub const DEFAULT_STREAM: &str = "IMGFETCH";

/// Default name of the JetStream stream that keeps dead letters: requests that ended without an
/// answer, and the server's advisories about them.
pub const DEFAULT_DLQ_STREAM: &str = "IMGFETCH_DLQ";
/// Prefix of the dead-letter subjects; the last token is the network tag.
pub const DLQ_PREFIX: &str = "imgfetch.dlq";
/// Name of the durable consumer of max-deliveries advisories that all resolvers share.
pub const DLQ_CONSUMER: &str = "imgfetch-dead-letters";

/// Prefix of the request subjects that anyone with the publisher role may publish on (hand
/// publishers, the NATS CLI); the last token is the network tag. A resolver never answers such a
/// request on a gateway's callback ([`REPLY_PREFIX`]).
pub const REQUEST_PREFIX: &str = "imgfetch.req";
/// Prefix of the request subjects that only gateways may publish on (the NATS roles say so);
/// the last token is the network tag. Only requests that came this way are answered on a
/// gateway's callback, so only a gateway can cause an answer there.
pub const GATEWAY_REQUEST_PREFIX: &str = "imgfetch.gwreq";
/// Prefix of the subjects on which a resolver hears credit and cancels for one streamed answer
/// (`imgfetch.flow.<random>`): gateways may publish there, and only resolvers listen.
pub const FLOW_PREFIX: &str = "imgfetch.flow";
/// Inbox prefix of a gateway's connection, followed by its instance name: its JetStream
/// acknowledgements, API replies and the answers to its pings arrive under
/// `_INBOX_gateway.<instance>.>`, which no other user may read.
pub const GATEWAY_INBOX_PREFIX: &str = "_INBOX_gateway";
/// Inbox prefix of a resolver's connection: its pulled requests and API replies arrive under
/// `_INBOX_resolver.>`, which no gateway or publisher may read.
pub const RESOLVER_INBOX_PREFIX: &str = "_INBOX_resolver";
/// Prefix of the callback subjects a gateway listens on.
pub const REPLY_PREFIX: &str = "imgfetch.reply";
/// Prefix of the liveness subjects resolvers answer on, one per network.
pub const PING_PREFIX: &str = "imgfetch.ping";
/// Queue group the resolvers' ping responders share.
pub const RESOLVER_QUEUE_GROUP: &str = "imgfetch-resolver";
/// Prefix of the gateways' liveness subjects, one per instance.
pub const GATEWAY_PREFIX: &str = "imgfetch.gateway";
/// Default name of the key-value bucket where gateways record the outcome of each request.
pub const DEFAULT_RESULTS_BUCKET: &str = "IMGFETCH_RESULTS";
/// Queue group the gateways' sentinels share, on `imgfetch.req.>`.
pub const SENTINEL_QUEUE_GROUP: &str = "imgfetch-gateway-sentinel";

/// Hand publishers' request subject of one network: `imgfetch.req.<network>`.
pub fn request_subject(network: &str) -> String {
    format!("{REQUEST_PREFIX}.{network}")
}

/// Gateways' request subject of one network: `imgfetch.gwreq.<network>`.
pub fn gateway_request_subject(network: &str) -> String {
    format!("{GATEWAY_REQUEST_PREFIX}.{network}")
}

/// Who may have published a request, as its subject tells (the NATS roles enforce it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `imgfetch.gwreq.<network>`: a gateway.
    Gateway,
    /// `imgfetch.req.<network>`: anyone with the publisher role.
    Hand,
}

/// The origin and network tag of a request subject, if the subject is one.
pub fn request_origin(subject: &str) -> Option<(Origin, &str)> {
    let tail = |prefix: &str| {
        subject
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
    };
    if let Some(network) = tail(GATEWAY_REQUEST_PREFIX) {
        return Some((Origin::Gateway, network));
    }
    tail(REQUEST_PREFIX).map(|network| (Origin::Hand, network))
}

/// The network tag of a request subject (of either origin), if the subject is one.
pub fn network_of_subject(subject: &str) -> Option<&str> {
    request_origin(subject).map(|(_, network)| network)
}

/// A fresh flow subject for one streamed answer: `imgfetch.flow.<128 random bits>`, or, from a
/// resolver of a zone, `imgfetch.flow.<zone>.<128 random bits>`, so that the zone's NATS user
/// may listen under its own zone only (docs/DEPLOY.md, leaf zones).
pub fn new_flow_subject(zone: Option<&str>) -> String {
    match zone {
        Some(zone) => format!("{FLOW_PREFIX}.{zone}.{}", random_token()),
        None => format!("{FLOW_PREFIX}.{}", random_token()),
    }
}

/// The inbox prefix of a resolver's connection: `_INBOX_resolver`, or for a resolver of a zone
/// `_INBOX_resolver.<zone>`, which that zone's NATS user alone may read.
pub fn resolver_inbox_prefix(zone: Option<&str>) -> String {
    match zone {
        Some(zone) => format!("{RESOLVER_INBOX_PREFIX}.{zone}"),
        None => RESOLVER_INBOX_PREFIX.to_owned(),
    }
}

/// The prefix of the JetStream API a resolver talks to: `$JS.API`, or `$JS.<domain>.API` for a
/// hub's domain reached through a leaf node.
pub fn jetstream_api_prefix(domain: Option<&str>) -> String {
    match domain {
        Some(domain) => format!("$JS.{domain}.API"),
        None => "$JS.API".to_owned(),
    }
}

/// The token a gateway ends a request's callback with: `<network>.<128 random bits>`. The
/// network lets the server's permissions confine a zone's resolvers to the callbacks of their
/// own networks' requests (`imgfetch.reply.*.<network>.>`); the random part makes it
/// unguessable.
pub fn callback_token(network: &str) -> String {
    format!("{network}.{}", random_token())
}

/// 128 random bits as 32 lowercase hex digits: callback and flow tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!("{:032x}", u128::from_be_bytes(bytes))
}

/// Inbox prefix of one gateway instance's connection: `_INBOX_gateway.<instance>`.
pub fn gateway_inbox_prefix(instance: &str) -> String {
    format!("{GATEWAY_INBOX_PREFIX}.{instance}")
}

/// Callback subject for one request held by one gateway instance: `token` is the gateway's
/// unguessable per-request token ([`callback_token`]), never the client's id.
pub fn reply_subject(instance: &str, token: &str) -> String {
    format!("{REPLY_PREFIX}.{instance}.{token}")
}

/// Wildcard a gateway instance subscribes to for all of its callbacks.
pub fn reply_wildcard(instance: &str) -> String {
    format!("{REPLY_PREFIX}.{instance}.>")
}

/// Liveness subject of one gateway instance: `imgfetch.gateway.<instance>`. A request there
/// with no responders means the instance is gone.
pub fn gateway_subject(instance: &str) -> String {
    format!("{GATEWAY_PREFIX}.{instance}")
}

/// Liveness subject of one network's resolvers.
pub fn ping_subject(network: &str) -> String {
    format!("{PING_PREFIX}.{network}")
}

/// Subject of the gateways' fetch endpoint (NATS micro protocol): a request through any
/// gateway, answered in one message.
pub const FETCH_SUBJECT: &str = "imgfetch.fetch";

pub use crate::micro::{GATEWAY_SERVICE, RESOLVER_SERVICE};

/// Prefix of the resolvers' stat endpoints (`imgfetch.stat.<network>`, NATS micro protocol).
pub const STAT_PREFIX: &str = "imgfetch.stat";

/// Subject of one network's stat endpoint: what its store knows of a key, without the image.
pub fn stat_subject(network: &str) -> String {
    format!("{STAT_PREFIX}.{network}")
}

/// Dead-letter subject of one network: `imgfetch.dlq.<network>`.
pub fn dead_letter_subject(network: &str) -> String {
    format!("{DLQ_PREFIX}.{network}")
}

/// Subject of the server's advisories about requests of `stream` that ran out of deliveries,
/// for every consumer: `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.*`.
pub fn max_deliveries_advisories(stream: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*")
}

/// Name of the durable pull consumer that all resolvers of one network share.
pub fn consumer_name(network: &str) -> String {
    format!("imgfetch-{network}")
}

/// Header names. NATS headers are case-sensitive; these are the exact spellings.
/// Headers of the gateway's HTTP answers that clients read (lowercase, as HTTP/2 spells
/// them); the gateway's `imgfetch.fetch` answers carry the archive ones too.
pub mod http_header {
    /// The request id, sent by the client or made by the gateway, and echoed.
    pub const REQUEST_ID: &str = "x-request-id";
    /// Where the archive copy is written (percent-encoded path).
    pub const ARCHIVED_AS: &str = "imgfetch-archived-as";
    /// Why there is no archive copy.
    pub const ARCHIVE_ERROR: &str = "imgfetch-archive-error";
    /// Says that some extras were left out of an HTTP answer's headers (value `true`).
    pub const INFO_TRUNCATED: &str = "imgfetch-info-truncated";
    /// Prefix of the HTTP answer headers that carry an image's metadata and information
    /// (`imgfetch-size`, `imgfetch-location`, ...).
    pub const PREFIX: &str = "imgfetch-";
}

pub mod header {
    /// Subject the resolver must reply on. Required on every request.
    pub const CALLBACK: &str = "Imgfetch-Callback";
    /// On a gateway's liveness answer: the random id of the process answering, drawn at its
    /// start, so that a new process under an old instance name (a restarted pod) is not taken
    /// for the one that held a request.
    pub const INCARNATION: &str = "Imgfetch-Incarnation";
    /// Unix time in milliseconds after which nobody waits for the answer. Optional.
    pub const DEADLINE: &str = "Imgfetch-Deadline";
    /// JetStream de-duplication id; set to the request id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The request id, on every reply.
    pub const ID: &str = "Imgfetch-Id";
    /// `ok` or an [`ErrorCode`](super::ErrorCode), on every reply.
    pub const STATUS: &str = "Imgfetch-Status";
    /// The resolver instance that answered.
    pub const RESOLVER: &str = "Imgfetch-Resolver";
    /// The network that answered.
    pub const NETWORK: &str = "Imgfetch-Network";
    /// The key that was read.
    pub const KEY: &str = "Imgfetch-Key";
    /// Sniffed media type of the body of an `ok` reply.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// Size of the image in bytes.
    pub const SIZE: &str = "Imgfetch-Size";
    /// Last modification time reported by the store, RFC 3339.
    pub const LAST_MODIFIED: &str = "Imgfetch-Last-Modified";
    /// Entity tag reported by the store.
    pub const ETAG: &str = "Imgfetch-Etag";
    /// Place name where the image was taken.
    pub const LOCATION: &str = "Imgfetch-Location";
    /// Latitude in decimal degrees.
    pub const LATITUDE: &str = "Imgfetch-Latitude";
    /// Longitude in decimal degrees.
    pub const LONGITUDE: &str = "Imgfetch-Longitude";
    /// Capture time, RFC 3339.
    pub const CAPTURED_AT: &str = "Imgfetch-Captured-At";
    /// Capturing device.
    pub const DEVICE: &str = "Imgfetch-Device";
    /// Prefix of other associated information.
    pub const EXTRA_PREFIX: &str = "Imgfetch-Extra-";
    /// Prefix of the request's `meta` entries, echoed back.
    pub const META_PREFIX: &str = "Imgfetch-Meta-";
    /// SHA-256 of the image, lower-case hex: on an inline `ok` reply, and on the end of a
    /// streamed one.
    pub const SHA256: &str = "Imgfetch-Sha256";

    /// On a request: the sender can take a streamed answer (value `1`). Without it, an image
    /// over the inline limit is answered `too_large`.
    pub const ACCEPT_STREAM: &str = "Imgfetch-Accept-Stream";
    /// On every message of a streamed answer: the resolver's flow subject, where the receiver
    /// sends credit and cancels. It also tells one stream from another for the same id.
    pub const FLOW: &str = "Imgfetch-Flow";
    /// On the head of a streamed answer: bytes per chunk (the last may be shorter).
    pub const CHUNK_SIZE: &str = "Imgfetch-Chunk-Size";
    /// On the head of a streamed answer: how many chunks follow.
    pub const CHUNKS: &str = "Imgfetch-Chunks";
    /// On a chunk: its number, from 1.
    pub const SEQ: &str = "Imgfetch-Seq";
    /// On a flow message: the resolver may send chunks up to and including this number.
    pub const CREDIT: &str = "Imgfetch-Credit";
    /// On a flow message: stop sending; the value says why.
    pub const CANCEL: &str = "Imgfetch-Cancel";

    /// On a dead letter: why the request got no answer, a
    /// [`DeadReason`](super::DeadReason).
    pub const DEAD_REASON: &str = "Imgfetch-Dead-Reason";
    /// On a dead letter: how many times the request was delivered.
    pub const DEAD_DELIVERIES: &str = "Imgfetch-Dead-Deliveries";
    /// On a dead letter: the request's sequence in the request stream.
    pub const DEAD_STREAM_SEQ: &str = "Imgfetch-Dead-Stream-Seq";
    /// On a dead letter of reason `max_deliveries`: the server's advisory, as compact JSON.
    pub const DEAD_ADVISORY: &str = "Imgfetch-Dead-Advisory";
}

/// Why a request became a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadReason {
    /// The consumer delivered it `max_deliver` times and no resolver settled it.
    MaxDeliveries,
    /// It had no `Imgfetch-Callback` header.
    NoCallback,
    /// Its `Imgfetch-Callback` is not one a resolver may answer on.
    BadCallback,
    /// Its `Imgfetch-Callback` is a gateway's (`imgfetch.reply.>`), but it was not published on
    /// a gateway's request subject (`imgfetch.gwreq.<network>`): only gateways may cause an
    /// answer there.
    CallbackNotAllowed,
}

impl DeadReason {
    /// The wire spelling, as used in `Imgfetch-Dead-Reason` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::MaxDeliveries => "max_deliveries",
            DeadReason::NoCallback => "no_callback",
            DeadReason::BadCallback => "bad_callback",
            DeadReason::CallbackNotAllowed => "callback_not_allowed",
        }
    }

    /// Reads the wire spelling back; `None` for anything else.
    pub fn parse(value: &str) -> Option<DeadReason> {
        [
            DeadReason::MaxDeliveries,
            DeadReason::NoCallback,
            DeadReason::BadCallback,
            DeadReason::CallbackNotAllowed,
        ]
        .into_iter()
        .find(|r| r.as_str() == value)
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a reply: everything but `ok` is one of these.
///
/// Exhaustive on purpose: a new code does not compile until [`ErrorCode::http_status`] gives it
/// a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The key does not exist in the network's store.
    NotFound,
    /// The request is malformed: bad JSON or msgpack, bad key, bad id, bad meta.
    InvalidRequest,
    /// No resolver has ever registered this network.
    UnknownNetwork,
    /// A request with this id was already accepted.
    DuplicateId,
    /// The store kept failing after retries.
    StoreUnavailable,
    /// The image is over the resolver's size limit, or over its inline limit for a request
    /// that does not accept streams.
    TooLarge,
    /// The deadline passed before an answer came, or a streamed answer stalled.
    Timeout,
    /// A streamed image arrived damaged: a checksum mismatch, a missing or extra chunk. It is
    /// never delivered as `ok` nor archived.
    Integrity,
    /// A bug or an unexpected failure.
    Internal,
    /// The gateway could not enqueue the request: NATS is down, the queue is full, no resolver
    /// serves the network, or the gateway is shutting down.
    Unavailable,
    /// The gateway requires a bearer token and the client sent none, or one it does not know.
    /// Only the gateway's clients see it; resolvers never send it.
    Unauthorized,
    /// The client's token may not fetch from that network. Gateway clients only.
    Forbidden,
    /// The client's token already has as many requests in flight as it may. Gateway clients
    /// only.
    TooManyRequests,
    /// The request was delivered to resolvers as often as the consumer allows and none
    /// answered it; it is kept in the dead-letter stream.
    Undeliverable,
    /// No result is recorded under that id: it was never asked through a gateway, it expired,
    /// or it belongs to another client. Gateway clients only (`GET /v1/requests/{id}`).
    UnknownRequest,
    /// The request ended, but its answer cannot be replayed (the image was delivered without
    /// an archive copy, or its copy cannot be read): ask for the image again. Gateway clients
    /// only.
    ResultUnavailable,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::NotFound,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownNetwork,
        ErrorCode::DuplicateId,
        ErrorCode::StoreUnavailable,
        ErrorCode::TooLarge,
        ErrorCode::Timeout,
        ErrorCode::Integrity,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::TooManyRequests,
        ErrorCode::Undeliverable,
        ErrorCode::UnknownRequest,
        ErrorCode::ResultUnavailable,
    ];

    /// The HTTP status of the code, wherever imgfetch answers over HTTP or with a micro
    /// protocol error (`Nats-Service-Error-Code`): the one table of them.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotFound | ErrorCode::UnknownRequest => 404,
            ErrorCode::ResultUnavailable => 410,
            ErrorCode::InvalidRequest | ErrorCode::UnknownNetwork => 400,
            ErrorCode::DuplicateId => 409,
            ErrorCode::Timeout => 504,
            ErrorCode::Unavailable | ErrorCode::StoreUnavailable => 503,
            ErrorCode::TooLarge | ErrorCode::Integrity | ErrorCode::Undeliverable => 502,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
        }
    }

    /// The wire spelling, as used in `Imgfetch-Status` and JSON `code` fields.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownNetwork => "unknown_network",
            ErrorCode::DuplicateId => "duplicate_id",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Integrity => "integrity",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Undeliverable => "undeliverable",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::ResultUnavailable => "result_unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string that is neither `ok` nor a known code.
#[derive(Debug, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// The `Imgfetch-Status` value of a successful reply.
pub const STATUS_OK: &str = "ok";

/// The body of a request on `imgfetch.req.<network>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// The unique data id; also the JetStream de-duplication id.
    pub id: String,
    /// The network tag. Optional on the wire because the subject carries it too; when present
    /// it must equal the subject's last token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The image address in the network's store.
    pub key: String,
    /// Free-form strings carried through to the reply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// What a resolver answers on its ping subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverInfo {
    /// The resolver instance's name.
    pub instance: String,
    /// The networks it serves.
    pub networks: Vec<String>,
    /// The largest image it serves, in bytes.
    pub max_image_bytes: u64,
    /// The largest image it sends inline, in one message; larger ones are streamed to those
    /// who accept streams, and answered `too_large` to others.
    #[serde(default)]
    pub max_inline_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_wire_spelling() {
        for code in ErrorCode::ALL {
            let parsed: ErrorCode = code.as_str().parse().unwrap();
            assert_eq!(parsed, code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        assert!("ok".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn subjects_compose_and_split() {
        assert_eq!(request_subject("cams"), "imgfetch.req.cams");
        assert_eq!(network_of_subject("imgfetch.req.cams"), Some("cams"));
        assert_eq!(network_of_subject("imgfetch.reqx.cams"), None);
        assert_eq!(gateway_request_subject("cams"), "imgfetch.gwreq.cams");
        assert_eq!(
            request_origin("imgfetch.gwreq.cams"),
            Some((Origin::Gateway, "cams"))
        );
        assert_eq!(
            request_origin("imgfetch.req.cams"),
            Some((Origin::Hand, "cams"))
        );
        assert_eq!(request_origin("imgfetch.gwreqx.cams"), None);
        assert_eq!(gateway_inbox_prefix("gw1"), "_INBOX_gateway.gw1");
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(new_flow_subject(None).starts_with("imgfetch.flow."));
        assert_eq!(new_flow_subject(None).split('.').count(), 3);
        assert!(new_flow_subject(Some("plant")).starts_with("imgfetch.flow.plant."));
        assert_eq!(new_flow_subject(Some("plant")).split('.').count(), 4);
        assert_eq!(resolver_inbox_prefix(None), "_INBOX_resolver");
        assert_eq!(
            resolver_inbox_prefix(Some("plant")),
            "_INBOX_resolver.plant"
        );
        assert_eq!(jetstream_api_prefix(None), "$JS.API");
        assert_eq!(jetstream_api_prefix(Some("hub")), "$JS.hub.API");
        let token = callback_token("harbor");
        assert!(token.starts_with("harbor.") && token.len() == "harbor.".len() + 32);
        assert_eq!(reply_subject("gw1", "abc"), "imgfetch.reply.gw1.abc");
        assert_eq!(reply_wildcard("gw1"), "imgfetch.reply.gw1.>");
        assert_eq!(dead_letter_subject("cams"), "imgfetch.dlq.cams");
        assert_eq!(
            max_deliveries_advisories("IMGFETCH"),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.IMGFETCH.*"
        );
    }
}
