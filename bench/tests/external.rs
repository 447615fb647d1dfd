//! `imgfetch-faults` against gateways it did not start, as a deployment check uses it: the
//! binary writes its images (`--write-corpus`) into a directory, a resolver serves that
//! directory as networks `x` and `y`, a gateway checks bearer tokens, and the binary loads the
//! gateway (`--against`) until SIGTERM, then reports every request accepted and served, bytes
//! verified. With a token the gateway does not know, the run fails and says why instead of
//! passing with nothing tested.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use imgfetch_bench::procs::{test_bin_dir, Pipeline, PipelineSpec};
use imgfetch_common::digest::sha256_hex;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::write_tokens_file;

const TOKEN: &str = "external-load-token";

fn faults() -> Command {
    // Under coreutils' `timeout`: a run that never stops fails the test instead of hanging it.
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=5s", "60s"])
        .arg(env!("CARGO_BIN_EXE_imgfetch-faults"))
        .env_remove("IMGFETCH_TOKEN");
    command
}

/// The one report of `json`.
fn report(json: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(json).expect("the JSON report");
    let reports: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "{text}");
    reports[0].clone()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_counts_every_request_of_gateways_it_did_not_start_and_fails_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    // The images, written by the binary itself; what it prints is `sha256sum`'s format.
    let out = faults().arg("--write-corpus").arg(&store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listing.lines().count(), 40, "{listing}");
    for line in listing.lines() {
        let (sha, key) = line.split_once("  ").expect("<sha256>  <key>");
        let bytes = std::fs::read(store.join(key)).unwrap();
        assert_eq!((sha256_hex(&bytes).as_str(), bytes.len()), (sha, 16 * 1024));
    }

    let tokens = dir.path().join("tokens.toml");
    write_tokens_file(&tokens, "load", TOKEN, &["x", "y"]);
    let nats = NatsServer::start();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pipeline = Pipeline::start(PipelineSpec {
        bin_dir: &test_bin_dir(),
        nats_url: &nats.url(),
        resolver_nats_url: None,
        networks: &["x".to_owned(), "y".to_owned()],
        store_url: &format!("file://{}", store.display()),
        archive: false,
        log_dir: &logs,
        gateway_args: &["--tokens-file".to_owned(), tokens.display().to_string()],
        resolver_args: &[],
    })
    .await
    .unwrap();

    // The good token, both networks, stopped by SIGTERM as a script stops it.
    let json = dir.path().join("good.json");
    let child = faults()
        .args([
            "--against",
            &pipeline.base,
            "--network",
            "x",
            "--network",
            "y",
        ])
        .args(["--token", TOKEN, "--clients", "4", "--interval", "50"])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // `timeout` passes SIGTERM on to the binary.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SIGTERM: load stopped"),
        "{}",
        text(&out)
    );
    let good = report(&json);
    let accepted = good["accepted"].as_u64().unwrap();
    assert!(accepted > 10, "{good:#}");
    assert_eq!(good["ok"].as_u64(), Some(accepted), "{good:#}");
    assert_eq!(good["lost"], 0, "{good:#}");
    assert_eq!(good["duplicated"], 0, "{good:#}");
    assert_eq!(good["fault"], "external", "{good:#}");
    assert_eq!(good["failures"], serde_json::json!([]), "{good:#}");

    // A token the gateway does not know: every upgrade refused, nothing accepted, a failure.
    let json = dir.path().join("wrong.json");
    let out = faults()
        .args(["--against", &pipeline.base, "--network", "x"])
        .args(["--token", "not-the-token", "--seconds", "1.5"])
        .args(["--label", "wrong-token"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong-token"),
        "{}",
        text(&out)
    );
    let wrong = report(&json);
    assert_eq!(wrong["accepted"], 0, "{wrong:#}");
    assert!(
        wrong["connect_failures"]["unauthorized"].as_u64() > Some(0),
        "{wrong:#}"
    );
    let failures = wrong["failures"].to_string();
    assert!(failures.contains("no request was accepted"), "{wrong:#}");
}
