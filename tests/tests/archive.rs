//! Associated information and the archive, through every client path, on real stores.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imgfetch_common::frames::ServerFrame;
use imgfetch_common::info::ImageInfo;
use imgfetch_common::message::ReplyHead;
use imgfetch_common::protocol::{http_header, reply_subject, request_subject};
use imgfetch_common::store::StoreSpec;
use imgfetch_gateway::archive::ArchiveConfig;
use imgfetch_resolver::config::NetworkSpec;
use imgfetch_tests::fake::image_head;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    archived_as, assert_image, dir_resolver, hand_publish, image_info, next_within, reply_head,
    resolver_config, sample_resolver, Gateway, Resolver, WsClient,
};
use imgfetch_tests::s3::S3Server;
use imgfetch_tests::{counted, eventually, init_logs, sample, within};
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions};
use serde_json::json;

/// A directory store holding one sample image, optionally with a sidecar.
fn zone_with(image: &str, key: &str, sidecar: Option<serde_json::Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, sample(image)).unwrap();
    if let Some(sidecar) = sidecar {
        std::fs::write(format!("{}.json", path.display()), sidecar.to_string()).unwrap();
    }
    dir
}

fn archive_at(dir: &Path) -> ArchiveConfig {
    ArchiveConfig::new(StoreSpec::File {
        root: dir.to_path_buf(),
    })
}

/// Every file under `root`, as paths relative to it.
fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

async fn archived_file(root: &Path, rel: &str) -> Vec<u8> {
    let full: PathBuf = root.join(rel);
    eventually(
        &format!("{rel} in the archive"),
        Duration::from_secs(10),
        || {
            let full = full.clone();
            async move { std::fs::read(full).ok() }
        },
    )
    .await
}

#[tokio::test]
async fn exif_alone_places_the_image_by_coordinates_and_capture_time() {
    init_logs();
    let nats = NatsServer::start();
    let _r = sample_resolver(&nats.url(), "harbor").await;
    let archive = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.archive = Some(archive_at(archive.path()))
    })
    .await;

    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("exif-1"), "harbor", "cranes/crane-07.jpg")
        .await;
    let answer = ws.next_answer().await;
    let frame = &answer.frame;
    let info = image_info(frame);
    assert_eq!(info.network, "harbor");
    assert!(
        (info.location.latitude.unwrap() - 36.0702).abs() < 1e-3,
        "{info:?}"
    );
    assert!(
        (info.location.longitude.unwrap() - 120.3911).abs() < 1e-3,
        "{info:?}"
    );
    assert!(info.location.name.is_none(), "{info:?}");
    assert_eq!(
        info.captured_at.as_deref(),
        Some("2026-11-21T14:02:11+08:00")
    );
    assert_eq!(
        info.device.as_deref(),
        Some("Axis P1468-LE (serial AX-7781)")
    );

    let expected = "harbor/36.070N_120.391E/2026-11-21/36.070N_120.391E_20261121T140211_exif-1.jpg";
    assert_eq!(archived_as(frame), Some(expected), "{}", frame.to_json());
    assert_eq!(
        archived_file(archive.path(), expected).await,
        sample("harbor/cranes/crane-07.jpg")
    );
}

#[tokio::test]
async fn a_sidecar_overrides_exif_and_http_reports_the_archive_path() {
    init_logs();
    let nats = NatsServer::start();
    let zone = zone_with(
        "harbor/quay-east.jpg",
        "cams/east.jpg",
        Some(json!({"location": "青岛市", "operator": "Li Wei", "shift": 3})),
    );
    let _r = dir_resolver(&nats.url(), "harbor", zone.path()).await;
    let archive = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.archive = Some(archive_at(archive.path()))
    })
    .await;

    let r = reqwest::Client::new()
        .get(gateway.http("/v1/images/harbor/cams/east.jpg"))
        .header(http_header::REQUEST_ID, "side-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let decode = |name: &str| {
        let raw = h
            .get(name)
            .unwrap_or_else(|| panic!("header {name}"))
            .to_str()
            .unwrap();
        percent_decode(raw)
    };
    let expected = "harbor/青岛市/2026-11-20/青岛市_20261120T081530_side-1.jpg";
    assert_eq!(decode(http_header::ARCHIVED_AS), expected);
    // The information's headers as docs/API.md spells them.
    assert_eq!(decode("imgfetch-location"), "青岛市");
    assert_eq!(decode("imgfetch-extra-operator"), "Li Wei");
    assert_eq!(decode("imgfetch-captured-at"), "2026-11-20T08:15:30+08:00");
    assert!(
        h.get("imgfetch-extra-shift").is_none(),
        "numbers are not extras"
    );
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        sample("harbor/quay-east.jpg").as_slice()
    );
    assert_eq!(
        archived_file(archive.path(), expected).await,
        sample("harbor/quay-east.jpg")
    );
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .expect("UTF-8 header value")
        .into_owned()
}

#[tokio::test]
async fn s3_metadata_sidecar_and_exif_merge_by_precedence_and_the_archive_can_be_s3() {
    init_logs();
    let nats = NatsServer::start();
    let s3 = S3Server::start();
    s3.create_bucket("cams");
    s3.create_bucket("archive");
    let cams = s3.client("cams");
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata("location".into()),
        "metadata place".into(),
    );
    attributes.insert(
        Attribute::Metadata("captured-at".into()),
        "2026-01-02T03:04:05-05:00".into(),
    );
    attributes.insert(Attribute::Metadata("camera-group".into()), "north".into());
    // How S3 returns non-ASCII metadata: an RFC 2047 encoded word ("北区").
    attributes.insert(
        Attribute::Metadata("district".into()),
        "=?UTF-8?B?5YyX5Yy6?=".into(),
    );
    cams.put_opts(
        &"line/weld.jpg".into(),
        sample("plant/line-3/weld-0001.jpg").into(),
        PutOptions {
            attributes,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    cams.put(
        &"line/weld.jpg.json".into(),
        json!({"location": "sidecar place"}).to_string().into(),
    )
    .await
    .unwrap();

    let _r = Resolver::start(resolver_config(
        &nats.url(),
        vec![NetworkSpec {
            name: "cams".into(),
            store: s3.spec("cams"),
        }],
    ))
    .await;
    let gateway = Gateway::start(&nats.url(), |c| {
        c.archive = Some(ArchiveConfig::new(s3.spec("archive")));
    })
    .await;

    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("s3-1"), "cams", "line/weld.jpg").await;
    let answer = ws.next_answer().await;
    let info = image_info(&answer.frame);
    assert_eq!(
        info.location.name.as_deref(),
        Some("sidecar place"),
        "sidecar wins: {info:?}"
    );
    assert_eq!(
        info.captured_at.as_deref(),
        Some("2026-01-02T03:04:05-05:00"),
        "store metadata beats EXIF: {info:?}"
    );
    assert_eq!(
        info.device.as_deref(),
        Some("Basler acA2440 (serial BS-1203)"),
        "EXIF fills the rest: {info:?}"
    );
    assert!(
        (info.location.latitude.unwrap() - 31.2304).abs() < 1e-3,
        "{info:?}"
    );
    let extra = |name: &str| info.extras.get(name).map(String::as_str);
    assert_eq!(extra("camera_group"), Some("north"), "{info:?}");
    assert_eq!(extra("district"), Some("北区"), "{info:?}");

    let expected = "cams/sidecar-place/2026-01-02/sidecar-place_20260102T030405_s3-1.jpg";
    assert_eq!(archived_as(&answer.frame), Some(expected));
    let archive = s3.client("archive");
    let stored = eventually("the archived object in S3", Duration::from_secs(10), || {
        let archive = archive.clone();
        async move { archive.get(&expected.into()).await.ok()?.bytes().await.ok() }
    })
    .await;
    assert_eq!(
        stored.as_ref(),
        sample("plant/line-3/weld-0001.jpg").as_slice()
    );
}

#[tokio::test]
async fn hostile_metadata_never_leaves_the_archive_or_breaks_a_segment() {
    init_logs();
    let nats = NatsServer::start();
    let long = "很长".repeat(200);
    let zone = zone_with(
        "plant/line-3/overview.png",
        "evil.png",
        Some(json!({
            "location": "../../../etc/\u{202e}gnp.exe",
            "device": format!("cam\u{0}\n{long}"),
            "captured_at": "not a time",
        })),
    );
    let _r = dir_resolver(&nats.url(), "plant", zone.path()).await;
    let archive = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&nats.url(), |c| {
        let mut a = archive_at(archive.path());
        a.dir_template = "{network}/{device}".into();
        a.file_template = "{location}-{id}.{ext}".into();
        c.archive = Some(a);
    })
    .await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("evil-1"), "plant", "evil.png").await;
    let answer = ws.next_answer().await;
    let path = archived_as(&answer.frame).unwrap().to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    assert_eq!(segments.len(), 3, "{path}");
    assert_eq!(segments[0], "plant");
    // Control characters are dropped when the information is read; the rest is kept.
    assert!(segments[1].starts_with("cam很长很长"), "{path}");
    assert!(segments[1].chars().count() <= 64, "{path}");
    assert_eq!(segments[2], "etc-gnp.exe-evil-1.png", "{path}");
    assert!(!path.contains(".."), "{path}");
    assert_eq!(
        image_info(&answer.frame).captured_at,
        None,
        "an invalid time is dropped"
    );
    archived_file(archive.path(), &path).await;
    assert_eq!(files_under(archive.path()), [path]);
}

#[tokio::test]
async fn the_nats_cli_sees_the_associated_information_as_headers() {
    init_logs();
    let nats = NatsServer::start();
    let zone = zone_with(
        "harbor/quay-east.jpg",
        "a.jpg",
        Some(json!({"location":"Quay East"})),
    );
    let _r = dir_resolver(&nats.url(), "harbor", zone.path()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = hand_publish(
        &client,
        &request_subject("harbor"),
        r#"{"id":"cli-i","key":"a.jpg"}"#,
        Some("me.i"),
        Some("cli-i"),
    )
    .await
    .unwrap();
    let reply = next_within(&mut sub, Duration::from_secs(10))
        .await
        .expect("reply");
    let info = reply_head(&reply).image.expect("an image").info;
    assert_eq!(info.location.name.as_deref(), Some("Quay East"));
    assert_eq!(
        info.captured_at.as_deref(),
        Some("2026-11-20T08:15:30+08:00")
    );
    assert!(
        info.location
            .latitude
            .is_some_and(|v| (36.067..36.068).contains(&v)),
        "{info:?}"
    );
    assert_eq!(
        info.device.as_deref(),
        Some("Hikvision DS-2CD2387 (serial HK-0042)")
    );
}

#[tokio::test]
async fn archiving_the_same_id_again_writes_the_same_path_once() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    s3.create_bucket("archive");
    for config in [
        archive_at(dir.path()),
        ArchiveConfig::new(s3.spec("archive")),
    ] {
        let archive = imgfetch_gateway::archive::Archive::open(&config)
            .await
            .unwrap();
        let info = ImageInfo {
            network: "harbor".into(),
            captured_at: Some("2026-11-20T08:15:30+08:00".into()),
            ..Default::default()
        };
        let bytes = bytes::Bytes::from(sample("harbor/quay-east.jpg"));
        let mut paths = Vec::new();
        for _ in 0..3 {
            match archive.store("same", "a.jpg", "image/jpeg", &info, bytes.clone()) {
                imgfetch_gateway::archive::Archived::Planned { path, written } => {
                    let written = within("an archive write", Duration::from_secs(10), written);
                    written.await.unwrap().unwrap();
                    paths.push(path);
                }
                other => panic!("expected a planned write, got {other:?}"),
            }
        }
        assert!(paths.iter().all(|p| p == &paths[0]), "{paths:?}");
        let listing: Vec<_> = {
            use futures::TryStreamExt;
            let store: Arc<dyn ObjectStore> = match &config.store {
                StoreSpec::File { root } => {
                    Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root).unwrap())
                }
                _ => Arc::new(s3.client("archive")),
            };
            store.list(None).try_collect().await.unwrap()
        };
        assert_eq!(listing.len(), 1, "one copy: {listing:?}");
        assert_eq!(listing[0].location.as_ref(), paths[0]);
        if let StoreSpec::File { root } = &config.store {
            // object_store's listing hides staging files; the directory itself must not have any.
            assert_eq!(files_under(root), std::slice::from_ref(&paths[0]));
        }
    }
}

#[tokio::test]
async fn a_restarted_gateway_keeps_the_archive_consistent() {
    init_logs();
    let nats = NatsServer::start();
    let _r = sample_resolver(&nats.url(), "harbor").await;
    let archive = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for (round, id) in ["before-restart", "after-restart"].iter().enumerate() {
        let gateway = Gateway::start(&nats.url(), |c| {
            c.archive = Some(archive_at(archive.path()))
        })
        .await;
        let r = reqwest::Client::new()
            .get(gateway.http("/v1/images/harbor/cranes/crane-07.jpg"))
            .header(http_header::REQUEST_ID, *id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        let path = percent_decode(r.headers()[http_header::ARCHIVED_AS].to_str().unwrap());
        gateway.stop().await;
        // Stopping drains archive writes: the file is complete once the gateway is gone.
        assert_eq!(
            std::fs::read(archive.path().join(&path)).unwrap(),
            sample("harbor/cranes/crane-07.jpg")
        );
        written.push(path);
    }
    written.sort();
    assert_eq!(
        files_under(archive.path()),
        written,
        "no temporary or partial files"
    );
}

#[tokio::test]
async fn a_failing_archive_never_keeps_the_image_from_the_client() {
    init_logs();
    let nats = NatsServer::start();
    let _r = sample_resolver(&nats.url(), "harbor").await;
    let s3 = S3Server::start();
    s3.create_bucket("archive");
    let gateway = Gateway::start(&nats.url(), |c| {
        c.archive = Some(ArchiveConfig::new(s3.spec("archive")))
    })
    .await;
    drop(s3); // the archive dies after the gateway started

    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("af-1"), "harbor", "quay-east.jpg").await;
    let answer = ws.next_answer().await;
    assert_image(&answer.frame);
    assert_eq!(
        answer.bytes.as_deref(),
        Some(sample("harbor/quay-east.jpg").as_slice())
    );
    let failed = ws.next_frame().await;
    let ServerFrame::ArchiveFailed {
        id,
        archived_as: path,
        ..
    } = &failed
    else {
        panic!("expected archive_failed, got {}", failed.to_json());
    };
    assert_eq!(id, "af-1");
    assert_eq!(Some(path.as_ref()), archived_as(&answer.frame));

    let r = reqwest::get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "HTTP clients get the image too");
}

#[tokio::test]
async fn a_bad_archive_stops_the_gateway_at_start() {
    let nats = NatsServer::start();
    let mut config = imgfetch_gateway::Config::new(nats.url());
    let mut a = archive_at(Path::new("/proc/imgfetch-cannot-create"));
    a.file_template = "{id}.{ext}".into();
    config.archive = Some(a);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = imgfetch_gateway::run(listener, config, Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot create directory"), "{err}");
}

#[tokio::test]
async fn a_redelivered_reply_for_the_same_id_is_not_archived_again() {
    init_logs();
    counted::recorder();
    let nats = NatsServer::start();
    let _r = sample_resolver(&nats.url(), "harbor").await;
    let archive = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.instance = "gw-redeliver".into();
        c.archive = Some(archive_at(archive.path()));
    })
    .await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("again"), "harbor", "cranes/crane-07.jpg")
        .await;
    let answer = ws.next_answer().await;
    let path = archived_as(&answer.frame).unwrap().to_owned();
    let original = archived_file(archive.path(), &path).await;

    // What a resolver that crashed before its ack would send on redelivery: another reply for
    // the same id, here with other bytes so that a second write would show.
    let late_before = counted::total("imgfetch_gateway_late_replies_total", &[]);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let headers = ReplyHead::ok(
        "again",
        image_head("harbor", "cranes/crane-07.jpg", "image/png"),
    )
    .to_headers();
    client
        .publish_with_headers(
            reply_subject("gw-redeliver", "again"),
            headers,
            sample("plant/line-3/overview.png").into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    // The gateway must have seen (and dropped) the late reply before it stops and drains its
    // writes. Other tests of this binary count into the same series, so this may end early, never
    // late; the reply is then still in flight and the test checks less, not wrongly.
    eventually(
        "the gateway to drop the late reply",
        Duration::from_secs(10),
        || async {
            (counted::total("imgfetch_gateway_late_replies_total", &[]) > late_before).then_some(())
        },
    )
    .await;
    gateway.stop().await;

    assert_eq!(files_under(archive.path()), std::slice::from_ref(&path));
    assert_eq!(std::fs::read(archive.path().join(&path)).unwrap(), original);
}

#[tokio::test]
async fn long_names_in_wide_scripts_keep_the_whole_id_and_extension() {
    init_logs();
    let nats = NatsServer::start();
    let zone = zone_with(
        "harbor/quay-east.jpg",
        "a.jpg",
        Some(json!({ "location": "\u{20000}".repeat(64) })),
    );
    let _r = dir_resolver(&nats.url(), "harbor", zone.path()).await;
    let archive = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.archive = Some(archive_at(archive.path()))
    })
    .await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    let mut paths = Vec::new();
    for id in ["x".repeat(127) + "1", "x".repeat(127) + "2"] {
        ws.fetch(Some(&id), "harbor", "a.jpg").await;
        let answer = ws.next_answer().await;
        let path = archived_as(&answer.frame)
            .unwrap_or_else(|| panic!("{}", answer.frame.to_json()))
            .to_owned();
        assert!(path.ends_with(&format!("_{id}.jpg")), "{path}");
        archived_file(archive.path(), &path).await;
        paths.push(path);
    }
    assert_ne!(paths[0], paths[1]);
    assert_eq!(files_under(archive.path()).len(), 2);
}

#[tokio::test]
async fn http_keeps_its_headers_small_when_extras_are_huge() {
    init_logs();
    let nats = NatsServer::start();
    let mut sidecar = serde_json::Map::new();
    sidecar.insert("location".into(), json!("Quay"));
    for i in 0..32 {
        sidecar.insert(format!("note_{i:02}"), json!("\u{20000}".repeat(256)));
    }
    let zone = zone_with(
        "harbor/quay-east.jpg",
        "a.jpg",
        Some(serde_json::Value::Object(sidecar)),
    );
    let _r = dir_resolver(&nats.url(), "harbor", zone.path()).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let r = reqwest::get(gateway.http("/v1/images/harbor/a.jpg"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h[http_header::INFO_TRUNCATED], "true");
    assert_eq!(h["imgfetch-location"], "Quay");
    let total: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    assert!(total < 12 * 1024, "{total} bytes of headers");
    // The websocket gets every extra.
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(None, "harbor", "a.jpg").await;
    let answer = ws.next_answer().await;
    assert_eq!(image_info(&answer.frame).extras.len(), 32);
}
