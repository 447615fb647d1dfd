//! `imgfetch`, the command-line client: fetches images through a gateway's
//! `GET /v1/images/{network}/{key}` (docs/API.md), one key or a batch of thousands, and
//! saves each whole under a name that cannot leave the output directory.
//!
//! # Layout
//!
//! - [`args`]: the command line (clap), each flag with an `IMGFETCH_*` variable (the
//!   concurrency's is `IMGFETCH_CLI_CONCURRENCY`, apart from the resolver's).
//! - [`keys`]: the keys of a run, from the arguments and `--from-file`.
//! - [`fetch`]: one key: the request, its id and token, the body streamed to a temp file and
//!   renamed when whole; the typed [`fetch::FetchError`] of a failed key.
//! - [`names`]: file names from the archive name or the key, sanitised to one plain segment.
//! - [`batch`]: many keys at once, bounded by `--concurrency`.
//! - [`progress`]: the progress bar, hidden when stderr is not a terminal.
//! - [`summary`]: the closing summary and its list of failures.
//!
//! Exit status: 0 when every key was saved, 1 when any failed, the run was interrupted or could
//! not start, 2 for bad usage.

pub mod args;
pub mod batch;
pub mod fetch;
pub mod keys;
pub mod names;
pub mod progress;
pub mod summary;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use args::{Cli, Command, GetArgs};

/// Exit status when the command line is wrong (clap's own).
const EXIT_USAGE: u8 = 2;

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The keys could not be gathered.
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    /// The output directory cannot be created.
    #[error("cannot create the output directory {}", path.display())]
    Output {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token cannot be sent as a header.
    #[error("the token is not a valid header value")]
    Token(#[source] reqwest::header::InvalidHeaderValue),
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl RunError {
    /// The exit status: 2 for what the user got wrong, 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            RunError::Keys(_) | RunError::Token(_) => EXIT_USAGE,
            RunError::Output { .. } | RunError::Client(_) => 1,
        }
    }
}

/// Runs a parsed command line and returns the process's exit status.
pub async fn run(cli: Cli) -> ExitCode {
    let Command::Get(args) = cli.command;
    match get(args).await {
        Ok(summary) => {
            eprint!("{summary}");
            if summary.all_saved() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprint!("imgfetch: {error}");
            let mut cause = std::error::Error::source(&error);
            while let Some(e) = cause {
                eprint!(": {e}");
                cause = e.source();
            }
            eprintln!();
            ExitCode::from(error.exit_status())
        }
    }
}

/// `imgfetch get`: fetches every key, with the progress bar, and sums up.
pub async fn get(args: GetArgs) -> Result<summary::Summary, RunError> {
    let keys = keys::gather(&args.keys, args.from_file.as_deref())?;
    std::fs::create_dir_all(&args.output).map_err(|source| RunError::Output {
        path: args.output.clone(),
        source,
    })?;
    let (idle_timeout, deprecated) = args.idle_timeout();
    if let Some(warning) = deprecated {
        eprintln!("imgfetch: warning: {warning}");
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!("imgfetch/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(idle_timeout)
        .build()
        .map_err(RunError::Client)?;
    let fetcher = fetch::Fetcher::new(
        client,
        args.gateway,
        args.network,
        args.token.as_deref(),
        args.output,
        args.keep_names,
    )
    .map_err(RunError::Token)?;
    let progress = progress::Progress::new(keys.len() as u64, !args.no_progress);
    // Without a handler, Ctrl-C would kill the process before the temp files are removed.
    let stop = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let summary = batch::fetch_all(&fetcher, keys, args.concurrency.into(), &progress, stop).await;
    progress.clear();
    Ok(summary)
}
