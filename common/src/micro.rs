//! Service discovery: the gateway and the resolver register with the NATS micro protocol
//! (ADR-32), so that `nats micro ls`, `nats micro info` and `nats micro stats` list every
//! running instance, its version, its networks, and each endpoint's request and error counts.
//!
//! A [`Registration`] is one instance's entry; [`Registered`] stops it when dropped (an
//! instance restarted by its supervisor leaves no stale twin answering `$SRV.PING`).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::service::{Service, ServiceExt};
use futures::FutureExt;

/// Longest registering (three subscriptions per verb) or adding an endpoint may take.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// The service name of the gateways.
pub const GATEWAY_SERVICE: &str = "imgfetch-gateway";
/// The service name of the resolvers.
pub const RESOLVER_SERVICE: &str = "imgfetch-resolver";

/// Metadata key naming the instance (its `--instance`).
pub const META_INSTANCE: &str = "instance";
/// Metadata key listing the networks an instance serves, comma-separated.
pub const META_NETWORKS: &str = "networks";

/// Why an instance could not register.
#[derive(Debug, thiserror::Error)]
pub enum MicroError {
    /// The client refused the registration (a bad name or version, or a failed subscribe).
    #[error("cannot register service {name:?}: {source}")]
    Register {
        /// The service name.
        name: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// Registering did not finish in time.
    #[error("registering service {name:?} timed out after {REGISTER_TIMEOUT:?}")]
    Timeout {
        /// The service name.
        name: String,
    },
}

/// One instance's entry in the service directory.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The service name, shared by all instances of one kind.
    pub name: &'static str,
    /// The instance's version (semver): the crate's `CARGO_PKG_VERSION`.
    pub version: &'static str,
    /// What the service does, for `nats micro info`.
    pub description: &'static str,
    /// Queue group of the service's endpoints.
    pub queue_group: &'static str,
    /// Free-form facts about the instance: [`META_INSTANCE`], [`META_NETWORKS`], limits.
    pub metadata: HashMap<String, String>,
}

impl Registration {
    /// An entry for `instance` serving `networks`.
    pub fn new(
        name: &'static str,
        version: &'static str,
        description: &'static str,
        instance: &str,
        networks: &[String],
    ) -> Registration {
        let metadata = HashMap::from([
            (META_INSTANCE.to_owned(), instance.to_owned()),
            (META_NETWORKS.to_owned(), networks.join(",")),
        ]);
        Registration {
            name,
            version,
            description,
            queue_group: name,
            metadata,
        }
    }

    /// Registers the instance; it answers `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (and the
    /// forms naming the service, and its id) until the returned handle is dropped.
    pub async fn register(&self, client: &async_nats::Client) -> Result<Registered, MicroError> {
        self.start(client.service_builder()).await
    }

    /// [`Registration::register`], with `data` filling each endpoint's `data` in `$SRV.STATS`
    /// answers from the endpoint's name (counts the micro protocol cannot see, such as work
    /// that arrives from a stream rather than as requests).
    pub async fn register_with_data<F>(
        &self,
        client: &async_nats::Client,
        mut data: F,
    ) -> Result<Registered, MicroError>
    where
        F: FnMut(&str) -> serde_json::Value + Send + Sync + 'static,
    {
        let builder = client
            .service_builder()
            .stats_handler(move |endpoint, _stats| data(&endpoint));
        self.start(builder).await
    }

    async fn start(
        &self,
        builder: async_nats::service::ServiceBuilder,
    ) -> Result<Registered, MicroError> {
        let start = builder
            .description(self.description)
            .metadata(self.metadata.clone())
            .queue_group(self.queue_group)
            .start(self.name, self.version);
        match tokio::time::timeout(REGISTER_TIMEOUT, start).await {
            Ok(Ok(service)) => Ok(Registered(Some(service))),
            Ok(Err(source)) => Err(MicroError::Register {
                name: self.name.to_owned(),
                source,
            }),
            Err(_) => Err(MicroError::Timeout {
                name: self.name.to_owned(),
            }),
        }
    }
}

/// A registered instance; dropping it stops answering the discovery verbs.
#[derive(Debug)]
pub struct Registered(Option<Service>);

impl Registered {
    /// The service, to add endpoints to.
    pub fn service(&self) -> &Service {
        self.0.as_ref().expect("a registered service until dropped")
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(service) = self.0.take() {
            // `stop` only signals the endpoints and aborts the verb task: it never waits.
            let _ = service.stop().now_or_never();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_the_instance_and_its_networks() {
        let reg = Registration::new(
            RESOLVER_SERVICE,
            "0.1.0",
            "test",
            "r1",
            &["harbor".to_owned(), "plant".to_owned()],
        );
        assert_eq!(reg.metadata[META_INSTANCE], "r1");
        assert_eq!(reg.metadata[META_NETWORKS], "harbor,plant");
        assert_eq!(reg.queue_group, RESOLVER_SERVICE);
    }
}
