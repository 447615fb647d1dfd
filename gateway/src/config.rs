//! Gateway configuration: flags and `IMGFETCH_*` variables over built-in defaults, all named in
//! [`defaults`]. The gateway needs no list of networks: it learns them from JetStream.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use imgfetch_common::connect::NatsAuth;
use imgfetch_common::store::{S3Options, StoreSpec};
use imgfetch_common::telemetry::LogFormat;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::archive::ArchiveConfig;

/// The built-in defaults, in one place.
pub mod defaults {
    /// NATS server to connect to.
    pub const NATS_URL: &str = "nats://127.0.0.1:4222";
    /// Address the HTTP and websocket server listens on.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// How long a client waits for an answer.
    pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
    /// How long a JetStream publish may take to be acknowledged.
    pub const PUBLISH_TIMEOUT_MS: u64 = 5_000;
    /// Open websockets at once.
    pub const MAX_WEBSOCKETS: usize = 1024;
    /// Requests in flight on one websocket.
    pub const MAX_IN_FLIGHT_PER_SOCKET: usize = 32;
    /// HTTP image requests waiting for their answer at once.
    pub const MAX_HTTP_IN_FLIGHT: usize = 1024;
    /// Largest websocket message a client may send.
    pub const MAX_CLIENT_FRAME_BYTES: usize = 16 * 1024;
    /// How long one frame may take to reach a slow client before it is disconnected.
    pub const SEND_TIMEOUT_MS: u64 = 10_000;
    /// How long in-flight requests may take to finish after SIGTERM.
    pub const GRACE_MS: u64 = 30_000;
    /// The archive, relative to the working directory.
    pub const ARCHIVE: &str = "archive";
    /// Bytes of a streamed image the gateway lets a resolver send ahead of the client (its
    /// credit window); chosen by measurement, see `docs/PROTOCOL.md`.
    pub const STREAM_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
    /// How long a stream may go without a chunk, while it has credit, before it is failed.
    pub const CHUNK_TIMEOUT_MS: u64 = 30_000;
    /// How long a websocket may stay silent with nothing in flight before it is closed.
    pub const WS_IDLE_TIMEOUT_MS: u64 = 60_000;
    /// How long a client may take to send a request's headers.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    /// Open TCP connections at once (HTTP and websocket alike).
    pub const MAX_CONNECTIONS: usize = 4096;
    /// Requests in flight at once for one token, over HTTP and websocket together.
    pub const MAX_IN_FLIGHT_PER_TOKEN: usize = 64;
    /// How long the outcome of a request can be fetched again by id.
    pub const RESULT_TTL_MS: u64 = 600_000;
    /// Replicas of the results bucket when the gateway creates it.
    pub const RESULTS_REPLICAS: usize = 1;
}

/// Command line of `imgfetch-gateway`.
#[derive(Debug, Parser)]
#[command(
    name = "imgfetch-gateway",
    version,
    about = "Accepts image requests over websocket and HTTP and queues them on JetStream"
)]
pub struct Args {
    /// NATS server URL, or a comma-separated list of the nodes of a cluster.
    #[arg(long, env = "IMGFETCH_NATS_URL", default_value = defaults::NATS_URL)]
    pub nats_url: String,
    /// NATS credentials and TLS, the same flags as the resolver's.
    #[command(flatten)]
    pub nats_auth: NatsAuth,
    /// Address to listen on.
    #[arg(long, env = "IMGFETCH_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,
    /// Name of this instance; part of its callback subjects, so unique per replica
    /// [default: gw- and 12 random hex digits].
    #[arg(long, env = "IMGFETCH_INSTANCE")]
    pub instance: Option<String>,
    /// JetStream stream name.
    #[arg(long, env = "IMGFETCH_STREAM", default_value = imgfetch_common::protocol::DEFAULT_STREAM)]
    pub stream: String,
    /// How long a client waits for an answer, in milliseconds.
    #[arg(long, env = "IMGFETCH_REQUEST_TIMEOUT_MS", default_value_t = defaults::REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// Open websockets at once.
    #[arg(long, env = "IMGFETCH_MAX_WEBSOCKETS", default_value_t = defaults::MAX_WEBSOCKETS)]
    pub max_websockets: usize,
    /// Requests in flight on one websocket.
    #[arg(long, env = "IMGFETCH_MAX_IN_FLIGHT_PER_SOCKET", default_value_t = defaults::MAX_IN_FLIGHT_PER_SOCKET)]
    pub max_in_flight_per_socket: usize,
    /// HTTP image requests waiting for their answer at once.
    #[arg(long, env = "IMGFETCH_MAX_HTTP_IN_FLIGHT", default_value_t = defaults::MAX_HTTP_IN_FLIGHT)]
    pub max_http_in_flight: usize,
    /// Drain time after SIGTERM, in milliseconds.
    #[arg(long, env = "IMGFETCH_GRACE_MS", default_value_t = defaults::GRACE_MS)]
    pub grace_ms: u64,
    /// Log format: text or json.
    #[arg(long, env = "IMGFETCH_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Bytes of a streamed image a resolver may send ahead of the client.
    #[arg(long, env = "IMGFETCH_STREAM_WINDOW_BYTES", default_value_t = defaults::STREAM_WINDOW_BYTES)]
    pub stream_window_bytes: u64,
    /// Milliseconds a streamed image may go without a chunk while it has credit.
    #[arg(long, env = "IMGFETCH_CHUNK_TIMEOUT_MS", default_value_t = defaults::CHUNK_TIMEOUT_MS)]
    pub chunk_timeout_ms: u64,
    /// Where fetched images are archived: a directory, file:///dir or s3://bucket[/prefix]
    /// (S3 settings from the AWS_* variables), or `off`.
    #[arg(long, env = "IMGFETCH_ARCHIVE", default_value = defaults::ARCHIVE)]
    pub archive: String,
    /// Directory template of the archive; placeholders are listed in docs/ARCHIVE.md.
    #[arg(long, env = "IMGFETCH_ARCHIVE_DIR_TEMPLATE", default_value = crate::template::DEFAULT_DIR)]
    pub archive_dir_template: String,
    /// File name template of the archive.
    #[arg(long, env = "IMGFETCH_ARCHIVE_FILE_TEMPLATE", default_value = crate::template::DEFAULT_FILE)]
    pub archive_file_template: String,
    /// Client authentication and connection limits.
    #[command(flatten)]
    pub clients: ClientArgs,
    /// Where request outcomes are recorded for fetching again by id.
    #[command(flatten)]
    pub results: ResultArgs,
    /// Only parse and validate the configuration (flags, environment, the tokens file), print
    /// a one-line summary and exit: 0 when it is usable, 64 when not. Connects to nothing,
    /// opens no archive and binds no port.
    #[arg(long)]
    pub check_config: bool,
}

/// Everything `run` needs, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    /// NATS server URL.
    pub nats_url: String,
    /// NATS credentials and TLS.
    pub nats_auth: NatsAuth,
    /// Instance name, a subject token.
    pub instance: String,
    /// JetStream stream name.
    pub stream: String,
    /// How long a client waits for an answer.
    pub request_timeout: Duration,
    /// How long a publish may take to be acknowledged.
    pub publish_timeout: Duration,
    /// Open websockets at once.
    pub max_websockets: usize,
    /// Requests in flight on one websocket.
    pub max_in_flight_per_socket: usize,
    /// HTTP image requests waiting at once.
    pub max_http_in_flight: usize,
    /// Largest websocket message a client may send.
    pub max_client_frame_bytes: usize,
    /// How long one frame may take to reach a client.
    pub send_timeout: Duration,
    /// Drain time after SIGTERM.
    pub grace: Duration,
    /// How streamed images are received.
    pub streams: crate::transfer::StreamSettings,
    /// Log format.
    pub log_format: LogFormat,
    /// The archive; `None` archives nothing.
    pub archive: Option<ArchiveConfig>,
    /// Where `/metrics` renders from; `None` serves no metrics.
    pub metrics: Option<PrometheusHandle>,
    /// Client authentication and connection limits.
    pub clients: ClientSettings,
    /// Where request outcomes are recorded.
    pub results: crate::results::ResultSettings,
}

impl Config {
    /// A config with defaults for everything but the NATS URL.
    pub fn new(nats_url: impl Into<String>) -> Config {
        Config {
            nats_url: nats_url.into(),
            nats_auth: NatsAuth::default(),
            instance: format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            stream: imgfetch_common::protocol::DEFAULT_STREAM.to_owned(),
            request_timeout: Duration::from_millis(defaults::REQUEST_TIMEOUT_MS),
            publish_timeout: Duration::from_millis(defaults::PUBLISH_TIMEOUT_MS),
            max_websockets: defaults::MAX_WEBSOCKETS,
            max_in_flight_per_socket: defaults::MAX_IN_FLIGHT_PER_SOCKET,
            max_http_in_flight: defaults::MAX_HTTP_IN_FLIGHT,
            max_client_frame_bytes: defaults::MAX_CLIENT_FRAME_BYTES,
            send_timeout: Duration::from_millis(defaults::SEND_TIMEOUT_MS),
            grace: Duration::from_millis(defaults::GRACE_MS),
            streams: crate::transfer::StreamSettings {
                window_bytes: defaults::STREAM_WINDOW_BYTES,
                chunk_timeout: Duration::from_millis(defaults::CHUNK_TIMEOUT_MS),
            },
            log_format: LogFormat::Text,
            archive: None,
            metrics: None,
            clients: ClientSettings::default(),
            results: crate::results::ResultSettings::default(),
        }
    }

    /// Turns parsed flags into a config, checking what clap cannot.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let mut config = Config::new(args.nats_url);
        config.nats_auth = args.nats_auth;
        imgfetch_common::connect::server_addrs(&config.nats_url)?;
        config.nats_auth.check()?;
        if let Some(instance) = args.instance {
            imgfetch_common::validate::id(&instance).map_err(ConfigError::Instance)?;
            config.instance = instance;
        }
        if args.stream.is_empty() || args.stream.contains(['.', '*', '>', ' ']) {
            return Err(ConfigError::StreamName(args.stream));
        }
        if args.request_timeout_ms == 0
            || args.max_websockets == 0
            || args.max_in_flight_per_socket == 0
            || args.max_http_in_flight == 0
            || args.stream_window_bytes == 0
            || args.chunk_timeout_ms == 0
        {
            return Err(ConfigError::Zero);
        }
        config.stream = args.stream;
        config.request_timeout = Duration::from_millis(args.request_timeout_ms);
        config.max_websockets = args.max_websockets;
        config.max_in_flight_per_socket = args.max_in_flight_per_socket;
        config.max_http_in_flight = args.max_http_in_flight;
        config.grace = Duration::from_millis(args.grace_ms);
        config.streams.window_bytes = args.stream_window_bytes;
        config.streams.chunk_timeout = Duration::from_millis(args.chunk_timeout_ms);
        config.archive = archive_config(
            &args.archive,
            args.archive_dir_template,
            args.archive_file_template,
        )?;
        config.clients = ClientSettings::from_args(args.clients)?;
        config.results = result_settings(args.results)?;
        config.log_format = match args.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(ConfigError::LogFormat(other.to_owned())),
        };
        Ok(config)
    }
}

impl Config {
    /// One line for `--check-config`: NATS and as whom, the instance, the stream, the archive
    /// and who may connect. Names no secret.
    pub fn summary(&self) -> String {
        let user = self.nats_auth.summary();
        let archive = match &self.archive {
            Some(archive) => archive.store.summary(),
            None => "off".to_owned(),
        };
        let clients = match &self.clients.tokens {
            Some(tokens) => format!("{} tokens", tokens.len()),
            None => "every client let in".to_owned(),
        };
        format!(
            "NATS {}{user}; instance {}; stream {}; archive {archive}; {clients}; grace {} ms",
            self.nats_url,
            self.instance,
            self.stream,
            self.grace.as_millis(),
        )
    }
}

/// A configuration that cannot be used; the message names the setting and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A NATS URL is malformed, or the NATS credentials do not fit together.
    #[error(transparent)]
    Nats(#[from] imgfetch_common::connect::ConnectError),
    /// The instance name is not a valid id.
    #[error("instance: {}", .0.reason)]
    Instance(#[source] imgfetch_common::validate::Invalid),
    /// The stream name cannot be a JetStream name.
    #[error("stream name {0:?} is not a valid JetStream name")]
    StreamName(String),
    /// A timeout or limit is zero.
    #[error("timeouts and limits must be at least 1")]
    Zero,
    /// The log format is neither `text` nor `json`.
    #[error("log format {0:?}: expected text or json")]
    LogFormat(String),
    /// The tokens file could not be read or parsed.
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokensError),
    /// The archive URL is malformed.
    #[error("archive: {0}")]
    ArchiveUrl(#[source] imgfetch_common::store::BadUrl),
    /// The archive directory cannot be made absolute.
    #[error("archive: directory {path:?}: {source}")]
    ArchiveDir {
        /// The directory as given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An archive path template is invalid.
    #[error("archive {0}")]
    ArchiveTemplate(#[from] crate::template::TemplateError),
    /// The result TTL or the results replicas is zero.
    #[error("the result TTL and the results replicas must be at least 1")]
    ResultsZero,
    /// The results bucket name cannot be a key-value bucket name.
    #[error("results bucket {0:?}: only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    ResultsBucket(String),
}

/// Flags of client authentication and connection limits (see `docs/SECURITY.md`).
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// TOML file of accepted bearer tokens (SHA-256 hashes) and the networks each may fetch;
    /// without it every client is let in.
    #[arg(long, env = "IMGFETCH_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Requests in flight at once for one token, HTTP and websocket together.
    #[arg(long, env = "IMGFETCH_MAX_IN_FLIGHT_PER_TOKEN", default_value_t = defaults::MAX_IN_FLIGHT_PER_TOKEN)]
    pub max_in_flight_per_token: usize,
    /// Milliseconds a websocket may stay silent, with nothing in flight, before it is closed.
    #[arg(long, env = "IMGFETCH_WS_IDLE_TIMEOUT_MS", default_value_t = defaults::WS_IDLE_TIMEOUT_MS)]
    pub ws_idle_timeout_ms: u64,
    /// Milliseconds a client may take to send a request's headers before the connection is
    /// closed.
    #[arg(long, env = "IMGFETCH_HEADER_READ_TIMEOUT_MS", default_value_t = defaults::HEADER_READ_TIMEOUT_MS)]
    pub header_read_timeout_ms: u64,
    /// Open TCP connections at once; further ones get a 503 and are closed.
    #[arg(long, env = "IMGFETCH_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,
}

/// Client authentication and connection limits, resolved.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Accepted tokens; `None` lets every client in.
    pub tokens: Option<crate::auth::Tokens>,
    /// Requests in flight at once for one token.
    pub max_in_flight_per_token: usize,
    /// How long a websocket may stay silent with nothing in flight.
    pub ws_idle_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Open TCP connections at once.
    pub max_connections: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            tokens: None,
            max_in_flight_per_token: defaults::MAX_IN_FLIGHT_PER_TOKEN,
            ws_idle_timeout: Duration::from_millis(defaults::WS_IDLE_TIMEOUT_MS),
            header_read_timeout: Duration::from_millis(defaults::HEADER_READ_TIMEOUT_MS),
            max_connections: defaults::MAX_CONNECTIONS,
        }
    }
}

impl ClientSettings {
    /// Checks the flags and reads the tokens file.
    pub fn from_args(args: ClientArgs) -> Result<ClientSettings, ConfigError> {
        if args.max_in_flight_per_token == 0
            || args.ws_idle_timeout_ms == 0
            || args.header_read_timeout_ms == 0
            || args.max_connections == 0
        {
            return Err(ConfigError::Zero);
        }
        let tokens = match &args.tokens_file {
            Some(path) => Some(crate::auth::Tokens::load(path)?),
            None => None,
        };
        Ok(ClientSettings {
            tokens,
            max_in_flight_per_token: args.max_in_flight_per_token,
            ws_idle_timeout: Duration::from_millis(args.ws_idle_timeout_ms),
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
            max_connections: args.max_connections,
        })
    }
}

/// Flags of the results bucket (see `docs/RELIABILITY.md`).
#[derive(Debug, clap::Args)]
pub struct ResultArgs {
    /// Milliseconds the outcome of a request can be fetched again by id; also the bucket's
    /// `max_age` when the gateway creates it.
    #[arg(long, env = "IMGFETCH_RESULT_TTL_MS", default_value_t = defaults::RESULT_TTL_MS)]
    pub result_ttl_ms: u64,
    /// JetStream key-value bucket of request outcomes (created when missing).
    #[arg(long, env = "IMGFETCH_RESULTS_BUCKET", default_value = imgfetch_common::protocol::DEFAULT_RESULTS_BUCKET)]
    pub results_bucket: String,
    /// Replicas of the results bucket when the gateway creates it (3 on a 3-node cluster).
    #[arg(long, env = "IMGFETCH_RESULTS_REPLICAS", default_value_t = defaults::RESULTS_REPLICAS)]
    pub results_replicas: usize,
}

fn result_settings(args: ResultArgs) -> Result<crate::results::ResultSettings, ConfigError> {
    if args.result_ttl_ms == 0 || args.results_replicas == 0 {
        return Err(ConfigError::ResultsZero);
    }
    let bucket = &args.results_bucket;
    let valid = !bucket.is_empty()
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(ConfigError::ResultsBucket(bucket.clone()));
    }
    Ok(crate::results::ResultSettings {
        bucket: args.results_bucket,
        ttl: Duration::from_millis(args.result_ttl_ms),
        replicas: args.results_replicas,
    })
}

/// `off`, a plain directory (relative to the working directory), or a store URL.
fn archive_config(
    target: &str,
    dir_template: String,
    file_template: String,
) -> Result<Option<ArchiveConfig>, ConfigError> {
    if target == "off" {
        return Ok(None);
    }
    let store = if target.contains("://") {
        imgfetch_common::store::parse_url(
            target,
            S3Options {
                from_env: true,
                ..S3Options::default()
            },
        )
        .map_err(ConfigError::ArchiveUrl)?
    } else {
        let dir = std::path::absolute(target).map_err(|source| ConfigError::ArchiveDir {
            path: target.to_owned(),
            source,
        })?;
        StoreSpec::File { root: dir }
    };
    // Templates are checked now, so that a typo stops the gateway at start.
    crate::template::Template::parse(&dir_template, true)?;
    crate::template::Template::parse(&file_template, false)?;
    Ok(Some(ArchiveConfig {
        store,
        dir_template,
        file_template,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("imgfetch-gateway").chain(list.iter().copied()))
                .map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.nats_url, defaults::NATS_URL);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert!(c.instance.starts_with("gw-"));
        assert_ne!(
            c.instance,
            parse(&[]).unwrap().instance,
            "instances must differ by default"
        );
        let archive = c.archive.expect("the binary archives by default");
        assert_eq!(
            archive.store,
            StoreSpec::File {
                root: std::env::current_dir().unwrap().join("archive")
            }
        );
        assert!(parse(&["--archive", "off"]).unwrap().archive.is_none());
        assert_eq!(c.results.bucket, "IMGFETCH_RESULTS");
        assert_eq!(c.results.ttl, Duration::from_secs(600));
        let results = parse(&["--result-ttl-ms", "1500", "--results-replicas", "3"])
            .unwrap()
            .results;
        assert_eq!(
            (results.ttl, results.replicas),
            (Duration::from_millis(1500), 3)
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        for (list, expect) in [
            (&["--instance", "a.b"][..], "instance"),
            (&["--stream", "A.B"][..], "stream"),
            (&["--log-format", "xml"][..], "log format"),
            (&["--listen", "nowhere"][..], "invalid"),
            (&["--request-timeout-ms", "0"][..], "at least 1"),
            (
                &["--archive-dir-template", "{network}/{city}"][..],
                "unknown placeholder {city}",
            ),
            (
                &["--archive-file-template", "{id}/{ext}"][..],
                "cannot contain '/'",
            ),
            (&["--archive", "ftp://x/y"][..], "supported: file, s3"),
            (&["--nats-user", "gateway"][..], "needs a password file"),
            (
                &["--nats-url", "nats://a:4222,http://b:4222"][..],
                "bad NATS URL \"http://b:4222\"",
            ),
            (
                &[
                    "--nats-creds",
                    "/c",
                    "--nats-user",
                    "u",
                    "--nats-password-file",
                    "/p",
                ][..],
                "not both",
            ),
            (&["--max-connections", "0"][..], "at least 1"),
            (
                &["--tokens-file", "/nonexistent/tokens.toml"][..],
                "tokens file",
            ),
            (&["--result-ttl-ms", "0"][..], "result TTL"),
            (&["--results-bucket", "A.B"][..], "results bucket"),
        ] {
            let err = parse(list).unwrap_err();
            assert!(
                err.contains(expect),
                "{list:?}: expected {expect:?} in {err:?}"
            );
        }
    }
}
