//! `transfer`: how a large image (1 MB to 1 GiB) should cross a NATS server that keeps its
//! default `max_payload` (1 MB), measured with none of imgfetch's code.
//!
//! One `nats-server` (the test harness's: random port, JetStream in a temp dir, default
//! `max_payload`) and two connections, a *sender* (the resolver's side) and a *receiver* (the
//! gateway's side). Each image is made on the fly by a cheap deterministic generator and
//! consumed a message at a time, so neither side ever holds a whole image. Three designs:
//!
//! 1. **raw**: the sender publishes the image as 256 KiB core messages with no flow control
//!    and an end marker; the receiver counts bytes. The ceiling of the transport (no hashing).
//!    It reports client slow-consumer events, server "Slow Consumer" log lines, lost bytes
//!    and the largest backlog (bytes handed to the sender's client but not yet received):
//!    the memory that no flow control lets pile up somewhere.
//! 2. **credit**: a chunked stream with credit-based flow control. Chunks of C bytes with a
//!    `Seq` header go to a data subject only while the sender has credit; the receiver
//!    grants "up to seq N" on a flow subject each time it has consumed half the window of W
//!    chunks. A final message carries the SHA-256, which both sides compute and the
//!    receiver checks. Timed from the first send to the verified receipt.
//! 3. **objstore**: a JetStream Object Store claim-check. The sender `put`s the image into a
//!    file-storage bucket (created once, with a `max_age`), then publishes a claim (name and
//!    digest); the receiver `get`s it, reads it as a stream, checks it, and deletes it.
//!    async-nats computes the SHA-256 on `put` and verifies it at the end of the read; the
//!    receiver also checks the byte count and that the object's digest is the claim's. So
//!    each side hashes once, as in the credit design. Timed as put + (claim to delete done),
//!    with `objstore-put` and `objstore-get` (claim to verified read) also shown alone.
//!    The JetStream store directory is measured after each put (untimed) and after the
//!    delete.
//!
//! MB means 10^6 bytes, in sizes and in MB/s; KiB and MiB are powers of two. Each cell is
//! the median of `--reps` runs; the repetitions are interleaved across designs. Everything
//! (both clients and the server) shares this machine's cores, as a colocated resolver and
//! gateway would.
//!
//! `cargo run --release -p imgfetch-bench --bin transfer -- --sizes 1,50,300 --reps 3`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use async_nats::jetstream::{self, object_store};
use async_nats::{Client, HeaderMap, Subscriber};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use futures::StreamExt;
use imgfetch_tests::nats::NatsServer;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

const MB: f64 = 1e6;
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Longest wait for any one message before a run is declared stalled.
const STALL: Duration = Duration::from_secs(60);
const BUCKET: &str = "bench-transfer";
/// The bucket's `max_age`: leftovers of a failed run expire by themselves.
const BUCKET_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// What to measure.
#[derive(Debug, Parser)]
#[command(
    name = "transfer",
    about = "Large-image transfer over NATS: raw, credit, objstore"
)]
struct Options {
    /// Image sizes, MB (10^6 bytes).
    #[arg(long, value_delimiter = ',', default_value = "1,50,300")]
    sizes: Vec<u64>,
    /// Runs of each design per size; the table shows the median.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Message size of the raw design, KiB.
    #[arg(long, default_value_t = 256)]
    raw_kib: usize,
    /// Chunk sizes of the credit design, KiB.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    chunks: Vec<usize>,
    /// Window sizes of the credit design, MiB (window chunks = window / chunk).
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    windows: Vec<usize>,
    /// Chunk sizes of the object store, KiB (128 is async-nats' default).
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    object_chunks: Vec<usize>,
    /// Designs to run.
    #[arg(long, value_delimiter = ',', default_value = "raw,credit,objstore")]
    designs: Vec<String>,
    /// After the table, watch the JetStream store's disk use for this many seconds, to see
    /// whether the space of deleted objects comes back.
    #[arg(long, default_value_t = 0)]
    linger_secs: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One way of moving an image.
#[derive(Clone, Copy, Debug)]
enum Design {
    Raw { message: usize },
    Credit { chunk: usize, window: usize },
    ObjectStore { chunk: usize },
}

impl Design {
    fn params(&self) -> String {
        match *self {
            Design::Raw { message } => format!("msg={}KiB", message / KIB),
            Design::Credit { chunk, window } => format!(
                "C={}KiB W={} ({}MiB)",
                chunk / KIB,
                window,
                chunk * window / MIB
            ),
            Design::ObjectStore { chunk } => format!("chunk={}KiB", chunk / KIB),
        }
    }
}

/// What one run measured: a time per table row, and extra facts about the run.
#[derive(Default)]
struct RunResult {
    /// (row name, seconds taken, bytes counted for the rate).
    timings: Vec<(&'static str, f64, u64)>,
    extras: Vec<(&'static str, f64)>,
}

/// One row of the table: one design, parameters and size, over all repetitions.
#[derive(Debug, Serialize)]
struct Row {
    design: String,
    params: String,
    size_mb: u64,
    mb_per_s: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
    extras: BTreeMap<String, Vec<f64>>,
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    nats_server: String,
    max_payload: usize,
    reps: usize,
    sha256_mb_per_s: f64,
    generator_mb_per_s: f64,
    seconds: f64,
    rows: Vec<Row>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    ensure!(options.reps > 0, "--reps must be at least 1");
    let began = Instant::now();

    let server = NatsServer::start();
    let events = Arc::new(Events::default());
    let sender = connect(&server.url(), Arc::clone(&events), Side::Sender).await?;
    let receiver = connect(&server.url(), Arc::clone(&events), Side::Receiver).await?;
    let max_payload = receiver.server_info().max_payload;
    let version = receiver.server_info().version;
    println!(
        "nats-server {version}, max_payload {max_payload} bytes, store {}",
        server.dir().display()
    );

    let sender_js = jetstream::new(sender.clone());
    let receiver_js = jetstream::new(receiver.clone());
    let sender_store = sender_js
        .create_object_store(object_store::Config {
            bucket: BUCKET.to_owned(),
            max_age: BUCKET_MAX_AGE,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("create object store")?;
    let receiver_store = receiver_js.get_object_store(BUCKET).await?;
    let env = Env {
        server: &server,
        sender,
        receiver,
        sender_js,
        sender_store,
        receiver_store,
        events,
        next_id: AtomicU64::new(0),
    };

    let (sha256_rate, generator_rate) = cpu_references();
    println!(
        "this CPU, one core: SHA-256 {sha256_rate:.0} MB/s, generator {generator_rate:.0} MB/s"
    );

    for name in &options.designs {
        ensure!(
            ["raw", "credit", "objstore"].contains(&name.as_str()),
            "unknown design {name}: raw, credit or objstore"
        );
    }
    let wanted = |name: &str| options.designs.iter().any(|d| d == name);
    let mut designs = Vec::new();
    if wanted("raw") {
        designs.push(Design::Raw {
            message: options.raw_kib * KIB,
        });
    }
    if wanted("credit") {
        for &chunk in &options.chunks {
            for &window in &options.windows {
                let chunk = chunk * KIB;
                designs.push(Design::Credit {
                    chunk,
                    window: (window * MIB / chunk).max(2),
                });
            }
        }
    }
    if wanted("objstore") {
        for &chunk in &options.object_chunks {
            designs.push(Design::ObjectStore { chunk: chunk * KIB });
        }
    }

    // Warm-up: every design once at 1 MB, not recorded.
    for design in &designs {
        if let Err(error) = env.run(*design, 1_000_000).await {
            eprintln!("warm-up {design:?}: {error:#}");
        }
    }

    let mut rows: Vec<Row> = Vec::new();
    for &size_mb in &options.sizes {
        let size = size_mb * 1_000_000;
        for rep in 0..options.reps {
            for design in &designs {
                let params = design.params();
                let started = Instant::now();
                let outcome = env.run(*design, size).await;
                eprintln!(
                    "{size_mb} MB rep {}/{} {} {params}: {} in {:.1} s",
                    rep + 1,
                    options.reps,
                    design_name(*design),
                    if outcome.is_ok() { "ok" } else { "FAILED" },
                    started.elapsed().as_secs_f64()
                );
                match outcome {
                    Ok(result) => {
                        // The extras go with the first (the end-to-end) row.
                        for (i, &(name, seconds, bytes)) in result.timings.iter().enumerate() {
                            let row = row_for(&mut rows, name, &params, size_mb);
                            row.mb_per_s.push(bytes as f64 / MB / seconds);
                            if i == 0 {
                                for &(key, value) in &result.extras {
                                    row.extras.entry(key.to_owned()).or_default().push(value);
                                }
                            }
                        }
                    }
                    Err(error) => {
                        let row = row_for(&mut rows, design_name(*design), &params, size_mb);
                        row.errors.push(format!("{error:#}"));
                    }
                }
            }
        }
    }
    for row in &mut rows {
        let mut sorted = row.mb_per_s.clone();
        sorted.sort_by(f64::total_cmp);
        row.median = median(&sorted);
        row.min = sorted.first().copied().unwrap_or(f64::NAN);
        row.max = sorted.last().copied().unwrap_or(f64::NAN);
    }

    let seconds = began.elapsed().as_secs_f64();
    let store_dir = server.dir().join("jetstream");
    let disk_end = disk_bytes(&store_dir);
    let stream_end = env
        .sender_js
        .get_stream(format!("OBJ_{BUCKET}"))
        .await?
        .get_info()
        .await?
        .state;
    print_table(&rows);
    println!(
        "client slow-consumer events: sender {}, receiver {}; \
         server \"Slow Consumer\" log lines: {}",
        env.events.sender_slow.load(Ordering::Relaxed),
        env.events.receiver_slow.load(Ordering::Relaxed),
        slow_consumer_lines(&server)
    );
    println!(
        "JetStream store after all deletes: {:.1} MB on disk, bucket stream {} messages {:.3} MB",
        disk_end as f64 / MB,
        stream_end.messages,
        stream_end.bytes as f64 / MB
    );
    println!("total {seconds:.0} s");
    for waited in (5..=options.linger_secs).step_by(5) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!(
            "after {waited} s idle: JetStream store {:.1} MB on disk",
            disk_bytes(&store_dir) as f64 / MB
        );
    }
    env.sender.drain().await?;
    env.receiver.drain().await?;

    if let Some(path) = &options.json {
        let report = Report {
            nats_server: version,
            max_payload,
            reps: options.reps,
            sha256_mb_per_s: sha256_rate,
            generator_mb_per_s: generator_rate,
            seconds,
            rows,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn design_name(design: Design) -> &'static str {
    match design {
        Design::Raw { .. } => "raw",
        Design::Credit { .. } => "credit",
        Design::ObjectStore { .. } => "objstore",
    }
}

fn row_for<'a>(rows: &'a mut Vec<Row>, design: &str, params: &str, size_mb: u64) -> &'a mut Row {
    let found = rows
        .iter()
        .position(|r| r.design == design && r.params == params && r.size_mb == size_mb);
    let index = found.unwrap_or_else(|| {
        rows.push(Row {
            design: design.to_owned(),
            params: params.to_owned(),
            size_mb,
            mb_per_s: Vec::new(),
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            extras: BTreeMap::new(),
            errors: Vec::new(),
        });
        rows.len() - 1
    });
    &mut rows[index]
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<14} {:<24} {:>8} {:>10} {:>10} {:>10}  notes (min..max over reps)",
        "design", "params", "size MB", "median", "min", "max"
    );
    println!("{}", "-".repeat(110));
    for row in rows {
        let mut notes: Vec<String> = row
            .extras
            .iter()
            .map(|(key, values)| {
                let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if (hi - lo).abs() < 0.05 {
                    format!("{key}={lo:.1}")
                } else {
                    format!("{key}={lo:.1}..{hi:.1}")
                }
            })
            .collect();
        if !row.errors.is_empty() {
            notes.push(format!("{} FAILED: {}", row.errors.len(), row.errors[0]));
        }
        println!(
            "{:<14} {:<24} {:>8} {:>10.1} {:>10.1} {:>10.1}  {}",
            row.design,
            row.params,
            row.size_mb,
            row.median,
            row.min,
            row.max,
            notes.join(" ")
        );
    }
    println!("(MB/s, MB = 10^6 bytes)");
}

// ---------------------------------------------------------------------------------------------
// Connections and what they report.

#[derive(Clone, Copy)]
enum Side {
    Sender,
    Receiver,
}

/// Slow-consumer events the clients reported (async-nats drops messages for a full
/// subscription and says so).
#[derive(Default)]
struct Events {
    sender_slow: AtomicU64,
    receiver_slow: AtomicU64,
}

impl Events {
    fn total(&self) -> u64 {
        self.sender_slow.load(Ordering::Relaxed) + self.receiver_slow.load(Ordering::Relaxed)
    }
}

async fn connect(url: &str, events: Arc<Events>, side: Side) -> anyhow::Result<Client> {
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let events = Arc::clone(&events);
            async move {
                match event {
                    async_nats::Event::SlowConsumer(_) => {
                        match side {
                            Side::Sender => events.sender_slow.fetch_add(1, Ordering::Relaxed),
                            Side::Receiver => events.receiver_slow.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    async_nats::Event::Connected
                    | async_nats::Event::Draining
                    | async_nats::Event::Closed => {}
                    event => eprintln!("nats event: {event}"),
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(client)
}

fn slow_consumer_lines(server: &NatsServer) -> usize {
    server.log().matches("Slow Consumer").count()
}

/// The server's last warning and error lines, for a failed run's message.
fn server_warnings(server: &NatsServer) -> String {
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("[WRN]") || line.contains("[ERR]"))
        .collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    format!(
        "server warnings: {}",
        if tail.is_empty() {
            "none".to_owned()
        } else {
            tail.join(" | ")
        }
    )
}

/// Bytes the JetStream store directory takes on disk (allocated blocks).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The image generator.

/// A deterministic stream of pseudo-random bytes (xorshift64*), made a piece at a time.
struct Image {
    state: u64,
    remaining: u64,
}

impl Image {
    fn new(seed: u64, size: u64) -> Image {
        Image {
            state: seed | 1,
            remaining: size,
        }
    }

    /// Fills the start of `buf` with the next bytes; returns how many (0 at the end).
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        for word in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        self.remaining -= n as u64;
        n
    }

    /// The next piece of at most `max` bytes, or `None` at the end.
    fn next_chunk(&mut self, max: usize) -> Option<Bytes> {
        let len = max.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if len == 0 {
            return None;
        }
        let mut buf = BytesMut::zeroed(len);
        self.fill(&mut buf);
        Some(buf.freeze())
    }
}

impl tokio::io::AsyncRead for Image {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = this.fill(buf.initialize_unfilled());
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// One core's SHA-256 and generator rates, MB/s, for reading the table.
fn cpu_references() -> (f64, f64) {
    let mut buf = vec![0u8; MIB];
    let rounds = 256;
    let mut image = Image::new(7, u64::MAX);
    let started = Instant::now();
    for _ in 0..rounds {
        image.fill(&mut buf);
    }
    let generator = (rounds * MIB) as f64 / MB / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut hasher = Sha256::new();
    for _ in 0..rounds {
        hasher.update(&buf);
    }
    std::hint::black_box(hasher.finalize());
    let sha = (rounds * MIB) as f64 / MB / started.elapsed().as_secs_f64();
    (sha, generator)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Subscribes and waits until the server has the subscription: a probe published on the same
/// connection comes back through it. (`Client::flush` only writes the SUB to the socket; a
/// message from the other connection can still reach the server before it reads the SUB, and
/// is then dropped: without this, the first chunks of a run were lost now and then.)
async fn subscribe_live(client: &Client, subject: String) -> anyhow::Result<Subscriber> {
    let mut subscriber = client.subscribe(subject.clone()).await?;
    let mut headers = HeaderMap::new();
    headers.insert("Probe", "1");
    client
        .publish_with_headers(subject, headers, Bytes::new())
        .await?;
    let probe = next_message(&mut subscriber, "probe").await?;
    ensure!(
        header(probe.headers.as_ref(), "Probe").is_some(),
        "first message on a new subscription was not the probe"
    );
    Ok(subscriber)
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

async fn next_message(
    subscriber: &mut Subscriber,
    what: &str,
) -> anyhow::Result<async_nats::Message> {
    tokio::time::timeout(STALL, subscriber.next())
        .await
        .with_context(|| format!("no {what} message for {} s", STALL.as_secs()))?
        .with_context(|| format!("{what} subscription ended"))
}

// ---------------------------------------------------------------------------------------------
// The runs.

struct Env<'a> {
    server: &'a NatsServer,
    sender: Client,
    receiver: Client,
    sender_js: jetstream::Context,
    sender_store: object_store::ObjectStore,
    receiver_store: object_store::ObjectStore,
    events: Arc<Events>,
    next_id: AtomicU64,
}

impl Env<'_> {
    async fn run(&self, design: Design, size: u64) -> anyhow::Result<RunResult> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match design {
            Design::Raw { message } => self.raw(id, size, message).await,
            Design::Credit { chunk, window } => self.credit(id, size, chunk, window).await,
            Design::ObjectStore { chunk } => self.object_store(id, size, chunk).await,
        }
    }

    /// Design 1: core messages, no flow control, an end marker.
    async fn raw(&self, id: u64, size: u64, message: usize) -> anyhow::Result<RunResult> {
        let subject = format!("bench.raw.{id}");
        let mut subscriber = subscribe_live(&self.receiver, subject.clone()).await?;
        let slow_before = (self.events.total(), slow_consumer_lines(self.server));
        let sent = Arc::new(AtomicU64::new(0));

        let receiving = {
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let mut received = 0u64;
                let mut backlog = 0u64;
                loop {
                    let msg = next_message(&mut subscriber, "raw").await?;
                    if header(msg.headers.as_ref(), "Eof").is_some() {
                        return anyhow::Ok((Instant::now(), received, backlog));
                    }
                    received += msg.payload.len() as u64;
                    backlog = backlog.max(sent.load(Ordering::Relaxed).saturating_sub(received));
                }
            })
        };

        let mut image = Image::new(id, size);
        let start = Instant::now();
        while let Some(chunk) = image.next_chunk(message) {
            let len = chunk.len() as u64;
            self.sender.publish(subject.clone(), chunk).await?;
            sent.fetch_add(len, Ordering::Relaxed);
        }
        let mut headers = HeaderMap::new();
        headers.insert("Eof", "1");
        self.sender
            .publish_with_headers(subject, headers, Bytes::new())
            .await?;
        self.sender.flush().await?;
        let (end, received, backlog) = receiving.await??;

        let seconds = (end - start).as_secs_f64();
        let slow_events = self.events.total() - slow_before.0;
        let slow_lines = slow_consumer_lines(self.server) - slow_before.1;
        Ok(RunResult {
            timings: vec![("raw", seconds, received)],
            extras: vec![
                ("lostMB", (size - received.min(size)) as f64 / MB),
                ("maxBacklogMB", backlog as f64 / MB),
                ("slowEvents", (slow_events + slow_lines as u64) as f64),
            ],
        })
    }

    /// Design 2: chunks under credit granted by the receiver, SHA-256 at the end.
    async fn credit(
        &self,
        id: u64,
        size: u64,
        chunk: usize,
        window: usize,
    ) -> anyhow::Result<RunResult> {
        let data_subject = format!("bench.credit.{id}.data");
        let flow_subject = format!("bench.credit.{id}.flow");
        let mut data = subscribe_live(&self.receiver, data_subject.clone()).await?;
        let mut flow = subscribe_live(&self.sender, flow_subject.clone()).await?;
        let slow_before = self.events.total();
        let window = window as u64;
        // The receiver's last consumed seq and last grant, for saying where a stall was.
        let progress = Arc::new((AtomicU64::new(0), AtomicU64::new(window)));

        // The receiver: checks order, hashes, grants credit every half window.
        let receiving = {
            let receiver = self.receiver.clone();
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                let half = (window / 2).max(1);
                let mut granted = window;
                let mut expected = 1u64;
                let mut received = 0u64;
                let mut hasher = Sha256::new();
                loop {
                    let msg = next_message(&mut data, "data").await?;
                    let headers = msg.headers.as_ref();
                    let seq: u64 = header(headers, "Seq")
                        .context("data message without Seq")?
                        .parse()?;
                    if seq != expected {
                        bail!("expected seq {expected}, got {seq}: a chunk was lost");
                    }
                    if let Some(sha) = header(headers, "Sha256") {
                        let ours = hex(&hasher.finalize());
                        ensure!(
                            sha == ours,
                            "SHA-256 mismatch: sender {sha}, receiver {ours}"
                        );
                        return anyhow::Ok((Instant::now(), received));
                    }
                    hasher.update(&msg.payload);
                    received += msg.payload.len() as u64;
                    expected += 1;
                    progress.0.store(seq, Ordering::Relaxed);
                    if seq + window - granted >= half {
                        granted = seq + window;
                        receiver
                            .publish(flow_subject.clone(), granted.to_string().into())
                            .await?;
                        progress.1.store(granted, Ordering::Relaxed);
                    }
                }
            })
        };

        // The sender: sends seq n only while n <= the credit limit.
        let start = Instant::now();
        let sending = async {
            let mut image = Image::new(id, size);
            let mut hasher = Sha256::new();
            let mut limit = window;
            let mut seq = 0u64;
            let mut waits = 0u64;
            while let Some(piece) = image.next_chunk(chunk) {
                seq += 1;
                while seq > limit {
                    waits += 1;
                    let grant = next_message(&mut flow, "flow")
                        .await
                        .with_context(|| format!("sender at seq {seq}, credit up to {limit}"))?;
                    let up_to: u64 = std::str::from_utf8(&grant.payload)?.parse()?;
                    limit = limit.max(up_to);
                }
                hasher.update(&piece);
                let mut headers = HeaderMap::new();
                headers.insert("Seq", seq.to_string().as_str());
                self.sender
                    .publish_with_headers(data_subject.clone(), headers, piece)
                    .await?;
            }
            let mut headers = HeaderMap::new();
            headers.insert("Seq", (seq + 1).to_string().as_str());
            headers.insert("Sha256", hex(&hasher.finalize()).as_str());
            self.sender
                .publish_with_headers(data_subject, headers, Bytes::new())
                .await?;
            self.sender.flush().await?;
            anyhow::Ok(waits)
        };
        let waits = match sending.await {
            Ok(waits) => waits,
            Err(error) => {
                let (consumed, granted) = (
                    progress.0.load(Ordering::Relaxed),
                    progress.1.load(Ordering::Relaxed),
                );
                let receiver = if receiving.is_finished() {
                    match receiving.await? {
                        Ok(_) => "receiver done".to_owned(),
                        Err(e) => format!("receiver failed: {e:#}"),
                    }
                } else {
                    receiving.abort();
                    "receiver still waiting".to_owned()
                };
                bail!(
                    "{error:#}; {receiver}, consumed up to seq {consumed}, \
                     granted up to {granted}; {}",
                    server_warnings(self.server)
                );
            }
        };
        let (end, received) = receiving.await??;
        ensure!(received == size, "received {received} of {size} bytes");

        Ok(RunResult {
            timings: vec![("credit", (end - start).as_secs_f64(), size)],
            extras: vec![
                ("creditWaits", waits as f64),
                ("slowEvents", (self.events.total() - slow_before) as f64),
            ],
        })
    }

    /// Design 3: put into the Object Store, claim, get, verify, delete.
    async fn object_store(&self, id: u64, size: u64, chunk: usize) -> anyhow::Result<RunResult> {
        let claim_subject = format!("bench.claim.{id}");
        let name = format!("image-{id}");
        let mut claims = subscribe_live(&self.receiver, claim_subject.clone()).await?;
        let store_dir = self.server.dir().join("jetstream");
        let disk_before = disk_bytes(&store_dir);

        // The receiver: waits for a claim, reads the object as a stream, checks, deletes.
        let receiving = {
            let store = self.receiver_store.clone();
            tokio::spawn(async move {
                let claim = next_message(&mut claims, "claim").await?;
                let claimed = Instant::now();
                let headers = claim.headers.as_ref();
                let name = header(headers, "Name")
                    .context("claim without Name")?
                    .to_owned();
                let digest = header(headers, "Digest").context("claim without Digest")?;
                let mut object = store.get(&name).await.context("object get")?;
                ensure!(
                    object.info().digest.as_deref() == Some(digest),
                    "object digest {:?} is not the claim's {digest}",
                    object.info().digest
                );
                let mut buf = vec![0u8; MIB];
                let mut received = 0u64;
                loop {
                    // async-nats checks the SHA-256 when the last chunk arrives.
                    let n = object.read(&mut buf).await.context("object read")?;
                    if n == 0 {
                        break;
                    }
                    received += n as u64;
                }
                let read = Instant::now();
                store.delete(&name).await.context("object delete")?;
                anyhow::Ok((claimed, read, Instant::now(), received))
            })
        };

        let mut image = Image::new(id, size);
        let start = Instant::now();
        let put = self
            .sender_store
            .put(
                object_store::ObjectMetadata {
                    name: name.clone(),
                    chunk_size: Some(chunk),
                    ..Default::default()
                },
                &mut image,
            )
            .await;
        let put_done = Instant::now();
        let info = match put {
            Ok(info) => info,
            Err(error) => {
                receiving.abort();
                let _ = self.sender_store.delete(&name).await;
                return Err(error).context("object put");
            }
        };

        // Untimed: what the object takes in the store.
        let disk_stored = disk_bytes(&store_dir);
        let stream_bytes = self
            .sender_js
            .get_stream(format!("OBJ_{BUCKET}"))
            .await?
            .get_info()
            .await?
            .state
            .bytes;

        let mut headers = HeaderMap::new();
        headers.insert("Name", name.as_str());
        headers.insert("Digest", info.digest.as_deref().unwrap_or_default());
        let claim_sent = Instant::now();
        self.sender
            .publish_with_headers(claim_subject, headers, Bytes::new())
            .await?;
        self.sender.flush().await?;
        let (claimed, read, deleted, received) = match receiving.await? {
            Ok(outcome) => outcome,
            Err(error) => {
                let _ = self.sender_store.delete(&name).await;
                return Err(error);
            }
        };
        ensure!(received == size, "read {received} of {size} bytes");
        let disk_after = disk_bytes(&store_dir);

        let put_seconds = (put_done - start).as_secs_f64();
        let get_seconds = (read - claimed).as_secs_f64();
        let end_to_end = put_seconds + (deleted - claim_sent).as_secs_f64();
        let extras = vec![
            (
                "avgChunkKiB",
                size as f64 / info.chunks.max(1) as f64 / KIB as f64,
            ),
            ("deleteMs", (deleted - read).as_secs_f64() * 1e3),
            ("streamMB", stream_bytes as f64 / MB),
            (
                "diskGrowMB",
                disk_stored.saturating_sub(disk_before) as f64 / MB,
            ),
            (
                "diskLeftMB",
                disk_after.saturating_sub(disk_before) as f64 / MB,
            ),
        ];
        Ok(RunResult {
            timings: vec![
                ("objstore", end_to_end, size),
                ("objstore-put", put_seconds, size),
                ("objstore-get", get_seconds, size),
            ],
            extras,
        })
    }
}
