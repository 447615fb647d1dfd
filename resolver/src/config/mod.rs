//! Resolver configuration: flags and `IMGFETCH_*` variables over an optional TOML file over
//! built-in defaults, in the gateway's style (`imgfetch_common::settings`). Every default is a
//! named constant in [`defaults`].
//!
//! - `settings.rs`: [`Args`], the command line, and [`Settings`], each setting once as a flag,
//!   a variable and a TOML key; the NATS ones are shared with the gateway.
//! - `networks.rs`: the networks and their stores ([`NetworkSpec`]), from `--network` flags and
//!   `[networks.NAME]` tables.
//! - `error.rs`: [`ConfigError`], a variant per kind of mistake, each with its source.
//! - here: [`Config`], what `run` needs, and [`Config::resolve`], which combines the settings.
//!
//! Parsing never reads the process environment by itself: [`Args`] comes from clap (which does),
//! and [`Config::resolve`] only combines what it is given, so tests build configs directly.

use std::path::Path;
use std::time::Duration;

use imgfetch_common::connect::NatsAuth;
use imgfetch_common::provision::{ConsumerSettings, DeadLetterSettings, StreamSettings};
pub use imgfetch_common::store::{S3Options, StoreSpec};
use imgfetch_common::telemetry::LogFormat;
use imgfetch_common::validate;

pub mod defaults;
mod error;
mod networks;
mod settings;

pub use error::ConfigError;
pub use networks::{FileNetwork, NetworkSpec};
pub use settings::{Args, Settings, RENAMED};

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
    /// Requests pulled ahead of the free slots, per network.
    pub pull_ahead: usize,
    /// Size the requests pulled ahead to the measured link, starting from `pull_ahead` (behind a
    /// leaf node when `--pull-ahead` is not given).
    pub pull_ahead_sized: bool,
    /// Create or extend the stream and consumers.
    pub provision: bool,
    /// The hub's JetStream domain, for a resolver behind a leaf node; `None`: the local API.
    pub jetstream_domain: Option<String>,
    /// The zone, whose name scopes the inbox and flow subjects; `None`: no zone.
    pub zone: Option<String>,
    /// Collect the requests that ran out of deliveries (the dead-letter collector).
    pub dead_letter_collector: bool,
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
            pull_ahead: 0,
            pull_ahead_sized: false,
            provision: true,
            jetstream_domain: None,
            zone: None,
            dead_letter_collector: true,
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

    /// Combines flags and variables, the TOML file they name (read through `read_file`) and
    /// the defaults, checking what clap cannot; the S3 settings of `--network` stores come from
    /// `env`.
    pub fn resolve(
        args: Args,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                imgfetch_common::settings::read_toml::<Settings>(path, &read_file, RENAMED)?
            }
            None => Settings::default(),
        };
        let s = args.settings.or(file);
        // A collector of dead letters serves no network; anything else serves at least one.
        let networks = match networks::resolve(&s.network, s.networks, &read_file, env) {
            Err(ConfigError::NoNetworks) if s.dead_letters_only => Vec::new(),
            Ok(networks) if s.dead_letters_only && !networks.is_empty() => {
                return Err(ConfigError::DeadLettersOnly(
                    "it serves no network: drop --network and [networks.NAME]",
                ))
            }
            resolved => resolved?,
        };
        if s.dead_letters_only
            && (s.no_dead_letter_collector || s.dead_letter_collector == Some(false))
        {
            return Err(ConfigError::DeadLettersOnly(
                "it is the dead-letter collector: drop --no-dead-letter-collector",
            ));
        }
        let mut config = Config::new(
            s.nats
                .nats_url
                .clone()
                .unwrap_or_else(|| defaults::NATS_URL.to_owned()),
            networks,
        );
        config.nats_auth = s.nats.auth();
        config.nats_auth.check()?;
        if let Some(instance) = s.instance {
            imgfetch_common::validate::id(&instance).map_err(ConfigError::Instance)?;
            config.instance = instance;
        }
        config.concurrency = at_least(
            "concurrency",
            "1",
            s.concurrency.unwrap_or(defaults::CONCURRENCY),
            1,
        )?;
        config.max_streams = at_least(
            "max_streams",
            "1",
            s.max_streams.unwrap_or(defaults::MAX_STREAMS),
            1,
        )?;
        if let Some(stream) = s.stream {
            validate::stream_name(&stream).map_err(|_| ConfigError::StreamName(stream.clone()))?;
            config.stream.name = stream;
        }
        if let Some(stream) = s.dlq_stream {
            validate::stream_name(&stream).map_err(|_| ConfigError::StreamName(stream.clone()))?;
            config.dead_letters.name = stream;
        }
        if config.dead_letters.name == config.stream.name {
            return Err(ConfigError::DeadLetterStream);
        }
        config.dead_letters.max_age = at_least(
            "dlq_max_age",
            "1h",
            s.dlq_max_age.unwrap_or(defaults::DLQ_MAX_AGE),
            Duration::from_secs(3600),
        )?;
        config.provision = !s.no_provision && s.provision.unwrap_or(true);
        if let Some(domain) = s.jetstream_domain {
            validate::id(&domain).map_err(ConfigError::JetStreamDomain)?;
            config.jetstream_domain = Some(domain);
        }
        if let Some(zone) = s.zone {
            validate::id(&zone).map_err(ConfigError::Zone)?;
            config.zone = Some(zone);
        }
        // Behind a leaf node every pull crosses the link: pull ahead unless told otherwise.
        // Behind a leaf node with no count given, the count is then sized to the link.
        config.pull_ahead_sized = s.pull_ahead.is_none() && config.jetstream_domain.is_some();
        config.pull_ahead = s.pull_ahead.unwrap_or(match config.jetstream_domain {
            Some(_) => defaults::LEAF_PULL_AHEAD,
            None => 0,
        });
        config.dead_letter_collector =
            !s.no_dead_letter_collector && s.dead_letter_collector.unwrap_or(true);
        config.max_image_bytes = s.max_image_bytes.unwrap_or(defaults::MAX_IMAGE_BYTES);
        config.max_inline_bytes = s.max_inline_bytes;
        config.chunk_bytes = at_least(
            "chunk bytes",
            "1024",
            s.chunk_bytes.unwrap_or(defaults::CHUNK_BYTES),
            1024,
        )?;
        config.stream_idle = at_least(
            "stream_idle",
            "1ms",
            s.stream_idle.unwrap_or(defaults::STREAM_IDLE),
            Duration::from_millis(1),
        )?;
        config.grace = s.grace.unwrap_or(defaults::GRACE);
        config.consumer.max_deliver = at_least(
            "max deliver",
            "1",
            s.max_deliver.unwrap_or(defaults::MAX_DELIVER),
            1,
        )?;
        config.consumer.ack_wait = at_least(
            "ack_wait",
            "1s",
            s.ack_wait.unwrap_or(defaults::ACK_WAIT),
            Duration::from_secs(1),
        )?;
        config.stream.replicas = s.stream_replicas.unwrap_or(defaults::STREAM_REPLICAS);
        if !(1..=5).contains(&config.stream.replicas) {
            return Err(ConfigError::StreamReplicas(config.stream.replicas));
        }
        config.http_listen = s.http_listen;
        imgfetch_common::connect::server_addrs(&config.nats_url)?;
        let max_deliver = config.consumer.max_deliver;
        // Unless given, the attempts fit under a short max_deliver by themselves.
        config.store_attempts = s.store_attempts.unwrap_or(
            defaults::STORE_ATTEMPTS.min(u32::try_from(max_deliver).unwrap_or(u32::MAX)),
        );
        if config.store_attempts == 0 || i64::from(config.store_attempts) > max_deliver {
            return Err(ConfigError::StoreAttempts {
                attempts: config.store_attempts,
                max_deliver,
            });
        }
        config.retry_delay = s.retry_delay.unwrap_or(defaults::RETRY_DELAY);
        config.log_format = s.log_format.unwrap_or_default();
        Ok(config)
    }
}

/// `value`, if it is at least `least` (written `shown` in the message).
fn at_least<T: PartialOrd>(
    setting: &'static str,
    shown: &'static str,
    value: T,
    least: T,
) -> Result<T, ConfigError> {
    if value < least {
        return Err(ConfigError::TooSmall {
            setting,
            least: shown,
        });
    }
    Ok(value)
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
        let zone = match (&self.zone, &self.jetstream_domain) {
            (Some(zone), Some(domain)) => format!("zone {zone}, JetStream domain {domain}; "),
            (Some(zone), None) => format!("zone {zone}; "),
            (None, Some(domain)) => format!("JetStream domain {domain}; "),
            (None, None) => String::new(),
        };
        let collector = if self.dead_letter_collector {
            ""
        } else {
            "; dead letters collected elsewhere"
        };
        let served = match networks.len() {
            0 => "no network (dead letters only)".to_owned(),
            1 => format!("1 network: {}", networks[0]),
            n => format!("{n} networks: {}", networks.join(", ")),
        };
        format!(
            "{zone}{served}; NATS {}{user}; stream {} ({}){collector}; {http}",
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

/// The host name (from `/etc/hostname`, each character other than A-Z, a-z, 0-9 and '-' made
/// '_'), '-' and 8 random hex digits: unique per start, as the `--instance` help says.
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

#[cfg(test)]
mod tests;
