//! Every kind of bad input gets a clear error, and nothing accepted is lost.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use imgfetch_common::frames::{ClientFrame, ServerFrame};
use imgfetch_common::message::Status;
use imgfetch_common::protocol::{
    http_header, ping_subject, request_subject, ErrorCode, DEFAULT_STREAM, REPLY_PREFIX,
};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    ask, assert_error, assert_image, dir_resolver, error_body, error_code, file_network, frame_id,
    hand_publish, next_within, reply_head, request_body, resolver_config, sample_resolver,
    samples_dir, the_rest, wait_served, Gateway, Resolver, WsClient,
};
use imgfetch_tests::s3::S3Server;
use imgfetch_tests::{eventually, init_logs, sample};
use serde_json::json;

async fn harbor(nats: &NatsServer) -> Resolver {
    sample_resolver(&nats.url(), "harbor").await
}

/// The status of a reply on a callback subject.
fn status(reply: &async_nats::Message) -> Status {
    reply_head(reply).status
}

/// Waits until the stream holds no message and the network's consumer has nothing pending.
async fn queue_drained(client: &async_nats::Client) {
    let js = jetstream::new(client.clone());
    eventually("the work queue to drain", Duration::from_secs(15), || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream(DEFAULT_STREAM).await.ok()?;
            let info = stream.info().await.ok()?;
            (info.state.messages == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_network_is_refused_at_once_on_every_path_and_never_queued() {
    init_logs();
    let nats = NatsServer::start();
    let _r = harbor(&nats).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;

    let started = Instant::now();
    let body = error_body(&gateway.http("/v1/images/atlantis/a.jpg"), 400).await;
    assert_eq!(body["code"], "unknown_network", "{body}");

    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("u1"), "atlantis", "a.jpg").await;
    let frame = ws.next_frame().await;
    assert_eq!(
        error_code(&frame),
        Some(ErrorCode::UnknownNetwork),
        "no accepted frame for an unknown network: {}",
        frame.to_json()
    );
    assert_eq!(frame_id(&frame), Some("u1"));

    // By hand: the gateway's sentinel answers, since no stream stores the request.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let reply = ask(
        &client,
        &request_subject("atlantis"),
        r#"{"id":"u2","key":"a.jpg"}"#,
        "u2",
    )
    .await;
    let head = reply_head(&reply);
    assert_eq!(head.status, Status::Error(ErrorCode::UnknownNetwork));
    assert_eq!(head.id.as_deref(), Some("u2"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusals are immediate"
    );

    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(DEFAULT_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    assert!(
        !info.config.subjects.contains(&request_subject("atlantis")),
        "{:?}",
        info.config.subjects
    );
    assert_eq!(info.state.messages, 0);
}

#[tokio::test]
async fn hostile_keys_are_invalid_requests_at_the_gateway_and_at_the_resolver() {
    init_logs();
    let nats = NatsServer::start();
    let _r = harbor(&nats).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let long = "k".repeat(2000);
    let keys = [
        "",
        "/etc/passwd",
        "../secret.jpg",
        "a/../../b.jpg",
        "a\\b.jpg",
        "a\u{0}b.jpg",
        "%2e%2e/x.jpg",
        "a//b.jpg",
        long.as_str(),
    ];

    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    for (i, key) in keys.iter().enumerate() {
        ws.fetch(Some(&format!("k{i}")), "harbor", key).await;
        let frame = ws.next_frame().await;
        let ServerFrame::Error { code, message, .. } = &frame else {
            panic!("key {key:?}: {}", frame.to_json());
        };
        assert_eq!(*code, ErrorCode::InvalidRequest, "key {key:?}: {message}");
        assert!(message.starts_with("key:"), "key {key:?}: {message}");
    }

    // Published by hand, the resolver applies the same rules, answers, and terms the message.
    for (i, key) in keys.iter().enumerate() {
        let body = request_body(&format!("h{i}"), key, []);
        let reply = ask(&client, &request_subject("harbor"), &body, &format!("h{i}")).await;
        assert_eq!(
            status(&reply),
            Status::Error(ErrorCode::InvalidRequest),
            "key {key:?}"
        );
    }
    queue_drained(&client).await;

    // A symlink inside the store that points outside it cannot be read either.
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.jpg"), b"secret").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.jpg"),
        dir.path().join("link.jpg"),
    )
    .unwrap();
    let _vault = dir_resolver(&nats.url(), "vault", dir.path()).await;
    let body = error_body(&gateway.http("/v1/images/vault/link.jpg"), 400).await;
    assert!(
        body["message"].as_str().unwrap().contains("outside"),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_bodies_and_missing_callbacks_never_block_the_queue() {
    init_logs();
    let nats = NatsServer::start();
    let _r = harbor(&nats).await;
    let _gateway = Gateway::start(&nats.url(), |_| {}).await;
    let client = async_nats::connect(nats.url()).await.unwrap();

    // Malformed on purpose, so written by hand.
    for (i, body) in [
        r#"{"id":"x","key":"#,
        "\u{c1}\u{c1}garbage",
        r#"{"id":"x","kye":"typo.jpg"}"#,
        r#"{"id":"bad id!","key":"a.jpg"}"#,
        r#"{"id":"n1","network":"plant","key":"a.jpg"}"#,
    ]
    .iter()
    .enumerate()
    {
        let reply = ask(
            &client,
            &request_subject("harbor"),
            body,
            &format!("bad{i}"),
        )
        .await;
        assert_eq!(
            status(&reply),
            Status::Error(ErrorCode::InvalidRequest),
            "{body:?}"
        );
        assert!(!reply.payload.is_empty(), "the error says what is wrong");
    }
    // No callback at all: nothing to answer, but the message must not stay in the queue.
    hand_publish(
        &client,
        &request_subject("harbor"),
        r#"{"id":"nocb","key":"quay-east.jpg"}"#,
        None,
        Some("nocb"),
    )
    .await;
    // A wildcard callback cannot be answered either.
    hand_publish(
        &client,
        &request_subject("harbor"),
        r#"{"id":"wild","key":"quay-east.jpg"}"#,
        Some("me.>"),
        Some("wild"),
    )
    .await;

    // The queue still works after all of that.
    let reply = ask(
        &client,
        &request_subject("harbor"),
        r#"{"id":"good","key":"quay-east.jpg"}"#,
        "good",
    )
    .await;
    assert_eq!(status(&reply), Status::Ok);
    queue_drained(&client).await;
}

#[tokio::test]
async fn oversized_requests_and_frames_are_refused() {
    init_logs();
    let nats = NatsServer::start();
    let _r = harbor(&nats).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let client = async_nats::connect(nats.url()).await.unwrap();

    // Too many meta entries.
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.send_frame(&ClientFrame::Fetch {
        id: Some("m1".into()),
        network: "harbor".into(),
        key: "quay-east.jpg".into(),
        meta: (0..40).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
    })
    .await;
    let frame = ws.next_frame().await;
    assert_error(&frame, ErrorCode::InvalidRequest);

    // A frame over the gateway's limit closes the socket instead of being buffered.
    ws.fetch(None, "harbor", &"k".repeat(64 * 1024)).await;
    let next = ws.next_message().await;
    assert!(
        matches!(
            next,
            None | Some(tokio_tungstenite::tungstenite::Message::Close(_))
        ),
        "expected the socket to close, got {next:?}"
    );

    // By hand, over the stream's 64 KiB message limit: the sentinel says so.
    let body = request_body(
        "big",
        "quay-east.jpg",
        [("pad".to_owned(), "x".repeat(70 * 1024))],
    );
    let reply = ask(&client, &request_subject("harbor"), &body, "big").await;
    assert_eq!(status(&reply), Status::Error(ErrorCode::InvalidRequest));
    assert!(
        String::from_utf8_lossy(&reply.payload).contains("limit"),
        "{:?}",
        reply.payload
    );
}

#[tokio::test]
async fn images_over_the_size_limit_are_too_large() {
    init_logs();
    let nats = NatsServer::start();
    let mut config = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    config.max_image_bytes = 1000;
    let _r = Resolver::start(config).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let body = error_body(&gateway.http("/v1/images/harbor/quay-east.jpg"), 502).await;
    assert_eq!(body["code"], "too_large", "{body}");
    assert!(body["message"].as_str().unwrap().contains("1000"), "{body}");

    // An inline limit the server cannot carry is refused at start.
    let mut config = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    config.max_inline_bytes = Some(64 * 1024 * 1024);
    let err = Resolver::start_err(config).await;
    assert!(err.to_string().contains("max_payload"), "{err}");
}

#[tokio::test]
async fn a_dead_store_is_retried_then_answered_store_unavailable() {
    init_logs();
    let nats = NatsServer::start();
    let s3 = S3Server::start();
    s3.create_bucket("cams");
    let mut config = resolver_config(
        &nats.url(),
        vec![imgfetch_resolver::config::NetworkSpec {
            name: "cams".into(),
            store: s3.spec("cams"),
        }],
    );
    config.store_attempts = 3;
    config.store_timeout = Duration::from_secs(2);
    let _r = Resolver::start(config).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    drop(s3); // the store dies after the resolver started

    let body = error_body(&gateway.http("/v1/images/cams/a.jpg"), 503).await;
    assert_eq!(body["code"], "store_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("failed 3 times"),
        "{body}"
    );
}

#[tokio::test]
async fn an_unreadable_store_stops_the_resolver_at_start() {
    init_logs();
    let nats = NatsServer::start();
    let err = Resolver::start_err(resolver_config(
        &nats.url(),
        vec![file_network("x", "/nonexistent/imgfetch")],
    ))
    .await;
    assert!(
        err.to_string()
            .contains("cannot open directory /nonexistent/imgfetch"),
        "{err}"
    );

    let s3 = S3Server::start();
    let mut spec = s3.options();
    spec.secret_access_key = Some("wrong".into());
    s3.create_bucket("cams");
    let config = resolver_config(
        &nats.url(),
        vec![imgfetch_resolver::config::NetworkSpec {
            name: "cams".into(),
            store: imgfetch_resolver::config::StoreSpec::S3 {
                bucket: "cams".into(),
                prefix: None,
                options: spec,
            },
        }],
    );
    let err = Resolver::start_err(config).await;
    assert!(err.to_string().contains("not readable"), "{err}");
}

#[tokio::test]
async fn duplicate_ids_get_an_answer_and_are_fetched_once() {
    init_logs();
    let nats = NatsServer::start();
    let _r = harbor(&nats).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut replies = client.subscribe(format!("{REPLY_PREFIX}.>")).await.unwrap();

    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("dup"), "harbor", "quay-east.jpg").await;
    let first = ws.next_answer().await;
    assert_image(&first.frame);

    let started = Instant::now();
    ws.fetch(Some("dup"), "harbor", "quay-east.jpg").await;
    let second = ws.next_frame().await;
    assert_error(&second, ErrorCode::DuplicateId);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered without waiting for a deadline"
    );

    // The same id twice at once on HTTP: one image, one duplicate_id.
    let (a, b) = tokio::join!(
        reqwest::Client::new()
            .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
            .header(http_header::REQUEST_ID, "twin")
            .send(),
        reqwest::Client::new()
            .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
            .header(http_header::REQUEST_ID, "twin")
            .send(),
    );
    let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);

    // The resolver answered each id once: no second fetch.
    let mut seen = Vec::new();
    for msg in the_rest(&mut replies, Duration::from_millis(700)).await {
        seen.push(reply_head(&msg).id.unwrap_or_default());
    }
    seen.sort();
    assert_eq!(seen, ["dup", "twin"]);

    let r = reqwest::Client::new()
        .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .header(http_header::REQUEST_ID, "bad id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn no_resolver_is_503_and_a_silent_one_is_504() {
    init_logs();
    let nats = NatsServer::start();
    let resolver = harbor(&nats).await;
    resolver.stop().await;
    let gateway = Gateway::start(&nats.url(), |c| {
        c.request_timeout = Duration::from_millis(1500)
    })
    .await;

    let body = error_body(&gateway.http("/v1/images/harbor/quay-east.jpg"), 503).await;
    assert_eq!(body["code"], "unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no resolver"),
        "{body}"
    );

    // Something answers pings but never takes work: the client gets its timeout, not a hang.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut pings = client.subscribe(ping_subject("harbor")).await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(m) = pings.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, "{}".into()).await;
            }
        }
    });
    // A flush only writes the subscription out; an answered ping proves the server has it.
    wait_served(&client, "harbor").await;
    let started = Instant::now();
    let body = error_body(&gateway.http("/v1/images/harbor/quay-east.jpg"), 504).await;
    assert_eq!(body["code"], "timeout", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The request is still queued; a resolver that comes back takes it and sees its deadline
    // passed, so it answers `timeout` rather than fetching for nobody.
    let mut late = client.subscribe(format!("{REPLY_PREFIX}.>")).await.unwrap();
    let _back = harbor(&nats).await;
    let reply = next_within(&mut late, Duration::from_secs(10))
        .await
        .expect("the queued request is settled");
    assert_eq!(status(&reply), Status::Error(ErrorCode::Timeout));
}

#[tokio::test]
async fn nats_down_is_503_and_not_ready() {
    init_logs();
    let nats = NatsServer::start();
    let _r = harbor(&nats).await;
    let gateway = Gateway::start(&nats.url(), |c| c.publish_timeout = Duration::from_secs(2)).await;
    assert_eq!(
        reqwest::get(gateway.http("/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    drop(nats);
    let body = error_body(&gateway.http("/v1/images/harbor/quay-east.jpg"), 503).await;
    assert_eq!(body["code"], "unavailable", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not connected to NATS"),
        "{body}"
    );
    eventually(
        "readiness to turn false",
        Duration::from_secs(10),
        || async {
            let r = reqwest::get(gateway.http("/readyz")).await.ok()?;
            (r.status() == 503).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn metadata_that_would_overflow_the_message_is_too_large_not_a_retry_loop() {
    init_logs();
    // 68 KiB messages leave 4 KiB for the image after the 64 KiB headroom: enough for the PNG,
    // not for the PNG plus 64 KiB of extras and meta.
    let nats = NatsServer::start_with("max_payload: 69632");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.png"),
        sample("plant/line-3/overview.png"),
    )
    .unwrap();
    let wide = "\u{1d11e}".repeat(256); // 4 bytes each, at the 256-character cap
    let mut sidecar = serde_json::Map::new();
    sidecar.insert("location".into(), json!(wide));
    sidecar.insert("device".into(), json!(wide));
    for i in 0..32 {
        sidecar.insert(format!("extra_{i}"), json!(wide));
    }
    std::fs::write(
        dir.path().join("a.png.json"),
        serde_json::Value::Object(sidecar).to_string(),
    )
    .unwrap();
    let _r = dir_resolver(&nats.url(), "plant", dir.path()).await;

    let client = async_nats::connect(nats.url()).await.unwrap();
    let meta = (0..32).map(|i| (format!("m{i}"), "x".repeat(1000)));
    let body = request_body("wide", "a.png", meta);
    let reply = ask(&client, &request_subject("plant"), &body, "wide").await;
    assert_eq!(
        status(&reply),
        Status::Error(ErrorCode::TooLarge),
        "{:?}",
        reply.payload
    );
    queue_drained(&client).await;
}
