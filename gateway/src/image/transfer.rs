//! The receiving end of a streamed image: credit to the resolver as the client takes chunks,
//! checks on every chunk, and the SHA-256 before the image is reported whole.
//!
//! - **Credit.** Nothing flows until the client starts reading: the first
//!   [`next`](Transfer::next) grants a window of chunks, and each time half of it is used up
//!   the window is topped up. A slow client therefore slows the resolver down, and the gateway
//!   holds at most one window of the image (plus what NATS has in flight).
//! - **Window.** When the client has read every chunk of the earlier grants and waits for the
//!   first of a grant still on its way, half a window did not cover the link's round trip. The
//!   window is then sized from that grant's round trip and the client's reading time, up to
//!   its maximum, so that over a slow link it grows to the link's bandwidth-delay product; on
//!   a fast one it stays about as set.
//! - **Checks.** Chunks must come in order, with no gap and no byte beyond the announced size;
//!   the SHA-256 on the end message must match what arrived. Until it does, the last chunk is
//!   held back, so a client never receives the whole image unless it is verified: a damaged
//!   image ends short, with an `integrity` error, and its archive copy is aborted.
//! - **Stalls.** With credit granted, a stream that sends nothing for the chunk timeout ends in
//!   a `timeout` error.
//! - **Leaving.** A transfer dropped before its end (the client left) tells the resolver to
//!   stop, and aborts the archive copy.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use imgfetch_common::digest::Hasher;
use imgfetch_common::message::{Chunked, Flow, ReplyHead};
use imgfetch_common::protocol::{self, header, ErrorCode};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::archive::ArchiveSink;
use crate::failure::Failure;
use crate::metric;

/// Longest a credit grant or a cancel may wait for the connection; a lost grant shows as a
/// stall, a lost cancel as a resolver that stops at its own idle limit.
const CREDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How streamed images are received.
#[derive(Clone, Copy, Debug)]
pub struct TransferSettings {
    /// Bytes a resolver may send ahead of the client, at first.
    pub window_bytes: u64,
    /// The most the window grows to when the resolver keeps running out of credit.
    pub max_window_bytes: u64,
    /// Longest wait for a chunk while credit is out.
    pub chunk_timeout: Duration,
    /// Bytes all streams together may have granted and not yet handed to their clients: the
    /// most this gateway buffers for streamed images, however many clients read slowly.
    pub max_buffer_bytes: u64,
}

/// A grant of credit on its way to the resolver.
#[derive(Clone, Copy, Debug)]
struct Grant {
    /// The credit before it.
    before: u64,
    /// The credit it gives.
    limit: u64,
    /// When it was sent.
    sent: Instant,
}

/// How much longer than the client's reading of half a window a grant's round trip must be
/// for the window to be sized to it: a stall of a quarter of that reading time or more.
const STALL_RATIO: f64 = 1.25;

/// The shortest stall the window is sized from: a resolver producing chunks in bursts (on a
/// busy machine) makes the client wait a few milliseconds now and then, while the links a
/// larger window helps (where 4 MiB per round trip is too little) have round trips of 10 ms
/// and more.
const MIN_STALL: Duration = Duration::from_millis(10);

/// The most chunks a window holds, whatever the settings.
const MAX_WINDOW_CHUNKS: u64 = 4096;

/// The unit of the buffer budget's permits (a semaphore takes at most `u32::MAX` at once).
const BUDGET_UNIT: u64 = 1024;

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

/// Transfers being received, by flow subject: where the reply router sends their parts. Also
/// the budget of bytes they may have granted and not handed out ([`TransferSettings`]).
#[derive(Clone, Debug)]
pub struct Transfers {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    budget: Arc<Semaphore>,
}

#[derive(Debug)]
struct Entry {
    tx: mpsc::Sender<Part>,
    started: Arc<AtomicBool>,
    /// The callback token of the request the stream answers.
    token: String,
}

/// What became of a part handed to [`Transfers::route`].
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

impl Transfers {
    /// No streams yet, with a budget of `max_buffer_bytes`.
    pub fn with_budget(max_buffer_bytes: u64) -> Transfers {
        let units = (max_buffer_bytes / BUDGET_UNIT).clamp(1, u64::from(u32::MAX));
        Transfers {
            inner: Arc::default(),
            budget: Arc::new(Semaphore::new(units as usize)),
        }
    }

    /// Hands a part to the transfer of `flow`, if it came on that transfer's callback (`token`).
    /// Never waits: a transfer's queue holds a whole
    /// window, so only a resolver that ignores its credit can fill it.
    pub fn route(&self, flow: &str, token: &str, part: Part) -> Routed {
        let mut streams = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
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
                metrics::gauge!(metric::STREAMS).decrement(1.0);
                Routed::Unknown
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the sender fails the transfer.
                streams.remove(flow);
                metrics::gauge!(metric::STREAMS).decrement(1.0);
                Routed::Overrun
            }
        }
    }

    /// Flow subjects of transfers that have not started: their resolvers wait for a first
    /// credit, and are told now and then that the wait is wanted.
    pub fn waiting(&self) -> Vec<String> {
        let streams = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        streams
            .iter()
            .filter(|(_, e)| !e.started.load(Ordering::Relaxed))
            .map(|(flow, _)| flow.clone())
            .collect()
    }

    /// Transfers being received.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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
    /// The stream a head message announces, read as the reply router reads it; `Err` says what
    /// is wrong with it.
    pub fn from_headers(id: &str, headers: &async_nats::HeaderMap) -> Result<Head, String> {
        let reply = ReplyHead::from_headers(Some(headers)).map_err(|e| e.to_string())?;
        let Some(chunked) = reply.chunked else {
            return Err(format!("the stream's head has no {}", header::FLOW));
        };
        Head::new(id, &chunked, reply.image.and_then(|image| image.size))
    }

    /// The stream of a head message; `Err` says what is wrong with it.
    pub fn new(id: &str, chunked: &Chunked, size: Option<u64>) -> Result<Head, String> {
        let Some(size) = size else {
            return Err(format!("the stream's head has no {}", header::SIZE));
        };
        // Credit goes only where resolvers listen for it: a head that names any other subject
        // would have the gateway publish on it (the gateway role may not anyway).
        if !chunked.flow_is_valid() {
            return Err(format!(
                "the stream's head names flow subject {:?}, not one under {}.",
                chunked.flow,
                protocol::FLOW_PREFIX
            ));
        }
        let head = Head {
            id: id.to_owned(),
            flow: chunked.flow.clone(),
            size,
            chunk_size: chunked.chunk_size,
            chunks: chunked.chunks,
        };
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
    streams: Transfers,
    started: Arc<AtomicBool>,
    window: u64,
    /// The most `window` grows to, in chunks.
    max_window: u64,
    /// Grants not yet known to have reached the resolver, oldest first. A chunk past the
    /// credit before a grant shows that it arrived.
    in_flight: VecDeque<Grant>,
    /// The credit the resolver is known to have had.
    confirmed: u64,
    /// Since when the client has waited for the first chunk of a grant still on its way,
    /// having read everything before it.
    stalled_since: Option<Instant>,
    chunk_timeout: Duration,
    granted: u64,
    /// Granted chunks whose share of the buffer budget is held: given back as each chunk goes
    /// to the client, or all at once when the transfer ends.
    reserved: u64,
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
        streams: &Transfers,
        settings: TransferSettings,
        archive: Option<ArchiveSink>,
    ) -> Transfer {
        let chunks_of = |bytes: u64| (bytes / head.chunk_size.max(1)).clamp(2, MAX_WINDOW_CHUNKS);
        let window = chunks_of(settings.window_bytes);
        let max_window = chunks_of(settings.max_window_bytes).max(window);
        // Room for the largest window (a channel takes memory as it fills, not up front).
        let (tx, rx) = mpsc::channel(max_window as usize + 2);
        let started = Arc::new(AtomicBool::new(false));
        streams
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                head.flow.clone(),
                Entry {
                    tx,
                    started: started.clone(),
                    token: token.to_owned(),
                },
            );
        metrics::gauge!(metric::STREAMS).increment(1.0);
        Transfer {
            head,
            client,
            rx,
            streams: streams.clone(),
            started,
            window,
            max_window,
            in_flight: VecDeque::new(),
            confirmed: 0,
            stalled_since: None,
            chunk_timeout: settings.chunk_timeout,
            granted: 0,
            reserved: 0,
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
            if let Err(failure) = self.top_up().await {
                return Some(self.fail(failure));
            }
            self.note_wait();
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
                    self.arrived(seq);
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
                    metrics::counter!(metric::STREAM_BYTES_TOTAL).increment(bytes.len() as u64);
                    self.give_back(1);
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
                    metrics::counter!(metric::STREAMS_COMPLETED_TOTAL).increment(1);
                    let last = self.held.take().unwrap_or_default();
                    self.give_back(self.reserved);
                    metrics::counter!(metric::STREAM_BYTES_TOTAL).increment(last.len() as u64);
                    return Some(Ok(last));
                }
                Part::Failed(failure) => return Some(self.fail(failure)),
            }
        }
    }

    /// Grants more chunks when half the window is used up, as far as the gateway's buffer
    /// budget allows. With no credit out and no budget, waits for one chunk's worth as long
    /// as a chunk may take, then fails `unavailable`.
    async fn top_up(&mut self) -> Result<(), Failure> {
        let outstanding = self.granted.saturating_sub(self.received);
        if self.granted >= self.head.chunks || outstanding > self.window / 2 {
            return Ok(());
        }

        let target = (self.received + self.window).min(self.head.chunks);
        let per = self.units_per_chunk();
        let mut want = target - self.granted;
        let mut got = 0;
        while want > 0 {
            let units = u32::try_from(want.saturating_mul(per)).unwrap_or(u32::MAX);
            if let Ok(permit) = self.streams.budget.try_acquire_many(units) {
                permit.forget();
                got = want;
                break;
            }
            want /= 2;
        }
        if got == 0 {
            if outstanding > 0 {
                // Credit is still out; the budget is asked again at the next chunk.
                return Ok(());
            }
            let units = u32::try_from(per).unwrap_or(u32::MAX);
            let wait = self.streams.budget.acquire_many(units);
            match tokio::time::timeout(self.chunk_timeout, wait).await {
                Ok(Ok(permit)) => {
                    permit.forget();
                    got = 1;
                }
                _ => {
                    metrics::counter!(metric::STREAM_BUFFER_FULL_TOTAL).increment(1);
                    return Err(Failure::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the gateway's buffer for streamed images stayed full for {:?} \
                             (--max-stream-buffer-bytes): other clients are reading slowly; \
                             try again later",
                            self.chunk_timeout
                        ),
                    ));
                }
            }
        }
        self.reserved += got;
        let credit = self.granted + got;
        if self.granted == 0 {
            // Nothing can flow before the first grant: it is taken as arrived.
            self.confirmed = credit;
        } else {
            self.in_flight.push_back(Grant {
                before: self.granted,
                limit: credit,
                sent: Instant::now(),
            });
        }
        let headers = Flow::Credit(credit).to_headers();
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
        Ok(())
    }

    /// Notes that chunk `seq` came: every grant given before it was sent has reached the
    /// resolver. If the client waited for it, the window is sized to the link (see
    /// [`size_window`](Self::size_window)).
    fn arrived(&mut self, seq: u64) {
        while let Some(grant) = self.in_flight.front() {
            if seq <= grant.before {
                break;
            }
            let grant = *grant;
            self.in_flight.pop_front();
            self.confirmed = grant.limit;
            if let Some(stalled) = self.stalled_since.take() {
                self.size_window(grant, stalled);
            }
        }
    }

    /// Notes, before the client waits for a chunk, whether it waits on a grant still on its
    /// way (every chunk of the earlier grants read, nothing queued).
    fn note_wait(&mut self) {
        if self.stalled_since.is_none()
            && self.received == self.confirmed
            && !self.in_flight.is_empty()
            && self.rx.is_empty()
        {
            self.stalled_since = Some(Instant::now());
        }
    }

    /// Sizes the window to the link after the client stalled on `grant`. The grant went out
    /// with half a window (or less) still to come; the client read that in `stalled - sent`,
    /// while the grant took `now - sent` to bear its first chunk: the link's round trip at the
    /// rate the client reads. Half a window must cover that round trip, so the window becomes
    /// its old size times their ratio (up to the maximum), and only grows. On a fast link a
    /// stall is rare and short and barely moves it; over a slow one the first stall sizes it
    /// to the bandwidth-delay product. It grows only while the buffer budget has room for two
    /// such windows, so that growing never starves other streams of credit.
    fn size_window(&mut self, grant: Grant, stalled: Instant) {
        let reading = stalled.saturating_duration_since(grant.sent).as_secs_f64();
        let round_trip = grant.sent.elapsed().as_secs_f64();
        if round_trip < reading * STALL_RATIO || stalled.elapsed() < MIN_STALL {
            // A short wait: a resolver that sends no faster than the client reads, or in
            // bursts, has the client wait a chunk's time or so at a grant: not the link.
            return;
        }
        let wanted = if reading > 0.0 {
            (self.window as f64 * round_trip / reading).ceil()
        } else {
            f64::INFINITY
        };
        let sized = wanted.min(self.max_window as f64) as u64;
        let room = self.streams.budget.available_permits() as u64 * BUDGET_UNIT;
        if sized > self.window && room >= 2 * sized * self.head.chunk_size {
            self.window = sized;
            metrics::counter!(metric::STREAM_WINDOWS_GROWN_TOTAL).increment(1);
            tracing::debug!(
                id = self.head.id,
                window = self.window,
                round_trip_ms = round_trip * 1e3,
                "stream window sized to the link"
            );
        }
    }

    /// Budget units one chunk takes.
    fn units_per_chunk(&self) -> u64 {
        self.head.chunk_size.div_ceil(BUDGET_UNIT).max(1)
    }

    /// Gives back the budget of `chunks` reserved chunks.
    fn give_back(&mut self, chunks: u64) {
        let chunks = chunks.min(self.reserved);
        self.reserved -= chunks;
        let units = chunks.saturating_mul(self.units_per_chunk());
        self.streams
            .budget
            .add_permits(usize::try_from(units).unwrap_or(usize::MAX));
    }

    fn fail(&mut self, failure: Failure) -> Result<Bytes, Failure> {
        self.done = true;
        self.held = None;
        self.give_back(self.reserved);
        tracing::warn!(id = self.head.id, %failure, "streamed image failed");
        metrics::counter!(metric::STREAMS_FAILED_TOTAL, "code" => failure.code.as_str())
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
        let headers = Flow::Cancel(why.to_owned()).to_headers();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let send = client.publish_with_headers(flow, headers, Bytes::new());
                let _ = tokio::time::timeout(CREDIT_TIMEOUT, send).await;
            });
        }
    }

    fn finish_registration(&mut self) {
        let mut streams = self
            .streams
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if streams.remove(&self.head.flow).is_some() {
            metrics::gauge!(metric::STREAMS).decrement(1.0);
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.give_back(self.reserved);
        if !self.done {
            tracing::info!(id = self.head.id, "streamed image abandoned by its client");
            metrics::counter!(metric::STREAMS_ABANDONED_TOTAL).increment(1);
            self.cancel("the client left");
            if let Some(mut archive) = self.archive.take() {
                archive.discard("the client left before the image was complete");
            }
        }
        self.finish_registration();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 256 * 1024;

    /// A client that never connects: credit is published into its buffer, and no server is
    /// needed for that.
    async fn unconnected() -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .unwrap()
    }

    fn head(flow: &str) -> Head {
        Head {
            id: flow.to_owned(),
            flow: flow.to_owned(),
            size: 2 * CHUNK,
            chunk_size: CHUNK,
            chunks: 2,
        }
    }

    /// Two streams share a budget of one chunk: while one holds it (credit out, chunk not yet
    /// read), the other gets `unavailable` after the chunk timeout instead of waiting forever;
    /// once the first chunk goes to its client the budget is back.
    #[tokio::test]
    async fn a_full_buffer_budget_is_unavailable_not_a_hang_and_comes_back() {
        let client = unconnected().await;
        let settings = TransferSettings {
            window_bytes: 4 * CHUNK,
            max_window_bytes: 4 * CHUNK,
            chunk_timeout: Duration::from_millis(300),
            max_buffer_bytes: CHUNK,
        };
        let streams = Transfers::with_budget(settings.max_buffer_bytes);
        let full = (CHUNK / BUDGET_UNIT) as usize;
        assert_eq!(streams.budget.available_permits(), full);
        // A waits for its chunk longer than B waits for the budget.
        let patient = TransferSettings {
            chunk_timeout: Duration::from_secs(10),
            ..settings
        };
        let mut a = Transfer::new(
            head("imgfetch.flow.a"),
            "ta",
            client.clone(),
            &streams,
            patient,
            None,
        );
        let mut b = Transfer::new(
            head("imgfetch.flow.b"),
            "tb",
            client.clone(),
            &streams,
            settings,
            None,
        );
        let first = tokio::spawn(async move {
            let chunk = a.next().await;
            (a, chunk)
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while streams.budget.available_permits() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "A never took the budget"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = b.next().await.expect("an answer").unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
        assert!(
            refused.message.contains("--max-stream-buffer-bytes"),
            "{refused}"
        );
        assert!(b.next().await.is_none(), "nothing after an error");
        let routed = streams.route(
            "imgfetch.flow.a",
            "ta",
            Part::Chunk {
                seq: 1,
                bytes: Bytes::from(vec![0u8; CHUNK as usize]),
            },
        );
        assert_eq!(routed, Routed::Queued);
        let (a, chunk) = first.await.unwrap();
        assert_eq!(
            chunk.expect("a chunk").expect("A's chunk").len() as u64,
            CHUNK
        );
        // The chunk went to A's client: its share of the budget is back.
        assert_eq!(streams.budget.available_permits(), full);
        drop(a);
        assert_eq!(streams.budget.available_permits(), full);
    }

    /// A stream of `chunks` chunks with a window of 4 chunks that may grow to `max_chunks`,
    /// with room in the budget for `budget_chunks`; its credit goes into an unconnected
    /// client's buffer.
    async fn windowed(
        flow: &str,
        chunks: u64,
        max_chunks: u64,
        budget_chunks: u64,
    ) -> (Transfer, Transfers) {
        let client = unconnected().await;
        let settings = TransferSettings {
            window_bytes: 4 * CHUNK,
            max_window_bytes: max_chunks * CHUNK,
            chunk_timeout: Duration::from_secs(10),
            max_buffer_bytes: budget_chunks * CHUNK,
        };
        let streams = Transfers::with_budget(settings.max_buffer_bytes);
        let head = Head {
            id: flow.to_owned(),
            flow: flow.to_owned(),
            size: chunks * CHUNK,
            chunk_size: CHUNK,
            chunks,
        };
        let transfer = Transfer::new(head, "t", client, &streams, settings, None);
        (transfer, streams)
    }

    fn send(streams: &Transfers, flow: &str, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            let bytes = Bytes::from(vec![0u8; CHUNK as usize]);
            assert_eq!(
                streams.route(flow, "t", Part::Chunk { seq, bytes }),
                Routed::Queued
            );
        }
    }

    /// The first grant's 4 chunks come at once; the client takes `read` to read each. The grant
    /// made after 2 of them bears its first chunk `link` after the client has read everything:
    /// the window after that chunk.
    async fn window_after_one_stall(
        read: Duration,
        link: Duration,
        max_chunks: u64,
        budget_chunks: u64,
    ) -> u64 {
        let flow = "imgfetch.flow.link";
        let (mut t, streams) = windowed(flow, 64, max_chunks, budget_chunks).await;
        t.top_up().await.unwrap();
        send(&streams, flow, 1..=4);
        for _ in 0..4 {
            t.next().await.expect("a chunk").expect("not an error");
            tokio::time::advance(read).await;
        }
        let late = streams.clone();
        tokio::spawn(async move {
            tokio::time::sleep(link).await;
            send(&late, flow, 5..=8);
        });
        t.next().await.expect("a chunk").expect("not an error");
        t.window
    }

    /// Over a 50 ms link the client, reading half a window in 2 ms, stalls on the grant for
    /// 50 ms: the window becomes 4 x (2 + 50) / 2 = 104 chunks, or the maximum. A 10 ms wait
    /// after 20 ms of reading moves it only to 4 x 30 / 20 = 6, and a wait under a quarter of
    /// the reading time (a resolver no faster than its client) or under 10 ms (a burst) not at
    /// all.
    #[tokio::test(start_paused = true)]
    async fn a_stall_on_a_grant_sizes_the_window_to_the_link() {
        let ms = Duration::from_millis;
        assert_eq!(window_after_one_stall(ms(1), ms(50), 1024, 4096).await, 104);
        assert_eq!(window_after_one_stall(ms(1), ms(50), 64, 4096).await, 64);
        assert_eq!(window_after_one_stall(ms(10), ms(10), 1024, 4096).await, 6);
        // A wait under a quarter of the reading time, or under 10 ms.
        assert_eq!(window_after_one_stall(ms(24), ms(11), 1024, 4096).await, 4);
        assert_eq!(window_after_one_stall(ms(1), ms(9), 1024, 4096).await, 4);
    }

    /// On a fast link every grant bears chunks before the client runs out: the window stays.
    /// Nor does it grow when the buffer budget has no room for two grown windows.
    #[tokio::test(start_paused = true)]
    async fn the_window_stays_on_a_fast_link_or_a_full_budget() {
        let flow = "imgfetch.flow.fast";
        let (mut t, streams) = windowed(flow, 64, 1024, 4096).await;
        t.top_up().await.unwrap();
        let mut sent = 0;
        while t.received < 63 {
            // The resolver has every grant at once.
            send(&streams, flow, sent + 1..=t.granted.min(63));
            sent = t.granted.min(63);
            t.next().await.expect("a chunk").expect("not an error");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(t.window, 4);

        let (read, slow) = (Duration::from_millis(1), Duration::from_millis(50));
        assert_eq!(
            window_after_one_stall(read, slow, 1024, 64).await,
            4,
            "no room in a 64-chunk budget for two 104-chunk windows"
        );
    }
}
