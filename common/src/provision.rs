//! Creating, or only verifying, the JetStream objects imgfetch runs on.
//!
//! One stream (work-queue retention) captures two subjects for every network some resolver has
//! registered: `imgfetch.gwreq.<network>`, the gateways', and `imgfetch.req.<network>`, the hand
//! publishers' (docs/SECURITY.md, provenance). One durable pull consumer per network, filtering
//! on both, is shared by all of that network's resolvers. A network is *known* exactly when the
//! stream captures its subjects, so a request for any other network is never stored.
//!
//! Provisioning is idempotent and safe when many replicas start at once: the subject list is
//! updated read-modify-write, and each replica re-reads until it sees its own subject. Only a
//! lost race (the stream created or deleted by someone else in between) is retried; any other
//! refusal (a permissions violation shows as a timeout or "no responders") is returned with its
//! cause.
//!
//! The stream's replica count is set when it is created and never changed here: a stream that
//! exists with another count is logged, and an operator decides.
//!
//! A second stream (limits retention) keeps the dead letters: copies of requests that ended
//! without an answer on `imgfetch.dlq.<network>`, and the server's max-deliveries advisories
//! about the request stream, read by one durable consumer all resolvers share (see
//! [`ensure_dead_letters`] and `docs/RELIABILITY.md`).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{
    self, consumer,
    context::{CreateStreamErrorKind, GetStreamErrorKind},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    ErrorCode as JsCode,
};

use crate::protocol::{
    consumer_name, gateway_request_subject, max_deliveries_advisories, request_origin,
    request_subject, Origin, DLQ_CONSUMER, DLQ_PREFIX,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The stream's limits. Discard-new makes a full queue refuse work loudly instead of dropping
/// old work silently.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// Most requests the queue holds.
    pub max_messages: i64,
    /// Most bytes the queue holds.
    pub max_bytes: i64,
    /// Oldest a waiting request may become before the server drops it.
    pub max_age: Duration,
    /// Window in which a re-published id is recognised as a duplicate.
    pub duplicate_window: Duration,
    /// Largest request message accepted, headers included.
    pub max_message_size: i32,
    /// Replicas in a clustered JetStream.
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            name: crate::protocol::DEFAULT_STREAM.to_owned(),
            max_messages: 100_000,
            max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(120),
            max_message_size: 64 * 1024,
            replicas: 1,
        }
    }
}

impl StreamSettings {
    fn config(&self, subjects: Vec<String>) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects,
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            max_message_size: self.max_message_size,
            num_replicas: self.replicas,
            description: Some("imgfetch pending image requests".to_owned()),
            ..Default::default()
        }
    }
}

/// How each network's shared consumer redelivers.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerSettings {
    /// How long a resolver may hold a request before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries after which the server stops redelivering; a safety net behind the resolver's
    /// own retry limit.
    pub max_deliver: i64,
    /// Requests in flight across all resolvers of the network.
    pub max_ack_pending: i64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            max_ack_pending: 1000,
        }
    }
}

/// Why the stream or a consumer could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The stream exists but is not a work queue; it cannot be converted in place.
    #[error("stream {stream:?} has {found:?} retention; imgfetch needs work-queue retention")]
    WrongRetention {
        /// Stream name.
        stream: String,
        /// The retention it has.
        found: RetentionPolicy,
    },
    /// Provisioning is off and the stream does not exist.
    #[error(
        "stream {0:?} does not exist (provisioning is off: create it, or drop --no-provision)"
    )]
    MissingStream(String),
    /// Provisioning is off and the stream does not capture a network's subject.
    #[error("stream {stream:?} does not capture {subject} (provisioning is off)")]
    MissingSubject {
        /// Stream name.
        stream: String,
        /// The missing subjects, each quoted.
        subject: String,
    },
    /// Provisioning is off and a network's consumer does not exist.
    #[error("consumer {consumer:?} on stream {stream:?} does not exist (provisioning is off)")]
    MissingConsumer {
        /// Stream name.
        stream: String,
        /// Consumer name.
        consumer: String,
    },
    /// Provisioning is off and a network's consumer does not deliver both of its subjects (it
    /// was made for an older release, which filtered on the hand publishers' subject alone).
    #[error("consumer {consumer:?} on stream {stream:?} does not filter on {missing} (provisioning is off: update its filter subjects to {wanted})")]
    ConsumerFilter {
        /// Stream name.
        stream: String,
        /// Consumer name.
        consumer: String,
        /// The subjects it misses.
        missing: String,
        /// What it should filter on.
        wanted: String,
    },
    /// Other replicas kept changing the stream while this one tried to add its subject.
    #[error("could not add {subject} to stream {stream:?} after {attempts} attempts")]
    Contention {
        /// Stream name.
        stream: String,
        /// The subject being added.
        subject: String,
        /// How many times it tried.
        attempts: u32,
    },
    /// A JetStream API call failed.
    #[error("JetStream request failed while {action}: {source}")]
    JetStream {
        /// What was being done.
        action: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

fn js_err(action: &'static str) -> impl FnOnce(BoxError) -> ProvisionError {
    move |source| ProvisionError::JetStream { action, source }
}

/// Looks the stream up; `Ok(None)` when it does not exist.
pub async fn find_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Stream>, ProvisionError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == JsCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(js_err("looking up the stream")(err.into())),
        },
    }
}

/// The networks a stream's subjects cover for requests of `origin`: for gateways, those whose
/// `imgfetch.gwreq.<network>` it captures; for hand publishers, `imgfetch.req.<network>`.
/// Resolvers add both at once; they differ only while resolvers of an older release, which add
/// the hand subject alone, still run.
pub fn networks_of(config: &stream::Config, origin: Origin) -> BTreeSet<String> {
    config
        .subjects
        .iter()
        .filter_map(|s| request_origin(s))
        .filter(|(o, n)| *o == origin && crate::validate::network(n).is_ok())
        .map(|(_, n)| n.to_owned())
        .collect()
}

/// `"a", "b"`: subjects for an error message.
fn quoted(subjects: &[String]) -> String {
    subjects
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The subjects of one network's requests: the gateways', then the hand publishers'.
pub fn network_subjects(network: &str) -> [String; 2] {
    [gateway_request_subject(network), request_subject(network)]
}

/// Makes sure the stream exists and captures `network`'s subjects (both of them, see
/// [`network_subjects`]), creating or extending it when `create` is true, verifying only when it
/// is false.
pub async fn ensure_network_subject(
    js: &jetstream::Context,
    settings: &StreamSettings,
    network: &str,
    create: bool,
) -> Result<stream::Stream, ProvisionError> {
    const ATTEMPTS: u32 = 20;
    let subjects = network_subjects(network);
    for attempt in 0..ATTEMPTS {
        let Some(mut stream) = find_stream(js, &settings.name).await? else {
            if !create {
                return Err(ProvisionError::MissingStream(settings.name.clone()));
            }
            // Losing a creation race is fine: the next pass finds the winner's stream.
            match js.create_stream(settings.config(subjects.to_vec())).await {
                Ok(_) => tracing::info!(
                    stream = settings.name,
                    replicas = settings.replicas,
                    "created the stream"
                ),
                Err(err) if matches!(err.kind(), CreateStreamErrorKind::JetStream(e) if e.error_code() == JsCode::STREAM_NAME_EXIST) =>
                {
                    tracing::debug!(%err, attempt, "stream creation raced; re-reading");
                }
                Err(err) => return Err(js_err("creating the stream")(err.into())),
            }
            continue;
        };
        let info = stream
            .info()
            .await
            .map_err(|e| js_err("reading the stream")(e.into()))?
            .clone();
        if info.config.retention != RetentionPolicy::WorkQueue {
            return Err(ProvisionError::WrongRetention {
                stream: settings.name.clone(),
                found: info.config.retention,
            });
        }
        let missing: Vec<String> = subjects
            .iter()
            .filter(|s| !info.config.subjects.contains(s))
            .cloned()
            .collect();
        if missing.is_empty() {
            if info.config.num_replicas != settings.replicas {
                tracing::warn!(
                    stream = settings.name,
                    found = info.config.num_replicas,
                    configured = settings.replicas,
                    "the stream exists with another replica count; it is left as it is"
                );
            }
            return Ok(stream);
        }
        if !create {
            return Err(ProvisionError::MissingSubject {
                stream: settings.name.clone(),
                subject: quoted(&missing),
            });
        }
        let mut config = info.config;
        config.subjects.extend(missing);
        match js.update_stream(config).await {
            Ok(_) => {}
            // Deleted since it was read: the next pass creates it.
            Err(err) if err.kind() == CreateStreamErrorKind::NotFound => {
                tracing::debug!(%err, attempt, "stream update raced; re-reading");
            }
            Err(err) => {
                return Err(js_err("adding the network's subject to the stream")(
                    err.into(),
                ))
            }
        }
        // Back off a little so that replicas racing on the update spread out.
        tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt + 1))).await;
    }
    Err(ProvisionError::Contention {
        stream: settings.name.clone(),
        subject: quoted(&subjects),
        attempts: ATTEMPTS,
    })
}

/// Makes sure `network`'s stream subject and shared durable consumer exist.
pub async fn ensure_network(
    js: &jetstream::Context,
    stream_settings: &StreamSettings,
    consumer_settings: &ConsumerSettings,
    network: &str,
    create: bool,
) -> Result<consumer::PullConsumer, ProvisionError> {
    let stream = ensure_network_subject(js, stream_settings, network, create).await?;
    let name = consumer_name(network);
    if !create {
        let consumer: consumer::PullConsumer =
            stream
                .get_consumer(&name)
                .await
                .map_err(|_| ProvisionError::MissingConsumer {
                    stream: stream_settings.name.clone(),
                    consumer: name.clone(),
                })?;
        let config = &consumer.cached_info().config;
        let wanted = network_subjects(network);
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|s| config.filter_subject != **s && !config.filter_subjects.contains(s))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(ProvisionError::ConsumerFilter {
                stream: stream_settings.name.clone(),
                consumer: name,
                missing: missing.join(", "),
                wanted: wanted.join(", "),
            });
        }
        return Ok(consumer);
    }
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("imgfetch resolvers of network {network}")),
        filter_subjects: network_subjects(network).to_vec(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: consumer_settings.ack_wait,
        max_deliver: consumer_settings.max_deliver,
        max_ack_pending: consumer_settings.max_ack_pending,
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| js_err("creating the network's consumer")(e.into()))
}

/// The dead-letter stream's limits. Old dead letters give way to new ones (discard-old): the
/// stream is a record for operators, not a queue that may refuse.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetterSettings {
    /// Stream name.
    pub name: String,
    /// How long a dead letter is kept.
    pub max_age: Duration,
    /// Most bytes the stream holds.
    pub max_bytes: i64,
    /// Window in which a copy of the same request is recognised as a duplicate; longer than
    /// the advisory consumer's ack wait, so a copy repeated after a crash is dropped.
    pub duplicate_window: Duration,
    /// How long a resolver may work on one advisory before another one gets it.
    pub ack_wait: Duration,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        DeadLetterSettings {
            name: crate::protocol::DEFAULT_DLQ_STREAM.to_owned(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 256 * 1024 * 1024,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl DeadLetterSettings {
    /// The stream's configuration: it captures the copies and the advisories about
    /// `requests` (the request stream), with as many replicas.
    fn config(&self, requests: &StreamSettings) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: dead_letter_subjects(&requests.name),
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            num_replicas: requests.replicas,
            description: Some("imgfetch dead letters and max-deliveries advisories".to_owned()),
            ..Default::default()
        }
    }
}

/// What the dead-letter stream captures: the copies, and the advisories about `requests`.
pub fn dead_letter_subjects(requests: &str) -> Vec<String> {
    vec![
        format!("{DLQ_PREFIX}.>"),
        max_deliveries_advisories(requests),
    ]
}

/// Makes sure the dead-letter stream captures the copies and the advisories of the request
/// stream, with the configured age limit, and returns the advisory consumer all resolvers
/// share. Creates or updates when `create` is true, verifies only when it is false.
pub async fn ensure_dead_letters(
    js: &jetstream::Context,
    settings: &DeadLetterSettings,
    requests: &StreamSettings,
    create: bool,
) -> Result<consumer::PullConsumer, ProvisionError> {
    let wanted = settings.config(requests);
    let stream = match find_stream(js, &settings.name).await? {
        None if !create => return Err(ProvisionError::MissingStream(settings.name.clone())),
        // Replicas racing to create it send the same configuration, which the server accepts
        // as a no-op.
        None => js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| js_err("creating the dead-letter stream")(e.into()))?,
        Some(mut stream) => {
            let mut config = stream
                .info()
                .await
                .map_err(|e| js_err("reading the dead-letter stream")(e.into()))?
                .config
                .clone();
            let missing: Vec<String> = wanted
                .subjects
                .iter()
                .filter(|s| !config.subjects.contains(s))
                .cloned()
                .collect();
            if let (false, Some(subject)) = (create, missing.first()) {
                return Err(ProvisionError::MissingSubject {
                    stream: settings.name.clone(),
                    subject: subject.clone(),
                });
            }
            if create && (!missing.is_empty() || config.max_age != settings.max_age) {
                config.subjects.extend(missing);
                config.max_age = settings.max_age;
                js.update_stream(config)
                    .await
                    .map_err(|e| js_err("updating the dead-letter stream")(e.into()))?;
            }
            stream
        }
    };
    if !create {
        return stream.get_consumer(DLQ_CONSUMER).await.map_err(|_| {
            ProvisionError::MissingConsumer {
                stream: settings.name.clone(),
                consumer: DLQ_CONSUMER.to_owned(),
            }
        });
    }
    let config = consumer::pull::Config {
        durable_name: Some(DLQ_CONSUMER.to_owned()),
        description: Some("imgfetch resolvers: requests that ran out of deliveries".to_owned()),
        filter_subject: max_deliveries_advisories(&requests.name),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // An advisory is retried until it is handled: it stands for a requester still waiting.
        max_deliver: -1,
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| js_err("creating the dead-letter consumer")(e.into()))
}
