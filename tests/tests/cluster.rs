//! A three-node NATS cluster with an R3 stream: gateway and resolver take the URL list, and
//! killing the stream's leader node under load loses no accepted request; the same for a zone
//! behind a leaf node attached to a three-node hub.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgfetch_common::protocol::DEFAULT_STREAM;
use imgfetch_common::provision::{self, ConsumerSettings, StreamSettings};
use imgfetch_tests::nats::{NatsCluster, NatsServer, HUB_DOMAIN};
use imgfetch_tests::pipeline::{file_network, resolver_config, samples_dir, Gateway, Resolver};
use imgfetch_tests::{eventually, init_logs};

/// What became of one fetch: `ok`, an error code, or `no answer`.
async fn fetch(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(r) if r.status() == 200 => {
            r.bytes().await.expect("image bytes");
            "ok".into()
        }
        Ok(r) => {
            let body: serde_json::Value = r.json().await.expect("a JSON error body");
            body["code"].as_str().unwrap_or("no code").to_owned()
        }
        Err(_) => "no answer".into(),
    }
}

/// Creates the R3 stream with `network`'s subjects and consumer, once the cluster has elected its
/// meta leader (JetStream answers only then).
async fn create_r3_stream(js: &async_nats::jetstream::Context, network: &str) {
    let stream_settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    // An attempt waits for JetStream's answer; on a loaded machine the election and one slow
    // attempt took over 20 s.
    eventually(
        "the cluster to create an R3 stream",
        Duration::from_secs(60),
        || async {
            provision::ensure_network(
                js,
                &stream_settings,
                &ConsumerSettings::default(),
                network,
                true,
            )
            .await
            .ok()
            .map(|_| ())
        },
    )
    .await;
}

async fn stream_leader(js: &async_nats::jetstream::Context) -> Option<String> {
    let mut stream = js.get_stream(DEFAULT_STREAM).await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

#[tokio::test]
async fn killing_the_stream_leader_under_load_loses_no_accepted_request() {
    init_logs();
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let admin = async_nats::connect(cluster.nodes[0].url()).await.unwrap();
    let js = async_nats::jetstream::new(admin.clone());
    create_r3_stream(&js, "harbor").await;

    let mut config = resolver_config(
        &urls,
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    config.stream.replicas = 3;
    // A request whose delivery died with a node comes back soon, and a pull lost with the
    // consumer's leader is noticed soon.
    config.consumer.ack_wait = Duration::from_secs(2);
    config.pull_expires = Duration::from_secs(1);
    let resolver = Resolver::start(config).await;
    let gateway = Gateway::start(&urls, |c| {
        c.request_timeout = Duration::from_secs(25);
    })
    .await;
    let url = gateway.http("/v1/images/harbor/quay-east.jpg");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(fetch(&http, &url).await, "ok");

    // Kill a leader that holds neither the gateway's nor the resolver's connection: this test
    // is about JetStream failing over (a client whose own node dies reconnects to another, and
    // what that costs is in docs/RELIABILITY.md).
    let mut busy = Vec::new();
    for i in 0..3 {
        let names = cluster.connection_names(i).await;
        if names.iter().any(|n| n.starts_with("imgfetch-")) {
            busy.push(i);
        }
    }
    let target = (0..3)
        .find(|i| !busy.contains(i))
        .expect("two pipeline clients leave a node free");
    kill_the_stream_leader_under_load(&mut cluster, &admin, &http, &url, target).await;
    resolver.stop().await;
    gateway.stop().await;
}

/// A zone behind a leaf node attached to node n1 of a three-node hub, the gateway on n1 too:
/// killing the hub's stream leader (moved to n2 first) under load loses no accepted request.
#[tokio::test]
async fn a_leaf_zone_loses_nothing_when_the_hubs_stream_leader_is_killed() {
    init_logs();
    let mut cluster = NatsCluster::start_open_hub();
    let leaf_port = cluster.nodes[0]
        .leaf_port()
        .expect("a hub node has a leafnode port");
    let leaf = NatsServer::start_open_leaf(([127, 0, 0, 1], leaf_port).into());
    let admin = async_nats::connect(cluster.nodes[0].url()).await.unwrap();
    let js = async_nats::jetstream::new(admin.clone());
    create_r3_stream(&js, "plant").await;
    let mut config = resolver_config(
        &leaf.url(),
        vec![file_network("plant", samples_dir().join("plant"))],
    );
    config.zone = Some("plant".to_owned());
    config.jetstream_domain = Some(HUB_DOMAIN.to_owned());
    config.stream.replicas = 3;
    config.consumer.ack_wait = Duration::from_secs(2);
    config.pull_expires = Duration::from_secs(1);
    let resolver = Resolver::start(config).await;
    let gateway = Gateway::start(&cluster.nodes[0].url(), |c| {
        c.request_timeout = Duration::from_secs(25);
    })
    .await;
    let url = gateway.http("/v1/images/plant/line-3/overview.png");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(fetch(&http, &url).await, "ok");
    kill_the_stream_leader_under_load(&mut cluster, &admin, &http, &url, 1).await;
    resolver.stop().await;
    gateway.stop().await;
}

/// Moves the stream's leader to node `target`, puts 4 clients of `url` to work, kills `target`
/// once 20 answers came, and keeps the load on until 20 more came through the new leader: no
/// accepted request may be lost. `admin` may use the JetStream API (`$JS.API` of the nodes'
/// account).
async fn kill_the_stream_leader_under_load(
    cluster: &mut NatsCluster,
    admin: &async_nats::Client,
    http: &reqwest::Client,
    url: &str,
    target: usize,
) {
    let api = "$JS.API";
    let js = async_nats::jetstream::new(admin.clone());
    let target_name = format!("n{}", target + 1);
    eventually(
        "the stream leader to move to a free node",
        Duration::from_secs(20),
        || async {
            if stream_leader(&js).await.as_deref() == Some(target_name.as_str()) {
                return Some(());
            }
            let body = serde_json::json!({ "placement": { "preferred": target_name } });
            let _ = admin
                .request(
                    format!("{api}.STREAM.LEADER.STEPDOWN.{DEFAULT_STREAM}"),
                    body.to_string().into(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            None
        },
    )
    .await;

    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (outcomes, stop, http, url) =
            (outcomes.clone(), stop.clone(), http.clone(), url.to_owned());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let outcome = fetch(&http, &url).await;
                *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
            }
        }));
    }
    // The load runs, and answers, before the node goes.
    eventually(
        "answers before the kill",
        Duration::from_secs(20),
        || async { (outcomes.lock().unwrap().get("ok").copied().unwrap_or(0) >= 20).then_some(()) },
    )
    .await;
    let killed_at = Instant::now();
    cluster.nodes[target].kill();
    let js_left = async_nats::jetstream::new(
        async_nats::connect(cluster.nodes[(target + 1) % 3].url())
            .await
            .unwrap(),
    );
    let new_leader = eventually("a new stream leader", Duration::from_secs(20), || async {
        stream_leader(&js_left)
            .await
            .filter(|l| *l != format!("n{}", target + 1))
    })
    .await;
    let elected = killed_at.elapsed();
    // Keep the load on until requests flow through the new leader.
    let before = outcomes.lock().unwrap().get("ok").copied().unwrap_or(0);
    eventually(
        "requests to be answered after the failover",
        Duration::from_secs(20),
        || async {
            let now = outcomes.lock().unwrap().get("ok").copied().unwrap_or(0);
            (now >= before + 20).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let answered = outcomes.get("ok").copied().unwrap_or(0);
    // Refused at the door (the queue could not take it): not accepted.
    let refused = outcomes.get("unavailable").copied().unwrap_or(0);
    let lost: usize = outcomes
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "ok" | "unavailable"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "stream leader {target_name} killed: {new_leader} elected after {elected:?}; accepted {}, answered {answered}, refused {refused}, lost {lost}; {outcomes:?}",
        answered + lost
    );
    assert_eq!(lost, 0, "accepted requests without an image: {outcomes:?}");
    assert!(answered > 20);
}
