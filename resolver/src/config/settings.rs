//! The command line and the TOML file, as one clap+serde [`Settings`]: each field is a flag with
//! its `IMGFETCH_*` variable and a key of the file, optional here, so that [`Settings::or`] can
//! put the flags and variables over the file (the gateway's style). The NATS keys are
//! [`NatsSettings`], shared with the gateway; the S3 keys of a `[networks.NAME]` table are
//! `imgfetch_common::settings::S3Settings`, shared with the `AWS_*` variables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use imgfetch_common::connect::NatsSettings;
use imgfetch_common::settings::{de_duration, duration, Renamed};
use imgfetch_common::telemetry::LogFormat;
use serde::Deserialize;

use super::networks::FileNetwork;

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
    /// Every setting.
    #[command(flatten)]
    pub settings: Settings,
    /// Only parse and validate the configuration (flags, environment, TOML file and the files
    /// it names), print a one-line summary and exit: 0 when it is usable, 64 when not. Connects
    /// to nothing and opens no store.
    #[arg(long)]
    pub check_config: bool,
    /// Create or extend the stream, each network's consumer and the dead letters (unless
    /// --no-dead-letter-collector), then exit, serving nothing and opening no store: the hub's
    /// side of a leaf zone, whose own resolvers may not (docs/DEPLOY.md, "Leaf zones").
    #[arg(long, conflicts_with = "check_config")]
    pub provision_only: bool,
}

/// The settings, as flags and variables and as the keys of the TOML file. Each is optional here:
/// a flag or variable wins over the file, the file over the default. Two come in a different
/// form from each side: the networks (`--network NAME=URL` flags, `[networks.NAME]` tables),
/// provisioning (`--no-provision`, `provision = false`) and the dead-letter collector
/// (`--no-dead-letter-collector`, `dead_letter_collector = false`).
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// NATS URL, credentials and TLS, the same settings as the gateway's.
    #[command(flatten)]
    #[serde(flatten)]
    pub nats: NatsSettings,
    /// A network and its store, as NAME=URL (file:///dir or s3://bucket[/prefix]); repeatable.
    /// S3 settings come from the standard AWS_* variables.
    #[arg(
        long = "network",
        env = "IMGFETCH_NETWORKS",
        value_name = "NETWORKS",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub network: Vec<String>,
    /// The networks of the TOML file, each with its own store and S3 settings (no flag: see
    /// --network).
    #[arg(skip)]
    #[serde(default)]
    pub networks: BTreeMap<String, FileNetwork>,
    /// Name of this instance, for logs and pings [default: the host name (/etc/hostname), '-'
    /// and 8 random hex digits, e.g. node1-3fa85f64; without a host name, resolver-3fa85f64].
    #[arg(long, env = "IMGFETCH_INSTANCE")]
    pub instance: Option<String>,
    /// Requests handled at once [default: 16].
    #[arg(long, env = "IMGFETCH_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Streamed answers (images over the inline limit) in progress at once; a stream gives its
    /// request slot back while it waits on its receiver [default: 64].
    #[arg(long, env = "IMGFETCH_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// Requests pulled ahead of the free slots, per network: they wait in this resolver, as
    /// small request messages, until a slot frees, so that pulls keep a slow link full without
    /// more images read at once. With --jetstream-domain and no count given, it starts at 256
    /// and is then sized to the link: 2 x slots x the round trip to the hub's JetStream / a
    /// request's time in a slot [default: 0, or sized to the link with --jetstream-domain].
    #[arg(long, env = "IMGFETCH_PULL_AHEAD")]
    pub pull_ahead: Option<usize>,
    /// JetStream stream name [default: IMGFETCH].
    #[arg(long, env = "IMGFETCH_STREAM")]
    pub stream: Option<String>,
    /// JetStream stream of dead letters [default: IMGFETCH_DLQ].
    #[arg(long, env = "IMGFETCH_DLQ_STREAM")]
    pub dlq_stream: Option<String>,
    /// How long the dead-letter stream keeps a dead letter, at least 1h [default: 7d].
    #[arg(long, env = "IMGFETCH_DLQ_MAX_AGE", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub dlq_max_age: Option<Duration>,
    /// Only verify the stream and consumers; never create or change them.
    #[arg(long, env = "IMGFETCH_NO_PROVISION")]
    #[serde(skip)]
    pub no_provision: bool,
    /// Create or extend the stream and consumers (in the TOML file, default true; the flag is
    /// --no-provision).
    #[arg(skip)]
    pub provision: Option<bool>,
    /// The JetStream domain of the hub whose stream this resolver serves, for a resolver that
    /// reaches it through a leaf node: its JetStream requests go to `$JS.<domain>.API`
    /// [default: none, the local API].
    #[arg(long, env = "IMGFETCH_JETSTREAM_DOMAIN")]
    pub jetstream_domain: Option<String>,
    /// The zone this resolver runs in: its inbox becomes `_INBOX_resolver.<zone>` and its flow
    /// subjects `imgfetch.flow.<zone>.<token>`, so that the zone's NATS user can be limited to
    /// its own traffic (docs/DEPLOY.md, leaf zones) [default: none].
    #[arg(long, env = "IMGFETCH_ZONE")]
    pub zone: Option<String>,
    /// Leave the dead-letter collector to other resolvers: it reads the server's advisories
    /// and the requests of every network, which a zone's NATS user may not.
    #[arg(long, env = "IMGFETCH_NO_DEAD_LETTER_COLLECTOR")]
    #[serde(skip)]
    pub no_dead_letter_collector: bool,
    /// Run the dead-letter collector (in the TOML file, default true; the flag is
    /// --no-dead-letter-collector).
    #[arg(skip)]
    pub dead_letter_collector: Option<bool>,
    /// Serve no network and only collect dead letters: for the hub of a deployment whose
    /// zones are all behind leaf nodes, where no resolver on the hub serves a network.
    #[arg(long, env = "IMGFETCH_DEAD_LETTERS_ONLY")]
    #[serde(default)]
    pub dead_letters_only: bool,
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
    #[serde(default, deserialize_with = "de_duration")]
    pub stream_idle: Option<Duration>,
    /// Attempts at a failing store before answering store_unavailable [default: 4].
    #[arg(long, env = "IMGFETCH_STORE_ATTEMPTS")]
    pub store_attempts: Option<u32>,
    /// First delay before retrying a failing store, doubled per attempt [default: 500ms].
    #[arg(long, env = "IMGFETCH_RETRY_DELAY", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub retry_delay: Option<Duration>,
    /// How long in-flight requests may take to finish after SIGTERM before the rest are given
    /// back to JetStream [default: 20s].
    #[arg(long, env = "IMGFETCH_GRACE", value_parser = duration)]
    #[serde(default, deserialize_with = "de_duration")]
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
    #[serde(default, deserialize_with = "de_duration")]
    pub ack_wait: Option<Duration>,
    /// Deliveries after which JetStream stops redelivering a request [default: 10].
    #[arg(long, env = "IMGFETCH_MAX_DELIVER")]
    pub max_deliver: Option<i64>,
}

impl Settings {
    /// These settings, each one missing taken from `file`. The networks add up instead: those
    /// given by flag and those of the file's tables are all served (a name in both is refused
    /// later), and `--no-provision` wins over `provision = true`.
    pub fn or(self, file: Settings) -> Settings {
        Settings {
            nats: self.nats.or(file.nats),
            network: [self.network, file.network].concat(),
            networks: file.networks.into_iter().chain(self.networks).collect(),
            instance: self.instance.or(file.instance),
            concurrency: self.concurrency.or(file.concurrency),
            max_streams: self.max_streams.or(file.max_streams),
            pull_ahead: self.pull_ahead.or(file.pull_ahead),
            stream: self.stream.or(file.stream),
            dlq_stream: self.dlq_stream.or(file.dlq_stream),
            dlq_max_age: self.dlq_max_age.or(file.dlq_max_age),
            no_provision: self.no_provision || file.no_provision,
            provision: self.provision.or(file.provision),
            jetstream_domain: self.jetstream_domain.or(file.jetstream_domain),
            zone: self.zone.or(file.zone),
            no_dead_letter_collector: self.no_dead_letter_collector
                || file.no_dead_letter_collector,
            dead_letter_collector: self.dead_letter_collector.or(file.dead_letter_collector),
            dead_letters_only: self.dead_letters_only || file.dead_letters_only,
            max_image_bytes: self.max_image_bytes.or(file.max_image_bytes),
            max_inline_bytes: self.max_inline_bytes.or(file.max_inline_bytes),
            chunk_bytes: self.chunk_bytes.or(file.chunk_bytes),
            stream_idle: self.stream_idle.or(file.stream_idle),
            store_attempts: self.store_attempts.or(file.store_attempts),
            retry_delay: self.retry_delay.or(file.retry_delay),
            grace: self.grace.or(file.grace),
            log_format: self.log_format.or(file.log_format),
            http_listen: self.http_listen.or(file.http_listen),
            stream_replicas: self.stream_replicas.or(file.stream_replicas),
            ack_wait: self.ack_wait.or(file.ack_wait),
            max_deliver: self.max_deliver.or(file.max_deliver),
        }
    }
}
