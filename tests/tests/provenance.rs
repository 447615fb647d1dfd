//! No role reads or steers another's traffic (docs/SECURITY.md, provenance and inboxes), against
//! a real nats-server running the committed roles: the local ones of `nats.conf` and the
//! Kubernetes ones the Helm chart renders (`tests/fixtures/chart-accounts.conf`).
//!
//! - The sniff-and-race attack: a publisher listening on `_INBOX.>` while a gateway's request
//!   is delivered to a resolver, then publishing another request with that request's id and
//!   callback, so that a resolver answers the waiting client with an image of the attacker's
//!   choice. The publisher hears nothing, and the resolver refuses the callback.
//! - Each role's inbox: no role may subscribe to another's.

use std::time::Duration;

use imgfetch_common::connect::NatsAuth;
use imgfetch_common::message::{DeadLetter, RequestHead};
use imgfetch_common::protocol::{self, http_header, DeadReason};
use imgfetch_common::provision::{self, ConsumerSettings, StreamSettings};
use imgfetch_tests::nats::{inbox_of, refused, NatsServer};
use imgfetch_tests::pipeline::{
    file_network, next_within, resolver_config, samples_dir, Gateway, Resolver,
};
use imgfetch_tests::{eventually, init_logs, sample, within};

/// A resolver of `network` reading the sample images of `harbor`, logged in as the resolver
/// role; `pinger` checks that it serves (the resolver role may not ping).
async fn resolver_of(nats: &NatsServer, pinger: &async_nats::Client, network: &str) -> Resolver {
    let mut config = resolver_config(
        &nats.url(),
        vec![file_network(network, samples_dir().join("harbor"))],
    );
    config.nats_auth = nats.auth("resolver");
    Resolver::start_pinging(config, pinger).await
}

/// The sniff-and-race attack of a publisher on a gateway `instance` logged in with `gateway`.
async fn sniff_and_race(nats: &NatsServer, gateway: NatsAuth, instance: &str) {
    let (publisher, _) = nats.connect_as("publisher").await;
    // The publisher may listen to its own inbox space, and does, for everything.
    let mut sniffed = publisher.subscribe("_INBOX.>").await.unwrap();
    publisher.flush().await.unwrap();
    // The test's pings go from another publisher connection, whose answers the sniffer may see
    // (publishers share _INBOX.>) and leaves out.
    let (pinger, _) = nats
        .connect_as_with_inbox("publisher", "_INBOX.pinger")
        .await;

    let harbor = resolver_of(nats, &pinger, "harbor").await;
    // `slow` exists (its consumer is provisioned) and answers pings, but pulls nothing yet: a
    // request for it waits in the stream, as one for a zone slower than another would.
    let (resolver_role, _) = nats.connect_as("resolver").await;
    let mut pings = resolver_role
        .queue_subscribe(
            protocol::ping_subject("slow"),
            protocol::RESOLVER_QUEUE_GROUP.to_owned(),
        )
        .await
        .unwrap();
    let answering = resolver_role.clone();
    let ponger = tokio::spawn(async move {
        while let Some(ping) = futures::StreamExt::next(&mut pings).await {
            if let Some(reply) = ping.reply {
                let _ = answering.publish(reply, "".into()).await;
            }
        }
    });
    let js = async_nats::jetstream::new(resolver_role);
    provision::ensure_network(
        &js,
        &StreamSettings::default(),
        &ConsumerSettings::default(),
        "slow",
        true,
    )
    .await
    .expect("the resolver role provisions network slow");
    let instance = instance.to_owned();
    let gateway = Gateway::start(&nats.url(), move |c| {
        c.nats_auth = gateway;
        c.instance = instance;
        c.archive = None;
    })
    .await;

    // 1. A request through the gateway, delivered to the harbor resolver: the publisher hears
    //    none of it on _INBOX.>.
    let r = reqwest::get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        sample("harbor/quay-east.jpg").as_slice()
    );
    // The victim: a client waiting for an image of the slow network.
    let victim_url = gateway.http("/v1/images/slow/quay-east.jpg");
    let victim = tokio::spawn(async move {
        reqwest::Client::new()
            .get(victim_url)
            .header(http_header::REQUEST_ID, "victim-1")
            .timeout(Duration::from_secs(30))
            .send()
            .await
    });
    // The victim's request as the stream holds it (the resolver role may read it by sequence):
    // what a sniffer would have learned.
    let stream = js.get_stream(protocol::DEFAULT_STREAM).await.unwrap();
    let callback = eventually(
        "the victim's request stored",
        Duration::from_secs(10),
        || {
            let mut stream = stream.clone();
            async move {
                let last = stream.info().await.ok()?.state.last_sequence;
                for seq in (1..=last).rev() {
                    let Ok(msg) = stream.get_raw_message(seq).await else {
                        continue;
                    };
                    if protocol::network_of_subject(&msg.subject) == Some("slow") {
                        return RequestHead::from_headers(Some(&msg.headers)).callback;
                    }
                }
                None
            }
        },
    )
    .await;
    assert!(
        callback.starts_with(&format!("{}.", protocol::REPLY_PREFIX)),
        "{callback}"
    );
    // Everything the publisher's subscription got: nothing of the gateway's or the resolver's.
    let mut heard = Vec::new();
    while let Some(msg) = next_within(&mut sniffed, Duration::from_millis(300)).await {
        if msg.subject.starts_with("_INBOX.pinger.") {
            continue;
        }
        heard.push(format!(
            "{} {:?}",
            msg.subject,
            RequestHead::from_headers(msg.headers.as_ref()).callback
        ));
    }
    assert!(
        heard.is_empty(),
        "the publisher read other connections' traffic on _INBOX.>: {heard:?}"
    );

    // 2. The race: a request for another image of a served network, with the victim's id and
    //    callback. The resolver refuses the callback, and copies the request to the dead
    //    letters with the reason.
    let headers = RequestHead {
        callback: Some(callback.clone()),
        msg_id: Some("race-1".into()),
        ..RequestHead::default()
    }
    .to_headers();
    async_nats::jetstream::new(publisher.clone())
        .publish_with_headers(
            protocol::request_subject("harbor"),
            headers,
            r#"{"id":"victim-1","key":"cranes/crane-07.jpg"}"#.into(),
        )
        .await
        .unwrap()
        .await
        .expect("the stream stores the hand-published request");
    let publisher_js = async_nats::jetstream::new(publisher.clone());
    eventually(
        "the raced request dead-lettered as callback_not_allowed",
        Duration::from_secs(10),
        || {
            let js = publisher_js.clone();
            async move {
                let mut dlq = js.get_stream(protocol::DEFAULT_DLQ_STREAM).await.ok()?;
                let last = dlq.info().await.ok()?.state.last_sequence;
                for seq in 1..=last {
                    let msg = dlq.get_raw_message(seq).await.ok()?;
                    let letter = DeadLetter::from_headers(Some(&msg.headers)).ok()?;
                    if letter.reason == DeadReason::CallbackNotAllowed {
                        return Some(());
                    }
                }
                None
            }
        },
    )
    .await;
    // The victim is still waiting: nothing answered it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !victim.is_finished(),
        "the victim got an answer before its own network served it: {:?}",
        victim.await
    );

    // 3. Its own network's resolver starts pulling: the victim gets its own image.
    ponger.abort();
    let slow = resolver_of(nats, &pinger, "slow").await;
    let answer = within("the victim's answer", Duration::from_secs(20), victim)
        .await
        .unwrap()
        .expect("the victim's request");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.bytes().await.unwrap().as_ref(),
        sample("harbor/quay-east.jpg").as_slice(),
        "the victim got another image than the one it asked for"
    );
    gateway.stop().await;
    harbor.stop().await;
    slow.stop().await;
    let log = nats.log();
    assert!(
        !log.contains("Violation"),
        "the server refused something the components needed:\n{log}"
    );
}

#[tokio::test]
async fn a_publisher_can_neither_sniff_nor_race_a_gateways_request_local_roles() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    sniff_and_race(&nats, nats.auth("gateway"), "local-gateway").await;
}

#[tokio::test]
async fn a_publisher_can_neither_sniff_nor_race_a_gateways_request_kubernetes_roles() {
    init_logs();
    let nats = NatsServer::start_with_chart_roles();
    sniff_and_race(&nats, nats.auth("imgfetch-gateway-0"), "imgfetch-gateway-0").await;
}

/// Each role subscribes to the other roles' inboxes, and to the flow subjects only resolvers
/// read: the server refuses every one. The roles' own inboxes are allowed. `gateway` is the
/// gateway's user (`gateway` locally, a replica's such as `imgfetch-gateway-0` on Kubernetes).
async fn inboxes_are_private(nats: &NatsServer, gateway: &str) {
    let gateway_inbox = inbox_of(gateway);
    let resolver_inbox = inbox_of("resolver");
    let cases: [(&str, Vec<String>); 3] = [
        (
            "publisher",
            vec![
                format!("{gateway_inbox}.>"),
                format!("{}.>", protocol::GATEWAY_INBOX_PREFIX),
                format!("{resolver_inbox}.>"),
                format!("{}.>", protocol::FLOW_PREFIX),
            ],
        ),
        (
            gateway,
            vec![
                "_INBOX.>".to_owned(),
                format!("{resolver_inbox}.>"),
                format!("{}.>", protocol::FLOW_PREFIX),
                format!("{}.other-gateway.>", protocol::GATEWAY_INBOX_PREFIX),
            ],
        ),
        (
            "resolver",
            vec!["_INBOX.>".to_owned(), format!("{gateway_inbox}.>")],
        ),
    ];
    for (role, forbidden) in cases {
        let (client, mut errors) = nats.connect_as(role).await;
        for subject in forbidden {
            let _sub = client.subscribe(subject.clone()).await.unwrap();
            refused(
                &mut errors,
                &format!("Permissions Violation for Subscription to \"{subject}\""),
            )
            .await;
        }
        // Its own inbox is its to read: no refusal comes (the server answers a subscription
        // before the flush's PONG, so a refusal would be on its way by then).
        let own = format!("{}.>", inbox_of(role));
        let _sub = client.subscribe(own.clone()).await.unwrap();
        client.flush().await.unwrap();
        let late = tokio::time::timeout(Duration::from_millis(300), errors.recv()).await;
        assert!(
            late.is_err(),
            "{role} may not read its own inbox {own}: {late:?}"
        );
    }
}

#[tokio::test]
async fn no_role_reads_another_roles_inbox_local_roles() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    inboxes_are_private(&nats, "gateway").await;
}

#[tokio::test]
async fn no_role_reads_another_roles_inbox_kubernetes_roles() {
    init_logs();
    let nats = NatsServer::start_with_chart_roles();
    inboxes_are_private(&nats, "imgfetch-gateway-0").await;
}

/// On Kubernetes each gateway replica is a user of its own, named after its pod:
/// `imgfetch-gateway-0` may not read `imgfetch-gateway-1`'s callbacks, liveness subject or
/// inbox, nor every gateway's at once, while a reply to `imgfetch-gateway-1` reaches it.
#[tokio::test]
async fn a_gateway_replica_cannot_read_another_replicas_traffic_kubernetes_roles() {
    init_logs();
    let nats = NatsServer::start_with_chart_roles();
    let (zero, mut errors) = nats.connect_as("imgfetch-gateway-0").await;
    let (one, _) = nats.connect_as("imgfetch-gateway-1").await;
    let mut own = one
        .subscribe(protocol::reply_wildcard("imgfetch-gateway-1"))
        .await
        .unwrap();
    one.flush().await.unwrap();
    let mut stolen = Vec::new();
    for subject in [
        protocol::reply_wildcard("imgfetch-gateway-1"),
        format!("{}.>", protocol::REPLY_PREFIX),
        protocol::gateway_subject("imgfetch-gateway-1"),
        format!("{}.>", protocol::GATEWAY_PREFIX),
        format!("{}.>", inbox_of("imgfetch-gateway-1")),
        format!("{}.>", protocol::GATEWAY_INBOX_PREFIX),
    ] {
        stolen.push(zero.subscribe(subject.clone()).await.unwrap());
        refused(
            &mut errors,
            &format!("Permissions Violation for Subscription to \"{subject}\""),
        )
        .await;
    }
    // A resolver answers replica 1: replica 1 hears it, replica 0 does not.
    let (resolver, _) = nats.connect_as("resolver").await;
    resolver
        .publish(
            protocol::reply_subject("imgfetch-gateway-1", "t"),
            "for replica 1".into(),
        )
        .await
        .unwrap();
    resolver.flush().await.unwrap();
    let heard = next_within(&mut own, Duration::from_secs(5))
        .await
        .expect("replica 1 hears its own reply");
    assert_eq!(heard.payload.as_ref(), b"for replica 1");
    for sub in &mut stolen {
        assert!(
            next_within(sub, Duration::from_millis(100)).await.is_none(),
            "replica 0 read replica 1's traffic"
        );
    }
}
