//! The built-in defaults of the resolver, in one place.

use std::time::Duration;

/// NATS server to connect to.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// Requests one resolver works on at once, across all its networks.
pub const CONCURRENCY: usize = 16;
/// Streamed answers in progress at once; they hold no request slot while they wait on
/// their receivers.
pub const MAX_STREAMS: usize = 64;
/// Requests a resolver behind a leaf node (`--jetstream-domain`) pulls ahead of its free slots:
/// enough to keep some 5000 requests a second in flight over a 50 ms link.
pub const LEAF_PULL_AHEAD: usize = 256;
/// Attempts at a store that keeps failing before answering `store_unavailable`.
pub const STORE_ATTEMPTS: u32 = 4;
/// First delay before retrying a failing store; doubles per attempt.
pub const RETRY_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between retries.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(8);
/// Longest a single store read may take.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes kept free under the server's `max_payload` for headers.
pub const PAYLOAD_HEADROOM: u64 = 64 * 1024;
/// Largest image served at all: 1 GiB.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;
/// Bytes in one chunk of a streamed image (smaller when the server's `max_payload` less
/// the headroom is smaller); chosen by measurement, see `docs/PROTOCOL.md`.
pub const CHUNK_BYTES: u64 = 256 * 1024;
/// How long a stream waits for the receiver's credit before it gives up.
pub const STREAM_IDLE: Duration = Duration::from_secs(30);
/// How long in-flight requests may take to finish after SIGTERM.
pub const GRACE: Duration = Duration::from_secs(20);
/// How long a waiting pull lasts at the server before it ends and is renewed; a stopping
/// resolver waits this long at most for its pulls to end.
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long the dead-letter stream keeps a dead letter: 7 days.
pub const DLQ_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Replicas of the stream when the resolver creates it.
pub const STREAM_REPLICAS: usize = 1;
/// How long a resolver may hold a request before JetStream redelivers it.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries after which JetStream stops redelivering a request.
pub const MAX_DELIVER: i64 = 10;
