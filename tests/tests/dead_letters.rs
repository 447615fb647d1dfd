//! Dead letters (docs/RELIABILITY.md): a request that runs out of deliveries, or that has no
//! callback a resolver may answer on, is copied once to `IMGFETCH_DLQ`, counted, removed from
//! the work queue, and its requester hears one terminal `undeliverable`; a copy republished
//! the way the docs tell operators is answered.
//!
//! The stuck network's consumer redelivers after 1 s, twice at most, and a stand-in resolver
//! takes its requests and never settles them; a real resolver of another network runs the
//! dead-letter processor.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::HeaderMap;
use imgfetch_common::message::{DeadLetter, Status};
use imgfetch_common::protocol::{
    self, header, http_header, DeadReason, ErrorCode, DEFAULT_DLQ_STREAM, DEFAULT_STREAM,
    REPLY_PREFIX,
};
use imgfetch_common::provision::ConsumerSettings;
use imgfetch_tests::fake::stuck_resolver;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    file_network, hand_publish, next_within, reply_head, resolver_config, sample_resolver,
    samples_dir, Gateway, Resolver,
};
use imgfetch_tests::{counted, eventually, init_logs, sample};

/// Redeliver after 1 s, twice at most: a request is dead about 2 s after it is queued.
fn stuck_settings() -> ConsumerSettings {
    ConsumerSettings {
        ack_wait: Duration::from_secs(1),
        max_deliver: 2,
        ..ConsumerSettings::default()
    }
}

/// `imgfetch_resolver_dead_letters_total` for one reason and network, 0 when never counted.
/// Each test uses its own network names, so tests running at once do not mix their counts.
fn dead_letters_counted(reason: &str, network: &str) -> u64 {
    counted::total(
        "imgfetch_resolver_dead_letters_total",
        &[("reason", reason), ("network", network)],
    )
}

/// The dead letters of `network`, oldest first.
async fn dead_letters(
    js: &jetstream::Context,
    network: &str,
) -> Vec<jetstream::message::StreamMessage> {
    let stream = js
        .get_stream(DEFAULT_DLQ_STREAM)
        .await
        .expect("the DLQ stream exists");
    let subject = protocol::dead_letter_subject(network);
    let mut found = Vec::new();
    let mut seq = 1;
    while let Ok(m) = stream
        .raw_message_builder()
        .next_by_subject(subject.clone())
        .sequence(seq)
        .send()
        .await
    {
        seq = m.sequence + 1;
        found.push(m);
    }
    found
}

/// How many requests of `network` the work queue still holds.
async fn queued(js: &jetstream::Context, network: &str) -> u64 {
    let stream = js
        .get_stream(DEFAULT_STREAM)
        .await
        .expect("the request stream");
    let subject = protocol::request_subject(network);
    let mut subjects = stream
        .info_with_subjects(subject.clone())
        .await
        .expect("stream info");
    let mut count = 0;
    while let Some(Ok((s, n))) = futures::StreamExt::next(&mut subjects).await {
        if s == subject {
            count += n as u64;
        }
    }
    count
}

/// Waits until the dead-letter consumer has handled every advisory it was given.
async fn advisories_settled(js: &jetstream::Context) {
    eventually(
        "every advisory handled and acked",
        Duration::from_secs(10),
        || async {
            let mut consumer: PullConsumer = js
                .get_consumer_from_stream(protocol::DLQ_CONSUMER, DEFAULT_DLQ_STREAM)
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0)
                .then_some(())
        },
    )
    .await
}

/// A header of a dead letter. `common::message::DeadLetter` only writes them, so they are read
/// here by name.
/// What the dead letter `m` adds to its request.
fn read_letter(m: &jetstream::message::StreamMessage) -> DeadLetter {
    DeadLetter::from_headers(Some(&m.headers)).unwrap_or_else(|e| panic!("{e}: {:?}", m.headers))
}

fn header(m: &jetstream::message::StreamMessage, name: &str) -> String {
    m.headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| panic!("dead letter has no {name} header: {:?}", m.headers))
}

/// Asks for `quay-east.jpg` of `network` as request `id`, which must end `undeliverable` (502).
async fn undeliverable(gateway: &Gateway, network: &str, id: &str) {
    let url = gateway.http(&format!("/v1/images/{network}/quay-east.jpg"));
    let response = reqwest::Client::new()
        .get(&url)
        .header(http_header::REQUEST_ID, id)
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(response.status(), 502, "an undeliverable request is a 502");
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["code"], "undeliverable", "{body}");
    assert_eq!(body["id"], id, "{body}");
}

#[tokio::test]
async fn a_request_out_of_deliveries_is_one_dead_letter_and_one_undeliverable_answer() {
    init_logs();
    counted::recorder();
    let nats = NatsServer::start();
    let _processor = sample_resolver(&nats.url(), "harbor").await;
    let (taken, _stop) = stuck_resolver(&nats.url(), "stuck", &stuck_settings()).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());

    undeliverable(&gateway, "stuck", "dead-1").await;
    assert_eq!(
        taken.load(Ordering::SeqCst),
        2,
        "delivered max_deliver times"
    );

    // The copy is stored before the requester is answered.
    let letters = dead_letters(&js, "stuck").await;
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:?}");
    let letter = &letters[0];
    let dead = read_letter(letter);
    assert_eq!(dead.reason, DeadReason::MaxDeliveries);
    assert_eq!(dead.deliveries, 2);
    let seq = dead.stream_seq.to_string();
    let advisory: serde_json::Value =
        serde_json::from_str(dead.advisory.as_deref().expect("an advisory"))
            .expect("advisory JSON");
    assert_eq!(
        advisory["type"],
        "io.nats.jetstream.advisory.v1.max_deliver"
    );
    assert_eq!(advisory["stream"], DEFAULT_STREAM);
    assert_eq!(advisory["consumer"], protocol::consumer_name("stuck"));
    assert_eq!(advisory["stream_seq"].to_string(), seq);
    assert!(
        header(letter, header::CALLBACK).starts_with(&format!("{REPLY_PREFIX}.")),
        "the copy keeps the original's headers"
    );
    assert_eq!(
        header(letter, header::MSG_ID),
        format!("dead-{DEFAULT_STREAM}-{seq}")
    );
    let request: serde_json::Value =
        rmp_serde::from_slice(&letter.payload).expect("the original msgpack body");
    assert_eq!(request["id"], "dead-1");
    assert_eq!(request["key"], "quay-east.jpg");

    advisories_settled(&js).await;
    assert_eq!(
        queued(&js, "stuck").await,
        0,
        "the original left the work queue"
    );
    assert_eq!(dead_letters_counted("max_deliveries", "stuck"), 1);
    assert_eq!(dead_letters(&js, "stuck").await.len(), 1, "still one copy");
}

#[tokio::test]
async fn a_request_without_a_usable_callback_is_a_dead_letter() {
    init_logs();
    counted::recorder();
    let nats = NatsServer::start();
    let _resolver = Resolver::start(resolver_config(
        &nats.url(),
        vec![file_network("quay", samples_dir().join("harbor"))],
    ))
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let subject = protocol::request_subject("quay");
    let body = r#"{"id":"bad-cb","key":"quay-east.jpg"}"#;
    // A callback on imgfetch's own request subjects is refused: answering would enqueue work.
    hand_publish(&client, &subject, body, Some(&subject), Some("bad-cb")).await;
    hand_publish(
        &client,
        &subject,
        r#"{"id":"no-cb","key":"quay-east.jpg"}"#,
        None,
        Some("no-cb"),
    )
    .await;

    let letters = eventually("two dead letters", Duration::from_secs(10), || async {
        let letters = dead_letters(&js, "quay").await;
        (letters.len() >= 2).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 2, "one copy each: {letters:?}");
    let reasons: Vec<DeadReason> = letters.iter().map(|l| read_letter(l).reason).collect();
    assert!(reasons.contains(&DeadReason::BadCallback), "{reasons:?}");
    assert!(reasons.contains(&DeadReason::NoCallback), "{reasons:?}");
    for letter in &letters {
        let dead = read_letter(letter);
        assert_eq!(dead.deliveries, 1, "termed on first sight");
        assert!(dead.advisory.is_none(), "no advisory for a term");
    }
    let bad = letters
        .iter()
        .find(|l| read_letter(l).reason == DeadReason::BadCallback)
        .unwrap();
    assert_eq!(header(bad, header::CALLBACK), subject);
    assert_eq!(&bad.payload[..], body.as_bytes(), "the body as published");
    eventually(
        "the termed requests gone",
        Duration::from_secs(5),
        || async { (queued(&js, "quay").await == 0).then_some(()) },
    )
    .await;
    assert_eq!(dead_letters_counted("bad_callback", "quay"), 1);
    assert_eq!(dead_letters_counted("no_callback", "quay"), 1);
}

#[tokio::test]
async fn a_hand_publisher_hears_undeliverable_once_and_a_replayed_copy_is_answered() {
    init_logs();
    counted::recorder();
    let nats = NatsServer::start();
    let _processor = sample_resolver(&nats.url(), "harbor").await;
    let (_, stop) = stuck_resolver(&nats.url(), "relay", &stuck_settings()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());

    let mut answers = hand_publish(
        &client,
        &protocol::request_subject("relay"),
        r#"{"id":"relay-1","key":"quay-east.jpg"}"#,
        Some("me.relay-1"),
        Some("relay-1"),
    )
    .await
    .unwrap();
    let answer = next_within(&mut answers, Duration::from_secs(15))
        .await
        .expect("a terminal answer within 15 s");
    let head = reply_head(&answer);
    assert_eq!(head.status, Status::Error(ErrorCode::Undeliverable));
    assert_eq!(head.id.as_deref(), Some("relay-1"));
    assert_eq!(head.network.as_deref(), Some("relay"));
    // Once the advisory is acked nothing else can answer; a flush delivers anything sent.
    advisories_settled(&js).await;
    client.flush().await.unwrap();
    assert!(
        next_within(&mut answers, Duration::from_millis(200))
            .await
            .is_none(),
        "exactly one answer"
    );

    // The zone is fixed: a real resolver serves it now.
    stop.cancel();
    let mut config = resolver_config(
        &nats.url(),
        vec![file_network("relay", samples_dir().join("harbor"))],
    );
    config.consumer = stuck_settings();
    let _fixed = Resolver::start(config).await;

    // Replay as docs/RELIABILITY.md says: the copy's body and headers, less the dead-letter
    // ones, a callback of one's own and a fresh Nats-Msg-Id. By hand, header by header, as an
    // operator following the docs does.
    let letters = dead_letters(&js, "relay").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let mut headers = HeaderMap::new();
    for (name, values) in letters[0].headers.iter() {
        let name_str: &str = name.as_ref();
        if name_str.starts_with("Imgfetch-Dead-") || name_str.starts_with("Nats-") {
            continue;
        }
        for v in values {
            headers.append(name.clone(), v.clone());
        }
    }
    headers.insert(header::CALLBACK, "me.replay-1");
    headers.insert(header::MSG_ID, "relay-1-replay-1");
    let mut replayed = client.subscribe("me.replay-1").await.unwrap();
    js.publish_with_headers(
        protocol::request_subject("relay"),
        headers,
        letters[0].payload.clone(),
    )
    .await
    .unwrap()
    .await
    .expect("the request stream takes the replay");
    let answer = next_within(&mut replayed, Duration::from_secs(10))
        .await
        .expect("the replay answered within 10 s");
    let head = reply_head(&answer);
    assert_eq!(head.status, Status::Ok);
    assert_eq!(head.id.as_deref(), Some("relay-1"));
    assert_eq!(&answer.payload[..], &sample("harbor/quay-east.jpg")[..]);
    assert_eq!(dead_letters_counted("max_deliveries", "relay"), 1);
}

/// A resolver with `--dead-letters-only` serves no network and collects the dead letters of
/// all: the hub's one when every zone is behind a leaf node (whose resolvers leave the collector
/// to the hub).
#[tokio::test]
async fn a_collector_that_serves_no_network_turns_an_exhausted_request_into_a_dead_letter() {
    init_logs();
    counted::recorder();
    let nats = NatsServer::start();
    let (taken, _stop) = stuck_resolver(&nats.url(), "remote", &stuck_settings()).await;
    let mut config = imgfetch_resolver::Config::new(nats.url(), Vec::new());
    config.dead_letter_collector = true;
    let port = imgfetch_tests::free_port();
    config.http_listen = Some(([127, 0, 0, 1], port).into());
    let collector = Resolver::start(config).await;
    // Ready, and staying so: with no network there is no stat endpoint, which once made its
    // service task end and restart without end, and kept /readyz false.
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut ready_since = None;
    while ready_since.is_none_or(|t: tokio::time::Instant| t.elapsed() < Duration::from_secs(2)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector was not ready for 2 s in a row within 10 s: {:?}",
            reqwest::get(&readyz).await.map(|r| r.status())
        );
        let ok = matches!(reqwest::get(&readyz).await, Ok(r) if r.status() == 200);
        ready_since = if ok {
            ready_since.or(Some(tokio::time::Instant::now()))
        } else {
            None
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());

    undeliverable(&gateway, "remote", "dead-remote").await;
    assert_eq!(
        taken.load(Ordering::SeqCst),
        2,
        "delivered max_deliver times"
    );
    let letters = dead_letters(&js, "remote").await;
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:?}");
    assert_eq!(read_letter(&letters[0]).reason, DeadReason::MaxDeliveries);
    advisories_settled(&js).await;
    assert_eq!(
        queued(&js, "remote").await,
        0,
        "the original left the work queue"
    );
    assert_eq!(dead_letters_counted("max_deliveries", "remote"), 1);

    gateway.stop().await;
    collector.stop().await;
}
