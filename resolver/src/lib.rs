//! The imgfetch resolver: deployed inside a network zone, it takes that zone's image requests
//! off JetStream, reads the images through `object_store`, and answers on each request's
//! callback subject.
//!
//! # Layout
//!
//! - [`config`] (folder): flags, variables and TOML file as one `Settings` (a flag over its
//!   variable over the file over the default), the networks and their stores, resolved into a
//!   [`Config`] or a typed `ConfigError`.
//! - [`store`]: one `object_store` per network, built once, with its read pool; the single read
//!   a request needs, and [`store::info`], the associated information (sidecar, store metadata
//!   and EXIF, merged).
//! - [`handle`]: everything between a request message and its settle: the pull loop
//!   ([`handle::worker`]), one request ([`handle::request`]), chunked transfers
//!   ([`handle::chunks`]), dead letters ([`handle::dlq`]) and the liveness answer
//!   ([`handle::ping`]).
//! - [`service`]: the `imgfetch-resolver` micro service: a stat endpoint per network, and what
//!   each network's requests ended in, for `nats micro stats`.
//! - [`http`]: the optional `/livez`, `/readyz` and `/metrics` listener.
//! - [`metric`]: the names of the Prometheus series, each declared once.
//!
//! Dependencies run one way: `handle` and `service` use `store`; nothing uses `handle` but
//! [`run`].
//!
//! [`run`] ties them together, supervises the long-lived tasks (each network's pull loop and
//! ping answerer, and the `imgfetch-resolver` service of [`service`], restarted when they end early; see `imgfetch_common::supervise`) and drains
//! in-flight work on shutdown.

pub mod config;
pub mod handle;
pub mod http;
pub mod metric;
pub mod service;
pub mod store;

use std::sync::Arc;

use imgfetch_common::health::Health;
use imgfetch_common::micro::{Registration, RESOLVER_SERVICE};
use imgfetch_common::protocol::ResolverInfo;
use imgfetch_common::provision::{self, ProvisionError};
use imgfetch_common::supervise::Supervisor;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use handle::{dlq, ping, worker};
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
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Provisioning at start did not finish in time.
    #[error("network {network:?}: setting up the stream and consumer timed out after {timeout:?}")]
    ProvisionTimeout {
        /// The network.
        network: String,
        /// The bound.
        timeout: std::time::Duration,
    },
}

/// Longest the last flush at shutdown may wait: it waits for a reconnect that may never come.
const FINAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest the requests still in hand when the grace period ends may take to be given back.
const ABANDON_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest draining the connection (unsubscribing, flushing, closing) may take at the end.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Creates or extends what `config`'s networks need on the server (the stream, each network's
/// consumer and, unless the collector is left to others, the dead letters), then returns: no
/// store is opened and nothing is served. The hub's side of a leaf zone runs this, since the
/// zone's own resolvers may not provision (docs/DEPLOY.md, "Leaf zones").
pub async fn provision_only(config: &Config) -> Result<(), RunError> {
    let client = config
        .nats_auth
        .connect(
            &config.nats_url,
            format!("imgfetch-resolver {} provisioning", config.instance),
            &imgfetch_common::protocol::resolver_inbox_prefix(config.zone.as_deref()),
        )
        .await?;
    let js = jetstream_of(&client, config);
    if config.dead_letter_collector {
        provision_dead_letters(&js, config, true).await?;
    }
    for net in &config.networks {
        provision_network(&js, config, &net.name, true).await?;
        tracing::info!(network = %net.name, "provisioned");
    }
    Ok(())
}

/// JetStream as this resolver reaches it: through the hub's domain behind a leaf node.
fn jetstream_of(client: &async_nats::Client, config: &Config) -> async_nats::jetstream::Context {
    match &config.jetstream_domain {
        Some(domain) => async_nats::jetstream::with_domain(client.clone(), domain),
        None => async_nats::jetstream::new(client.clone()),
    }
}

/// Makes sure (or, without `create`, checks) that `network`'s stream subject and consumer exist,
/// within [`worker::PROVISION_TIMEOUT`].
async fn provision_network(
    js: &async_nats::jetstream::Context,
    config: &Config,
    network: &str,
    create: bool,
) -> Result<async_nats::jetstream::consumer::PullConsumer, RunError> {
    let ensure = provision::ensure_network(js, &config.stream, &config.consumer, network, create);
    tokio::time::timeout(worker::PROVISION_TIMEOUT, ensure)
        .await
        .map_err(|_| RunError::ProvisionTimeout {
            network: network.to_owned(),
            timeout: worker::PROVISION_TIMEOUT,
        })?
        .map_err(|source| RunError::Provision {
            network: network.to_owned(),
            source,
        })
}

/// The same for the dead-letter stream and its consumer.
async fn provision_dead_letters(
    js: &async_nats::jetstream::Context,
    config: &Config,
    create: bool,
) -> Result<async_nats::jetstream::consumer::PullConsumer, RunError> {
    let ensure = provision::ensure_dead_letters(js, &config.dead_letters, &config.stream, create);
    tokio::time::timeout(worker::PROVISION_TIMEOUT, ensure)
        .await
        .map_err(|_| RunError::ProvisionTimeout {
            network: "dead letters".to_owned(),
            timeout: worker::PROVISION_TIMEOUT,
        })?
        .map_err(RunError::DeadLetters)
}

/// Runs a start-up step of a resolver behind a leaf node (`--jetstream-domain`) again every
/// [`UNREACHABLE_RETRY`] while the hub's JetStream cannot be reached (the link down, or up but
/// the hub's interest not yet across it), instead of exiting; `None` when `shutdown` came
/// first. Anything else, and every failure of a resolver connected to the hub itself, is
/// returned at once.
async fn until_reachable<T, F, Fut>(
    config: &Config,
    shutdown: &CancellationToken,
    what: &str,
    mut step: F,
) -> Result<Option<T>, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RunError>>,
{
    let mut logged = false;
    loop {
        let err = match step().await {
            Ok(made) => return Ok(Some(made)),
            Err(err) => err,
        };
        let unreachable = matches!(
            err,
            RunError::Provision {
                source: ProvisionError::JetStream { .. },
                ..
            } | RunError::DeadLetters(ProvisionError::JetStream { .. })
                | RunError::ProvisionTimeout { .. }
        );
        if config.jetstream_domain.is_none() || !unreachable {
            return Err(err);
        }
        if !logged {
            tracing::warn!(what, %err, "the hub's JetStream cannot be reached through the leaf node; retrying");
            logged = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(UNREACHABLE_RETRY) => {}
        }
    }
}

/// How often a resolver behind a leaf node tries its start-up steps again while the hub's
/// JetStream cannot be reached.
const UNREACHABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the resolver until `shutdown` fires, then lets in-flight requests finish within the
/// grace period.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    // Each request holds at most one reader at a time, so as many readers as slots.
    let readers = store::ReadPool::new(config.concurrency);
    let mut stores = Vec::new();
    for net in &config.networks {
        stores.push(Store::open(&net.name, &net.store, config.store_timeout, &readers).await?);
    }

    let health = Health::new();
    // Probes are answered while NATS is still being reached: alive, not ready.
    let connected = Arc::new(std::sync::OnceLock::new());
    let http_stop = shutdown.child_token();
    let http = match config.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Listen { addr, source })?;
            let state = http::HttpState {
                health: health.clone(),
                client: connected.clone(),
                shutdown: http_stop.clone(),
                metrics: config.metrics.clone(),
            };
            tracing::info!(%addr, "health and metrics listening");
            let stop = http_stop.clone();
            Some(tokio::spawn(async move {
                let ended = http::serve(listener, state).await;
                // axum keeps accepting through errors; ending early is a bug worth a loud line.
                // `/livez` no longer answers, so an orchestrator restarts the resolver.
                if !stop.is_cancelled() {
                    tracing::error!(?ended, "the health and metrics listener stopped");
                }
            }))
        }
        None => None,
    };
    // The listener stops with the resolver, whichever way `run` returns.
    let _http_stop = http_stop.clone().drop_guard();
    // The resolvers' own inbox, which no gateway or publisher may read (docs/SECURITY.md);
    // a zone's, which no other zone may read.
    let inbox = imgfetch_common::protocol::resolver_inbox_prefix(config.zone.as_deref());
    let connecting = config.nats_auth.connect_retrying(
        &config.nats_url,
        format!("imgfetch-resolver {}", config.instance),
        &inbox,
        &shutdown,
    );
    let Some(client) = connecting.await? else {
        tracing::info!("stopped before NATS could be reached");
        return Ok(());
    };
    let _ = connected.set(client.clone());
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

    // Behind a leaf node, the hub's JetStream is reached through its domain.
    let js = jetstream_of(&client, &config);
    let api_prefix =
        imgfetch_common::protocol::jetstream_api_prefix(config.jetstream_domain.as_deref());
    let supervisor = Supervisor::new(
        health.clone(),
        metric::TASK_RESTARTS_TOTAL,
        shutdown.clone(),
    );
    let slots = Arc::new(Semaphore::new(config.concurrency));
    // Streams wait on their receivers without a slot; these bound how many run at once.
    let streams = Arc::new(Semaphore::new(config.max_streams));
    let tracker = TaskTracker::new();
    let info = ResolverInfo {
        instance: config.instance.clone(),
        networks: config.networks.iter().map(|n| n.name.clone()).collect(),
        max_image_bytes,
        max_inline_bytes,
    };
    // Before any request is taken: a request termed without an answer is copied first. A zone's
    // resolvers may leave the collector to others (--no-dead-letter-collector): it reads every
    // network's requests.
    let advisories = if !config.dead_letter_collector {
        tracing::info!("the dead-letter collector is left to other resolvers");
        None
    } else {
        let made = until_reachable(&config, &shutdown, "the dead letters", || {
            provision_dead_letters(&js, &config, config.provision)
        })
        .await?;
        let Some(consumer) = made else {
            return Ok(());
        };
        Some(consumer)
    };
    let dead = Arc::new(dlq::DeadLetters {
        client: client.clone(),
        js: js.clone(),
        requests: config.stream.name.clone(),
        // Names the stream only: no request goes to the server.
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
    let mut loops = Vec::new();
    if let Some(advisories) = advisories {
        // The first run uses the consumer provisioned above; a restart (the dead-letter stream
        // or its consumer lost) provisions them again first.
        let mut first = Some(advisories);
        let (js, dead, shutdown) = (js.clone(), dead.clone(), shutdown.clone());
        let (settings, stream, create) = (
            config.dead_letters.clone(),
            config.stream.clone(),
            config.provision,
        );
        loops.push(supervisor.spawn("dead letters", move || {
            let given = first.take();
            let (js, dead, shutdown) = (js.clone(), dead.clone(), shutdown.clone());
            let (settings, stream) = (settings.clone(), stream.clone());
            async move {
                let consumer = match given {
                    Some(consumer) => consumer,
                    None => tokio::time::timeout(
                        worker::PROVISION_TIMEOUT,
                        provision::ensure_dead_letters(&js, &settings, &stream, create),
                    )
                    .await
                    .map_err(|_| {
                        format!(
                            "provisioning took longer than {:?}",
                            worker::PROVISION_TIMEOUT
                        )
                    })?
                    .map_err(|e| e.to_string())?,
                };
                dlq::run(dead, consumer, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            }
        }));
    }
    let abandon = CancellationToken::new();
    let mut served = Vec::with_capacity(config.networks.len());
    for (net, store) in config.networks.iter().zip(stores) {
        // Every network's series exist from the start, at zero, so that rates and alerts see
        // them before the first request.
        let network = net.name.clone();
        metrics::counter!(metric::REDELIVERIES_TOTAL, "network" => network.clone()).increment(0);
        metrics::counter!(metric::IMAGE_BYTES_TOTAL, "network" => network.clone()).increment(0);
        metrics::gauge!(metric::REQUESTS_IN_FLIGHT, "network" => network).increment(0.0);
        let counts = Arc::new(service::Counts::default());
        served.push(service::Network {
            name: net.name.clone(),
            store: store.clone(),
            counts: counts.clone(),
        });
        let made = until_reachable(&config, &shutdown, &net.name, || {
            provision_network(&js, &config, &net.name, config.provision)
        })
        .await?;
        let Some(consumer) = made else {
            return Ok(());
        };
        let ctx = Arc::new(handle::Context {
            client: client.clone(),
            js: js.clone(),
            network: net.name.clone(),
            instance: config.instance.clone(),
            zone: config.zone.clone(),
            api_prefix: api_prefix.clone(),
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
            counts,
            abandon: abandon.clone(),
            streams: streams.clone(),
        });
        let heal = worker::Heal {
            stream: config.stream.clone(),
            consumer: config.consumer.clone(),
            provision: config.provision,
            status: health.component(format!("pull {}", net.name), "starting"),
        };
        let settings = worker::PullSettings {
            // Pulled ahead, a request waits for a slot as a small message (and says it is in
            // progress): the link stays full without more images read at once.
            limit: config.concurrency + config.pull_ahead,
            expires: config.pull_expires,
            ack_wait: config.consumer.ack_wait,
            sized_for: config.pull_ahead_sized.then_some(config.concurrency),
        };
        let (slots, tracker, shutdown) = (slots.clone(), tracker.clone(), shutdown.clone());
        loops.push(supervisor.spawn(format!("pull {}", net.name), move || {
            let run = worker::run(
                ctx.clone(),
                consumer.clone(),
                settings,
                heal.clone(),
                slots.clone(),
                tracker.clone(),
                shutdown.clone(),
            );
            async move {
                run.await;
                Ok::<(), std::convert::Infallible>(())
            }
        }));
    }
    let body = bytes::Bytes::from(serde_json::to_vec(&info).expect("ResolverInfo serialises"));
    for net in &config.networks {
        let (client, network, body) = (client.clone(), net.name.clone(), body.clone());
        let (health, shutdown) = (health.clone(), shutdown.clone());
        loops.push(supervisor.spawn(format!("ping {}", net.name), move || {
            ping::serve(
                client.clone(),
                network.clone(),
                body.clone(),
                health.clone(),
                shutdown.clone(),
            )
        }));
    }
    {
        // Listed by `nats micro ls` while it runs; registered again if its task ends early.
        let mut registration = Registration::new(
            RESOLVER_SERVICE,
            env!("CARGO_PKG_VERSION"),
            "Reads images from a network's store and answers the gateways' requests",
            &config.instance,
            &info.networks,
        );
        registration
            .metadata
            .insert("max_image_bytes".into(), max_image_bytes.to_string());
        registration
            .metadata
            .insert("max_inline_bytes".into(), max_inline_bytes.to_string());
        let (client, shutdown) = (client.clone(), shutdown.clone());
        loops.push(supervisor.spawn("service", move || {
            service::serve(
                client.clone(),
                registration.clone(),
                served.clone(),
                shutdown.clone(),
            )
        }));
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
            "grace period over with requests still in flight; giving them back to the stream"
        );
        abandon.cancel();
        let _ = tokio::time::timeout(ABANDON_TIMEOUT, tracker.wait()).await;
    }
    // Replies and acks of the last requests are still in the client's buffer; a flush waits
    // for a reconnect that may never come, so it is bounded.
    if tokio::time::timeout(FINAL_FLUSH_TIMEOUT, client.flush())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?FINAL_FLUSH_TIMEOUT, "the last replies and acks could not be flushed; JetStream will redeliver what was not acked");
    }
    // Drained, the server drops this connection's subscriptions (pings, stats, service verbs)
    // at once instead of when it notices the socket is gone.
    if tokio::time::timeout(DRAIN_TIMEOUT, client.drain())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "draining the NATS connection timed out");
    }
    if let Some(http) = http {
        let _ = http.await;
    }
    tracing::info!("resolver stopped");
    Ok(())
}
