//! Puts requests on the queue and routes answers back to whoever waits for them.
//!
//! Each gateway instance listens on its own callback wildcard, `imgfetch.reply.<instance>.>`.
//! Every request's callback ends in a fresh random token (128 bits from the OS), not in the
//! client's id, and replies are routed by that token alone: knowing a client's id (ids are often
//! chosen by clients) is not enough to answer in its place. A reply whose `Imgfetch-Id` is not
//! the id on record for its token is dropped and counted as forged. A reply nobody waits for
//! any more is dropped and counted as late; the head of a stream nobody waits for is cancelled.
//!
//! Requests say they accept streamed answers. An inline reply becomes an image at once; the
//! head of a stream becomes an image whose body is a [`Transfer`], and the stream's later
//! messages (chunks, end, error), told apart by their `Imgfetch-Flow`, are routed to it.
//!
//! Outcomes are recorded in the results bucket ([`crate::results`]) here, where replies
//! arrive, whether or not the client still waits: a ticket dropped before its answer (the
//! client left, or its deadline passed) leaves its waiter among a bounded set of orphans, and
//! an orphan's reply is still archived and recorded (a streamed one is read to its end for the
//! archive), then dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishErrorKind};
use futures::StreamExt;
use imgfetch_common::message::{Answer, Flow, ReplyHead, RequestHead, Status};
use imgfetch_common::prometheus::Held;
use imgfetch_common::protocol::{self, ErrorCode, FetchRequest};
use imgfetch_common::supervise::Supervisor;
use imgfetch_common::{codec, validate};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::failure::Failure;
use crate::image::outcome::{self, Body, Outcome};
use crate::image::transfer::{Head, Part, Routed, Transfer, TransferSettings, Transfers};
use crate::metric;
use crate::queue::directory::Directory;
use crate::results::{Origin, Results, WriteOrder};

/// How often resolvers whose stream waits for its client to start reading are told the stream
/// is still wanted; well within their idle timeout.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Longest subscribing to the callbacks may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a cancel or a keepalive credit may wait for the connection; either is best effort.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Orphans kept at most: waiters whose ticket was dropped before its answer came. Beyond
/// this, the oldest are forgotten and their replies dropped as late.
const MAX_ORPHANS: usize = 4096;

/// Waiters by callback token, and the token of each id in flight (for `duplicate_id`).
#[derive(Debug, Default)]
struct Waiters {
    by_token: HashMap<String, Waiter>,
    ids: HashMap<String, String>,
    /// Waiters nobody waits on any more, by token, oldest first in `orphan_order`.
    orphans: HashMap<String, Waiter>,
    orphan_order: VecDeque<String>,
}

impl Waiters {
    /// Keeps `waiter` so that a reply coming after its ticket is gone is still recorded.
    fn orphan(&mut self, token: String, waiter: Waiter) {
        while self.orphans.len() >= MAX_ORPHANS {
            match self.orphan_order.pop_front() {
                Some(oldest) => {
                    self.orphans.remove(&oldest);
                }
                None => break,
            }
        }
        self.orphan_order.push_back(token.clone());
        self.orphans.insert(token, waiter);
    }
}

/// What the gateway recorded of one request when it was queued.
#[derive(Debug)]
struct Waiter {
    id: String,
    network: String,
    tx: oneshot::Sender<Outcome>,
    /// What its outcome is recorded under.
    origin: Arc<Origin>,
}

type Pending = Arc<Mutex<Waiters>>;

/// The request side of the gateway, shared by every client connection.
#[derive(Debug)]
pub struct Dispatcher {
    js: jetstream::Context,
    instance: String,
    directory: Directory,
    pending: Pending,
    request_timeout: Duration,
    publish_timeout: Duration,
    draining: CancellationToken,
    streams: Transfers,
    closed: CancellationToken,
    results: Option<Arc<Results>>,
}

/// A request the queue accepted; wait on it for the answer.
#[derive(Debug)]
pub struct Ticket {
    /// The request id.
    pub id: String,
    rx: oneshot::Receiver<Outcome>,
    deadline: Instant,
    pending: Pending,
    token: String,
    /// Its network, a label of the request metrics.
    network: String,
    /// When it was submitted.
    started: Instant,
    /// Counts it among `imgfetch_gateway_requests_in_flight` while it lives.
    _in_flight: Held,
    /// Closes once its `pending` record is written (or its write failed); `None` without one.
    recorded: Option<oneshot::Receiver<()>>,
}

impl Ticket {
    /// Waits until the request's `pending` record is written, or its write failed and was
    /// logged (bounded by the results bucket's timeout). A client told "accepted" after this
    /// can ask for the request by id through any gateway, even if this one dies at once.
    pub async fn recorded(&mut self) {
        if let Some(written) = self.recorded.take() {
            let _ = written.await;
        }
    }

    /// Waits for the answer, or for the deadline; counts the answer by network and status,
    /// and the time it took (for a streamed image, to its first chunk).
    pub async fn outcome(self) -> Outcome {
        let network = self.network.clone();
        let started = self.started;
        let outcome = self.wait().await;
        let status = match &outcome {
            Ok(image) => {
                metrics::counter!(metric::IMAGE_BYTES_TOTAL, "network" => network.clone())
                    .increment(image.body.size());
                protocol::STATUS_OK
            }
            Err(failure) => failure.code.as_str(),
        };
        metrics::counter!(metric::REQUESTS_TOTAL, "network" => network.clone(), "status" => status)
            .increment(1);
        metrics::histogram!(metric::REQUEST_SECONDS, "network" => network)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn wait(mut self) -> Outcome {
        match tokio::time::timeout_at(self.deadline, &mut self.rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Failure::new(
                ErrorCode::Internal,
                "the gateway dropped the request",
            )),
            Err(_) => {
                metrics::counter!(metric::TIMEOUTS_TOTAL).increment(1);
                Err(Failure::new(
                    ErrorCode::Timeout,
                    "no answer before the deadline",
                ))
            }
        }
    }

    /// Forgets the waiter of a request the stream did not store: no reply can come, so it is
    /// not kept as an orphan (a failed publish must not evict real ones).
    fn discard(self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.by_token.remove(&self.token);
        // Dropping the ticket below releases its id.
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiter) = pending.by_token.remove(&self.token) {
            // The answer may still come: it is archived and recorded for a fetch by id.
            pending.orphan(self.token.clone(), waiter);
        }
        if pending.ids.get(&self.id) == Some(&self.token) {
            pending.ids.remove(&self.id);
        }
    }
}

impl Dispatcher {
    /// Subscribes to this instance's callbacks and returns the dispatcher; the task that routes
    /// replies runs under `supervisor` as `reply router` (restarted, with a new subscription,
    /// if it ends before [`Dispatcher::close`]). Its tick also tells resolvers whose stream has
    /// not started that it is still wanted.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        client: async_nats::Client,
        archive: Option<Arc<Archive>>,
        instance: String,
        stream: String,
        timeouts: (Duration, Duration),
        stream_settings: TransferSettings,
        draining: CancellationToken,
        results: Option<Arc<Results>>,
        supervisor: &Supervisor,
    ) -> Result<Arc<Dispatcher>, async_nats::SubscribeError> {
        let (request_timeout, publish_timeout) = timeouts;
        let js = jetstream::new(client.clone());
        let subject = protocol::reply_wildcard(&instance);
        // The first subscription is made here, so that no reply can come before it exists.
        let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.subscribe(subject.clone()))
            .await
            .map_err(|_| {
                async_nats::SubscribeError::with_source(
                    async_nats::client::SubscribeErrorKind::Other,
                    std::io::Error::other("subscribing timed out"),
                )
            })??;
        let dispatcher = Arc::new(Dispatcher {
            directory: Directory::new(client.clone(), js.clone(), stream),
            js,
            instance,
            pending: Arc::default(),
            request_timeout,
            publish_timeout,
            draining,
            streams: Transfers::with_budget(stream_settings.max_buffer_bytes),
            closed: CancellationToken::new(),
            results: results.clone(),
        });
        let router = Arc::new(Router {
            reply_prefix: protocol::reply_subject(&dispatcher.instance, ""),
            pending: dispatcher.pending.clone(),
            streams: dispatcher.streams.clone(),
            archive,
            client,
            settings: stream_settings,
            results,
        });
        let closed = dispatcher.closed.clone();
        let first = Arc::new(std::sync::Mutex::new(Some(first)));
        // The router outlives draining: it stops only when the dispatcher closes.
        supervisor
            .until(closed.clone())
            .spawn("reply router", move || {
                let (router, closed, subject) = (router.clone(), closed.clone(), subject.clone());
                let first = first.lock().unwrap_or_else(PoisonError::into_inner).take();
                async move { router.run(first, subject, closed).await }
            });
        Ok(dispatcher)
    }

    /// Stops routing replies; called last, when nothing waits any more.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Streamed images being received.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// The network directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Requests waiting for an answer on this instance.
    pub fn in_flight(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_token
            .len()
    }

    /// How long a client waits for an answer.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Validates, admits and enqueues a request of the token named `identity` (if any). `Ok`
    /// means JetStream stored it: an answer, image or error, will follow through the ticket,
    /// and the request is recorded as pending. The request's deadline starts here and bounds
    /// everything, admission and publishing included.
    pub async fn submit(
        &self,
        request: FetchRequest,
        identity: Option<&str>,
    ) -> Result<Ticket, Failure> {
        let deadline = Instant::now() + self.request_timeout;
        let network = request.network.clone().unwrap_or_default();
        validate::request(&request, &network)
            .map_err(|e| Failure::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let origin = Arc::new(Origin {
            id: request.id.clone(),
            network: network.clone(),
            key: request.key.clone(),
            meta: request.meta.clone(),
            identity: identity.map(str::to_owned),
            attempt: 0,
            writes: WriteOrder::default(),
        });
        let msg_id = request.id.clone();
        self.queue(request, origin, &msg_id, true, deadline).await
    }

    /// Queues a recorded request again under its original id, with `msg_id` as its
    /// de-duplication id (a takeover: the record already says who owns it now).
    pub async fn resubmit(
        &self,
        origin: Origin,
        msg_id: &str,
        deadline: Instant,
    ) -> Result<Ticket, Failure> {
        let request = FetchRequest {
            id: origin.id.clone(),
            network: Some(origin.network.clone()),
            key: origin.key.clone(),
            meta: origin.meta.clone(),
        };
        self.queue(request, Arc::new(origin), msg_id, false, deadline)
            .await
    }

    async fn queue(
        &self,
        request: FetchRequest,
        origin: Arc<Origin>,
        msg_id: &str,
        fresh: bool,
        deadline: Instant,
    ) -> Result<Ticket, Failure> {
        if self.draining.is_cancelled() {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                "the gateway is shutting down",
            ));
        }
        let network = origin.network.clone();
        let enqueue = self.enqueue(request, network, deadline, origin, msg_id, fresh);
        match tokio::time::timeout_at(deadline, enqueue).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                ErrorCode::Timeout,
                "the request could not be queued before its deadline",
            )),
        }
    }

    async fn enqueue(
        &self,
        request: FetchRequest,
        network: String,
        deadline: Instant,
        origin: Arc<Origin>,
        msg_id: &str,
        fresh: bool,
    ) -> Result<Ticket, Failure> {
        self.directory.admit(&network).await?;

        let id = request.id.clone();
        let (tx, rx) = oneshot::channel();
        // The network, then 128 random bits (not a UUID, whose version bits leave 122): a zone's
        // resolvers may answer only on their own networks' callbacks (docs/SECURITY.md).
        let token = protocol::callback_token(&network);
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.ids.contains_key(&id) {
                return Err(duplicate(&id));
            }
            pending.ids.insert(id.clone(), token.clone());
            pending.by_token.insert(
                token.clone(),
                Waiter {
                    id: id.clone(),
                    network: network.clone(),
                    tx,
                    origin: origin.clone(),
                },
            );
        }
        let mut ticket = Ticket {
            id: id.clone(),
            rx,
            deadline,
            pending: self.pending.clone(),
            token: token.clone(),
            network: network.clone(),
            started: Instant::now(),
            _in_flight: Held::new(metrics::gauge!(metric::REQUESTS_IN_FLIGHT)),
            recorded: None,
        };

        let remaining = deadline.saturating_duration_since(Instant::now());
        let deadline_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + remaining;
        let headers = RequestHead {
            callback: Some(protocol::reply_subject(&self.instance, &token)),
            msg_id: Some(msg_id.to_owned()),
            accept_stream: true,
            deadline_ms: Some(deadline_ms.as_millis()),
        }
        .to_headers();
        let body = codec::encode(&request);
        // The gateways' subject: only they may publish there, and only requests that came this
        // way are answered on a gateway's callback (docs/SECURITY.md, provenance).
        let subject = protocol::gateway_request_subject(&network);
        // Reserved before publishing, so that a reply routed before the ack is recorded after
        // the request's `pending` record, never overwritten by it.
        let accepted = match (fresh, &self.results) {
            (true, Some(results)) => Some(results.reserve_pending(&origin)),
            _ => None,
        };
        // Whether an attempt timed out: the request may have been stored, and its reply may
        // come, so its waiter stays as an orphan; otherwise a failure leaves nothing behind.
        let mut maybe_stored = false;

        // A publish that fails or times out may still have been stored. Publishing again with
        // the same Nats-Msg-Id settles it: the stream stores it at most once, and a
        // `duplicate` answer to the second try means the first one got through.
        let mut last_error = String::new();
        for attempt in 0..2 {
            let ack = async {
                self.js
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                    .await?
                    .await
            };
            match tokio::time::timeout(self.publish_timeout, ack).await {
                Ok(Ok(ack)) if ack.duplicate && attempt == 0 => {
                    // The stored request carries another callback: nothing answers this one.
                    ticket.discard();
                    return Err(duplicate(&id));
                }
                Ok(Ok(_)) => {
                    metrics::counter!(metric::ACCEPTED_TOTAL).increment(1);
                    if let Some(accepted) = accepted {
                        ticket.recorded = Some(accepted.write(deadline_ms.as_millis() as u64));
                    }
                    return Ok(ticket);
                }
                Ok(Err(err)) => {
                    tracing::warn!(id, network, %err, attempt, "publish failed");
                    last_error = match err.kind() {
                        PublishErrorKind::StreamNotFound => {
                            format!("no stream captures network {network:?}")
                        }
                        _ => format!("the queue refused the request: {err}"),
                    };
                }
                Err(_) => {
                    maybe_stored = true;
                    tracing::warn!(id, network, attempt, "publish not acknowledged in time");
                    last_error = "the queue did not acknowledge the request in time".into();
                }
            }
        }
        if !maybe_stored {
            ticket.discard();
        }
        Err(Failure::new(ErrorCode::Unavailable, last_error))
    }
}

/// Routes what arrives on this instance's callbacks.
struct Router {
    /// `imgfetch.reply.<instance>.`: what precedes the token in a callback subject.
    reply_prefix: String,
    pending: Pending,
    streams: Transfers,
    archive: Option<Arc<Archive>>,
    client: async_nats::Client,
    settings: TransferSettings,
    results: Option<Arc<Results>>,
}

impl Router {
    /// Routes replies until `closed`; `subscription` is the first run's, later runs subscribe
    /// to `subject` anew. Ends early when the subscription does.
    async fn run(
        &self,
        subscription: Option<async_nats::Subscriber>,
        subject: String,
        closed: CancellationToken,
    ) -> Result<(), RouterError> {
        let mut replies = match subscription {
            Some(sub) => sub,
            None => tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.client.subscribe(subject))
                .await
                .map_err(|_| RouterError::SubscribeTimeout)??,
        };
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        loop {
            tokio::select! {
                _ = closed.cancelled() => return Ok(()),
                msg = replies.next() => match msg {
                    Some(msg) => self.route(msg),
                    None => return Err(RouterError::Ended),
                },
                _ = keepalive.tick() => self.keep_alive(),
            }
        }
    }

    fn route(&self, msg: async_nats::Message) {
        let token = msg
            .subject
            .strip_prefix(self.reply_prefix.as_str())
            .unwrap_or_default()
            .to_owned();
        let (flow, part) = match Answer::from_headers(msg.headers.as_ref()) {
            Answer::Head(head) if head.chunked.is_none() => {
                return self.finish_inline(&token, *head, msg.payload)
            }
            Answer::Head(head) if !head.status.is_ok() => {
                let Some(chunked) = &head.chunked else {
                    unreachable!("matched on a chunked head")
                };
                let flow = chunked.flow.clone();
                let failure = outcome::failure_of(head.status, &msg.payload);
                (flow, Part::Failed(failure))
            }
            Answer::Head(head) => return self.start_stream(&token, *head, msg.payload.len()),
            Answer::Malformed { id, flow, error } => {
                return self.refuse_stream(&token, id.as_deref(), &flow, error.to_string())
            }
            Answer::Chunk { flow, seq } => {
                let part = match seq {
                    Ok(seq) => Part::Chunk {
                        seq,
                        bytes: msg.payload,
                    },
                    Err(seq) => Part::Failed(Failure::new(
                        ErrorCode::Integrity,
                        format!("a chunk came with a bad sequence number {seq:?}"),
                    )),
                };
                (flow, part)
            }
            Answer::End(end) => {
                let part = match (end.status, end.sha256) {
                    (Status::Ok, Some(sha256)) => Part::End { sha256 },
                    (status, _) => Part::Failed(outcome::failure_of(status, &msg.payload)),
                };
                (end.flow, part)
            }
        };
        match self.streams.route(&flow, &token, part) {
            Routed::Overrun => {
                tracing::warn!(flow, "a resolver sent beyond its credit; stream failed");
                self.cancel(&flow, "sent beyond the credit");
            }
            Routed::Foreign => forged(&token, "a stream message on another request's callback"),
            Routed::Queued | Routed::Unknown => {}
        }
    }

    /// An inline answer: an image or an error, the end of its request.
    fn finish_inline(&self, token: &str, head: ReplyHead, payload: bytes::Bytes) {
        let Some(waiter) = self.waiter(token, head.id.as_deref()) else {
            return;
        };
        let sha256 = head.image.as_ref().and_then(|i| i.sha256.clone());
        let mut outcome = outcome::from_reply(&waiter.id, head, payload);
        if let Ok(image) = &mut outcome {
            // The network is the one the gateway queued the request for, whatever the reply says.
            image.info.network = waiter.network.clone();
            if let (Body::Inline(bytes), Some(archive)) = (&image.body, &self.archive) {
                image.archived = archive.store(
                    &image.id,
                    &image.key,
                    &image.content_type,
                    &image.info,
                    bytes.clone(),
                );
            }
        }
        if let Some(results) = &self.results {
            match &mut outcome {
                Ok(image) => results.record_image(&waiter.origin, image, sha256.as_deref()),
                Err(failure) => results.record_failure(&waiter.origin, failure),
            }
        }
        let _ = waiter.tx.send(outcome);
    }

    /// A stream's head that cannot be followed: its waiter, if any, gets an integrity error.
    fn refuse_stream(&self, token: &str, id: Option<&str>, flow: &str, why: String) {
        let Some(waiter) = self.waiter(token, id) else {
            self.cancel(flow, "nobody waits for this image");
            return;
        };
        self.cancel(flow, &why);
        let failure = Failure::new(ErrorCode::Integrity, why);
        if let Some(results) = &self.results {
            results.record_failure(&waiter.origin, &failure);
        }
        let _ = waiter.tx.send(Err(failure));
    }

    /// The head of a stream: the waiter gets an image whose body is a [`Transfer`].
    fn start_stream(&self, token: &str, head: ReplyHead, body_len: usize) {
        let Some(chunked) = head.chunked.clone() else {
            unreachable!("only chunked heads start streams")
        };
        let size = head.image.as_ref().and_then(|image| image.size);
        let parsed = match body_len {
            0 => Head::new(head.id.as_deref().unwrap_or_default(), &chunked, size),
            _ => Err("the stream's head is malformed".to_owned()),
        };
        let stream_head = match parsed {
            Ok(stream_head) => stream_head,
            Err(why) => return self.refuse_stream(token, head.id.as_deref(), &chunked.flow, why),
        };
        let Some(waiter) = self.waiter(token, head.id.as_deref()) else {
            // Nobody waits (a redelivery after a failure, or a client that left).
            self.cancel(&chunked.flow, "nobody waits for this image");
            return;
        };
        let (id, tx) = (waiter.id.as_str(), waiter.tx);
        let mut stream_head = stream_head;
        stream_head.id = id.to_owned();
        let mut outcome = outcome::from_head(id, head, Body::Inline(bytes::Bytes::new()));
        if let Ok(image) = &mut outcome {
            image.info.network = waiter.network.clone();
            let (archived, sink) = match &self.archive {
                Some(archive) => {
                    archive.begin(&image.id, &image.key, &image.content_type, &image.info)
                }
                None => (crate::archive::Archived::Disabled, None),
            };
            image.archived = archived;
            image.body = Body::Stream(Box::new(Transfer::new(
                stream_head,
                token,
                self.client.clone(),
                &self.streams,
                self.settings,
                sink,
            )));
        }
        if let Some(results) = &self.results {
            match &mut outcome {
                Ok(image) => results.record_image(&waiter.origin, image, None),
                Err(failure) => results.record_failure(&waiter.origin, failure),
            }
        }
        // Nobody waits (an orphan): the image is read to its end all the same, credit and
        // all, so that its archive copy is written and its result recorded.
        if let Err(Ok(mut image)) = tx.send(outcome) {
            let archiving = matches!(image.archived, crate::archive::Archived::Planned { .. });
            if matches!(image.body, Body::Stream(_)) && archiving {
                tokio::spawn(
                    async move { while let Some(Ok(_)) = image.body.next_chunk().await {} },
                );
            }
        }
    }

    /// Takes the waiter of `token`, if the reply's id (`Imgfetch-Id`) is the one on record.
    fn waiter(&self, token: &str, id: Option<&str>) -> Option<Waiter> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let recorded = match pending.by_token.get(token) {
            Some(recorded) => recorded,
            None => match pending.orphans.get(token) {
                Some(orphan) => orphan,
                None => {
                    metrics::counter!(metric::LATE_REPLIES_TOTAL).increment(1);
                    tracing::debug!(token, "reply for a request nobody waits for; dropped");
                    return None;
                }
            },
        };
        if id != Some(recorded.id.as_str()) {
            let recorded = recorded.id.clone();
            drop(pending);
            forged(
                token,
                &format!("Imgfetch-Id {id:?} where {recorded:?} was asked for"),
            );
            return None;
        }
        let waiter = match pending.by_token.remove(token) {
            Some(waiter) => waiter,
            None => {
                metrics::counter!(metric::ORPHAN_REPLIES_TOTAL).increment(1);
                pending.orphan_order.retain(|t| t != token);
                pending.orphans.remove(token)?
            }
        };
        if pending.ids.get(&waiter.id).map(String::as_str) == Some(token) {
            pending.ids.remove(&waiter.id);
        }
        Some(waiter)
    }

    fn cancel(&self, flow: &str, why: &str) {
        let headers = Flow::Cancel(why.to_owned()).to_headers();
        let (client, flow) = (self.client.clone(), flow.to_owned());
        tokio::spawn(async move {
            let send = client.publish_with_headers(flow, headers, bytes::Bytes::new());
            if tokio::time::timeout(SIGNAL_TIMEOUT, send).await.is_err() {
                tracing::debug!("a cancel could not be sent in time");
            }
        });
    }

    /// Tells resolvers whose stream has not started that it is still wanted.
    fn keep_alive(&self) {
        for flow in self.streams.waiting() {
            let headers = Flow::Credit(0).to_headers();
            let client = self.client.clone();
            tokio::spawn(async move {
                let send = client.publish_with_headers(flow, headers, bytes::Bytes::new());
                if tokio::time::timeout(SIGNAL_TIMEOUT, send).await.is_err() {
                    tracing::debug!("a keepalive credit could not be sent in time");
                }
            });
        }
    }
}

/// Why the reply router stopped before the dispatcher closed.
#[derive(Debug, thiserror::Error)]
enum RouterError {
    #[error("cannot subscribe to the callbacks: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("subscribing to the callbacks timed out after {SUBSCRIBE_TIMEOUT:?}")]
    SubscribeTimeout,
    #[error("the callback subscription ended")]
    Ended,
}

/// A reply that cannot be what the gateway asked for: dropped, counted, logged.
fn forged(token: &str, why: &str) {
    metrics::counter!(metric::FORGED_REPLIES_TOTAL).increment(1);
    tracing::warn!(token, why, "reply dropped as forged");
}

fn duplicate(id: &str) -> Failure {
    Failure::new(
        ErrorCode::DuplicateId,
        format!("a request with id {id:?} was already accepted; use a new id"),
    )
}

/// A fresh request id, for clients that send none.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
