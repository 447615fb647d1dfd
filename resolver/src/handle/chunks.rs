//! Sends an image larger than one message as a stream of chunks on the callback subject, at the
//! pace its receiver grants.
//!
//! 1. A **head** on the callback: the headers of an `ok` reply (metadata, information), the
//!    size, the chunk size and count, and `Imgfetch-Flow`: a fresh `imgfetch.flow.<random>`
//!    subject this resolver listens on (gateways may publish there; only resolvers listen).
//! 2. The receiver sends **credit** to that subject (`Imgfetch-Credit: N`: chunks up to N may
//!    go); nothing is sent before the first credit.
//! 3. **Chunks** `1..=N` on the callback, each with `Imgfetch-Seq`, read by ranges one ahead of
//!    the one being sent, so at most two chunks of an image are in this process at once.
//! 4. The **end**: `Imgfetch-Sha256` of every byte sent. Or, if the store fails for good
//!    mid-way, an error status instead.
//!
//! While it waits for credit the JetStream message is kept alive with progress acks. A
//! receiver silent for the idle timeout, or one that sends `Imgfetch-Cancel`, ends the stream:
//! nobody waits for the rest, so the message is terminated, not redelivered.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use imgfetch_common::digest::Hasher;
use imgfetch_common::message::{Chunk, Chunked, ChunkedEnd, Flow, Status};
use imgfetch_common::protocol::{self, ErrorCode, STATUS_OK};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::context::{bounded, Context, Outgoing, Settle};
use crate::metric;
use crate::store::{Body, StoreError, StoreErrorKind};

/// How a stream ended early.
enum Ended {
    /// The receiver cancelled or went silent: nobody to answer.
    Abandoned(String),
    /// The store failed for good: answer this error.
    Failed(ErrorCode, String),
}

/// Streams `out` and says how to settle the message.
pub async fn send(
    ctx: &Context,
    message: &jetstream::Message,
    out: Outgoing,
) -> Result<Settle, async_nats::Error> {
    let flow = protocol::new_flow_subject(ctx.zone.as_deref());
    let mut credits = bounded(
        "the credit subscription",
        ctx.client.subscribe(flow.clone()),
    )
    .await?;
    let chunk = ctx.chunk_bytes;
    let chunks = out.size.div_ceil(chunk);
    let mut head = out.head.clone();
    head.chunked = Some(Chunked {
        flow: flow.clone(),
        chunk_size: chunk,
        chunks,
    });
    let head = head.to_headers();
    bounded(
        "the stream's head",
        ctx.client
            .publish_with_headers(out.callback.clone(), head, Bytes::new()),
    )
    .await?;
    metrics::counter!(metric::STREAMS_TOTAL).increment(1);

    let mut sender = Sender {
        ctx,
        message,
        out: &out,
        flow: &flow,
        credits: &mut credits,
        credit: 0,
        last_heard: Instant::now(),
        last_progress: Instant::now(),
    };
    let result = sender.run(chunks).await;
    let _ = bounded("the unsubscribe", credits.unsubscribe()).await;
    match result {
        Ok(sha256) => {
            let end = ChunkedEnd {
                id: out.id.clone(),
                flow: flow.clone(),
                status: Status::Ok,
                sha256: Some(sha256),
            }
            .to_headers();
            bounded(
                "the stream's end",
                ctx.client
                    .publish_with_headers(out.callback.clone(), end, Bytes::new()),
            )
            .await?;
            metrics::counter!(metric::REPLIES_TOTAL, "network" => ctx.network.clone(), "status" => STATUS_OK)
                .increment(1);
            metrics::counter!(metric::IMAGE_BYTES_TOTAL, "network" => ctx.network.clone())
                .increment(out.size);
            Ok(Settle::Ack)
        }
        Err(StreamError::Nats(err)) => Err(err),
        Err(StreamError::Ended(Ended::Abandoned(why))) => {
            tracing::info!(id = out.id, why, "stream abandoned by its receiver");
            metrics::counter!(metric::STREAMS_ABANDONED_TOTAL).increment(1);
            Ok(Settle::Term)
        }
        Err(StreamError::Ended(Ended::Failed(code, why))) => {
            tracing::warn!(id = out.id, why, "stream failed");
            let end = ChunkedEnd {
                id: out.id.clone(),
                flow: flow.clone(),
                status: Status::Error(code),
                sha256: None,
            }
            .to_headers();
            bounded(
                "the stream's error",
                ctx.client
                    .publish_with_headers(out.callback.clone(), end, Bytes::from(why)),
            )
            .await?;
            metrics::counter!(metric::REPLIES_TOTAL, "network" => ctx.network.clone(), "status" => code.as_str())
                .increment(1);
            Ok(Settle::Term)
        }
    }
}

enum StreamError {
    Nats(async_nats::Error),
    Ended(Ended),
}

impl<E: Into<async_nats::Error>> From<E> for StreamError {
    fn from(err: E) -> Self {
        StreamError::Nats(err.into())
    }
}

struct Sender<'a> {
    ctx: &'a Context,
    message: &'a jetstream::Message,
    out: &'a Outgoing,
    flow: &'a str,
    credits: &'a mut async_nats::Subscriber,
    credit: u64,
    last_heard: Instant,
    last_progress: Instant,
}

impl Sender<'_> {
    /// Sends every chunk; the SHA-256 of what was sent.
    async fn run(&mut self, chunks: u64) -> Result<String, StreamError> {
        let mut hasher = Hasher::new();
        let mut next = self.read(1, chunks);
        for seq in 1..=chunks {
            let bytes = next.await.map_err(StreamError::Ended)?;
            // The next read runs while this chunk waits for credit and goes out.
            next = self.read(seq + 1, chunks);
            self.wait_for_credit(seq).await?;
            hasher.update(&bytes);
            let headers = Chunk {
                id: self.out.id.clone(),
                flow: self.flow.to_owned(),
                seq,
            }
            .to_headers();
            let publish =
                self.ctx
                    .client
                    .publish_with_headers(self.out.callback.clone(), headers, bytes);
            bounded("a chunk", publish).await?;
            self.keep_alive().await?;
        }
        Ok(hasher.finish())
    }

    /// Starts reading chunk `seq` (nothing past the last).
    fn read(
        &self,
        seq: u64,
        chunks: u64,
    ) -> futures::future::BoxFuture<'static, Result<Bytes, Ended>> {
        if seq > chunks {
            return futures::future::ready(Ok(Bytes::new())).boxed();
        }
        let chunk = self.ctx.chunk_bytes;
        let range = (seq - 1) * chunk..(seq * chunk).min(self.out.size);
        if range.end <= self.out.first.len() as u64 {
            let slice = self
                .out
                .first
                .slice(range.start as usize..range.end as usize);
            return futures::future::ready(Ok(slice)).boxed();
        }
        let body = self.out.body.clone();
        let attempts = self.ctx.store_attempts.max(1);
        let (delay, delay_max) = (self.ctx.retry_delay, self.ctx.retry_delay_max);
        let timeout = self.ctx.store_timeout;
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            read_with_retries(&body, range, attempts, delay, delay_max, timeout).await
        }));
        async move {
            match task.await {
                Ok(result) => result,
                Err(join) => Err(Ended::Failed(
                    ErrorCode::Internal,
                    format!("chunk read failed: {join}"),
                )),
            }
        }
        .boxed()
    }

    /// Waits until chunk `seq` may go.
    async fn wait_for_credit(&mut self, seq: u64) -> Result<(), StreamError> {
        // A cancel may be waiting even with credit left.
        while let Some(Some(message)) = self.credits.next().now_or_never() {
            self.heard(&message)?;
        }
        while self.credit < seq {
            let idle_ends = self.last_heard + self.ctx.stream_idle;
            let progress_due = self.last_progress + self.progress_every();
            tokio::select! {
                message = self.credits.next() => match message {
                    Some(message) => self.heard(&message)?,
                    None => {
                        return Err(StreamError::Ended(Ended::Abandoned(
                            "the flow subscription ended".into(),
                        )))
                    }
                },
                _ = tokio::time::sleep_until(idle_ends.min(progress_due)) => {
                    if Instant::now() >= idle_ends {
                        return Err(StreamError::Ended(Ended::Abandoned(format!(
                            "no credit from the receiver for {:?}",
                            self.ctx.stream_idle
                        ))));
                    }
                    self.keep_alive().await?;
                }
            }
        }
        Ok(())
    }

    fn heard(&mut self, message: &async_nats::Message) -> Result<(), StreamError> {
        self.last_heard = Instant::now();
        match Flow::from_headers(message.headers.as_ref()) {
            Some(Flow::Credit(n)) => self.credit = self.credit.max(n),
            Some(Flow::Cancel(why)) => return Err(StreamError::Ended(Ended::Abandoned(why))),
            None => {}
        }
        Ok(())
    }

    fn progress_every(&self) -> Duration {
        (self.ctx.ack_wait / 3).max(Duration::from_millis(100))
    }

    /// Tells JetStream the request is still being worked on, when that is due.
    async fn keep_alive(&mut self) -> Result<(), StreamError> {
        if self.last_progress.elapsed() >= self.progress_every() {
            bounded("a progress ack", self.message.ack_with(AckKind::Progress)).await?;
            self.last_progress = Instant::now();
        }
        Ok(())
    }
}

/// A range read, retried like a whole read: the same range can be read again safely.
async fn read_with_retries(
    body: &Body,
    range: std::ops::Range<u64>,
    attempts: u32,
    mut delay: Duration,
    delay_max: Duration,
    timeout: Duration,
) -> Result<Bytes, Ended> {
    let mut last = String::new();
    for attempt in 1..=attempts {
        let err: StoreError = match tokio::time::timeout(timeout, body.read(range.clone())).await {
            Ok(Ok(bytes)) => return Ok(bytes),
            Ok(Err(err)) => err,
            Err(_) => {
                last = format!("a chunk read took longer than {timeout:?}");
                tracing::warn!(attempt, "{last}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(delay_max);
                continue;
            }
        };
        if err.kind() == StoreErrorKind::NotFound {
            return Err(Ended::Failed(
                ErrorCode::StoreUnavailable,
                format!("the image vanished while it was being sent: {err}"),
            ));
        }
        tracing::warn!(attempt, error = %err, "chunk read failed");
        last = err.to_string();
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(delay_max);
        }
    }
    Err(Ended::Failed(
        ErrorCode::StoreUnavailable,
        format!("a chunk read failed {attempts} times; last error: {last}"),
    ))
}
