//! Answers requests that no stream stored, so that someone publishing by hand to an unknown
//! network gets `unknown_network` on their callback instead of silence.
//!
//! Every gateway subscribes to `imgfetch.req.>`, the hand publishers' request subjects, in one
//! queue group, so exactly one sees each such request (the gateways' own requests go to
//! `imgfetch.gwreq.>` and never reach it). It answers only when the stream, read fresh, does
//! not capture the subject: a stored request is left to the resolvers, and never gets two
//! answers. Likewise it answers a request larger than the stream's message limit, which the
//! stream refuses without a word.

use std::sync::Arc;
use std::sync::PoisonError;
use std::time::Duration;

use futures::StreamExt;
use imgfetch_common::message::{ReplyHead, RequestHead};
use imgfetch_common::protocol::{
    network_of_subject, ErrorCode, Origin, REPLY_PREFIX, REQUEST_PREFIX, SENTINEL_QUEUE_GROUP,
};
use imgfetch_common::supervise::Supervisor;
use imgfetch_common::{codec, validate};
use tokio_util::sync::CancellationToken;

use crate::queue::dispatch::Dispatcher;

/// Longest subscribing, or sending an answer, may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the sentinel stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// Subscribing failed.
    #[error("cannot subscribe to the requests: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// Subscribing did not finish in time.
    #[error("subscribing to the requests timed out after {NATS_TIMEOUT:?}")]
    SubscribeTimeout,
    /// The subscription ended.
    #[error("the request subscription ended")]
    Ended,
}

/// Starts the sentinel under `supervisor` as `sentinel`; it runs until `shutdown`. The first
/// subscription is made before this returns.
pub async fn start(
    client: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
    supervisor: &Supervisor,
) -> Result<(), SentinelError> {
    let first = Arc::new(std::sync::Mutex::new(Some(subscribe(&client).await?)));
    supervisor.spawn("sentinel", move || {
        let sub = first.lock().unwrap_or_else(PoisonError::into_inner).take();
        run(client.clone(), dispatcher.clone(), shutdown.clone(), sub)
    });
    Ok(())
}

async fn subscribe(client: &async_nats::Client) -> Result<async_nats::Subscriber, SentinelError> {
    let subscribe = client.queue_subscribe(
        format!("{REQUEST_PREFIX}.>"),
        SENTINEL_QUEUE_GROUP.to_owned(),
    );
    Ok(tokio::time::timeout(NATS_TIMEOUT, subscribe)
        .await
        .map_err(|_| SentinelError::SubscribeTimeout)??)
}

/// Answers until `shutdown`, on `sub` or on a new subscription.
async fn run(
    client: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
    sub: Option<async_nats::Subscriber>,
) -> Result<(), SentinelError> {
    let mut sub = match sub {
        Some(sub) => sub,
        None => subscribe(&client).await?,
    };
    loop {
        {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = sub.next() => match next { Some(m) => m, None => return Err(SentinelError::Ended) },
            };
            let Some(callback) = RequestHead::from_headers(msg.headers.as_ref()).callback else {
                continue;
            };
            if validate::callback(&callback).is_err() {
                continue;
            }
            // A gateway's callback on a hand-published request is never answered, here or by
            // a resolver (docs/SECURITY.md, provenance); the gateway role may not publish there.
            if callback.starts_with(&format!("{REPLY_PREFIX}.")) {
                continue;
            }
            let network = network_of_subject(&msg.subject).unwrap_or_default();
            let (code, text) = if validate::network(network).is_err() {
                (
                    ErrorCode::InvalidRequest,
                    format!("subject {:?} names no valid network", msg.subject.as_str()),
                )
            } else {
                match dispatcher
                    .directory()
                    .exists_for(Origin::Hand, network)
                    .await
                {
                    Ok(true) => match dispatcher.directory().max_message_size().await {
                        // The stream refuses what is over its limit, without telling a core
                        // publisher; tell them here.
                        Some(limit) if stored_size(&msg) > limit => (
                            ErrorCode::InvalidRequest,
                            format!(
                                "request of {} bytes is over the queue's limit of {limit} bytes",
                                msg.length
                            ),
                        ),
                        _ => continue,
                    },
                    Ok(false) => (
                        ErrorCode::UnknownNetwork,
                        format!("no resolver has registered network {network:?}"),
                    ),
                    // When JetStream cannot be read we cannot tell whether it stored the request.
                    Err(_) => continue,
                }
            };
            let id = codec::decode(&msg.payload)
                .ok()
                .map(|r| r.id)
                .filter(|id| validate::id(id).is_ok());
            let headers = ReplyHead::error(id.as_deref(), code).to_headers();
            tracing::info!(subject = msg.subject.as_str(), ?id, %code, "answered a request no stream captured");
            let send = client.publish_with_headers(callback, headers, text.into());
            match tokio::time::timeout(NATS_TIMEOUT, send).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(%err, "sentinel reply failed"),
                Err(_) => tracing::debug!("sentinel reply not sent in time"),
            }
        }
    }
}

/// Size of a message as JetStream counts it against `max_msg_size`: headers and payload.
fn stored_size(msg: &async_nats::Message) -> usize {
    msg.length - msg.subject.len() - msg.reply.as_ref().map_or(0, |r| r.len())
}
