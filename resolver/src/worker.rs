//! The pull loop of one network: take as many requests as there are free slots, hand each to
//! [`handler::handle`](crate::handler::handle), repeat until shutdown.
//!
//! Pulling in bounded batches, only for free slots, means a resolver never holds a request it is
//! not working on, so a stopping resolver leaves nothing stranded in its client buffer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{self, Context};

/// How long one pull waits for requests before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Most requests taken in one pull.
const MAX_BATCH: usize = 64;

/// Runs the pull loop until `shutdown` fires. Handlers run on `tracker`, so the caller can wait
/// for them to finish.
pub async fn run(
    ctx: Arc<Context>,
    consumer: PullConsumer,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        // Take what is waiting right away; only when nothing is, wait for one request while
        // holding a single slot, so idle slots never sit reserved by a long poll.
        let mut batch = match pull(&consumer, permits.len(), false).await {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!(network = ctx.network, %err, "pull failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut first_message = batch.next().await;
        if first_message.is_none() {
            permits.truncate(1);
            match pull(&consumer, 1, true).await {
                Ok(mut b) => {
                    // Not interrupted by shutdown: a message the server has already sent would
                    // otherwise sit unhandled until its ack wait ran out. The poll ends by
                    // itself within PULL_EXPIRES; the timeout guards a dropped connection.
                    first_message = tokio::time::timeout(PULL_EXPIRES * 3, b.next())
                        .await
                        .ok()
                        .flatten();
                    batch = b;
                }
                Err(err) => {
                    tracing::warn!(network = ctx.network, %err, "pull failed; retrying");
                    continue;
                }
            }
        }
        // An ended batch must not be polled again (it is not fused): nothing came, ask anew.
        let Some(first_message) = first_message else {
            continue;
        };
        let mut batch = futures::stream::iter([first_message]).chain(batch.fuse());
        // A batch ends by itself within PULL_EXPIRES; finishing it even during shutdown means
        // every message delivered to this client gets a handler.
        // The timeout guards against a batch that never ends because the connection dropped.
        while let Ok(Some(next)) = tokio::time::timeout(PULL_EXPIRES * 3, batch.next()).await {
            let message = match next {
                Ok(m) => m,
                Err(err) => {
                    tracing::debug!(network = ctx.network, %err, "pull ended early");
                    break;
                }
            };
            let Some(permit) = permits.pop() else {
                // The server never sends more than asked for; if it did, let it redeliver.
                tracing::error!(
                    network = ctx.network,
                    "server sent more messages than requested"
                );
                break;
            };
            let ctx = ctx.clone();
            tracker.spawn(async move {
                if let Err(err) = handler::handle(&ctx, message).await {
                    tracing::warn!(network = ctx.network, %err, "could not answer a request; it will be redelivered");
                }
                drop(permit);
            });
        }
    }
}

/// One pull request: `wait` long-polls up to [`PULL_EXPIRES`], otherwise only what is waiting
/// now is returned.
async fn pull(
    consumer: &PullConsumer,
    max: usize,
    wait: bool,
) -> Result<
    async_nats::jetstream::consumer::pull::Batch,
    async_nats::jetstream::consumer::pull::BatchError,
> {
    if wait {
        consumer
            .batch()
            .max_messages(max)
            .expires(PULL_EXPIRES)
            .messages()
            .await
    } else {
        consumer.fetch().max_messages(max).messages().await
    }
}
