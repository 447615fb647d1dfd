//! `/metrics` of the real binaries after real traffic, scraped as Prometheus would: the series
//! operators graph and alert on (docs/OPERATIONS.md), with values that match what was sent.

use std::time::Duration;

use imgfetch_bench::procs::zone_pipeline;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::{eventually, sample, write_large_image};

/// The value of the series `name` whose labels include all of `labels`, summed over the rest.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, number)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let has_all = labels
            .iter()
            .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        if has_all {
            *found.get_or_insert(0.0) += number.parse::<f64>().expect("a number");
        }
    }
    found
}

async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_expose_requests_latency_bytes_in_flight_and_sockets() {
    let nats = NatsServer::start();
    let images = tempfile::tempdir().unwrap();
    let small = sample("harbor/quay-east.jpg");
    std::fs::write(images.path().join("a.jpg"), &small).unwrap();
    // Over the inline limit (nats-server's 1 MB max_payload less 64 KiB): streamed.
    let big = 3 * 1024 * 1024;
    write_large_image(&images.path().join("big.jpg"), big, 5);
    let logs = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let resolver_args = ["--http-listen".to_owned(), admin.to_string()];
    let pipeline = zone_pipeline(
        &nats.url(),
        images.path(),
        logs.path(),
        true,
        &[],
        &resolver_args,
    )
    .await
    .unwrap();
    let gateway_metrics = format!("{}/metrics", pipeline.base);
    let resolver_metrics = format!("http://{admin}/metrics");

    // Before any request, the gauges and the per-network counters exist at zero.
    let fresh = scrape(&resolver_metrics).await;
    for name in [
        "imgfetch_resolver_requests_in_flight",
        "imgfetch_resolver_redeliveries_total",
        "imgfetch_resolver_image_bytes_total",
    ] {
        assert_eq!(
            value(&fresh, name, &[("network", "zone")]),
            Some(0.0),
            "{name}"
        );
    }

    let (ws, _) = tokio_tungstenite::connect_async(pipeline.base.replace("http", "ws") + "/v1/ws")
        .await
        .expect("websocket");
    for key in ["a.jpg", "a.jpg", "big.jpg", "missing.jpg"] {
        let r = reqwest::get(format!("{}/v1/images/zone/{key}", pipeline.base))
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        match key {
            "missing.jpg" => assert_eq!(status, 404),
            "big.jpg" => assert_eq!((status, body.len()), (200, big)),
            _ => assert_eq!((status, body.as_ref()), (200, small.as_slice())),
        }
    }

    let g = eventually("the gateway's counts", Duration::from_secs(10), || async {
        let text = scrape(&gateway_metrics).await;
        let ok = value(
            &text,
            "imgfetch_gateway_requests_total",
            &[("network", "zone"), ("status", "ok")],
        );
        (ok == Some(3.0)).then_some(text)
    })
    .await;
    let zone = [("network", "zone")];
    assert_eq!(
        value(
            &g,
            "imgfetch_gateway_requests_total",
            &[("network", "zone"), ("status", "not_found")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&g, "imgfetch_gateway_request_seconds_count", &zone),
        Some(4.0)
    );
    assert_eq!(
        value(
            &g,
            "imgfetch_gateway_request_seconds_bucket",
            &[("network", "zone"), ("le", "+Inf")]
        ),
        Some(4.0),
        "a histogram with buckets, not a summary"
    );
    assert!(value(&g, "imgfetch_gateway_request_seconds_sum", &zone).unwrap() > 0.0);
    assert_eq!(
        value(&g, "imgfetch_gateway_image_bytes_total", &zone),
        Some((2 * small.len() + big) as f64)
    );
    assert_eq!(
        value(&g, "imgfetch_gateway_requests_in_flight", &[]),
        Some(0.0)
    );
    assert_eq!(value(&g, "imgfetch_gateway_websockets", &[]), Some(1.0));
    let archived = eventually("the archive copies", Duration::from_secs(10), || async {
        let text = scrape(&gateway_metrics).await;
        (value(&text, "imgfetch_gateway_archived_total", &[]) == Some(3.0)).then_some(text)
    })
    .await;
    assert_eq!(
        value(&archived, "imgfetch_gateway_archive_failures_total", &[]),
        None
    );

    let r = eventually("the resolver's counts", Duration::from_secs(10), || async {
        let text = scrape(&resolver_metrics).await;
        let ok = value(
            &text,
            "imgfetch_resolver_replies_total",
            &[("network", "zone"), ("status", "ok")],
        );
        (ok == Some(3.0)).then_some(text)
    })
    .await;
    assert_eq!(
        value(
            &r,
            "imgfetch_resolver_replies_total",
            &[("network", "zone"), ("status", "not_found")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&r, "imgfetch_resolver_queue_wait_seconds_count", &zone),
        Some(4.0)
    );
    assert_eq!(
        value(
            &r,
            "imgfetch_resolver_queue_wait_seconds_bucket",
            &[("network", "zone"), ("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert_eq!(
        value(&r, "imgfetch_resolver_store_read_seconds_count", &zone),
        Some(4.0)
    );
    assert_eq!(
        value(&r, "imgfetch_resolver_image_bytes_total", &zone),
        Some((2 * small.len() + big) as f64)
    );
    assert_eq!(
        value(&r, "imgfetch_resolver_redeliveries_total", &zone),
        Some(0.0)
    );
    assert_eq!(
        value(&r, "imgfetch_resolver_requests_in_flight", &zone),
        Some(0.0)
    );

    drop(ws);
    eventually(
        "the websocket gauge to fall",
        Duration::from_secs(10),
        || async {
            let text = scrape(&gateway_metrics).await;
            (value(&text, "imgfetch_gateway_websockets", &[]) == Some(0.0)).then_some(())
        },
    )
    .await;
}
