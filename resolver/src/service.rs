//! The `imgfetch-resolver` micro service, listed by `nats micro ls/info/stats`:
//!
//! - one endpoint per network, named after it, on `imgfetch.stat.<network>` (queue group
//!   `imgfetch-resolver`: one resolver of the network answers), which answers what the
//!   network's store knows of a key (size, date, etag) without reading the image;
//! - in each endpoint's `$SRV.STATS` `data`, what this instance answered for that network from
//!   the stream: `{"images": n, "errors": n}` ([`Counts`]). The micro protocol's own
//!   `num_requests` and `num_errors` count the stat requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{self, Request};
use futures::StreamExt;
use imgfetch_common::message::{header_safe, Status};
use imgfetch_common::micro::{MicroError, Registration, REGISTER_TIMEOUT};
use imgfetch_common::protocol::{stat_subject, ErrorCode};
use imgfetch_common::validate;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreErrorKind};

/// Stat requests one instance answers at once.
const CONCURRENT_STATS: usize = 16;
/// Longest an answer may wait for the connection.
const RESPOND_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a stat of the store may take.
const STAT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one network's requests from the stream ended in, on this instance: an image (inline or
/// a whole stream) or an error answer. Retries and dead letters are not counted here (see
/// `/metrics`).
#[derive(Debug, Default)]
pub struct Counts {
    images: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    /// An image was answered.
    pub fn image(&self) {
        self.images.fetch_add(1, Ordering::Relaxed);
    }

    /// An error was answered.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "images": self.images.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
        })
    }
}

/// Why the service task stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service could not register.
    #[error(transparent)]
    Register(#[from] MicroError),
    /// An endpoint could not subscribe.
    #[error("cannot add the stat endpoint of network {network:?}: {source}")]
    Endpoint {
        /// Its network.
        network: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// Adding an endpoint did not finish in time.
    #[error("adding the stat endpoint of network {0:?} timed out after {REGISTER_TIMEOUT:?}")]
    EndpointTimeout(String),
    /// The endpoints' subscriptions ended.
    #[error("the stat endpoints' subscriptions ended")]
    Ended,
}

/// One network as the service sees it.
#[derive(Clone, Debug)]
pub struct Network {
    /// Its tag.
    pub name: String,
    /// Its store.
    pub store: Store,
    /// What this instance answered for it.
    pub counts: Arc<Counts>,
}

/// Registers the instance with an endpoint per network and answers stat requests until
/// `shutdown` fires.
pub async fn serve(
    client: async_nats::Client,
    registration: Registration,
    networks: Vec<Network>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let counts: HashMap<String, Arc<Counts>> = networks
        .iter()
        .map(|n| (n.name.clone(), n.counts.clone()))
        .collect();
    let registered = registration
        .register_with_data(&client, move |endpoint| {
            counts
                .get(endpoint)
                .map(|c| c.data())
                .unwrap_or(serde_json::Value::Null)
        })
        .await?;
    let mut endpoints = Vec::with_capacity(networks.len());
    for network in networks {
        let add = registered
            .service()
            .endpoint_builder()
            .name(&network.name)
            .add(stat_subject(&network.name));
        let endpoint = tokio::time::timeout(REGISTER_TIMEOUT, add)
            .await
            .map_err(|_| ServiceError::EndpointTimeout(network.name.clone()))?
            .map_err(|source| ServiceError::Endpoint {
                network: network.name.clone(),
                source,
            })?;
        let network = Arc::new(network);
        endpoints.push(endpoint.map(move |request| (network.clone(), request)));
    }
    if endpoints.is_empty() {
        // A collector serving no network (`--dead-letters-only`): registered for discovery,
        // with no stat endpoint whose end would mean a lost subscription.
        shutdown.cancelled().await;
        return Ok(());
    }
    let answering = futures::stream::select_all(endpoints)
        .for_each_concurrent(CONCURRENT_STATS, |(network, request)| async move {
            answer(&network, request).await
        });
    tokio::select! {
        () = answering => Err(ServiceError::Ended),
        () = shutdown.cancelled() => Ok(()),
    }
}

/// The body of a stat request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StatBody {
    key: String,
}

/// The answer to a stat request.
#[derive(Debug, serde::Serialize)]
struct StatAnswer<'a> {
    network: &'a str,
    key: &'a str,
    size: u64,
    last_modified: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
}

async fn answer(network: &Network, request: Request) {
    let (result, status) = match stat(network, &request.message.payload).await {
        Ok(body) => (Ok(body.into()), Status::Ok),
        Err((code, message)) => {
            let error = service::error::Error {
                status: format!("{}: {}", code.as_str(), header_safe(&message)),
                code: code.http_status().into(),
            };
            (Err(error), Status::Error(code))
        }
    };
    let headers = status.to_headers();
    match tokio::time::timeout(
        RESPOND_TIMEOUT,
        request.respond_with_headers(result, headers),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "stat answer failed"),
        Err(_) => tracing::debug!("stat answer not sent in time"),
    }
}

async fn stat(network: &Network, payload: &[u8]) -> Result<Vec<u8>, (ErrorCode, String)> {
    let body: StatBody = serde_json::from_slice(payload).map_err(|e| {
        (
            ErrorCode::InvalidRequest,
            format!(r#"the body must be {{"key":"..."}}: {e}"#),
        )
    })?;
    validate::key(&body.key).map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
    let meta = tokio::time::timeout(STAT_TIMEOUT, network.store.head(&body.key))
        .await
        .map_err(|_| {
            (
                ErrorCode::StoreUnavailable,
                format!("the store did not answer within {STAT_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| {
            let code = match e.kind() {
                StoreErrorKind::NotFound => ErrorCode::NotFound,
                StoreErrorKind::InvalidKey => ErrorCode::InvalidRequest,
                _ => ErrorCode::StoreUnavailable,
            };
            let message = match code {
                ErrorCode::NotFound => format!(
                    "no image at key {:?} in network {:?}",
                    body.key, network.name
                ),
                _ => e.to_string(),
            };
            (code, message)
        })?;
    let answer = StatAnswer {
        network: &network.name,
        key: &body.key,
        size: meta.size,
        last_modified: meta.last_modified.to_rfc3339(),
        etag: meta.e_tag,
    };
    Ok(serde_json::to_vec(&answer).expect("a stat answer serialises"))
}
