//! Restarts, idling and draining: accepted work is never lost.

use std::collections::HashMap;
use std::time::Duration;

use imgfetch_common::message::{RequestHead, Status};
use imgfetch_common::protocol::{gateway_request_subject, ping_subject, request_subject};
use imgfetch_tests::init_logs;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    assert_image, file_network, frame_id, next_within, reply_head, request_body, resolver_config,
    samples_dir, the_rest, Gateway, Resolver, WsClient,
};
use tokio_tungstenite::tungstenite::Message;

fn harbor_config(nats: &NatsServer, instance: &str) -> imgfetch_resolver::Config {
    let mut c = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    c.instance = instance.into();
    c
}

async fn publish_burst(client: &async_nats::Client, n: usize) {
    for i in 0..n {
        let headers = RequestHead {
            callback: Some(format!("burst.{i}")),
            msg_id: Some(format!("b{i}")),
            ..RequestHead::default()
        }
        .to_headers();
        client
            .publish_with_headers(
                request_subject("harbor"),
                headers,
                request_body(&format!("b{i}"), "quay-east.jpg", []).into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

#[tokio::test]
async fn an_idle_resolver_keeps_serving_and_stops_promptly() {
    init_logs();
    let nats = NatsServer::start();
    let mut config = harbor_config(&nats, "idle");
    // Waiting pulls expire at the server every 500 ms here (10 s by default), so that the wait
    // below sees several of them end and be renewed.
    config.pull_expires = Duration::from_millis(500);
    let resolver = Resolver::start(config).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A renewed pull is waiting, so the answer comes at once; a resolver that lost count of its
    // pulls would only ask again seconds later.
    let r = reqwest::Client::new()
        .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("answered within 2 s of asking");
    assert_eq!(r.status(), 200);
    // Stopping drains the pull inbox; nothing waits for a pull to expire. The bound is slack
    // for a loaded machine.
    tokio::time::timeout(Duration::from_secs(8), resolver.stop())
        .await
        .expect("resolver stops within 8 s");
}

#[tokio::test]
async fn requests_queued_while_no_resolver_runs_or_across_a_restart_are_each_answered_once() {
    init_logs();
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut replies = client.subscribe("burst.>").await.unwrap();

    // Provision, then stop: the queue keeps what arrives meanwhile.
    Resolver::start(harbor_config(&nats, "first"))
        .await
        .stop()
        .await;
    publish_burst(&client, 40).await;

    // A resolver that is stopped in the middle of the burst drains what it took; the next one
    // takes the rest.
    let second = Resolver::start(harbor_config(&nats, "second")).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let msg = next_within(&mut replies, Duration::from_secs(15))
        .await
        .expect("the second resolver answers before it is stopped");
    *counts.entry(msg.subject.to_string()).or_default() += 1;
    second.stop().await;
    let _third = Resolver::start(harbor_config(&nats, "third")).await;

    while counts.len() < 40 {
        let msg = next_within(&mut replies, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("only {} of 40 answered: {counts:?}", counts.len()));
        assert_eq!(reply_head(&msg).status, Status::Ok);
        *counts.entry(msg.subject.to_string()).or_default() += 1;
    }
    for msg in the_rest(&mut replies, Duration::from_millis(500)).await {
        *counts.entry(msg.subject.to_string()).or_default() += 1;
    }
    assert!(
        counts.values().all(|c| *c == 1),
        "each answered exactly once: {counts:?}"
    );
}

#[tokio::test]
async fn a_draining_gateway_is_not_ready_but_still_answers_what_it_accepted() {
    init_logs();
    let nats = NatsServer::start();
    Resolver::start(harbor_config(&nats, "provisioner"))
        .await
        .stop()
        .await;
    // Something answers pings, so the gateway admits the request while no resolver works.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut pings = client.subscribe(ping_subject("harbor")).await.unwrap();
    let responder = client.clone();
    let ping_task = tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(m) = pings.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, "{}".into()).await;
            }
        }
    });
    client.flush().await.unwrap();

    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let addr = gateway.addr;
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("drain-1"), "harbor", "quay-east.jpg").await;
    ws.next_accepted().await;

    let readyz = format!("http://{addr}/readyz");
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    let stop = tokio::spawn(gateway.stop());
    // Not ready while draining. The listener stops accepting at once, so the probe is refused,
    // or closed unanswered when the kernel had accepted it already; a 503 would do as well. A
    // 200, a timeout or any other error fails.
    match reqwest::get(&readyz).await {
        Ok(r) => assert_eq!(r.status(), 503, "not ready while draining"),
        Err(e) => assert!(
            (e.is_connect() || e.is_request()) && !e.is_timeout(),
            "readyz while draining: {e:?}"
        ),
    }
    // The gateway must keep running for the request it accepted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stop.is_finished(),
        "the gateway stopped with an accepted request unanswered"
    );

    ping_task.abort();
    let _resolver = Resolver::start(harbor_config(&nats, "late")).await;
    let answer = ws.next_answer().await;
    assert_image(&answer.frame);
    assert_eq!(frame_id(&answer.frame), Some("drain-1"));
    // Then the socket is closed as "going away", so the client reconnects elsewhere.
    let closed = loop {
        match ws.next_message().await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => continue,
            None => panic!("the socket ended without a close frame"),
        }
    };
    let closed = closed.expect("a close frame with a code");
    assert_eq!(u16::from(closed.code), 1001, "{closed:?}");
    assert_eq!(closed.reason.as_str(), "the gateway is shutting down");
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("gateway stops after draining")
        .expect("stop task");
}

#[tokio::test]
async fn without_provisioning_a_resolver_only_verifies() {
    init_logs();
    let nats = NatsServer::start();
    let mut verify_only = harbor_config(&nats, "verifier");
    verify_only.provision = false;
    let err = Resolver::start_err(verify_only.clone()).await;
    assert!(
        err.to_string()
            .contains("does not exist (provisioning is off"),
        "{err}"
    );

    // Once the stream and consumer exist (here made by a provisioning resolver), it runs.
    Resolver::start(harbor_config(&nats, "provisioner"))
        .await
        .stop()
        .await;
    let resolver = Resolver::start(verify_only).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = imgfetch_tests::pipeline::hand_publish(
        &client,
        &request_subject("harbor"),
        r#"{"id":"v1","key":"quay-east.jpg"}"#,
        Some("me.v1"),
        Some("v1"),
    )
    .await
    .unwrap();
    let reply = next_within(&mut sub, Duration::from_secs(10))
        .await
        .expect("reply");
    assert_eq!(reply_head(&reply).status, Status::Ok);
    resolver.stop().await;

    // A network the stream does not capture is refused, not added.
    let mut other = resolver_config(
        &nats.url(),
        vec![file_network("plant", samples_dir().join("plant"))],
    );
    other.provision = false;
    let err = Resolver::start_err(other).await;
    let subjects = format!(
        "does not capture {:?}, {:?}",
        gateway_request_subject("plant"),
        request_subject("plant")
    );
    assert!(err.to_string().contains(&subjects), "{err}");
}

#[tokio::test]
async fn idle_networks_hold_no_slot_that_a_busy_network_needs() {
    init_logs();
    let nats = NatsServer::start();
    let plant = samples_dir().join("plant");
    let mut config = resolver_config(
        &nats.url(),
        vec![
            file_network("idle-a", &plant),
            file_network("idle-b", &plant),
            file_network("idle-c", &plant),
            file_network("harbor", samples_dir().join("harbor")),
        ],
    );
    // One slot for four networks: if an idle network's waiting pull held it, every request on
    // the busy one would wait for idle pulls to expire, seconds each.
    config.concurrency = 1;
    let _resolver = Resolver::start(config).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let started = std::time::Instant::now();
    for i in 0..10 {
        let r = reqwest::get(gateway.http("/v1/images/harbor/quay-east.jpg"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "fetch {i}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "10 fetches on the busy network took {took:?}; expected well under 5 s"
    );
}

#[tokio::test]
async fn after_nats_server_restarts_the_pipeline_serves_again_within_seconds() {
    init_logs();
    let mut nats = NatsServer::start();
    let _resolver = Resolver::start(harbor_config(&nats, "survivor")).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let url = gateway.http("/v1/images/harbor/quay-east.jpg");
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);

    // The server forgets every waiting pull; the resolver must notice and pull again, rather
    // than wait for pulls that will never be answered.
    nats.restart();
    let http = reqwest::Client::new();
    imgfetch_tests::eventually(
        "a fetch answered after the restart",
        Duration::from_secs(10),
        || async {
            let r = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_resolver_stopped_with_a_request_in_hand_gives_it_back_at_once() {
    init_logs();
    let nats = NatsServer::start();
    let zone = tempfile::tempdir().unwrap();
    // Over the inline limit: streamed, and nothing is sent before the receiver gives credit.
    imgfetch_tests::write_large_image(&zone.path().join("big.jpg"), 3 * 1024 * 1024, 3);
    let ack_wait = Duration::from_secs(30);
    let resolver = Resolver::start({
        let mut c = resolver_config(&nats.url(), vec![file_network("slowzone", zone.path())]);
        c.grace = Duration::from_millis(300);
        c.consumer.ack_wait = ack_wait;
        c
    })
    .await;

    // A receiver that takes the stream's head and never gives credit: the resolver holds the
    // request, waiting.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut callback = client.subscribe("me.give-1").await.unwrap();
    let headers = RequestHead {
        callback: Some("me.give-1".into()),
        msg_id: Some("give-1".into()),
        accept_stream: true,
        deadline_ms: None,
    }
    .to_headers();
    let js = async_nats::jetstream::new(client.clone());
    js.publish_with_headers(
        request_subject("slowzone"),
        headers,
        request_body("give-1", "big.jpg", []).into(),
    )
    .await
    .unwrap()
    .await
    .expect("the stream stored the request");
    let head = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut callback),
    )
    .await
    .expect("the stream's head within 10 s")
    .unwrap();
    assert!(
        reply_head(&head).chunked.is_some(),
        "a streamed answer's head"
    );

    // Stopped past its grace period, it gives the request back: redelivered now, not after
    // the 30 s ack wait.
    let stopped = std::time::Instant::now();
    resolver.stop().await;
    let (_fake, consumer) = imgfetch_tests::fake::fake_resolver(&nats.url(), "slowzone").await;
    let (id, _, again) = imgfetch_tests::fake::take_request(&consumer).await;
    let waited = stopped.elapsed();
    assert_eq!(id, "give-1");
    assert_eq!(again.info().unwrap().delivered, 2);
    assert!(
        waited < ack_wait / 2,
        "redelivered after {waited:?}: the request was not given back"
    );
}
