//! The test process's own Prometheus recorder, so that a test can wait for something the
//! gateway or the resolver counts (a dropped reply, a dead letter) instead of sleeping. The
//! gateways and resolvers of a test binary run in its process and count into this recorder.
//!
//! Counters are process-wide: tests of one binary that run at once add to the same unlabelled
//! series. Wait for an increase, never for an exact value, and use labels (a network of the
//! test's own) where the series has them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The recorder, installed by the first call in this process; call it before anything is
/// counted (at the start of the test) so that nothing is missed.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("no other recorder in this test binary");
        handle
    })
}

/// The sum of counter `name` over the series whose labels include every `label="value"` of
/// `labels`; 0 when never counted.
pub fn total(name: &str, labels: &[(&str, &str)]) -> u64 {
    let prefix_bare = format!("{name} ");
    let prefix_labelled = format!("{name}{{");
    recorder()
        .render()
        .lines()
        .filter(|l| l.starts_with(&prefix_bare) || l.starts_with(&prefix_labelled))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
