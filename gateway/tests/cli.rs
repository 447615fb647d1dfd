//! The binary itself: a bad configuration is one clear line and exit status 64.

use std::process::Command;

/// The binary, under coreutils' `timeout`: a check that started a real run instead would fail
/// the test with status 124 after 30 s rather than hang it.
fn gateway() -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "--kill-after=5s",
        "30s",
        env!("CARGO_BIN_EXE_imgfetch-gateway"),
    ]);
    cmd
}

#[test]
fn bad_configuration_is_one_line_and_exit_64() {
    let out = gateway()
        .args(["--instance", "not.a.token"])
        .output()
        .expect("run imgfetch-gateway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("instance"), "{stderr}");
}

#[test]
fn check_config_validates_without_binding_connecting_or_opening_the_archive() {
    // The port is taken (held below), and neither NATS nor the S3 endpoint exists: a start
    // would fail on each, a check must not look.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let out = gateway()
        .args([
            "--check-config",
            "--listen",
            &listen,
            "--nats-url",
            "nats://127.0.0.1:1",
            "--instance",
            "gateway-0",
            "--archive",
            "s3://imgfetch-archive",
        ])
        .env("AWS_ENDPOINT", "http://127.0.0.1:1")
        .output()
        .expect("run imgfetch-gateway");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout:?}");
    assert!(
        stdout.contains(&format!(
            "listen {listen}; NATS nats://127.0.0.1:1; instance gateway-0"
        )) && stdout.contains("archive s3://imgfetch-archive"),
        "{stdout}"
    );

    let out = gateway()
        .args(["--check-config", "--archive", "ftp://archive"])
        .output()
        .expect("run imgfetch-gateway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("archive"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn install_nats_identity_copies_the_own_key_and_names_a_missing_one() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("imgfetch-cli-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let identities = root.join("identities");
    std::fs::create_dir_all(&identities).unwrap();
    std::fs::create_dir_all(root.join("nats")).unwrap();
    std::fs::write(identities.join("gateway-0"), "s3cret\n").unwrap();
    std::fs::write(identities.join("gateway-1"), "other\n").unwrap();
    let password = root.join("nats/password");

    // As the chart's init container runs it: the instance and the file from the environment.
    let out = gateway()
        .arg("--install-nats-identity")
        .arg(&identities)
        .env("IMGFETCH_INSTANCE", "gateway-0")
        .env("IMGFETCH_NATS_USER", "gateway-0")
        .env("IMGFETCH_NATS_PASSWORD_FILE", &password)
        .output()
        .expect("run imgfetch-gateway");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("installed NATS password"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&password).unwrap(), "s3cret\n");
    let mode = std::fs::metadata(&password).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);

    for (args, expect) in [
        (
            &[
                "--instance",
                "gateway-2",
                "--nats-creds",
                "/nowhere/nats.creds",
            ][..],
            "no key \"gateway-2\" in",
        ),
        (&["--instance", "gateway-1"][..], "nowhere to install to"),
    ] {
        let out = gateway()
            .arg("--install-nats-identity")
            .arg(&identities)
            .args(args)
            .output()
            .expect("run imgfetch-gateway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}
