//! Self-healing: a resolver whose stream or consumer disappears (deleted by hand, or lost with
//! a wiped JetStream store) turns unready, stops answering its network's pings, re-creates what
//! is missing and serves again within seconds; with provisioning off it says what is missing
//! and stays unready until an operator re-creates it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgfetch_common::protocol::{consumer_name, ping_subject, DEFAULT_STREAM};
use imgfetch_common::provision;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{file_network, resolver_config, samples_dir, Gateway, Resolver};
use imgfetch_tests::{eventually, free_port, init_logs};

/// Longest the tests allow for noticing the loss and healing it.
const HEAL_BOUND: Duration = Duration::from_secs(10);

struct Setup {
    nats: NatsServer,
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
    resolver: Resolver,
    gateway: Gateway,
    readyz: String,
}

async fn setup(provision: bool) -> Setup {
    init_logs();
    let nats = NatsServer::start();
    let mut config = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    let port = free_port();
    config.http_listen = Some(([127, 0, 0, 1], port).into());
    if !provision {
        // Provision first, as an operator would, then run without provisioning.
        Resolver::start(config.clone()).await.stop().await;
        config.provision = false;
    }
    let resolver = Resolver::start(config).await;
    let gateway = Gateway::start(&nats.url(), |c| {
        c.request_timeout = Duration::from_secs(4);
    })
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let setup = Setup {
        nats,
        js,
        client,
        resolver,
        gateway,
        readyz,
    };
    assert_eq!(readiness(&setup.readyz).await, (200, "ready".into()));
    assert_eq!(fetch(&setup.gateway).await, Some(200));
    setup
}

/// `/readyz`'s status and body.
async fn readiness(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("/readyz answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The status of one fetch through the gateway; `None` when no answer came at all.
async fn fetch(gateway: &Gateway) -> Option<u16> {
    reqwest::Client::new()
        .get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Readiness answers seen, each that differs from the one before.
type Seen = Arc<Mutex<Vec<(u16, String)>>>;

/// Records every `/readyz` answer that differs from the one before; returns once the first is
/// recorded.
async fn watch_readiness(url: String) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Seen::default();
    let handle = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let now = readiness(&url).await;
                {
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&now) {
                        seen.push(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    eventually("the first readiness answer", HEAL_BOUND, || async {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    (seen, handle)
}

/// Waits until readiness went from ready to unready and back, and returns the unready reasons
/// in order. `settled` must hold as well before the wait ends.
async fn dipped_and_recovered(seen: &Seen) -> Vec<String> {
    eventually(
        "readiness to turn false, then true again",
        HEAL_BOUND,
        || async {
            let seen = seen.lock().unwrap();
            assert_eq!(seen[0].0, 200, "ready before the fault: {seen:?}");
            let reasons: Vec<String> = seen
                .iter()
                .filter(|(s, _)| *s != 200)
                .map(|(_, r)| r.clone())
                .collect();
            let pulled = reasons.iter().any(|r| r.starts_with("pull harbor: "));
            (pulled && seen.last().is_some_and(|(s, _)| *s == 200)).then_some(reasons)
        },
    )
    .await
}

/// The one reason a deleted consumer (or stream) gives, as the waiting pull hears of it.
const CONSUMER_DELETED: &str =
    "pull harbor: cannot pull: the server ended the pull: 409 Consumer Deleted";

/// Deletes network `harbor`'s consumer, leaving the stream.
async fn delete_consumer(js: &async_nats::jetstream::Context) {
    let stream = js.get_stream(DEFAULT_STREAM).await.unwrap();
    let deleted = stream.delete_consumer(&consumer_name("harbor")).await;
    assert!(deleted.unwrap().success);
}

/// Fetches until an image comes, and returns when.
async fn fetched_again(gateway: &Gateway) -> Instant {
    eventually("a fetch to succeed again", HEAL_BOUND, || async {
        (fetch(gateway).await == Some(200)).then(Instant::now)
    })
    .await
}

async fn consumer_exists(js: &async_nats::jetstream::Context) -> bool {
    match provision::find_stream(js, DEFAULT_STREAM).await.unwrap() {
        Some(stream) => stream.consumer_info(consumer_name("harbor")).await.is_ok(),
        None => false,
    }
}

#[tokio::test]
async fn a_stream_deleted_while_idle_is_recreated_and_readiness_dips_meanwhile() {
    let s = setup(true).await;
    let (seen, watcher) = watch_readiness(s.readyz.clone()).await;
    let start = Instant::now();
    assert!(s.js.delete_stream(DEFAULT_STREAM).await.unwrap().success);
    let reasons = dipped_and_recovered(&seen).await;
    let healed = start.elapsed();
    assert_eq!(reasons, [CONSUMER_DELETED]);
    assert!(consumer_exists(&s.js).await);
    let answered = fetched_again(&s.gateway).await;
    println!(
        "stream deleted while idle: ready again after {healed:?}, answering after {:?}",
        answered - start
    );
    watcher.abort();
    s.resolver.stop().await;
    drop(s.nats);
}

#[tokio::test]
async fn a_wiped_jetstream_store_is_provisioned_again() {
    let mut s = setup(true).await;
    let (seen, watcher) = watch_readiness(s.readyz.clone()).await;
    let start = Instant::now();
    // Nothing tells a pull that the store is gone: the periodic consumer check notices.
    s.nats.restart_wiped();
    let reasons = dipped_and_recovered(&seen).await;
    let healed = start.elapsed();
    println!("store wiped ({reasons:?}): ready again after {healed:?}");
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    assert!(consumer_exists(&js).await);
    fetched_again(&s.gateway).await;
    watcher.abort();
    s.resolver.stop().await;
}

#[tokio::test]
async fn a_deleted_consumer_is_recreated_and_pings_stop_meanwhile() {
    let s = setup(true).await;
    let (seen, watcher) = watch_readiness(s.readyz.clone()).await;
    // Pings are answered until the loss is noticed; then "no responders" until healed.
    let pings = tokio::spawn({
        let client = s.client.clone();
        async move {
            let mut refused = 0;
            for _ in 0..200 {
                // Each ping waits 1 s at most; only a refusal (no responders) shows the loss.
                let ping = client.request(ping_subject("harbor"), "".into());
                if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), ping).await {
                    refused += 1;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            refused
        }
    });
    let start = Instant::now();
    delete_consumer(&s.js).await;
    let reasons = dipped_and_recovered(&seen).await;
    let healed = start.elapsed();
    assert_eq!(reasons, [CONSUMER_DELETED]);
    assert!(consumer_exists(&s.js).await);
    assert_eq!(fetch(&s.gateway).await, Some(200));
    println!("consumer deleted: ready again after {healed:?}");
    let refused = pings.await.unwrap();
    assert!(refused > 0, "pings were answered throughout");
    watcher.abort();
    s.resolver.stop().await;
}

#[tokio::test]
async fn a_stream_deleted_under_load_is_recreated_and_every_request_gets_an_answer() {
    let s = setup(true).await;
    let (seen, watcher) = watch_readiness(s.readyz.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let unanswered = Arc::new(AtomicUsize::new(0));
    let gateway = Arc::new(s.gateway);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, refused, unanswered) = (
            stop.clone(),
            ok.clone(),
            refused.clone(),
            unanswered.clone(),
        );
        let gateway = gateway.clone();
        clients.push(tokio::spawn(async move {
            let mut last = None;
            while !stop.load(Ordering::Relaxed) {
                last = fetch(&gateway).await;
                match last {
                    Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                    Some(_) => refused.fetch_add(1, Ordering::Relaxed),
                    None => unanswered.fetch_add(1, Ordering::Relaxed),
                };
            }
            last
        }));
    }
    // Load first: some answers before the deletion (a wait for that, not a fixed sleep that a
    // busy machine can outlast).
    eventually(
        "requests answered before the deletion",
        Duration::from_secs(20),
        || async { (ok.load(Ordering::Relaxed) > 0).then_some(()) },
    )
    .await;
    let start = Instant::now();
    assert!(s.js.delete_stream(DEFAULT_STREAM).await.unwrap().success);
    dipped_and_recovered(&seen).await;
    let healed = start.elapsed();
    let after_heal = ok.load(Ordering::Relaxed);
    eventually("requests to succeed after healing", HEAL_BOUND, || async {
        (ok.load(Ordering::Relaxed) >= after_heal + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        assert_eq!(
            c.await.unwrap(),
            Some(200),
            "the last request of each client succeeded"
        );
    }
    let (ok, refused, unanswered) = (
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed),
    );
    println!("stream deleted under load: ready again after {healed:?}; {ok} images, {refused} error answers, {unanswered} unanswered");
    assert_eq!(unanswered, 0, "every request got an image or an error");
    watcher.abort();
    s.resolver.stop().await;
}

#[tokio::test]
async fn without_provisioning_a_lost_consumer_is_reported_until_an_operator_recreates_it() {
    let s = setup(false).await;
    delete_consumer(&s.js).await;
    let reason = eventually("readiness to say what is missing", HEAL_BOUND, || async {
        let (status, body) = readiness(&s.readyz).await;
        (status == 503 && body.contains("provisioning is off")).then_some(body)
    })
    .await;
    assert!(reason.contains(&consumer_name("harbor")), "{reason}");
    // Gateways see no resolver for the network and refuse at once.
    eventually("pings to go unanswered", HEAL_BOUND, || async {
        s.client
            .request(ping_subject("harbor"), "".into())
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // A gateway that has not seen the network served refuses at once (one that has trusts its
    // last ping answer for a moment).
    let fresh = Gateway::start(&s.nats.url(), |_| {}).await;
    assert_eq!(fetch(&fresh).await, Some(503));
    // It stays that way: the resolver creates nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!consumer_exists(&s.js).await);
    assert_eq!(readiness(&s.readyz).await.0, 503);
    // The operator re-creates it; the resolver serves again.
    provision::ensure_network(
        &s.js,
        &provision::StreamSettings::default(),
        &provision::ConsumerSettings::default(),
        "harbor",
        true,
    )
    .await
    .unwrap();
    eventually("readiness to return", HEAL_BOUND, || async {
        (readiness(&s.readyz).await.0 == 200).then_some(())
    })
    .await;
    fetched_again(&s.gateway).await;
    s.resolver.stop().await;
}
