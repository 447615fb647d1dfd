//! Hostile callbacks and forged replies, on a real nats-server.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use imgfetch_common::digest::sha256_hex;
use imgfetch_common::message::{ImageHead, ReplyHead};
use imgfetch_common::protocol::{self, header, ping_subject, reply_subject, request_subject};
use imgfetch_tests::fake::{fake_resolver, image_head, take_request};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    assert_image, hand_publish, header_of, image_info, request_body, sample_resolver, Gateway,
    WsClient,
};
use imgfetch_tests::{counted, eventually, init_logs};

#[tokio::test]
async fn callbacks_on_server_and_imgfetch_subjects_get_no_reply_and_are_termed() {
    init_logs();
    let nats = NatsServer::start();
    let _r = sample_resolver(&nats.url(), "harbor").await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for (i, callback) in [
        request_subject("harbor"),
        ping_subject("harbor"),
        format!("$JS.API.STREAM.INFO.{}", protocol::DEFAULT_STREAM),
        "$SYS.REQ.SERVER.PING".to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("hostile-{i}");
        let body = request_body(&id, "quay-east.jpg", []);
        let mut sub = hand_publish(
            &client,
            &request_subject("harbor"),
            &body,
            Some(&callback),
            Some(&id),
        )
        .await
        .unwrap();
        // Whatever arrives on the callback subject (for the request subject itself, this test's
        // own request), none of it is a reply. Any message may come, so the status header is
        // looked for by name: a reply is whatever carries one.
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            assert!(
                header_of(&msg, header::STATUS).is_none(),
                "a reply went to {callback}: {:?}",
                msg.headers
            );
        }
        // The request was termed at once: nothing pending, nothing delivered and unsettled,
        // nothing stored in its place.
        eventually("the request termed", Duration::from_secs(10), || {
            let js = js.clone();
            async move {
                let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
                    .get_consumer_from_stream(
                        protocol::consumer_name("harbor"),
                        protocol::DEFAULT_STREAM,
                    )
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_ack_pending == 0 && info.num_pending == 0 && info.num_redelivered == 0)
                    .then_some(())
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_second_party_cannot_answer_a_waiting_clients_request() {
    init_logs();
    counted::recorder();
    let nats = NatsServer::start();
    let (resolver, consumer) = fake_resolver(&nats.url(), "forge").await;
    let gateway = Gateway::start(&nats.url(), |c| c.instance = "gw-victim".into()).await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("V"), "forge", "mine.jpg").await;
    let (id, callback, msg) = take_request(&consumer).await;
    assert_eq!(id, "V");
    // The callback is the gateway's, but its last token is not the client's id.
    assert!(
        callback.starts_with(&reply_subject("gw-victim", "")),
        "{callback}"
    );
    assert!(!callback.ends_with(".V"), "{callback}");

    let reply = |id: &str, body: &'static [u8], network: &str| {
        let head = ReplyHead::ok(
            id,
            ImageHead {
                sha256: Some(sha256_hex(body)),
                ..image_head(network, "mine.jpg", "image/jpeg")
            },
        );
        (head.to_headers(), Bytes::from_static(body))
    };
    // A second party answers on the subject the client's id would give, and on the real
    // callback with another id: neither reaches the client.
    let forged_before = counted::total("imgfetch_gateway_forged_replies_total", &[]);
    let (h, b) = reply("V", b"someone else's image", "forge");
    resolver
        .publish_with_headers(reply_subject("gw-victim", "V"), h, b)
        .await
        .unwrap();
    let (h, b) = reply("W", b"someone else's image", "forge");
    resolver
        .publish_with_headers(callback.clone(), h, b)
        .await
        .unwrap();
    resolver.flush().await.unwrap();
    // The router has refused the reply with the wrong id before the real one is sent. (One
    // connection's messages also reach a subscriber in order; this makes it explicit.)
    eventually(
        "the gateway to refuse the forged reply",
        Duration::from_secs(10),
        || async {
            (counted::total("imgfetch_gateway_forged_replies_total", &[]) > forged_before)
                .then_some(())
        },
    )
    .await;

    // The real answer, claiming another network, still reaches the client as its own, with the
    // network it asked for.
    let (h, b) = reply("V", b"the real image", "elsewhere");
    resolver
        .publish_with_headers(callback.clone(), h, b)
        .await
        .unwrap();
    msg.ack().await.unwrap();
    let answer = ws.next_answer().await;
    assert_image(&answer.frame);
    assert_eq!(answer.bytes.as_deref(), Some(&b"the real image"[..]));
    assert_eq!(
        image_info(&answer.frame).network,
        "forge",
        "{}",
        answer.frame.to_json()
    );
}
