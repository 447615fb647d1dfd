//! The pull loop of one network: one persistent pull on one inbox, topped up as requests
//! finish, each request handed to [`handler::handle`](crate::handler::handle).
//!
//! - **Credit, per network.** A network asks the server for at most `limit` requests beyond
//!   those it is working on, and asks again only when half of that is used up, so a busy
//!   network pulls in batches and a lone client's request is delivered at once (a pull is
//!   always waiting at the server).
//! - **Slots, shared.** A request takes one of the resolver's slots only when it has arrived,
//!   so an idle network's waiting pull holds no slot and cannot starve a busy one.
//! - **Stopping.** The inbox is drained (unsubscribe, then a ping round trip), so every request
//!   the server sent before it saw the unsubscribe is still handled; the server drops the
//!   waiting pulls of an inbox nobody listens on. Nothing is left to wait for its ack timeout.
//! - **Lost pulls.** A reconnect (the server may have restarted and forgotten every waiting
//!   pull) resets the credit and asks again within [`RECONNECT_CHECK`]. Besides, every pull ends
//!   with a message or a status within its expiry (`Config::pull_expires`); if the inbox hears
//!   nothing for [`PULL_LOST_SLACK`] longer, the credit is taken as lost and asked for again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{self, Context};

/// Silence beyond a pull's expiry after which outstanding pulls are taken as lost.
const PULL_LOST_SLACK: Duration = Duration::from_secs(5);
/// How often the connection's reconnect count is looked at.
const RECONNECT_CHECK: Duration = Duration::from_secs(1);
/// Longest wait for the server to confirm the unsubscribe when stopping.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a pull loop had to start over.
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error("cannot subscribe to the pull inbox: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("cannot send a pull request: {0}")]
    Publish(#[from] async_nats::PublishError),
    #[error("the server ended the pull: {status} {description}")]
    Status {
        status: StatusCode,
        description: String,
    },
}

/// Runs the pull loop until `shutdown` fires. Handlers run on `tracker`, so the caller can wait
/// for them to finish. `limit` bounds this network's requests in flight plus those asked for.
pub async fn run(
    ctx: Arc<Context>,
    consumer: PullConsumer,
    limit: usize,
    expires: Duration,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let info = consumer.cached_info();
    let puller = Puller {
        subject: format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            info.stream_name, info.name
        ),
        limit: limit.max(1),
        expires,
        in_flight: Arc::new(AtomicUsize::new(0)),
        freed: Arc::new(Notify::new()),
        ctx,
        slots,
        tracker,
    };
    loop {
        match puller.pull(&shutdown).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(network = puller.ctx.network, %err, "pull failed; retrying in 1 s");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

struct Puller {
    subject: String,
    limit: usize,
    expires: Duration,
    in_flight: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    ctx: Arc<Context>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl Puller {
    /// One persistent pull: returns `Ok` after a clean stop, `Err` when it must start over.
    async fn pull(&self, shutdown: &CancellationToken) -> Result<(), PullError> {
        let client = &self.ctx.client;
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await?;
        // Requests asked for and not yet delivered or expired.
        let mut outstanding = 0usize;
        let mut heard = Instant::now();
        let statistics = client.statistics();
        let mut connects = statistics.connects.load(Ordering::Relaxed);
        let mut check = tokio::time::interval(RECONNECT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let busy = self.in_flight.load(Ordering::Acquire);
            if busy + outstanding <= self.limit / 2 {
                let batch = self.limit - busy - outstanding;
                let request = pull_request(batch, self.expires);
                if let Err(err) = client
                    .publish_with_reply(self.subject.clone(), inbox.clone(), request)
                    .await
                {
                    break Err(err.into());
                }
                if outstanding == 0 {
                    heard = Instant::now();
                }
                outstanding += batch;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                message = sub.next() => {
                    let Some(message) = message else {
                        break Ok(());
                    };
                    heard = Instant::now();
                    match message.status {
                        None | Some(StatusCode::OK) => {
                            outstanding = outstanding.saturating_sub(1);
                            self.dispatch(message).await;
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => {}
                        Some(status) => {
                            // A pull that ended early says how much of it was left unused.
                            match pending_of(&message) {
                                Some(left) => outstanding = outstanding.saturating_sub(left),
                                None => outstanding = 0,
                            }
                            if !matches!(status, StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED)
                                || message.description.as_deref() == Some("Consumer Deleted")
                            {
                                break Err(PullError::Status {
                                    status,
                                    description: message.description.clone().unwrap_or_default(),
                                });
                            }
                        }
                    }
                }
                _ = self.freed.notified() => {}
                _ = check.tick() => {
                    let now = statistics.connects.load(Ordering::Relaxed);
                    if now != connects {
                        tracing::debug!(network = self.ctx.network, "reconnected; pulling again");
                        connects = now;
                        outstanding = 0;
                    }
                }
                _ = tokio::time::sleep_until(heard + self.expires + PULL_LOST_SLACK), if outstanding > 0 => {
                    tracing::debug!(network = self.ctx.network, outstanding, "pulls unanswered; asking again");
                    outstanding = 0;
                }
            }
        };
        // Unsubscribe and take whatever the server sent before it saw that.
        if sub.drain().await.is_ok() {
            while let Ok(Some(message)) = tokio::time::timeout(DRAIN_TIMEOUT, sub.next()).await {
                if matches!(message.status, None | Some(StatusCode::OK)) {
                    self.dispatch(message).await;
                }
            }
        }
        result
    }

    /// Waits for a slot, then handles `message` on the tracker.
    async fn dispatch(&self, message: async_nats::Message) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        // Slots free up as other requests finish, each within its store timeout.
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        let message = async_nats::jetstream::Message {
            message,
            context: self.ctx.js.clone(),
        };
        let ctx = self.ctx.clone();
        let in_flight = self.in_flight.clone();
        let freed = self.freed.clone();
        self.tracker.spawn(async move {
            if let Err(err) = handler::handle(&ctx, message).await {
                tracing::warn!(network = ctx.network, %err, "could not answer a request; it will be redelivered");
            }
            drop(permit);
            in_flight.fetch_sub(1, Ordering::AcqRel);
            freed.notify_one();
        });
    }
}

/// `{"batch":n,"expires":ns}` for the JetStream pull API.
fn pull_request(batch: usize, expires: Duration) -> Bytes {
    Bytes::from(format!(
        r#"{{"batch":{batch},"expires":{}}}"#,
        expires.as_nanos()
    ))
}

/// The unused part of a pull that the server ended, from its status headers.
fn pending_of(message: &async_nats::Message) -> Option<usize> {
    message
        .headers
        .as_ref()?
        .get("Nats-Pending-Messages")?
        .as_str()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_requests_carry_batch_and_expiry_in_nanoseconds() {
        let body: serde_json::Value =
            serde_json::from_slice(&pull_request(8, Duration::from_secs(10))).unwrap();
        assert_eq!(body["batch"], 8);
        assert_eq!(body["expires"], 10_000_000_000u64);
    }
}
