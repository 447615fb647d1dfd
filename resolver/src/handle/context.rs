//! What every step of handling a request shares: the [`Context`] of a network's handlers, the
//! [`Lease`] a request holds while it is worked on, the [`Decision`] taken for it and how it is
//! [`Settle`]d, and `bounded` waits on the connection.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use imgfetch_common::message::ReplyHead;

use crate::store::{Body, Store};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a handler needs besides the message.
#[derive(Clone, Debug)]
pub struct Context {
    /// The NATS connection replies and acks go out on.
    pub client: async_nats::Client,
    /// JetStream on that connection, for settling messages.
    pub js: jetstream::Context,
    /// The network this handler serves.
    pub network: String,
    /// This resolver's instance name, sent on every reply.
    pub instance: String,
    /// The zone, if the resolver names one: its flow subjects carry it.
    pub zone: Option<String>,
    /// The JetStream API prefix pulls are sent under: `$JS.API`, or `$JS.<domain>.API`.
    pub api_prefix: String,
    /// That network's store.
    pub store: Store,
    /// Largest image served at all.
    pub max_image_bytes: u64,
    /// Largest image sent inline.
    pub max_inline_bytes: u64,
    /// The server's `max_payload`: the largest message, headers included.
    pub max_payload: u64,
    /// Bytes per chunk of a streamed image.
    pub chunk_bytes: u64,
    /// How long a stream waits for its receiver.
    pub stream_idle: Duration,
    /// The consumer's ack wait; a stream sends progress acks well within it.
    pub ack_wait: Duration,
    /// Attempts at a failing store before giving up; never more than the consumer's
    /// `max_deliver`, after which the server would stop redelivering without an answer.
    pub store_attempts: u32,
    /// First retry delay.
    pub retry_delay: Duration,
    /// Longest retry delay.
    pub retry_delay_max: Duration,
    /// Longest single read.
    pub store_timeout: Duration,
    /// Where requests that cannot be answered are copied before they are termed.
    pub dead_letters: std::sync::Arc<super::dlq::DeadLetters>,
    /// What this network's requests ended in, for `nats micro stats`.
    pub counts: std::sync::Arc<crate::service::Counts>,
    /// Fired when the shutdown grace period runs out: requests still in hand are given back
    /// (nak) for another resolver to take at once.
    pub abandon: tokio_util::sync::CancellationToken,
    /// Permits for streamed answers in progress, shared by every network of the resolver
    /// (`--max-streams`).
    pub streams: std::sync::Arc<Semaphore>,
}

/// What a request holds while it is worked on: one of the resolver's slots and a share of its
/// network's pull credit. A streamed answer gives both back before it waits on its receiver,
/// and holds one of the resolver's stream permits instead, so that receivers that read slowly
/// hold nothing that other requests of the zone need (docs/SECURITY.md, slow clients).
#[derive(Default)]
pub struct Lease {
    slot: Option<OwnedSemaphorePermit>,
    credit: Option<Box<dyn FnOnce() + Send>>,
}

impl Lease {
    /// A lease of `slot`; `credit` gives the network's pull credit back (called once).
    pub fn new(slot: OwnedSemaphorePermit, credit: impl FnOnce() + Send + 'static) -> Lease {
        Lease {
            slot: Some(slot),
            credit: Some(Box::new(credit)),
        }
    }

    /// Gives the slot and the credit back now.
    pub fn release(&mut self) {
        drop(self.slot.take());
        if let Some(credit) = self.credit.take() {
            credit();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// Waits for a permit of `semaphore`, telling JetStream every `progress_every` that `message`
/// is in progress, so it is not redelivered while it waits.
pub(crate) async fn wait_for_permit(
    semaphore: &std::sync::Arc<Semaphore>,
    message: &jetstream::Message,
    progress_every: Duration,
    network: &str,
) -> OwnedSemaphorePermit {
    loop {
        tokio::select! {
            permit = semaphore.clone().acquire_owned() => {
                return permit.expect("the permit semaphores are never closed");
            }
            _ = tokio::time::sleep(progress_every) => {
                match tokio::time::timeout(PUBLISH_TIMEOUT, message.ack_with(AckKind::Progress)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::debug!(network, %err, "progress ack failed"),
                    Err(_) => tracing::debug!(network, "progress ack timed out"),
                }
            }
        }
    }
}

/// A reply to send on the callback subject.
#[derive(Debug)]
pub struct Reply {
    /// Headers, status included.
    pub headers: HeaderMap,
    /// Image bytes or an error message.
    pub body: Bytes,
}

/// How the message is settled once any reply is out.
#[derive(Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done.
    Ack,
    /// Try again later.
    Nak(Duration),
    /// Done, and never redeliver.
    Term,
}

/// The decision for one message, before anything is sent.
#[derive(Debug)]
pub struct Decision {
    /// Where the reply goes, when there is a callback and a reply.
    pub reply: Option<(String, Reply)>,
    /// How to settle.
    pub settle: Settle,
    /// An image to stream instead of a reply; the stream decides how to settle.
    pub stream: Option<Outgoing>,
}

/// Longest a reply, or a settle, may wait to be handed to the connection.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the flush between a reply and its ack may take.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a message was left unsettled, for JetStream to redeliver.
#[derive(Debug, thiserror::Error)]
pub enum Unsettled {
    /// The reply, or the settle, was not taken by the connection in time.
    #[error("{0} was not sent within {PUBLISH_TIMEOUT:?}")]
    PublishTimeout(&'static str),
    /// The reply was not written out in time.
    #[error("the reply was not flushed within {FLUSH_TIMEOUT:?}")]
    FlushTimeout,
    /// The reply could not be written out.
    #[error("the reply could not be flushed: {0}")]
    Flush(#[source] async_nats::client::FlushError),
    /// The connection was replaced between the reply and the ack: the reply may be lost.
    #[error("the connection to NATS was re-established after the reply was sent")]
    Reconnected,
}

/// `fut` (a publish, an ack, a subscribe) bounded by [`PUBLISH_TIMEOUT`]; `what` names it in the
/// error.
pub(crate) async fn bounded<T, E: Into<async_nats::Error>>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, async_nats::Error> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, fut).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Unsettled::PublishTimeout(what).into()),
    }
}

/// An image to send as a chunked transfer ([`chunks`](super::chunks)).
#[derive(Debug)]
pub struct Outgoing {
    /// The request id.
    pub id: String,
    /// Where the answer goes.
    pub callback: String,
    /// The head, as for an inline `ok` reply; sending adds how the chunks follow.
    pub head: ReplyHead,
    /// The image's size.
    pub size: u64,
    /// The first bytes, already read.
    pub first: Bytes,
    /// Where the rest is read from.
    pub body: Body,
}
