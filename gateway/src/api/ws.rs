//! The websocket protocol on `/v1/ws`.
//!
//! Client frames are JSON text: `{"type":"fetch","id"?,"network","key","meta"?}`. The server
//! answers `accepted` once JetStream has stored the request, then exactly one `image` frame
//! followed by `frames` binary frames of at most `frame_bytes` each (`size` bytes in all), or
//! one `error` frame. A streamed image that fails part-way ends with an `error` frame for its
//! id in place of its remaining binary frames; the last binary frame is only sent once the
//! image is verified. Requests run concurrently, so answers come in completion order; an
//! image's frames are never interleaved with anything else.
//!
//! A client that sends nothing for the idle timeout while it has nothing in flight is closed
//! with a close frame (code 1000) whose reason says so; a fetch for a network its token may not
//! fetch is answered with an `error` frame `forbidden`, and one beyond the token's in-flight
//! limit with `too_many_requests`.
//!
//! `{"type":"result","id"}` replays the answer to an earlier request, made through any gateway
//! (see [`crate::results`]): an `image` frame and its binary frames, or an `error` frame, with
//! no `accepted` frame; an unknown, expired or other token's id is `unknown_request`.
//!
//! The session loop is generic over `Sink` and `Stream`, like axum's testing-websockets example.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream, StreamExt};
pub use imgfetch_common::frames::{ClientFrame, ServerFrame};
use imgfetch_common::protocol::{ErrorCode, FetchRequest};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::archive::Archived;
use crate::auth::Client;
use crate::failure::Failure;
use crate::image::outcome::{Body, Image};
use crate::metric;
use crate::queue::dispatch::Dispatcher;
use crate::queue::replay;
use crate::results::Results;

/// Limits of one session.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// How long one frame may take to reach the client.
    pub send_timeout: Duration,
    /// How long the client may stay silent, with nothing in flight, before it is closed.
    pub idle_timeout: Duration,
}

/// What the session's writer sends: frames as they are, or a streamed image frame by frame.
enum Out {
    Frames(Vec<Message>),
    Stream {
        id: String,
        head: Message,
        body: Body,
    },
    /// An answer sent while holding a token's in-flight slot, released once it is sent.
    Holding(Box<Out>, crate::auth::InFlight),
}

/// Sends frames in one write within `timeout`; `false` if the client is gone or too slow.
async fn send_frames<W: Sink<Message> + Unpin>(
    sink: &mut W,
    frames: Vec<Message>,
    timeout: Duration,
) -> bool {
    let write = async {
        for frame in frames {
            sink.feed(frame).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::info!("websocket client too slow; disconnecting");
            metrics::counter!(metric::SLOW_CLIENTS_TOTAL).increment(1);
            false
        }
    }
}

fn json(frame: &ServerFrame<'_>) -> Message {
    Message::Text(Utf8Bytes::from(frame.to_json()))
}

fn error_frame(id: Option<&str>, failure: &Failure) -> Message {
    json(&ServerFrame::Error {
        id: id.map(Cow::Borrowed),
        code: failure.code,
        message: Cow::Borrowed(&failure.message),
    })
}

/// What a client's text frame asks for.
#[derive(Debug)]
pub enum Asked {
    /// Fetch an image; the id is the gateway's own when the frame had none. Not validated
    /// yet: [`Dispatcher::submit`] does that, after the token's checks.
    Fetch(FetchRequest),
    /// Replay the answer to an earlier request (the id is validated when it is looked up).
    Result {
        /// The earlier request's id, as sent.
        id: String,
    },
}

/// Reads one text frame from the client. A frame that is not a [`ClientFrame`] is the
/// `invalid_request` failure that its `error` frame (without an id) carries.
pub fn read_frame(text: &str) -> Result<Asked, Failure> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame::Fetch {
            id,
            network,
            key,
            meta,
        }) => Ok(Asked::Fetch(FetchRequest {
            id: id.unwrap_or_else(crate::queue::dispatch::new_id),
            network: Some(network),
            key,
            meta,
        })),
        Ok(ClientFrame::Result { id }) => Ok(Asked::Result { id }),
        Err(err) => Err(Failure::new(
            ErrorCode::InvalidRequest,
            format!("malformed frame: {err}"),
        )),
    }
}

/// What a binary frame from the client gets: an `error` frame, and the session goes on.
pub fn binary_frame_refused() -> Failure {
    Failure::new(
        ErrorCode::InvalidRequest,
        "binary frames are not accepted; send JSON text frames",
    )
}

/// Runs one websocket session until the client leaves, the client is too slow, or shutdown
/// (then in-flight requests still get their answers).
pub async fn session<W, R, E>(
    mut sink: W,
    mut source: R,
    dispatcher: Arc<Dispatcher>,
    results: Arc<Results>,
    client: Client,
    limits: Limits,
    shutdown: CancellationToken,
) where
    W: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    let _open = imgfetch_common::prometheus::Held::new(metrics::gauge!(metric::WEBSOCKETS));
    // Each item is sent whole, so an image's JSON frame and its binary frames stay together.
    // A streamed image is pulled by the writer itself, so the socket's pace is the stream's.
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(limits.max_in_flight.max(1));
    let gone = CancellationToken::new();
    let writer_gone = gone.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let (out, held) = match out {
                Out::Holding(out, held) => (*out, Some(held)),
                out => (out, None),
            };
            let sent = match out {
                Out::Frames(frames) => send_frames(&mut sink, frames, limits.send_timeout).await,
                Out::Stream { id, head, mut body } => {
                    let mut sent = send_frames(&mut sink, vec![head], limits.send_timeout).await;
                    while sent {
                        let frame = match body.next_chunk().await {
                            Some(Ok(bytes)) => Message::Binary(bytes),
                            Some(Err(f)) => error_frame(Some(&id), &f),
                            None => break,
                        };
                        let last = matches!(frame, Message::Text(_));
                        sent = send_frames(&mut sink, vec![frame], limits.send_timeout).await;
                        if last {
                            break;
                        }
                    }
                    sent
                }
                Out::Holding(..) => unreachable!("answers are held once"),
            };
            drop(held);
            if !sent {
                writer_gone.cancel();
                return;
            }
        }
        // A client that stopped reading must not hold the session (and its slot) forever.
        let _ = tokio::time::timeout(limits.send_timeout, sink.send(Message::Close(None))).await;
    });

    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut tasks = JoinSet::new();
    let mut client_left = false;
    let mut shutting_down = false;
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    loop {
        while tasks.try_join_next().is_some() {}
        let next = tokio::select! {
            _ = shutdown.cancelled() => { shutting_down = true; break }
            _ = gone.cancelled() => { client_left = true; break }
            () = &mut idle => {
                // A request in flight is the client waiting, not idling.
                if slots.available_permits() < limits.max_in_flight {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                    continue;
                }
                let reason = format!(
                    "idle timeout: nothing sent for {} ms with nothing in flight",
                    limits.idle_timeout.as_millis()
                );
                let close = Message::Close(Some(CloseFrame {
                    code: close_code::NORMAL,
                    reason: Utf8Bytes::from(reason),
                }));
                metrics::counter!(metric::IDLE_WEBSOCKETS_CLOSED_TOTAL).increment(1);
                let _ = out_tx.send(Out::Frames(vec![close])).await;
                break;
            }
            next = source.next() => next,
        };
        idle.as_mut()
            .reset(tokio::time::Instant::now() + limits.idle_timeout);
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                let f = binary_frame_refused();
                let _ = out_tx.send(Out::Frames(vec![error_frame(None, &f)])).await;
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
        let request = match read_frame(text.as_str()) {
            Ok(Asked::Fetch(request)) => request,
            Ok(Asked::Result { id }) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    let f = too_many(limits.max_in_flight);
                    let _ = out_tx
                        .send(Out::Frames(vec![error_frame(Some(&id), &f)]))
                        .await;
                    continue;
                };
                let (dispatcher, results, client) =
                    (dispatcher.clone(), results.clone(), client.clone());
                let out = out_tx.clone();
                tasks.spawn(async move {
                    let answer = match imgfetch_common::validate::id(&id) {
                        Err(e) => Err(Failure::new(ErrorCode::InvalidRequest, e.to_string())),
                        Ok(()) => {
                            let until = tokio::time::Instant::now() + dispatcher.request_timeout();
                            replay::fetch(&results, &id, &client, &dispatcher, until).await
                        }
                    };
                    let answer = match answer {
                        Ok(mut replay) => {
                            let image = image_out(
                                &mut replay.image,
                                &replay.network,
                                &replay.key,
                                &replay.meta,
                            );
                            // A request run again holds its token's slot until its body is
                            // sent, as over HTTP.
                            match replay.held.take() {
                                Some(held) => Out::Holding(Box::new(image), held),
                                None => image,
                            }
                        }
                        Err(f) => Out::Frames(vec![error_frame(Some(&id), &f)]),
                    };
                    let _ = out.send(answer).await;
                    drop(permit);
                });
                continue;
            }
            Err(f) => {
                let _ = out_tx.send(Out::Frames(vec![error_frame(None, &f)])).await;
                continue;
            }
        };
        let token_slot = match client.begin(request.network.as_deref().unwrap_or_default()) {
            Ok(held) => held,
            Err(f) => {
                let _ = out_tx
                    .send(Out::Frames(vec![error_frame(Some(&request.id), &f)]))
                    .await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let f = too_many(limits.max_in_flight);
            let _ = out_tx
                .send(Out::Frames(vec![error_frame(Some(&request.id), &f)]))
                .await;
            continue;
        };
        let dispatcher = dispatcher.clone();
        let identity = client.identity().map(str::to_owned);
        let out = out_tx.clone();
        let span = tracing::error_span!(
            "request",
            id = request.id,
            network = request.network.as_deref().unwrap_or_default()
        );
        tasks.spawn(
            async move {
                let id = request.id.clone();
                let network = request.network.clone().unwrap_or_default();
                let key = request.key.clone();
                let meta = request.meta.clone();
                let mut ticket = match dispatcher.submit(request, identity.as_deref()).await {
                    Ok(t) => t,
                    Err(f) => {
                        let _ = out
                            .send(Out::Frames(vec![error_frame(Some(&id), &f)]))
                            .await;
                        return;
                    }
                };
                // "accepted" means asked-for-by-id anywhere: the record is written first.
                ticket.recorded().await;
                if out
                    .send(Out::Frames(vec![json(&ServerFrame::Accepted {
                        id: (&id).into(),
                    })]))
                    .await
                    .is_err()
                {
                    return;
                }
                let mut image = match ticket.outcome().await {
                    Ok(image) => image,
                    Err(f) => {
                        let _ = out
                            .send(Out::Frames(vec![error_frame(Some(&id), &f)]))
                            .await;
                        return;
                    }
                };
                let answer = image_out(&mut image, &network, &key, &meta);
                if out.send(answer).await.is_err() {
                    return;
                }
                // The request is answered; the archive report below must not hold its slots.
                drop(permit);
                drop(token_slot);
                // The archive write runs behind the image; report it only if it fails.
                if let Archived::Planned { path, written } = image.archived {
                    if let Ok(Err(message)) = written.await {
                        let frame = json(&ServerFrame::ArchiveFailed {
                            id: (&id).into(),
                            archived_as: (&path).into(),
                            message: message.to_string().into(),
                        });
                        let _ = out.send(Out::Frames(vec![frame])).await;
                    }
                }
            }
            .instrument(span),
        );
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
        if shutting_down {
            // 1001 "going away": the client may reconnect at once, to another gateway.
            let close = Message::Close(Some(CloseFrame {
                code: close_code::AWAY,
                reason: Utf8Bytes::from_static("the gateway is shutting down"),
            }));
            let _ = out_tx.send(Out::Frames(vec![close])).await;
        }
    }
    drop(out_tx);
    if client_left {
        // A streamed image being written stops here; dropping it tells its resolver.
        writer.abort();
    }
    let _ = writer.await;
}

fn too_many(limit: usize) -> Failure {
    Failure::new(
        ErrorCode::Unavailable,
        format!("too many requests in flight on this connection (limit {limit})"),
    )
}

/// What the writer sends for `image`: its frame and bytes, or its frame and then its stream.
fn image_out(image: &mut Image, network: &str, key: &str, meta: &BTreeMap<String, String>) -> Out {
    let body = std::mem::replace(&mut image.body, Body::Inline(Default::default()));
    let head = image_frame(image, &body, network, key, meta);
    match body {
        Body::Inline(bytes) => Out::Frames(vec![head, Message::Binary(bytes)]),
        body => Out::Stream {
            id: image.id.clone(),
            head,
            body,
        },
    }
}

fn image_frame(
    image: &Image,
    body: &Body,
    network: &str,
    key: &str,
    meta: &BTreeMap<String, String>,
) -> Message {
    let (archived_as, archive_error) = match &image.archived {
        Archived::Planned { path, .. } => (Some(path.into()), None),
        Archived::Failed(why) => (None, Some(why.to_string().into())),
        Archived::Disabled => (None, None),
    };
    let (frames, frame_bytes) = (body.chunks(), body.chunk_size());
    json(&ServerFrame::Image {
        id: (&image.id).into(),
        network: network.into(),
        key: key.into(),
        content_type: (&image.content_type).into(),
        size: body.size(),
        frames,
        frame_bytes,
        metadata: Cow::Borrowed(&image.metadata),
        meta: Cow::Borrowed(meta),
        info: Cow::Borrowed(&image.info),
        archived_as,
        archive_error,
    })
}
