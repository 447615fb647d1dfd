//! The real binaries started before NATS: they answer probes (alive, not ready), keep trying,
//! and serve once NATS is up; refused credentials end them at once instead.

use std::time::Duration;

use imgfetch_bench::procs::{test_bin_dir, Proc};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::{eventually, sample};

/// Status and body of `GET url`, `None` while nothing answers.
async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_before_nats_both_wait_unready_then_serve() {
    let mut nats = NatsServer::start();
    // Down before anything connects; it comes back later on the same port.
    nats.kill();
    let images = tempfile::tempdir().unwrap();
    let image = sample("harbor/quay-east.jpg");
    std::fs::write(images.path().join("a.jpg"), &image).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let bin = test_bin_dir();
    let (admin, http) = (free_port(), free_port());
    let _resolver = Proc::spawn_logging(
        &bin.join("imgfetch-resolver"),
        &[
            "--nats-url".to_owned(),
            nats.url(),
            "--network".to_owned(),
            format!("zone=file://{}", images.path().display()),
            "--http-listen".to_owned(),
            format!("127.0.0.1:{admin}"),
        ],
        logs.path().join("resolver.log"),
        "warn",
    )
    .unwrap();
    let _gateway = Proc::spawn_logging(
        &bin.join("imgfetch-gateway"),
        &[
            "--nats-url".to_owned(),
            nats.url(),
            "--listen".to_owned(),
            format!("127.0.0.1:{http}"),
            "--archive".to_owned(),
            "off".to_owned(),
        ],
        logs.path().join("gateway.log"),
        "warn",
    )
    .unwrap();

    let connecting = Some((503, "connecting to NATS".to_owned()));
    for base in [
        format!("http://127.0.0.1:{admin}"),
        format!("http://127.0.0.1:{http}"),
    ] {
        eventually(
            "alive while NATS is down",
            Duration::from_secs(10),
            || async {
                (get(&format!("{base}/livez")).await == Some((200, "ok".to_owned()))).then_some(())
            },
        )
        .await;
        assert_eq!(get(&format!("{base}/readyz")).await, connecting, "{base}");
    }
    let (status, body) = get(&format!("http://127.0.0.1:{http}/v1/images/zone/a.jpg"))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    // Still trying, a few attempts later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        get(&format!("http://127.0.0.1:{admin}/readyz")).await,
        connecting
    );

    nats.restart();
    for base in [
        format!("http://127.0.0.1:{admin}"),
        format!("http://127.0.0.1:{http}"),
    ] {
        eventually("ready once NATS is up", Duration::from_secs(20), || async {
            (get(&format!("{base}/readyz")).await?.0 == 200).then_some(())
        })
        .await;
    }
    let r = reqwest::get(format!("http://127.0.0.1:{http}/v1/images/zone/a.jpg"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.as_slice());
}

#[tokio::test]
async fn refused_credentials_end_the_binaries_at_once() {
    let nats = NatsServer::start_with_roles();
    let secrets = tempfile::tempdir().unwrap();
    let wrong = secrets.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let bin = test_bin_dir();
    let runs = [
        (
            "imgfetch-resolver",
            vec![
                "--network".to_owned(),
                format!("zone=file://{}", secrets.path().display()),
                "--nats-user".to_owned(),
                "resolver".to_owned(),
            ],
        ),
        (
            "imgfetch-gateway",
            vec![
                "--listen".to_owned(),
                format!("127.0.0.1:{}", free_port()),
                "--archive".to_owned(),
                "off".to_owned(),
                "--nats-user".to_owned(),
                "gateway".to_owned(),
            ],
        ),
    ];
    for (name, args) in runs {
        let run = tokio::process::Command::new(bin.join(name))
            .args(["--nats-url", &nats.url()])
            .args(&args)
            .arg("--nats-password-file")
            .arg(&wrong)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(15), run)
            .await
            .unwrap_or_else(|_| panic!("{name} kept retrying refused credentials"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.to_lowercase().contains("authorization"),
            "{name}: {stderr}"
        );
    }
}
