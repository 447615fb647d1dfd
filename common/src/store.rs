//! Store URLs and building an `object_store` from them, shared by the resolver (image stores)
//! and the gateway (the archive). Each store is built once at start and shared.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};

/// Where a store lives.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreSpec {
    /// A directory; keys cannot leave it.
    File {
        /// The directory.
        root: PathBuf,
    },
    /// An S3 bucket, optionally under a prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket, without slashes at either end.
        prefix: Option<String>,
        /// Connection settings.
        options: S3Options,
    },
}

/// S3 connection settings. Unset fields fall back to the standard `AWS_*` variables only when
/// `from_env` is set. `Debug` shows whether a secret is set, never the secret.
#[derive(Clone, Default, PartialEq)]
pub struct S3Options {
    /// Read `AWS_*` variables first.
    pub from_env: bool,
    /// Endpoint URL.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token.
    pub session_token: Option<String>,
    /// Allow plain-HTTP endpoints.
    pub allow_http: Option<bool>,
    /// Virtual-hosted-style requests.
    pub virtual_hosted_style: Option<bool>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("S3Options")
            .field("from_env", &self.from_env)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

/// A store URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store URL {url:?} {reason}")]
pub struct BadUrl {
    /// The URL.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses `file:///dir` or `s3://bucket[/prefix]`.
pub fn parse_url(url: &str, options: S3Options) -> Result<StoreSpec, BadUrl> {
    let bad = |reason: &str| BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    match parsed.scheme() {
        "file" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(bad("must be file:///absolute/dir"));
            }
            let root = parsed
                .to_file_path()
                .map_err(|_| bad("must be file:///absolute/dir"))?;
            Ok(StoreSpec::File { root })
        }
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("has no bucket"))?
                .to_owned();
            if parsed.query().is_some() {
                return Err(bad("must not have a query; put options in the config file"));
            }
            let prefix = parsed.path().trim_matches('/');
            Ok(StoreSpec::S3 {
                bucket,
                prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
                options,
            })
        }
        other => Err(bad(&format!("has scheme {other:?}; supported: file, s3"))),
    }
}

impl StoreSpec {
    /// One line naming the store and where it is, for `--check-config`; never a credential.
    pub fn summary(&self) -> String {
        match self {
            StoreSpec::File { root } => format!("file://{}", root.display()),
            StoreSpec::S3 {
                bucket,
                prefix,
                options,
            } => {
                let mut line = format!("s3://{bucket}");
                if let Some(prefix) = prefix {
                    line.push('/');
                    line.push_str(prefix);
                }
                let mut notes = Vec::new();
                if let Some(endpoint) = &options.endpoint {
                    notes.push(format!("endpoint {endpoint}"));
                }
                if let Some(region) = &options.region {
                    notes.push(format!("region {region}"));
                }
                if options.from_env {
                    notes.push("AWS_* from the environment".to_owned());
                }
                if !notes.is_empty() {
                    line.push_str(&format!(" ({})", notes.join(", ")));
                }
                line
            }
        }
    }
}

/// A store that could not be built or read, with the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A directory to write to could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A directory could not be opened.
    #[error("cannot open directory {}: {source}", path.display())]
    OpenDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// `object_store` refused the directory.
    #[error("cannot open directory {}: {source}", path.display())]
    FileStore {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: object_store::Error,
    },
    /// The S3 settings do not make a client.
    #[error("bad S3 settings for bucket {bucket:?}: {source}")]
    S3Settings {
        /// The bucket.
        bucket: String,
        /// Why.
        source: object_store::Error,
    },
    /// Listing the store failed: it does not exist, or the credentials do not work.
    #[error("store is not readable: {source}")]
    Unreadable {
        /// Why.
        source: object_store::Error,
    },
}

/// A built store. For directories, `root` is the canonical directory, so callers can refuse
/// paths that resolve outside it.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The canonical directory of a file store.
    pub root: Option<PathBuf>,
}

/// Builds the store for `spec`; `create` makes a missing directory first (for stores written
/// to). `timeout` bounds each S3 request.
pub fn build(spec: &StoreSpec, timeout: Duration, create: bool) -> Result<Opened, OpenError> {
    match spec {
        StoreSpec::File { root } => {
            if create {
                std::fs::create_dir_all(root).map_err(|source| OpenError::CreateDir {
                    path: root.clone(),
                    source,
                })?;
            }
            let canonical = std::fs::canonicalize(root).map_err(|source| OpenError::OpenDir {
                path: root.clone(),
                source,
            })?;
            if !canonical.is_dir() {
                return Err(OpenError::NotADirectory { path: root.clone() });
            }
            let store = LocalFileSystem::new_with_prefix(&canonical).map_err(|source| {
                OpenError::FileStore {
                    path: root.clone(),
                    source,
                }
            })?;
            Ok(Opened {
                store: Arc::new(store),
                root: Some(canonical),
            })
        }
        StoreSpec::S3 {
            bucket,
            prefix,
            options,
        } => {
            crate::connect::install_tls_provider();
            let s3 = s3_builder(bucket, options, timeout)
                .build()
                .map_err(|source| OpenError::S3Settings {
                    bucket: bucket.clone(),
                    source,
                })?;
            let store: Arc<dyn ObjectStore> = match prefix {
                Some(prefix) => Arc::new(PrefixStore::new(s3, prefix.as_str())),
                None => Arc::new(s3),
            };
            Ok(Opened { store, root: None })
        }
    }
}

/// Proves a store exists and that the credentials work by reading one listing entry.
pub async fn check_readable(store: &dyn ObjectStore) -> Result<(), OpenError> {
    match store.list(None).next().await {
        Some(Err(source)) => Err(OpenError::Unreadable { source }),
        _ => Ok(()),
    }
}

fn s3_builder(bucket: &str, options: &S3Options, timeout: Duration) -> AmazonS3Builder {
    let mut builder = if options.from_env {
        AmazonS3Builder::from_env()
    } else {
        AmazonS3Builder::new()
    };
    builder = builder.with_bucket_name(bucket);
    if let Some(v) = &options.endpoint {
        builder = builder.with_endpoint(v);
    }
    if let Some(v) = &options.region {
        builder = builder.with_region(v);
    }
    if let Some(v) = &options.access_key_id {
        builder = builder.with_access_key_id(v);
    }
    if let Some(v) = &options.secret_access_key {
        builder = builder.with_secret_access_key(v);
    }
    if let Some(v) = &options.session_token {
        builder = builder.with_token(v);
    }
    if let Some(v) = options.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(v);
    }
    let mut client = ClientOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(Duration::from_secs(5));
    // Client options replace the ones `from_env` read, so carry AWS_ALLOW_HTTP over by hand.
    let allow_http = options.allow_http.or_else(|| {
        builder
            .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .map(|v| v == "true")
    });
    if let Some(v) = allow_http {
        client = client.with_allow_http(v);
    }
    // imgfetch retries through JetStream redelivery with its own backoff; the client's own
    // retries are kept short so that one attempt cannot outlive a message's ack wait.
    let retry = RetryConfig {
        max_retries: 1,
        retry_timeout: timeout,
        ..RetryConfig::default()
    };
    builder.with_client_options(client).with_retry(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_name_the_store_and_never_a_secret() {
        let file = parse_url("file:///srv/images", S3Options::default()).unwrap();
        assert_eq!(file.summary(), "file:///srv/images");
        let s3 = parse_url(
            "s3://cams/raw/",
            S3Options {
                endpoint: Some("http://minio:9000".into()),
                region: Some("eu-west-1".into()),
                access_key_id: Some("AK".into()),
                secret_access_key: Some("SECRET".into()),
                ..S3Options::default()
            },
        )
        .unwrap();
        let line = s3.summary();
        assert_eq!(
            line,
            "s3://cams/raw (endpoint http://minio:9000, region eu-west-1)"
        );
        assert!(!line.contains("SECRET") && !line.contains("AK"));
        let debug = format!("{s3:?}");
        assert!(
            !debug.contains("SECRET") && debug.contains("secret_access_key: Some(\"<hidden>\")"),
            "{debug}"
        );
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("file:///srv/a", S3Options::default()).unwrap(),
            StoreSpec::File {
                root: "/srv/a".into()
            }
        );
        match parse_url("s3://b/pre/fix/", S3Options::default()).unwrap() {
            StoreSpec::S3 { bucket, prefix, .. } => {
                assert_eq!(bucket, "b");
                assert_eq!(prefix.as_deref(), Some("pre/fix"));
            }
            other => panic!("expected S3, got {other:?}"),
        }
        for (url, why) in [
            ("http://x", "supported: file, s3"),
            ("s3://", "no bucket"),
            ("file://host/x", "absolute"),
            ("s3://b?x=1", "query"),
            ("not a url", "not a URL"),
        ] {
            let err = parse_url(url, S3Options::default()).unwrap_err();
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
    }
}
