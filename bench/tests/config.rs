//! The one configuration style, on the real binaries: a TOML file (`--config`) under variables
//! and flags, durations in human form, secrets from files, unknown keys and the old
//! millisecond variables refused with exit status 64; then a pipeline configured by files alone
//! serves an image.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imgfetch_bench::procs::{test_bin_dir, Proc};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::{eventually, sample};

/// Exit status, stdout and stderr of `bin args` with only `env` (and PATH) in its environment.
fn run(bin: &str, args: &[&str], env: Env) -> (i32, String, String) {
    // Under coreutils' `timeout`: a binary that started a real run instead of refusing its
    // configuration fails the test with status 124 after 30 s rather than hang it.
    let out = Command::new("timeout")
        .args(["--kill-after=5s", "30s"])
        .arg(test_bin_dir().join(bin))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Variables given to a run.
type Env<'a> = &'a [(&'a str, &'a str)];

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_gateway_reads_a_file_under_variables_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "archive-secret", "SECRET\n");
    let file = write(
        dir.path(),
        "gateway.toml",
        "nats_url = \"nats://file:4222\"\nlisten = \"0.0.0.0:9000\"\ninstance = \"gw-file\"\n\
         grace = \"1m 30s\"\nrequest_timeout = \"45s\"\narchive = \"s3://arch/prefix\"\n",
    );
    let (code, out, err) = run(
        "imgfetch-gateway",
        &["--config", &file, "--check-config", "--instance", "gw-flag"],
        &[
            ("IMGFETCH_GRACE", "45s"),
            ("AWS_SECRET_ACCESS_KEY_FILE", &secret),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    for part in [
        "listen 0.0.0.0:9000",
        "NATS nats://file:4222",
        "instance gw-flag",
        "grace 45s",
        "archive s3://arch/prefix",
    ] {
        assert!(out.contains(part), "{part:?} in {out}");
    }
    assert!(!out.contains("SECRET"), "{out}");

    // A misspelt or old key, a bare number, a missing secret file: one line, exit 64.
    let cases: &[(&str, Env, &str)] = &[
        (
            "grace_ms = 30000\n",
            &[],
            "gateway.toml: line 1: unknown field `grace_ms`",
        ),
        (
            "request_timeout_ms = 30000\n",
            &[],
            "`request_timeout_ms` is now `request_timeout`, a duration in human form (e.g. request_timeout = \"30s\")",
        ),
        ("grace = \"30\"\n", &[], "no unit: write it as 30s or 30ms"),
        ("log_format = \"xml\"\n", &[], "unknown variant `xml`"),
        (
            "archive = \"s3://arch\"\n",
            &[("AWS_SECRET_ACCESS_KEY_FILE", "/nonexistent/secret")],
            "AWS_SECRET_ACCESS_KEY_FILE: cannot read /nonexistent/secret",
        ),
        (
            "",
            &[("IMGFETCH_GRACE_MS", "30000")],
            "IMGFETCH_GRACE_MS is now IMGFETCH_GRACE and takes a duration in human form (e.g. IMGFETCH_GRACE=30s)",
        ),
    ];
    for (text, env, expect) in cases {
        let file = write(dir.path(), "gateway.toml", text);
        let (code, out, err) = run(
            "imgfetch-gateway",
            &["--config", &file, "--check-config"],
            env,
        );
        assert_eq!(code, 64, "{text:?}: {out}{err}");
        assert!(
            err.contains(expect),
            "{text:?}: expected {expect:?} in {err}"
        );
    }
}

#[test]
fn the_resolver_refuses_what_it_cannot_read_as_a_duration_or_a_choice() {
    let dir = tempfile::tempdir().unwrap();
    let net = format!("a=file://{}", dir.path().display());
    let cases: &[(&[&str], Env, &str)] = &[
        (&["--ack-wait", "10"], &[], "no unit"),
        (&[], &[("IMGFETCH_ACK_WAIT", "soon")], "is not a duration"),
        (&["--log-format", "xml"], &[], "invalid value 'xml'"),
        (
            &["--no-such-flag"],
            &[],
            "unexpected argument '--no-such-flag'",
        ),
        (
            &[],
            &[("IMGFETCH_DLQ_MAX_AGE_HOURS", "24")],
            "IMGFETCH_DLQ_MAX_AGE_HOURS is now IMGFETCH_DLQ_MAX_AGE",
        ),
    ];
    for (flags, env, expect) in cases {
        let mut args = vec!["--network", &net, "--check-config"];
        args.extend_from_slice(flags);
        let (code, out, err) = run("imgfetch-resolver", &args, env);
        // Usage errors found by the parser and errors found by the binary alike: 64.
        assert_eq!(code, 64, "{flags:?} {env:?}: {out}{err}");
        assert!(
            err.contains(expect),
            "{flags:?} {env:?}: expected {expect:?} in {err}"
        );
    }
    let (code, out, err) = run(
        "imgfetch-resolver",
        &["--network", &net, "--check-config"],
        &[("IMGFETCH_ACK_WAIT", "2s"), ("IMGFETCH_DLQ_MAX_AGE", "2d")],
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// Both binaries configured by their files alone (no flag but `--config`): an image comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_configured_by_files_serves_an_image() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let image = sample("harbor/quay-east.jpg");
    std::fs::write(images.join("a.jpg"), &image).unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let resolver_toml = write(
        dir.path(),
        "resolver.toml",
        &format!(
            "nats_url = \"{}\"\nack_wait = \"5s\"\ngrace = \"2s\"\nlog_format = \"json\"\n\
             [networks.zone]\nurl = \"file://{}\"\n",
            nats.url(),
            images.display()
        ),
    );
    let gateway_toml = write(
        dir.path(),
        "gateway.toml",
        &format!(
            "nats_url = \"{}\"\nlisten = \"127.0.0.1:{http}\"\nrequest_timeout = \"20s\"\n\
             grace = \"2s\"\narchive = \"off\"\nlog_format = \"json\"\n",
            nats.url()
        ),
    );
    let bin = test_bin_dir();
    let _resolver = Proc::spawn_logging(
        &bin.join("imgfetch-resolver"),
        &["--config".to_owned(), resolver_toml],
        dir.path().join("resolver.log"),
        "info",
    )
    .unwrap();
    let _gateway = Proc::spawn_logging(
        &bin.join("imgfetch-gateway"),
        &["--config".to_owned(), gateway_toml],
        dir.path().join("gateway.log"),
        "info",
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{http}/v1/images/zone/a.jpg");
    let body = eventually("an image through both", Duration::from_secs(20), || async {
        let r = reqwest::get(&url).await.ok()?;
        if r.status() != 200 {
            return None;
        }
        Some(r.bytes().await.ok()?.to_vec())
    })
    .await;
    assert_eq!(body, image);
    // The files' log_format took effect: the logs are JSON lines.
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    let first = log.lines().next().expect("the gateway logged");
    serde_json::from_str::<serde_json::Value>(first)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
}
