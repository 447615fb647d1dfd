//! Dead letters: a request that ends without an answer is copied to the dead-letter stream, and
//! its requester, when it named a callback a resolver may answer on, hears `undeliverable`
//! instead of silence.
//!
//! | how the request ends | who copies it | `Imgfetch-Dead-Reason` | the requester hears |
//! | --- | --- | --- | --- |
//! | no `Imgfetch-Callback` | the resolver that terms it, before the term | `no_callback` | nothing: no subject to answer on |
//! | a callback `validate::callback` refuses | the resolver that terms it, before the term | `bad_callback` | nothing |
//! | delivered `max_deliver` times, never settled | whichever resolver takes the server's advisory | `max_deliveries` | `undeliverable` |
//!
//! The dead-letter stream captures the server's max-deliveries advisories itself, so one sent
//! while no resolver runs waits there. [`run`] takes them from the durable consumer all
//! resolvers share and, for each, does these steps, each bounded by [`STEP_TIMEOUT`] and safe
//! to repeat after a crash:
//!
//! 1. read the original by its sequence from the request stream (gone: it was settled or
//!    handled already, so the advisory is acked and nothing else happens);
//! 2. publish the copy with `Nats-Msg-Id: dead-<stream>-<seq>`, so a repeat is a duplicate the
//!    stream drops (and the metric counts once);
//! 3. answer the requester `undeliverable`;
//! 4. delete the original from the work queue, where it would stay forever;
//! 5. ack the advisory.
//!
//! A failed step naks the advisory with [`RETRY_DELAY`]; this or another resolver takes it again.

use crate::metric;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, consumer::PullConsumer, stream::DeleteMessageErrorKind, stream::RawMessageErrorKind,
    AckKind, ErrorCode as JsCode,
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use imgfetch_common::codec;
use imgfetch_common::message::{DeadLetter, ReplyHead, RequestHead};
use imgfetch_common::protocol::{dead_letter_subject, network_of_subject, DeadReason, ErrorCode};
use imgfetch_common::validate;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Longest any one step (a read, a publish and its ack, a delete, an ack) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed advisory waits before it is delivered again.
pub const RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long one pull for advisories waits at the server.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Advisories asked for at once.
const BATCH: usize = 16;
/// Failed pulls in a row after which [`run`] gives up, to be provisioned again.
pub const PULL_FAILURES: u32 = 3;

/// What copying and answering need: the connection, and where the requests live.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    /// The connection answers go out on.
    pub client: async_nats::Client,
    /// JetStream on that connection.
    pub js: jetstream::Context,
    /// The request stream's name.
    pub requests: String,
    /// The request stream, for reading and deleting originals.
    pub stream: jetstream::stream::Stream<()>,
    /// This resolver's instance name, sent on every answer.
    pub instance: String,
}

/// One request to copy to the dead-letter stream.
#[derive(Debug)]
pub struct Letter<'a> {
    /// Its subject, `imgfetch.req.<network>`.
    pub subject: &'a str,
    /// Its headers as published.
    pub headers: Option<&'a HeaderMap>,
    /// Its body as published.
    pub payload: &'a Bytes,
    /// Why it is dead.
    pub reason: DeadReason,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// Its sequence in the request stream.
    pub stream_seq: u64,
    /// The server's advisory, for `max_deliveries`.
    pub advisory: Option<&'a str>,
}

/// Why a dead letter could not be handled (yet).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// A step did not finish in time.
    #[error("{step} took longer than {STEP_TIMEOUT:?}")]
    Timeout {
        /// The step.
        step: &'static str,
    },
    /// The original could not be read from the request stream.
    #[error("cannot read request {seq} of the request stream: {source}")]
    Read {
        /// Its sequence.
        seq: u64,
        /// Why.
        #[source]
        source: async_nats::jetstream::stream::RawMessageError,
    },
    /// The dead-letter stream did not store the copy.
    #[error("cannot store the copy of request {seq}: {source}")]
    Copy {
        /// Its sequence.
        seq: u64,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    /// The requester's answer could not be sent.
    #[error("cannot answer request {seq}: {source}")]
    Answer {
        /// Its sequence.
        seq: u64,
        /// Why.
        #[source]
        source: async_nats::PublishError,
    },
    /// The original could not be deleted from the request stream.
    #[error("cannot delete request {seq} from the request stream: {source}")]
    Delete {
        /// Its sequence.
        seq: u64,
        /// Why.
        #[source]
        source: async_nats::jetstream::stream::DeleteMessageError,
    },
    /// The advisories could not be pulled several times in a row: the dead-letter stream or its
    /// consumer may be gone. The supervisor provisions them again and restarts the loop.
    #[error("cannot pull advisories {PULL_FAILURES} times in a row; last error: {last}")]
    Pull {
        /// The last failure.
        last: String,
    },
}

/// The parts of `io.nats.jetstream.advisory.v1.max_deliver` this module reads.
#[derive(Debug, Deserialize)]
struct Advisory {
    stream: String,
    stream_seq: u64,
    deliveries: u64,
}

async fn bounded<T>(
    step: &'static str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, DeadLetterError> {
    tokio::time::timeout(STEP_TIMEOUT, work)
        .await
        .map_err(|_| DeadLetterError::Timeout { step })
}

impl DeadLetters {
    /// Stores `letter` in the dead-letter stream, idempotently, and counts it the first time.
    pub async fn copy(&self, letter: &Letter<'_>) -> Result<(), DeadLetterError> {
        let seq = letter.stream_seq;
        let network = network_of_subject(letter.subject).unwrap_or("unknown");
        let headers = DeadLetter {
            reason: letter.reason,
            deliveries: letter.deliveries,
            stream_seq: seq,
            advisory: letter.advisory.map(str::to_owned),
        }
        .to_headers(&self.requests, letter.headers);
        let ack = bounded("storing the copy", async {
            self.js
                .publish_with_headers(
                    dead_letter_subject(network),
                    headers,
                    letter.payload.clone(),
                )
                .await?
                .await
        })
        .await?
        .map_err(|source| DeadLetterError::Copy { seq, source })?;
        if !ack.duplicate {
            tracing::warn!(
                seq,
                network,
                reason = %letter.reason,
                deliveries = letter.deliveries,
                dead_letter_seq = ack.sequence,
                "request copied to the dead-letter stream"
            );
            metrics::counter!(
                metric::DEAD_LETTERS_TOTAL,
                "reason" => letter.reason.as_str(),
                "network" => network.to_owned()
            )
            .increment(1);
        }
        Ok(())
    }

    /// Handles one max-deliveries advisory: steps 1 to 4 of the module's list.
    async fn resolve(&self, advisory: &Advisory, json: &str) -> Result<(), DeadLetterError> {
        let seq = advisory.stream_seq;
        let stream = &self.stream;
        let original = match bounded("reading the original", stream.get_raw_message(seq)).await? {
            Ok(m) => m,
            Err(err) if matches!(err.kind(), RawMessageErrorKind::NoMessageFound) => {
                tracing::debug!(seq, "request already gone; advisory done");
                return Ok(());
            }
            Err(source) => return Err(DeadLetterError::Read { seq, source }),
        };
        self.copy(&Letter {
            subject: original.subject.as_str(),
            headers: Some(&original.headers),
            payload: &original.payload,
            reason: DeadReason::MaxDeliveries,
            deliveries: advisory.deliveries,
            stream_seq: seq,
            advisory: Some(json),
        })
        .await?;
        self.answer(&original, advisory.deliveries).await?;
        match bounded("deleting the original", stream.delete_message(seq)).await? {
            Ok(_) => Ok(()),
            // Deleted by an earlier attempt, or settled meanwhile.
            Err(err)
                if matches!(err.kind(), DeleteMessageErrorKind::JetStream(e)
                    if e.error_code() == JsCode::NO_MESSAGE_FOUND
                        || e.error_code() == JsCode::STREAM_MESSAGE_DELETE_FAILED) =>
            {
                Ok(())
            }
            Err(source) => Err(DeadLetterError::Delete { seq, source }),
        }
    }

    /// Sends `undeliverable` on the original's callback, when it has one a resolver may use.
    async fn answer(
        &self,
        original: &jetstream::message::StreamMessage,
        deliveries: u64,
    ) -> Result<(), DeadLetterError> {
        let seq = original.sequence;
        let request = RequestHead::from_headers(Some(&original.headers));
        let Some(callback) = request.callback.filter(|c| validate::callback(c).is_ok()) else {
            return Ok(());
        };
        // The id the requester knows: the body's, else the de-duplication id.
        let id = codec::decode(&original.payload)
            .ok()
            .map(|r| r.id)
            .or(request.msg_id)
            .filter(|id| validate::id(id).is_ok());
        let headers = ReplyHead::error(id.as_deref(), ErrorCode::Undeliverable)
            .from_resolver(
                network_of_subject(original.subject.as_str()).unwrap_or_default(),
                &self.instance,
            )
            .to_headers();
        let body = format!(
            "delivered to resolvers {deliveries} times without an answer; kept as a dead letter \
             (request {seq} of stream {})",
            self.requests
        );
        bounded(
            "answering the requester",
            self.client
                .publish_with_headers(callback, headers, body.into()),
        )
        .await?
        .map_err(|source| DeadLetterError::Answer { seq, source })
    }
}

/// Takes max-deliveries advisories from `consumer` and handles each, until `shutdown` fires.
/// Returns an error after [`PULL_FAILURES`] failed pulls in a row, so that whoever runs it can
/// provision the stream and consumer again (they may have been deleted).
pub async fn run(
    dead: Arc<DeadLetters>,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) -> Result<(), DeadLetterError> {
    let mut failures = 0u32;
    loop {
        let pull = consumer
            .fetch()
            .max_messages(BATCH)
            .expires(PULL_EXPIRES)
            .messages();
        let batch = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            batch = tokio::time::timeout(STEP_TIMEOUT, pull) => batch,
        };
        let failure = match batch {
            Ok(Ok(mut batch)) => loop {
                let next = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    next = tokio::time::timeout(PULL_EXPIRES + STEP_TIMEOUT, batch.next()) => next,
                };
                match next {
                    Ok(Some(Ok(message))) => {
                        failures = 0;
                        handle(&dead, message).await;
                    }
                    Ok(Some(Err(err))) => {
                        tracing::warn!(%err, "advisory pull failed");
                        break Some(err.to_string());
                    }
                    Ok(None) | Err(_) => break None,
                }
            },
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => Some(format!(
                "pulling advisories took longer than {STEP_TIMEOUT:?}"
            )),
        };
        let Some(last) = failure else {
            failures = 0;
            continue;
        };
        failures += 1;
        if failures >= PULL_FAILURES {
            return Err(DeadLetterError::Pull { last });
        }
        tracing::warn!(error = last, "cannot pull advisories; retrying in 1 s");
        if pause(&shutdown).await {
            return Ok(());
        }
    }
}

/// Sleeps a second; true if `shutdown` fired meanwhile.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
    }
}

/// Handles one advisory message and settles it.
async fn handle(dead: &DeadLetters, message: jetstream::Message) {
    let settle = match serde_json::from_slice::<Advisory>(&message.payload) {
        Err(err) => {
            tracing::warn!(%err, subject = %message.subject, "not a max-deliveries advisory; dropped");
            AckKind::Term
        }
        Ok(advisory) if advisory.stream != dead.requests => {
            tracing::warn!(
                stream = advisory.stream,
                "advisory about another stream; dropped"
            );
            AckKind::Term
        }
        Ok(advisory) => {
            // Header values hold one line; the server may indent its JSON.
            let json = serde_json::from_slice::<serde_json::Value>(&message.payload)
                .map(|v| v.to_string())
                .unwrap_or_default();
            match dead.resolve(&advisory, &json).await {
                Ok(()) => AckKind::Ack,
                Err(err) => {
                    tracing::warn!(%err, seq = advisory.stream_seq, "dead letter not handled; retrying");
                    AckKind::Nak(Some(RETRY_DELAY))
                }
            }
        }
    };
    match bounded("settling the advisory", message.ack_with(settle)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%err, "cannot settle an advisory; it will come again"),
        Err(err) => tracing::warn!(%err, "cannot settle an advisory; it will come again"),
    }
}
