//! The bucket: opened (created when missing) and opened again after a failure, and the
//! compare-and-set writes of records.

use std::sync::Arc;
use std::sync::PoisonError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, context::KeyValueErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use imgfetch_common::protocol::{self, ErrorCode};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::archive::{Archive, Archived};
use crate::failure::Failure;
use crate::image::outcome::{Body, Image};
use crate::metric;

use super::record::{Origin, Record, State, WriteOrder};
use super::{ResultSettings, ResultsError, CAS_TRIES, REOPEN_EVERY};

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

/// The results bucket of one gateway.
#[derive(Debug)]
pub struct Results {
    /// The bucket; replaced when it has to be opened again (see [`Results::reopen`]).
    pub(crate) kv: std::sync::RwLock<kv::Store>,
    pub(crate) js: jetstream::Context,
    pub(crate) settings: ResultSettings,
    /// When the bucket was last opened again.
    pub(crate) reopened: std::sync::Mutex<Option<Instant>>,
    pub(crate) client: async_nats::Client,
    pub(crate) instance: String,
    /// This process's random id, drawn at start ([`State::Pending`]'s `incarnation`).
    pub(crate) incarnation: String,
    pub(crate) archive: Option<Arc<Archive>>,
    pub(crate) timeout: Duration,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

pub(crate) fn unknown(id: &str) -> Failure {
    Failure::new(
        ErrorCode::UnknownRequest,
        format!("no result is recorded for request {id:?}: unknown, expired, or not yours"),
    )
}

pub(crate) fn unavailable(why: impl std::fmt::Display) -> Failure {
    Failure::new(
        ErrorCode::Unavailable,
        format!("the results bucket cannot be used: {why}"),
    )
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

    pub(crate) fn kv(&self) -> kv::Store {
        self.kv
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After the bucket failed a read or a write: it may be gone (JetStream's store was wiped),
    /// so it is opened again, created when missing, at most once per [`REOPEN_EVERY`].
    pub(crate) async fn reopen(&self) {
        {
            let mut last = self.reopened.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < REOPEN_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match get_or_create(&self.js, &self.settings, self.timeout).await {
            Ok((kv, created)) => {
                if created {
                    metrics::counter!(metric::RESULTS_BUCKET_RECREATED_TOTAL).increment(1);
                    tracing::warn!(
                        bucket = self.settings.bucket,
                        "the results bucket was gone; created it again"
                    );
                }
                *self.kv.write().unwrap_or_else(PoisonError::into_inner) = kv;
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
                metrics::counter!(metric::RESULT_STALE_WRITES_TOTAL).increment(1);
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
                        metrics::counter!(metric::RESULT_STALE_WRITES_TOTAL).increment(1);
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
                self.record(origin, unarchived(why.to_string()));
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
                        Ok(Err(why)) => unarchived(why.to_string()),
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

    /// This process's incarnation, which its liveness answers carry.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
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
pub(crate) fn bounded_stream(
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

pub(crate) fn record_failed(id: &str, err: &str) {
    metrics::counter!(metric::RESULT_RECORD_FAILURES_TOTAL).increment(1);
    tracing::warn!(id, err, "cannot record the request's result");
}
