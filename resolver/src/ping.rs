//! Answers `imgfetch.ping.<network>` so that gateways can tell at once whether any resolver
//! serves a network. A request with nobody listening gets NATS's "no responders" immediately.

use futures::StreamExt;
use imgfetch_common::protocol::{ping_subject, ResolverInfo, RESOLVER_QUEUE_GROUP};
use tokio_util::sync::CancellationToken;

/// Subscribes for `network` and answers until shutdown, when it unsubscribes first of all so
/// that gateways stop routing here.
pub async fn serve(
    client: async_nats::Client,
    network: String,
    info: ResolverInfo,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client
        .queue_subscribe(ping_subject(&network), RESOLVER_QUEUE_GROUP.to_owned())
        .await?;
    let body = bytes::Bytes::from(serde_json::to_vec(&info).expect("ResolverInfo serialises"));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = sub.next() => {
                    let Some(msg) = next else { break };
                    if let Some(reply) = msg.reply {
                        if let Err(err) = client.publish(reply, body.clone()).await {
                            tracing::debug!(%err, "ping reply failed");
                        }
                    }
                }
            }
        }
        let _ = sub.unsubscribe().await;
    });
    Ok(())
}
