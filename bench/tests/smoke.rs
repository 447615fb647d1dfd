//! The benchmark in its tiny smoke mode, against the binaries this workspace built and a real
//! nats-server: it must run every step and get every request answered correctly.

use std::ffi::OsStr;
use std::path::Path;

use clap::Parser;

/// The smoke settings on the binaries this workspace built, the report written to `json`, and
/// `extra` flags.
fn smoke(json: &Path, extra: &[&OsStr]) -> imgfetch_bench::Options {
    let bin_dir = imgfetch_bench::procs::test_bin_dir();
    let mut args: Vec<&OsStr> = vec![
        "imgfetch-bench".as_ref(),
        "--smoke".as_ref(),
        "--bin-dir".as_ref(),
        bin_dir.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ];
    args.extend_from_slice(extra);
    imgfetch_bench::Options::parse_from(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_run_measures_every_path_without_a_failed_request() {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let report = imgfetch_bench::run(&smoke(&json, &[]))
        .await
        .expect("benchmark runs");

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
        "leaf+0ms",
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

    // The large image: streamed on a default-payload server, verified, in bounded memory.
    let paths: Vec<&str> = report.large.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["raw nats", "http", "ws", "http+archive"],
        "{:?}",
        report.large
    );
    for run in &report.large {
        assert!(run.verified, "{run:?}");
        assert!(run.mb_per_s > 0.0, "{run:?}");
    }
    for run in &report.large[1..] {
        // 160 MiB went through each process. Holding it whole would add at least that much; a
        // stream holds a credit window and a few chunks. The bound is generous on purpose
        // (debug builds, a shared machine: the gateway with the archive has grown by up to
        // 66 MiB here); the benchmark reports the release figure against the 64 MiB target.
        for (who, growth) in [
            ("resolver", run.resolver_growth_mib()),
            ("gateway", run.gateway_growth_mib()),
        ] {
            let growth = growth.expect("memory measured");
            assert!(growth < 128.0, "{who} grew {growth:.0} MiB: {run:?}");
        }
        assert!(run.ratio_to_raw.is_some_and(|r| r > 0.0), "{run:?}");
    }

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON report written")).unwrap();
    assert_eq!(
        written["rows"].as_array().map(Vec::len),
        Some(report.rows.len())
    );
}

/// A/B mode, in smoke settings, with the same binaries on both sides: every round measures its
/// own ceilings, runs both builds on every path (A first in the first round, B first in the
/// second), and relates each row to its own round's ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ab_run_alternates_two_builds_against_each_rounds_ceiling() {
    let bin_dir = imgfetch_bench::procs::test_bin_dir();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let extra = [
        "--no-large".as_ref(),
        "--baseline-bin-dir".as_ref(),
        bin_dir.as_os_str(),
    ];
    let report = imgfetch_bench::run(&smoke(&json, &extra))
        .await
        .expect("A/B runs");
    let cmp = report.comparison.as_ref().expect("a comparison");
    let table = imgfetch_bench::compare::table(cmp);
    assert!(cmp.large.is_empty(), "--no-large: {table}");
    for round in 0..2 {
        let rows: Vec<_> = cmp.rows.iter().filter(|m| m.round == round).collect();
        let builds: Vec<&str> = rows
            .iter()
            .map(|m| m.build)
            .fold(Vec::new(), |mut seen, b| {
                if seen.last() != Some(&b) {
                    seen.push(b);
                }
                seen
            });
        let expected = if round == 0 {
            ["ceiling", "A", "B"]
        } else {
            ["ceiling", "B", "A"]
        };
        assert_eq!(builds, expected, "round {round}:\n{table}");
        for build in ["A", "B"] {
            for path in ["http", "ws", "http+archive"] {
                for c in [1, 4] {
                    let row = rows
                        .iter()
                        .find(|m| m.build == build && m.row.path == path && m.row.concurrency == c)
                        .unwrap_or_else(|| panic!("no {build} {path} c{c} in round {round}"));
                    assert_eq!(row.row.errors, 0, "{:?}", row.row);
                    assert!(
                        row.row.ratio_to_ceiling.is_some_and(|r| r > 0.0),
                        "{:?}",
                        row.row
                    );
                }
            }
        }
    }
    for path in ["http ", "ws ", "http+archive "] {
        assert!(
            table.lines().any(|l| l.starts_with(path)),
            "no {path:?} line in:\n{table}"
        );
    }
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(written["comparison"]["rows"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
}
