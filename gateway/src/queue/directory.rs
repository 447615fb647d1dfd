//! Which networks exist and whether anyone serves them, learned from NATS alone.
//!
//! - A network *exists* when the stream captures `imgfetch.gwreq.<network>`, the gateways'
//!   request subject: resolvers add it (with the hand publishers' `imgfetch.req.<network>`) when
//!   they provision, so a new zone needs no gateway change. The sentinel asks about the hand
//!   publishers' subject instead ([`Directory::exists_for`]).
//! - A network is *served* when a ping on `imgfetch.ping.<network>` gets an answer; with no
//!   resolver subscribed, NATS says "no responders" at once.
//!
//! Both answers are cached briefly; a miss is re-checked against the server before a request is
//! refused, so a zone that just appeared is never turned away for long.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use imgfetch_common::protocol::{ping_subject, ErrorCode, Origin};
use imgfetch_common::provision;

use crate::failure::Failure;

/// How long a fetched network list is trusted for a hit.
const NETWORKS_TTL: Duration = Duration::from_secs(5);
/// How long a ping answer is trusted.
const ALIVE_TTL: Duration = Duration::from_secs(2);
/// Longest reading the stream may take.
const JS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a ping answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The last stream read.
#[derive(Debug, Default)]
struct Known {
    /// Networks whose gateway subject the stream captures.
    networks: BTreeSet<String>,
    /// Networks whose hand publishers' subject the stream captures.
    hand: BTreeSet<String>,
    max_message_size: Option<i32>,
    fetched: Option<Instant>,
}

impl Known {
    fn of(&self, origin: Origin) -> &BTreeSet<String> {
        match origin {
            Origin::Gateway => &self.networks,
            Origin::Hand => &self.hand,
        }
    }
}

/// The gateway's view of the networks.
#[derive(Debug)]
pub struct Directory {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    networks: tokio::sync::Mutex<Known>,
    alive: Mutex<HashMap<String, Instant>>,
}

impl Directory {
    /// A directory over `stream`.
    pub fn new(client: async_nats::Client, js: jetstream::Context, stream: String) -> Directory {
        Directory {
            client,
            js,
            stream,
            networks: tokio::sync::Mutex::new(Known::default()),
            alive: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the stream captures `network`'s gateway subject; re-reads the stream on a miss.
    pub async fn exists(&self, network: &str) -> Result<bool, Failure> {
        self.exists_for(Origin::Gateway, network).await
    }

    /// Whether the stream captures `network`'s subject for requests of `origin`; re-reads the
    /// stream on a miss.
    pub async fn exists_for(&self, origin: Origin, network: &str) -> Result<bool, Failure> {
        let asked = Instant::now();
        let mut known = self.networks.lock().await;
        let fresh = known.fetched.is_some_and(|t| t.elapsed() < NETWORKS_TTL);
        if fresh && known.of(origin).contains(network) {
            return Ok(true);
        }
        // Misses that waited on the lock while another caller re-read the stream share that
        // read, so a burst of unknown names costs one JetStream call, not one each.
        if known.fetched.is_none_or(|t| t < asked) {
            let fetched = tokio::time::timeout(JS_TIMEOUT, self.fetch())
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::new(
                        ErrorCode::Unavailable,
                        format!("reading the stream timed out after {JS_TIMEOUT:?}"),
                    ))
                });
            match fetched {
                Ok(fresh) => *known = fresh,
                Err(failure) => {
                    // Callers queued behind a failed read use what was known rather than each
                    // waiting for another failing read.
                    known.fetched = Some(Instant::now());
                    return Err(failure);
                }
            }
        }
        Ok(known.of(origin).contains(network))
    }

    /// Every network the stream captures (re-read when the last read is older than the cache
    /// lifetime), each with whether a resolver answers its ping right now. The pings go out
    /// together, so a listing takes one ping timeout at most.
    pub async fn list(&self) -> Result<Vec<(String, bool)>, Failure> {
        let names: Vec<String> = {
            let mut known = self.networks.lock().await;
            let fresh = known.fetched.is_some_and(|t| t.elapsed() < NETWORKS_TTL);
            if !fresh {
                *known = tokio::time::timeout(JS_TIMEOUT, self.fetch())
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::new(
                            ErrorCode::Unavailable,
                            format!("reading the stream timed out after {JS_TIMEOUT:?}"),
                        ))
                    })?;
            }
            known.networks.iter().cloned().collect()
        };
        let served = futures::future::join_all(names.iter().map(|n| self.served(n))).await;
        Ok(names.into_iter().zip(served).collect())
    }

    /// The largest request message the stream stores, as of the last read.
    pub async fn max_message_size(&self) -> Option<usize> {
        let known = self.networks.lock().await;
        known
            .max_message_size
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
    }

    async fn fetch(&self) -> Result<Known, Failure> {
        let stream = provision::find_stream(&self.js, &self.stream)
            .await
            .map_err(|e| {
                Failure::new(
                    ErrorCode::Unavailable,
                    format!("cannot reach JetStream: {e}"),
                )
            })?;
        let Some(mut stream) = stream else {
            return Ok(Known {
                fetched: Some(Instant::now()),
                ..Known::default()
            });
        };
        let info = stream.info().await.map_err(|e| {
            Failure::new(
                ErrorCode::Unavailable,
                format!("cannot read the stream: {e}"),
            )
        })?;
        Ok(Known {
            networks: provision::networks_of(&info.config, Origin::Gateway),
            hand: provision::networks_of(&info.config, Origin::Hand),
            max_message_size: Some(info.config.max_message_size),
            fetched: Some(Instant::now()),
        })
    }

    /// Whether some resolver answers for `network` right now.
    pub async fn served(&self, network: &str) -> bool {
        let recent = self
            .alive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(network)
            .is_some_and(|t| t.elapsed() < ALIVE_TTL);
        if recent {
            return true;
        }
        let ping = tokio::time::timeout(
            PING_TIMEOUT,
            self.client
                .request(ping_subject(network), bytes::Bytes::new()),
        )
        .await;
        let ok = matches!(ping, Ok(Ok(_)));
        if ok {
            self.alive
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(network.to_owned(), Instant::now());
        }
        ok
    }

    /// Refuses a request for a network that does not exist or that nobody serves.
    pub async fn admit(&self, network: &str) -> Result<(), Failure> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                "the gateway is not connected to NATS",
            ));
        }
        if !self.exists(network).await? {
            return Err(Failure::new(
                ErrorCode::UnknownNetwork,
                format!("no resolver has registered network {network:?}"),
            ));
        }
        if !self.served(network).await {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                format!("no resolver is serving network {network:?} right now"),
            ));
        }
        Ok(())
    }

    /// Whether the stream can be read: the readiness check.
    pub async fn stream_reachable(&self) -> bool {
        matches!(
            tokio::time::timeout(JS_TIMEOUT, provision::find_stream(&self.js, &self.stream)).await,
            Ok(Ok(Some(_)))
        )
    }
}
