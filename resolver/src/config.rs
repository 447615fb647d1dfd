//! Resolver configuration: flags and `IMGFETCH_*` variables over an optional TOML file over
//! built-in defaults. Every default is a named constant in [`defaults`].
//!
//! Parsing never reads the process environment by itself: [`Args`] comes from clap (which does),
//! and [`Config::resolve`] only combines what it is given, so tests build configs directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use imgfetch_common::connect::NatsAuth;
use imgfetch_common::provision::{ConsumerSettings, DeadLetterSettings, StreamSettings};
pub use imgfetch_common::store::{S3Options, StoreSpec};
use imgfetch_common::telemetry::LogFormat;
use serde::Deserialize;

/// The built-in defaults, in one place.
pub mod defaults {
    /// NATS server to connect to.
    pub const NATS_URL: &str = "nats://127.0.0.1:4222";
    /// Requests one resolver works on at once, across all its networks.
    pub const CONCURRENCY: usize = 16;
    /// Attempts at a store that keeps failing before answering `store_unavailable`.
    pub const STORE_ATTEMPTS: u32 = 4;
    /// First delay before retrying a failing store; doubles per attempt.
    pub const RETRY_DELAY_MS: u64 = 500;
    /// Longest delay between retries.
    pub const RETRY_DELAY_MAX_MS: u64 = 8_000;
    /// Longest a single store read may take.
    pub const STORE_TIMEOUT_MS: u64 = 20_000;
    /// Bytes kept free under the server's `max_payload` for headers.
    pub const PAYLOAD_HEADROOM: u64 = 64 * 1024;
    /// Largest image served at all: 1 GiB.
    pub const MAX_IMAGE_BYTES: u64 = 1 << 30;
    /// Bytes in one chunk of a streamed image (smaller when the server's `max_payload` less
    /// the headroom is smaller); chosen by measurement, see `docs/PROTOCOL.md`.
    pub const CHUNK_BYTES: u64 = 256 * 1024;
    /// How long a stream waits for the receiver's credit before it gives up.
    pub const STREAM_IDLE_MS: u64 = 30_000;
    /// How long in-flight requests may take to finish after SIGTERM.
    pub const GRACE_MS: u64 = 20_000;
    /// How long a waiting pull lasts at the server before it ends and is renewed; a stopping
    /// resolver waits this long at most for its pulls to end.
    pub const PULL_EXPIRES_MS: u64 = 5_000;
    /// How long the dead-letter stream keeps a dead letter: 7 days.
    pub const DLQ_MAX_AGE_HOURS: u64 = 7 * 24;
    /// Replicas of the stream when the resolver creates it.
    pub const STREAM_REPLICAS: usize = 1;
    /// How long a resolver may hold a request before JetStream redelivers it.
    pub const ACK_WAIT_MS: u64 = 30_000;
    /// Deliveries after which JetStream stops redelivering a request.
    pub const MAX_DELIVER: i64 = 10;
}

/// Command line of `imgfetch-resolver`.
#[derive(Debug, Default, Parser)]
#[command(
    name = "imgfetch-resolver",
    version,
    about = "Serves imgfetch requests of the networks it can reach"
)]
pub struct Args {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "IMGFETCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server URL, or a comma-separated list of the nodes of a cluster
    /// [default: nats://127.0.0.1:4222].
    #[arg(long, env = "IMGFETCH_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials and TLS, the same flags as the gateway's.
    #[command(flatten)]
    pub nats_auth: NatsAuth,
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
    /// JetStream stream name [default: IMGFETCH].
    #[arg(long, env = "IMGFETCH_STREAM")]
    pub stream: Option<String>,
    /// JetStream stream of dead letters [default: IMGFETCH_DLQ].
    #[arg(long, env = "IMGFETCH_DLQ_STREAM")]
    pub dlq_stream: Option<String>,
    /// Hours the dead-letter stream keeps a dead letter [default: 168].
    #[arg(long, env = "IMGFETCH_DLQ_MAX_AGE_HOURS")]
    pub dlq_max_age_hours: Option<u64>,
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
    /// Milliseconds a stream waits for the receiver's credit before giving up [default: 30000].
    #[arg(long, env = "IMGFETCH_STREAM_IDLE_MS")]
    pub stream_idle_ms: Option<u64>,
    /// Attempts at a failing store before answering store_unavailable [default: 4].
    #[arg(long, env = "IMGFETCH_STORE_ATTEMPTS")]
    pub store_attempts: Option<u32>,
    /// First retry delay in milliseconds, doubled per attempt [default: 500].
    #[arg(long, env = "IMGFETCH_RETRY_DELAY_MS")]
    pub retry_delay_ms: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "IMGFETCH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Address of the /livez, /readyz and /metrics listener, e.g. 0.0.0.0:9090 [default: none].
    #[arg(long, env = "IMGFETCH_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Replicas of the stream when creating it, 1 to 5 [default: 1].
    #[arg(long, env = "IMGFETCH_STREAM_REPLICAS")]
    pub stream_replicas: Option<usize>,
    /// Milliseconds a request may be held before JetStream redelivers it [default: 30000].
    #[arg(long, env = "IMGFETCH_ACK_WAIT_MS")]
    pub ack_wait_ms: Option<u64>,
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
    /// NATS server URL.
    pub nats_url: Option<String>,
    /// NATS .creds file.
    pub nats_creds: Option<PathBuf>,
    /// NATS user name.
    pub nats_user: Option<String>,
    /// File holding the NATS user's password.
    pub nats_password_file: Option<PathBuf>,
    /// PEM file of the CA to trust for NATS; makes the connection TLS.
    pub nats_tls_ca: Option<PathBuf>,
    /// Instance name.
    pub instance: Option<String>,
    /// Requests handled at once.
    pub concurrency: Option<usize>,
    /// JetStream stream name.
    pub stream: Option<String>,
    /// JetStream stream of dead letters.
    pub dlq_stream: Option<String>,
    /// Hours the dead-letter stream keeps a dead letter.
    pub dlq_max_age_hours: Option<u64>,
    /// Create or extend the stream and consumers (default true).
    pub provision: Option<bool>,
    /// Largest image served at all.
    pub max_image_bytes: Option<u64>,
    /// Largest image sent inline.
    pub max_inline_bytes: Option<u64>,
    /// Bytes per chunk of a streamed image.
    pub chunk_bytes: Option<u64>,
    /// Milliseconds a stream waits for credit.
    pub stream_idle_ms: Option<u64>,
    /// Attempts at a failing store.
    pub store_attempts: Option<u32>,
    /// First retry delay in milliseconds.
    pub retry_delay_ms: Option<u64>,
    /// Log format: text or json.
    pub log_format: Option<String>,
    /// Address of the health and metrics listener.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Replicas of the stream when creating it.
    pub stream_replicas: Option<usize>,
    /// Milliseconds before JetStream redelivers a held request.
    pub ack_wait_ms: Option<u64>,
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
    /// S3 endpoint, for S3-compatible servers.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// S3 access key id.
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    pub secret_access_key: Option<String>,
    /// File holding the S3 secret access key (a mounted Kubernetes Secret).
    pub secret_access_key_file: Option<PathBuf>,
    /// S3 session token.
    pub session_token: Option<String>,
    /// Allow plain-HTTP endpoints.
    pub allow_http: Option<bool>,
    /// Use virtual-hosted-style requests instead of path style.
    pub virtual_hosted_style: Option<bool>,
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
            provision: true,
            stream: StreamSettings::default(),
            consumer: ConsumerSettings::default(),
            dead_letters: DeadLetterSettings::default(),
            max_image_bytes: defaults::MAX_IMAGE_BYTES,
            max_inline_bytes: None,
            chunk_bytes: defaults::CHUNK_BYTES,
            stream_idle: Duration::from_millis(defaults::STREAM_IDLE_MS),
            store_attempts: defaults::STORE_ATTEMPTS,
            retry_delay: Duration::from_millis(defaults::RETRY_DELAY_MS),
            retry_delay_max: Duration::from_millis(defaults::RETRY_DELAY_MAX_MS),
            store_timeout: Duration::from_millis(defaults::STORE_TIMEOUT_MS),
            grace: Duration::from_millis(defaults::GRACE_MS),
            pull_expires: Duration::from_millis(defaults::PULL_EXPIRES_MS),
            log_format: LogFormat::Text,
            http_listen: None,
            metrics: None,
        }
    }

    /// Combines flags, the file they name (read through `read_file`) and the defaults.
    pub fn resolve(
        args: Args,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = read_file(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Toml {
                    path: path.clone(),
                    message: e.message().to_owned(),
                })?
            }
            None => FileConfig::default(),
        };

        let mut networks = Vec::new();
        for (name, net) in file.networks {
            networks.push(file_network(name, net, &read_file)?);
        }
        for arg in &args.networks {
            networks.push(flag_network(arg)?);
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

        let mut config = Config::new(
            args.nats_url
                .or(file.nats_url)
                .unwrap_or_else(|| defaults::NATS_URL.to_owned()),
            networks,
        );
        config.nats_auth = args.nats_auth.or(NatsAuth {
            creds_file: file.nats_creds,
            user: file.nats_user,
            password_file: file.nats_password_file,
            tls_ca: file.nats_tls_ca,
        });
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
        let hours = args
            .dlq_max_age_hours
            .or(file.dlq_max_age_hours)
            .unwrap_or(defaults::DLQ_MAX_AGE_HOURS);
        if hours == 0 {
            return Err(ConfigError::Invalid(
                "dead-letter max age must be at least 1 hour".into(),
            ));
        }
        config.dead_letters.max_age = Duration::from_secs(hours.saturating_mul(3600));
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
        config.stream_idle = Duration::from_millis(
            args.stream_idle_ms
                .or(file.stream_idle_ms)
                .unwrap_or(defaults::STREAM_IDLE_MS),
        );
        config.consumer.max_deliver = args
            .max_deliver
            .or(file.max_deliver)
            .unwrap_or(defaults::MAX_DELIVER);
        if config.consumer.max_deliver < 1 {
            return Err(ConfigError::Invalid(
                "max deliver must be at least 1".into(),
            ));
        }
        let ack_wait_ms = args
            .ack_wait_ms
            .or(file.ack_wait_ms)
            .unwrap_or(defaults::ACK_WAIT_MS);
        if ack_wait_ms < 1000 {
            return Err(ConfigError::Invalid(
                "ack wait must be at least 1000 ms".into(),
            ));
        }
        config.consumer.ack_wait = Duration::from_millis(ack_wait_ms);
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
        config.retry_delay = Duration::from_millis(
            args.retry_delay_ms
                .or(file.retry_delay_ms)
                .unwrap_or(defaults::RETRY_DELAY_MS),
        );
        config.log_format = parse_log_format(args.log_format.or(file.log_format).as_deref())?;
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

/// Parses `text` or `json`.
pub fn parse_log_format(value: Option<&str>) -> Result<LogFormat, ConfigError> {
    match value {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(ConfigError::Invalid(format!(
            "log format {other:?}: expected text or json"
        ))),
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

fn flag_network(arg: &str) -> Result<NetworkSpec, ConfigError> {
    let (name, url) = arg
        .split_once('=')
        .ok_or_else(|| ConfigError::Invalid(format!("--network {arg:?}: expected NAME=URL")))?;
    let store = parse_store_url(
        name,
        url,
        S3Options {
            from_env: true,
            ..S3Options::default()
        },
    )?;
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
    let secret = match (net.secret_access_key, net.secret_access_key_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid(format!(
                "network {name:?}: give secret_access_key or secret_access_key_file, not both"
            )))
        }
        (Some(s), None) => Some(s),
        (None, Some(path)) => Some(
            read_file(&path)
                .map_err(|source| ConfigError::Read { path, source })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let options = S3Options {
        from_env: false,
        endpoint: net.endpoint,
        region: net.region,
        access_key_id: net.access_key_id,
        secret_access_key: secret,
        session_token: net.session_token,
        allow_http: net.allow_http,
        virtual_hosted_style: net.virtual_hosted_style,
    };
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
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file is malformed or has unknown keys.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(
        map: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&Path) -> std::io::Result<String> {
        move |p: &Path| {
            map.iter()
                .find(|(name, _)| Path::new(name) == p)
                .map(|(_, text)| text.to_string())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
        }
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
            ack_wait_ms = 2000
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
            allow_http = true
            [networks.dmz]
            url = "file:///srv/dmz"
        "#;
        let c = Config::resolve(
            args(&["--config", "/c.toml", "--concurrency", "5"]),
            files(&[("/c.toml", FILE), ("/secret", "SK\n")]),
        )
        .unwrap();
        assert_eq!(c.nats_url, "nats://file:4222");
        assert_eq!(c.concurrency, 5);
        assert_eq!(c.stream.replicas, 3);
        assert_eq!(c.consumer.ack_wait, Duration::from_secs(2));
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
                "log format",
            ),
            (&["--config", "/missing.toml"], "cannot read"),
            (
                &["--network", "a=file:///x", "--dlq-stream", "IMGFETCH"],
                "must not be the request stream",
            ),
            (
                &["--network", "a=file:///x", "--dlq-max-age-hours", "0"],
                "at least 1 hour",
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
                &["--network", "a=file:///x", "--ack-wait-ms", "10"],
                "ack wait must be at least 1000 ms",
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
            let err = Config::resolve(args(list), files(&[]))
                .unwrap_err()
                .to_string();
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
        let c =
            Config::resolve(args(&["--config", "/c.toml"]), files(&[("/c.toml", FILE)])).unwrap();
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
        let err = Config::resolve(args(&["--config", "/c.toml"]), files(&[("/c.toml", FILE)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `endpiont`"), "{err}");
        const TOP: &str = "colour = 1\n";
        let err = Config::resolve(args(&["--config", "/c.toml"]), files(&[("/c.toml", TOP)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }
}
