//! Answers requests that no stream stored, so that someone publishing by hand to an unknown
//! network gets `unknown_network` on their callback instead of silence.
//!
//! Every gateway subscribes to `imgfetch.req.>` in one queue group, so exactly one sees each
//! request. It answers only when the stream, read fresh, does not capture the subject: a stored
//! request is left to the resolvers, and never gets two answers. Likewise it answers a request
//! larger than the stream's message limit, which the stream refuses without a word.

use std::sync::Arc;

use async_nats::HeaderMap;
use futures::StreamExt;
use imgfetch_common::protocol::{
    header, network_of_subject, ErrorCode, REQUEST_PREFIX, SENTINEL_QUEUE_GROUP,
};
use imgfetch_common::{codec, validate};
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;

/// Starts the sentinel; it runs until `shutdown`.
pub async fn start(
    client: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client
        .queue_subscribe(
            format!("{REQUEST_PREFIX}.>"),
            SENTINEL_QUEUE_GROUP.to_owned(),
        )
        .await?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = sub.next() => match next { Some(m) => m, None => break },
            };
            let Some(callback) = msg.headers.as_ref().and_then(|h| h.get(header::CALLBACK)) else {
                continue;
            };
            let callback = callback.as_str().to_owned();
            if validate::callback(&callback).is_err() {
                continue;
            }
            let network = network_of_subject(&msg.subject).unwrap_or_default();
            let (code, text) = if validate::network(network).is_err() {
                (
                    ErrorCode::InvalidRequest,
                    format!("subject {:?} names no valid network", msg.subject.as_str()),
                )
            } else {
                match dispatcher.directory().exists(network).await {
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
            let mut headers = HeaderMap::new();
            if let Some(id) = &id {
                headers.insert(header::ID, id.as_str());
            }
            headers.insert(header::STATUS, code.as_str());
            headers.insert(header::CONTENT_TYPE, "text/plain; charset=utf-8");
            tracing::info!(subject = msg.subject.as_str(), ?id, %code, "answered a request no stream captured");
            if let Err(err) = client
                .publish_with_headers(callback, headers, text.into())
                .await
            {
                tracing::debug!(%err, "sentinel reply failed");
            }
        }
    });
    Ok(())
}

/// Size of a message as JetStream counts it against `max_msg_size`: headers and payload.
fn stored_size(msg: &async_nats::Message) -> usize {
    msg.length - msg.subject.len() - msg.reply.as_ref().map_or(0, |r| r.len())
}
