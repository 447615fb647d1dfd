//! The binary itself: a bad configuration is one clear line and exit status 64.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imgfetch-resolver"))
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
