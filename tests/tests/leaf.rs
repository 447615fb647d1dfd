//! Zones behind firewalls: a hub and two leaf zones on real nats-servers (docs/DEPLOY.md, "Leaf
//! zones"). The hub runs JetStream in the domain `hub` with the committed roles; each zone is a
//! nats-server without JetStream, started from `deploy/leaf/leaf.conf`, whose only link is the
//! one it dials out to the hub as the zone's user (`zone-harbor`, `zone-plant` in `nats.conf`).
//! The zones' resolvers connect to their own leaf only. The gateway, on the hub, serves both
//! networks; each zone reaches nothing of the other's.

use std::time::Duration;

use futures::StreamExt;
use imgfetch_common::protocol::{self, gateway_request_subject, reply_subject, REQUEST_PREFIX};
use imgfetch_tests::latency::LatencyProxy;
use imgfetch_tests::nats::{NatsServer, HUB_DOMAIN};
use imgfetch_tests::pipeline::{file_network, resolver_config, samples_dir, Gateway, Resolver};
use imgfetch_tests::{init_logs, sample, within};

/// The gateway's instance: the roles' gateway user may listen under this name only.
const GATEWAY: &str = "local-gateway";

/// A zone's resolver: connected to its leaf as the leaf's local `resolver`, reaching the hub's
/// JetStream through its domain, with nothing to provision and no dead-letter collector (the
/// zone's user may do neither). `inline` bounds what is sent in one reply: lower, and the
/// samples are streamed in chunks with credit over the link.
async fn zone_resolver(
    leaf: &NatsServer,
    hub_client: &async_nats::Client,
    zone: &str,
    inline: Option<u64>,
) -> Resolver {
    let mut config = zone_config(leaf, zone);
    if let Some(bytes) = inline {
        config.max_inline_bytes = Some(bytes);
        config.chunk_bytes = 1024;
    }
    // Served once the hub's side sees its pings answered over the link.
    Resolver::start_pinging(config, hub_client).await
}

/// The configuration of a zone's resolver serving the samples of the network named as the zone.
fn zone_config(leaf: &NatsServer, zone: &str) -> imgfetch_resolver::Config {
    let mut config = resolver_config(
        &leaf.url(),
        vec![file_network(zone, samples_dir().join(zone))],
    );
    config.nats_auth = leaf.auth("resolver");
    config.instance = format!("{zone}-resolver");
    config.zone = Some(zone.to_owned());
    config.jetstream_domain = Some(HUB_DOMAIN.to_owned());
    config.provision = false;
    config.dead_letter_collector = false;
    config
}

/// The hub's side of the zones: `imgfetch-resolver --provision-only` on the hub, as the
/// resolver role, makes the request stream with both networks, their consumers and the dead
/// letters, then returns.
async fn provision_on_hub(hub: &NatsServer) {
    let mut config = resolver_config(
        &hub.url(),
        ["harbor", "plant"]
            .iter()
            .map(|n| file_network(n, samples_dir().join(n)))
            .collect(),
    );
    config.nats_auth = hub.auth("resolver");
    within(
        "provisioning on the hub",
        Duration::from_secs(20),
        imgfetch_resolver::provision_only(&config),
    )
    .await
    .expect("provisioning on the hub");
}

/// A gateway on the hub, as the roles' gateway user.
async fn gateway_on(hub: &NatsServer) -> Gateway {
    Gateway::start(&hub.url(), |c| {
        c.nats_auth = hub.auth("gateway");
        c.instance = GATEWAY.to_owned();
        c.archive = None;
    })
    .await
}

async fn fetch(gateway: &Gateway, network: &str, key: &str) {
    let url = gateway.http(&format!("/v1/images/{network}/{key}"));
    let response = within(
        "an image through a leaf zone",
        Duration::from_secs(20),
        async { reqwest::get(&url).await.expect("the gateway answers") },
    )
    .await;
    assert_eq!(response.status(), 200, "{url}");
    let body = response.bytes().await.expect("body");
    assert_eq!(
        body.as_ref(),
        sample(&format!("{network}/{key}")).as_slice(),
        "{url}: the bytes are the sample's"
    );
}

/// Publishes a request for `subject` on `client` and returns the status of the answer that
/// comes on `inbox` within 2 s, or `None` when nothing came at all.
async fn request_status(
    client: &async_nats::Client,
    subject: &str,
    inbox: &str,
    body: &'static str,
) -> Option<String> {
    let mut answers = client.subscribe(inbox.to_owned()).await.unwrap();
    client
        .publish_with_reply(subject.to_owned(), inbox.to_owned(), body.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    match tokio::time::timeout(Duration::from_secs(2), answers.next()).await {
        Ok(Some(msg)) => Some(match msg.status {
            Some(status) => status.to_string(),
            None => format!("a body of {} bytes", msg.payload.len()),
        }),
        _ => None,
    }
}

/// No answer at all (the hub dropped it), or the leaf's own "no responders" (503): the request
/// never reached JetStream.
fn refused(answer: &Option<String>) -> bool {
    matches!(answer.as_deref(), None | Some("503"))
}

#[tokio::test]
async fn two_leaf_zones_serve_their_networks_and_reach_nothing_of_each_other() {
    init_logs();
    let hub = NatsServer::start_hub();
    let harbor_leaf = NatsServer::start_leaf("harbor", &hub);
    let plant_leaf = NatsServer::start_leaf("plant", &hub);
    provision_on_hub(&hub).await;

    let (hub_gateway, _) = hub.connect_as("gateway").await;
    // harbor answers inline; plant streams its samples in 1 KiB chunks, with credit crossing
    // the link on plant's flow subjects.
    let harbor = zone_resolver(&harbor_leaf, &hub_gateway, "harbor", None).await;
    let plant = zone_resolver(&plant_leaf, &hub_gateway, "plant", Some(1024)).await;
    let gateway = gateway_on(&hub).await;

    fetch(&gateway, "harbor", "quay-east.jpg").await;
    fetch(&gateway, "plant", "line-3/weld-0001.jpg").await;
    fetch(&gateway, "plant", "line-3/overview.png").await;

    // A client inside zone harbor, as its resolvers log in to their leaf.
    let harbor_inbox = protocol::resolver_inbox_prefix(Some("harbor"));
    let (inside, _) = harbor_leaf
        .connect_as_with_inbox("resolver", &harbor_inbox)
        .await;

    // 1. It cannot pull plant's consumer: the hub never sees the pull, so the leaf itself
    //    answers that nobody responds. Its own consumer answers (an empty pull expires, 408).
    let plant_pull = format!("$JS.{HUB_DOMAIN}.API.CONSUMER.MSG.NEXT.IMGFETCH.imgfetch-plant");
    let harbor_pull = format!("$JS.{HUB_DOMAIN}.API.CONSUMER.MSG.NEXT.IMGFETCH.imgfetch-harbor");
    let pull = r#"{"batch":1,"expires":500000000}"#;
    let stolen = request_status(&inside, &plant_pull, &format!("{harbor_inbox}.p1"), pull).await;
    assert!(refused(&stolen), "pulling plant's consumer: {stolen:?}");
    let own = request_status(&inside, &harbor_pull, &format!("{harbor_inbox}.p2"), pull).await;
    assert_eq!(
        own.as_deref(),
        Some("408"),
        "pulling its own consumer, empty"
    );

    // 2. It cannot touch the streams' or consumers' configuration.
    for (subject, body) in [
        (
            format!("$JS.{HUB_DOMAIN}.API.STREAM.UPDATE.IMGFETCH"),
            r#"{"name":"IMGFETCH","subjects":["imgfetch.gwreq.harbor"]}"#,
        ),
        (format!("$JS.{HUB_DOMAIN}.API.STREAM.DELETE.IMGFETCH"), ""),
        (format!("$JS.{HUB_DOMAIN}.API.STREAM.PURGE.IMGFETCH"), ""),
        (
            format!("$JS.{HUB_DOMAIN}.API.CONSUMER.DELETE.IMGFETCH.imgfetch-plant"),
            "",
        ),
        (
            format!("$JS.{HUB_DOMAIN}.API.STREAM.MSG.GET.IMGFETCH"),
            r#"{"seq":1}"#,
        ),
        ("$JS.API.STREAM.DELETE.IMGFETCH".to_owned(), ""),
    ] {
        let answer = request_status(&inside, &subject, &format!("{harbor_inbox}.c"), body).await;
        assert!(refused(&answer), "{subject}: {answer:?}");
    }
    let js = async_nats::jetstream::new(hub_gateway.clone());
    let mut stream = js
        .get_stream("IMGFETCH")
        .await
        .expect("the stream is still there");
    let subjects = &stream.info().await.unwrap().config.subjects;
    for network in ["harbor", "plant"] {
        assert!(
            subjects.contains(&gateway_request_subject(network)),
            "the stream still captures {network}: {subjects:?}"
        );
    }

    // 3. It cannot answer on a callback of plant's requests; on its own network's it can. A
    //    listener on the hub with the gateway's rights sees only the second.
    let mut callbacks = hub_gateway
        .subscribe(protocol::reply_wildcard(GATEWAY))
        .await
        .unwrap();
    hub_gateway.flush().await.unwrap();
    let forged = reply_subject(GATEWAY, &format!("plant.{}", protocol::random_token()));
    let allowed = reply_subject(GATEWAY, &format!("harbor.{}", protocol::random_token()));
    inside
        .publish(forged.clone(), "forged".into())
        .await
        .unwrap();
    inside.flush().await.unwrap();
    // The allowed one is sent until it arrives (core NATS delivers at most once); the forged
    // one, sent first, must never arrive.
    let mut arrived = Vec::new();
    let mut attempts = 0;
    while !arrived.contains(&allowed) {
        attempts += 1;
        assert!(
            attempts <= 20,
            "harbor's answer on its own callback never arrived; got {arrived:?}"
        );
        inside.publish(allowed.clone(), "own".into()).await.unwrap();
        inside.flush().await.unwrap();
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(300), callbacks.next()).await
        {
            arrived.push(msg.subject.to_string());
        }
    }
    eprintln!("harbor's own callback arrived after {attempts} attempt(s)");
    assert!(
        !arrived.contains(&forged),
        "harbor answered on a callback of plant's: {arrived:?}"
    );

    // 4. While plant's images cross the hub, nothing of plant's reaches zone harbor: not its
    //    requests, pulls, replies, flow credit nor dead letters. harbor's own traffic does. The
    //    spy listens on harbor's leaf to everything of plant's it could name.
    let mut spy = futures::stream::select_all(vec![
        inside
            .subscribe(format!("{REQUEST_PREFIX}.>"))
            .await
            .unwrap(),
        inside.subscribe("imgfetch.gwreq.>").await.unwrap(),
        inside.subscribe("imgfetch.reply.>").await.unwrap(),
        inside.subscribe("imgfetch.flow.>").await.unwrap(),
        inside.subscribe("_INBOX_resolver.>").await.unwrap(),
        inside.subscribe("imgfetch.dlq.>").await.unwrap(),
        inside.subscribe("$JS.>").await.unwrap(),
    ]);
    inside.flush().await.unwrap();
    fetch(&gateway, "plant", "line-3/weld-0001.jpg").await;
    fetch(&gateway, "harbor", "cranes/crane-07.jpg").await;
    let mut seen = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), spy.next()).await {
        seen.push(msg.subject.to_string());
    }
    let of_plant: Vec<&String> = seen.iter().filter(|s| s.contains("plant")).collect();
    assert!(
        of_plant.is_empty(),
        "zone harbor saw plant's traffic: {of_plant:?}"
    );
    assert!(
        seen.iter().any(|s| s.contains(".harbor.")),
        "the spy sees its own zone's traffic, so it would have seen plant's: {seen:?}"
    );

    gateway.stop().await;
    harbor.stop().await;
    plant.stop().await;
}

/// The zone's link is cut (its leaf node killed) with requests for it in flight, then comes
/// back: the requests wait in the hub's stream and are all served once the zone's resolver is
/// reconnected, none lost. A request made while the gateway still knows the zone as served is
/// accepted and waits; one made after that is refused `unavailable` at once (PROTOCOL.md).
#[tokio::test]
async fn a_cut_link_holds_the_zones_requests_in_the_hub_until_it_returns() {
    init_logs();
    let hub = NatsServer::start_hub();
    let mut plant_leaf = NatsServer::start_leaf("plant", &hub);
    let (plant, gateway) = plant_served(&hub, &plant_leaf).await;

    plant_leaf.kill();
    let cut = std::time::Instant::now();
    let requests = requests_for_plant(&gateway);
    held_while_cut(&requests).await;
    plant_leaf.restart();
    plant_leaf.wait_for_links(2);
    all_served(requests, cut).await;

    gateway.stop().await;
    plant.stop().await;
}

/// A zone's resolver started while its link is down (the hub gone, the leaf up) waits for the
/// hub's JetStream instead of exiting, and serves once the hub is back.
#[tokio::test]
async fn a_zone_resolver_started_while_its_link_is_down_waits_for_the_hub() {
    init_logs();
    let mut hub = NatsServer::start_hub();
    let plant_leaf = NatsServer::start_leaf("plant", &hub);
    provision_on_hub(&hub).await;
    hub.kill();

    let config = zone_config(&plant_leaf, "plant");
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(imgfetch_resolver::run(config, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !running.is_finished(),
        "the resolver gave up while the hub was away: {:?}",
        running.await
    );

    hub.restart();
    plant_leaf.wait_for_links(2);
    let gateway = gateway_on(&hub).await;
    let (hub_gateway, _) = hub.connect_as("gateway").await;
    imgfetch_tests::pipeline::wait_served(&hub_gateway, "plant").await;
    fetch(&gateway, "plant", "line-3/overview.png").await;

    gateway.stop().await;
    stop.cancel();
    within("the resolver to stop", Duration::from_secs(30), running)
        .await
        .expect("resolver task")
        .expect("the resolver ran cleanly");
}

/// Zone plant served through `plant_leaf`: provisioned on the hub, its resolver, a gateway on
/// the hub that has just fetched one of its images (so it knows the zone as served).
async fn plant_served(hub: &NatsServer, plant_leaf: &NatsServer) -> (Resolver, Gateway) {
    provision_on_hub(hub).await;
    let (hub_gateway, _) = hub.connect_as("gateway").await;
    let plant = zone_resolver(plant_leaf, &hub_gateway, "plant", None).await;
    let gateway = gateway_on(hub).await;
    fetch(&gateway, "plant", "line-3/overview.png").await;
    (plant, gateway)
}

/// The join handle of one request for a sample of plant: its key, status and body.
type PlantRequest = tokio::task::JoinHandle<(&'static str, u16, bytes::Bytes)>;

/// Eight requests for plant's samples, each in a task of its own.
fn requests_for_plant(gateway: &Gateway) -> Vec<PlantRequest> {
    let keys = ["line-3/weld-0001.jpg", "line-3/overview.png"];
    (0..8)
        .map(|i| {
            let key = keys[i % keys.len()];
            let url = gateway.http(&format!("/v1/images/plant/{key}?id=cut-{i}"));
            tokio::spawn(async move {
                let response = reqwest::get(&url).await.expect("the gateway answers");
                let status = response.status().as_u16();
                let body = response.bytes().await.expect("body");
                (key, status, body)
            })
        })
        .collect()
}

/// After 1.5 s with the zone cut off, none of `requests` has ended: they wait in the hub.
async fn held_while_cut(requests: &[PlantRequest]) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ended = requests.iter().filter(|r| r.is_finished()).count();
    assert_eq!(
        ended, 0,
        "{ended} requests ended while their zone was cut off"
    );
}

/// Every one of `requests` ends with its image once the link is back: none lost, none refused
/// (each was made while the gateway still knew the zone as served).
async fn all_served(requests: Vec<PlantRequest>, cut: std::time::Instant) {
    let (mut ok, mut refused) = (0, 0);
    for request in requests {
        let (key, status, body) = within(
            "an answer after the link returned",
            Duration::from_secs(40),
            request,
        )
        .await
        .expect("request task");
        match status {
            200 => {
                assert_eq!(body.as_ref(), sample(&format!("plant/{key}")).as_slice());
                ok += 1;
            }
            503 => refused += 1,
            other => panic!("a request for {key} ended {other}: lost, not served"),
        }
    }
    eprintln!(
        "link cut: accepted {ok}, ok {ok}, refused at once {refused}, lost 0, served again {:?} after the cut",
        cut.elapsed()
    );
    assert_eq!(
        ok, 8,
        "every request made while the zone was known served waits and is served"
    );
}

/// The link cut between the leaf and the hub (a proxy in between closes every connection and
/// refuses new ones) with requests for the zone in flight, then restored: the leaf redials,
/// and every request is served, none lost.
#[tokio::test]
async fn a_link_cut_between_leaf_and_hub_loses_nothing_when_restored() {
    init_logs();
    let hub = NatsServer::start_hub();
    let leaf_port = hub.leaf_port().expect("a hub has a leafnode port");
    let link = LatencyProxy::start(([127, 0, 0, 1], leaf_port).into(), Duration::ZERO)
        .await
        .expect("proxy");
    let plant_leaf = NatsServer::start_leaf_at("plant", link.addr);
    let (plant, gateway) = plant_served(&hub, &plant_leaf).await;

    link.cut();
    let cut = std::time::Instant::now();
    let requests = requests_for_plant(&gateway);
    held_while_cut(&requests).await;
    link.restore();
    plant_leaf.wait_for_links(2);
    all_served(requests, cut).await;

    gateway.stop().await;
    plant.stop().await;
}
