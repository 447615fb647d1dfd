//! The imgfetch gateway: the client-facing side. It takes image requests over websocket and
//! HTTP, puts them on the JetStream queue with a callback subject of its own, and relays each
//! resolver's answer to the client that asked.
//!
//! # Layout
//!
//! Folders by job; dependencies run one way, top to bottom (`scripts/module-graph.py` checks
//! that no two modules import each other):
//!
//! - [`api`]: what clients talk to: HTTP routes and status codes, the websocket session, the
//!   `imgfetch.fetch` micro endpoint, the web viewer, the accept loop.
//! - [`queue`]: requests through JetStream and back: the dispatcher and its reply router, the
//!   directory of networks, the sentinel for requests no stream captured, and replay by id
//!   (with takeover from a gateway that is gone).
//! - [`results`]: outcomes recorded by id in a key-value bucket: the record format, the bucket's
//!   compare-and-set writes, liveness.
//! - [`image`]: an image on its way to a client: the outcome of a reply, and receiving a
//!   chunked transfer within the buffer budget.
//! - [`archive`]: writes each image under a path chosen from its information ([`archive::template`]).
//! - [`auth`]: bearer tokens, the networks each may fetch, and its share of in-flight requests.
//! - [`config`]: flags, environment and TOML file, resolved into a [`Config`].
//! - [`failure`]: the one error type a request can end in.
//! - [`metric`]: the names of the Prometheus series, each declared once.
//! - [`nats_identity`]: `--install-nats-identity`, the copy of this replica's own NATS
//!   credentials that the Helm chart's init container runs.
//!
//! The reply router, the sentinel and the fetch service are supervised (`imgfetch_common::supervise`): one that
//! ends early is restarted with a new subscription, and `/readyz` is false meanwhile.
//!
//! [`run`] takes a bound listener, serves until shutdown, then drains within the grace period.

pub mod api;
pub mod archive;
pub mod auth;
pub mod config;
pub mod failure;
pub mod image;
pub mod metric;
pub mod nats_identity;
pub mod queue;
pub mod results;

use std::sync::Arc;

use api::{fetch, http, serve, ws};
use queue::{dispatch, sentinel};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use imgfetch_common::health::Health;
use imgfetch_common::micro::{Registration, GATEWAY_SERVICE};
use imgfetch_common::supervise::Supervisor;

/// Longest the last flush at shutdown may wait.
const FINAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Why the gateway could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// NATS could not be reached, refused the credentials, or failed TLS.
    #[error(transparent)]
    Connect(#[from] imgfetch_common::connect::ConnectError),
    /// Subscribing to callbacks failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The sentinel could not subscribe to requests.
    #[error(transparent)]
    Sentinel(#[from] sentinel::SentinelError),
    /// The archive could not be set up.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// The results bucket could not be opened.
    #[error(transparent)]
    Results(#[from] results::ResultsError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves on `listener` until `shutdown` fires, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let listener = Arc::new(listener);
    let limits = serve::Limits {
        max_connections: config.clients.max_connections,
        header_read_timeout: config.clients.header_read_timeout,
    };
    // Until NATS is reached and everything is set up, the port answers probes: alive, not
    // ready, and every other request `unavailable`. It stops whichever way `run` returns.
    let starting = CancellationToken::new();
    let _starting_stop = starting.clone().drop_guard();
    let starting_server = tokio::spawn(serve::serve(
        listener.clone(),
        http::starting_router(),
        limits,
        starting.clone(),
    ));
    let archive = match &config.archive {
        Some(spec) => Some(Arc::new(archive::Archive::open(spec).await?)),
        None => None,
    };
    // Its own inbox, which only this instance's user may read (docs/SECURITY.md).
    let inbox = imgfetch_common::protocol::gateway_inbox_prefix(&config.instance);
    let connecting = config.nats_auth.connect_retrying(
        &config.nats_url,
        format!("imgfetch-gateway {}", config.instance),
        &inbox,
        &shutdown,
    );
    let Some(client) = connecting.await? else {
        tracing::info!("stopped before NATS could be reached");
        return Ok(());
    };
    let draining = shutdown.child_token();
    // The gauges exist from the start, at zero, before the first client.
    metrics::gauge!(metric::REQUESTS_IN_FLIGHT).increment(0.0);
    metrics::gauge!(metric::WEBSOCKETS).increment(0.0);
    let health = Health::new();
    // Tasks stop when draining starts; the reply router only when the dispatcher closes, last.
    let supervisor = Supervisor::new(
        health.clone(),
        metric::TASK_RESTARTS_TOTAL,
        draining.clone(),
    );
    // Stopped, or abandoned (the task aborted): the gateway stops answering on its liveness
    // subject and leaves NATS, so that other gateways take over what it held.
    let alive = CancellationToken::new();
    let _leave = Leave {
        alive: alive.clone(),
        client: client.clone(),
    };
    let results = results::Results::open(
        client.clone(),
        config.instance.clone(),
        &config.results,
        archive.clone(),
        config.publish_timeout,
    )
    .await?;
    {
        // Answered until the gateway stops or is abandoned, draining included: other gateways
        // take over its pending requests only once it is gone.
        let (client, instance, timeout) = (
            client.clone(),
            config.instance.clone(),
            config.publish_timeout,
        );
        let incarnation = results.incarnation().to_owned();
        let stop = alive.clone();
        supervisor.until(alive.clone()).spawn("liveness", move || {
            results::answer_liveness(
                client.clone(),
                instance.clone(),
                incarnation.clone(),
                timeout,
                stop.clone(),
            )
        });
    }
    let dispatcher = dispatch::Dispatcher::start(
        client.clone(),
        archive.clone(),
        config.instance.clone(),
        config.stream.clone(),
        (config.request_timeout, config.publish_timeout),
        config.streams,
        draining.clone(),
        Some(results.clone()),
        &supervisor,
    )
    .await?;
    sentinel::start(
        client.clone(),
        dispatcher.clone(),
        draining.clone(),
        &supervisor,
    )
    .await?;
    let sessions = tokio_util::task::TaskTracker::new();
    let http_slots = Arc::new(Semaphore::new(config.max_http_in_flight));
    {
        // Listed by `nats micro ls`; answers `imgfetch.fetch` until draining, and what it
        // accepted is answered within the grace period, like a websocket session's requests.
        let fetch = fetch::FetchService {
            registration: Registration::new(
                GATEWAY_SERVICE,
                env!("CARGO_PKG_VERSION"),
                "Fetches images from any network: HTTP, websocket, and imgfetch.fetch",
                &config.instance,
                // Every network the stream captures; the directory learns them as asked.
                &["*".to_owned()],
            ),
            dispatcher: dispatcher.clone(),
            slots: http_slots.clone(),
            answering: sessions.clone(),
        };
        let (client, draining) = (client.clone(), draining.clone());
        supervisor.spawn("fetch service", move || {
            fetch.clone().run(client.clone(), draining.clone())
        });
    }

    let state = http::AppState {
        dispatcher: dispatcher.clone(),
        results,
        websockets: Arc::new(Semaphore::new(config.max_websockets)),
        http_slots,
        sessions,
        limits: ws::Limits {
            max_in_flight: config.max_in_flight_per_socket,
            send_timeout: config.send_timeout,
            idle_timeout: config.clients.ws_idle_timeout,
        },
        max_client_frame_bytes: config.max_client_frame_bytes,
        draining: draining.clone(),
        client: client.clone(),
        health,
        metrics: config.metrics.clone(),
        auth: match &config.clients.tokens {
            Some(tokens) => {
                if tokens.is_empty() {
                    tracing::warn!("the tokens file lists no tokens: every client is refused");
                }
                auth::Auth::with_tokens(tokens, config.clients.max_in_flight_per_token)
            }
            None => auth::Auth::open(),
        },
    };
    if let Some(path) = &config.clients.tokens_file {
        tokio::spawn(auth::watch(
            state.auth.clone(),
            path.clone(),
            config.clients.tokens_reload_interval,
            shutdown.clone(),
        ));
    }
    let sessions = state.sessions.clone();
    let addr = listener.local_addr()?;
    starting.cancel();
    if let Ok(Err(err)) = starting_server.await {
        tracing::warn!(%err, "the start-up listener ended with an error");
    }
    tracing::info!(%addr, instance = config.instance, "gateway listening");
    let server = tokio::spawn(serve::serve(
        listener,
        http::router(state),
        limits,
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    // Plain HTTP requests drain with the server; websocket sessions are tracked apart.
    let drain = async {
        let served = server.await;
        sessions.close();
        sessions.wait().await;
        served
    };
    // One grace period for everything: sessions, then archive writes.
    let grace_ends = tokio::time::Instant::now() + config.grace;
    match tokio::time::timeout_at(grace_ends, drain).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => return Err(err.into()),
        Ok(Err(join)) => tracing::error!(%join, "server task failed"),
        Err(_) => tracing::warn!(
            in_flight = dispatcher.in_flight(),
            "grace period over; closing remaining connections"
        ),
    }
    if let Some(archive) = &archive {
        if tokio::time::timeout_at(grace_ends, archive.drain())
            .await
            .is_err()
        {
            tracing::warn!("grace period over with archive writes still running");
        }
    }
    dispatcher.close();
    // A flush waits for a reconnect that may never come.
    if tokio::time::timeout(FINAL_FLUSH_TIMEOUT, client.flush())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?FINAL_FLUSH_TIMEOUT, "the last messages could not be flushed");
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Fires when `run` returns or is dropped: stops the liveness answers and drains the NATS
/// connection, which the server task's clones would otherwise keep open.
struct Leave {
    alive: CancellationToken,
    client: async_nats::Client,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.alive.cancel();
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), client.drain()).await;
            });
        }
    }
}
