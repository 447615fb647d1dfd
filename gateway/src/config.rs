//! Gateway configuration: flags and `IMGFETCH_*` variables over an optional TOML file
//! (`--config`) over built-in defaults, all named in [`defaults`]. The resolver is configured
//! the same way ([`imgfetch_common::settings`]). The gateway needs no list of networks: it
//! learns them from JetStream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use imgfetch_common::connect::{NatsAuth, NatsSettings};
use imgfetch_common::settings::{de_duration, duration, Renamed};
use imgfetch_common::store::StoreSpec;
use imgfetch_common::telemetry::LogFormat;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::archive::ArchiveConfig;

/// The built-in defaults, in one place.
pub mod defaults {
    use std::time::Duration;

    /// NATS server to connect to.
    pub const NATS_URL: &str = "nats://127.0.0.1:4222";
    /// Address the HTTP and websocket server listens on.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// How long a client waits for an answer.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long a JetStream publish may take to be acknowledged.
    pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
    /// Open websockets at once.
    pub const MAX_WEBSOCKETS: usize = 1024;
    /// Requests in flight on one websocket.
    pub const MAX_IN_FLIGHT_PER_SOCKET: usize = 32;
    /// HTTP image requests waiting for their answer at once.
    pub const MAX_HTTP_IN_FLIGHT: usize = 1024;
    /// Largest websocket message a client may send.
    pub const MAX_CLIENT_FRAME_BYTES: usize = 16 * 1024;
    /// How long one frame may take to reach a slow client before it is disconnected.
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long in-flight requests may take to finish after SIGTERM.
    pub const GRACE: Duration = Duration::from_secs(30);
    /// The archive, relative to the working directory.
    pub const ARCHIVE: &str = "archive";
    /// Bytes of a streamed image the gateway lets a resolver send ahead of the client (its
    /// credit window); chosen by measurement, see `docs/PROTOCOL.md`.
    pub const STREAM_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
    /// The most a stream's window grows to when it is sized to a slow link (its
    /// bandwidth-delay product).
    pub const MAX_STREAM_WINDOW_BYTES: u64 = 64 * 1024 * 1024;
    /// Bytes all streamed images together may have granted and not yet handed out.
    pub const MAX_STREAM_BUFFER_BYTES: u64 = 256 * 1024 * 1024;
    /// How long a stream may go without a chunk, while it has credit, before it is failed.
    pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long a websocket may stay silent with nothing in flight before it is closed.
    pub const WS_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long a client may take to send a request's headers.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Open TCP connections at once (HTTP and websocket alike).
    pub const MAX_CONNECTIONS: usize = 4096;
    /// Requests in flight at once for one token, over HTTP and websocket together.
    pub const MAX_IN_FLIGHT_PER_TOKEN: usize = 64;
    /// How often the tokens file is checked for changes.
    pub const TOKENS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
    pub use crate::results::defaults::{RESULTS_REPLICAS, RESULT_TTL};
}

/// Variables renamed when durations took their human form; still setting one is an error.
pub const RENAMED: &[Renamed] = &[
    Renamed {
        old: "IMGFETCH_REQUEST_TIMEOUT_MS",
        new: "IMGFETCH_REQUEST_TIMEOUT",
        example: "30s",
    },
    Renamed {
        old: "IMGFETCH_GRACE_MS",
        new: "IMGFETCH_GRACE",
        example: "30s",
    },
    Renamed {
        old: "IMGFETCH_CHUNK_TIMEOUT_MS",
        new: "IMGFETCH_CHUNK_TIMEOUT",
        example: "30s",
    },
    Renamed {
        old: "IMGFETCH_WS_IDLE_TIMEOUT_MS",
        new: "IMGFETCH_WS_IDLE_TIMEOUT",
        example: "1m",
    },
    Renamed {
        old: "IMGFETCH_HEADER_READ_TIMEOUT_MS",
        new: "IMGFETCH_HEADER_READ_TIMEOUT",
        example: "10s",
    },
    Renamed {
        old: "IMGFETCH_RESULT_TTL_MS",
        new: "IMGFETCH_RESULT_TTL",
        example: "10m",
    },
];

/// Command line of `imgfetch-gateway`.
#[derive(Debug, Parser)]
#[command(
    name = "imgfetch-gateway",
    version,
    about = "Accepts image requests over websocket and HTTP and queues them on JetStream"
)]
pub struct Args {
    /// TOML configuration file (the keys are the flags' names with '_' for '-'; unknown keys
    /// are refused); flags and environment variables override it.
    #[arg(long, env = "IMGFETCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Every setting.
    #[command(flatten)]
    pub settings: Settings,
    /// Only parse and validate the configuration (flags, environment, the TOML file and the
    /// files it names), print a one-line summary and exit: 0 when it is usable, 64 when not.
    /// Connects to nothing, opens no archive and binds no port.
    #[arg(long)]
    pub check_config: bool,
    /// Only copy this instance's NATS credentials, the file in DIR named after --instance, to
    /// the file --nats-password-file or --nats-creds names (mode 0400), and exit: 0 when copied,
    /// 64 when that key is missing or neither file is set. What the Helm chart's init container
    /// runs: DIR holds every replica's credentials, the gateway container sees only its own.
    #[arg(long, value_name = "DIR", conflicts_with = "check_config")]
    pub install_nats_identity: Option<PathBuf>,
}

impl Args {
    /// The flags and variables over the TOML file `--config` names (read through `read`):
    /// every setting given, none defaulted.
    pub fn merged_settings(
        self,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => imgfetch_common::settings::read_toml::<Settings>(path, &read, RENAMED)?,
            None => Settings::default(),
        };
        Ok(self.settings.or(file))
    }
}

/// The settings, as flags and variables and as the keys of the TOML file. Each is optional here:
/// a flag or variable wins over the file, the file over the default.
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// NATS URL, credentials and TLS, the same settings as the resolver's.
    #[command(flatten)]
    #[serde(flatten)]
    pub nats: NatsSettings,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "IMGFETCH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Name of this instance; part of its callback subjects, so unique per replica
    /// [default: gw- and 12 random hex digits].
    #[arg(long, env = "IMGFETCH_INSTANCE")]
    pub instance: Option<String>,
    /// JetStream stream name [default: IMGFETCH].
    #[arg(long, env = "IMGFETCH_STREAM")]
    pub stream: Option<String>,
    /// How long a client waits for an answer, e.g. 30s [default: 30s].
    #[arg(long, env = "IMGFETCH_REQUEST_TIMEOUT", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub request_timeout: Option<Duration>,
    /// Open websockets at once [default: 1024].
    #[arg(long, env = "IMGFETCH_MAX_WEBSOCKETS")]
    pub max_websockets: Option<usize>,
    /// Requests in flight on one websocket [default: 32].
    #[arg(long, env = "IMGFETCH_MAX_IN_FLIGHT_PER_SOCKET")]
    pub max_in_flight_per_socket: Option<usize>,
    /// HTTP image requests waiting for their answer at once [default: 1024].
    #[arg(long, env = "IMGFETCH_MAX_HTTP_IN_FLIGHT")]
    pub max_http_in_flight: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM [default: 30s].
    #[arg(long, env = "IMGFETCH_GRACE", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub grace: Option<Duration>,
    /// Log format [default: text].
    #[arg(long, env = "IMGFETCH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Bytes of a streamed image a resolver may send ahead of the client, at first; a stream
    /// whose client waits on a grant crossing a slow link gets a window sized to the link
    /// [default: 4194304].
    #[arg(long, env = "IMGFETCH_STREAM_WINDOW_BYTES")]
    pub stream_window_bytes: Option<u64>,
    /// The most a stream's window grows to over a slow link (at least --stream-window-bytes)
    /// [default: 67108864].
    #[arg(long, env = "IMGFETCH_MAX_STREAM_WINDOW_BYTES")]
    pub max_stream_window_bytes: Option<u64>,
    /// Bytes of streamed images all clients together may have buffered in this gateway (granted
    /// by credit, not yet read); a stream that finds it full waits, then fails `unavailable`
    /// [default: 268435456].
    #[arg(long, env = "IMGFETCH_MAX_STREAM_BUFFER_BYTES")]
    pub max_stream_buffer_bytes: Option<u64>,
    /// How long a streamed image may go without a chunk while it has credit [default: 30s].
    #[arg(long, env = "IMGFETCH_CHUNK_TIMEOUT", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub chunk_timeout: Option<Duration>,
    /// Where fetched images are archived: a directory, file:///dir or s3://bucket[/prefix]
    /// (S3 settings from the AWS_* variables, the secret also from AWS_SECRET_ACCESS_KEY_FILE),
    /// or `off` [default: archive].
    #[arg(long, env = "IMGFETCH_ARCHIVE")]
    pub archive: Option<String>,
    /// Directory template of the archive; placeholders are listed in docs/ARCHIVE.md.
    #[arg(long, env = "IMGFETCH_ARCHIVE_DIR_TEMPLATE")]
    pub archive_dir_template: Option<String>,
    /// File name template of the archive.
    #[arg(long, env = "IMGFETCH_ARCHIVE_FILE_TEMPLATE")]
    pub archive_file_template: Option<String>,
    /// TOML file of accepted bearer tokens (SHA-256 hashes) and the networks each may fetch;
    /// without it every client is let in.
    #[arg(long, env = "IMGFETCH_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// How often the tokens file is checked for changes, which then take effect without a
    /// restart (SIGHUP re-reads it at once) [default: 10s].
    #[arg(long, env = "IMGFETCH_TOKENS_RELOAD_INTERVAL", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub tokens_reload_interval: Option<Duration>,
    /// Requests in flight at once for one token, HTTP and websocket together [default: 64].
    #[arg(long, env = "IMGFETCH_MAX_IN_FLIGHT_PER_TOKEN")]
    pub max_in_flight_per_token: Option<usize>,
    /// How long a websocket may stay silent, with nothing in flight, before it is closed
    /// [default: 1m].
    #[arg(long, env = "IMGFETCH_WS_IDLE_TIMEOUT", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub ws_idle_timeout: Option<Duration>,
    /// How long a client may take to send a request's headers before the connection is closed
    /// [default: 10s].
    #[arg(long, env = "IMGFETCH_HEADER_READ_TIMEOUT", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub header_read_timeout: Option<Duration>,
    /// Open TCP connections at once; further ones get a 503 and are closed [default: 4096].
    #[arg(long, env = "IMGFETCH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long the outcome of a request can be fetched again by id; also the results
    /// bucket's max_age when the gateway creates it [default: 10m].
    #[arg(long, env = "IMGFETCH_RESULT_TTL", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub result_ttl: Option<Duration>,
    /// JetStream key-value bucket of request outcomes, created when missing
    /// [default: IMGFETCH_RESULTS].
    #[arg(long, env = "IMGFETCH_RESULTS_BUCKET")]
    pub results_bucket: Option<String>,
    /// Replicas of the results bucket when the gateway creates it (3 on a 3-node cluster)
    /// [default: 1].
    #[arg(long, env = "IMGFETCH_RESULTS_REPLICAS")]
    pub results_replicas: Option<usize>,
}

impl Settings {
    /// These settings, each one missing taken from `file`.
    pub fn or(self, file: Settings) -> Settings {
        Settings {
            nats: self.nats.or(file.nats),
            listen: self.listen.or(file.listen),
            instance: self.instance.or(file.instance),
            stream: self.stream.or(file.stream),
            request_timeout: self.request_timeout.or(file.request_timeout),
            max_websockets: self.max_websockets.or(file.max_websockets),
            max_in_flight_per_socket: self
                .max_in_flight_per_socket
                .or(file.max_in_flight_per_socket),
            max_http_in_flight: self.max_http_in_flight.or(file.max_http_in_flight),
            grace: self.grace.or(file.grace),
            log_format: self.log_format.or(file.log_format),
            stream_window_bytes: self.stream_window_bytes.or(file.stream_window_bytes),
            max_stream_window_bytes: self
                .max_stream_window_bytes
                .or(file.max_stream_window_bytes),
            max_stream_buffer_bytes: self
                .max_stream_buffer_bytes
                .or(file.max_stream_buffer_bytes),
            chunk_timeout: self.chunk_timeout.or(file.chunk_timeout),
            archive: self.archive.or(file.archive),
            archive_dir_template: self.archive_dir_template.or(file.archive_dir_template),
            archive_file_template: self.archive_file_template.or(file.archive_file_template),
            tokens_file: self.tokens_file.or(file.tokens_file),
            tokens_reload_interval: self.tokens_reload_interval.or(file.tokens_reload_interval),
            max_in_flight_per_token: self
                .max_in_flight_per_token
                .or(file.max_in_flight_per_token),
            ws_idle_timeout: self.ws_idle_timeout.or(file.ws_idle_timeout),
            header_read_timeout: self.header_read_timeout.or(file.header_read_timeout),
            max_connections: self.max_connections.or(file.max_connections),
            result_ttl: self.result_ttl.or(file.result_ttl),
            results_bucket: self.results_bucket.or(file.results_bucket),
            results_replicas: self.results_replicas.or(file.results_replicas),
        }
    }
}

/// Everything `run` needs, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on (main binds it; `run` takes the listener).
    pub listen: SocketAddr,
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
    pub streams: crate::image::transfer::TransferSettings,
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
            listen: defaults::LISTEN
                .parse()
                .expect("the default address parses"),
            nats_url: nats_url.into(),
            nats_auth: NatsAuth::default(),
            instance: format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            stream: imgfetch_common::protocol::DEFAULT_STREAM.to_owned(),
            request_timeout: defaults::REQUEST_TIMEOUT,
            publish_timeout: defaults::PUBLISH_TIMEOUT,
            max_websockets: defaults::MAX_WEBSOCKETS,
            max_in_flight_per_socket: defaults::MAX_IN_FLIGHT_PER_SOCKET,
            max_http_in_flight: defaults::MAX_HTTP_IN_FLIGHT,
            max_client_frame_bytes: defaults::MAX_CLIENT_FRAME_BYTES,
            send_timeout: defaults::SEND_TIMEOUT,
            grace: defaults::GRACE,
            streams: crate::image::transfer::TransferSettings {
                window_bytes: defaults::STREAM_WINDOW_BYTES,
                max_window_bytes: defaults::MAX_STREAM_WINDOW_BYTES,
                max_buffer_bytes: defaults::MAX_STREAM_BUFFER_BYTES,
                chunk_timeout: defaults::CHUNK_TIMEOUT,
            },
            log_format: LogFormat::Text,
            archive: None,
            metrics: None,
            clients: ClientSettings::default(),
            results: crate::results::ResultSettings::default(),
        }
    }

    /// Combines flags and variables, the TOML file they name (read through `read`) and the
    /// defaults, checking what clap cannot; S3 settings of the archive come from `env`.
    pub fn resolve(
        args: Args,
        read: impl Fn(&Path) -> std::io::Result<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let s = args.merged_settings(&read)?;
        let mut config = Config::new(
            s.nats
                .nats_url
                .clone()
                .unwrap_or_else(|| defaults::NATS_URL.to_owned()),
        );
        if let Some(listen) = s.listen {
            config.listen = listen;
        }
        config.nats_auth = s.nats.auth();
        imgfetch_common::connect::server_addrs(&config.nats_url)?;
        config.nats_auth.check()?;
        if let Some(instance) = s.instance {
            imgfetch_common::validate::id(&instance).map_err(ConfigError::Instance)?;
            config.instance = instance;
        }
        if let Some(stream) = s.stream {
            if imgfetch_common::validate::stream_name(&stream).is_err() {
                return Err(ConfigError::StreamName(stream));
            }
            config.stream = stream;
        }
        config.request_timeout =
            positive("request_timeout", s.request_timeout, config.request_timeout)?;
        config.max_websockets =
            positive("max_websockets", s.max_websockets, config.max_websockets)?;
        config.max_in_flight_per_socket = positive(
            "max_in_flight_per_socket",
            s.max_in_flight_per_socket,
            config.max_in_flight_per_socket,
        )?;
        config.max_http_in_flight = positive(
            "max_http_in_flight",
            s.max_http_in_flight,
            config.max_http_in_flight,
        )?;
        config.grace = s.grace.unwrap_or(config.grace);
        config.streams.window_bytes = positive(
            "stream_window_bytes",
            s.stream_window_bytes,
            config.streams.window_bytes,
        )?;
        config.streams.max_window_bytes = positive(
            "max_stream_window_bytes",
            s.max_stream_window_bytes,
            config.streams.max_window_bytes,
        )?
        .max(config.streams.window_bytes);
        config.streams.max_buffer_bytes = positive(
            "max_stream_buffer_bytes",
            s.max_stream_buffer_bytes,
            config.streams.max_buffer_bytes,
        )?;
        config.streams.chunk_timeout = positive(
            "chunk_timeout",
            s.chunk_timeout,
            config.streams.chunk_timeout,
        )?;
        config.log_format = s.log_format.unwrap_or_default();
        config.archive = archive_config(
            s.archive.as_deref().unwrap_or(defaults::ARCHIVE),
            s.archive_dir_template
                .unwrap_or_else(|| crate::archive::template::DEFAULT_DIR.to_owned()),
            s.archive_file_template
                .unwrap_or_else(|| crate::archive::template::DEFAULT_FILE.to_owned()),
            &read,
            &env,
        )?;
        let clients = &mut config.clients;
        clients.max_in_flight_per_token = positive(
            "max_in_flight_per_token",
            s.max_in_flight_per_token,
            clients.max_in_flight_per_token,
        )?;
        clients.ws_idle_timeout = positive(
            "ws_idle_timeout",
            s.ws_idle_timeout,
            clients.ws_idle_timeout,
        )?;
        clients.header_read_timeout = positive(
            "header_read_timeout",
            s.header_read_timeout,
            clients.header_read_timeout,
        )?;
        clients.max_connections = positive(
            "max_connections",
            s.max_connections,
            clients.max_connections,
        )?;
        clients.tokens_reload_interval = positive(
            "tokens_reload_interval",
            s.tokens_reload_interval,
            clients.tokens_reload_interval,
        )?;
        if let Some(path) = &s.tokens_file {
            clients.tokens = Some(crate::auth::Tokens::load(path)?);
            clients.tokens_file = Some(path.clone());
        }
        let results = &mut config.results;
        results.ttl = positive("result_ttl", s.result_ttl, results.ttl)?;
        results.replicas = positive("results_replicas", s.results_replicas, results.replicas)?;
        if let Some(bucket) = s.results_bucket {
            if imgfetch_common::validate::bucket_name(&bucket).is_err() {
                return Err(ConfigError::ResultsBucket(bucket));
            }
            results.bucket = bucket;
        }
        Ok(config)
    }
}

/// A setting that must be at least its unit (1, or 1 ms for a duration, the finest the
/// gateway counts in): the given value, else the default.
fn positive<T: Unit>(name: &'static str, given: Option<T>, default: T) -> Result<T, ConfigError> {
    match given {
        Some(value) if value < T::UNIT => Err(ConfigError::Zero(name)),
        Some(value) => Ok(value),
        None => Ok(default),
    }
}

/// The least value of a setting that must not be zero.
trait Unit: PartialOrd + Sized {
    const UNIT: Self;
}

impl Unit for usize {
    const UNIT: Self = 1;
}

impl Unit for u64 {
    const UNIT: Self = 1;
}

impl Unit for Duration {
    const UNIT: Self = Duration::from_millis(1);
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
            "listen {}; NATS {}{user}; instance {}; stream {}; archive {archive}; {clients}; grace {}",
            self.listen,
            self.nats_url,
            self.instance,
            self.stream,
            imgfetch_common::settings::show(self.grace),
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
    /// The TOML file cannot be read, is malformed, or has an unknown key.
    #[error(transparent)]
    File(#[from] imgfetch_common::settings::FileError),
    /// A limit is zero, or a duration under 1 ms.
    #[error("{0} must be at least 1 (a duration at least 1ms)")]
    Zero(&'static str),
    /// A secret could not be read, or was given twice.
    #[error("archive: {0}")]
    ArchiveSecret(#[source] imgfetch_common::settings::SecretError),
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
    ArchiveTemplate(#[from] crate::archive::template::TemplateError),
    /// The results bucket name cannot be a key-value bucket name.
    #[error("results bucket {0:?}: only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    ResultsBucket(String),
}

/// Client authentication and connection limits, resolved.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Accepted tokens; `None` lets every client in.
    pub tokens: Option<crate::auth::Tokens>,
    /// The file they were read from, re-read on change and on SIGHUP.
    pub tokens_file: Option<PathBuf>,
    /// How often the tokens file is checked for changes.
    pub tokens_reload_interval: Duration,
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
            tokens_file: None,
            tokens_reload_interval: defaults::TOKENS_RELOAD_INTERVAL,
            max_in_flight_per_token: defaults::MAX_IN_FLIGHT_PER_TOKEN,
            ws_idle_timeout: defaults::WS_IDLE_TIMEOUT,
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS,
        }
    }
}

/// `off`, a plain directory (relative to the working directory), or a store URL.
fn archive_config(
    target: &str,
    dir_template: String,
    file_template: String,
    read: impl Fn(&Path) -> std::io::Result<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ArchiveConfig>, ConfigError> {
    if target == "off" {
        return Ok(None);
    }
    let store = if target.contains("://") {
        let options = imgfetch_common::settings::s3_from_env([target], env, read)
            .map_err(ConfigError::ArchiveSecret)?;
        imgfetch_common::store::parse_url(target, options).map_err(ConfigError::ArchiveUrl)?
    } else {
        let dir = std::path::absolute(target).map_err(|source| ConfigError::ArchiveDir {
            path: target.to_owned(),
            source,
        })?;
        StoreSpec::File { root: dir }
    };
    // Templates are checked now, so that a typo stops the gateway at start.
    crate::archive::template::Template::parse(&dir_template, true)?;
    crate::archive::template::Template::parse(&file_template, false)?;
    Ok(Some(ArchiveConfig {
        store,
        dir_template,
        file_template,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgfetch_common::settings::in_memory as files;

    fn resolve(
        list: &[&str],
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("imgfetch-gateway").chain(list.iter().copied()))
                .map_err(|e| e.to_string())?;
        Config::resolve(args, read, |_| None).map_err(|e| e.to_string())
    }

    fn parse(list: &[&str]) -> Result<Config, String> {
        resolve(list, files(&[]))
    }

    #[test]
    fn defaults_apply() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.nats_url, defaults::NATS_URL);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.grace, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Text);
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
        let c = parse(&[
            "--result-ttl",
            "1500ms",
            "--results-replicas",
            "3",
            "--grace",
            "1m 5s",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(
            (c.results.ttl, c.results.replicas),
            (Duration::from_millis(1500), 3)
        );
        assert_eq!(c.grace, Duration::from_secs(65));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn the_file_sets_what_flags_leave_unset() {
        const FILE: &str = r#"
            nats_url = "nats://file:4222"
            nats_user = "gateway"
            nats_password_file = "/run/secrets/nats/password"
            listen = "0.0.0.0:9000"
            instance = "gw-file"
            request_timeout = "45s"
            grace = "1m"
            log_format = "json"
            archive = "off"
            ws_idle_timeout = "2m"
            result_ttl = "1h"
            results_bucket = "R"
            max_connections = 10
        "#;
        let c = resolve(
            &[
                "--config",
                "/g.toml",
                "--instance",
                "gw-flag",
                "--grace",
                "5s",
            ],
            files(&[("/g.toml", FILE)]),
        )
        .unwrap();
        assert_eq!(c.nats_url, "nats://file:4222");
        assert_eq!(c.nats_auth.user.as_deref(), Some("gateway"));
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.instance, "gw-flag", "a flag wins over the file");
        assert_eq!(c.grace, Duration::from_secs(5), "a flag wins over the file");
        assert_eq!(c.request_timeout, Duration::from_secs(45));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.archive.is_none());
        assert_eq!(c.clients.ws_idle_timeout, Duration::from_secs(120));
        assert_eq!(c.clients.max_connections, 10);
        assert_eq!(c.results.ttl, Duration::from_secs(3600));
        assert_eq!(c.results.bucket, "R");
        let summary = c.summary();
        assert!(
            summary.contains("listen 0.0.0.0:9000") && summary.contains("grace 5s"),
            "{summary}"
        );

        for (text, expect) in [
            (
                "grace_ms = 3000\n",
                "/g.toml: line 1: unknown field `grace_ms`",
            ),
            ("request_timeout = \"30\"\n", "no unit"),
            ("log_format = \"xml\"\n", "unknown variant `xml`"),
        ] {
            let err = resolve(
                &["--config", "/g.toml"],
                move |_: &Path| Ok(text.to_owned()),
            )
            .unwrap_err();
            assert!(
                err.contains(expect),
                "{text:?}: expected {expect:?} in {err:?}"
            );
        }
        let err = parse(&["--config", "/missing.toml"]).unwrap_err();
        assert!(err.contains("cannot read /missing.toml"), "{err}");
    }

    #[test]
    fn the_archive_secret_comes_from_its_file() {
        let args =
            Args::try_parse_from(["imgfetch-gateway", "--archive", "s3://bucket/arch"]).unwrap();
        let env = |name: &str| (name == "AWS_SECRET_ACCESS_KEY_FILE").then(|| "/sk".to_owned());
        let c = Config::resolve(args, files(&[("/sk", "SECRET\n")]), env).unwrap();
        match c.archive.unwrap().store {
            StoreSpec::S3 { options, .. } => {
                assert_eq!(options.secret_access_key.as_deref(), Some("SECRET"));
                assert!(options.from_env);
            }
            other => panic!("expected S3, got {other:?}"),
        }
        let args =
            Args::try_parse_from(["imgfetch-gateway", "--archive", "s3://bucket/arch"]).unwrap();
        let err = Config::resolve(args, files(&[]), env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AWS_SECRET_ACCESS_KEY_FILE: cannot read /sk"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        for (list, expect) in [
            (&["--instance", "a.b"][..], "instance"),
            (&["--stream", "A.B"][..], "stream"),
            (&["--log-format", "xml"][..], "invalid value 'xml'"),
            (&["--listen", "nowhere"][..], "invalid"),
            (
                &["--request-timeout", "0s"][..],
                "request_timeout must be at least 1",
            ),
            (
                &["--request-timeout", "500us"][..],
                "request_timeout must be at least 1",
            ),
            (&["--request-timeout", "30"][..], "no unit"),
            (&["--request-timeout-ms", "30"][..], "unexpected argument"),
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
            (
                &["--max-connections", "0"][..],
                "max_connections must be at least 1",
            ),
            (
                &["--tokens-file", "/nonexistent/tokens.toml"][..],
                "tokens file",
            ),
            (&["--result-ttl", "0s"][..], "result_ttl"),
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
