//! The Prometheus recorder both binaries install: histograms of seconds and of bytes get
//! buckets (so they render as `_bucket` series Prometheus can aggregate across replicas, not
//! as per-process summaries). Every metric name is in `docs/OPERATIONS.md`.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of `*_seconds` histograms: 1 ms to 2 minutes.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The builder with imgfetch's buckets; tests build a recorder from it without installing it.
pub fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
}

/// Installs the recorder as the process's global one and returns what renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    builder()?.install_recorder()
}

/// Counts one in a gauge while it lives: an open socket, a request in flight.
pub struct Held(metrics::Gauge);

impl Held {
    /// Adds one to `gauge` until the returned value is dropped.
    pub fn new(gauge: metrics::Gauge) -> Held {
        gauge.increment(1.0);
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}
