//! What the resolver does with one request message: decide the answer, send it, then settle the
//! message with JetStream.
//!
//! | outcome of the read | reply | then |
//! | --- | --- | --- |
//! | image within the inline limit | `ok` with the bytes | ack |
//! | larger image, request accepts streams | a chunked transfer ([`chunks`](super::chunks)) | ack, or term if the receiver leaves |
//! | larger image, request does not accept streams | `too_large` | term |
//! | not found, bad key, bad body, too large, past its deadline | the error | term |
//! | store failing, attempts left | none | nak with a growing delay |
//! | store failing, last attempt | `store_unavailable` | term |
//! | no callback header, or one `validate::callback` refuses | none; copied to the dead-letter stream ([`dlq`](super::dlq)) | term |
//! | a gateway's callback on a request not published by a gateway (provenance) | none; copied to the dead-letter stream | term |

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use imgfetch_common::codec;
use imgfetch_common::digest::sha256_hex;
use imgfetch_common::message::{ImageHead, ReplyHead, RequestHead, OCTET_STREAM};
use imgfetch_common::protocol::{
    header, network_of_subject, request_origin, DeadReason, ErrorCode, FetchRequest, Origin,
    GATEWAY_REQUEST_PREFIX, REPLY_PREFIX, STATUS_OK,
};
use imgfetch_common::validate;

use super::chunks;
use super::context::{
    bounded, wait_for_permit, Context, Decision, Lease, Outgoing, Reply, Settle, Unsettled,
    FLUSH_TIMEOUT,
};
use crate::metric;
use crate::store::info;
use crate::store::{Fetched, Limits, StoreError, StoreErrorKind};
use imgfetch_common::info::ImageInfo;
use imgfetch_common::prometheus::Held;

/// Handles one message end to end. Errors mean the message was left unsettled and JetStream
/// will redeliver it after the ack wait.
pub async fn handle(
    ctx: &Context,
    message: jetstream::Message,
    mut lease: Lease,
) -> Result<(), async_nats::Error> {
    let _in_flight =
        Held::new(metrics::gauge!(metric::REQUESTS_IN_FLIGHT, "network" => ctx.network.clone()));
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    if delivered > 1 {
        metrics::counter!(metric::REDELIVERIES_TOTAL, "network" => ctx.network.clone())
            .increment(1);
    } else if let Ok(info) = message.info() {
        // From the stream storing the request to this resolver taking it; a redelivery's wait
        // would include its backoff, so only first deliveries are timed.
        let waited = time::OffsetDateTime::now_utc() - info.published;
        metrics::histogram!(metric::QUEUE_WAIT_SECONDS, "network" => ctx.network.clone())
            .record(waited.as_seconds_f64().max(0.0));
    }
    let callback = RequestHead::from_headers(message.headers.as_ref()).callback;
    if let Some((reason, _)) = callback_refusal(&message.subject, callback.as_deref()) {
        // Copied before the term: a copy that fails leaves the request to be redelivered.
        let stream_seq = message.info().map(|i| i.stream_sequence)?;
        ctx.dead_letters
            .copy(&super::dlq::Letter {
                subject: &message.subject,
                headers: message.headers.as_ref(),
                payload: &message.payload,
                reason,
                deliveries: u64::try_from(delivered).unwrap_or(1),
                stream_seq,
                advisory: None,
            })
            .await?;
    }
    let decision = decide(
        ctx,
        &message.subject,
        message.headers.as_ref(),
        &message.payload,
        delivered,
    )
    .await;
    // The ack goes out only once the reply is written out on the connection it was published
    // on: a reconnect in between could drop the unwritten reply while the ack went out on the
    // new connection. A reply that may be lost leaves the message unsettled; it is redelivered
    // and answered again, and the gateway drops a second reply by its token
    // (docs/PROTOCOL.md, Guarantees).
    let connects = ctx.client.statistics().connects.load(Ordering::Relaxed);
    let sent = decision.reply.is_some() || decision.stream.is_some();
    if let Some((callback, reply)) = decision.reply {
        let publish = ctx
            .client
            .publish_with_headers(callback, reply.headers, reply.body);
        bounded("the reply", publish).await?;
    }
    let settle = match decision.stream {
        Some(out) => {
            // From here the pace is the receiver's: give the slot and the network's credit
            // back, and wait for one of the resolver's stream permits instead.
            lease.release();
            let _stream = wait_for_permit(
                &ctx.streams,
                &message,
                (ctx.ack_wait / 3).max(Duration::from_millis(100)),
                &ctx.network,
            )
            .await;
            let _counted = Held::new(metrics::gauge!(metric::STREAMS_IN_PROGRESS));
            chunks::send(ctx, &message, out).await?
        }
        None => decision.settle,
    };
    if sent {
        tokio::time::timeout(FLUSH_TIMEOUT, ctx.client.flush())
            .await
            .map_err(|_| Unsettled::FlushTimeout)?
            .map_err(Unsettled::Flush)?;
        if ctx.client.statistics().connects.load(Ordering::Relaxed) != connects {
            return Err(Unsettled::Reconnected.into());
        }
    }
    if sent {
        match settle {
            Settle::Ack => ctx.counts.image(),
            Settle::Term => ctx.counts.error(),
            Settle::Nak(_) => {}
        }
    }
    let kind = match settle {
        Settle::Ack => AckKind::Ack,
        Settle::Nak(delay) => AckKind::Nak(Some(delay)),
        Settle::Term => AckKind::Term,
    };
    bounded("the ack", message.ack_with(kind)).await
}

/// Decides the answer to one message. `delivered` counts deliveries, this one included.
pub async fn decide(
    ctx: &Context,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    delivered: i64,
) -> Decision {
    let RequestHead {
        callback,
        msg_id: header_id,
        accept_stream: accepts_stream,
        deadline_ms,
    } = RequestHead::from_headers(headers);
    if let Some((reason, why)) = callback_refusal(subject, callback.as_deref()) {
        let reason = reason.as_str();
        tracing::warn!(
            subject,
            callback,
            why,
            "request without a usable {}; termed",
            header::CALLBACK
        );
        metrics::counter!(metric::DROPPED_TOTAL, "reason" => reason).increment(1);
        return Decision {
            reply: None,
            settle: Settle::Term,
            stream: None,
        };
    }
    let callback = callback.unwrap_or_default();
    let term_with = |id: Option<&str>, code: ErrorCode, message: String| {
        metrics::counter!(metric::REPLIES_TOTAL, "network" => ctx.network.clone(), "status" => code.as_str())
            .increment(1);
        Decision {
            reply: Some((callback.clone(), error_reply(id, ctx, code, &message))),
            settle: Settle::Term,
            stream: None,
        }
    };

    let request: FetchRequest = match codec::decode(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(subject, error = %e, "malformed request");
            return term_with(
                header_id.as_deref(),
                ErrorCode::InvalidRequest,
                e.to_string(),
            );
        }
    };
    let network = network_of_subject(subject).unwrap_or_default();
    if let Err(e) = validate::request(&request, network) {
        let id = validate::id(&request.id)
            .is_ok()
            .then_some(request.id.as_str());
        return term_with(id, ErrorCode::InvalidRequest, e.to_string());
    }
    let id = request.id.as_str();
    if let Some(deadline_ms) = deadline_ms {
        if past_deadline(deadline_ms) {
            return term_with(
                Some(id),
                ErrorCode::Timeout,
                "the request's deadline passed before a resolver took it".into(),
            );
        }
    }

    let read = tokio::time::timeout(ctx.store_timeout, read_with_info(ctx, &request)).await;
    let err = match read {
        Ok(Ok((fetched, info))) if fetched.body.is_some() => {
            if !accepts_stream {
                return term_with(
                    Some(id),
                    ErrorCode::TooLarge,
                    format!(
                        "the image is {} bytes, over the {}-byte limit of one message; ask \
                         through the gateway (HTTP or websocket), which takes it in chunks",
                        fetched.size, ctx.max_inline_bytes
                    ),
                );
            }
            let head = ok_head(&request, ctx, &fetched, info, None);
            if header_bytes(&head.to_headers()) as u64 > ctx.max_payload {
                return term_with(
                    Some(id),
                    ErrorCode::TooLarge,
                    format!(
                        "the image's metadata takes more than the server's {}-byte limit",
                        ctx.max_payload
                    ),
                );
            }
            let Some(body) = fetched.body else {
                unreachable!("matched on a body")
            };
            return Decision {
                reply: None,
                settle: Settle::Ack,
                stream: Some(Outgoing {
                    id: id.to_owned(),
                    callback,
                    head,
                    size: fetched.size,
                    first: fetched.bytes,
                    body,
                }),
            };
        }
        Ok(Ok((fetched, info))) => {
            let reply = ok_reply(&request, ctx, fetched, info);
            // Headers (metadata, meta) usually fit the headroom; when they do not, the message
            // could never be published, so say so instead of failing forever.
            let size = reply.body.len() + header_bytes(&reply.headers);
            if size as u64 > ctx.max_payload {
                return term_with(
                    Some(id),
                    ErrorCode::TooLarge,
                    format!(
                        "image and metadata take {size} bytes, over the server's {}-byte limit",
                        ctx.max_payload
                    ),
                );
            }
            metrics::counter!(metric::REPLIES_TOTAL, "network" => ctx.network.clone(), "status" => STATUS_OK)
                .increment(1);
            metrics::counter!(metric::IMAGE_BYTES_TOTAL, "network" => ctx.network.clone())
                .increment(reply.body.len() as u64);
            return Decision {
                reply: Some((callback, reply)),
                settle: Settle::Ack,
                stream: None,
            };
        }
        Ok(Err(e)) => e,
        Err(_) => {
            tracing::warn!(id, key = request.key, "store read timed out");
            return retry_or_give_up(
                ctx,
                delivered,
                callback,
                id,
                format!("store read took longer than {:?}", ctx.store_timeout),
            );
        }
    };
    match err.kind() {
        StoreErrorKind::NotFound => term_with(
            Some(id),
            ErrorCode::NotFound,
            format!(
                "no image at key {:?} in network {:?}",
                request.key, ctx.network
            ),
        ),
        StoreErrorKind::InvalidKey => {
            term_with(Some(id), ErrorCode::InvalidRequest, err.to_string())
        }
        StoreErrorKind::TooLarge => term_with(Some(id), ErrorCode::TooLarge, err.to_string()),
        _ => {
            tracing::warn!(id, key = request.key, error = %err, delivered, "store read failed");
            retry_or_give_up(ctx, delivered, callback, id, err.to_string())
        }
    }
}

/// Why a request's callback cannot be answered on, if it cannot. One rule for callbacks,
/// `common`'s: never a `$` server subject, never imgfetch's own request, ping or flow subjects
/// or a component's inbox, never a wildcard. And provenance: a gateway's callback
/// (`imgfetch.reply.>`) is answered only for a request that came on a gateway's subject
/// (`imgfetch.gwreq.<network>`), which only gateways may publish on, so nobody else can make a
/// resolver answer there (docs/SECURITY.md). A refused callback gets no reply at all.
fn callback_refusal(subject: &str, callback: Option<&str>) -> Option<(DeadReason, String)> {
    let Some(callback) = callback else {
        return Some((DeadReason::NoCallback, "no callback header".to_owned()));
    };
    if let Err(e) = validate::callback(callback) {
        return Some((DeadReason::BadCallback, e.to_string()));
    }
    let gateway_callback = callback
        .strip_prefix(REPLY_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'));
    let from_gateway = matches!(request_origin(subject), Some((Origin::Gateway, _)));
    if gateway_callback && !from_gateway {
        return Some((
            DeadReason::CallbackNotAllowed,
            format!(
                "a gateway's callback ({REPLY_PREFIX}.>) is answered only for requests a gateway \
                 published on {GATEWAY_REQUEST_PREFIX}.<network>; this one came on {subject}"
            ),
        ));
    }
    None
}

fn retry_or_give_up(
    ctx: &Context,
    delivered: i64,
    callback: String,
    id: &str,
    message: String,
) -> Decision {
    let delivered = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
    if delivered < ctx.store_attempts {
        let factor = 2u32.saturating_pow(delivered - 1);
        let delay = ctx
            .retry_delay
            .saturating_mul(factor)
            .min(ctx.retry_delay_max);
        metrics::counter!(metric::RETRIES_TOTAL).increment(1);
        return Decision {
            reply: None,
            settle: Settle::Nak(delay),
            stream: None,
        };
    }
    metrics::counter!(metric::REPLIES_TOTAL, "network" => ctx.network.clone(), "status" => ErrorCode::StoreUnavailable.as_str()).increment(1);
    let message = format!("store failed {delivered} times; last error: {message}");
    Decision {
        reply: Some((
            callback,
            error_reply(Some(id), ctx, ErrorCode::StoreUnavailable, &message),
        )),
        settle: Settle::Term,
        stream: None,
    }
}

fn past_deadline(deadline_ms: u128) -> bool {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    now_ms > deadline_ms
}

fn error_reply(id: Option<&str>, ctx: &Context, code: ErrorCode, message: &str) -> Reply {
    Reply {
        headers: ReplyHead::error(id, code)
            .from_resolver(&ctx.network, &ctx.instance)
            .to_headers(),
        body: Bytes::from(message.to_owned()),
    }
}

/// The head of an `ok` answer, inline (with the bytes' SHA-256) or the head of a stream.
fn ok_head(
    request: &FetchRequest,
    ctx: &Context,
    fetched: &Fetched,
    info: ImageInfo,
    sha256: Option<String>,
) -> ReplyHead {
    let content_type = infer::get(&fetched.bytes)
        .map(|t| t.mime_type())
        .unwrap_or(OCTET_STREAM);
    let image = ImageHead {
        key: request.key.clone(),
        content_type: content_type.to_owned(),
        size: Some(fetched.size),
        last_modified: Some(fetched.last_modified.clone()),
        etag: fetched.e_tag.clone(),
        sha256,
        info,
    };
    ReplyHead::ok(&request.id, image).from_resolver(&ctx.network, &ctx.instance)
}

fn ok_reply(request: &FetchRequest, ctx: &Context, fetched: Fetched, info: ImageInfo) -> Reply {
    let sha256 = sha256_hex(&fetched.bytes);
    let headers = ok_head(request, ctx, &fetched, info, Some(sha256)).to_headers();
    Reply {
        headers,
        body: fetched.bytes,
    }
}

/// Reads the image and its sidecar (at once), and gathers the associated information.
async fn read_with_info(
    ctx: &Context,
    request: &FetchRequest,
) -> Result<(Fetched, ImageInfo), StoreError> {
    let sidecar_key = format!("{}{}", request.key, info::SIDECAR_SUFFIX);
    let reading = std::time::Instant::now();
    let (image, sidecar) = ctx
        .store
        .read_pair(
            &request.key,
            Limits {
                max: ctx.max_image_bytes,
                inline: ctx.max_inline_bytes,
            },
            &sidecar_key,
            info::MAX_SIDECAR_BYTES,
        )
        .await;
    metrics::histogram!(metric::STORE_READ_SECONDS, "network" => ctx.network.clone())
        .record(reading.elapsed().as_secs_f64());
    let fetched = image?;
    let sidecar = match sidecar {
        Ok(found) => match info::from_sidecar(&found.bytes) {
            Ok(partial) => partial,
            Err(err) => {
                tracing::warn!(key = sidecar_key, %err, "sidecar is not a JSON object; ignored");
                info::Partial::default()
            }
        },
        Err(err) => match err.kind() {
            StoreErrorKind::NotFound => info::Partial::default(),
            // A store that fails now fails the request, so that it is retried with the sidecar
            // rather than archived without it.
            StoreErrorKind::Transient => return Err(err),
            _ => {
                tracing::warn!(key = sidecar_key, %err, "sidecar unreadable; ignored");
                info::Partial::default()
            }
        },
    };
    let store_metadata = info::from_fields(
        fetched
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), info::FieldValue::Text(v))),
    );
    let exif = info::from_exif(&fetched.bytes);
    let merged = info::merge(&ctx.network, &request.meta, [sidecar, store_metadata, exif]);
    Ok((fetched, merged))
}

/// Bytes the headers take on the wire, near enough: `Name: value\r\n` each, plus the preamble.
fn header_bytes(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    lines + 16
}
