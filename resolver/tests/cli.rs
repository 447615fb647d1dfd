//! The binary itself: a bad configuration is one clear line and exit status 64.

use std::process::Command;

/// The binary, under coreutils' `timeout`: a check that started a real run instead would fail
/// the test with status 124 after 30 s rather than hang it.
fn resolver() -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "--kill-after=5s",
        "30s",
        env!("CARGO_BIN_EXE_imgfetch-resolver"),
    ]);
    cmd
}

fn run(args: &[&str]) -> (i32, String) {
    let out = resolver()
        .args(args)
        .env_remove("IMGFETCH_NETWORKS")
        .env_remove("IMGFETCH_CONFIG")
        .output()
        .expect("run imgfetch-resolver");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_is_one_line_and_exit_64() {
    for (args, expect) in [
        (&[][..], "no networks"),
        (&["--network", "a=ftp://x"][..], "supported: file, s3"),
        (
            &["--config", "/nonexistent/imgfetch.toml"][..],
            "cannot read",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in {stderr:?}"
        );
    }
}

#[test]
fn an_unreadable_store_fails_at_start_in_one_line() {
    let (code, stderr) = run(&[
        "--network",
        "a=file:///nonexistent/imgfetch",
        "--nats-url",
        "nats://127.0.0.1:1",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot open directory /nonexistent/imgfetch"),
        "{stderr}"
    );
}

#[test]
fn check_config_validates_without_opening_stores_or_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret_access_key");
    std::fs::write(&secret, "not-a-real-key\n").unwrap();
    let good = dir.path().join("good.toml");
    // Neither the directory, the S3 endpoint nor NATS exist: a start would fail on each, a
    // check must not look.
    std::fs::write(
        &good,
        format!(
            r#"
nats_url = "nats://127.0.0.1:1"
provision = false
[networks.cams]
url = "s3://camera-images"
endpoint = "http://127.0.0.1:1"
region = "us-east-1"
access_key_id = "reader"
secret_access_key_file = "{}"
allow_http = true
[networks.dmz]
url = "file:///nonexistent/imgfetch"
"#,
            secret.display()
        ),
    )
    .unwrap();
    let out = resolver()
        .args(["--config", good.to_str().unwrap(), "--check-config"])
        .env_remove("IMGFETCH_NETWORKS")
        .output()
        .expect("run imgfetch-resolver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout:?}");
    assert!(
        stdout.contains("2 networks: cams=s3://camera-images (endpoint http://127.0.0.1:1")
            && stdout.contains("dmz=file:///nonexistent/imgfetch")
            && stdout.contains("verified only"),
        "{stdout}"
    );
    assert!(!stdout.contains("not-a-real-key"), "{stdout}");

    // The same file with a typo, and one whose secret file is missing.
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "[networks.a]\nurl = \"file:///x\"\nendpiont = \"x\"\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        "[networks.a]\nurl = \"s3://b\"\nsecret_access_key_file = \"/nonexistent/key\"\n",
    )
    .unwrap();
    for (file, expect) in [
        (&typo, "unknown field `endpiont`"),
        (&missing, "cannot read /nonexistent/key"),
    ] {
        let (code, stderr) = run(&["--config", file.to_str().unwrap(), "--check-config"]);
        assert_eq!(code, 64, "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
        assert!(stderr.contains(expect), "expected {expect:?} in {stderr:?}");
    }
}

#[test]
fn a_flag_wins_over_its_variable_and_a_variable_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resolver.toml");
    std::fs::write(
        &file,
        r#"
nats_url = "nats://file:4222"
stream = "FILE"
http_listen = "127.0.0.1:9001"
provision = false
[networks.dmz]
url = "file:///nonexistent/imgfetch"
"#,
    )
    .unwrap();
    let out = resolver()
        .args(["--config", file.to_str().unwrap(), "--check-config"])
        .args(["--http-listen", "127.0.0.1:9003"])
        .env_remove("IMGFETCH_NETWORKS")
        .env("IMGFETCH_NATS_URL", "nats://env:4222")
        .env("IMGFETCH_STREAM", "ENV")
        .env("IMGFETCH_HTTP_LISTEN", "127.0.0.1:9002")
        .output()
        .expect("run imgfetch-resolver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout.trim(),
        "imgfetch-resolver: configuration ok: 1 network: dmz=file:///nonexistent/imgfetch; \
         NATS nats://env:4222; stream ENV (verified only); health on 127.0.0.1:9003",
        "the flag over its variable (health), variables over the file (NATS, stream), the file \
         over the default (verified only)"
    );
}
