//! The benchmark in its tiny smoke mode, against the binaries this workspace built and a real
//! nats-server: it must run every step and get every request answered correctly.

use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_run_measures_every_path_without_a_failed_request() {
    // Tests run from target/<profile>/deps; the binaries are one level up.
    let bin_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let options = imgfetch_bench::Options::parse_from([
        "imgfetch-bench".as_ref(),
        "--smoke".as_ref(),
        "--bin-dir".as_ref(),
        bin_dir.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    let report = imgfetch_bench::run(&options).await.expect("benchmark runs");

    assert_eq!(report.failed_requests(), 0, "{}", report.table());
    let paths: std::collections::BTreeSet<&str> =
        report.rows.iter().map(|r| r.path.as_str()).collect();
    for path in [
        "floor",
        "bare",
        "http",
        "ws",
        "http paced",
        "bare paced",
        "http+archive",
        "http 1 busy",
    ] {
        assert!(
            paths.contains(path),
            "no {path:?} run in:\n{}",
            report.table()
        );
    }
    for row in &report.rows {
        assert!(row.req_per_s > 0.0, "nothing answered in {row:?}");
        assert!(row.p50_ms > 0.0 && row.p99_ms >= row.p50_ms, "{row:?}");
    }
    let http = report.rows.iter().find(|r| r.path == "http").unwrap();
    assert!(http.ratio_to_ceiling.is_some_and(|r| r > 0.0), "{http:?}");
    assert!(
        http.gateway_peak_rss_mib.is_some_and(|m| m > 1.0),
        "{http:?}"
    );
    let idle = report.idle_websockets.as_ref().expect("idle websocket run");
    assert_eq!(idle.clients, 20);
    assert!(
        idle.fetch_ok && idle.gateway_rss_with_clients_mib > 0.0,
        "{idle:?}"
    );

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON report written")).unwrap();
    assert_eq!(
        written["rows"].as_array().map(Vec::len),
        Some(report.rows.len())
    );
}
