//! The fault suite's load on gateways someone else runs (`--against`): the same websocket
//! clients, ledger and counts, and no process of its own. The gateways must serve the suite's
//! images (`--write-corpus`) on the networks named. The load runs until SIGTERM or SIGINT (or
//! for `--seconds`) while whoever runs the gateways does the fault, a rolling replacement say;
//! then it stops sending, waits for the answers still due, asks again by id for what has no
//! correct image, and reports as a fault run does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use super::client::{self, Images, Load, LoadSpec};
use super::ledger::{FaultReport, Ledger};
use super::{CORPUS_COUNT, CORPUS_SIZE};

/// Websocket clients unless `--clients` says otherwise.
pub const DEFAULT_CLIENTS: usize = 8;
/// Milliseconds between a client's requests unless `--interval` says otherwise (as in the
/// fault runs).
pub const DEFAULT_INTERVAL_MS: u64 = 100;
/// The report's name unless `--label` says otherwise.
pub const DEFAULT_LABEL: &str = "external";

/// How long clients wait for the answers still due once the load stops: a gateway's default
/// deadline (30 s) and some margin. Clients with nothing in flight stop at once.
const DRAIN: Duration = Duration::from_secs(40);
/// How often the counts so far are printed while the load runs.
const PROGRESS: Duration = Duration::from_secs(5);

/// Which gateways, which networks, how much load, how long.
#[derive(Clone, Debug, clap::Args)]
pub struct ExternalOptions {
    /// Instead of running faults, load gateways that run elsewhere: a gateway's base URL,
    /// `http://HOST:PORT`; repeatable (clients spread over them and move to the next when
    /// theirs fails). Runs until SIGTERM or SIGINT, or for `--seconds`, then reports as a fault
    /// run does, under `--label`.
    #[arg(
        long,
        value_name = "URL",
        value_parser = gateway_url,
        requires = "networks",
        conflicts_with_all = ["faults", "all", "smoke"]
    )]
    pub against: Vec<String>,
    /// With `--against`: a network to ask, serving the images of `--write-corpus`; repeatable
    /// (client n asks network n modulo their number).
    #[arg(long = "network", value_name = "NAME", value_parser = network_name, requires = "against")]
    pub networks: Vec<String>,
    /// With `--against`: a bearer token, sent as `Authorization: Bearer` on the websocket
    /// upgrade and when asking again by id; needed when the gateways have a tokens file.
    #[arg(long, env = "IMGFETCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With `--against`: websocket clients.
    #[arg(
        long,
        default_value_t = DEFAULT_CLIENTS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000),
        requires = "against"
    )]
    pub clients: usize,
    /// With `--against`: milliseconds between one client's requests.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = DEFAULT_INTERVAL_MS,
        value_parser = clap::value_parser!(u64).range(1..),
        requires = "against"
    )]
    pub interval: u64,
    /// With `--against`: stop after this many seconds, if no signal came first.
    #[arg(long, value_name = "S", value_parser = seconds, requires = "against")]
    pub seconds: Option<f64>,
    /// With `--against`: the report's name, and the start of every request id
    /// (`<label>-<run>-<client>-<n>`).
    #[arg(long, default_value = DEFAULT_LABEL, value_parser = label, requires = "against")]
    pub label: String,
}

impl Default for ExternalOptions {
    /// No gateways (so no external load), and the flags' defaults.
    fn default() -> ExternalOptions {
        ExternalOptions {
            against: Vec::new(),
            networks: Vec::new(),
            token: None,
            clients: DEFAULT_CLIENTS,
            interval: DEFAULT_INTERVAL_MS,
            seconds: None,
            label: DEFAULT_LABEL.to_owned(),
        }
    }
}

fn gateway_url(value: &str) -> Result<String, String> {
    match value.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() => Ok(value.trim_end_matches('/').to_owned()),
        _ => Err(
            "a gateway's base URL is http://HOST:PORT (the load speaks plain websockets)".into(),
        ),
    }
}

fn network_name(value: &str) -> Result<String, String> {
    imgfetch_common::validate::network(value).map_err(|e| e.to_string())?;
    Ok(value.to_owned())
}

fn label(value: &str) -> Result<String, String> {
    if value.len() > 64 {
        return Err("at most 64 characters: request ids are built from it".into());
    }
    imgfetch_common::validate::id(value).map_err(|e| e.to_string())?;
    Ok(value.to_owned())
}

fn seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err("a number of seconds above 0".into()),
    }
}

/// Loads `options.against` until SIGTERM, SIGINT or `--seconds`, then drains, asks again by
/// id and counts. The report fails, beyond loss and duplication, when no request at all was
/// accepted: a run that tested nothing (every upgrade refused for its token, say) does not
/// pass.
pub async fn run(options: &ExternalOptions) -> anyhow::Result<FaultReport> {
    anyhow::ensure!(
        !options.against.is_empty() && !options.networks.is_empty(),
        "the load needs a gateway (--against) and a network (--network)"
    );
    // Listening before the first request: a signal that comes early ends the run, not the
    // process.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let images = Arc::new(Images::generated(CORPUS_SIZE, CORPUS_COUNT));
    let ledger = Arc::new(Ledger::default());
    let spec = LoadSpec {
        networks: options.networks.clone(),
        token: options.token.clone(),
        clients: options.clients,
        interval: Duration::from_millis(options.interval),
        max_in_flight: 16,
        drain: DRAIN,
        prefix: format!("{}-{}", options.label, run_id()),
    };
    println!(
        "load: {} clients on {}, networks {}, one request per client every {} ms, ids {}-…; stops at {}",
        spec.clients,
        options.against.join(" "),
        spec.networks.join(" "),
        options.interval,
        spec.prefix,
        match options.seconds {
            Some(s) => format!("SIGTERM, SIGINT or after {s} s"),
            None => "SIGTERM or SIGINT".to_owned(),
        }
    );
    let started = Instant::now();
    let gateways = Arc::new(Mutex::new(options.against.clone()));
    let load = Load::start(&spec, gateways, images.clone(), ledger.clone());
    let time_up = async {
        match options.seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(time_up);
    let mut progress = tokio::time::interval_at((started + PROGRESS).into(), PROGRESS);
    let why = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = &mut time_up => break "time is up",
            _ = progress.tick() => {
                let so_far = ledger.report(&options.label, &[], started.elapsed());
                println!("{}", progress_line(&so_far));
            }
        }
    };
    println!(
        "{why}: load stopped after {:.1} s; waiting for the answers still due (at most {} s), then asking again by id",
        started.elapsed().as_secs_f64(),
        DRAIN.as_secs()
    );
    let settle = async {
        load.finish().await;
        client::reask(&options.against, options.token.as_deref(), &images, &ledger).await;
    };
    // A second signal cuts the wait short; the report still comes, marked incomplete.
    let cut_short = tokio::select! {
        _ = settle => None,
        _ = sigterm.recv() => Some("SIGTERM"),
        _ = sigint.recv() => Some("SIGINT"),
    };
    let mut report = ledger.report(&options.label, &[], started.elapsed());
    if let Some(signal) = cut_short {
        report.failures.push(format!(
            "a second {signal} ended the wait for answers and the asking again by id: the counts are incomplete"
        ));
    }
    if report.accepted == 0 {
        report.failures.push(format!(
            "no request was accepted, so nothing was tested ({} sent, {} refused before acceptance, {} websockets not opened)",
            report.sent,
            report.refused.values().sum::<usize>(),
            report.connect_failures.values().sum::<usize>()
        ));
    }
    Ok(report)
}

/// The counts so far, on one line.
fn progress_line(r: &FaultReport) -> String {
    format!(
        "{:.0} s: sent {}, accepted {}, ok {}, refused {}, websockets not opened {}",
        r.wall_s,
        r.sent,
        r.accepted,
        r.ok,
        r.refused.values().sum::<usize>(),
        r.connect_failures.values().sum::<usize>()
    )
}

/// What makes this run's ids its own: milliseconds since 1970 and the process id, in hex. Two
/// runs against the same gateways within the results' lifetime must not share an id.
fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{ms:x}p{:x}", std::process::id())
}
