//! The imgfetch resolver: deployed inside a network zone, it takes that zone's image requests
//! off JetStream, reads the images through `object_store`, and answers on each request's
//! callback subject.
//!
//! # Layout
//!
//! - [`config`]: flags, environment and TOML file, resolved into a [`Config`].
//! - [`store`]: one `object_store` per network, built once; the single read a request needs.
//! - [`info`]: the associated information: sidecar, store metadata and EXIF, merged.
//! - [`handler`]: one message in, one reply out, then ack, nak or term.
//! - [`stream`]: an image over the inline limit, sent in chunks at the receiver's pace.
//! - [`worker`]: one network's persistent pull on its shared durable consumer, with credit
//!   per network and slots shared by all.
//! - [`ping`]: the liveness answer gateways use to detect "no resolver".
//! - [`dlq`]: requests that end without an answer: copied to the dead-letter stream, their
//!   requesters told `undeliverable`.
//!
//! [`run`] ties them together and drains in-flight work on shutdown.

pub mod config;
pub mod dlq;
pub mod handler;
pub mod info;
pub mod ping;
pub mod store;
pub mod stream;
pub mod worker;

use std::sync::Arc;

use imgfetch_common::protocol::ResolverInfo;
use imgfetch_common::provision::{self, ProvisionError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use store::{OpenError, Store};

use crate::config::defaults;

/// Why the resolver could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A store could not be opened or read.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// NATS could not be reached, refused the credentials, or failed TLS.
    #[error(transparent)]
    Connect(#[from] imgfetch_common::connect::ConnectError),
    /// The stream or a consumer could not be set up.
    #[error("network {network:?}: {source}")]
    Provision {
        /// The network.
        network: String,
        /// Why.
        source: ProvisionError,
    },
    /// The configured image limit does not fit the server.
    #[error("max inline size {configured} bytes does not fit the server's max_payload of {max_payload} bytes with {headroom} bytes of headroom")]
    ImageLimit {
        /// What was configured.
        configured: u64,
        /// The server's limit.
        max_payload: u64,
        /// Kept free for headers.
        headroom: u64,
    },
    /// The dead-letter stream or its consumer could not be set up.
    #[error("dead-letter stream: {0}")]
    DeadLetters(#[source] ProvisionError),
    /// Subscribing to the ping subject failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Runs the resolver until `shutdown` fires, then lets in-flight requests finish within the
/// grace period.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    // Each request holds at most one reader at a time, so as many readers as slots.
    let readers = store::ReadPool::new(config.concurrency);
    let mut stores = Vec::new();
    for net in &config.networks {
        stores.push(Store::open(&net.name, &net.store, config.store_timeout, &readers).await?);
    }

    let client = config
        .nats_auth
        .connect(
            &config.nats_url,
            format!("imgfetch-resolver {}", config.instance),
        )
        .await?;
    let max_payload = client.server_info().max_payload as u64;
    let fits = max_payload.saturating_sub(defaults::PAYLOAD_HEADROOM);
    let max_inline_bytes = match config.max_inline_bytes {
        Some(n) if n > fits => {
            return Err(RunError::ImageLimit {
                configured: n,
                max_payload,
                headroom: defaults::PAYLOAD_HEADROOM,
            })
        }
        Some(n) => n,
        None => fits,
    };
    let max_image_bytes = config.max_image_bytes;
    // A chunk carries a few short headers; it never needs the inline headroom.
    let chunk_bytes = config
        .chunk_bytes
        .min(max_payload.saturating_sub(4096))
        .max(1024);

    let js = async_nats::jetstream::new(client.clone());
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let tracker = TaskTracker::new();
    let info = ResolverInfo {
        instance: config.instance.clone(),
        networks: config.networks.iter().map(|n| n.name.clone()).collect(),
        max_image_bytes,
        max_inline_bytes,
    };
    // Before any request is taken: a request termed without an answer is copied first.
    let advisories =
        provision::ensure_dead_letters(&js, &config.dead_letters, &config.stream, config.provision)
            .await
            .map_err(RunError::DeadLetters)?;
    let dead = Arc::new(dlq::DeadLetters {
        client: client.clone(),
        js: js.clone(),
        requests: config.stream.name.clone(),
        stream: js
            .get_stream_no_info(&config.stream.name)
            .await
            .map_err(|e| {
                RunError::DeadLetters(provision::ProvisionError::JetStream {
                    action: "naming the request stream",
                    source: e.into(),
                })
            })?,
        instance: config.instance.clone(),
    });
    let mut loops = vec![tokio::spawn(dlq::run(
        dead.clone(),
        advisories,
        shutdown.clone(),
    ))];
    for (net, store) in config.networks.iter().zip(stores) {
        let consumer = provision::ensure_network(
            &js,
            &config.stream,
            &config.consumer,
            &net.name,
            config.provision,
        )
        .await
        .map_err(|source| RunError::Provision {
            network: net.name.clone(),
            source,
        })?;
        let ctx = Arc::new(handler::Context {
            client: client.clone(),
            js: js.clone(),
            network: net.name.clone(),
            instance: config.instance.clone(),
            store,
            max_image_bytes,
            max_inline_bytes,
            max_payload,
            chunk_bytes,
            stream_idle: config.stream_idle,
            ack_wait: config.consumer.ack_wait,
            store_attempts: config
                .store_attempts
                .min(u32::try_from(config.consumer.max_deliver).unwrap_or(u32::MAX)),
            retry_delay: config.retry_delay,
            retry_delay_max: config.retry_delay_max,
            store_timeout: config.store_timeout,
            dead_letters: dead.clone(),
        });
        loops.push(tokio::spawn(worker::run(
            ctx,
            consumer,
            worker::PullSettings {
                limit: config.concurrency,
                expires: config.pull_expires,
                ack_wait: config.consumer.ack_wait,
            },
            slots.clone(),
            tracker.clone(),
            shutdown.clone(),
        )));
    }
    for net in &config.networks {
        ping::serve(
            client.clone(),
            net.name.clone(),
            info.clone(),
            shutdown.clone(),
        )
        .await?;
    }
    tracing::info!(instance = config.instance, networks = ?info.networks, max_image_bytes, max_inline_bytes, chunk_bytes, "resolver ready");

    shutdown.cancelled().await;
    for l in loops {
        let _ = l.await;
    }
    tracker.close();
    if tokio::time::timeout(config.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period over with requests still in flight; JetStream will redeliver them"
        );
    }
    // Replies and acks of the last requests are still in the client's buffer; a flush waits
    // for a reconnect that may never come, so it is bounded.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
    tracing::info!("resolver stopped");
    Ok(())
}
