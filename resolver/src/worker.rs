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
            biased;
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
        let mut messages = match take(&consumer, permits.len(), false).await {
            Ok(m) => m,
            Err(err) => {
                if pause_after_error(&ctx, &err, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        if messages.is_empty() {
            if shutdown.is_cancelled() {
                return;
            }
            permits.truncate(1);
            messages = match take(&consumer, 1, true).await {
                Ok(m) => m,
                Err(err) => {
                    if pause_after_error(&ctx, &err, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
        }
        for message in messages {
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

/// Logs a failed pull and waits a second before the next, so that a consumer that keeps
/// failing (deleted, leader change, server gone) is not hammered. Returns true on shutdown.
async fn pause_after_error(ctx: &Context, err: &PullError, shutdown: &CancellationToken) -> bool {
    tracing::warn!(network = ctx.network, %err, "pull failed; retrying in 1 s");
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
    }
}

type PullError = Box<dyn std::error::Error + Send + Sync>;

/// One pull request, read to its end: `wait` long-polls up to [`PULL_EXPIRES`], otherwise only
/// what is waiting now is returned.
///
/// A pull is never abandoned half-way, not even for shutdown: a message the server has already
/// sent would otherwise sit unhandled until its ack wait ran out. Each step has a timeout in
/// case the connection drops and the server's end-of-pull status never comes.
async fn take(
    consumer: &PullConsumer,
    max: usize,
    wait: bool,
) -> Result<Vec<async_nats::jetstream::Message>, PullError> {
    let step = PULL_EXPIRES * 3;
    let request = async {
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
    };
    let mut batch = tokio::time::timeout(step, request)
        .await
        .map_err(|_| "pull request timed out")??;
    let mut messages = Vec::with_capacity(max);
    loop {
        match tokio::time::timeout(step, batch.next()).await {
            Ok(Some(Ok(message))) => messages.push(message),
            Ok(None) => return Ok(messages),
            // Messages already taken are still handed on; the error shows on the next pull.
            Ok(Some(Err(err))) if !messages.is_empty() => {
                tracing::debug!(%err, "pull ended early");
                return Ok(messages);
            }
            Ok(Some(Err(err))) => return Err(err),
            Err(_) if !messages.is_empty() => return Ok(messages),
            Err(_) => return Err("pull timed out waiting for the server".into()),
        }
    }
}
