//! The names of the gateway's Prometheus series, each declared once. What each one means,
//! with its labels, is in docs/OPERATIONS.md#metrics; `/metrics` serves them.

/// A counter: requests JetStream stored.
pub const ACCEPTED_TOTAL: &str = "imgfetch_gateway_accepted_total";
/// A counter: archive copies that failed (ARCHIVE.md).
pub const ARCHIVE_FAILURES_TOTAL: &str = "imgfetch_gateway_archive_failures_total";
/// A counter: archive copies written (ARCHIVE.md).
pub const ARCHIVED_TOTAL: &str = "imgfetch_gateway_archived_total";
/// A counter: connections refused over `--max-connections`.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "imgfetch_gateway_connections_refused_total";
/// A counter: replies with an id not on record for their token (SECURITY.md).
pub const FORGED_REPLIES_TOTAL: &str = "imgfetch_gateway_forged_replies_total";
/// A counter: websockets closed for idleness.
pub const IDLE_WEBSOCKETS_CLOSED_TOTAL: &str = "imgfetch_gateway_idle_websockets_closed_total";
/// A counter: bytes of the images answered (their announced size). Labels: `network`.
pub const IMAGE_BYTES_TOTAL: &str = "imgfetch_gateway_image_bytes_total";
/// A counter: replies nobody waits for (their request is answered or unknown here); dropped.
pub const LATE_REPLIES_TOTAL: &str = "imgfetch_gateway_late_replies_total";
/// A counter: replies to requests whose client left; read all the same, to archive and record them.
pub const ORPHAN_REPLIES_TOTAL: &str = "imgfetch_gateway_orphan_replies_total";
/// A histogram: end to end: from queueing a request to its answer (for a streamed image, its first
/// chunk). Labels: `network`.
pub const REQUEST_SECONDS: &str = "imgfetch_gateway_request_seconds";
/// A gauge: requests queued and waiting for their answer.
pub const REQUESTS_IN_FLIGHT: &str = "imgfetch_gateway_requests_in_flight";
/// A counter: answers to the requests this gateway queued (HTTP, websocket, `imgfetch.fetch`, and
/// requests it took over), by `ok` or error code; replays of recorded results are not counted.
/// Labels: `network`, `status`.
pub const REQUESTS_TOTAL: &str = "imgfetch_gateway_requests_total";
/// A counter: results by id that could not be recorded (RELIABILITY.md).
pub const RESULT_RECORD_FAILURES_TOTAL: &str = "imgfetch_gateway_result_record_failures_total";
/// A counter: result writes refused because the record had moved on (compare-and-set).
pub const RESULT_STALE_WRITES_TOTAL: &str = "imgfetch_gateway_result_stale_writes_total";
/// A counter: requests of a gone gateway taken over by this one (RELIABILITY.md).
pub const RESULT_TAKEOVERS_TOTAL: &str = "imgfetch_gateway_result_takeovers_total";
/// A counter: times the results bucket was found missing and made again.
pub const RESULTS_BUCKET_RECREATED_TOTAL: &str = "imgfetch_gateway_results_bucket_recreated_total";
/// A counter: websocket clients dropped for not reading.
pub const SLOW_CLIENTS_TOTAL: &str = "imgfetch_gateway_slow_clients_total";
/// A counter: streams that found `--max-stream-buffer-bytes` spent for a whole `--chunk-timeout`
/// and failed `unavailable` (SECURITY.md).
pub const STREAM_BUFFER_FULL_TOTAL: &str = "imgfetch_gateway_stream_buffer_full_total";
/// Counter: times a stream's credit window grew because its client waited on a grant crossing a
/// slow link (sized to the link, up to `--max-stream-window-bytes`).
pub const STREAM_WINDOWS_GROWN_TOTAL: &str = "imgfetch_gateway_stream_windows_grown_total";
/// A counter: bytes of streamed images received.
pub const STREAM_BYTES_TOTAL: &str = "imgfetch_gateway_stream_bytes_total";
/// A gauge: streamed images being received.
pub const STREAMS: &str = "imgfetch_gateway_streams";
/// A counter: streamed images whose client left before the end.
pub const STREAMS_ABANDONED_TOTAL: &str = "imgfetch_gateway_streams_abandoned_total";
/// A counter: streamed images received whole.
pub const STREAMS_COMPLETED_TOTAL: &str = "imgfetch_gateway_streams_completed_total";
/// A counter: streamed images that failed. Labels: `code`.
pub const STREAMS_FAILED_TOTAL: &str = "imgfetch_gateway_streams_failed_total";
/// A counter: supervised tasks restarted. Labels: `task`.
pub const TASK_RESTARTS_TOTAL: &str = "imgfetch_gateway_task_restarts_total";
/// A counter: requests answered `timeout`.
pub const TIMEOUTS_TOTAL: &str = "imgfetch_gateway_timeouts_total";
/// A counter: re-reads of the tokens file that changed the tokens in force (`ok`) or found it
/// unreadable or invalid (`error`, the old tokens stay). Labels: `result`.
pub const TOKENS_RELOADS_TOTAL: &str = "imgfetch_gateway_tokens_reloads_total";
/// A gauge: open websocket sessions.
pub const WEBSOCKETS: &str = "imgfetch_gateway_websockets";
