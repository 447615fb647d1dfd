//! Why a resolver configuration cannot be used: one variant per kind of mistake, so that callers
//! and tests can tell them apart, each keeping the error it comes from as its source. The
//! message names the setting and what is wrong, in one line (`main` prints it and exits 64).

use imgfetch_common::connect::ConnectError;
use imgfetch_common::settings::{FileError, SecretError};
use imgfetch_common::store::BadUrl;
use imgfetch_common::validate::Invalid;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file cannot be read, is malformed, or has an unknown key.
    #[error(transparent)]
    File(#[from] FileError),
    /// A NATS URL is malformed, or the NATS credentials do not fit together.
    #[error(transparent)]
    Nats(#[from] ConnectError),
    /// Neither a `--network` nor a `[networks.NAME]` table was given.
    #[error("no networks: give at least one --network NAME=URL or a [networks.NAME] table")]
    NoNetworks,
    /// A `--network` is not `NAME=URL`.
    #[error("--network {0:?}: expected NAME=URL")]
    NetworkFlag(String),
    /// A network's name is not a valid network tag.
    #[error("network {network:?}: {}", .source.reason)]
    NetworkName {
        /// The name as given.
        network: String,
        /// What is wrong with it.
        source: Invalid,
    },
    /// A network is given twice (by flag, by table, or by both).
    #[error("network {0:?} is configured twice")]
    NetworkTwice(String),
    /// A network's store URL is malformed.
    #[error("network {network:?}: {source}")]
    StoreUrl {
        /// The network.
        network: String,
        /// What is wrong with the URL.
        source: BadUrl,
    },
    /// A secret of a `[networks.NAME]` table, or the file holding it, cannot be had.
    #[error("network {network:?}: {source}")]
    NetworkSecret {
        /// The network.
        network: String,
        /// Which secret, and why.
        source: SecretError,
    },
    /// A secret of the `AWS_*` variables, which the `--network` S3 stores use, cannot be had.
    #[error("--network: {0}")]
    EnvSecret(#[source] SecretError),
    /// A `[networks.NAME]` table with a `file://` URL has S3 settings.
    #[error("network {0:?}: S3 options given for a file:// store")]
    S3OptionsForFile(String),
    /// The instance name is not a valid id.
    #[error("instance: {}", .0.reason)]
    Instance(#[source] Invalid),
    /// `--dead-letters-only` with a setting it cannot have.
    #[error("--dead-letters-only: {0}")]
    DeadLettersOnly(&'static str),
    /// The JetStream domain cannot be a subject token.
    #[error("jetstream_domain: {}", .0.reason)]
    JetStreamDomain(#[source] Invalid),
    /// The zone name cannot be a subject token.
    #[error("zone: {}", .0.reason)]
    Zone(#[source] Invalid),
    /// A stream name cannot be a JetStream name.
    #[error("stream name {0:?} is not a valid JetStream name")]
    StreamName(String),
    /// The dead-letter stream is named as the request stream.
    #[error("the dead-letter stream must not be the request stream")]
    DeadLetterStream,
    /// A setting is under its least value.
    #[error("{setting} must be at least {least}")]
    TooSmall {
        /// The setting.
        setting: &'static str,
        /// Its least value, with its unit.
        least: &'static str,
    },
    /// The stream replicas are not 1 to 5.
    #[error("stream replicas must be 1 to 5, not {0}")]
    StreamReplicas(usize),
    /// The store attempts are not 1 to the consumer's `max_deliver`: the last attempts would
    /// never be made.
    #[error("store attempts must be 1 to {max_deliver} (the consumer's max_deliver)")]
    StoreAttempts {
        /// The attempts given.
        attempts: u32,
        /// The consumer's `max_deliver`.
        max_deliver: i64,
    },
}
