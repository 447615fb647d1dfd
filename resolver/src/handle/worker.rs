//! The pull loop of one network: one persistent pull on one inbox, topped up as requests
//! finish, each request handed to [`request::handle`](super::request::handle).
//!
//! - **Credit, per network.** A network asks the server for at most `limit` requests beyond
//!   those it is working on, and asks again only when half of that is used up, so a busy
//!   network pulls in batches and a lone client's request is delivered at once (a pull is
//!   always waiting at the server). Behind a leaf node, unless a count was given, `limit`
//!   is sized to the link as the loop runs (`Sizing`).
//! - **Slots, shared.** A request takes one of the resolver's slots only when it has arrived,
//!   so an idle network's waiting pull holds no slot and cannot starve a busy one. A request
//!   that waits for a slot tells the server it is in progress, so it is not redelivered while
//!   it waits.
//! - **Stopping.** No new pulls go out; the loop keeps taking what the waiting pulls deliver
//!   until each has ended (they expire within `expires`), and only then unsubscribes, so no
//!   request is sent to an inbox nobody listens on.
//! - **Lost pulls.** Each pull's reply subject carries a generation. A reconnect (the server may
//!   have restarted and forgotten every waiting pull) starts a new generation within
//!   [`RECONNECT_CHECK`] and asks again; end-of-pull statuses of older generations no longer
//!   count, so the credit cannot drift. If the inbox hears nothing for [`PULL_LOST_SLACK`]
//!   beyond a pull's expiry, the credit is taken as lost the same way.
//! - **Refusals.** A status that ends a pull without saying what was left of it (a consumer
//!   limit such as max waiting, a deleted consumer) ends the loop, which starts over after a
//!   second.
//! - **Healing.** Every [`CONSUMER_CHECK`] the loop asks the server about its consumer, so a
//!   stream or consumer deleted while idle (or lost with a wiped JetStream store) is noticed
//!   even when no pull says so. Whenever the loop starts over, the network is marked not ready
//!   (its pings stop, see [`ping`](super::ping)) and the stream and consumer are verified, and
//!   re-created when provisioning is on, until that succeeds; then pulling resumes. See
//!   docs/RELIABILITY.md.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
use imgfetch_common::health::Component;
use imgfetch_common::message::RequestHead;
use imgfetch_common::provision::{self, ConsumerSettings, ProvisionError, StreamSettings};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::context::Context;
use super::request;
use crate::metric;

/// Silence beyond a pull's expiry after which outstanding pulls are taken as lost.
const PULL_LOST_SLACK: Duration = Duration::from_secs(5);
/// How often the connection's reconnect count is looked at.
const RECONNECT_CHECK: Duration = Duration::from_secs(1);
/// Longest a pull request may wait to be handed to the connection.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a pulling network asks whether its consumer still exists.
pub const CONSUMER_CHECK: Duration = Duration::from_secs(2);
/// Longest the consumer check may take; a slow answer is no verdict.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one attempt at verifying or re-creating the stream and consumer may take.
pub const PROVISION_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts at healing, and before pulling again after a failed pull.
const HEAL_RETRY: Duration = Duration::from_secs(1);
/// Longest a progress ack may wait to be handed to the connection.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(5);

/// How one network pulls.
#[derive(Clone, Copy, Debug)]
pub struct PullSettings {
    /// Requests in flight plus requests asked for, at most.
    pub limit: usize,
    /// How long a waiting pull lasts at the server.
    pub expires: Duration,
    /// The consumer's ack wait: a request waiting for a slot says it is in progress well
    /// before this runs out.
    pub ack_wait: Duration,
    /// Behind a leaf node with no `--pull-ahead` given: the resolver's slots, and the requests
    /// pulled ahead of them are sized to the link ([`Sizing`]) instead of `limit`'s share.
    pub sized_for: Option<usize>,
}

/// The most requests a network pulls ahead of its slots when sized to the link.
pub const MAX_PULL_AHEAD: usize = 4096;
/// Round-trip samples the link's round trip is the least of.
const RTT_SAMPLES: usize = 8;

/// Sizes the requests a network pulls ahead to the link: enough to keep every slot busy for
/// two round trips (pulls are topped up when half of them is used, as the gateway's credit
/// window), `2 × slots × round trip ÷ service time`, from the least round trip of the last
/// [`RTT_SAMPLES`] consumer checks (each crosses the link to the hub's JetStream and back) and
/// the requests' mean time in a slot. Between `2 × slots` and [`MAX_PULL_AHEAD`].
struct Sizing {
    slots: usize,
    rtts: std::collections::VecDeque<Duration>,
    /// Mean microseconds a request holds a slot (0: none yet), updated as requests finish.
    service_us: Arc<AtomicU64>,
}

impl Sizing {
    /// Notes a round trip; the requests to pull ahead, once both are measured.
    fn ahead(&mut self, rtt: Duration) -> Option<usize> {
        if self.rtts.len() == RTT_SAMPLES {
            self.rtts.pop_front();
        }
        self.rtts.push_back(rtt);
        let rtt = self.rtts.iter().min()?;
        // No request served yet: nothing to size by (an idle zone keeps its start value).
        let service = self.service_us.load(Ordering::Relaxed);
        (service > 0).then(|| pull_ahead(self.slots, *rtt, service))
    }
}

/// `2 × slots × rtt ÷ service` (service in microseconds; 0 or less than 1 µs counts as 1 µs),
/// between `2 × slots` and [`MAX_PULL_AHEAD`].
fn pull_ahead(slots: usize, rtt: Duration, service_us: u64) -> usize {
    let per_slot = rtt.as_micros().div_ceil(u128::from(service_us.max(1)));
    let ahead = usize::try_from(per_slot.saturating_mul(2 * slots as u128)).unwrap_or(usize::MAX);
    ahead.clamp((2 * slots).min(MAX_PULL_AHEAD), MAX_PULL_AHEAD)
}

/// Folds one request's time in a slot into the mean (weight 1/8).
fn note_service(mean_us: &AtomicU64, took: Duration) {
    let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
    let _ = mean_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        })
    });
}

/// Why a pull loop had to start over.
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error("cannot subscribe to the pull inbox: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("subscribing to the pull inbox took longer than {0:?}")]
    SubscribeTimeout(Duration),
    #[error("cannot send a pull request: {0}")]
    Publish(#[from] async_nats::PublishError),
    #[error("a pull request could not be sent within {0:?}")]
    PublishTimeout(Duration),
    #[error("the server ended the pull: {status} {description}")]
    Status {
        status: StatusCode,
        description: String,
    },
    #[error("the consumer is gone: {0}")]
    Gone(#[source] async_nats::jetstream::context::ConsumerInfoError),
}

/// What a network's stream and consumer look like, to verify or re-create them.
#[derive(Clone, Debug)]
pub struct Heal {
    /// The stream.
    pub stream: StreamSettings,
    /// The consumers.
    pub consumer: ConsumerSettings,
    /// Re-create what is missing (false: only say what is missing, and stay unready).
    pub provision: bool,
    /// The network's readiness: ready while it pulls.
    pub status: Component,
}

/// Runs the pull loop until `shutdown` fires, healing the stream and consumer whenever pulling
/// fails. Handlers run on `tracker`, so the caller can wait for them to finish.
pub async fn run(
    ctx: Arc<Context>,
    consumer: PullConsumer,
    settings: PullSettings,
    heal: Heal,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let info = consumer.cached_info();
    let mut puller = Puller {
        subject: format!(
            "{}.CONSUMER.MSG.NEXT.{}.{}",
            ctx.api_prefix, info.stream_name, info.name
        ),
        consumer,
        settings: PullSettings {
            limit: settings.limit.max(1),
            ..settings
        },
        in_flight: Arc::new(AtomicUsize::new(0)),
        freed: Arc::new(Notify::new()),
        service_us: settings.sized_for.map(|_| Arc::new(AtomicU64::new(0))),
        ctx,
        slots,
        tracker,
    };
    heal.status.ready();
    loop {
        match puller.pull(&shutdown).await {
            Ok(()) => return,
            Err(err) => {
                let network = &puller.ctx.network;
                tracing::warn!(network, %err, "pull failed; verifying the stream and consumer");
                heal.status.unready(format!("cannot pull: {err}"));
                let Some(consumer) = heal_network(&puller.ctx, &heal, &shutdown).await else {
                    return;
                };
                puller.consumer = consumer;
                heal.status.ready();
            }
        }
    }
}

/// Verifies (and with provisioning re-creates) the network's stream and consumer until that
/// succeeds; `None` when shutdown came first.
async fn heal_network(
    ctx: &Context,
    heal: &Heal,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let network = &ctx.network;
    // The same failure is logged once at its level, then quietly, so a long outage is one line.
    let mut last_reason = String::new();
    loop {
        // A pause first: a pull that failed for a passing reason is not retried in a loop.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(HEAL_RETRY) => {}
        }
        let ensure = provision::ensure_network(
            &ctx.js,
            &heal.stream,
            &heal.consumer,
            network,
            heal.provision,
        );
        let reason = match tokio::time::timeout(PROVISION_TIMEOUT, ensure).await {
            Ok(Ok(consumer)) => {
                tracing::info!(network, "stream and consumer in place; pulling again");
                return Some(consumer);
            }
            Ok(Err(
                err @ (ProvisionError::MissingStream(_)
                | ProvisionError::MissingSubject { .. }
                | ProvisionError::MissingConsumer { .. }),
            )) => {
                let reason = err.to_string();
                if reason != last_reason {
                    tracing::error!(network, %err, "cannot serve the network until an operator creates what is missing");
                }
                reason
            }
            Ok(Err(err)) => {
                let reason = err.to_string();
                if reason != last_reason {
                    tracing::warn!(network, %err, "cannot set up the stream and consumer; retrying");
                }
                reason
            }
            Err(_) => {
                let reason = format!(
                    "setting up the stream and consumer timed out after {PROVISION_TIMEOUT:?}"
                );
                if reason != last_reason {
                    tracing::warn!(network, reason, "retrying");
                }
                reason
            }
        };
        if reason == last_reason {
            tracing::debug!(network, reason, "still cannot serve the network");
        }
        heal.status.unready(reason.clone());
        last_reason = reason;
    }
}

struct Puller {
    subject: String,
    consumer: PullConsumer,
    settings: PullSettings,
    in_flight: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    /// Mean microseconds a request holds a slot, for [`Sizing`] (when sized to the link).
    service_us: Option<Arc<AtomicU64>>,
    ctx: Arc<Context>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl Puller {
    /// One persistent pull: returns `Ok` after a clean stop, `Err` when it must start over.
    async fn pull(&self, shutdown: &CancellationToken) -> Result<(), PullError> {
        let client = &self.ctx.client;
        let PullSettings {
            mut limit,
            expires,
            sized_for,
            ..
        } = self.settings;
        let mut sizing = sized_for
            .zip(self.service_us.clone())
            .map(|(slots, service_us)| Sizing {
                slots,
                rtts: std::collections::VecDeque::with_capacity(RTT_SAMPLES),
                service_us,
            });
        let inbox = client.new_inbox();
        let mut sub = tokio::time::timeout(PUBLISH_TIMEOUT, client.subscribe(format!("{inbox}.*")))
            .await
            .map_err(|_| PullError::SubscribeTimeout(PUBLISH_TIMEOUT))??;
        // Requests asked for in this generation and not yet delivered or ended.
        let mut outstanding = 0usize;
        let mut generation = 0u64;
        let mut heard = Instant::now();
        let statistics = client.statistics();
        let mut connects = statistics.connects.load(Ordering::Relaxed);
        let mut check = tokio::time::interval(RECONNECT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut verify = tokio::time::interval(CONSUMER_CHECK);
        verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Once stopping: when the last pull of this generation has surely ended.
        let mut stop_by: Option<Instant> = None;
        // When the newest pull went out: every pull has ended by this plus `expires`.
        let mut last_pull = Instant::now();
        loop {
            let busy = self.in_flight.load(Ordering::Acquire);
            if stop_by.is_none() && busy + outstanding <= limit / 2 {
                let batch = limit - busy - outstanding;
                let reply = format!("{inbox}.{generation}");
                let send = client.publish_with_reply(
                    self.subject.clone(),
                    reply,
                    pull_request(batch, expires),
                );
                match tokio::time::timeout(PUBLISH_TIMEOUT, send).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => return Err(err.into()),
                    Err(_) => return Err(PullError::PublishTimeout(PUBLISH_TIMEOUT)),
                }
                if outstanding == 0 {
                    heard = Instant::now();
                }
                outstanding += batch;
                last_pull = Instant::now();
            }
            if stop_by.is_some() && outstanding == 0 {
                return Ok(());
            }
            let lost_at = heard + expires + PULL_LOST_SLACK;
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if stop_by.is_none() => {
                    // Unsubscribing now could strand a request the server is sending; let
                    // the waiting pulls end first.
                    stop_by = Some(last_pull + expires + Duration::from_secs(1));
                }
                _ = tokio::time::sleep_until(stop_by.unwrap_or(lost_at)), if stop_by.is_some() => {
                    return Ok(());
                }
                message = sub.next() => {
                    let Some(message) = message else {
                        return Ok(());
                    };
                    heard = Instant::now();
                    match message.status {
                        None | Some(StatusCode::OK) => {
                            outstanding = outstanding.saturating_sub(1);
                            self.dispatch(message);
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => {}
                        Some(status) => {
                            let current = message
                                .subject
                                .rsplit('.')
                                .next()
                                .and_then(|g| g.parse::<u64>().ok())
                                == Some(generation);
                            let deleted = message.description.as_deref() == Some("Consumer Deleted");
                            match pending_of(&message) {
                                // A pull that ended says how much of it was left unused.
                                Some(left) if !deleted => {
                                    if current {
                                        outstanding = outstanding.saturating_sub(left);
                                    }
                                }
                                // An expiry without the count: ask afresh.
                                None if status == StatusCode::TIMEOUT => {
                                    if current {
                                        outstanding = 0;
                                    }
                                }
                                _ => {
                                    // No consumer, no responder: the server says 503 without a word.
                                    let description = match message.description.clone() {
                                        Some(d) if !d.is_empty() => d,
                                        _ if status == StatusCode::NO_RESPONDERS => "no responders".to_owned(),
                                        _ => String::new(),
                                    };
                                    return Err(PullError::Status { status, description });
                                }
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
                        generation += 1;
                        outstanding = 0;
                    }
                }
                _ = verify.tick(), if stop_by.is_none() => {
                    let rtt = self.verify().await?;
                    if let (Some(sizing), Some(rtt)) = (sizing.as_mut(), rtt) {
                        if let Some(ahead) = sizing.ahead(rtt) {
                            let sized = sizing.slots + ahead;
                            if sized != limit {
                                tracing::debug!(network = self.ctx.network, ahead, ?rtt, "pull-ahead sized to the link");
                                limit = sized;
                            }
                            metrics::gauge!(metric::PULL_AHEAD, "network" => self.ctx.network.clone())
                                .set(ahead as f64);
                        }
                    }
                }
                _ = tokio::time::sleep_until(lost_at), if outstanding > 0 && stop_by.is_none() => {
                    tracing::debug!(network = self.ctx.network, outstanding, "pulls unanswered; asking again");
                    generation += 1;
                    outstanding = 0;
                }
            }
        }
    }

    /// Asks the server about the consumer: `Err` when it or its stream is gone, else the round
    /// trip of an answer. No answer in time is no verdict (a reconnect is handled apart).
    async fn verify(&self) -> Result<Option<Duration>, PullError> {
        let asked = Instant::now();
        match tokio::time::timeout(CHECK_TIMEOUT, self.consumer.get_info()).await {
            Ok(Err(err))
                if matches!(
                    err.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                Err(PullError::Gone(err))
            }
            Ok(Err(err)) => {
                tracing::debug!(network = self.ctx.network, %err, "consumer check failed");
                Ok(None)
            }
            Ok(Ok(_)) => Ok(Some(asked.elapsed())),
            Err(_) => Ok(None),
        }
    }

    /// Hands `message` to a task that waits for a slot, then handles it.
    fn dispatch(&self, message: async_nats::Message) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let message = async_nats::jetstream::Message {
            message,
            context: self.ctx.js.clone(),
        };
        let ctx = self.ctx.clone();
        let slots = self.slots.clone();
        let in_flight = self.in_flight.clone();
        let freed = self.freed.clone();
        let service_us = self.service_us.clone();
        let progress_every = self.settings.ack_wait / 3;
        self.tracker.spawn(async move {
            // Whatever happens to the handler, a panic included, the request stops counting
            // against this network's credit: a leak would stop the network pulling for good.
            // A stream gives it back earlier, through its lease.
            let done = Arc::new(Done {
                in_flight,
                freed,
                given_back: AtomicBool::new(false),
            });
            let ack = message.reply.clone();
            let abandon = ctx.abandon.clone();
            // Every line logged about this request carries its id (the de-duplication id:
            // `<id>`, or `<id>.retry.<n>` for a request taken over) and its network. The span
            // is at error level so that no `RUST_LOG` filter that keeps a line drops its context.
            let id = RequestHead::from_headers(message.headers.as_ref())
                .msg_id
                .unwrap_or_default();
            let span = tracing::error_span!("request", id, network = ctx.network);
            let handled =
                Self::handle_in_slot(&ctx, message, slots, progress_every, done, service_us)
                    .instrument(span.clone());
            tokio::select! {
                () = handled => {}
                // The grace period ran out: give the request back at once rather than leave it
                // to the ack wait, so another resolver takes it now.
                () = abandon.cancelled() => {
                    let _entered = span.enter();
                    if let Some(ack) = ack {
                        let nak = ctx.client.publish(ack, Bytes::from_static(b"-NAK"));
                        match tokio::time::timeout(PROGRESS_TIMEOUT, nak).await {
                            Ok(Ok(())) => tracing::info!(network = ctx.network, "request given back unfinished at shutdown"),
                            Ok(Err(err)) => tracing::warn!(network = ctx.network, %err, "could not give back a request at shutdown; it will be redelivered after the ack wait"),
                            Err(_) => tracing::warn!(network = ctx.network, "giving back a request at shutdown timed out; it will be redelivered after the ack wait"),
                        }
                    }
                }
            }
        });
    }

    /// Waits for a slot (keeping the request from being redelivered meanwhile), then handles
    /// the request under a lease of the slot and of `done`, the network's credit.
    async fn handle_in_slot(
        ctx: &Context,
        message: async_nats::jetstream::Message,
        slots: Arc<Semaphore>,
        progress_every: Duration,
        done: Arc<Done>,
        service_us: Option<Arc<AtomicU64>>,
    ) {
        let permit =
            super::context::wait_for_permit(&slots, &message, progress_every, &ctx.network).await;
        let started = Instant::now();
        let lease = super::Lease::new(permit, move || done.give_back());
        if let Err(err) = request::handle(ctx, message, lease).await {
            tracing::warn!(network = ctx.network, %err, "could not answer a request; it will be redelivered");
        }
        if let Some(mean) = service_us {
            note_service(&mean, started.elapsed());
        }
    }
}

/// One request's share of its network's credit, given back once: by a stream's lease, or when
/// dropped.
struct Done {
    in_flight: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    given_back: AtomicBool,
}

impl Done {
    fn give_back(&self) {
        if !self.given_back.swap(true, Ordering::AcqRel) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.freed.notify_one();
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.give_back();
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
    fn pull_ahead_keeps_every_slot_busy_for_a_round_trip() {
        let ms = Duration::from_millis;
        // 16 slots, 2 ms a request: 25 requests per slot in a 50 ms round trip, twice over.
        assert_eq!(pull_ahead(16, ms(50), 2_000), 800);
        // Never below twice the slots, never above the maximum; no service time yet counts as
        // 1 µs.
        assert_eq!(pull_ahead(16, Duration::from_micros(300), 2_000), 32);
        assert_eq!(pull_ahead(16, ms(50), 0), MAX_PULL_AHEAD);
        let mut sizing = Sizing {
            slots: 16,
            rtts: std::collections::VecDeque::new(),
            service_us: Arc::new(AtomicU64::new(0)),
        };
        assert_eq!(sizing.ahead(ms(40)), None, "no request served yet");
        note_service(&sizing.service_us, ms(4));
        note_service(&sizing.service_us, ms(4));
        assert_eq!(sizing.service_us.load(Ordering::Relaxed), 4_000);
        // The least of the recent round trips: a slow answer (a busy hub) does not inflate it.
        assert_eq!(sizing.ahead(ms(40)), Some(320));
        assert_eq!(sizing.ahead(ms(400)), Some(320));
        for _ in 0..RTT_SAMPLES {
            sizing.ahead(ms(80));
        }
        assert_eq!(sizing.ahead(ms(80)), Some(640), "the 40 ms sample aged out");
    }

    #[test]
    fn pull_requests_carry_batch_and_expiry_in_nanoseconds() {
        let body: serde_json::Value =
            serde_json::from_slice(&pull_request(8, Duration::from_secs(10))).unwrap();
        assert_eq!(body["batch"], 8);
        assert_eq!(body["expires"], 10_000_000_000u64);
    }
}
