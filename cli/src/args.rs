//! The command line: `imgfetch get` and its flags, each with an `IMGFETCH_*` variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Fetches images through an imgfetch gateway.
#[derive(Debug, Parser)]
#[command(name = "imgfetch", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch one or more keys of a network and save them in a directory.
    Get(GetArgs),
}

/// The flags of `imgfetch get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The gateway's base URL, such as `http://127.0.0.1:8080`.
    #[arg(long, env = "IMGFETCH_GATEWAY")]
    pub gateway: reqwest::Url,

    /// The network tag of the zone that holds the images.
    #[arg(long, env = "IMGFETCH_NETWORK", value_parser = parse_network)]
    pub network: String,

    /// Keys to fetch (relative paths in the network's store).
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,

    /// A file of keys, one a line; blank lines and lines starting with `#` are skipped.
    #[arg(long, value_name = "FILE", env = "IMGFETCH_FROM_FILE")]
    pub from_file: Option<PathBuf>,

    /// The directory images are saved in (created when missing).
    #[arg(
        short,
        long,
        value_name = "DIR",
        default_value = ".",
        env = "IMGFETCH_OUTPUT"
    )]
    pub output: PathBuf,

    /// Save each image under its key (sanitised) instead of its archive name.
    #[arg(long, env = "IMGFETCH_KEEP_NAMES")]
    pub keep_names: bool,

    /// How many requests are in flight at once.
    #[arg(long, default_value_t = 16, env = "IMGFETCH_CONCURRENCY",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// A bearer token, sent as `Authorization: Bearer`; needed when the gateway has a tokens file.
    #[arg(long, env = "IMGFETCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Seconds a response may send nothing before its key fails (a stalled stream).
    #[arg(long, default_value_t = 60, env = "IMGFETCH_IDLE_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Never draw the progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long, env = "IMGFETCH_NO_PROGRESS")]
    pub no_progress: bool,
}

fn parse_network(value: &str) -> Result<String, imgfetch_common::validate::Invalid> {
    imgfetch_common::validate::network(value).map(|()| value.to_owned())
}
