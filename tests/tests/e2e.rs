//! The three client paths end to end, and the topologies: two networks on two kinds of store,
//! and two replicas sharing one network.

use std::collections::HashMap;
use std::time::Duration;

use imgfetch_common::frames::{ClientFrame, ServerFrame};
use imgfetch_common::message::{RequestHead, Status};
use imgfetch_common::protocol::{http_header, request_subject, ErrorCode, DEFAULT_STREAM};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    error_code, file_network, frame_id, hand_publish, header_of, next_within, reply_head,
    request_body, resolver_config, sample_resolver, samples_dir, the_rest, Gateway, Resolver,
    WsClient,
};
use imgfetch_tests::s3::S3Server;
use imgfetch_tests::{init_logs, sample};
use object_store::ObjectStoreExt;

async fn one_zone(nats: &NatsServer) -> Resolver {
    sample_resolver(&nats.url(), "harbor").await
}

#[tokio::test]
async fn websocket_client_gets_accepted_then_image_then_bytes() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = one_zone(&nats).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;

    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.send_frame(&ClientFrame::Fetch {
        id: Some("ws-1".into()),
        network: "harbor".into(),
        key: "quay-east.jpg".into(),
        meta: [("camera".to_owned(), "east".to_owned())].into(),
    })
    .await;
    // The `accepted` frame exactly as docs/API.md spells it.
    let accepted: serde_json::Value = serde_json::from_str(&ws.next_text().await).unwrap();
    assert_eq!(accepted, serde_json::json!({"type":"accepted","id":"ws-1"}));
    let answer = ws.next_answer().await;
    let ServerFrame::Image {
        id,
        network,
        key,
        content_type,
        size,
        metadata,
        meta,
        ..
    } = &answer.frame
    else {
        panic!("expected an image frame, got {}", answer.frame.to_json());
    };
    assert_eq!(id, "ws-1");
    assert_eq!(network, "harbor");
    assert_eq!(key, "quay-east.jpg");
    assert_eq!(content_type, "image/jpeg");
    assert_eq!(meta.get("camera").map(String::as_str), Some("east"));
    let expected = sample("harbor/quay-east.jpg");
    assert_eq!(*size, expected.len() as u64);
    assert_eq!(
        metadata.get("size").cloned(),
        Some(expected.len().to_string())
    );
    assert!(
        metadata
            .get("last_modified")
            .is_some_and(|s| s.contains('T')),
        "{}",
        answer.frame.to_json()
    );
    assert_eq!(answer.bytes.as_deref(), Some(expected.as_slice()));
}

#[tokio::test]
async fn websocket_carries_many_requests_at_once_and_makes_ids_when_missing() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = one_zone(&nats).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    let keys = ["quay-east.jpg", "cranes/crane-07.jpg", "missing.jpg"];
    for key in keys {
        ws.fetch(None, "harbor", key).await;
    }
    let mut accepted = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < keys.len() {
        let frame = ws.next_frame().await;
        match &frame {
            ServerFrame::Accepted { id } => accepted.push(id.to_string()),
            ServerFrame::Image { key, .. } => {
                let bytes = ws.next_message().await;
                assert!(
                    matches!(
                        bytes,
                        Some(tokio_tungstenite::tungstenite::Message::Binary(_))
                    ),
                    "{bytes:?}"
                );
                answers.push((key.to_string(), None));
            }
            ServerFrame::Error { .. } => {
                answers.push((frame_id(&frame).unwrap().to_owned(), error_code(&frame)))
            }
            other => panic!("unexpected frame {}", other.to_json()),
        }
    }
    assert_eq!(
        accepted.len(),
        3,
        "every request is accepted once: {accepted:?}"
    );
    let unique: std::collections::HashSet<_> = accepted.iter().collect();
    assert_eq!(unique.len(), 3, "generated ids are unique: {accepted:?}");
    assert_eq!(
        answers.iter().filter(|(_, code)| code.is_none()).count(),
        2,
        "{answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|(_, code)| *code == Some(ErrorCode::NotFound))
            .count(),
        1,
        "{answers:?}"
    );
}

#[tokio::test]
async fn http_get_returns_bytes_content_type_and_request_id() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = one_zone(&nats).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let http = reqwest::Client::new();

    let response = http
        .get(gateway.http("/v1/images/harbor/cranes/crane-07.jpg"))
        .header(http_header::REQUEST_ID, "http-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert_eq!(response.headers()[http_header::REQUEST_ID], "http-1");
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        sample("harbor/cranes/crane-07.jpg").as_slice()
    );

    // Without an id the gateway makes one and returns it.
    let response = http
        .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()[http_header::REQUEST_ID]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.len() >= 16, "generated id {id:?}");

    let response = http
        .get(gateway.http("/v1/images/harbor/nope.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_found", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("nope.jpg"),
        "{body}"
    );
}

#[tokio::test]
async fn nats_cli_json_publish_with_callback_header_gets_raw_image() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = one_zone(&nats).await;
    let client = async_nats::connect(nats.url()).await.unwrap();

    // Exactly what docs/PROTOCOL.md tells a NATS CLI user to publish: the subject as spelled.
    let mut sub = hand_publish(
        &client,
        "imgfetch.req.harbor",
        r#"{"id":"cli-1","key":"quay-east.jpg","meta":{"who":"ops"}}"#,
        Some("me.inbox.cli-1"),
        Some("cli-1"),
    )
    .await
    .unwrap();
    let reply = next_within(&mut sub, Duration::from_secs(10))
        .await
        .expect("a reply on the callback");
    let head = reply_head(&reply);
    assert_eq!(head.status, Status::Ok);
    assert_eq!(head.id.as_deref(), Some("cli-1"));
    assert_eq!(
        head.image.map(|image| image.content_type).as_deref(),
        Some("image/jpeg")
    );
    // The header a NATS CLI user sees for `meta`, as docs/PROTOCOL.md spells it.
    assert_eq!(
        header_of(&reply, "Imgfetch-Meta-who").as_deref(),
        Some("ops")
    );
    assert_eq!(
        reply.payload.as_ref(),
        sample("harbor/quay-east.jpg").as_slice()
    );
}

#[tokio::test]
async fn two_networks_on_file_and_s3_stores_each_answer_their_own() {
    init_logs();
    let nats = NatsServer::start();
    let s3 = S3Server::start();
    s3.create_bucket("plant");
    let png = sample("plant/line-3/overview.png");
    s3.client("plant")
        .put(&"line-3/overview.png".into(), png.clone().into())
        .await
        .expect("put through S3");

    let _harbor = one_zone(&nats).await;
    let _plant = Resolver::start(resolver_config(
        &nats.url(),
        vec![imgfetch_resolver::config::NetworkSpec {
            name: "plant".into(),
            store: s3.spec("plant"),
        }],
    ))
    .await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let http = reqwest::Client::new();

    let r = http
        .get(gateway.http("/v1/images/plant/line-3/overview.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().as_ref(), png.as_slice());

    let r = http
        .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Each zone's store holds only its own images.
    let r = http
        .get(gateway.http("/v1/images/plant/quay-east.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(gateway.http("/v1/images/harbor/line-3/overview.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn two_replicas_share_one_network_and_each_request_is_answered_once() {
    init_logs();
    let nats = NatsServer::start();
    let mut a = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    a.instance = "replica-a".into();
    // Few slots each, so that neither replica can take the whole burst in one pull.
    a.concurrency = 4;
    let mut b = a.clone();
    b.instance = "replica-b".into();
    let (ra, rb) = tokio::join!(Resolver::start(a), Resolver::start(b));

    let client = async_nats::connect(nats.url()).await.unwrap();
    const N: usize = 60;
    let mut sub = client.subscribe("test.cb.>").await.unwrap();
    for i in 0..N {
        let headers = RequestHead {
            callback: Some(format!("test.cb.{i}")),
            msg_id: Some(format!("id-{i}")),
            ..RequestHead::default()
        }
        .to_headers();
        client
            .publish_with_headers(
                request_subject("harbor"),
                headers,
                request_body(&format!("id-{i}"), "quay-east.jpg", []).into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut by_replica: HashMap<String, usize> = HashMap::new();
    let mut record = |msg: async_nats::Message| {
        let head = reply_head(&msg);
        assert_eq!(head.status, Status::Ok, "{msg:?}");
        *counts.entry(msg.subject.to_string()).or_default() += 1;
        *by_replica
            .entry(head.resolver.unwrap_or_default())
            .or_default() += 1;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut received = 0;
    while received < N && tokio::time::Instant::now() < deadline {
        if let Some(msg) = next_within(&mut sub, Duration::from_secs(5)).await {
            record(msg);
            received += 1;
        }
    }
    // Give any duplicate a chance to show up.
    for msg in the_rest(&mut sub, Duration::from_millis(500)).await {
        record(msg);
    }
    assert_eq!(counts.len(), N, "every request answered: {counts:?}");
    assert!(
        counts.values().all(|c| *c == 1),
        "each answered exactly once: {counts:?}"
    );
    let mut replicas: Vec<_> = by_replica.keys().cloned().collect();
    replicas.sort();
    assert_eq!(
        replicas,
        ["replica-a", "replica-b"],
        "both replicas took work: {by_replica:?}"
    );

    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(DEFAULT_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.state.messages, 0,
        "work queue drained: {:?}",
        info.state
    );
    ra.stop().await;
    rb.stop().await;
}
