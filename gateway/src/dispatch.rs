//! Puts requests on the queue and routes answers back to whoever waits for them.
//!
//! Each gateway instance listens on its own callback wildcard, `imgfetch.reply.<instance>.>`,
//! and keeps a map from request id to the waiting client. A reply nobody waits for any more is
//! dropped and counted as late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use imgfetch_common::protocol::{self, header, ErrorCode, FetchRequest};
use imgfetch_common::{codec, validate};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::directory::Directory;
use crate::outcome::{self, Failure, Outcome};

/// Waiters by request id. The generation tells a waiter's own entry from a later one with the
/// same id, so a ticket that ends never removes a newer request's entry.
type Pending = Arc<Mutex<HashMap<String, (u64, oneshot::Sender<Outcome>)>>>;

/// The request side of the gateway, shared by every client connection.
#[derive(Debug)]
pub struct Dispatcher {
    js: jetstream::Context,
    instance: String,
    directory: Directory,
    pending: Pending,
    generation: std::sync::atomic::AtomicU64,
    request_timeout: Duration,
    publish_timeout: Duration,
    draining: CancellationToken,
}

/// A request the queue accepted; wait on it for the answer.
#[derive(Debug)]
pub struct Ticket {
    /// The request id.
    pub id: String,
    rx: oneshot::Receiver<Outcome>,
    deadline: Instant,
    pending: Pending,
    generation: u64,
}

impl Ticket {
    /// Waits for the answer, or for the deadline.
    pub async fn outcome(mut self) -> Outcome {
        match tokio::time::timeout_at(self.deadline, &mut self.rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Failure::new(
                ErrorCode::Internal,
                "the gateway dropped the request",
            )),
            Err(_) => {
                metrics::counter!("imgfetch_gateway_timeouts_total").increment(1);
                Err(Failure::new(
                    ErrorCode::Timeout,
                    "no answer before the deadline",
                ))
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().expect("pending map poisoned");
        if pending
            .get(&self.id)
            .is_some_and(|(g, _)| *g == self.generation)
        {
            pending.remove(&self.id);
        }
    }
}

impl Dispatcher {
    /// Subscribes to this instance's callbacks and returns the dispatcher with the task that
    /// routes replies (it ends when the subscription does).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        client: async_nats::Client,
        archive: Option<Arc<Archive>>,
        instance: String,
        stream: String,
        request_timeout: Duration,
        publish_timeout: Duration,
        draining: CancellationToken,
    ) -> Result<Arc<Dispatcher>, async_nats::SubscribeError> {
        let js = jetstream::new(client.clone());
        let mut replies = client
            .subscribe(protocol::reply_wildcard(&instance))
            .await?;
        let dispatcher = Arc::new(Dispatcher {
            directory: Directory::new(client, js.clone(), stream),
            js,
            instance,
            pending: Arc::default(),
            generation: Default::default(),
            request_timeout,
            publish_timeout,
            draining,
        });
        let pending = dispatcher.pending.clone();
        tokio::spawn(async move {
            while let Some(msg) = replies.next().await {
                let id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(header::ID))
                    .map(|v| v.as_str().to_owned())
                    .or_else(|| msg.subject.rsplit('.').next().map(str::to_owned))
                    .unwrap_or_default();
                let waiter = pending.lock().expect("pending map poisoned").remove(&id);
                match waiter {
                    Some((_, tx)) => {
                        let mut outcome =
                            outcome::from_reply(&id, msg.headers.as_ref(), msg.payload);
                        if let (Ok(image), Some(archive)) = (&mut outcome, &archive) {
                            image.archived = archive.store(
                                &image.id,
                                &image.key,
                                &image.content_type,
                                &image.info,
                                image.bytes.clone(),
                            );
                        }
                        let _ = tx.send(outcome);
                    }
                    None => {
                        metrics::counter!("imgfetch_gateway_late_replies_total").increment(1);
                        tracing::debug!(id, "reply for a request nobody waits for; dropped");
                    }
                }
            }
        });
        Ok(dispatcher)
    }

    /// The network directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Requests waiting for an answer on this instance.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().expect("pending map poisoned").len()
    }

    /// Validates, admits and enqueues a request. `Ok` means JetStream stored it: an answer,
    /// image or error, will follow through the ticket. The request's deadline starts here and
    /// bounds everything, admission and publishing included.
    pub async fn submit(&self, request: FetchRequest) -> Result<Ticket, Failure> {
        let deadline = Instant::now() + self.request_timeout;
        let network = request.network.clone().unwrap_or_default();
        validate::request(&request, &network)
            .map_err(|e| Failure::new(ErrorCode::InvalidRequest, e.to_string()))?;
        if self.draining.is_cancelled() {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                "the gateway is shutting down",
            ));
        }
        match tokio::time::timeout_at(deadline, self.enqueue(request, network, deadline)).await {
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
    ) -> Result<Ticket, Failure> {
        self.directory.admit(&network).await?;

        let id = request.id.clone();
        let (tx, rx) = oneshot::channel();
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut pending = self.pending.lock().expect("pending map poisoned");
            if pending.contains_key(&id) {
                return Err(duplicate(&id));
            }
            pending.insert(id.clone(), (generation, tx));
        }
        let ticket = Ticket {
            id: id.clone(),
            rx,
            deadline,
            pending: self.pending.clone(),
            generation,
        };

        let mut headers = HeaderMap::new();
        headers.insert(
            header::CALLBACK,
            protocol::reply_subject(&self.instance, &id).as_str(),
        );
        headers.insert(header::MSG_ID, id.as_str());
        let remaining = deadline.saturating_duration_since(Instant::now());
        let deadline_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + remaining;
        headers.insert(
            header::DEADLINE,
            deadline_ms.as_millis().to_string().as_str(),
        );
        let body = codec::encode(&request);
        let subject = protocol::request_subject(&network);

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
                Ok(Ok(ack)) if ack.duplicate && attempt == 0 => return Err(duplicate(&id)),
                Ok(Ok(_)) => {
                    metrics::counter!("imgfetch_gateway_accepted_total").increment(1);
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
                    tracing::warn!(id, network, attempt, "publish not acknowledged in time");
                    last_error = "the queue did not acknowledge the request in time".into();
                }
            }
        }
        Err(Failure::new(ErrorCode::Unavailable, last_error))
    }
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
