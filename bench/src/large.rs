//! One very large image (1 GiB by default) streamed through the pipeline on a nats-server with
//! its default 1 MB `max_payload`, next to the raw NATS throughput measured on the same server in
//! the same run, with each process's memory before and at its peak.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use imgfetch_common::digest::Hasher;
use imgfetch_common::frames::ServerFrame;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{fetch_message, read_frame};
use crate::procs::{Pipeline, PipelineSpec};

/// Bytes per message of the raw NATS run: the chunk size the resolver uses.
const RAW_CHUNK: usize = 256 * 1024;

/// One large transfer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LargeRun {
    /// `raw nats`, `http`, `ws` or `http+archive`.
    pub path: String,
    /// Image size, MiB.
    pub size_mib: f64,
    /// Throughput, MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Throughput over the raw NATS run's.
    pub ratio_to_raw: Option<f64>,
    /// Whether every byte arrived and the SHA-256 matched.
    pub verified: bool,
    /// Resident memory before the transfer, MiB.
    pub resolver_before_mib: Option<f64>,
    /// Largest resident memory so far (VmHWM), MiB.
    pub resolver_peak_mib: Option<f64>,
    /// Resident memory before the transfer, MiB.
    pub gateway_before_mib: Option<f64>,
    /// Largest resident memory so far (VmHWM), MiB.
    pub gateway_peak_mib: Option<f64>,
}

impl LargeRun {
    /// Growth of the resolver's peak over its memory before the transfer, MiB.
    pub fn resolver_growth_mib(&self) -> Option<f64> {
        Some(self.resolver_peak_mib? - self.resolver_before_mib?)
    }

    /// Growth of the gateway's peak over its memory before the transfer, MiB.
    pub fn gateway_growth_mib(&self) -> Option<f64> {
        Some(self.gateway_peak_mib? - self.gateway_before_mib?)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Writes the image; its SHA-256.
pub fn create_image(dir: &Path, size: usize) -> String {
    imgfetch_tests::write_large_image(&dir.join("large.jpg"), size, 0x1a46e)
}

/// The raw ceiling: `size` bytes published as 256 KiB core messages from one connection to a
/// subscriber on another, as fast as the server relays them. Bytes lost to the server's slow
/// consumer protection show as a shortfall, and fail the run.
pub async fn raw_nats(nats_url: &str, size: usize) -> anyhow::Result<LargeRun> {
    raw_nats_between(nats_url, nats_url, size).await
}

/// [`raw_nats`] from a connection to `send_url` to one to `recv_url`: across a leaf link, from
/// the leaf (where a zone's resolver sends) to the hub (where the gateway receives). The
/// sender starts once a request of its own crossed to the receiver's side and back, so that
/// the receiver's interest has crossed too.
pub async fn raw_nats_between(
    send_url: &str,
    recv_url: &str,
    size: usize,
) -> anyhow::Result<LargeRun> {
    let sender = async_nats::connect(send_url).await?;
    let receiver = async_nats::connect(recv_url).await?;
    let mut sub = receiver.subscribe("bench.raw").await?;
    let mut ready = receiver.subscribe("bench.raw-ready").await?;
    receiver.flush().await?;
    let answering = receiver.clone();
    tokio::spawn(async move {
        while let Some(ask) = ready.next().await {
            if let Some(reply) = ask.reply {
                let _ = answering.publish(reply, Bytes::new()).await;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let asked = tokio::time::timeout(
            Duration::from_secs(1),
            sender.request("bench.raw-ready", Bytes::new()),
        )
        .await;
        if matches!(asked, Ok(Ok(_))) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the receiver's side did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expect = size as u64;
    let counting = tokio::spawn(async move {
        let mut got = 0u64;
        while got < expect {
            match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                Ok(Some(m)) => got += m.payload.len() as u64,
                _ => break,
            }
        }
        (got, Instant::now())
    });
    let chunk = Bytes::from(vec![0x5au8; RAW_CHUNK]);
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < size {
        let n = RAW_CHUNK.min(size - sent);
        sender.publish("bench.raw", chunk.slice(..n)).await?;
        sent += n;
    }
    sender.flush().await?;
    let (got, end) = counting.await?;
    let secs = end.duration_since(start).as_secs_f64();
    Ok(LargeRun {
        path: "raw nats".into(),
        size_mib: mib(size as u64),
        mb_per_s: got as f64 / 1e6 / secs,
        verified: got == expect,
        ..LargeRun::default()
    })
}

/// The large image of one run: where it is stored, its size and its SHA-256.
pub struct Image<'a> {
    /// The store URL of the network `large`, which holds it as `large.jpg`.
    pub store_url: &'a str,
    /// Bytes.
    pub size: usize,
    /// SHA-256, lower-case hex.
    pub sha: &'a str,
}

/// `image` fetched on `path` (`http`, `ws` or `http+archive`) through freshly started binaries
/// of `bin_dir`, each peak its own, related to `raw_mb_per_s` measured on the same server.
pub async fn through_pipeline(
    bin_dir: &Path,
    nats_url: &str,
    log_dir: &Path,
    image: &Image<'_>,
    path: &str,
    raw_mb_per_s: f64,
) -> anyhow::Result<LargeRun> {
    let p = Pipeline::start(PipelineSpec {
        bin_dir,
        nats_url,
        resolver_nats_url: None,
        networks: &["large".to_owned()],
        store_url: image.store_url,
        archive: path == "http+archive",
        log_dir,
        gateway_args: &[],
        resolver_args: &[],
    })
    .await
    .context("starting the pipeline")?;
    let mut run = if path == "ws" {
        websocket(&p, image.size, image.sha).await?
    } else {
        http(&p, path, image.size, image.sha).await?
    };
    run.ratio_to_raw = Some(run.mb_per_s / raw_mb_per_s.max(1e-9));
    Ok(run)
}

/// Transfers the image over HTTP (hashing it as it comes) and measures both processes.
pub async fn http(p: &Pipeline, path: &str, size: usize, sha: &str) -> anyhow::Result<LargeRun> {
    let mut run = before(p, path, size);
    let url = format!("{}/v1/images/large/large.jpg", p.base);
    let start = Instant::now();
    let response = reqwest::get(&url).await?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let mut body = response.bytes_stream();
    let mut hasher = Hasher::new();
    let mut got = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece.context("the body failed")?;
        hasher.update(&piece);
        got += piece.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    run.mb_per_s = got as f64 / 1e6 / secs;
    run.verified = got == size as u64 && hasher.finish() == sha;
    after(p, &mut run);
    Ok(run)
}

/// Transfers the image over the websocket and measures both processes.
pub async fn websocket(p: &Pipeline, size: usize, sha: &str) -> anyhow::Result<LargeRun> {
    let mut run = before(p, "ws", size);
    let url = format!("{}/v1/ws", p.base.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await?;
    let start = Instant::now();
    socket
        .send(fetch_message(None, "large", "large.jpg"))
        .await?;
    let mut hasher = Hasher::new();
    let mut got = 0u64;
    let mut frames_left = None::<u64>;
    while frames_left != Some(0) {
        let Some(message) = socket.next().await else {
            bail!("the socket closed after {got} bytes");
        };
        match message? {
            Message::Text(t) => match read_frame(t.as_str())? {
                ServerFrame::Accepted { .. } => {}
                ServerFrame::Image { frames, .. } => frames_left = Some(frames),
                _ => bail!("unexpected frame {}", t.as_str()),
            },
            Message::Binary(b) => {
                hasher.update(&b);
                got += b.len() as u64;
                frames_left = frames_left.map(|n| n.saturating_sub(1));
            }
            _ => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    run.mb_per_s = got as f64 / 1e6 / secs;
    run.verified = got == size as u64 && hasher.finish() == sha;
    after(p, &mut run);
    Ok(run)
}

fn before(p: &Pipeline, path: &str, size: usize) -> LargeRun {
    LargeRun {
        path: path.into(),
        size_mib: mib(size as u64),
        resolver_before_mib: Some(mib(p.resolver.usage().rss)),
        gateway_before_mib: Some(mib(p.gateway.usage().rss)),
        ..LargeRun::default()
    }
}

fn after(p: &Pipeline, run: &mut LargeRun) {
    run.resolver_peak_mib = Some(mib(p.resolver.usage().peak_rss));
    run.gateway_peak_mib = Some(mib(p.gateway.usage().peak_rss));
}

/// The large runs as a table.
pub fn table(runs: &[LargeRun]) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let mut out = format!(
        "{:<13} {:>8} {:>8} {:>6} {:>9} {:>24} {:>24}\n",
        "large path",
        "MiB",
        "MB/s",
        "ratio",
        "verified",
        "resolver MiB before/peak",
        "gateway MiB before/peak"
    );
    for r in runs {
        out.push_str(&format!(
            "{:<13} {:>8.0} {:>8.1} {:>6} {:>9} {:>24} {:>24}\n",
            r.path,
            r.size_mib,
            r.mb_per_s,
            r.ratio_to_raw.map_or("-".to_owned(), |v| format!("{v:.2}")),
            r.verified,
            format!(
                "{}/{}",
                opt(r.resolver_before_mib),
                opt(r.resolver_peak_mib)
            ),
            format!("{}/{}", opt(r.gateway_before_mib), opt(r.gateway_peak_mib)),
        ));
    }
    out
}
