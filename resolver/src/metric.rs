//! The names of the resolver's Prometheus series, each declared once. What each one means,
//! with its labels, is in docs/OPERATIONS.md#metrics; `/metrics` serves them.

/// A counter: dead letters. Labels: `reason`, `network`.
pub const DEAD_LETTERS_TOTAL: &str = "imgfetch_resolver_dead_letters_total";
/// A counter: requests without a usable callback, termed: `no_callback`, `bad_callback`, or
/// `callback_not_allowed` (a gateway's callback on a hand-published request: someone tried to
/// answer a gateway's client, SECURITY.md). Labels: `reason`.
pub const DROPPED_TOTAL: &str = "imgfetch_resolver_dropped_total";
/// A counter: bytes of the images answered whole. Labels: `network`.
pub const IMAGE_BYTES_TOTAL: &str = "imgfetch_resolver_image_bytes_total";
/// A gauge: requests a network pulls ahead of the slots, as sized to the link behind a leaf node
/// (set only there, when `--pull-ahead` is not given). Labels: `network`.
pub const PULL_AHEAD: &str = "imgfetch_resolver_pull_ahead";
/// A histogram: from the stream storing a request to a resolver taking it (first deliveries only: a
/// redelivery's wait includes its backoff). Labels: `network`.
pub const QUEUE_WAIT_SECONDS: &str = "imgfetch_resolver_queue_wait_seconds";
/// A counter: requests taken again after a failed or unfinished delivery. Labels: `network`.
pub const REDELIVERIES_TOTAL: &str = "imgfetch_resolver_redeliveries_total";
/// A counter: answers sent, by `ok` or error code. Labels: `network`, `status`.
pub const REPLIES_TOTAL: &str = "imgfetch_resolver_replies_total";
/// A gauge: requests being handled. Labels: `network`.
pub const REQUESTS_IN_FLIGHT: &str = "imgfetch_resolver_requests_in_flight";
/// A counter: store failures sent back for a later retry (nak with backoff).
pub const RETRIES_TOTAL: &str = "imgfetch_resolver_retries_total";
/// A histogram: reading an image and its sidecar from the store (for a streamed image, its first
/// part). Labels: `network`.
pub const STORE_READ_SECONDS: &str = "imgfetch_resolver_store_read_seconds";
/// A counter: streamed answers abandoned by their receiver.
pub const STREAMS_ABANDONED_TOTAL: &str = "imgfetch_resolver_streams_abandoned_total";
/// A gauge: streamed answers holding one of the `--max-streams` permits; at the limit, further
/// streams wait (without a request slot).
pub const STREAMS_IN_PROGRESS: &str = "imgfetch_resolver_streams_in_progress";
/// A counter: streamed answers begun.
pub const STREAMS_TOTAL: &str = "imgfetch_resolver_streams_total";
/// A counter: supervised tasks restarted. Labels: `task`.
pub const TASK_RESTARTS_TOTAL: &str = "imgfetch_resolver_task_restarts_total";
