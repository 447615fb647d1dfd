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
//! - **Fetching** ([`Results::fetch`]) replays a terminal record; a `pending` one is waited
//!   for while its owner lives and its deadline holds.
//! - **Takeover**: a `pending` record whose owner gateway does not answer on its liveness
//!   subject (`imgfetch.gateway.<instance>`), or whose deadline passed, is claimed with a
//!   revision compare-and-set (one gateway wins), and the request is queued again under
//!   `Nats-Msg-Id: <id>.retry.<n>`; its outcome is recorded under the original id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, context::KeyValueErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use imgfetch_common::info::ImageInfo;
use imgfetch_common::message::Liveness;
use imgfetch_common::protocol::{self, ErrorCode};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::archive::{Archive, Archived};
use crate::auth::Client;
use crate::dispatch::Dispatcher;
use crate::outcome::{Body, Failure, Image, Outcome, Stored};

/// Version of the record format, the `v` of every record.
pub const RECORD_VERSION: u32 = 1;
/// How often a fetch reads a `pending` record again while its owner works on it.
const POLL: Duration = Duration::from_millis(250);
/// How long an owner gateway has to answer on its liveness subject.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);
/// Compare-and-set tries of one write before it gives up (another gateway kept writing).
const CAS_TRIES: usize = 4;
/// Least time between two attempts to open the bucket again after it failed.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Longest a replay waits for the archive to open the copy, or for each part of it.
const ARCHIVE_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
            ttl: crate::config::defaults::RESULT_TTL,
            replicas: crate::config::defaults::RESULTS_REPLICAS,
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

/// One record of the bucket, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Format version, [`RECORD_VERSION`].
    pub v: u32,
    /// The network the request was for.
    pub network: String,
    /// The image key.
    pub key: String,
    /// The request's `meta`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Name of the token that asked; absent when the gateway takes no tokens. Only the same
    /// identity may read the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Where the request stands.
    #[serde(flatten)]
    pub state: State,
}

/// Where a recorded request stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// On the queue; `owner` waits for its answer until `deadline_ms` (Unix milliseconds).
    Pending {
        /// The gateway instance whose callback the request carries.
        owner: String,
        /// The owner's incarnation: the random id its process drew at start. A gateway that
        /// answers on the owner's liveness subject with another one is a new process under the
        /// same name (a restarted pod), which never held the request. Empty in records of older
        /// gateways, whose answers carry none.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        incarnation: String,
        /// When the owner stops waiting; 0 means overdue (a takeover that could not queue the
        /// request again leaves it so, for the next fetch to retry).
        deadline_ms: u64,
        /// Takeovers so far.
        #[serde(default)]
        attempt: u32,
        /// The owner receives the image (a stream's head, or an inline reply, came): the
        /// deadline no longer applies, only the owner's death allows a takeover, so that a long
        /// stream is not run a second time while it is delivered.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delivering: bool,
    },
    /// Delivered and archived: replayed from the archive.
    Done {
        /// Sniffed media type.
        content_type: String,
        /// Bytes of the image.
        size: u64,
        /// What the store reported.
        metadata: BTreeMap<String, String>,
        /// The associated information.
        info: Box<ImageInfo>,
        /// Path of the archive copy.
        archived_as: String,
        /// SHA-256 of the image, lower-case hex, when the resolver sent it inline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// The attempt (takeovers before it) that produced this outcome.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
    /// Delivered (or begun) without an archive copy: nothing to replay.
    Unarchived {
        /// Why there is no copy.
        reason: String,
        /// The attempt that produced this outcome.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
    /// Ended in an error.
    Failed {
        /// The error code.
        code: ErrorCode,
        /// The message.
        message: String,
        /// The attempt that produced this outcome.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl State {
    /// The attempt this state belongs to.
    fn attempt(&self) -> u32 {
        match self {
            State::Pending { attempt, .. }
            | State::Done { attempt, .. }
            | State::Unarchived { attempt, .. }
            | State::Failed { attempt, .. } => *attempt,
        }
    }

    /// Whether a record in state `self` may be replaced by one in state `new` (see
    /// docs/RELIABILITY.md): never by an older attempt's outcome (a late answer after a
    /// takeover), and within one attempt a terminal state only by `done`: a failure never
    /// replaces the image it followed, and a pending state never replaces an outcome.
    pub fn replaceable_by(&self, new: &State) -> bool {
        use std::cmp::Ordering;
        match self.attempt().cmp(&new.attempt()) {
            Ordering::Greater => false,
            Ordering::Less => true,
            Ordering::Equal => match (self, new) {
                (State::Pending { .. }, _) => true,
                (State::Done { .. }, _) | (_, State::Pending { .. }) => false,
                _ => true,
            },
        }
    }
}

/// What a gateway keeps of one request to record its outcome.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The request id: the record's key.
    pub id: String,
    /// The network.
    pub network: String,
    /// The image key.
    pub key: String,
    /// The request's `meta`.
    pub meta: BTreeMap<String, String>,
    /// The token that asked, if any.
    pub identity: Option<String>,
    /// Takeovers before this run of the request; its outcome is recorded with it.
    pub attempt: u32,
    /// Orders this request's writes on this gateway.
    pub writes: WriteOrder,
}

/// The writes of one request on one gateway, run one after the other in the order they were
/// asked for: a fast answer's record is never overwritten by its own `pending` record. It also
/// remembers the revision and state this gateway last wrote, so that the next write is one
/// compare-and-set on that revision, with no read first; the read comes only when someone
/// else wrote in between.
#[derive(Clone, Debug, Default)]
pub struct WriteOrder {
    tail: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    written: Arc<std::sync::Mutex<Option<Written>>>,
}

/// What this gateway last wrote of one request, and the revision it got.
#[derive(Clone, Debug)]
struct Written {
    revision: u64,
    state: State,
}

impl WriteOrder {
    /// Runs `write` once every write asked for before it has ended. Each write is bounded by
    /// its own timeouts, so the chain is too.
    fn then(&self, write: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut last = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let before = last.take();
        *last = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            write.await;
        }));
    }

    fn last_written(&self) -> Option<Written> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn wrote(&self, revision: u64, state: &State) {
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(Written {
            revision,
            state: state.clone(),
        });
    }
}

impl Origin {
    fn record(&self, state: State) -> Record {
        Record {
            v: RECORD_VERSION,
            network: self.network.clone(),
            key: self.key.clone(),
            meta: self.meta.clone(),
            identity: self.identity.clone(),
            state,
        }
    }
}

/// A `pending` record reserved by [`Results::reserve_pending`].
#[derive(Debug)]
pub struct Reservation {
    deadline: oneshot::Sender<u64>,
    written: oneshot::Receiver<()>,
}

impl Reservation {
    /// Writes the record, owned until `deadline_ms`, once the stream accepted the request. The
    /// returned channel closes when the write has ended (written, or failed and logged: its own
    /// timeout bounds it).
    pub fn write(self, deadline_ms: u64) -> oneshot::Receiver<()> {
        // A failed send drops the write (its task has ended), which closes `written` too.
        let _ = self.deadline.send(deadline_ms);
        self.written
    }
}

/// A result being replayed: the image and what the request asked for.
#[derive(Debug)]
pub struct Replay {
    /// The network.
    pub network: String,
    /// The image key.
    pub key: String,
    /// The request's `meta`.
    pub meta: BTreeMap<String, String>,
    /// The image; its body streams from the archive, or from the resolver after a takeover.
    pub image: Image,
    /// The token's in-flight slot when the request was run again; held until the body is sent.
    pub held: Option<crate::auth::InFlight>,
}

/// The results bucket of one gateway.
#[derive(Debug)]
pub struct Results {
    /// The bucket; replaced when it has to be opened again (see [`Results::reopen`]).
    kv: std::sync::RwLock<kv::Store>,
    js: jetstream::Context,
    settings: ResultSettings,
    /// When the bucket was last opened again.
    reopened: std::sync::Mutex<Option<Instant>>,
    client: async_nats::Client,
    instance: String,
    /// This process's random id, drawn at start ([`State::Pending`]'s `incarnation`).
    incarnation: String,
    archive: Option<Arc<Archive>>,
    timeout: Duration,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn unknown(id: &str) -> Failure {
    Failure::new(
        ErrorCode::UnknownRequest,
        format!("no result is recorded for request {id:?}: unknown, expired, or not yours"),
    )
}

fn unavailable(why: impl std::fmt::Display) -> Failure {
    Failure::new(
        ErrorCode::Unavailable,
        format!("the results bucket cannot be used: {why}"),
    )
}

/// Answers on `instance`'s liveness subject until `stop` fires: other gateways take over this
/// gateway's pending requests once it stops answering, so this runs supervised. Ends early
/// (an error) when the subscription ends or an answer cannot be sent within `timeout`.
pub async fn answer_liveness(
    client: async_nats::Client,
    instance: String,
    incarnation: String,
    timeout: Duration,
    stop: CancellationToken,
) -> Result<(), ResultsError> {
    let mut pings = tokio::time::timeout(
        timeout,
        client.subscribe(protocol::gateway_subject(&instance)),
    )
    .await
    .map_err(|_| ResultsError::LivenessTimeout(timeout))?
    .map_err(ResultsError::Liveness)?;
    let name = Bytes::from(instance);
    loop {
        let ping = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ping = pings.next() => ping,
        };
        let Some(ping) = ping else {
            return Err(ResultsError::LivenessEnded);
        };
        if let Some(reply) = ping.reply {
            let headers = Liveness {
                incarnation: incarnation.clone(),
            }
            .to_headers();
            let answer = client.publish_with_headers(reply, headers, name.clone());
            tokio::time::timeout(timeout, answer)
                .await
                .map_err(|_| ResultsError::LivenessTimeout(timeout))?
                .map_err(ResultsError::LivenessAnswer)?;
        }
    }
}

impl Results {
    /// Opens the bucket, creating it when missing. Every NATS call waits at most `timeout`.
    pub async fn open(
        client: async_nats::Client,
        instance: String,
        settings: &ResultSettings,
        archive: Option<Arc<Archive>>,
        timeout: Duration,
    ) -> Result<Arc<Results>, ResultsError> {
        let js = jetstream::new(client.clone());
        let (kv, _) = get_or_create(&js, settings, timeout).await?;
        Ok(Arc::new(Results {
            kv: std::sync::RwLock::new(kv),
            js,
            settings: settings.clone(),
            reopened: std::sync::Mutex::new(None),
            client,
            instance,
            incarnation: protocol::random_token(),
            archive,
            timeout,
        }))
    }

    fn kv(&self) -> kv::Store {
        self.kv
            .read()
            .expect("results bucket lock poisoned")
            .clone()
    }

    /// After the bucket failed a read or a write: it may be gone (JetStream's store was wiped),
    /// so it is opened again, created when missing, at most once per [`REOPEN_EVERY`].
    async fn reopen(&self) {
        {
            let mut last = self.reopened.lock().expect("reopen lock poisoned");
            if last.is_some_and(|at| at.elapsed() < REOPEN_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match get_or_create(&self.js, &self.settings, self.timeout).await {
            Ok((kv, created)) => {
                if created {
                    metrics::counter!("imgfetch_gateway_results_bucket_recreated_total")
                        .increment(1);
                    tracing::warn!(
                        bucket = self.settings.bucket,
                        "the results bucket was gone; created it again"
                    );
                }
                *self.kv.write().expect("results bucket lock poisoned") = kv;
            }
            Err(err) => tracing::warn!(%err, "cannot open the results bucket again"),
        }
    }

    /// Reserves the `pending` record of a fresh request, before it is published: the record
    /// is written, owned by this gateway until the deadline sent on the returned channel, once
    /// the stream accepted it (nothing is written if the channel is dropped). The request's
    /// later writes wait for it, so its outcome is never overwritten by its own `pending`.
    ///
    /// The record replaces whatever its id recorded: an id used again (after the stream's
    /// de-duplication window) must not replay the earlier request's outcome.
    pub fn reserve_pending(self: &Arc<Self>, origin: &Origin) -> Reservation {
        let (tx, rx) = oneshot::channel::<u64>();
        let (written_tx, written) = oneshot::channel::<()>();
        let (results, origin_c) = (self.clone(), origin.clone());
        origin.writes.then(async move {
            // Dropped at the end, written or not: whoever waits goes on either way.
            let _written = written_tx;
            let Ok(deadline_ms) = rx.await else { return };
            let record = origin_c.record(State::Pending {
                owner: results.instance.clone(),
                incarnation: results.incarnation.clone(),
                deadline_ms,
                attempt: origin_c.attempt,
                delivering: false,
            });
            let value = Bytes::from(serde_json::to_vec(&record).expect("records serialise"));
            let id = &origin_c.id;
            match tokio::time::timeout(results.timeout, results.kv().put(id, value)).await {
                Ok(Ok(revision)) => origin_c.writes.wrote(revision, &record.state),
                Ok(Err(err)) => {
                    record_failed(id, &err.to_string());
                    results.reopen().await;
                }
                Err(_) => record_failed(id, "timed out"),
            }
        });
        Reservation {
            deadline: tx,
            written,
        }
    }

    /// Records where `origin` stands, after its earlier writes on this gateway, unless the
    /// record holds something newer ([`State::replaceable_by`]): a revision compare-and-set,
    /// retried a few times when another gateway writes in between.
    pub fn record(self: &Arc<Self>, origin: &Origin, mut state: State) {
        match &mut state {
            State::Pending { attempt, .. }
            | State::Done { attempt, .. }
            | State::Unarchived { attempt, .. }
            | State::Failed { attempt, .. } => *attempt = origin.attempt,
        }
        let record = origin.record(state);
        let (results, id, writes) = (self.clone(), origin.id.clone(), origin.writes.clone());
        origin
            .writes
            .then(async move { results.write_over(&id, &record, &writes).await });
    }

    /// Writes `record` over what `id` holds unless that is newer. The happy path is one
    /// compare-and-set on the revision this gateway wrote last; a record someone else changed
    /// since is read and compared first.
    async fn write_over(&self, id: &str, record: &Record, writes: &WriteOrder) {
        let value = Bytes::from(serde_json::to_vec(record).expect("records serialise"));
        if let Some(last) = writes.last_written() {
            if !last.state.replaceable_by(&record.state) {
                metrics::counter!("imgfetch_gateway_result_stale_writes_total").increment(1);
                tracing::debug!(id, "a newer record is kept over a late one");
                return;
            }
            let kv = self.kv();
            let update = kv.update(id, value.clone(), last.revision);
            match tokio::time::timeout(self.timeout, update).await {
                Ok(Ok(revision)) => return writes.wrote(revision, &record.state),
                // Someone else wrote: read, compare, and write below.
                Ok(Err(err)) if err.kind() == UpdateErrorKind::WrongLastRevision => {}
                Ok(Err(err)) => {
                    record_failed(id, &err.to_string());
                    return self.reopen().await;
                }
                Err(_) => return record_failed(id, "timed out"),
            }
        }
        for _ in 0..CAS_TRIES {
            let kv = self.kv();
            let entry = match tokio::time::timeout(self.timeout, kv.entry(id)).await {
                Ok(Ok(entry)) => entry,
                Ok(Err(err)) => {
                    record_failed(id, &err.to_string());
                    return self.reopen().await;
                }
                Err(_) => return record_failed(id, "timed out"),
            };
            let write = match entry {
                None => Write::Create,
                Some(entry) => {
                    let newer = entry.operation == Operation::Put
                        && serde_json::from_slice::<Record>(&entry.value)
                            .is_ok_and(|old| !old.state.replaceable_by(&record.state));
                    if newer {
                        metrics::counter!("imgfetch_gateway_result_stale_writes_total")
                            .increment(1);
                        tracing::debug!(id, "a newer record is kept over a late one");
                        return;
                    }
                    Write::Update(entry.revision)
                }
            };
            let err = match write {
                Write::Create => {
                    match tokio::time::timeout(self.timeout, kv.create(id, value.clone())).await {
                        Ok(Ok(revision)) => return writes.wrote(revision, &record.state),
                        Ok(Err(err)) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                            continue
                        }
                        Ok(Err(err)) => err.to_string(),
                        Err(_) => return record_failed(id, "timed out"),
                    }
                }
                Write::Update(revision) => {
                    let update = kv.update(id, value.clone(), revision);
                    match tokio::time::timeout(self.timeout, update).await {
                        Ok(Ok(revision)) => return writes.wrote(revision, &record.state),
                        Ok(Err(err)) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                            continue
                        }
                        Ok(Err(err)) => err.to_string(),
                        Err(_) => return record_failed(id, "timed out"),
                    }
                }
            };
            record_failed(id, &err);
            return self.reopen().await;
        }
        record_failed(id, "the record kept changing");
    }

    /// Records a failure.
    pub fn record_failure(self: &Arc<Self>, origin: &Origin, failure: &Failure) {
        self.record(
            origin,
            State::Failed {
                code: failure.code,
                message: failure.message.clone(),
                attempt: origin.attempt,
            },
        );
    }

    /// Records an image once its archive copy is written (or not): `image.archived` is
    /// replaced by a receiver that reports the same result after the record is written.
    pub fn record_image(
        self: &Arc<Self>,
        origin: &Origin,
        image: &mut Image,
        sha256: Option<&str>,
    ) {
        let attempt = origin.attempt;
        let unarchived = move |reason: String| State::Unarchived { reason, attempt };
        match std::mem::replace(&mut image.archived, Archived::Disabled) {
            Archived::Disabled => self.record(
                origin,
                unarchived("the gateway that fetched it archives nothing".into()),
            ),
            Archived::Failed(why) => {
                self.record(origin, unarchived(why.clone()));
                image.archived = Archived::Failed(why);
            }
            Archived::Planned { path, written } => {
                let done = State::Done {
                    content_type: image.content_type.clone(),
                    size: image.body.size(),
                    metadata: image.metadata.clone(),
                    info: Box::new(image.info.clone()),
                    archived_as: path.clone(),
                    sha256: sha256.map(|s| s.trim().to_ascii_lowercase()),
                    attempt,
                };
                // The owner delivers a stream: no takeover while it lives, however long the
                // copy takes. An inline image's copy is one bounded write, so its `pending`
                // record goes straight to the outcome (one write, not two).
                if matches!(image.body, Body::Stream(_)) {
                    self.record(
                        origin,
                        State::Pending {
                            owner: self.instance.clone(),
                            incarnation: self.incarnation.clone(),
                            deadline_ms: 0,
                            attempt,
                            delivering: true,
                        },
                    );
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (results, origin) = (self.clone(), origin.clone());
                tokio::spawn(async move {
                    let result = written.await;
                    let state = match &result {
                        Ok(Ok(())) => done,
                        Ok(Err(why)) => unarchived(why.clone()),
                        // The copy was discarded because the image itself failed part-way.
                        Err(_) => unarchived("the image did not arrive whole".into()),
                    };
                    results.record(&origin, state);
                    if let Ok(result) = result {
                        let _ = tx.send(result);
                    }
                });
                image.archived = Archived::Planned { path, written: rx };
            }
        }
    }

    /// The answer to request `id` for `client`: replayed when recorded, waited for while its
    /// owner works on it (until `until`), run again when its owner is gone or overdue.
    pub async fn fetch(
        &self,
        id: &str,
        client: &Client,
        dispatcher: &Dispatcher,
        until: Instant,
    ) -> Result<Replay, Failure> {
        loop {
            let entry = match tokio::time::timeout(self.timeout, self.kv().entry(id)).await {
                Ok(Ok(entry)) => entry,
                Ok(Err(err)) => {
                    self.reopen().await;
                    return Err(unavailable(err));
                }
                Err(_) => return Err(unavailable("no answer from NATS in time")),
            };
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                return Err(unknown(id));
            };
            let record: Record = serde_json::from_slice(&entry.value).map_err(|err| {
                Failure::new(
                    ErrorCode::Internal,
                    format!("the record of request {id:?} is unreadable: {err}"),
                )
            })?;
            // Another token's result looks exactly like no result: ids do not leak.
            if record.identity.as_deref() != client.identity() {
                return Err(unknown(id));
            }
            let (owner, incarnation, deadline_ms, attempt, delivering) = match &record.state {
                State::Done { .. } => return self.replay(id, record).await,
                State::Unarchived { reason, .. } => {
                    return Err(Failure::new(
                        ErrorCode::ResultUnavailable,
                        format!(
                            "the image was delivered but not archived ({reason}); request it \
                             again"
                        ),
                    ))
                }
                State::Failed { code, message, .. } => return Err(Failure::new(*code, message)),
                State::Pending {
                    owner,
                    incarnation,
                    deadline_ms,
                    attempt,
                    delivering,
                } => (
                    owner.clone(),
                    incarnation.clone(),
                    *deadline_ms,
                    *attempt,
                    *delivering,
                ),
            };
            // An owner delivering the image has no deadline: only its death allows a takeover.
            let overdue = !delivering && now_ms() > deadline_ms;
            // This instance name, but an earlier process (a restarted pod): gone.
            let mine = owner == self.instance;
            let predecessor = mine && !incarnation.is_empty() && incarnation != self.incarnation;
            let gone = predecessor || (!mine && !self.alive(&owner, &incarnation).await);
            if overdue || gone {
                tracing::info!(id, owner, overdue, "taking over a pending request");
                match self
                    .take_over(id, record, entry.revision, attempt, client, dispatcher)
                    .await
                {
                    Some(answer) => return answer,
                    // Another gateway changed the record first: read it again.
                    None => continue,
                }
            }
            if Instant::now() + POLL > until {
                return Err(Failure::new(
                    ErrorCode::Timeout,
                    format!("request {id:?} is still in progress; ask again later"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether gateway `owner`, in its process `incarnation`, answers on its liveness subject.
    /// "No responders" counts as gone, and so does an answer from another incarnation (a new
    /// process under the old name); a slow answer is not proof of death, nor an answer without
    /// an incarnation (an older gateway) or to a record that names none.
    async fn alive(&self, owner: &str, incarnation: &str) -> bool {
        let ask = self
            .client
            .request(protocol::gateway_subject(owner), Bytes::new());
        match tokio::time::timeout(LIVENESS_TIMEOUT, ask).await {
            Ok(Err(err)) => err.kind() != async_nats::RequestErrorKind::NoResponders,
            Ok(Ok(answer)) => match Liveness::from_headers(answer.headers.as_ref()) {
                Some(Liveness {
                    incarnation: answered,
                }) if !incarnation.is_empty() => answered == incarnation,
                _ => true,
            },
            Err(_) => true,
        }
    }

    /// This process's incarnation, which its liveness answers carry.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// Claims the pending record at `revision` and runs the request again; `None` if another
    /// gateway changed the record first.
    async fn take_over(
        &self,
        id: &str,
        record: Record,
        revision: u64,
        attempt: u32,
        client: &Client,
        dispatcher: &Dispatcher,
    ) -> Option<Result<Replay, Failure>> {
        let held = match client.begin(&record.network) {
            Ok(held) => held,
            Err(f) => return Some(Err(f)),
        };
        let attempt = attempt + 1;
        let deadline = Instant::now() + dispatcher.request_timeout();
        let deadline_ms = now_ms() + dispatcher.request_timeout().as_millis() as u64;
        let pending = |deadline_ms| {
            let claim = Record {
                state: State::Pending {
                    owner: self.instance.clone(),
                    incarnation: self.incarnation.clone(),
                    deadline_ms,
                    attempt,
                    delivering: false,
                },
                ..record.clone()
            };
            Bytes::from(serde_json::to_vec(&claim).expect("records serialise"))
        };
        let kv = self.kv();
        let claim = kv.update(id, pending(deadline_ms), revision);
        let claimed = match tokio::time::timeout(self.timeout, claim).await {
            Ok(Ok(claimed)) => claimed,
            Ok(Err(err)) if err.kind() == UpdateErrorKind::WrongLastRevision => return None,
            Ok(Err(err)) => return Some(Err(unavailable(err))),
            Err(_) => return Some(Err(unavailable("no answer from NATS in time"))),
        };
        metrics::counter!("imgfetch_gateway_result_takeovers_total").increment(1);
        let origin = Origin {
            id: id.to_owned(),
            network: record.network.clone(),
            key: record.key.clone(),
            meta: record.meta.clone(),
            identity: record.identity.clone(),
            attempt,
            writes: WriteOrder::default(),
        };
        let ticket = match dispatcher
            .resubmit(origin, &format!("{id}.retry.{attempt}"), deadline)
            .await
        {
            Ok(ticket) => ticket,
            Err(f) => {
                // Nothing runs: the claim goes back to overdue (deadline 0), so that the next
                // fetch tries again instead of waiting for a request nobody works on.
                let release = kv.update(id, pending(0), claimed);
                match tokio::time::timeout(self.timeout, release).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => record_failed(id, &err.to_string()),
                    Err(_) => record_failed(id, "timed out"),
                }
                return Some(Err(f));
            }
        };
        let outcome: Outcome = ticket.outcome().await;
        Some(outcome.map(|image| Replay {
            network: record.network,
            key: record.key,
            meta: record.meta,
            image,
            held: Some(held),
        }))
    }

    /// A `done` record's image, its bytes read from the archive as they are sent.
    async fn replay(&self, id: &str, record: Record) -> Result<Replay, Failure> {
        let State::Done {
            content_type,
            size,
            metadata,
            info,
            archived_as,
            sha256,
            ..
        } = record.state
        else {
            unreachable!("only done records are replayed");
        };
        let gone = |why: String| {
            Failure::new(
                ErrorCode::ResultUnavailable,
                format!("the archive copy at {archived_as:?} cannot be read ({why}); request the image again"),
            )
        };
        let Some(archive) = &self.archive else {
            return Err(gone("this gateway has no archive".into()));
        };
        let (found, source) =
            tokio::time::timeout(ARCHIVE_READ_TIMEOUT, archive.read(&archived_as))
                .await
                .map_err(|_| gone(format!("no answer within {ARCHIVE_READ_TIMEOUT:?}")))?
                .map_err(&gone)?;
        let source = bounded(source, ARCHIVE_READ_TIMEOUT);
        if found != size {
            return Err(gone(format!(
                "it holds {found} bytes, {size} were recorded"
            )));
        }
        let (tx, written) = tokio::sync::oneshot::channel();
        let _ = tx.send(Ok(()));
        Ok(Replay {
            network: record.network,
            key: record.key.clone(),
            meta: record.meta,
            image: Image {
                id: id.to_owned(),
                key: record.key,
                content_type,
                body: Body::Stored(Box::new(Stored::new(size, sha256, source))),
                metadata,
                info: *info,
                archived: Archived::Planned {
                    path: archived_as.clone(),
                    written,
                },
            },
            held: None,
        })
    }
}

/// How a record is written: created, or replacing the revision read.
enum Write {
    Create,
    Update(u64),
}

/// The bucket, created when missing; `true` if this call created it.
async fn get_or_create(
    js: &jetstream::Context,
    settings: &ResultSettings,
    timeout: Duration,
) -> Result<(kv::Store, bool), ResultsError> {
    let bucket = settings.bucket.clone();
    let timed_out = || ResultsError::Timeout {
        bucket: bucket.clone(),
        timeout,
    };
    let failed = |source: async_nats::Error| ResultsError::Bucket {
        bucket: bucket.clone(),
        source,
    };
    match tokio::time::timeout(timeout, js.get_key_value(bucket.clone())).await {
        Err(_) => Err(timed_out()),
        Ok(Ok(kv)) => {
            let max_age = kv.stream.cached_info().config.max_age;
            if max_age != settings.ttl {
                tracing::warn!(
                    bucket,
                    bucket_ttl_ms = max_age.as_millis() as u64,
                    result_ttl_ms = settings.ttl.as_millis() as u64,
                    "the results bucket exists with another TTL; its entries expire after \
                     the bucket's"
                );
            }
            Ok((kv, false))
        }
        Ok(Err(err)) if err.kind() == KeyValueErrorKind::GetBucket => {
            let config = kv::Config {
                bucket: bucket.clone(),
                description: "imgfetch: the outcome of each request, by id".into(),
                history: 1,
                max_age: settings.ttl,
                num_replicas: settings.replicas,
                ..Default::default()
            };
            match tokio::time::timeout(timeout, js.create_key_value(config)).await {
                Err(_) => Err(timed_out()),
                Ok(Ok(kv)) => Ok((kv, true)),
                // Another gateway may have created it meanwhile.
                Ok(Err(create)) => {
                    match tokio::time::timeout(timeout, js.get_key_value(bucket.clone())).await {
                        Err(_) => Err(timed_out()),
                        Ok(Ok(kv)) => Ok((kv, false)),
                        Ok(Err(_)) => Err(failed(create.into())),
                    }
                }
            }
        }
        Ok(Err(err)) => Err(failed(err.into())),
    }
}

/// `source` ended with an error when a part takes longer than `per_part` to come.
fn bounded(
    source: futures::stream::BoxStream<'static, Result<Bytes, String>>,
    per_part: Duration,
) -> futures::stream::BoxStream<'static, Result<Bytes, String>> {
    futures::stream::unfold(Some(source), move |source| async move {
        let mut source = source?;
        match tokio::time::timeout(per_part, source.next()).await {
            Ok(Some(part)) => Some((part, Some(source))),
            Ok(None) => None,
            Err(_) => Some((
                Err(format!("the archive sent nothing for {per_part:?}")),
                None,
            )),
        }
    })
    .boxed()
}

fn record_failed(id: &str, err: &str) {
    metrics::counter!("imgfetch_gateway_result_record_failures_total").increment(1);
    tracing::warn!(id, err, "cannot record the request's result");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_flat_versioned_json() {
        let origin = Origin {
            id: "r1".into(),
            network: "harbor".into(),
            key: "a.jpg".into(),
            meta: BTreeMap::new(),
            identity: Some("ops".into()),
            attempt: 0,
            writes: WriteOrder::default(),
        };
        let record = origin.record(State::Failed {
            code: ErrorCode::NotFound,
            message: "no such key".into(),
            attempt: 0,
        });
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"v":1,"network":"harbor","key":"a.jpg","identity":"ops",
                "state":"failed","code":"not_found","message":"no such key"})
        );
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        let pending: Record = serde_json::from_str(
            r#"{"v":1,"network":"n","key":"k","state":"pending","owner":"gw1","deadline_ms":5}"#,
        )
        .unwrap();
        assert_eq!(
            pending.state,
            State::Pending {
                owner: "gw1".into(),
                incarnation: String::new(),
                deadline_ms: 5,
                attempt: 0,
                delivering: false,
            }
        );
    }

    #[test]
    fn a_late_outcome_never_replaces_a_newer_one() {
        let failed = |attempt| State::Failed {
            code: ErrorCode::Undeliverable,
            message: "late".into(),
            attempt,
        };
        let unarchived = |attempt| State::Unarchived {
            reason: "none".into(),
            attempt,
        };
        let pending = |attempt, delivering| State::Pending {
            owner: "gw".into(),
            incarnation: "a1".into(),
            deadline_ms: 1,
            attempt,
            delivering,
        };
        // A takeover (attempt 1) is not undone by the old owner's late answer (attempt 0).
        assert!(!pending(1, false).replaceable_by(&failed(0)));
        assert!(!unarchived(1).replaceable_by(&failed(0)));
        assert!(pending(0, false).replaceable_by(&failed(1)));
        // Within one attempt: pending gives way to anything, an outcome never to pending.
        assert!(pending(0, false).replaceable_by(&pending(0, true)));
        assert!(pending(0, true).replaceable_by(&failed(0)));
        assert!(!failed(0).replaceable_by(&pending(0, true)));
        assert!(unarchived(0).replaceable_by(&failed(0)));
    }
}
