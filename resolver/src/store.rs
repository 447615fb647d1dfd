//! One object store per network, built once at start and shared, and the one read the resolver
//! does against it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{Attribute, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};

use crate::config::{S3Options, StoreSpec};

/// What went wrong reading an image; the caller branches on [`StoreError::kind`].
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

/// The kinds of [`StoreError`], one per way the resolver reacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// No object at that key: answer `not_found`.
    #[error("not found")]
    NotFound,
    /// The key is not a valid path for this store: answer `invalid_request`.
    #[error("invalid key")]
    InvalidKey,
    /// The object is larger than fits in one message: answer `too_large`.
    #[error("too large")]
    TooLarge,
    /// The store failed in a way that may pass: retry, then answer `store_unavailable`.
    #[error("store unavailable")]
    Transient,
}

impl StoreError {
    /// How the caller should react.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }
}

impl From<object_store::Error> for StoreError {
    fn from(err: object_store::Error) -> Self {
        let kind = match &err {
            object_store::Error::NotFound { .. } => StoreErrorKind::NotFound,
            object_store::Error::InvalidPath { .. } => StoreErrorKind::InvalidKey,
            _ => StoreErrorKind::Transient,
        };
        StoreError::new(kind, err.to_string())
    }
}

/// A store could not be built or read at start.
#[derive(Debug, thiserror::Error)]
#[error("network {network:?}: {message}")]
pub struct OpenError {
    network: String,
    message: String,
}

/// An image and what the store knows about it.
#[derive(Debug)]
pub struct Fetched {
    /// The image bytes.
    pub bytes: Bytes,
    /// Last modification time, RFC 3339.
    pub last_modified: String,
    /// Entity tag, when the store has one.
    pub e_tag: Option<String>,
    /// The object's attributes: user metadata and standard attributes, by lower-case name.
    pub attributes: Vec<(String, String)>,
}

/// One network's store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// For directory stores, the canonical root no resolved path may leave, symlinks included.
    confine: Option<PathBuf>,
}

impl Store {
    /// Wraps an existing store, e.g. one a test built.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>) -> Store {
        Store {
            inner,
            confine: None,
        }
    }

    /// Builds the store for `spec` and checks that it can be listed.
    pub async fn open(
        network: &str,
        spec: &StoreSpec,
        timeout: Duration,
    ) -> Result<Store, OpenError> {
        let fail = |message: String| OpenError {
            network: network.to_owned(),
            message,
        };
        let mut confine = None;
        let inner: Arc<dyn ObjectStore> = match spec {
            StoreSpec::File { root } => {
                let canonical = std::fs::canonicalize(root)
                    .map_err(|e| fail(format!("cannot open directory {}: {e}", root.display())))?;
                if !canonical.is_dir() {
                    return Err(fail(format!("{} is not a directory", root.display())));
                }
                confine = Some(canonical.clone());
                Arc::new(
                    LocalFileSystem::new_with_prefix(&canonical).map_err(|e| {
                        fail(format!("cannot open directory {}: {e}", root.display()))
                    })?,
                )
            }
            StoreSpec::S3 {
                bucket,
                prefix,
                options,
            } => {
                let s3 = s3_builder(bucket, options, timeout)
                    .build()
                    .map_err(|e| fail(format!("bad S3 settings for bucket {bucket:?}: {e}")))?;
                match prefix {
                    Some(prefix) => Arc::new(PrefixStore::new(s3, prefix.as_str())),
                    None => Arc::new(s3),
                }
            }
        };
        // Reading one listing entry proves the directory or bucket exists and that the
        // credentials work; a broken store stops the resolver at start, in one line.
        if let Some(Err(e)) = inner.list(None).next().await {
            return Err(fail(format!("store is not readable: {e}")));
        }
        Ok(Store { inner, confine })
    }

    /// Reads `key`, refusing objects over `max_bytes` before downloading them.
    pub async fn read(&self, key: &str, max_bytes: u64) -> Result<Fetched, StoreError> {
        let path = Path::parse(key)
            .map_err(|e| StoreError::new(StoreErrorKind::InvalidKey, e.to_string()))?;
        if let Some(root) = &self.confine {
            confine(root, key).await?;
        }
        let result = self.inner.get(&path).await?;
        let too_large = |size: u64| {
            StoreError::new(
                StoreErrorKind::TooLarge,
                format!("{size} bytes is over the {max_bytes}-byte limit for one message"),
            )
        };
        if result.meta.size > max_bytes {
            return Err(too_large(result.meta.size));
        }
        let last_modified = result.meta.last_modified.to_rfc3339();
        let e_tag = result.meta.e_tag.clone();
        let attributes = result
            .attributes
            .iter()
            .filter_map(|(attr, value)| {
                let name = match attr {
                    Attribute::Metadata(name) => name.to_ascii_lowercase(),
                    Attribute::ContentDisposition => "content-disposition".into(),
                    Attribute::ContentEncoding => "content-encoding".into(),
                    Attribute::ContentLanguage => "content-language".into(),
                    Attribute::CacheControl => "cache-control".into(),
                    Attribute::StorageClass => "storage-class".into(),
                    // The content type is sniffed from the bytes, not trusted from the store.
                    _ => return None,
                };
                Some((name, value.as_ref().to_owned()))
            })
            .collect();
        let bytes = result.bytes().await?;
        // The object may have grown between the metadata and the body.
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(Fetched {
            bytes,
            last_modified,
            e_tag,
            attributes,
        })
    }
}

/// Refuses a key whose real path, symlinks resolved, is outside `root`.
async fn confine(root: &std::path::Path, key: &str) -> Result<(), StoreError> {
    match tokio::fs::canonicalize(root.join(key)).await {
        Ok(real) if real.starts_with(root) => Ok(()),
        Ok(_) => Err(StoreError::new(
            StoreErrorKind::InvalidKey,
            format!("key {key:?} resolves outside the store's directory"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::new(
            StoreErrorKind::NotFound,
            format!("no object at {key:?}"),
        )),
        Err(e) => Err(StoreError::new(StoreErrorKind::Transient, e.to_string())),
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
    if let Some(v) = options.allow_http {
        builder = builder.with_allow_http(v);
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
    // The resolver retries through JetStream redelivery, with its own backoff; the client's
    // retries are kept short so that one attempt cannot outlive the message's ack wait.
    let retry = RetryConfig {
        max_retries: 1,
        retry_timeout: timeout,
        ..RetryConfig::default()
    };
    builder.with_client_options(client).with_retry(retry)
}
