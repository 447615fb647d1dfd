//! A result asked for by id, from any gateway: replayed from its record (the bytes from the
//! archive), waited for while its owner works on it, or taken over when its owner is gone or
//! overdue and run again through the dispatcher.

use futures::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use bytes::Bytes;
use imgfetch_common::protocol::ErrorCode;
use tokio::time::Instant;

use crate::archive::Archived;
use crate::auth::Client;
use crate::failure::Failure;
use crate::image::outcome::{Body, Image, Outcome, Stored};
use crate::metric;
use crate::queue::dispatch::Dispatcher;
use crate::results::{
    bounded_stream, now_ms, record_failed, unavailable, unknown, Origin, Record, Results, State,
    WriteOrder,
};

/// How often a fetch reads a `pending` record again while its owner works on it.
const POLL: Duration = Duration::from_millis(250);
/// Longest a replay waits for the archive to open the copy, or for each part of it.
const ARCHIVE_READ_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The answer to request `id` for `client`: replayed when recorded, waited for while its owner
/// works on it (until `until`), run again when its owner is gone or overdue.
pub async fn fetch(
    results: &Results,
    id: &str,
    client: &Client,
    dispatcher: &Dispatcher,
    until: Instant,
) -> Result<Replay, Failure> {
    results.fetch(id, client, dispatcher, until).await
}

impl Results {
    /// The answer to request `id` for `client`: replayed when recorded, waited for while its
    /// owner works on it (until `until`), run again when its owner is gone or overdue.
    async fn fetch(
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
        metrics::counter!(metric::RESULT_TAKEOVERS_TOTAL).increment(1);
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
                .map_err(|e| gone(e.to_string()))?;
        let source = bounded_stream(
            source.map_err(|e| e.to_string()).boxed(),
            ARCHIVE_READ_TIMEOUT,
        );
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
