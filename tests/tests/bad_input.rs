//! Every kind of bad input gets a clear error, and nothing accepted is lost.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use imgfetch_common::protocol::{header, request_subject, ErrorCode};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    ask, dir_resolver, error_body, file_network, hand_publish, header_of, next_within,
    resolver_config, sample_resolver, samples_dir, the_rest, wait_served, Gateway, Resolver,
    WsClient,
};
use imgfetch_tests::s3::S3Server;
use imgfetch_tests::{eventually, init_logs, sample};
use serde_json::json;

async fn harbor(nats: &NatsServer) -> Resolver {
    sample_resolver(&nats.url(), "harbor").await
}

/// Waits until the stream holds no message and the network's consumer has nothing pending.
async fn queue_drained(client: &async_nats::Client) {
    let js = jetstream::new(client.clone());
    eventually("the work queue to drain", Duration::from_secs(15), || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("IMGFETCH").await.ok()?;
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
    ws.fetch(json!({"type":"fetch","id":"u1","network":"atlantis","key":"a.jpg"}))
        .await;
    let frame = ws.next_json().await;
    assert_eq!(
        frame["type"], "error",
        "no accepted frame for an unknown network: {frame}"
    );
    assert_eq!(frame["code"], "unknown_network");
    assert_eq!(frame["id"], "u1");

    // By hand: the gateway's sentinel answers, since no stream stores the request.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let reply = ask(
        &client,
        "imgfetch.req.atlantis",
        r#"{"id":"u2","key":"a.jpg"}"#,
        "u2",
    )
    .await;
    assert_eq!(
        header_of(&reply, header::STATUS).as_deref(),
        Some("unknown_network")
    );
    assert_eq!(header_of(&reply, header::ID).as_deref(), Some("u2"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusals are immediate"
    );

    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("IMGFETCH").await.unwrap();
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
        ws.fetch(json!({"type":"fetch","id":format!("k{i}"),"network":"harbor","key":key}))
            .await;
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "error", "key {key:?}: {frame}");
        assert_eq!(frame["code"], "invalid_request", "key {key:?}: {frame}");
        assert!(
            frame["message"].as_str().unwrap().starts_with("key:"),
            "key {key:?}: {frame}"
        );
    }

    // Published by hand, the resolver applies the same rules, answers, and terms the message.
    for (i, key) in keys.iter().enumerate() {
        let body = json!({"id": format!("h{i}"), "key": key}).to_string();
        let reply = ask(&client, "imgfetch.req.harbor", &body, &format!("h{i}")).await;
        assert_eq!(
            header_of(&reply, header::STATUS).as_deref(),
            Some("invalid_request"),
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
        let reply = ask(&client, "imgfetch.req.harbor", body, &format!("bad{i}")).await;
        assert_eq!(
            header_of(&reply, header::STATUS).as_deref(),
            Some("invalid_request"),
            "{body:?}"
        );
        assert!(!reply.payload.is_empty(), "the error says what is wrong");
    }
    // No callback at all: nothing to answer, but the message must not stay in the queue.
    hand_publish(
        &client,
        "imgfetch.req.harbor",
        r#"{"id":"nocb","key":"quay-east.jpg"}"#,
        None,
        Some("nocb"),
    )
    .await;
    // A wildcard callback cannot be answered either.
    hand_publish(
        &client,
        "imgfetch.req.harbor",
        r#"{"id":"wild","key":"quay-east.jpg"}"#,
        Some("me.>"),
        Some("wild"),
    )
    .await;

    // The queue still works after all of that.
    let reply = ask(
        &client,
        "imgfetch.req.harbor",
        r#"{"id":"good","key":"quay-east.jpg"}"#,
        "good",
    )
    .await;
    assert_eq!(header_of(&reply, header::STATUS).as_deref(), Some("ok"));
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
    let meta: serde_json::Map<_, _> = (0..40).map(|i| (format!("k{i}"), json!("v"))).collect();
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(
        json!({"type":"fetch","id":"m1","network":"harbor","key":"quay-east.jpg","meta":meta}),
    )
    .await;
    let frame = ws.next_json().await;
    assert_eq!(frame["code"], "invalid_request", "{frame}");

    // A frame over the gateway's limit closes the socket instead of being buffered.
    let huge = json!({"type":"fetch","network":"harbor","key":"k".repeat(64 * 1024)}).to_string();
    ws.send_text(&huge).await;
    let next = ws.next_message().await;
    assert!(
        matches!(
            next,
            None | Some(tokio_tungstenite::tungstenite::Message::Close(_))
        ),
        "expected the socket to close, got {next:?}"
    );

    // By hand, over the stream's 64 KiB message limit: the sentinel says so.
    let body =
        json!({"id":"big","key":"quay-east.jpg","meta":{"pad":"x".repeat(70 * 1024)}}).to_string();
    let reply = ask(&client, "imgfetch.req.harbor", &body, "big").await;
    assert_eq!(
        header_of(&reply, header::STATUS).as_deref(),
        Some("invalid_request")
    );
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
    let mut replies = client.subscribe("imgfetch.reply.>").await.unwrap();

    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(json!({"type":"fetch","id":"dup","network":"harbor","key":"quay-east.jpg"}))
        .await;
    let first = ws.next_answer().await;
    assert_eq!(first.frame["type"], "image");

    let started = Instant::now();
    ws.fetch(json!({"type":"fetch","id":"dup","network":"harbor","key":"quay-east.jpg"}))
        .await;
    let second = ws.next_json().await;
    assert_eq!(second["type"], "error", "{second}");
    assert_eq!(second["code"], ErrorCode::DuplicateId.as_str());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered without waiting for a deadline"
    );

    // The same id twice at once on HTTP: one image, one duplicate_id.
    let (a, b) = tokio::join!(
        reqwest::Client::new()
            .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
            .header("X-Request-Id", "twin")
            .send(),
        reqwest::Client::new()
            .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
            .header("X-Request-Id", "twin")
            .send(),
    );
    let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);

    // The resolver answered each id once: no second fetch.
    let mut seen = Vec::new();
    for msg in the_rest(&mut replies, Duration::from_millis(700)).await {
        seen.push(header_of(&msg, header::ID).unwrap_or_default());
    }
    seen.sort();
    assert_eq!(seen, ["dup", "twin"]);

    let r = reqwest::Client::new()
        .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .header("X-Request-Id", "bad id")
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
    let mut pings = client.subscribe("imgfetch.ping.harbor").await.unwrap();
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
    let mut late = client.subscribe("imgfetch.reply.>").await.unwrap();
    let _back = harbor(&nats).await;
    let reply = next_within(&mut late, Duration::from_secs(10))
        .await
        .expect("the queued request is settled");
    assert_eq!(
        header_of(&reply, header::STATUS).as_deref(),
        Some("timeout")
    );
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
    let meta: serde_json::Map<_, _> = (0..32)
        .map(|i| (format!("m{i}"), json!("x".repeat(1000))))
        .collect();
    let body = json!({"id":"wide","key":"a.png","meta":meta}).to_string();
    let reply = ask(&client, "imgfetch.req.plant", &body, "wide").await;
    assert_eq!(
        header_of(&reply, header::STATUS).as_deref(),
        Some("too_large"),
        "{:?}",
        reply.payload
    );
    queue_drained(&client).await;
}
