//! One object store per network, built once at start and shared, and the one read the resolver
//! does against it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imgfetch_common::store::{self, StoreSpec};
use object_store::path::Path;
use object_store::{Attribute, ObjectStore};

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
    /// The store refused access (bad credentials, a per-object policy). For an image this is
    /// retried like [`Transient`](StoreErrorKind::Transient), since credentials get fixed; for a
    /// sidecar it means "no sidecar".
    #[error("access denied")]
    Denied,
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
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StoreErrorKind::Denied,
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
    /// The object's user metadata, by lower-case name.
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
    /// Builds the store for `spec` and checks that it can be listed.
    pub async fn open(
        network: &str,
        spec: &StoreSpec,
        timeout: Duration,
    ) -> Result<Store, OpenError> {
        let fail = |e: store::OpenError| OpenError {
            network: network.to_owned(),
            message: e.to_string(),
        };
        let opened = store::build(spec, timeout, false).map_err(fail)?;
        store::check_readable(opened.store.as_ref())
            .await
            .map_err(fail)?;
        Ok(Store {
            inner: opened.store,
            confine: opened.root,
        })
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
        // User metadata (S3 `x-amz-meta-*`); the content type is sniffed from the bytes
        // instead of trusted from the store.
        let attributes = result
            .attributes
            .iter()
            .filter_map(|(attr, value)| match attr {
                Attribute::Metadata(name) => {
                    Some((name.to_ascii_lowercase(), value.as_ref().to_owned()))
                }
                _ => None,
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
