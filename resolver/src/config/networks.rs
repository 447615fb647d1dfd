//! The networks a resolver serves, each with its store. They come from two places, and add up:
//! - `--network NAME=URL` flags (or `IMGFETCH_NETWORKS`), whose S3 settings are the `AWS_*`
//!   variables, read once for them all;
//! - `[networks.NAME]` tables of the TOML file, each with its URL and its own S3 settings (the
//!   keys of `imgfetch_common::settings::S3Settings`).
//!
//! Every name must be a valid network tag and be given once, and there must be at least one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use imgfetch_common::settings::S3Settings;
use imgfetch_common::store::{S3Options, StoreSpec};
use serde::Deserialize;

use super::ConfigError;

/// One network this resolver serves.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSpec {
    /// The network tag.
    pub name: String,
    /// Its store.
    pub store: StoreSpec,
}

/// One `[networks.NAME]` table of the TOML file. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNetwork {
    /// `file:///dir` or `s3://bucket[/prefix]`.
    pub url: String,
    /// The store's S3 settings; none for a `file://` store.
    #[serde(flatten)]
    pub s3: S3Settings,
}

/// The networks of the file's `tables`, then those of the `flags`, with their stores: secrets
/// are read through `read`, and the flags' S3 settings come from `env`.
pub(super) fn resolve(
    flags: &[String],
    tables: BTreeMap<String, FileNetwork>,
    read: impl Fn(&Path) -> std::io::Result<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<NetworkSpec>, ConfigError> {
    let mut networks = Vec::new();
    for (name, net) in tables {
        networks.push(file_network(name, net, &read)?);
    }
    // The AWS_* settings of every S3 network given by flag, read once.
    let urls = flags
        .iter()
        .filter_map(|arg| arg.split_once('='))
        .map(|(_, url)| url);
    let from_env =
        imgfetch_common::settings::s3_from_env(urls, env, &read).map_err(ConfigError::EnvSecret)?;
    for arg in flags {
        networks.push(flag_network(arg, from_env.clone())?);
    }
    let mut seen = BTreeSet::new();
    for net in &networks {
        imgfetch_common::validate::network(&net.name).map_err(|source| {
            ConfigError::NetworkName {
                network: net.name.clone(),
                source,
            }
        })?;
        if !seen.insert(net.name.as_str()) {
            return Err(ConfigError::NetworkTwice(net.name.clone()));
        }
    }
    if networks.is_empty() {
        return Err(ConfigError::NoNetworks);
    }
    Ok(networks)
}

/// A `--network NAME=URL`, its S3 settings `from_env` (the `AWS_*` variables).
fn flag_network(arg: &str, from_env: S3Options) -> Result<NetworkSpec, ConfigError> {
    let (name, url) = arg
        .split_once('=')
        .ok_or_else(|| ConfigError::NetworkFlag(arg.to_owned()))?;
    let store = parse_store_url(name, url, from_env)?;
    Ok(NetworkSpec {
        name: name.to_owned(),
        store,
    })
}

/// A `[networks.NAME]` table, its secrets read through `read`.
fn file_network(
    name: String,
    net: FileNetwork,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<NetworkSpec, ConfigError> {
    let options = match net.s3.options(read) {
        Ok(options) => options,
        Err(source) => {
            return Err(ConfigError::NetworkSecret {
                network: name,
                source,
            })
        }
    };
    let store = parse_store_url(&name, &net.url, options.clone())?;
    if matches!(store, StoreSpec::File { .. }) && options != S3Options::default() {
        return Err(ConfigError::S3OptionsForFile(name));
    }
    Ok(NetworkSpec { name, store })
}

fn parse_store_url(name: &str, url: &str, options: S3Options) -> Result<StoreSpec, ConfigError> {
    imgfetch_common::store::parse_url(url, options).map_err(|source| ConfigError::StoreUrl {
        network: name.to_owned(),
        source,
    })
}
