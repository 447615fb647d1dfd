//! The websocket protocol on `/v1/ws`.
//!
//! Client frames are JSON text: `{"type":"fetch","id"?,"network","key","meta"?}`. The server
//! answers `accepted` once JetStream has stored the request, then exactly one `image` frame
//! (followed by one binary frame with the bytes) or one `error` frame. Requests run
//! concurrently, so answers come in completion order.
//!
//! The session loop is generic over `Sink` and `Stream`, like axum's testing-websockets example.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream, StreamExt};
use imgfetch_common::info::ImageInfo;
use imgfetch_common::protocol::{ErrorCode, FetchRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::archive::Archived;
use crate::dispatch::Dispatcher;
use crate::outcome::{Failure, Image};

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Fetch one image.
    Fetch {
        /// Request id; the gateway makes one when absent.
        id: Option<String>,
        /// Network tag.
        network: String,
        /// Image key.
        key: String,
        /// Carried through to the answer.
        #[serde(default)]
        meta: BTreeMap<String, String>,
    },
}

/// A JSON frame to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// JetStream stored the request.
    Accepted {
        /// Request id.
        id: &'a str,
    },
    /// The image follows in the next (binary) frame.
    Image {
        /// Request id.
        id: &'a str,
        /// Network tag.
        network: &'a str,
        /// Image key.
        key: &'a str,
        /// Sniffed media type.
        content_type: &'a str,
        /// Bytes in the binary frame.
        size: usize,
        /// What the store reported.
        metadata: &'a BTreeMap<String, String>,
        /// The request's own `meta`.
        meta: &'a BTreeMap<String, String>,
        /// Where and when it was taken, and by what.
        info: &'a ImageInfo,
        /// Where the archive copy is being written.
        #[serde(skip_serializing_if = "Option::is_none")]
        archived_as: Option<&'a str>,
        /// Why there will be no archive copy.
        #[serde(skip_serializing_if = "Option::is_none")]
        archive_error: Option<&'a str>,
    },
    /// The archive write announced in an `image` frame failed afterwards.
    ArchiveFailed {
        /// Request id.
        id: &'a str,
        /// The path that was not written.
        archived_as: &'a str,
        /// Why.
        message: &'a str,
    },
    /// The request ended in an error.
    Error {
        /// Request id, when one is known.
        id: Option<&'a str>,
        /// Error code.
        code: ErrorCode,
        /// What happened.
        message: &'a str,
    },
}

/// Limits of one session.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// How long one frame may take to reach the client.
    pub send_timeout: Duration,
}

fn json(frame: &ServerFrame<'_>) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(frame).expect("frames serialise"),
    ))
}

fn error_frame(id: Option<&str>, failure: &Failure) -> Message {
    json(&ServerFrame::Error {
        id,
        code: failure.code,
        message: &failure.message,
    })
}

/// Runs one websocket session until the client leaves, the client is too slow, or shutdown
/// (then in-flight requests still get their answers).
pub async fn session<W, R, E>(
    mut sink: W,
    mut source: R,
    dispatcher: Arc<Dispatcher>,
    limits: Limits,
    shutdown: CancellationToken,
) where
    W: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    // Each item is sent whole, so an image's JSON frame and its binary frame stay together.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<Message>>(limits.max_in_flight.max(1));
    let gone = CancellationToken::new();
    let writer_gone = gone.clone();
    let writer = tokio::spawn(async move {
        while let Some(frames) = out_rx.recv().await {
            // An image's JSON and binary frames go out in one write.
            let write = async {
                for frame in frames {
                    sink.feed(frame).await?;
                }
                sink.flush().await
            };
            match tokio::time::timeout(limits.send_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    writer_gone.cancel();
                    return;
                }
                Err(_) => {
                    tracing::info!("websocket client too slow; disconnecting");
                    metrics::counter!("imgfetch_gateway_slow_clients_total").increment(1);
                    writer_gone.cancel();
                    return;
                }
            }
        }
        // A client that stopped reading must not hold the session (and its slot) forever.
        let _ = tokio::time::timeout(limits.send_timeout, sink.send(Message::Close(None))).await;
    });

    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut tasks = JoinSet::new();
    let mut client_left = false;
    loop {
        while tasks.try_join_next().is_some() {}
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = gone.cancelled() => { client_left = true; break }
            next = source.next() => next,
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                let f = Failure::new(
                    ErrorCode::InvalidRequest,
                    "binary frames are not accepted; send JSON text frames",
                );
                let _ = out_tx.send(vec![error_frame(None, &f)]).await;
                continue;
            }
            Some(Ok(Message::Close(_))) | None => {
                client_left = true;
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                tracing::debug!(%err, "websocket read failed");
                client_left = true;
                break;
            }
        };
        let request = match serde_json::from_str::<ClientFrame>(text.as_str()) {
            Ok(ClientFrame::Fetch {
                id,
                network,
                key,
                meta,
            }) => FetchRequest {
                id: id.unwrap_or_else(crate::dispatch::new_id),
                network: Some(network),
                key,
                meta,
            },
            Err(err) => {
                let f = Failure::new(ErrorCode::InvalidRequest, format!("malformed frame: {err}"));
                let _ = out_tx.send(vec![error_frame(None, &f)]).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let f = Failure::new(
                ErrorCode::Unavailable,
                format!(
                    "too many requests in flight on this connection (limit {})",
                    limits.max_in_flight
                ),
            );
            let _ = out_tx.send(vec![error_frame(Some(&request.id), &f)]).await;
            continue;
        };
        let dispatcher = dispatcher.clone();
        let out = out_tx.clone();
        tasks.spawn(async move {
            let id = request.id.clone();
            let network = request.network.clone().unwrap_or_default();
            let key = request.key.clone();
            let meta = request.meta.clone();
            let ticket = match dispatcher.submit(request).await {
                Ok(t) => t,
                Err(f) => {
                    let _ = out.send(vec![error_frame(Some(&id), &f)]).await;
                    return;
                }
            };
            if out
                .send(vec![json(&ServerFrame::Accepted { id: &id })])
                .await
                .is_err()
            {
                return;
            }
            let image = match ticket.outcome().await {
                Ok(image) => image,
                Err(f) => {
                    let _ = out.send(vec![error_frame(Some(&id), &f)]).await;
                    return;
                }
            };
            if out
                .send(image_frames(&image, &network, &key, &meta))
                .await
                .is_err()
            {
                return;
            }
            // The request is answered; the archive report below must not hold its slot.
            drop(permit);
            // The archive write runs behind the image; report it only if it fails.
            if let Archived::Planned { path, written } = image.archived {
                if let Ok(Err(message)) = written.await {
                    let frame = json(&ServerFrame::ArchiveFailed {
                        id: &id,
                        archived_as: &path,
                        message: &message,
                    });
                    let _ = out.send(vec![frame]).await;
                }
            }
        });
    }
    if client_left {
        // Nobody is left to answer; dropping the set cancels the waits, and late replies are
        // counted by the dispatcher.
        tasks.abort_all();
    } else {
        // Shutdown: answer what was accepted before closing; each deadline bounds the wait.
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                _ = gone.cancelled() => { tasks.abort_all(); break }
            }
        }
    }
    drop(out_tx);
    let _ = writer.await;
}

fn image_frames(
    image: &Image,
    network: &str,
    key: &str,
    meta: &BTreeMap<String, String>,
) -> Vec<Message> {
    let (archived_as, archive_error) = match &image.archived {
        Archived::Planned { path, .. } => (Some(path.as_str()), None),
        Archived::Failed(why) => (None, Some(why.as_str())),
        Archived::Disabled => (None, None),
    };
    vec![
        json(&ServerFrame::Image {
            id: &image.id,
            network,
            key,
            content_type: &image.content_type,
            size: image.bytes.len(),
            metadata: &image.metadata,
            meta,
            info: &image.info,
            archived_as,
            archive_error,
        }),
        Message::Binary(image.bytes.clone()),
    ]
}
