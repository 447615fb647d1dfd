//! Service discovery and the `imgfetch.fetch` endpoint, asked with a plain client the way the
//! NATS CLI does (`nats micro ls/info/stats`, `nats req imgfetch.fetch ...`).

use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use futures::StreamExt;
use imgfetch_common::message::{FetchAnswer, Status};
use imgfetch_common::protocol::{stat_subject, FETCH_SUBJECT, GATEWAY_SERVICE, RESOLVER_SERVICE};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    answer_status, file_network, header_of, resolver_config, samples_dir, Gateway, Resolver,
};
use imgfetch_tests::{eventually, init_logs, sample, write_large_image};
use serde_json::Value;

/// Sends `subject` and gathers the answers until `want` came; `None` if fewer came in 2 s.
async fn gather(client: &async_nats::Client, subject: &str, want: usize) -> Option<Vec<Value>> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(subject.to_owned(), inbox, "".into())
        .await
        .expect("publish");
    let mut answers = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while answers.len() < want {
        let msg = tokio::time::timeout_at(until, sub.next()).await.ok()??;
        answers.push(serde_json::from_slice(&msg.payload).expect("a JSON answer"));
    }
    Some(answers)
}

/// The one answer to `subject`, once the instances registered.
async fn one(client: &async_nats::Client, subject: &str) -> Value {
    eventually(subject, Duration::from_secs(10), || async {
        gather(client, subject, 1).await.map(|mut v| v.remove(0))
    })
    .await
}

/// The fetch endpoint's stats in a `$SRV.STATS` answer.
fn fetch_stats(stats: &Value) -> (u64, u64) {
    let endpoint = stats["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["name"] == "fetch")
        .unwrap_or_else(|| panic!("no fetch endpoint in {stats}"));
    (
        endpoint["num_requests"].as_u64().unwrap(),
        endpoint["num_errors"].as_u64().unwrap(),
    )
}

/// The micro protocol's error headers of an answer: its code and its message.
fn service_error(msg: &async_nats::Message) -> (String, String) {
    let code = header_of(msg, NATS_SERVICE_ERROR_CODE).expect("an error code");
    let error = header_of(msg, NATS_SERVICE_ERROR).expect("an error message");
    (code, error)
}

async fn fetch(client: &async_nats::Client, body: &str) -> async_nats::Message {
    let ask = client.request(FETCH_SUBJECT, body.to_owned().into());
    tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .expect("an answer within 10 s")
        .expect("an answer")
}

#[tokio::test]
async fn every_instance_is_listed_with_its_networks_and_counts() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = Resolver::start({
        let mut config = resolver_config(
            &nats.url(),
            vec![
                file_network("harbor", samples_dir().join("harbor")),
                file_network("plant", samples_dir().join("plant")),
            ],
        );
        config.instance = "resolver-1".into();
        config
    })
    .await;
    let _gateway = Gateway::start(&nats.url(), |c| c.instance = "gateway-1".into()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();

    // `nats micro ls`: one answer per instance.
    eventually("both instances", Duration::from_secs(10), || async {
        gather(&client, "$SRV.PING", 2).await
    })
    .await;
    let mut pings = gather(&client, "$SRV.PING", 2).await.unwrap();
    pings.sort_by_key(|p| p["name"].as_str().unwrap().to_owned());
    assert_eq!(pings[0]["name"], GATEWAY_SERVICE);
    assert_eq!(pings[0]["metadata"]["instance"], "gateway-1");
    assert_eq!(pings[1]["name"], RESOLVER_SERVICE);
    assert_eq!(pings[1]["metadata"]["instance"], "resolver-1");
    assert_eq!(pings[1]["metadata"]["networks"], "harbor,plant");
    for ping in &pings {
        assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    }

    // The forms naming a service, and one instance of it.
    let resolver = one(&client, &format!("$SRV.PING.{RESOLVER_SERVICE}")).await;
    assert_eq!(resolver["metadata"]["networks"], "harbor,plant");
    let id = pings[0]["id"].as_str().unwrap();
    let by_id = one(&client, &format!("$SRV.INFO.{GATEWAY_SERVICE}.{id}")).await;
    assert_eq!(by_id["id"], id);
    let endpoints = by_id["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{by_id}");
    assert_eq!(endpoints[0]["subject"], FETCH_SUBJECT);
    assert_eq!(endpoints[0]["queue_group"], GATEWAY_SERVICE);
    let info = one(&client, &format!("$SRV.INFO.{RESOLVER_SERVICE}")).await;
    assert_eq!(info["metadata"]["instance"], "resolver-1");

    // `nats micro stats`: the counts move with requests and errors.
    let before = fetch_stats(&one(&client, &format!("$SRV.STATS.{GATEWAY_SERVICE}")).await);
    assert_eq!(before, (0, 0));
    fetch(&client, r#"{"network":"harbor","key":"quay-east.jpg"}"#).await;
    fetch(&client, r#"{"network":"harbor","key":"missing.jpg"}"#).await;
    let after = fetch_stats(&one(&client, &format!("$SRV.STATS.{GATEWAY_SERVICE}")).await);
    assert_eq!(after, (2, 1));
    let all = gather(&client, "$SRV.STATS", 2).await.expect("two stats");
    assert!(all.iter().any(|s| s["name"] == RESOLVER_SERVICE), "{all:?}");

    // The resolver: one stat endpoint per network, and in its `data` what the network's
    // requests from the stream ended in (the two fetches above: an image and a not_found).
    let info = one(&client, &format!("$SRV.INFO.{RESOLVER_SERVICE}")).await;
    let mut subjects: Vec<(String, String, String)> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["subject"].as_str().unwrap().to_owned(),
                e["queue_group"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            (
                "harbor".into(),
                stat_subject("harbor"),
                RESOLVER_SERVICE.into()
            ),
            (
                "plant".into(),
                stat_subject("plant"),
                RESOLVER_SERVICE.into()
            ),
        ]
    );
    let data = eventually("the resolver's counts", Duration::from_secs(10), || async {
        let stats = one(&client, &format!("$SRV.STATS.{RESOLVER_SERVICE}")).await;
        let harbor = endpoint_stats(&stats, "harbor");
        (harbor["data"] == serde_json::json!({"images": 1, "errors": 1})).then_some(stats)
    })
    .await;
    assert_eq!(
        endpoint_stats(&data, "plant")["data"],
        serde_json::json!({"images": 0, "errors": 0})
    );
}

/// One endpoint's entry in a `$SRV.STATS` answer.
fn endpoint_stats<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {stats}"))
}

#[tokio::test]
async fn a_resolver_says_what_its_store_knows_of_a_key_without_reading_it() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = Resolver::start(resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    ))
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    one(&client, &format!("$SRV.INFO.{RESOLVER_SERVICE}")).await;
    let stat = |body: &'static str| {
        let client = client.clone();
        async move {
            let ask = client.request(stat_subject("harbor"), body.into());
            tokio::time::timeout(Duration::from_secs(10), ask)
                .await
                .expect("an answer within 10 s")
                .expect("an answer")
        }
    };

    let found = stat(r#"{"key":"quay-east.jpg"}"#).await;
    assert_eq!(header_of(&found, NATS_SERVICE_ERROR_CODE), None);
    assert_eq!(answer_status(&found), Status::Ok);
    let answer: Value = serde_json::from_slice(&found.payload).unwrap();
    assert_eq!(answer["network"], "harbor");
    assert_eq!(answer["key"], "quay-east.jpg");
    assert_eq!(answer["size"], sample("harbor/quay-east.jpg").len());
    let modified = answer["last_modified"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(modified, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{modified}"
    );
    let nested = stat(r#"{"key":"cranes/crane-07.jpg"}"#).await;
    assert_eq!(answer_status(&nested), Status::Ok);

    for (body, code, prefix) in [
        (r#"{"key":"no/such.jpg"}"#, "404", "not_found: "),
        (r#"{"key":"cranes"}"#, "404", "not_found: "),
        (r#"{"key":"../etc/passwd"}"#, "400", "invalid_request: "),
        (r#"{"key":"/etc/passwd"}"#, "400", "invalid_request: "),
        ("quay-east.jpg", "400", "invalid_request: "),
        (r#"{"key":"a.jpg","extra":1}"#, "400", "invalid_request: "),
    ] {
        let msg = stat(body).await;
        let (got, error) = service_error(&msg);
        assert_eq!(got, code, "{body}: {error}");
        assert!(error.starts_with(prefix), "{body}: {error}");
        assert_eq!(answer_status(&msg).as_str(), prefix.trim_end_matches(": "));
    }

    // `nats micro stats`: eight stat requests, six of them errors.
    let stats = one(&client, &format!("$SRV.STATS.{RESOLVER_SERVICE}")).await;
    let harbor = endpoint_stats(&stats, "harbor");
    assert_eq!(
        (
            harbor["num_requests"].as_u64(),
            harbor["num_errors"].as_u64()
        ),
        (Some(8), Some(6)),
        "{harbor}"
    );
}

#[tokio::test]
async fn fetch_answers_the_image_or_a_service_error() {
    init_logs();
    let nats = NatsServer::start();
    let big = tempfile::tempdir().unwrap();
    write_large_image(&big.path().join("big.jpg"), 256 * 1024, 7);
    let _resolver = Resolver::start({
        let mut config = resolver_config(
            &nats.url(),
            vec![
                file_network("harbor", samples_dir().join("harbor")),
                file_network("big", big.path()),
            ],
        );
        config.max_inline_bytes = Some(64 * 1024);
        config
    })
    .await;
    let _gateway = Gateway::start(&nats.url(), |_| {}).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    one(&client, &format!("$SRV.INFO.{GATEWAY_SERVICE}")).await;

    let body =
        r#"{"id":"nats-1","network":"harbor","key":"quay-east.jpg","meta":{"camera":"east"}}"#;
    let msg = fetch(&client, body).await;
    assert_eq!(
        msg.payload.as_ref(),
        sample("harbor/quay-east.jpg").as_slice()
    );
    assert_eq!(header_of(&msg, NATS_SERVICE_ERROR_CODE), None);
    let answer = FetchAnswer::from_headers(msg.headers.as_ref()).expect("a fetch answer");
    let head = answer.head;
    assert_eq!(head.status, Status::Ok);
    assert_eq!(head.id.as_deref(), Some("nats-1"));
    assert_eq!(head.network.as_deref(), Some("harbor"));
    let image = head.image.expect("an image");
    assert_eq!(image.content_type, "image/jpeg");
    assert_eq!(image.key, "quay-east.jpg");
    assert_eq!(image.size, Some(5543));
    assert_eq!(image.info.device.as_deref(), Some("Quay camera 3"));
    assert_eq!(
        image.info.meta.get("camera").map(String::as_str),
        Some("east")
    );

    let missing = fetch(&client, r#"{"network":"harbor","key":"missing.jpg"}"#).await;
    let (code, error) = service_error(&missing);
    assert_eq!(code, "404");
    assert!(error.starts_with("not_found: "), "{error}");
    assert!(missing.payload.is_empty());

    for (body, status, prefix) in [
        ("nope", "400", "invalid_request: "),
        (r#"{"network":"harbor"}"#, "400", "invalid_request: "),
        (
            r#"{"network":"harbor","key":"a","kye":1}"#,
            "400",
            "invalid_request: ",
        ),
        (
            r#"{"network":"nowhere","key":"a.jpg"}"#,
            "400",
            "unknown_network: ",
        ),
        // Over the inline limit: streamed to HTTP and websocket clients, refused here.
        (r#"{"network":"big","key":"big.jpg"}"#, "502", "too_large: "),
    ] {
        let (code, error) = service_error(&fetch(&client, body).await);
        assert_eq!(code, status, "{body}: {error}");
        assert!(error.starts_with(prefix), "{body}: {error}");
        if prefix == "too_large: " {
            assert!(error.contains("HTTP"), "{error}");
        }
    }
}
