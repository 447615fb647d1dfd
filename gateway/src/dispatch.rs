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

use crate::directory::Directory;
use crate::outcome::{self, Failure, Outcome};

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Outcome>>>>;

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
}

/// A request the queue accepted; wait on it for the answer.
#[derive(Debug)]
pub struct Ticket {
    /// The request id.
    pub id: String,
    rx: oneshot::Receiver<Outcome>,
    deadline: Instant,
    pending: Pending,
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
        self.pending
            .lock()
            .expect("pending map poisoned")
            .remove(&self.id);
    }
}

impl Dispatcher {
    /// Subscribes to this instance's callbacks and returns the dispatcher with the task that
    /// routes replies (it ends when the subscription does).
    pub async fn start(
        client: async_nats::Client,
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
                    Some(tx) => {
                        let _ =
                            tx.send(outcome::from_reply(&id, msg.headers.as_ref(), msg.payload));
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
    /// image or error, will follow through the ticket.
    pub async fn submit(&self, request: FetchRequest) -> Result<Ticket, Failure> {
        let network = request.network.clone().unwrap_or_default();
        validate::request(&request, &network)
            .map_err(|e| Failure::new(ErrorCode::InvalidRequest, e.to_string()))?;
        if self.draining.is_cancelled() {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                "the gateway is shutting down",
            ));
        }
        self.directory.admit(&network).await?;

        let id = request.id.clone();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending map poisoned");
            if pending.contains_key(&id) {
                return Err(duplicate(&id));
            }
            pending.insert(id.clone(), tx);
        }
        let deadline = Instant::now() + self.request_timeout;
        let ticket = Ticket {
            id: id.clone(),
            rx,
            deadline,
            pending: self.pending.clone(),
        };

        let mut headers = HeaderMap::new();
        headers.insert(
            header::CALLBACK,
            protocol::reply_subject(&self.instance, &id).as_str(),
        );
        headers.insert(header::MSG_ID, id.as_str());
        let deadline_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + self.request_timeout;
        headers.insert(
            header::DEADLINE,
            deadline_ms.as_millis().to_string().as_str(),
        );

        let subject = protocol::request_subject(&network);
        let ack = async {
            self.js
                .publish_with_headers(subject, headers, codec::encode(&request))
                .await?
                .await
        };
        let ack = match tokio::time::timeout(self.publish_timeout, ack).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(err)) => {
                let message = match err.kind() {
                    PublishErrorKind::StreamNotFound => {
                        format!("no stream captures network {network:?}")
                    }
                    _ => format!("the queue refused the request: {err}"),
                };
                tracing::warn!(id, network, %err, "publish failed");
                return Err(Failure::new(ErrorCode::Unavailable, message));
            }
            Err(_) => {
                return Err(Failure::new(
                    ErrorCode::Unavailable,
                    "the queue did not acknowledge the request in time",
                ));
            }
        };
        if ack.duplicate {
            return Err(duplicate(&id));
        }
        metrics::counter!("imgfetch_gateway_accepted_total").increment(1);
        Ok(ticket)
    }
}

fn duplicate(id: &str) -> Failure {
    Failure::new(
        ErrorCode::DuplicateId,
        format!("a request with id {id:?} was already accepted; use a new id"),
    )
}
