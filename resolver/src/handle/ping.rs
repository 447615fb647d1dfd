//! Answers `imgfetch.ping.<network>` so that gateways can tell at once whether any resolver
//! serves a network. A request with nobody listening gets NATS's "no responders" immediately.
//!
//! A network is answered for only while it can be served: when its pull loop cannot pull (the
//! stream or consumer is gone, provisioning is off, the pull task is being restarted), the
//! answerer unsubscribes, so gateways refuse new work for it with `unavailable` at once instead
//! of queueing it; it subscribes again once the network is served.

use std::time::Duration;

use futures::StreamExt;
use imgfetch_common::health::Health;
use imgfetch_common::protocol::{ping_subject, RESOLVER_QUEUE_GROUP};
use tokio_util::sync::CancellationToken;

/// Longest a subscribe, unsubscribe or answer may wait for the connection.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an answerer stopped.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// Subscribing failed.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// The ping subject.
        subject: String,
        /// The client's error.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// Subscribing did not finish in time.
    #[error("subscribing to {0} timed out")]
    SubscribeTimeout(String),
}

/// The components a network's pings wait for: its pull loop and the task running it.
pub fn serving_components(network: &str) -> [String; 2] {
    [format!("pull {network}"), format!("task pull {network}")]
}

/// Answers `network`'s pings with `body` while `health` says the network is served, until
/// shutdown, when it unsubscribes first of all so that gateways stop routing here. Returns
/// `Ok` at shutdown and when the subscription ends (the supervisor starts it again).
pub async fn serve(
    client: async_nats::Client,
    network: String,
    body: bytes::Bytes,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), PingError> {
    let subject = ping_subject(&network);
    let names = serving_components(&network);
    let names = [names[0].as_str(), names[1].as_str()];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = health.wait_all(&names, true) => {}
        }
        let subscribe = client.queue_subscribe(subject.clone(), RESOLVER_QUEUE_GROUP.to_owned());
        let mut sub = match tokio::time::timeout(PING_TIMEOUT, subscribe).await {
            Ok(Ok(sub)) => sub,
            Ok(Err(source)) => return Err(PingError::Subscribe { subject, source }),
            Err(_) => return Err(PingError::SubscribeTimeout(subject)),
        };
        tracing::debug!(network, "answering pings");
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break true,
                _ = health.wait_all(&names, false) => {
                    tracing::warn!(network, "the network cannot be served; not answering its pings");
                    break false;
                }
                next = sub.next() => {
                    let Some(msg) = next else { return Ok(()) };
                    if let Some(reply) = msg.reply {
                        match tokio::time::timeout(PING_TIMEOUT, client.publish(reply, body.clone())).await {
                            Ok(Ok(())) => {}
                            Ok(Err(err)) => tracing::debug!(%err, "ping reply failed"),
                            Err(_) => tracing::debug!("ping reply timed out"),
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(PING_TIMEOUT, sub.unsubscribe()).await;
        if ended {
            return Ok(());
        }
    }
}
