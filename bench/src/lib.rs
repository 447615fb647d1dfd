//! The imgfetch benchmark: in one run on one machine, the whole pipeline (HTTP and websocket,
//! archive on and off, one and many networks, idle websocket clients) against the bare
//! JetStream ceiling and the store floor, measured side by side so that ratios hold on a noisy
//! shared machine. `docs/PERFORMANCE.md` says how to run it and what it found.
//!
//! # Layout
//!
//! - [`corpus`]: the random images a run serves, in a temp directory.
//! - [`procs`]: the resolver and gateway binaries, started and measured through `/proc`.
//! - [`bare`]: the ceiling: the same JetStream hops with no imgfetch code.
//! - [`clients`]: HTTP, websocket and direct-store request makers.
//! - [`load`]: workers, warm-up, pacing and latency samples.
//! - [`large`]: one very large image streamed on a default-payload server, against raw NATS.
//! - [`leaf`]: the same requests through a resolver behind a leaf node, over a link slowed by a
//!   latency proxy.
//! - [`report`]: the table and the JSON.
//! - [`compare`]: A/B: the same rows on two builds, alternately, in one run.
//! - [`faults`]: the fault suite (`imgfetch-faults`): processes killed for real under load,
//!   every request counted.
//!
//! [`run`] starts a `nats-server` of its own (random port, temp store) and does every step.

pub mod bare;
pub mod clients;
pub mod compare;
pub mod corpus;
pub mod faults;
pub mod large;
pub mod leaf;
pub mod load;
pub mod procs;
pub mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use imgfetch_tests::nats::NatsServer;

use crate::corpus::Corpus;
use crate::load::{Clock, Fetch, Sample};
use crate::procs::{Pipeline, PipelineSpec};
use crate::report::{CpuPerRequest, IdleWebsockets, Report, Row};

/// What to measure.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "imgfetch-bench", version, about)]
pub struct Options {
    /// Image sizes, bytes (K and M suffixes: 1024 and 1048576).
    #[arg(long, value_delimiter = ',', default_value = "16K,64K,1M", value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// Requests in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub concurrency: Vec<usize>,
    /// Distinct images per size.
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Warm-up seconds before each run.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Networks on one resolver in the many-networks run (one busy, the rest idle).
    #[arg(long, default_value_t = 20)]
    pub networks: usize,
    /// Idle websocket clients in the memory run.
    #[arg(long, default_value_t = 1000)]
    pub idle_websockets: usize,
    /// Size of the one large image streamed at the end (K, M and G suffixes).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub large_size: usize,
    /// Run only the large-image part.
    #[arg(long)]
    pub large_only: bool,
    /// Where `imgfetch-resolver` and `imgfetch-gateway` are; default: beside this binary.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// A/B mode: the binaries to compare with (A); `--bin-dir` is B. Each size's rows run on
    /// A, then B, `--rounds` times, each round with its own ceiling (`scripts/bench.sh
    /// --compare REV` builds REV and passes it here).
    #[arg(long, value_name = "DIR")]
    pub baseline_bin_dir: Option<PathBuf>,
    /// A/B mode: how many times A and B each run (A B, then B A, for 2).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Skip the large image.
    #[arg(long)]
    pub no_large: bool,
    /// Leaf-zone rows: milliseconds added to the leaf link's round trip, one pipeline each
    /// (empty: no leaf rows).
    #[arg(long, value_delimiter = ',', default_value = "0,10,50")]
    pub leaf_delays: Vec<u64>,
    /// Leaf-zone rows: requests in flight, besides 1.
    #[arg(long, value_delimiter = ',', default_value = "64,512")]
    pub leaf_concurrency: Vec<usize>,
    /// Leaf-zone rows: the resolver's --concurrency [default: the resolver's].
    #[arg(long)]
    pub leaf_resolver_concurrency: Option<usize>,
    /// Leaf-zone rows: the resolver's --pull-ahead [default: the resolver's].
    #[arg(long)]
    pub leaf_pull_ahead: Option<usize>,
    /// Leaf-zone large image: credit windows (bytes) to try besides the gateway's default, over
    /// the largest of --leaf-delays; the image is --large-size.
    #[arg(long, value_delimiter = ',', default_value = "67108864", value_parser = parse_size)]
    pub leaf_window_bytes: Vec<usize>,
    /// Run only the leaf-zone rows (at the first of --sizes).
    #[arg(long)]
    pub leaf_only: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/imgfetch-bench.json")]
    pub json: PathBuf,
    /// A tiny run that proves the benchmark works (CI): 16 KiB, concurrency 1 and 4, 20
    /// images, 0.3 s runs, 3 networks, 20 idle websockets, a leaf zone with no added delay, a
    /// 160 MiB large image.
    #[arg(long)]
    pub smoke: bool,
}

impl Options {
    /// The smoke settings.
    pub fn smoke(mut self) -> Options {
        self.sizes = vec![16 * 1024];
        self.concurrency = vec![1, 4];
        self.images = 20;
        self.seconds = 0.3;
        self.warmup = 0.1;
        self.networks = 3;
        self.idle_websockets = 20;
        self.large_size = 160 << 20;
        self.leaf_delays = vec![0];
        self.leaf_concurrency = vec![4];
        self.smoke = true;
        self
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<usize>()
        .map(|n| n * unit)
        .map_err(|e| format!("{s:?} is not a size: {e}"))
        .and_then(|n| {
            if n == 0 {
                Err("a size must be more than 0".into())
            } else {
                Ok(n)
            }
        })
}

/// The processes whose CPU time a run charges to its requests.
struct Watched {
    nats: u32,
    resolver: Option<u32>,
    gateway: Option<u32>,
}

impl Watched {
    fn cpu(&self) -> [Duration; 4] {
        let of = |pid: Option<u32>| {
            pid.and_then(procs::usage)
                .map(|u| u.cpu)
                .unwrap_or_default()
        };
        [
            of(Some(self.nats)),
            of(self.resolver),
            of(self.gateway),
            of(Some(std::process::id())),
        ]
    }
}

/// Runs `fetches` for one warm-up and one measured period and charges CPU time to the answers.
async fn measure(
    options: &Options,
    fetches: Vec<Fetch>,
    expect: usize,
    rate: Option<f64>,
    watched: &Watched,
) -> (Sample, CpuPerRequest) {
    let clock = Clock::new(
        Duration::from_secs_f64(options.warmup),
        Duration::from_secs_f64(options.seconds),
        rate,
    );
    let run = tokio::spawn(load::drive(clock.clone(), fetches, expect));
    tokio::time::sleep_until(clock.measure_from()).await;
    let before = watched.cpu();
    tokio::time::sleep_until(clock.end()).await;
    let after = watched.cpu();
    let sample = run.await.expect("load run");
    let per = |i: usize| {
        (after[i].saturating_sub(before[i])).as_secs_f64() * 1e6 / (sample.done.max(1) as f64)
    };
    let cpu = CpuPerRequest {
        nats_server: per(0),
        resolver: per(1),
        gateway: per(2),
        load: per(3),
    };
    (sample, cpu)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Everything about one run that stays the same across its measurements.
struct Bench<'a> {
    options: &'a Options,
    nats: NatsServer,
    bin_dir: PathBuf,
    logs: tempfile::TempDir,
    report: Report,
}

impl Bench<'_> {
    fn say(&self, what: &str) {
        eprintln!("imgfetch-bench: {what}");
    }

    async fn pipeline(
        &self,
        corpus: &Corpus,
        networks: &[String],
        archive: bool,
    ) -> anyhow::Result<Pipeline> {
        self.pipeline_of(&self.bin_dir, corpus, networks, archive)
            .await
    }

    async fn pipeline_of(
        &self,
        bin_dir: &std::path::Path,
        corpus: &Corpus,
        networks: &[String],
        archive: bool,
    ) -> anyhow::Result<Pipeline> {
        Pipeline::start(PipelineSpec {
            bin_dir,
            nats_url: &self.nats.url(),
            resolver_nats_url: None,
            networks,
            store_url: &corpus.url(),
            archive,
            log_dir: self.logs.path(),
            gateway_args: &[],
            resolver_args: &[],
        })
        .await
        .context("starting the pipeline")
    }

    fn watched(&self, pipeline: Option<&Pipeline>) -> Watched {
        Watched {
            nats: self.nats.pid(),
            resolver: pipeline.map(|p| p.resolver.pid()),
            gateway: pipeline.map(|p| p.gateway.pid()),
        }
    }

    fn push(&mut self, mut row: Row, cpu: CpuPerRequest, pipeline: Option<&Pipeline>) {
        row.cpu_us = cpu;
        if let Some(p) = pipeline {
            row.resolver_peak_rss_mib = Some(mib(p.resolver.usage().peak_rss));
            row.gateway_peak_rss_mib = Some(mib(p.gateway.usage().peak_rss));
        }
        eprintln!(
            "  {:<13} {:>5} c{:<3} n{:<3} {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
            row.path,
            report::human(row.size),
            row.concurrency,
            row.networks,
            row.req_per_s,
            row.p50_ms,
            row.p99_ms,
            row.errors
        );
        self.report.rows.push(row);
    }

    /// Floor, ceiling, and the pipeline with the archive off and on, at one image size.
    async fn one_size(&mut self, size: usize) -> anyhow::Result<()> {
        let o = self.options;
        self.say(&format!("{} images of {}", o.images, report::human(size)));
        let corpus = Corpus::create(size, o.images)?;
        for &c in &o.concurrency {
            let (s, cpu) = measure(
                o,
                clients::floor(corpus.root(), o.images, c),
                size,
                None,
                &self.watched(None),
            )
            .await;
            self.push(Row::new("floor", size, c, 0, &s), cpu, None);
        }
        let images = (0..o.images)
            .map(|i| corpus.read(i).map(bytes::Bytes::from))
            .collect::<Result<Vec<_>, _>>()?;
        let bare = bare::Bare::start(&self.nats.url(), images).await?;
        for &c in &o.concurrency {
            let fetches = bare.fetches(o.images, c, None).await?;
            let (s, cpu) = measure(o, fetches, size, None, &self.watched(None)).await;
            self.push(Row::new("bare", size, c, 1, &s), cpu, None);
        }
        for &c in &o.concurrency {
            let files = tempfile::tempdir()?;
            let fetches = bare.fetches(o.images, c, Some(files.path())).await?;
            let (s, cpu) = measure(o, fetches, size, None, &self.watched(None)).await;
            self.push(Row::new("bare+file", size, c, 1, &s), cpu, None);
        }
        let nets = vec!["bench".to_owned()];
        let c = *o.concurrency.iter().max().unwrap_or(&1);
        let half_peak = {
            let p = self.pipeline(&corpus, &nets, false).await?;
            let watched = self.watched(Some(&p));
            let mut peak = 0.0f64;
            for &c in &o.concurrency {
                let fetches = clients::http(&p.base, "bench", o.images, c);
                let (s, cpu) = measure(o, fetches, size, None, &watched).await;
                peak = peak.max(s.rate());
                self.push(Row::new("http", size, c, 1, &s), cpu, Some(&p));
            }
            for &c in &o.concurrency {
                let fetches = clients::websocket(&p.base, "bench", o.images, c).await?;
                let (s, cpu) = measure(o, fetches, size, None, &watched).await;
                self.push(Row::new("ws", size, c, 1, &s), cpu, Some(&p));
            }
            // Latency at half of the peak, paced, so queueing at saturation does not hide it.
            let fetches = clients::http(&p.base, "bench", o.images, c);
            let (s, cpu) = measure(o, fetches, size, Some(peak / 2.0), &watched).await;
            self.push(Row::new("http paced", size, c, 1, &s), cpu, Some(&p));
            peak / 2.0
        };
        // The ceiling's latency at the same paced rate, with the pipeline stopped.
        let fetches = bare.fetches(o.images, c, None).await?;
        let (s, cpu) = measure(o, fetches, size, Some(half_peak), &self.watched(None)).await;
        self.push(Row::new("bare paced", size, c, 1, &s), cpu, None);
        drop(bare);
        {
            let p = self.pipeline(&corpus, &nets, true).await?;
            let watched = self.watched(Some(&p));
            for &c in &o.concurrency {
                let fetches = clients::http(&p.base, "bench", o.images, c);
                let (s, cpu) = measure(o, fetches, size, None, &watched).await;
                self.push(Row::new("http+archive", size, c, 1, &s), cpu, Some(&p));
            }
        }
        Ok(())
    }

    /// One client on one busy network, with the resolver serving 1, then `networks`, networks.
    async fn many_networks(&mut self, size: usize) -> anyhow::Result<()> {
        let o = self.options;
        self.say(&format!(
            "one busy network on a resolver serving 1 and {} networks",
            o.networks
        ));
        let corpus = Corpus::create(size, o.images)?;
        for n in [1, o.networks] {
            let nets: Vec<String> = (0..n).map(|i| format!("net{i:02}")).collect();
            let p = self.pipeline(&corpus, &nets, false).await?;
            // Let every idle network settle into its idle state first.
            tokio::time::sleep(
                Duration::from_secs(3).min(Duration::from_secs_f64(o.seconds * 3.0)),
            )
            .await;
            let fetches = clients::http(&p.base, "net00", o.images, 1);
            let (s, cpu) = measure(o, fetches, size, None, &self.watched(Some(&p))).await;
            self.push(Row::new("http 1 busy", size, 1, n, &s), cpu, Some(&p));
        }
        Ok(())
    }

    /// One large image through HTTP, the websocket, and HTTP with the archive, each on fresh
    /// processes (so each peak is its own), after the raw NATS ceiling on the same server.
    async fn large(&mut self) -> anyhow::Result<()> {
        let size = self.options.large_size;
        self.say(&format!(
            "one {} image on a default-payload server",
            report::human(size)
        ));
        let nats = NatsServer::start();
        let dir = tempfile::tempdir()?;
        let sha = large::create_image(dir.path(), size);
        let raw = large::raw_nats(&nats.url(), size).await?;
        let store_url = format!("file://{}", dir.path().display());
        let image = large::Image {
            store_url: &store_url,
            size,
            sha: &sha,
        };
        let mut runs = vec![raw.clone()];
        for path in ["http", "ws", "http+archive"] {
            let run = large::through_pipeline(
                &self.bin_dir,
                &nats.url(),
                self.logs.path(),
                &image,
                path,
                raw.mb_per_s,
            )
            .await?;
            eprintln!(
                "  {:<13} {:>8.1} MB/s  verified {}  peak MiB resolver {:.0} gateway {:.0}",
                run.path,
                run.mb_per_s,
                run.verified,
                run.resolver_peak_mib.unwrap_or_default(),
                run.gateway_peak_mib.unwrap_or_default()
            );
            runs.push(run);
        }
        self.report.large = runs;
        Ok(())
    }

    /// The gateway's memory with many websocket clients that say nothing.
    async fn idle_websockets(&mut self, size: usize) -> anyhow::Result<()> {
        let o = self.options;
        self.say(&format!("{} idle websocket clients", o.idle_websockets));
        let corpus = Corpus::create(size, 4)?;
        let nets = vec!["bench".to_owned()];
        let p = self.pipeline(&corpus, &nets, false).await?;
        let before = p.gateway.usage().rss;
        let mut sockets = Vec::with_capacity(o.idle_websockets);
        for _ in 0..o.idle_websockets {
            sockets.push(clients::connect_ws(&p.base).await?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with = p.gateway.usage().rss;
        let mut fetch = clients::http(&p.base, "bench", 4, 1).remove(0);
        let fetch_ok = fetch(0).await.is_ok_and(|len| len == size);
        self.report.idle_websockets = Some(IdleWebsockets {
            clients: sockets.len(),
            gateway_rss_before_mib: mib(before),
            gateway_rss_with_clients_mib: mib(with),
            fetch_ok,
        });
        drop(sockets);
        Ok(())
    }
}

/// Runs the benchmark, prints the table, writes the JSON, and returns the report.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let options = if options.smoke {
        options.clone().smoke()
    } else {
        options.clone()
    };
    let bin_dir = procs::find_bin_dir(options.bin_dir.as_deref())?;
    // 1 MiB images and their headers need more than nats-server's default 1 MB payload; this
    // is the local nats.conf's setting.
    let nats = NatsServer::start_with("max_payload: 8MB");
    let version = std::process::Command::new(
        std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into()),
    )
    .arg("--version")
    .output()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    .unwrap_or_default();
    let mut bench = Bench {
        options: &options,
        nats,
        bin_dir: bin_dir.clone(),
        logs: tempfile::tempdir()?,
        report: Report {
            bin_dir: bin_dir.display().to_string(),
            nats_server: version,
            ..Report::default()
        },
    };
    if let Some(baseline) = options.baseline_bin_dir.clone() {
        let baseline = procs::find_bin_dir(Some(&baseline))?;
        compare::run(&mut bench, &baseline).await?;
        return Ok(std::mem::take(&mut bench.report));
    }
    if options.leaf_only {
        bench.leaf_zone(options.sizes[0]).await?;
    } else if !options.large_only {
        for &size in &options.sizes {
            bench.one_size(size).await?;
        }
        let busy_size = if options.sizes.contains(&(64 * 1024)) {
            64 * 1024
        } else {
            options.sizes[0]
        };
        bench.many_networks(busy_size).await?;
        bench.idle_websockets(busy_size).await?;
        if !options.leaf_delays.is_empty() {
            bench.leaf_zone(busy_size).await?;
        }
    }
    if !options.no_large && !options.leaf_only {
        bench.large().await?;
    }
    // Not in the smoke run: a second large image through a leaf would double its longest step.
    if !options.no_large && !options.smoke {
        if let Some(&ms) = options.leaf_delays.iter().max() {
            let windows: Vec<Option<u64>> = std::iter::once(None)
                .chain(options.leaf_window_bytes.iter().map(|&b| Some(b as u64)))
                .collect();
            bench.leaf_large(options.large_size, ms, &windows).await?;
        }
    }

    let mut report = std::mem::take(&mut bench.report);
    report.relate_to_ceiling();
    println!("{}", report.table());
    println!("{}", large::table(&report.large));
    if let Some(dir) = options.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", options.json.display()))?;
    eprintln!("imgfetch-bench: JSON written to {}", options.json.display());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_k_and_m() {
        assert_eq!(parse_size("16K"), Ok(16384));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("500"), Ok(500));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
    }
}
