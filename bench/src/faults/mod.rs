//! The fault suite: the real `nats-server`, `imgfetch-gateway`, `imgfetch-resolver` and
//! `s3s-fs` processes under a steady websocket load, each fault done for real (processes
//! killed, a store made unreadable, a disk filled), and every request counted by id: accepted,
//! refused, answered, lost, duplicated, and how long the system took to serve again.
//! `docs/RELIABILITY.md` describes each fault and gives the figures of a full run.
//!
//! # Layout
//!
//! - [`servers`]: `nats-server` (one node or a cluster), `s3s-fs` and a tmpfs, stopped and
//!   started again on the same port and data.
//! - [`stack`]: the gateways and resolvers of a run, started, killed and replaced.
//! - [`client`]: the websocket clients, and asking again by id in the end.
//! - [`ledger`]: every request by id, and the counts of a [`FaultReport`].
//! - [`scenarios`]: the faults, one function each.
//! - [`table`]: the report as text and as Markdown.
//! - [`external`]: the same load and counts against gateways someone else runs (`--against`),
//!   for as long as they say.
//!
//! [`run`] runs the faults asked for, one after the other; or writes the images the load asks
//! for (`--write-corpus`), or loads gateways run elsewhere (`--against`).

pub mod client;
pub mod external;
pub mod ledger;
pub mod scenarios;
pub mod servers;
pub mod stack;
pub mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

pub use ledger::FaultReport;

/// Bytes per image of the corpus the load asks for.
pub const CORPUS_SIZE: usize = 16 * 1024;
/// Images in the corpus the load asks for.
pub const CORPUS_COUNT: usize = 40;

/// A fault, by its `--fault` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Two resolvers; every 2 s one is SIGKILLed and a new one started.
    ResolverKill,
    /// nats-server stopped (SIGTERM) and started again; then SIGKILLed and started again.
    NatsRestart,
    /// The stream deleted under load.
    StreamDelete,
    /// The directory store unreadable for 10 s.
    DirOutage,
    /// The S3 server stopped for 10 s and started again.
    S3Outage,
    /// Gateways and resolvers replaced one at a time (SIGTERM, new one, ready, next).
    RollingRestart,
    /// One of two gateways SIGKILLed with websocket clients connected.
    GatewayKill,
    /// The archive's disk full.
    ArchiveFull,
    /// The stream's leader SIGKILLed in a 3-node cluster with an R3 stream.
    ClusterLeader,
    /// Resolvers behind a leaf node; the leaf node SIGKILLed and restarted, then SIGTERMed and
    /// restarted.
    LeafRestart,
    /// Resolvers behind a leaf node; the link between leaf and hub cut by a proxy, restored.
    LeafLinkCut,
    /// Resolvers behind a leaf node on a 3-node hub with an R3 stream; the stream's leader
    /// SIGKILLed.
    LeafHubLeader,
}

impl Fault {
    /// Every fault, in suite order.
    pub const ALL: [Fault; 12] = [
        Fault::ResolverKill,
        Fault::NatsRestart,
        Fault::StreamDelete,
        Fault::DirOutage,
        Fault::S3Outage,
        Fault::RollingRestart,
        Fault::GatewayKill,
        Fault::ArchiveFull,
        Fault::ClusterLeader,
        Fault::LeafRestart,
        Fault::LeafLinkCut,
        Fault::LeafHubLeader,
    ];

    /// Its `--fault` name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::ResolverKill => "resolver-kill",
            Fault::NatsRestart => "nats-restart",
            Fault::StreamDelete => "stream-delete",
            Fault::DirOutage => "dir-outage",
            Fault::S3Outage => "s3-outage",
            Fault::RollingRestart => "rolling-restart",
            Fault::GatewayKill => "gateway-kill",
            Fault::ArchiveFull => "archive-full",
            Fault::ClusterLeader => "cluster-leader",
            Fault::LeafRestart => "leaf-restart",
            Fault::LeafLinkCut => "leaf-link-cut",
            Fault::LeafHubLeader => "leaf-hub-leader",
        }
    }
}

/// Which faults, how long.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "imgfetch-faults",
    version,
    about = "The fault suite: the real binaries under a steady load while processes are killed, restarted and starved; counts every request lost or answered twice (docs/RELIABILITY.md)."
)]
pub struct Options {
    /// A fault to run; repeatable.
    #[arg(long = "fault", value_enum)]
    pub faults: Vec<Fault>,
    /// Run every fault.
    #[arg(long)]
    pub all: bool,
    /// The short version: 4 clients and phases of a few seconds (about 2 minutes for all).
    #[arg(long)]
    pub smoke: bool,
    /// Where `imgfetch-resolver` and `imgfetch-gateway` are; default: beside this binary.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/imgfetch-faults.json")]
    pub json: PathBuf,
    /// Where to write the report as Markdown tables, if anywhere.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Where the processes' logs go; default: a temp directory kept after the run.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Write the images the load asks for (40 JPEGs of 16 KiB, keys `cam00/0000.jpg` to
    /// `cam07/0039.jpg`, the same bytes on every run) under this directory, print each one's
    /// SHA-256 and key as `sha256sum` does, and exit: the store for `--against`'s gateways.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["faults", "all", "smoke", "against"])]
    pub write_corpus: Option<PathBuf>,
    /// Loading gateways that run elsewhere.
    #[command(flatten)]
    pub external: external::ExternalOptions,
}

/// Runs the faults of `options` one after the other; a fault whose setup fails is reported
/// as failed and the next one runs. With `--write-corpus`, writes the images and returns no
/// report; with `--against`, loads those gateways and returns the one report of that.
pub async fn run(options: &Options) -> anyhow::Result<Vec<FaultReport>> {
    if let Some(dir) = &options.write_corpus {
        write_corpus(dir)?;
        return Ok(Vec::new());
    }
    if !options.external.against.is_empty() {
        let report = external::run(&options.external).await?;
        println!("{}", table::text(&report));
        let reports = vec![report];
        write_reports(options, &reports)?;
        return Ok(reports);
    }
    let bin_dir = crate::procs::find_bin_dir(options.bin_dir.as_deref())?;
    let faults: Vec<Fault> = if options.all || options.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        options.faults.clone()
    };
    let log_root = match &options.log_dir {
        Some(dir) => dir.clone(),
        None => tempfile::Builder::new()
            .prefix("imgfetch-faults-")
            .tempdir()?
            .keep(),
    };
    let corpus = crate::corpus::Corpus::create(CORPUS_SIZE, CORPUS_COUNT)?;
    let env = scenarios::Env {
        bin_dir,
        images: Arc::new(client::Images::generated(CORPUS_SIZE, CORPUS_COUNT)),
        corpus,
        smoke: options.smoke,
        log_root,
    };
    println!("logs in {}", env.log_root.display());
    let mut reports = Vec::new();
    for fault in faults {
        println!("fault {} …", fault.name());
        let report = match scenarios::run(&env, fault).await {
            Ok(report) => report,
            Err(e) => FaultReport {
                fault: fault.name().to_owned(),
                failures: vec![format!("the scenario could not run: {e:#}")],
                ..FaultReport::default()
            },
        };
        println!("{}", table::text(&report));
        reports.push(report);
    }
    write_reports(options, &reports)?;
    Ok(reports)
}

/// Writes `reports` as JSON to `--json`, and as Markdown to `--markdown` if given.
fn write_reports(options: &Options, reports: &[FaultReport]) -> anyhow::Result<()> {
    if let Some(parent) = options.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.json, serde_json::to_string_pretty(reports)?)
        .with_context(|| format!("cannot write {}", options.json.display()))?;
    if let Some(path) = &options.markdown {
        std::fs::write(path, table::markdown(reports))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Writes the corpus under `dir`, then prints `<sha256>  <key>` for each image as read back
/// (what `sha256sum -c` checks in `dir`), and a summary on stderr.
fn write_corpus(dir: &Path) -> anyhow::Result<()> {
    let corpus = crate::corpus::Corpus::create_in(dir, CORPUS_SIZE, CORPUS_COUNT)
        .with_context(|| format!("cannot write the images under {}", dir.display()))?;
    for i in 0..corpus.count {
        let bytes = corpus.read(i)?;
        println!(
            "{}  {}",
            imgfetch_common::digest::sha256_hex(&bytes),
            crate::corpus::key(i)
        );
    }
    eprintln!(
        "wrote {} images of {} bytes under {}",
        corpus.count,
        corpus.size,
        dir.display()
    );
    Ok(())
}
