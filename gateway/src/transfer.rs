//! The receiving end of a streamed image: credit to the resolver as the client takes chunks,
//! checks on every chunk, and the SHA-256 before the image is reported whole.
//!
//! - **Credit.** Nothing flows until the client starts reading: the first
//!   [`next`](Transfer::next) grants a window of chunks, and each time half of it is used up
//!   the window is topped up. A slow client therefore slows the resolver down, and the gateway
//!   holds at most one window of the image (plus what NATS has in flight).
//! - **Checks.** Chunks must come in order, with no gap and no byte beyond the announced size;
//!   the SHA-256 on the end message must match what arrived. Until it does, the last chunk is
//!   held back, so a client never receives the whole image unless it is verified: a damaged
//!   image ends short, with an `integrity` error, and its archive copy is aborted.
//! - **Stalls.** With credit granted, a stream that sends nothing for the chunk timeout ends in
//!   a `timeout` error.
//! - **Leaving.** A transfer dropped before its end (the client left) tells the resolver to
//!   stop, and aborts the archive copy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use imgfetch_common::digest::Hasher;
use imgfetch_common::protocol::{self, header, ErrorCode};
use tokio::sync::mpsc;

use crate::archive::ArchiveSink;
use crate::outcome::Failure;

/// Longest a credit grant or a cancel may wait for the connection; a lost grant shows as a
/// stall, a lost cancel as a resolver that stops at its own idle limit.
const CREDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How streamed images are received.
#[derive(Clone, Copy, Debug)]
pub struct StreamSettings {
    /// Bytes a resolver may send ahead of the client.
    pub window_bytes: u64,
    /// Longest wait for a chunk while credit is out.
    pub chunk_timeout: Duration,
}

/// One message of a stream, as routed from the callback subscription.
#[derive(Debug)]
pub enum Part {
    /// Chunk `seq`.
    Chunk {
        /// Its number, from 1.
        seq: u64,
        /// Its bytes.
        bytes: Bytes,
    },
    /// The end, with the resolver's SHA-256.
    End {
        /// Lower-case hex.
        sha256: String,
    },
    /// The resolver gave up.
    Failed(Failure),
}

/// Streams being received, by flow subject: where the reply router sends their parts.
#[derive(Clone, Debug, Default)]
pub struct Streams {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    tx: mpsc::Sender<Part>,
    started: Arc<AtomicBool>,
    /// The callback token of the request the stream answers.
    token: String,
}

/// What became of a part handed to [`Streams::route`].
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// Queued for its transfer.
    Queued,
    /// No transfer has that flow (it ended, or never was).
    Unknown,
    /// The resolver sent beyond its credit; the transfer was failed.
    Overrun,
    /// The flow belongs to another request's stream: not delivered.
    Foreign,
}

impl Streams {
    /// Hands a part to the transfer of `flow`, if it came on that transfer's callback (`token`).
    /// Never waits: a transfer's queue holds a whole
    /// window, so only a resolver that ignores its credit can fill it.
    pub fn route(&self, flow: &str, token: &str, part: Part) -> Routed {
        let mut streams = self.inner.lock().expect("streams poisoned");
        let Some(entry) = streams.get(flow) else {
            return Routed::Unknown;
        };
        if entry.token != token {
            return Routed::Foreign;
        }
        match entry.tx.try_send(part) {
            Ok(()) => Routed::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                streams.remove(flow);
                metrics::gauge!("imgfetch_gateway_streams").decrement(1.0);
                Routed::Unknown
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the sender fails the transfer.
                streams.remove(flow);
                metrics::gauge!("imgfetch_gateway_streams").decrement(1.0);
                Routed::Overrun
            }
        }
    }

    /// Flow subjects of transfers that have not started: their resolvers wait for a first
    /// credit, and are told now and then that the wait is wanted.
    pub fn waiting(&self) -> Vec<String> {
        let streams = self.inner.lock().expect("streams poisoned");
        streams
            .iter()
            .filter(|(_, e)| !e.started.load(Ordering::Relaxed))
            .map(|(flow, _)| flow.clone())
            .collect()
    }

    /// Streams being received.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("streams poisoned").len()
    }

    /// No stream is being received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the head of a stream announced.
#[derive(Clone, Debug)]
pub struct Head {
    /// The request id.
    pub id: String,
    /// The resolver's flow subject.
    pub flow: String,
    /// Image size.
    pub size: u64,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Chunks that follow.
    pub chunks: u64,
}

impl Head {
    /// Reads the stream fields of a head message; `Err` says what is wrong.
    pub fn parse(id: &str, headers: &HeaderMap) -> Result<Head, String> {
        let get = |name: &str| headers.get(name).map(|v| v.as_str().trim().to_owned());
        let number = |name: &str| -> Result<u64, String> {
            get(name)
                .ok_or_else(|| format!("the stream's head has no {name}"))?
                .parse::<u64>()
                .map_err(|_| format!("the stream's head has a bad {name}"))
        };
        let head = Head {
            id: id.to_owned(),
            flow: get(header::FLOW).unwrap_or_default(),
            size: number(header::SIZE)?,
            chunk_size: number(header::CHUNK_SIZE)?,
            chunks: number(header::CHUNKS)?,
        };
        // Credit goes only where resolvers listen for it: a head that names any other subject
        // would have the gateway publish on it (the gateway role may not anyway).
        let flow_ok = head
            .flow
            .strip_prefix(protocol::FLOW_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            });
        if !flow_ok {
            return Err(format!(
                "the stream's head names flow subject {:?}, not one under {}.",
                head.flow,
                protocol::FLOW_PREFIX
            ));
        }
        if head.chunk_size == 0 || head.size.div_ceil(head.chunk_size) != head.chunks {
            return Err(format!(
                "the stream's head announces {} chunks of {} bytes for {} bytes",
                head.chunks, head.chunk_size, head.size
            ));
        }
        Ok(head)
    }
}

/// A streamed image being received; read it with [`next`](Transfer::next).
#[derive(Debug)]
pub struct Transfer {
    head: Head,
    client: async_nats::Client,
    rx: mpsc::Receiver<Part>,
    streams: Streams,
    started: Arc<AtomicBool>,
    window: u64,
    chunk_timeout: Duration,
    granted: u64,
    received: u64,
    bytes: u64,
    hasher: Hasher,
    held: Option<Bytes>,
    archive: Option<ArchiveSink>,
    done: bool,
}

impl Transfer {
    /// Registers a transfer for `head`, answering the request of callback `token`, with
    /// `streams`; parts routed to its flow on that callback come to it.
    pub fn new(
        head: Head,
        token: &str,
        client: async_nats::Client,
        streams: &Streams,
        settings: StreamSettings,
        archive: Option<ArchiveSink>,
    ) -> Transfer {
        let window = (settings.window_bytes / head.chunk_size.max(1)).clamp(2, 1024);
        let (tx, rx) = mpsc::channel(window as usize + 2);
        let started = Arc::new(AtomicBool::new(false));
        streams.inner.lock().expect("streams poisoned").insert(
            head.flow.clone(),
            Entry {
                tx,
                started: started.clone(),
                token: token.to_owned(),
            },
        );
        metrics::gauge!("imgfetch_gateway_streams").increment(1.0);
        Transfer {
            head,
            client,
            rx,
            streams: streams.clone(),
            started,
            window,
            chunk_timeout: settings.chunk_timeout,
            granted: 0,
            received: 0,
            bytes: 0,
            hasher: Hasher::new(),
            held: None,
            archive,
            done: false,
        }
    }

    /// The image's size.
    pub fn size(&self) -> u64 {
        self.head.size
    }

    /// Bytes per chunk: the most a [`next`](Transfer::next) returns.
    pub fn chunk_size(&self) -> u64 {
        self.head.chunk_size
    }

    /// Chunks in the image.
    pub fn chunks(&self) -> u64 {
        self.head.chunks
    }

    /// The next chunk; `None` once the image was delivered whole and verified. After an
    /// error, nothing more comes.
    pub async fn next(&mut self) -> Option<Result<Bytes, Failure>> {
        if self.done {
            return None;
        }
        self.started.store(true, Ordering::Relaxed);
        loop {
            self.top_up().await;
            let part = match tokio::time::timeout(self.chunk_timeout, self.rx.recv()).await {
                Ok(Some(part)) => part,
                Ok(None) => {
                    return Some(self.fail(Failure::new(
                        ErrorCode::Integrity,
                        "the resolver sent chunks beyond its credit",
                    )))
                }
                Err(_) => {
                    return Some(self.fail(Failure::new(
                        ErrorCode::Timeout,
                        format!(
                            "the stream stalled: no chunk for {:?} after chunk {} of {}",
                            self.chunk_timeout, self.received, self.head.chunks
                        ),
                    )))
                }
            };
            match part {
                Part::Chunk { seq, bytes } => {
                    if seq != self.received + 1 || seq > self.head.chunks {
                        return Some(self.fail(Failure::new(
                            ErrorCode::Integrity,
                            format!(
                                "chunk {seq} came after chunk {} of {}: a chunk is missing",
                                self.received, self.head.chunks
                            ),
                        )));
                    }
                    self.received = seq;
                    self.bytes += bytes.len() as u64;
                    let expected = if seq < self.head.chunks {
                        seq * self.head.chunk_size
                    } else {
                        self.head.size
                    };
                    if self.bytes != expected {
                        return Some(self.fail(Failure::new(
                            ErrorCode::Integrity,
                            format!(
                                "chunk {seq} brings the image to {} bytes where {expected} were \
                                 announced",
                                self.bytes
                            ),
                        )));
                    }
                    self.hasher.update(&bytes);
                    if let Some(archive) = self.archive.as_mut() {
                        archive.write(&bytes).await;
                    }
                    if seq == self.head.chunks {
                        // The last chunk waits for the checksum.
                        self.held = Some(bytes);
                        continue;
                    }
                    metrics::counter!("imgfetch_gateway_stream_bytes_total")
                        .increment(bytes.len() as u64);
                    return Some(Ok(bytes));
                }
                Part::End { sha256 } => {
                    if self.received != self.head.chunks {
                        return Some(self.fail(Failure::new(
                            ErrorCode::Integrity,
                            format!(
                                "the stream ended after chunk {} of {}",
                                self.received, self.head.chunks
                            ),
                        )));
                    }
                    let actual = std::mem::take(&mut self.hasher).finish();
                    if !actual.eq_ignore_ascii_case(sha256.trim()) {
                        return Some(self.fail(Failure::new(
                            ErrorCode::Integrity,
                            format!(
                                "the image arrived damaged: its SHA-256 is {actual}, the resolver \
                                 sent {sha256}"
                            ),
                        )));
                    }
                    self.done = true;
                    self.finish_registration();
                    if let Some(archive) = self.archive.take() {
                        archive.finish().await;
                    }
                    metrics::counter!("imgfetch_gateway_streams_completed_total").increment(1);
                    let last = self.held.take().unwrap_or_default();
                    metrics::counter!("imgfetch_gateway_stream_bytes_total")
                        .increment(last.len() as u64);
                    return Some(Ok(last));
                }
                Part::Failed(failure) => return Some(self.fail(failure)),
            }
        }
    }

    /// Grants more chunks when half the window is used up.
    async fn top_up(&mut self) {
        let outstanding = self.granted.saturating_sub(self.received);
        if self.granted >= self.head.chunks || outstanding > self.window / 2 {
            return;
        }
        let credit = (self.received + self.window).min(self.head.chunks);
        let mut headers = HeaderMap::new();
        headers.insert(header::CREDIT, credit.to_string().as_str());
        // A lost grant shows as a stall and ends in a timeout; nothing else to do here.
        let send = self
            .client
            .publish_with_headers(self.head.flow.clone(), headers, Bytes::new());
        match tokio::time::timeout(CREDIT_TIMEOUT, send).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(id = self.head.id, %err, "cannot send credit"),
            Err(_) => tracing::debug!(id = self.head.id, "credit not sent in time"),
        }
        self.granted = credit;
    }

    fn fail(&mut self, failure: Failure) -> Result<Bytes, Failure> {
        self.done = true;
        self.held = None;
        tracing::warn!(id = self.head.id, %failure, "streamed image failed");
        metrics::counter!("imgfetch_gateway_streams_failed_total", "code" => failure.code.as_str())
            .increment(1);
        if let Some(mut archive) = self.archive.take() {
            archive.discard(&failure.message);
        }
        self.cancel(&failure.message);
        self.finish_registration();
        Err(failure)
    }

    /// Tells the resolver to stop (it may still be sending).
    fn cancel(&self, why: &str) {
        let (client, flow) = (self.client.clone(), self.head.flow.clone());
        let mut headers = HeaderMap::new();
        headers.insert(header::CANCEL, why.replace(['\r', '\n'], " ").as_str());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let send = client.publish_with_headers(flow, headers, Bytes::new());
                let _ = tokio::time::timeout(CREDIT_TIMEOUT, send).await;
            });
        }
    }

    fn finish_registration(&mut self) {
        let mut streams = self.streams.inner.lock().expect("streams poisoned");
        if streams.remove(&self.head.flow).is_some() {
            metrics::gauge!("imgfetch_gateway_streams").decrement(1.0);
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(id = self.head.id, "streamed image abandoned by its client");
            metrics::counter!("imgfetch_gateway_streams_abandoned_total").increment(1);
            self.cancel("the client left");
            if let Some(mut archive) = self.archive.take() {
                archive.discard("the client left before the image was complete");
            }
        }
        self.finish_registration();
    }
}
