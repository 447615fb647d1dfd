//! Resolver configuration: flags and `IMGFETCH_*` variables over an optional TOML file over
//! built-in defaults. Every default is a named constant in [`defaults`].
//!
//! Parsing never reads the process environment by itself: [`Args`] comes from clap (which does),
//! and [`Config::resolve`] only combines what it is given, so tests build configs directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use imgfetch_common::connect::{NatsAuth, NatsSettings};
use imgfetch_common::provision::{ConsumerSettings, DeadLetterSettings, StreamSettings};
use imgfetch_common::settings::{de_duration, duration, Renamed, S3Settings};
pub use imgfetch_common::store::{S3Options, StoreSpec};
use imgfetch_common::telemetry::LogFormat;
use serde::Deserialize;

/// The built-in defaults, in one place.
pub mod defaults {
    use std::time::Duration;

    /// NATS server to connect to.
    pub const NATS_URL: &str = "nats://127.0.0.1:4222";
    /// Requests one resolver works on at once, across all its networks.
    pub const CONCURRENCY: usize = 16;
    /// Streamed answers in progress at once; they hold no request slot while they wait on
    /// their receivers.
    pub const MAX_STREAMS: usize = 64;
    /// Attempts at a store that keeps failing before answering `store_unavailable`.
    pub const STORE_ATTEMPTS: u32 = 4;
    /// First delay before retrying a failing store; doubles per attempt.
    pub const RETRY_DELAY: Duration = Duration::from_millis(500);
    /// Longest delay between retries.
    pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(8);
    /// Longest a single store read may take.
    pub const STORE_TIMEOUT: Duration = Duration::from_secs(20);
    /// Bytes kept free under the server's `max_payload` for headers.
    pub const PAYLOAD_HEADROOM: u64 = 64 * 1024;
    /// Largest image served at all: 1 GiB.
    pub const MAX_IMAGE_BYTES: u64 = 1 << 30;
    /// Bytes in one chunk of a streamed image (smaller when the server's `max_payload` less
    /// the headroom is smaller); chosen by measurement, see `docs/PROTOCOL.md`.
    pub const CHUNK_BYTES: u64 = 256 * 1024;
    /// How long a stream waits for the receiver's credit before it gives up.
    pub const STREAM_IDLE: Duration = Duration::from_secs(30);
    /// How long in-flight requests may take to finish after SIGTERM.
    pub const GRACE: Duration = Duration::from_secs(20);
    /// How long a waiting pull lasts at the server before it ends and is renewed; a stopping
    /// resolver waits this long at most for its pulls to end.
    pub const PULL_EXPIRES: Duration = Duration::from_secs(5);
    /// How long the dead-letter stream keeps a dead letter: 7 days.
    pub const DLQ_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Replicas of the stream when the resolver creates it.
    pub const STREAM_REPLICAS: usize = 1;
    /// How long a resolver may hold a request before JetStream redelivers it.
    pub const ACK_WAIT: Duration = Duration::from_secs(30);
    /// Deliveries after which JetStream stops redelivering a request.
    pub const MAX_DELIVER: i64 = 10;
}

/// Variables renamed when durations took their human form; still setting one is an error.
pub const RENAMED: &[Renamed] = &[
    Renamed {
        old: "IMGFETCH_STREAM_IDLE_MS",
        new: "IMGFETCH_STREAM_IDLE",
        example: "30s",
    },
    Renamed {
        old: "IMGFETCH_RETRY_DELAY_MS",
        new: "IMGFETCH_RETRY_DELAY",
        example: "500ms",
    },
    Renamed {
        old: "IMGFETCH_ACK_WAIT_MS",
        new: "IMGFETCH_ACK_WAIT",
        example: "30s",
    },
    Renamed {
        old: "IMGFETCH_DLQ_MAX_AGE_HOURS",
        new: "IMGFETCH_DLQ_MAX_AGE",
        example: "7d",
    },
];

/// Command line of `imgfetch-resolver`.
#[derive(Debug, Default, Parser)]
#[command(
    name = "imgfetch-resolver",
    version,
    about = "Serves imgfetch requests of the networks it can reach"
)]
pub struct Args {
    /// TOML configuration file (unknown keys are refused); flags and environment variables
    /// override it.
    #[arg(long, env = "IMGFETCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS URL, credentials and TLS, the same settings as the gateway's.
    #[command(flatten)]
    pub nats: NatsSettings,
    /// A network and its store, as NAME=URL (file:///dir or s3://bucket[/prefix]); repeatable.
    /// S3 settings come from the standard AWS_* variables.
    #[arg(long = "network", env = "IMGFETCH_NETWORKS", value_delimiter = ',')]
    pub networks: Vec<String>,
    /// Name of this instance, for logs and pings [default: the host name].
    #[arg(long, env = "IMGFETCH_INSTANCE")]
    pub instance: Option<String>,
    /// Requests handled at once [default: 16].
    #[arg(long, env = "IMGFETCH_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Streamed answers (images over the inline limit) in progress at once; a stream gives its
    /// request slot back while it waits on its receiver [default: 64].
    #[arg(long, env = "IMGFETCH_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// JetStream stream name [default: IMGFETCH].
    #[arg(long, env = "IMGFETCH_STREAM")]
    pub stream: Option<String>,
    /// JetStream stream of dead letters [default: IMGFETCH_DLQ].
    #[arg(long, env = "IMGFETCH_DLQ_STREAM")]
    pub dlq_stream: Option<String>,
    /// How long the dead-letter stream keeps a dead letter, at least 1h [default: 7d].
    #[arg(long, env = "IMGFETCH_DLQ_MAX_AGE", value_parser = duration)]
    pub dlq_max_age: Option<Duration>,
    /// Only verify the stream and consumers; never create or change them.
    #[arg(long, env = "IMGFETCH_NO_PROVISION")]
    pub no_provision: bool,
    /// Largest image served at all [default: 1 GiB].
    #[arg(long, env = "IMGFETCH_MAX_IMAGE_BYTES")]
    pub max_image_bytes: Option<u64>,
    /// Largest image sent inline, in one reply; larger ones are streamed in chunks
    /// [default: the server's max_payload less 64 KiB].
    #[arg(long, env = "IMGFETCH_MAX_INLINE_BYTES")]
    pub max_inline_bytes: Option<u64>,
    /// Bytes per chunk of a streamed image [default: 256 KiB, less if max_payload is small].
    #[arg(long, env = "IMGFETCH_CHUNK_BYTES")]
    pub chunk_bytes: Option<u64>,
    /// How long a stream waits for the receiver's credit before giving up [default: 30s].
    #[arg(long, env = "IMGFETCH_STREAM_IDLE", value_parser = duration)]
    pub stream_idle: Option<Duration>,
    /// Attempts at a failing store before answering store_unavailable [default: 4].
    #[arg(long, env = "IMGFETCH_STORE_ATTEMPTS")]
    pub store_attempts: Option<u32>,
    /// First delay before retrying a failing store, doubled per attempt [default: 500ms].
    #[arg(long, env = "IMGFETCH_RETRY_DELAY", value_parser = duration)]
    pub retry_delay: Option<Duration>,
    /// How long in-flight requests may take to finish after SIGTERM before the rest are given
    /// back to JetStream [default: 20s].
    #[arg(long, env = "IMGFETCH_GRACE", value_parser = duration)]
    pub grace: Option<Duration>,
    /// Log format [default: text].
    #[arg(long, env = "IMGFETCH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address of the /livez, /readyz and /metrics listener, e.g. 0.0.0.0:9090 [default: none].
    #[arg(long, env = "IMGFETCH_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Replicas of the stream when creating it, 1 to 5 [default: 1].
    #[arg(long, env = "IMGFETCH_STREAM_REPLICAS")]
    pub stream_replicas: Option<usize>,
    /// How long a request may be held before JetStream redelivers it, at least 1s
    /// [default: 30s].
    #[arg(long, env = "IMGFETCH_ACK_WAIT", value_parser = duration)]
    pub ack_wait: Option<Duration>,
    /// Deliveries after which JetStream stops redelivering a request [default: 10].
    #[arg(long, env = "IMGFETCH_MAX_DELIVER")]
    pub max_deliver: Option<i64>,
    /// Only parse and validate the configuration (flags, environment, TOML file and the files
    /// it names), print a one-line summary and exit: 0 when it is usable, 64 when not. Connects
    /// to nothing and opens no store.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// NATS URL, credentials and TLS.
    #[serde(flatten)]
    pub nats: NatsSettings,
    /// Instance name.
    pub instance: Option<String>,
    /// Requests handled at once.
    pub concurrency: Option<usize>,
    /// Streamed answers in progress at once.
    pub max_streams: Option<usize>,
    /// JetStream stream name.
    pub stream: Option<String>,
    /// JetStream stream of dead letters.
    pub dlq_stream: Option<String>,
    /// How long the dead-letter stream keeps a dead letter.
    #[serde(default, deserialize_with = "de_duration")]
    pub dlq_max_age: Option<Duration>,
    /// Create or extend the stream and consumers (default true).
    pub provision: Option<bool>,
    /// Largest image served at all.
    pub max_image_bytes: Option<u64>,
    /// Largest image sent inline.
    pub max_inline_bytes: Option<u64>,
    /// Bytes per chunk of a streamed image.
    pub chunk_bytes: Option<u64>,
    /// How long a stream waits for credit.
    #[serde(default, deserialize_with = "de_duration")]
    pub stream_idle: Option<Duration>,
    /// Attempts at a failing store.
    pub store_attempts: Option<u32>,
    /// First retry delay.
    #[serde(default, deserialize_with = "de_duration")]
    pub retry_delay: Option<Duration>,
    /// Drain time after SIGTERM.
    #[serde(default, deserialize_with = "de_duration")]
    pub grace: Option<Duration>,
    /// Log format: text or json.
    pub log_format: Option<LogFormat>,
    /// Address of the health and metrics listener.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Replicas of the stream when creating it.
    pub stream_replicas: Option<usize>,
    /// How long before JetStream redelivers a held request.
    #[serde(default, deserialize_with = "de_duration")]
    pub ack_wait: Option<Duration>,
    /// Deliveries after which JetStream stops redelivering.
    pub max_deliver: Option<i64>,
    /// The networks, each with its own store.
    #[serde(default)]
    pub networks: BTreeMap<String, FileNetwork>,
}

/// One network in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNetwork {
    /// `file:///dir` or `s3://bucket[/prefix]`.
    pub url: String,
    /// The store's S3 settings; none for a `file://` store.
    #[serde(flatten)]
    pub s3: S3Settings,
}

/// One network this resolver serves.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSpec {
    /// The network tag.
    pub name: String,
    /// Its store.
    pub store: StoreSpec,
}

/// Everything `run` needs, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    /// NATS server URL, or comma-separated URLs of a cluster's nodes.
    pub nats_url: String,
    /// NATS credentials and TLS.
    pub nats_auth: NatsAuth,
    /// Instance name.
    pub instance: String,
    /// The networks served.
    pub networks: Vec<NetworkSpec>,
    /// Requests handled at once.
    pub concurrency: usize,
    /// Streamed answers in progress at once.
    pub max_streams: usize,
    /// Create or extend the stream and consumers.
    pub provision: bool,
    /// Stream limits.
    pub stream: StreamSettings,
    /// Consumer redelivery settings.
    pub consumer: ConsumerSettings,
    /// The dead-letter stream.
    pub dead_letters: DeadLetterSettings,
    /// Largest image served at all.
    pub max_image_bytes: u64,
    /// Largest image sent inline; `None` derives it from the server's `max_payload`.
    pub max_inline_bytes: Option<u64>,
    /// Bytes per chunk of a streamed image, at most; never more than the server carries.
    pub chunk_bytes: u64,
    /// How long a stream waits for credit (or anything) from its receiver.
    pub stream_idle: Duration,
    /// Attempts at a failing store.
    pub store_attempts: u32,
    /// First retry delay.
    pub retry_delay: Duration,
    /// Longest retry delay.
    pub retry_delay_max: Duration,
    /// Longest single store read.
    pub store_timeout: Duration,
    /// Drain time after SIGTERM.
    pub grace: Duration,
    /// How long a waiting pull lasts at the server (not a flag: the default suits every
    /// deployment; tests shorten it to exercise renewal).
    pub pull_expires: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Where `/livez`, `/readyz` and `/metrics` are served; `None`: nowhere.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Where `/metrics` renders from (main installs the recorder); `None` serves no metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Config {
    /// A config with defaults for everything but the NATS URL and the networks.
    pub fn new(nats_url: impl Into<String>, networks: Vec<NetworkSpec>) -> Config {
        Config {
            nats_url: nats_url.into(),
            nats_auth: NatsAuth::default(),
            instance: default_instance(),
            networks,
            concurrency: defaults::CONCURRENCY,
            max_streams: defaults::MAX_STREAMS,
            provision: true,
            stream: StreamSettings::default(),
            consumer: ConsumerSettings::default(),
            dead_letters: DeadLetterSettings::default(),
            max_image_bytes: defaults::MAX_IMAGE_BYTES,
            max_inline_bytes: None,
            chunk_bytes: defaults::CHUNK_BYTES,
            stream_idle: defaults::STREAM_IDLE,
            store_attempts: defaults::STORE_ATTEMPTS,
            retry_delay: defaults::RETRY_DELAY,
            retry_delay_max: defaults::RETRY_DELAY_MAX,
            store_timeout: defaults::STORE_TIMEOUT,
            grace: defaults::GRACE,
            pull_expires: defaults::PULL_EXPIRES,
            log_format: LogFormat::Text,
            http_listen: None,
            metrics: None,
        }
    }

    /// Combines flags, the file they name (read through `read_file`) and the defaults.
    pub fn resolve(
        args: Args,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                imgfetch_common::settings::read_toml::<FileConfig>(path, &read_file, RENAMED)?
            }
            None => FileConfig::default(),
        };

        let mut networks = Vec::new();
        for (name, net) in file.networks {
            networks.push(file_network(name, net, &read_file)?);
        }
        // The AWS_* settings of every S3 network given by flag, read once.
        let urls = args
            .networks
            .iter()
            .filter_map(|arg| arg.split_once('='))
            .map(|(_, url)| url);
        let from_env = imgfetch_common::settings::s3_from_env(urls, &env, &read_file)
            .map_err(|e| ConfigError::Invalid(format!("--network: {e}")))?;
        for arg in &args.networks {
            networks.push(flag_network(arg, from_env.clone())?);
        }
        let mut seen = std::collections::BTreeSet::new();
        for net in &networks {
            imgfetch_common::validate::network(&net.name).map_err(|e| {
                ConfigError::Invalid(format!("network {:?}: {}", net.name, e.reason))
            })?;
            if !seen.insert(net.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "network {:?} is configured twice",
                    net.name
                )));
            }
        }
        if networks.is_empty() {
            return Err(ConfigError::Invalid(
                "no networks: give at least one --network NAME=URL or a [networks.NAME] table"
                    .into(),
            ));
        }

        let nats = args.nats.or(file.nats);
        let mut config = Config::new(
            nats.nats_url
                .clone()
                .unwrap_or_else(|| defaults::NATS_URL.to_owned()),
            networks,
        );
        config.nats_auth = nats.auth();
        config
            .nats_auth
            .check()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(instance) = args.instance.or(file.instance) {
            imgfetch_common::validate::id(&instance)
                .map_err(|e| ConfigError::Invalid(format!("instance: {}", e.reason)))?;
            config.instance = instance;
        }
        config.concurrency = args
            .concurrency
            .or(file.concurrency)
            .unwrap_or(defaults::CONCURRENCY);
        if config.concurrency == 0 {
            return Err(ConfigError::Invalid(
                "concurrency must be at least 1".into(),
            ));
        }
        config.max_streams = args
            .max_streams
            .or(file.max_streams)
            .unwrap_or(defaults::MAX_STREAMS);
        if config.max_streams == 0 {
            return Err(ConfigError::Invalid(
                "max_streams must be at least 1".into(),
            ));
        }
        if let Some(stream) = args.stream.or(file.stream) {
            config.stream.name = stream;
        }
        if let Some(stream) = args.dlq_stream.or(file.dlq_stream) {
            config.dead_letters.name = stream;
        }
        if config.dead_letters.name == config.stream.name {
            return Err(ConfigError::Invalid(
                "the dead-letter stream must not be the request stream".into(),
            ));
        }
        config.dead_letters.max_age = args
            .dlq_max_age
            .or(file.dlq_max_age)
            .unwrap_or(defaults::DLQ_MAX_AGE);
        if config.dead_letters.max_age < Duration::from_secs(3600) {
            return Err(ConfigError::Invalid(
                "dlq_max_age must be at least 1h".into(),
            ));
        }
        config.provision = !args.no_provision && file.provision.unwrap_or(true);
        config.max_image_bytes = args
            .max_image_bytes
            .or(file.max_image_bytes)
            .unwrap_or(defaults::MAX_IMAGE_BYTES);
        config.max_inline_bytes = args.max_inline_bytes.or(file.max_inline_bytes);
        config.chunk_bytes = args
            .chunk_bytes
            .or(file.chunk_bytes)
            .unwrap_or(defaults::CHUNK_BYTES);
        if config.chunk_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "chunk bytes must be at least 1024".into(),
            ));
        }
        config.stream_idle = args
            .stream_idle
            .or(file.stream_idle)
            .unwrap_or(defaults::STREAM_IDLE);
        if config.stream_idle < Duration::from_millis(1) {
            return Err(ConfigError::Invalid(
                "stream_idle must be at least 1ms".into(),
            ));
        }
        config.grace = args.grace.or(file.grace).unwrap_or(defaults::GRACE);
        config.consumer.max_deliver = args
            .max_deliver
            .or(file.max_deliver)
            .unwrap_or(defaults::MAX_DELIVER);
        if config.consumer.max_deliver < 1 {
            return Err(ConfigError::Invalid(
                "max deliver must be at least 1".into(),
            ));
        }
        config.consumer.ack_wait = args
            .ack_wait
            .or(file.ack_wait)
            .unwrap_or(defaults::ACK_WAIT);
        if config.consumer.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::Invalid("ack_wait must be at least 1s".into()));
        }
        config.stream.replicas = args
            .stream_replicas
            .or(file.stream_replicas)
            .unwrap_or(defaults::STREAM_REPLICAS);
        if !(1..=5).contains(&config.stream.replicas) {
            return Err(ConfigError::Invalid(format!(
                "stream replicas must be 1 to 5, not {}",
                config.stream.replicas
            )));
        }
        config.http_listen = args.http_listen.or(file.http_listen);
        imgfetch_common::connect::server_addrs(&config.nats_url)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let max_deliver = config.consumer.max_deliver;
        // Unless given, the attempts fit under a short max_deliver by themselves.
        config.store_attempts = args.store_attempts.or(file.store_attempts).unwrap_or(
            defaults::STORE_ATTEMPTS.min(u32::try_from(max_deliver).unwrap_or(u32::MAX)),
        );
        if config.store_attempts == 0 || i64::from(config.store_attempts) > max_deliver {
            return Err(ConfigError::Invalid(format!(
                "store attempts must be 1 to {max_deliver} (the consumer's max_deliver)"
            )));
        }
        config.retry_delay = args
            .retry_delay
            .or(file.retry_delay)
            .unwrap_or(defaults::RETRY_DELAY);
        config.log_format = args.log_format.or(file.log_format).unwrap_or_default();
        Ok(config)
    }
}

impl Config {
    /// One line for `--check-config`: the networks with their stores, where NATS is and as
    /// whom, and whether the stream is provisioned. Names no secret.
    pub fn summary(&self) -> String {
        let networks: Vec<String> = self
            .networks
            .iter()
            .map(|n| format!("{}={}", n.name, n.store.summary()))
            .collect();
        let user = self.nats_auth.summary();
        let http = match self.http_listen {
            Some(addr) => format!("health on {addr}"),
            None => "no health listener".to_owned(),
        };
        format!(
            "{} network{}: {}; NATS {}{user}; stream {} ({}); {http}",
            networks.len(),
            if networks.len() == 1 { "" } else { "s" },
            networks.join(", "),
            self.nats_url,
            self.stream.name,
            if self.provision {
                "provisioned"
            } else {
                "verified only"
            },
        )
    }
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    if host.is_empty() {
        format!("resolver-{suffix}")
    } else {
        format!("{host}-{suffix}")
    }
}

/// A `--network NAME=URL`, its S3 settings `from_env` (the `AWS_*` variables).
fn flag_network(arg: &str, from_env: S3Options) -> Result<NetworkSpec, ConfigError> {
    let (name, url) = arg
        .split_once('=')
        .ok_or_else(|| ConfigError::Invalid(format!("--network {arg:?}: expected NAME=URL")))?;
    let store = parse_store_url(name, url, from_env)?;
    Ok(NetworkSpec {
        name: name.to_owned(),
        store,
    })
}

fn file_network(
    name: String,
    net: FileNetwork,
    read_file: &impl Fn(&Path) -> std::io::Result<String>,
) -> Result<NetworkSpec, ConfigError> {
    let options = net
        .s3
        .options(read_file)
        .map_err(|e| ConfigError::Invalid(format!("network {name:?}: {e}")))?;
    let store = parse_store_url(&name, &net.url, options.clone())?;
    if matches!(store, StoreSpec::File { .. }) && options != S3Options::default() {
        return Err(ConfigError::Invalid(format!(
            "network {name:?}: S3 options given for a file:// store"
        )));
    }
    Ok(NetworkSpec { name, store })
}

fn parse_store_url(name: &str, url: &str, options: S3Options) -> Result<StoreSpec, ConfigError> {
    imgfetch_common::store::parse_url(url, options)
        .map_err(|e| ConfigError::Invalid(format!("network {name:?}: {e}")))
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file cannot be read, is malformed, or has an unknown key.
    #[error(transparent)]
    File(#[from] imgfetch_common::settings::FileError),
    /// A value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgfetch_common::settings::in_memory as files;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("imgfetch-resolver").chain(list.iter().copied()))
            .unwrap()
    }

    #[test]
    fn flags_give_networks() {
        let c = Config::resolve(
            args(&[
                "--network",
                "a=file:///srv/a",
                "--network",
                "b=s3://bucket/pre/fix",
            ]),
            files(&[]),
            no_env,
        )
        .unwrap();
        assert_eq!(c.networks.len(), 2);
        assert_eq!(
            c.networks[0].store,
            StoreSpec::File {
                root: "/srv/a".into()
            }
        );
        match &c.networks[1].store {
            StoreSpec::S3 {
                bucket,
                prefix,
                options,
            } => {
                assert_eq!(bucket, "bucket");
                assert_eq!(prefix.as_deref(), Some("pre/fix"));
                assert!(options.from_env);
            }
            other => panic!("expected S3, got {other:?}"),
        }
        assert_eq!(c.nats_url, defaults::NATS_URL);
        assert!(c.provision);
    }

    #[test]
    fn file_networks_carry_their_own_credentials_and_flags_override_the_file() {
        const FILE: &str = r#"
            nats_url = "nats://file:4222"
            stream_replicas = 3
            ack_wait = "2s"
            grace = "45s"
            dlq_max_age = "2d"
            log_format = "json"
            max_deliver = 3
            http_listen = "0.0.0.0:9090"
            nats_user = "resolver"
            nats_password_file = "/run/secrets/nats/password"
            nats_tls_ca = "/run/secrets/nats/ca.pem"
            concurrency = 3
            [networks.cams]
            url = "s3://cams"
            endpoint = "http://127.0.0.1:9000"
            access_key_id = "AK"
            secret_access_key_file = "/secret"
            session_token_file = "/token"
            allow_http = true
            [networks.dmz]
            url = "file:///srv/dmz"
        "#;
        let c = Config::resolve(
            args(&["--config", "/c.toml", "--concurrency", "5"]),
            files(&[("/c.toml", FILE), ("/secret", "SK\n"), ("/token", "ST")]),
            no_env,
        )
        .unwrap();
        assert_eq!(c.nats_url, "nats://file:4222");
        assert_eq!(c.concurrency, 5);
        assert_eq!(c.stream.replicas, 3);
        assert_eq!(c.consumer.ack_wait, Duration::from_secs(2));
        assert_eq!(c.grace, Duration::from_secs(45));
        assert_eq!(c.dead_letters.max_age, Duration::from_secs(2 * 86_400));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.consumer.max_deliver, 3);
        assert_eq!(c.store_attempts, 3);
        assert_eq!(c.http_listen, Some(([0, 0, 0, 0], 9090).into()));
        assert_eq!(
            c.nats_auth,
            NatsAuth {
                creds_file: None,
                user: Some("resolver".into()),
                password_file: Some("/run/secrets/nats/password".into()),
                tls_ca: Some("/run/secrets/nats/ca.pem".into()),
            }
        );
        let cams = c.networks.iter().find(|n| n.name == "cams").unwrap();
        match &cams.store {
            StoreSpec::S3 { options, .. } => {
                assert_eq!(options.secret_access_key.as_deref(), Some("SK"));
                assert_eq!(options.session_token.as_deref(), Some("ST"));
                assert_eq!(options.allow_http, Some(true));
                assert!(!options.from_env);
            }
            other => panic!("expected S3, got {other:?}"),
        }
    }

    #[test]
    fn bad_configs_are_one_clear_error() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "no networks"),
            (&["--network", "a"], "expected NAME=URL"),
            (&["--network", "a=http://x"], "supported: file, s3"),
            (&["--network", "a.b=file:///x"], "not allowed"),
            (
                &["--network", "a=file:///x", "--network", "a=file:///y"],
                "twice",
            ),
            (&["--network", "a=s3://"], "no bucket"),
            (
                &["--network", "a=file:///x", "--log-format", "xml"],
                "invalid value 'xml'",
            ),
            (&["--config", "/missing.toml"], "cannot read"),
            (
                &["--network", "a=file:///x", "--dlq-stream", "IMGFETCH"],
                "must not be the request stream",
            ),
            (
                &["--network", "a=file:///x", "--dlq-max-age", "30m"],
                "dlq_max_age must be at least 1h",
            ),
            (
                &["--network", "a=file:///x", "--nats-user", "resolver"],
                "needs a password file",
            ),
            (
                &["--network", "a=file:///x", "--store-attempts", "11"],
                "store attempts must be 1 to 10",
            ),
            (
                &[
                    "--network",
                    "a=file:///x",
                    "--max-deliver",
                    "3",
                    "--store-attempts",
                    "4",
                ],
                "store attempts must be 1 to 3",
            ),
            (
                &["--network", "a=file:///x", "--stream-replicas", "6"],
                "stream replicas must be 1 to 5",
            ),
            (
                &["--network", "a=file:///x", "--ack-wait", "10ms"],
                "ack_wait must be at least 1s",
            ),
            (&["--network", "a=file:///x", "--ack-wait", "10"], "no unit"),
            (
                &["--network", "a=file:///x", "--stream-idle", "0s"],
                "stream_idle must be at least 1ms",
            ),
            (
                &[
                    "--network",
                    "a=file:///x",
                    "--nats-url",
                    "nats://a:4222,nats://",
                ],
                "bad NATS URL",
            ),
        ];
        for (list, expect) in cases {
            let parsed = Args::try_parse_from(
                std::iter::once("imgfetch-resolver").chain(list.iter().copied()),
            );
            let err = match parsed {
                Ok(parsed) => Config::resolve(parsed, files(&[]), no_env)
                    .unwrap_err()
                    .to_string(),
                Err(clap) => clap.to_string(),
            };
            assert!(
                err.contains(expect),
                "{list:?}: expected {expect:?} in {err:?}"
            );
        }
    }

    #[test]
    fn the_summary_lists_every_network_and_its_store() {
        const FILE: &str = r#"
            nats_url = "nats://nats:4222"
            provision = false
            http_listen = "0.0.0.0:9090"
            [networks.cams]
            url = "s3://camera-images"
            endpoint = "http://minio:9000"
            region = "us-east-1"
            access_key_id = "AK"
            secret_access_key = "SK-NOT-SHOWN"
            [networks.dmz]
            url = "file:///srv/images"
        "#;
        let c = Config::resolve(
            args(&["--config", "/c.toml"]),
            files(&[("/c.toml", FILE)]),
            no_env,
        )
        .unwrap();
        let line = c.summary();
        assert_eq!(
            line,
            "2 networks: cams=s3://camera-images (endpoint http://minio:9000, region \
             us-east-1), dmz=file:///srv/images; NATS nats://nats:4222; stream IMGFETCH \
             (verified only); health on 0.0.0.0:9090"
        );
        assert!(!line.contains("SK-NOT-SHOWN"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        const FILE: &str = "[networks.a]\nurl = \"file:///x\"\nendpiont = \"typo\"\n";
        let err = Config::resolve(
            args(&["--config", "/c.toml"]),
            files(&[("/c.toml", FILE)]),
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `endpiont`"), "{err}");
        const TOP: &str = "colour = 1\n";
        let err = Config::resolve(
            args(&["--config", "/c.toml"]),
            files(&[("/c.toml", TOP)]),
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        const OLD: &str = "ack_wait_ms = 2000\n";
        let err = Config::resolve(
            args(&["--config", "/c.toml"]),
            files(&[("/c.toml", OLD)]),
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/c.toml: line 1: unknown field `ack_wait_ms`")
                && err.ends_with("`ack_wait_ms` is now `ack_wait`, a duration in human form (e.g. ack_wait = \"30s\")"),
            "{err}"
        );
    }

    #[test]
    fn flag_networks_read_the_s3_secret_from_its_file() {
        let env = |name: &str| (name == "AWS_SECRET_ACCESS_KEY_FILE").then(|| "/sk".to_owned());
        let c = Config::resolve(
            args(&["--network", "cams=s3://cams"]),
            files(&[("/sk", "SK\n")]),
            env,
        )
        .unwrap();
        match &c.networks[0].store {
            StoreSpec::S3 { options, .. } => {
                assert_eq!(options.secret_access_key.as_deref(), Some("SK"));
                assert!(options.from_env, "the rest still comes from AWS_*");
            }
            other => panic!("expected S3, got {other:?}"),
        }
        let err = Config::resolve(args(&["--network", "cams=s3://cams"]), files(&[]), env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AWS_SECRET_ACCESS_KEY_FILE: cannot read /sk"),
            "{err}"
        );
    }
}
