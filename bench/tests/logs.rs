//! Every line the real binaries log about a request carries its id, in text and in JSON.

use std::time::Duration;

use imgfetch_bench::procs::zone_pipeline;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::{eventually, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_s_log_lines_carry_its_id() {
    let nats = NatsServer::start();
    let images = tempfile::tempdir().unwrap();
    std::fs::write(images.path().join("a.jpg"), sample("harbor/quay-east.jpg")).unwrap();
    // A sidecar that is not JSON: the resolver warns while handling the request.
    std::fs::write(images.path().join("a.jpg.json"), "not json").unwrap();
    let logs = tempfile::tempdir().unwrap();
    let json_logs = ["--log-format".to_owned(), "json".to_owned()];
    let pipeline = zone_pipeline(
        &nats.url(),
        images.path(),
        logs.path(),
        false,
        &[],
        &json_logs,
    )
    .await
    .unwrap();

    let r = reqwest::Client::new()
        .get(format!("{}/v1/images/zone/a.jpg", pipeline.base))
        .header("x-request-id", "log-id-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let line = eventually(
        "the resolver's warning",
        Duration::from_secs(10),
        || async {
            pipeline
                .resolver
                .log()
                .lines()
                .find(|l| l.contains("sidecar is not a JSON object"))
                .map(str::to_owned)
        },
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(json["span"]["id"], "log-id-7", "{line}");
    assert_eq!(json["span"]["network"], "zone", "{line}");
}
