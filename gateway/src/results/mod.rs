//! Results that outlive a disconnect: the outcome of every request a gateway put on the queue
//! is recorded in a JetStream key-value bucket (`IMGFETCH_RESULTS`, key = request id, entries
//! expire after the result TTL), so that a client can fetch it again by id from any gateway.
//!
//! - **Records** are small versioned JSON ([`Record`]): `pending` once the stream accepted the
//!   request (with its owner gateway and deadline), then `done` (the image's headers and its
//!   archive path: the bytes are served from the archive, never stored twice), `unarchived`
//!   (delivered, but there is no archive copy to replay) or `failed` (code and message).
//!   Writes run off the client's path, each bounded by a timeout; a failed write is counted and
//!   logged, never turned into a client error, and the bucket is opened again (created when
//!   missing) in case it is gone.
//! - **Ordering**: a fresh request's `pending` replaces whatever its id recorded (an id reused
//!   after the stream's de-duplication window is a new request); one request's writes on one
//!   gateway run in order ([`WriteOrder`]); every later write is a revision compare-and-set
//!   that never replaces a newer record ([`State::replaceable_by`]), and an owner receiving the
//!   image marks its record `delivering`, which only the owner's death lets another take over.
//! - **Fetching** (`queue::replay`) replays a terminal record; a `pending` one is waited
//!   for while its owner lives and its deadline holds.
//! - **Takeover**: a `pending` record whose owner gateway does not answer on its liveness
//!   subject (`imgfetch.gateway.<instance>`), or whose deadline passed, is claimed with a
//!   revision compare-and-set (one gateway wins), and the request is queued again under
//!   `Nats-Msg-Id: <id>.retry.<n>`; its outcome is recorded under the original id.

//! # Layout
//!
//! - [`record`]: the record format and the order of one request's writes.
//! - [`bucket`]: the bucket, opened and reopened, and compare-and-set writes.
//! - [`liveness`]: this gateway's liveness answer, and asking another gateway's.
//!
//! Fetching by id and takeover run requests again, so they live with the queue
//! (`crate::queue::replay`); nothing here uses the queue.

mod bucket;
mod liveness;
pub mod record;

use std::time::Duration;

use imgfetch_common::protocol;

pub use bucket::{Reservation, Results};
pub use liveness::answer_liveness;
pub use record::{Origin, Record, State, WriteOrder, RECORD_VERSION};

/// Defaults of [`ResultSettings`] (the gateway's `config::defaults` shows them too).
pub mod defaults {
    use std::time::Duration;

    /// How long the outcome of a request can be fetched again by id.
    pub const RESULT_TTL: Duration = Duration::from_secs(600);
    /// Replicas of the results bucket when the gateway creates it.
    pub const RESULTS_REPLICAS: usize = 1;
}

pub(crate) use bucket::{bounded_stream, now_ms, record_failed, unavailable, unknown};

/// How long an owner gateway has to answer on its liveness subject.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);
/// Compare-and-set tries of one write before it gives up (another gateway kept writing).
const CAS_TRIES: usize = 4;
/// Least time between two attempts to open the bucket again after it failed.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Where outcomes are recorded, and for how long.
#[derive(Clone, Debug)]
pub struct ResultSettings {
    /// The key-value bucket.
    pub bucket: String,
    /// How long a result can be fetched again; the bucket's `max_age`.
    pub ttl: Duration,
    /// Replicas of the bucket when the gateway creates it.
    pub replicas: usize,
}

impl Default for ResultSettings {
    fn default() -> Self {
        ResultSettings {
            bucket: protocol::DEFAULT_RESULTS_BUCKET.to_owned(),
            ttl: defaults::RESULT_TTL,
            replicas: defaults::RESULTS_REPLICAS,
        }
    }
}

/// Why the results bucket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// Neither found nor created.
    #[error("results bucket {bucket}: {source}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What NATS said.
        #[source]
        source: async_nats::Error,
    },
    /// NATS did not answer in time.
    #[error("results bucket {bucket}: no answer from NATS within {timeout:?}")]
    Timeout {
        /// The bucket.
        bucket: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The liveness subject could not be subscribed to.
    #[error("cannot answer on the liveness subject: {0}")]
    Liveness(#[source] async_nats::SubscribeError),
    /// The liveness subscription ended.
    #[error("the liveness subscription ended")]
    LivenessEnded,
    /// A liveness answer could not be sent.
    #[error("cannot answer a liveness ping: {0}")]
    LivenessAnswer(#[source] async_nats::PublishError),
    /// Subscribing or answering took too long.
    #[error("the liveness subject did not respond within {0:?}")]
    LivenessTimeout(Duration),
}
