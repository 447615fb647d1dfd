//! The command line: `imgfetch get` and its flags, each with an `IMGFETCH_*` variable.

use std::path::PathBuf;
use std::time::Duration;

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
    #[arg(long, default_value_t = 16, env = "IMGFETCH_CLI_CONCURRENCY",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// A bearer token, sent as `Authorization: Bearer`; needed when the gateway has a tokens file.
    #[arg(long, env = "IMGFETCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// How long a response may send nothing before its key fails (a stalled stream), e.g. 30s
    /// [default: 1m].
    #[arg(long, value_name = "DURATION", env = "IMGFETCH_IDLE_TIMEOUT",
          value_parser = positive_duration)]
    pub idle_timeout: Option<Duration>,

    /// Deprecated: the idle timeout in seconds; use --idle-timeout.
    #[arg(long, hide = true, value_name = "SECS", env = "IMGFETCH_IDLE_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: Option<u64>,

    /// Never draw the progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long, env = "IMGFETCH_NO_PROGRESS")]
    pub no_progress: bool,
}

/// The idle timeout when neither flag is given.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl GetArgs {
    /// The idle timeout, and a warning to print when it came from the deprecated
    /// `--idle-timeout-secs` (or `IMGFETCH_IDLE_TIMEOUT_SECS`). `--idle-timeout` wins when both
    /// are given.
    pub fn idle_timeout(&self) -> (Duration, Option<String>) {
        let warning = self.idle_timeout_secs.map(|secs| {
            format!(
                "--idle-timeout-secs (IMGFETCH_IDLE_TIMEOUT_SECS) is deprecated: \
                 use --idle-timeout {secs}s (IMGFETCH_IDLE_TIMEOUT={secs}s)"
            )
        });
        let timeout = match (self.idle_timeout, self.idle_timeout_secs) {
            (Some(timeout), _) => timeout,
            (None, Some(secs)) => Duration::from_secs(secs),
            (None, None) => DEFAULT_IDLE_TIMEOUT,
        };
        (timeout, warning)
    }
}

/// A duration in the project's human form (`30s`, `1m 30s`), at least 1 ms.
fn positive_duration(value: &str) -> Result<Duration, String> {
    let duration = imgfetch_common::settings::duration(value)?;
    if duration < Duration::from_millis(1) {
        return Err(format!("{value:?} is too short: at least 1ms"));
    }
    Ok(duration)
}

fn parse_network(value: &str) -> Result<String, imgfetch_common::validate::Invalid> {
    imgfetch_common::validate::network(value).map(|()| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(flags: &[&str]) -> Result<GetArgs, clap::Error> {
        let base = [
            "imgfetch",
            "get",
            "--gateway",
            "http://127.0.0.1:1",
            "--network",
            "n",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(flags))?;
        let Command::Get(args) = cli.command;
        Ok(args)
    }

    #[test]
    fn the_idle_timeout_is_a_duration_in_human_form() {
        assert_eq!(
            get(&[]).unwrap().idle_timeout(),
            (DEFAULT_IDLE_TIMEOUT, None)
        );
        let (timeout, warning) = get(&["--idle-timeout", "1m 30s"]).unwrap().idle_timeout();
        assert_eq!((timeout, warning), (Duration::from_secs(90), None));
        for bad in ["30", "0s", "soon"] {
            assert!(get(&["--idle-timeout", bad]).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_old_seconds_flag_still_works_and_says_it_is_deprecated() {
        let (timeout, warning) = get(&["--idle-timeout-secs", "5"]).unwrap().idle_timeout();
        assert_eq!(timeout, Duration::from_secs(5));
        let warning = warning.expect("a deprecation warning");
        assert!(warning.contains("use --idle-timeout 5s"), "{warning}");
        // The new flag wins; the old one still warns.
        let args = get(&["--idle-timeout-secs", "5", "--idle-timeout", "2s"]).unwrap();
        assert_eq!(args.idle_timeout().0, Duration::from_secs(2));
        assert!(args.idle_timeout().1.is_some());
    }

    #[test]
    fn the_old_seconds_flag_is_hidden_from_help() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("get")
            .expect("the get subcommand")
            .render_long_help()
            .to_string();
        assert!(help.contains("--idle-timeout <DURATION>"), "{help}");
        assert!(!help.contains("--idle-timeout-secs"), "{help}");
        assert!(help.contains("IMGFETCH_CLI_CONCURRENCY"), "{help}");
    }
}
