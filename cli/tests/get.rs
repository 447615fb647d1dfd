//! `imgfetch get` run as a process against a real pipeline: nats-server, a resolver and a
//! gateway in this process, stores in temp directories.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use imgfetch_common::store::StoreSpec;
use imgfetch_gateway::archive::ArchiveConfig;
use imgfetch_gateway::auth::Tokens;
use imgfetch_tests::fake::{fake_resolver, send_stream, send_stream_part, take_request};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{dir_resolver, sample_resolver, Gateway};
use imgfetch_tests::{eventually, init_logs, sample, write_tokens_file};

const NETWORK: &str = "harbor";

/// Runs `imgfetch get` against the gateway at `gateway` (its base URL) for `network` with
/// `args`, progress hidden (stderr is a pipe).
async fn imgfetch_get(gateway: String, network: &str, args: Vec<String>) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgfetch"))
        .arg("get")
        .args(["--gateway", &gateway, "--network", network])
        .args(args)
        .env_remove("IMGFETCH_TOKEN")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("imgfetch finished within 30 s")
        .expect("imgfetch ran")
}

/// Owned arguments.
fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// Runs `imgfetch get --keep-names x.jpg -o out_dir` while the fake resolver answers with
/// `image` streamed, chunk `skip` (if any) left out.
async fn get_streamed(
    gateway: &Gateway,
    (resolver, consumer): &(
        async_nats::Client,
        async_nats::jetstream::consumer::PullConsumer,
    ),
    out_dir: &Path,
    image: &[u8],
    skip: Option<u64>,
) -> Output {
    let run = tokio::spawn(imgfetch_get(
        gateway.http(""),
        "forge",
        args(&["--keep-names", "x.jpg", "-o", out_dir.to_str().unwrap()]),
    ));
    let (id, callback, msg) = take_request(consumer).await;
    send_stream(resolver, &id, &callback, image, 256 * 1024, None, skip).await;
    msg.ack().await.unwrap();
    run.await.expect("imgfetch task")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The names of the files in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A gateway that archives into `archive`, so answers carry `Imgfetch-Archived-As`.
async fn archiving_gateway(nats: &NatsServer, archive: &Path) -> Gateway {
    let store = StoreSpec::File {
        root: archive.to_path_buf(),
    };
    Gateway::start(&nats.url(), |c| c.archive = Some(ArchiveConfig::new(store))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_1000_keys_is_saved_whole_under_archive_names() {
    init_logs();
    let nats = NatsServer::start();
    let zone = tempfile::tempdir().unwrap();
    let image = sample("harbor/quay-east.jpg");
    let mut list = String::from("# a generated batch\n\n");
    for i in 0..1000 {
        let key = format!("batch/img-{i:04}.jpg");
        let path = zone.path().join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &image).unwrap();
        list.push_str(&key);
        list.push_str(if i % 100 == 0 {
            "\n\n# next hundred\n"
        } else {
            "\n"
        });
    }
    let work = tempfile::tempdir().unwrap();
    let keys_file = work.path().join("keys.txt");
    std::fs::write(&keys_file, list).unwrap();
    let _resolver = dir_resolver(&nats.url(), NETWORK, zone.path()).await;
    let gateway = archiving_gateway(&nats, &work.path().join("archive")).await;
    let out_dir = work.path().join("out");

    let start = Instant::now();
    let out = imgfetch_get(
        gateway.http(""),
        NETWORK,
        args(&[
            "--from-file",
            keys_file.to_str().unwrap(),
            "--concurrency",
            "32",
            "-o",
            out_dir.to_str().unwrap(),
        ]),
    )
    .await;
    let took = start.elapsed();
    println!(
        "1000 keys fetched by imgfetch in {took:?}\n{}",
        stderr(&out)
    );

    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("saved 1000 of 1000, failed 0"),
        "summary: {}",
        stderr(&out)
    );
    let names = files_in(&out_dir);
    assert_eq!(names.len(), 1000, "files saved: {names:?}");
    for name in &names {
        assert!(!name.ends_with(".part"), "a temp file was left: {name}");
        assert!(
            !name.starts_with("img-"),
            "{name} is a key, not an archive name"
        );
        let saved = std::fs::read(out_dir.join(name)).unwrap();
        assert!(
            saved == image,
            "{name}: {} bytes, not the image",
            saved.len()
        );
    }
    let printed = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(printed, 1000, "stdout lists each saved path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_fails_the_run_and_is_named_in_the_summary() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), NETWORK).await;
    let work = tempfile::tempdir().unwrap();
    let gateway = archiving_gateway(&nats, &work.path().join("archive")).await;
    let out_dir = work.path().join("out");

    let out = imgfetch_get(
        gateway.http(""),
        NETWORK,
        args(&[
            "quay-east.jpg",
            "no/such.jpg",
            "-o",
            out_dir.to_str().unwrap(),
        ]),
    )
    .await;

    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("saved 1 of 2, failed 1"), "summary: {err}");
    assert!(
        err.contains(r#"failed "no/such.jpg": status 404, not_found: "#),
        "the failure names key, status and code: {err}"
    );
    assert!(
        err.contains("no image at key"),
        "the gateway's message: {err}"
    );
    let names = files_in(&out_dir);
    assert_eq!(names.len(), 1, "only the found image is saved: {names:?}");
    assert_eq!(
        std::fs::read(out_dir.join(&names[0])).unwrap(),
        sample("harbor/quay-east.jpg")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_names_saves_under_keys_and_hostile_keys_write_nothing_outside() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), NETWORK).await;
    let work = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let out_dir = work.path().join("out");

    let out = imgfetch_get(
        gateway.http(""),
        NETWORK,
        args(&[
            "--keep-names",
            "quay-east.jpg",
            "cranes/crane-07.jpg",
            "../escape.jpg",
            "cranes/../../escape.jpg",
            "/etc/escape.jpg",
            "-o",
            out_dir.to_str().unwrap(),
        ]),
    )
    .await;

    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("saved 2 of 5, failed 3"), "summary: {err}");
    for key in [
        "../escape.jpg",
        "cranes/../../escape.jpg",
        "/etc/escape.jpg",
    ] {
        assert!(
            err.contains(&format!("failed {key:?}: status -, invalid_key: ")),
            "{key} refused before sending: {err}"
        );
    }
    assert_eq!(
        files_in(&out_dir),
        ["cranes_crane-07.jpg", "quay-east.jpg"],
        "images under their sanitised keys, nothing else"
    );
    assert_eq!(
        files_in(work.path()),
        ["out"],
        "nothing written beside the output directory"
    );
    assert!(!Path::new("/etc/escape.jpg").exists());
    assert_eq!(
        std::fs::read(out_dir.join("cranes_crane-07.jpg")).unwrap(),
        sample("harbor/cranes/crane-07.jpg")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_2() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgfetch"))
        .args([
            "get",
            "--gateway",
            "http://127.0.0.1:9",
            "--network",
            "harbor",
        ])
        .env_remove("IMGFETCH_FROM_FILE")
        .output()
        .await
        .expect("imgfetch ran");
    assert_eq!(out.status.code(), Some(2), "no keys: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no keys to fetch"),
        "{}",
        stderr(&out)
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgfetch"))
        .args(["get", "--network", "harbor", "x.jpg"])
        .env_remove("IMGFETCH_GATEWAY")
        .output()
        .await
        .expect("imgfetch ran");
    assert_eq!(out.status.code(), Some(2), "no gateway: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_image_is_saved_whole_and_one_cut_short_leaves_nothing() {
    init_logs();
    let nats = NatsServer::start();
    let forge = fake_resolver(&nats.url(), "forge").await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();

    // Chunk 2 left out: the gateway ends the body short of its Content-Length.
    let out = get_streamed(&gateway, &forge, &out_dir, &image, Some(2)).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "a cut stream fails: {err}");
    assert!(
        err.contains(r#"failed "x.jpg": status -, body: "#)
            || err.contains(r#"failed "x.jpg": status -, short_body: "#),
        "the cut is named: {err}"
    );
    assert_eq!(
        files_in(&out_dir),
        Vec::<String>::new(),
        "no half file left"
    );

    // The whole stream: saved, byte for byte.
    let out = get_streamed(&gateway, &forge, &out_dir, &image, None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(files_in(&out_dir), ["x.jpg"]);
    let saved = std::fs::read(out_dir.join("x.jpg")).unwrap();
    assert!(saved == image, "saved {} bytes, not the image", saved.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_as_a_bearer_and_a_refusal_is_reported() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), NETWORK).await;
    let work = tempfile::tempdir().unwrap();
    let tokens_path = work.path().join("tokens.toml");
    let token = "cli-test-token-0123456789";
    write_tokens_file(&tokens_path, "cli", token, &["harbor"]);
    let tokens = Tokens::load(&tokens_path).expect("a valid tokens file");
    let gateway = Gateway::start(&nats.url(), |c| c.clients.tokens = Some(tokens)).await;
    let out_dir = work.path().join("out");
    let out_arg = out_dir.to_str().unwrap();

    let out = imgfetch_get(
        gateway.http(""),
        NETWORK,
        args(&["quay-east.jpg", "-o", out_arg]),
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "no token: {err}");
    assert!(
        err.contains(r#"failed "quay-east.jpg": status 401, unauthorized: "#),
        "{err}"
    );

    let out = imgfetch_get(
        gateway.http(""),
        NETWORK,
        args(&["--token", token, "quay-east.jpg", "-o", out_arg]),
    )
    .await;
    assert!(out.status.success(), "with the token: {}", stderr(&out));
    assert_eq!(files_in(&out_dir).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_leaves_no_half_file() {
    init_logs();
    let nats = NatsServer::start();
    let (resolver, consumer) = fake_resolver(&nats.url(), "forge").await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();

    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgfetch"))
        .args(["get", "--gateway", &gateway.http(""), "--network", "forge"])
        .args(["x.jpg", "-o", out_dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("imgfetch started");
    let pid = child.id().expect("a pid").to_string();
    // The first 3 chunks only, so the body stalls part-way in.
    let (id, callback, msg) = take_request(&consumer).await;
    send_stream_part(&resolver, &id, &callback, &image, 256 * 1024, 3).await;
    let part = eventually(
        "a temp file with bytes in it",
        Duration::from_secs(10),
        || {
            let dir = out_dir.clone();
            async move {
                std::fs::read_dir(&dir).ok()?.find_map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name.ends_with(".part") && e.metadata().ok()?.len() > 0).then_some(name)
                })
            }
        },
    )
    .await;
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill ran");
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("imgfetch stopped within 10 s of SIGINT")
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "interrupted: {err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(
        files_in(&out_dir),
        Vec::<String>::new(),
        "{part} was removed, nothing else left"
    );
    let _ = msg.ack().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_batch_of_1000_keys_shows_a_progress_bar_of_done_failed_bytes_and_rate() {
    init_logs();
    let nats = NatsServer::start();
    let zone = tempfile::tempdir().unwrap();
    let image = sample("harbor/quay-east.jpg");
    let mut keys = Vec::new();
    for i in 0..1000 {
        let key = format!("tty/img-{i:04}.jpg");
        std::fs::create_dir_all(zone.path().join("tty")).unwrap();
        std::fs::write(zone.path().join(&key), &image).unwrap();
        keys.push(key);
    }
    keys.push("tty/missing.jpg".into());
    let work = tempfile::tempdir().unwrap();
    let keys_file = work.path().join("keys.txt");
    std::fs::write(&keys_file, keys.join("\n")).unwrap();
    let _resolver = dir_resolver(&nats.url(), NETWORK, zone.path()).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let out_dir = work.path().join("out");

    // `script` (util-linux) runs the client on a pseudo-terminal and copies what it drew.
    let command = format!(
        "{} get --gateway {} --network {NETWORK} --from-file {} -o {}",
        env!("CARGO_BIN_EXE_imgfetch"),
        gateway.http(""),
        keys_file.display(),
        out_dir.display()
    );
    let run = tokio::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env_remove("IMGFETCH_TOKEN")
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("imgfetch finished within 60 s")
        .expect("script ran (util-linux)");
    let drawn = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "one key failed: {drawn}");
    // The bar: keys done of all, failures, bytes written and the rate.
    assert!(drawn.contains("/1001 done"), "no bar drawn: {drawn}");
    assert!(drawn.contains(" failed · "), "no failure count: {drawn}");
    assert!(
        drawn.contains("KiB/s") || drawn.contains("MiB/s"),
        "no rate: {drawn}"
    );
    assert!(
        drawn.contains("saved 1000 of 1001, failed 1"),
        "summary: {drawn}"
    );
    assert_eq!(files_in(&out_dir).len(), 1000);

    // The same run on pipes draws nothing: no bar in logs.
    let piped = imgfetch_get(
        gateway.http(""),
        NETWORK,
        args(&[
            "--from-file",
            keys_file.to_str().unwrap(),
            "-o",
            work.path().join("again").to_str().unwrap(),
        ]),
    )
    .await;
    assert!(!stderr(&piped).contains(" done "), "{}", stderr(&piped));
    assert!(stderr(&piped).contains("saved 1000 of 1001, failed 1"));
}
