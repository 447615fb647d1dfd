//! Results that outlive a disconnect: the answer to a request, fetched again by id from any
//! gateway (`GET /v1/requests/{id}`, websocket `{"type":"result"}`), replayed from the archive;
//! errors replayed with their status; expiry; tokens; and takeover of a request whose gateway
//! died, and of one whose client left.

use std::path::Path;
use std::time::Duration;

use imgfetch_common::digest::sha256_hex;
use imgfetch_common::frames::{ClientFrame, ServerFrame};
use imgfetch_common::message::{Chunked, ImageHead, ReplyHead};
use imgfetch_common::protocol::{
    http_header, new_flow_subject, reply_subject, ErrorCode, FetchRequest, DEFAULT_RESULTS_BUCKET,
};
use imgfetch_common::store::StoreSpec;
use imgfetch_gateway::archive::ArchiveConfig;
use imgfetch_gateway::auth::Tokens;
use imgfetch_tests::fake::{answer_image, fake_resolver, image_head, send_stream, take_request};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    archived_as, assert_error, assert_image, error_code, file_network, frame_id, resolver_config,
    sample_resolver, Frame, Gateway, Resolver, WsClient,
};
use imgfetch_tests::{eventually, init_logs, sample, write_large_image};
use serde_json::{json, Value};

const IMAGE: &str = "harbor/quay-east.jpg";

/// A gateway archiving to `archive` (shared by every gateway of a test, as in a cluster).
async fn gateway(
    nats: &NatsServer,
    archive: &Path,
    tweak: impl FnOnce(&mut imgfetch_gateway::Config),
) -> Gateway {
    let archive = archive.to_path_buf();
    Gateway::start(&nats.url(), move |c| {
        c.archive = Some(ArchiveConfig::new(StoreSpec::File { root: archive }));
        tweak(c);
    })
    .await
}

async fn get(url: &str, token: Option<&str>, id: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(id) = id {
        request = request.header(http_header::REQUEST_ID, id);
    }
    request.send().await.expect("HTTP request")
}

/// Two gateways, `gw-one` and `gw-two`, sharing one archive as replicas in a cluster do.
struct Pair {
    one: Gateway,
    two: Gateway,
    _archive: tempfile::TempDir,
}

async fn pair(nats: &NatsServer) -> Pair {
    let archive = tempfile::tempdir().unwrap();
    Pair {
        one: gateway(nats, archive.path(), |c| c.instance = "gw-one".into()).await,
        two: gateway(nats, archive.path(), |c| c.instance = "gw-two".into()).await,
        _archive: archive,
    }
}

/// Status, headers but `date`, and body of a response.
async fn parts(r: reqwest::Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = r.status().as_u16();
    let mut headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str() != "date")
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    let got = r.status().as_u16();
    let body: Value = r.json().await.expect("a JSON error body");
    assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
    body
}

/// The next JSON frame must be the answer itself: a result is never `accepted`.
async fn result_over_ws(ws: &mut WsClient, id: &str) -> (Frame, Option<Vec<u8>>) {
    ws.send_frame(&ClientFrame::Result { id: id.to_owned() })
        .await;
    let frame = ws.next_frame().await;
    let frames = match &frame {
        ServerFrame::Accepted { .. } => panic!("a result is not accepted: {}", frame.to_json()),
        ServerFrame::Image { frames, .. } => *frames,
        _ => return (frame, None),
    };
    let mut bytes = Vec::new();
    for _ in 0..frames {
        match ws.next_message().await {
            Some(tokio_tungstenite::tungstenite::Message::Binary(b)) => bytes.extend_from_slice(&b),
            other => panic!(
                "expected a binary frame after {}, got {other:?}",
                frame.to_json()
            ),
        }
    }
    (frame, Some(bytes))
}

#[tokio::test]
async fn an_answer_through_one_gateway_is_replayed_by_another_over_http_and_websocket() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let Pair { one, two, .. } = &pair(&nats).await;

    let original = get(
        &one.http("/v1/images/harbor/quay-east.jpg"),
        None,
        Some("r-1"),
    )
    .await;
    let (status, headers, body) = parts(original).await;
    assert_eq!(status, 200);
    assert_eq!(body, sample(IMAGE));

    let replayed = get(&two.http("/v1/requests/r-1"), None, None).await;
    let (r_status, r_headers, r_body) = parts(replayed).await;
    assert_eq!(r_status, status);
    assert_eq!(
        r_body, body,
        "the bytes come back from the archive unchanged"
    );
    assert_eq!(
        r_headers, headers,
        "the same headers as the original answer"
    );

    let mut ws = WsClient::connect(&two.ws_url()).await;
    let (frame, bytes) = result_over_ws(&mut ws, "r-1").await;
    let ServerFrame::Image {
        id,
        network,
        key,
        content_type,
        ..
    } = &frame
    else {
        panic!("expected an image frame, got {}", frame.to_json());
    };
    assert_eq!(
        [id, network, key, content_type].map(|v| &**v),
        ["r-1", "harbor", "quay-east.jpg", "image/jpeg"]
    );
    let path = headers
        .iter()
        .find(|(n, _)| n == http_header::ARCHIVED_AS)
        .unwrap();
    let path = percent_encoding::percent_decode_str(&path.1)
        .decode_utf8()
        .unwrap();
    assert_eq!(archived_as(&frame), Some(path.as_ref()));
    assert_eq!(bytes.unwrap(), sample(IMAGE));
}

#[tokio::test]
async fn an_error_replays_its_status_and_an_unknown_id_is_unknown_request() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let Pair { one, two, .. } = &pair(&nats).await;

    let original = get(
        &one.http("/v1/images/harbor/no-such.jpg"),
        None,
        Some("e-1"),
    )
    .await;
    let original = expect_error(original, 404, "not_found").await;
    let replayed = get(&two.http("/v1/requests/e-1"), None, None).await;
    assert_eq!(replayed.headers()[http_header::REQUEST_ID], "e-1");
    let replayed = expect_error(replayed, 404, "not_found").await;
    assert_eq!(replayed, original, "the same error body");

    let mut ws = WsClient::connect(&two.ws_url()).await;
    let (frame, _) = result_over_ws(&mut ws, "e-1").await;
    assert_eq!(
        (frame_id(&frame), error_code(&frame)),
        (Some("e-1"), Some(ErrorCode::NotFound)),
        "{}",
        frame.to_json()
    );

    let unknown = get(&two.http("/v1/requests/never-asked"), None, None).await;
    let body = expect_error(unknown, 404, "unknown_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("never-asked"),
        "{body}"
    );
    let (frame, _) = result_over_ws(&mut ws, "never-asked").await;
    assert_error(&frame, ErrorCode::UnknownRequest);
    let bad = get(&two.http("/v1/requests/a%20b"), None, None).await;
    expect_error(bad, 400, "invalid_request").await;
}

#[tokio::test]
async fn a_result_expires_after_its_ttl() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let archive = tempfile::tempdir().unwrap();
    let gw = gateway(&nats, archive.path(), |c| {
        c.results.ttl = Duration::from_millis(1500)
    })
    .await;
    let r = get(
        &gw.http("/v1/images/harbor/quay-east.jpg"),
        None,
        Some("x-1"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = get(&gw.http("/v1/requests/x-1"), None, None).await;
    assert_eq!(r.status(), 200, "a fresh result is there");
    let url = gw.http("/v1/requests/x-1");
    eventually("the result to expire", Duration::from_secs(10), || async {
        let r = get(&url, None, None).await;
        (r.status() == 404).then_some(r)
    })
    .await;
    let gone = get(&url, None, None).await;
    expect_error(gone, 404, "unknown_request").await;
}

const HARBOR_TOKEN: &str = "harbor-7f3a9c1e5d";
const OTHER_TOKEN: &str = "other-0b8e2d4f6a";

fn tokens(dir: &Path) -> Tokens {
    let path = dir.join("tokens.toml");
    let text = format!(
        "[[token]]\nname = \"harbor\"\nsha256 = \"{}\"\nnetworks = [\"harbor\"]\n\n\
         [[token]]\nname = \"other\"\nsha256 = \"{}\"\nnetworks = [\"*\"]\n",
        sha256_hex(HARBOR_TOKEN.as_bytes()),
        sha256_hex(OTHER_TOKEN.as_bytes()),
    );
    std::fs::write(&path, text).unwrap();
    Tokens::load(&path).unwrap()
}

#[tokio::test]
async fn a_token_cannot_read_another_tokens_result() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let archive = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let tokens = tokens(secrets.path());
    let gw = gateway(&nats, archive.path(), move |c| {
        c.clients.tokens = Some(tokens)
    })
    .await;

    let r = get(
        &gw.http("/v1/images/harbor/quay-east.jpg"),
        Some(HARBOR_TOKEN),
        Some("t-1"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let url = gw.http("/v1/requests/t-1");
    let mine = get(&url, Some(HARBOR_TOKEN), None).await;
    assert_eq!(mine.status(), 200);
    assert_eq!(
        mine.bytes().await.unwrap().as_ref(),
        sample(IMAGE).as_slice()
    );

    let theirs = expect_error(
        get(&url, Some(OTHER_TOKEN), None).await,
        404,
        "unknown_request",
    )
    .await;
    let unknown = get(&gw.http("/v1/requests/t-2"), Some(OTHER_TOKEN), None).await;
    let unknown = expect_error(unknown, 404, "unknown_request").await;
    assert_eq!(
        theirs["message"].as_str().unwrap().replace("t-1", "t-2"),
        unknown["message"],
        "another token's result reads exactly like an unknown id"
    );
    expect_error(get(&url, None, None).await, 401, "unauthorized").await;

    let ws_url = format!("{}?token={OTHER_TOKEN}", gw.ws_url());
    let mut ws = WsClient::connect(&ws_url).await;
    let (frame, _) = result_over_ws(&mut ws, "t-1").await;
    assert_error(&frame, ErrorCode::UnknownRequest);
}

#[tokio::test]
async fn a_request_held_when_its_gateway_dies_is_taken_over_by_another() {
    init_logs();
    let nats = NatsServer::start();
    let (fake, consumer) = fake_resolver(&nats.url(), "slow").await;
    let Pair { one, two, _archive } = pair(&nats).await;

    let mut ws = WsClient::connect(&one.ws_url()).await;
    ws.fetch(Some("k-1"), "slow", "a.jpg").await;
    ws.next_accepted().await;
    // The stand-in holds the request and never answers it.
    let (id, callback, _held) = take_request(&consumer).await;
    assert_eq!(id, "k-1");
    assert!(
        callback.starts_with(&reply_subject("gw-one", "")),
        "{callback}"
    );
    one.kill().await;

    let url = two.http("/v1/requests/k-1");
    let fetch = tokio::spawn(async move { get(&url, None, None).await });
    // Gateway two finds gateway one gone, claims the record and queues the request again
    // under a de-duplication id of its own, with its own callback.
    let (retry_id, retry_callback, retried) = take_request(&consumer).await;
    assert_eq!(retry_id, "k-1.retry.1");
    assert!(
        retry_callback.starts_with(&reply_subject("gw-two", "")),
        "{retry_callback}"
    );
    let request: FetchRequest = imgfetch_common::codec::decode(&retried.payload).unwrap();
    assert_eq!(
        (request.id.as_str(), request.key.as_str()),
        ("k-1", "a.jpg")
    );
    let bytes = sample(IMAGE);
    answer_image(&fake, retry_callback, "k-1", "slow", "a.jpg", bytes.clone()).await;

    let r = fetch.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[http_header::REQUEST_ID], "k-1");
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // Recorded under the original id: the next fetch replays it without another run.
    let again = get(&two.http("/v1/requests/k-1"), None, None).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

/// A gateway that restarts under its old instance name (a StatefulSet pod, which keeps its
/// name) answers on that name's liveness subject, but it is a new process that never held the
/// old one's requests: the record's incarnation tells them apart, and the requests are taken
/// over at once, by another replica and by the new process itself, instead of after their
/// deadlines. Before, the other replica took the answer for proof of life, and the new process
/// took the record for its own, so the requests waited out their deadlines.
#[tokio::test]
async fn a_request_held_by_an_earlier_process_of_the_same_name_is_taken_over() {
    init_logs();
    let nats = NatsServer::start();
    let (fake, consumer) = fake_resolver(&nats.url(), "slow").await;
    let archive = tempfile::tempdir().unwrap();
    // A deadline far beyond the test's waits: only the incarnation can explain a takeover.
    let same = |c: &mut imgfetch_gateway::Config| {
        c.instance = "gw-pod-0".into();
        c.request_timeout = Duration::from_secs(120);
    };
    let first = gateway(&nats, archive.path(), same).await;
    let mut ws = WsClient::connect(&first.ws_url()).await;
    for id in ["p-1", "p-2"] {
        ws.fetch(Some(id), "slow", "a.jpg").await;
        ws.next_accepted().await;
        let (_, callback, _held) = take_request(&consumer).await;
        assert!(
            callback.starts_with(&reply_subject("gw-pod-0", "")),
            "{callback}"
        );
    }
    first.kill().await;

    // The pod comes back under the same name; another replica runs beside it.
    let restarted = gateway(&nats, archive.path(), same).await;
    let other = gateway(&nats, archive.path(), |c| c.instance = "gw-pod-1".into()).await;
    let bytes = sample(IMAGE);
    for (id, asked, by) in [("p-1", &other, "gw-pod-1"), ("p-2", &restarted, "gw-pod-0")] {
        let url = asked.http(&format!("/v1/requests/{id}"));
        let fetch = tokio::spawn(async move { get(&url, None, None).await });
        let (retry_id, retry_callback, _) = take_request(&consumer).await;
        assert_eq!(retry_id, format!("{id}.retry.1"));
        assert!(
            retry_callback.starts_with(&reply_subject(by, "")),
            "{retry_callback}"
        );
        answer_image(&fake, retry_callback, id, "slow", "a.jpg", bytes.clone()).await;
        let r = fetch.await.unwrap();
        assert_eq!(r.status(), 200, "{id}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
}

/// Asks `gateway` over a websocket for request `id` of network `slow`, which the stand-in
/// takes (its callback and message are returned); then the client says goodbye and waits for
/// the gateway to close its end: nobody waits for the answer any more.
async fn fetch_then_leave(
    gateway: &Gateway,
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    id: &str,
) -> (String, async_nats::jetstream::Message) {
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some(id), "slow", "a.jpg").await;
    ws.next_accepted().await;
    let (_, callback, msg) = take_request(consumer).await;
    ws.send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    while ws.next_message().await.is_some() {}
    (callback, msg)
}

#[tokio::test]
async fn a_websocket_client_that_leaves_before_its_answer_gets_it_by_id_later() {
    init_logs();
    let nats = NatsServer::start();
    let (fake, consumer) = fake_resolver(&nats.url(), "slow").await;
    let Pair { one, two, .. } = &pair(&nats).await;

    let (callback, _msg) = fetch_then_leave(one, &consumer, "w-1").await;
    let bytes = sample("harbor/cranes/crane-07.jpg");
    answer_image(&fake, callback, "w-1", "slow", "a.jpg", bytes.clone()).await;

    // Gateway one still archives and records the late answer; no second run is needed.
    let mut ws = WsClient::connect(&two.ws_url()).await;
    let (frame, got) = result_over_ws(&mut ws, "w-1").await;
    assert_image(&frame);
    assert_eq!(got.unwrap(), bytes);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), take_request_quietly(&consumer))
            .await
            .is_err(),
        "the request was not run again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_whose_client_left_is_still_archived_and_replayed() {
    init_logs();
    let nats = NatsServer::start();
    let (fake, consumer) = fake_resolver(&nats.url(), "slow").await;
    let Pair { one, two, .. } = &pair(&nats).await;

    let (callback, _msg) = fetch_then_leave(one, &consumer, "ls-1").await;
    // Nobody waits, yet the gateway grants credit and reads the whole stream into the archive:
    // the stand-in only sends chunks it was granted, and the end after the last.
    let image: Vec<u8> = (0..1_500_000u32).map(|i| (i * 13 % 251) as u8).collect();
    send_stream(&fake, "ls-1", &callback, &image, 256 * 1024, None, None).await;

    let mut ws = WsClient::connect(&two.ws_url()).await;
    let (frame, bytes) = result_over_ws(&mut ws, "ls-1").await;
    let ServerFrame::Image { size, frames, .. } = frame else {
        panic!("expected an image frame, got {}", frame.to_json());
    };
    assert_eq!((size, frames), (1_500_000, 2));
    assert_eq!(bytes.unwrap(), image);
}

/// Waits for a request on the consumer, forever.
async fn take_request_quietly(consumer: &async_nats::jetstream::consumer::PullConsumer) {
    use futures::StreamExt;
    loop {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        if let Some(Ok(_)) = batch.next().await {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_image_is_replayed_from_the_archive_in_frames() {
    init_logs();
    let nats = NatsServer::start();
    let images = tempfile::tempdir().unwrap();
    let size = 3 * 1024 * 1024 + 17;
    write_large_image(&images.path().join("big.jpg"), size, 5);
    let mut config = resolver_config(&nats.url(), vec![file_network("vault", images.path())]);
    config.max_inline_bytes = Some(256 * 1024);
    let _resolver = Resolver::start(config).await;
    let Pair { one, two, .. } = &pair(&nats).await;

    let mut ws = WsClient::connect(&one.ws_url()).await;
    ws.fetch(Some("s-1"), "vault", "big.jpg").await;
    let original = ws.next_answer().await;
    let original_bytes = original.bytes.expect("the image");
    assert_eq!(
        original_bytes,
        std::fs::read(images.path().join("big.jpg")).unwrap()
    );

    let mut ws = WsClient::connect(&two.ws_url()).await;
    let (frame, bytes) = result_over_ws(&mut ws, "s-1").await;
    let shown = frame.to_json();
    let ServerFrame::Image {
        size: replayed_size,
        frames,
        ..
    } = frame
    else {
        panic!("expected an image frame, got {shown}");
    };
    assert_eq!(replayed_size, size as u64);
    assert_eq!(frames, 4, "1 MiB frames: {shown}");
    assert_eq!(archived_as(&frame), archived_as(&original.frame));
    assert_eq!(bytes.unwrap(), original_bytes);

    let r = get(&two.http("/v1/requests/s-1"), None, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), original_bytes.as_slice());
}

/// The results bucket, through a client of its own.
async fn results_bucket(nats: &NatsServer) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client)
        .get_key_value(DEFAULT_RESULTS_BUCKET)
        .await
        .unwrap()
}

/// The record of `id`, as JSON (`null` if there is none).
async fn record_of(kv: &async_nats::jetstream::kv::Store, id: &str) -> Value {
    match kv.get(id).await.unwrap() {
        Some(value) => serde_json::from_slice(&value).unwrap(),
        None => Value::Null,
    }
}

/// The record of `id` once `ready` says so.
async fn record_when(
    kv: &async_nats::jetstream::kv::Store,
    id: &str,
    what: &str,
    ready: fn(&Value) -> bool,
) -> Value {
    eventually(what, Duration::from_secs(5), || async {
        let record = record_of(kv, id).await;
        ready(&record).then_some(record)
    })
    .await
}

/// Gateway `gw-one` in front of a stand-in resolver of network `slow`, with request `id` asked
/// over a websocket and held by the stand-in.
struct Held {
    fake: async_nats::Client,
    one: Gateway,
    kv: async_nats::jetstream::kv::Store,
    /// The callback of the held request.
    callback: String,
    _ws: WsClient,
    _held: async_nats::jetstream::Message,
    _archive: tempfile::TempDir,
}

/// Starts [`Held`]; `earlier` is put under `id` first, as an earlier request's record.
async fn held(nats: &NatsServer, id: &str, earlier: Option<Value>) -> Held {
    let (fake, consumer) = fake_resolver(&nats.url(), "slow").await;
    let archive = tempfile::tempdir().unwrap();
    let one = gateway(nats, archive.path(), |c| c.instance = "gw-one".into()).await;
    let kv = results_bucket(nats).await;
    if let Some(record) = earlier {
        kv.put(id, record.to_string().into()).await.unwrap();
    }
    let mut ws = WsClient::connect(&one.ws_url()).await;
    ws.fetch(Some(id), "slow", "a.jpg").await;
    ws.next_accepted().await;
    let (taken, callback, message) = take_request(&consumer).await;
    assert_eq!(taken, id);
    Held {
        fake,
        one,
        kv,
        callback,
        _ws: ws,
        _held: message,
        _archive: archive,
    }
}

#[tokio::test]
async fn a_reused_id_replaces_the_earlier_requests_record() {
    init_logs();
    let nats = NatsServer::start();
    // The outcome of an earlier request with the same id, whose de-duplication window is over.
    let earlier = json!({"v":1,"network":"slow","key":"old.jpg","state":"failed",
        "code":"not_found","message":"the earlier request's answer"});
    let h = held(&nats, "u-1", Some(earlier)).await;
    // While the new request runs, a fetch must not find the earlier request's outcome.
    let record = record_when(&h.kv, "u-1", "the new request's pending record", |r| {
        r["state"] == "pending"
    })
    .await;
    assert_eq!(
        (record["key"].as_str(), record["owner"].as_str()),
        (Some("a.jpg"), Some("gw-one"))
    );

    let bytes = sample(IMAGE);
    answer_image(
        &h.fake,
        h.callback.clone(),
        "u-1",
        "slow",
        "a.jpg",
        bytes.clone(),
    )
    .await;
    let r = get(&h.one.http("/v1/requests/u-1"), None, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn a_takeover_that_cannot_queue_again_leaves_the_record_overdue() {
    init_logs();
    let nats = NatsServer::start();
    let archive = tempfile::tempdir().unwrap();
    let one = gateway(&nats, archive.path(), |c| c.instance = "gw-one".into()).await;
    let kv = results_bucket(&nats).await;
    // Owned by a gateway that is gone, for a network nobody serves: the takeover claims it,
    // then cannot queue it again.
    let pending = json!({"v":1,"network":"nowhere","key":"a.jpg","state":"pending",
        "owner":"gw-gone","deadline_ms":u64::MAX / 2,"attempt":0});
    kv.put("o-1", pending.to_string().into()).await.unwrap();

    let r = get(&one.http("/v1/requests/o-1"), None, None).await;
    let body = expect_error(r, 400, "unknown_network").await;
    assert!(
        body["message"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );
    let record = record_of(&kv, "o-1").await;
    assert_eq!(record["state"], "pending", "{record}");
    assert_eq!(
        record["deadline_ms"], 0,
        "overdue, for the next fetch to retry: {record}"
    );
    assert_eq!(record["attempt"], 1, "{record}");
}

#[tokio::test]
async fn the_results_bucket_is_created_again_after_it_was_deleted() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let archive = tempfile::tempdir().unwrap();
    let one = gateway(&nats, archive.path(), |c| c.instance = "gw-one".into()).await;
    let url = one.http("/v1/images/harbor/quay-east.jpg");
    assert_eq!(get(&url, None, Some("w-1")).await.status(), 200);

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_key_value(DEFAULT_RESULTS_BUCKET).await.unwrap();
    // The request's record cannot be written: the gateway opens the bucket again.
    assert_eq!(get(&url, None, Some("w-2")).await.status(), 200);
    eventually("the bucket to exist again", Duration::from_secs(5), || {
        let js = js.clone();
        async move { js.get_key_value(DEFAULT_RESULTS_BUCKET).await.ok() }
    })
    .await;

    assert_eq!(get(&url, None, Some("w-3")).await.status(), 200);
    let replay = eventually("w-3 to be replayed", Duration::from_secs(5), || {
        let url = one.http("/v1/requests/w-3");
        async move {
            let r = get(&url, None, None).await;
            (r.status() == 200).then_some(r)
        }
    })
    .await;
    assert_eq!(
        replay.bytes().await.unwrap().as_ref(),
        sample(IMAGE).as_slice()
    );
}

#[tokio::test]
async fn an_owner_receiving_a_stream_marks_its_record_delivering() {
    init_logs();
    let nats = NatsServer::start();
    let h = held(&nats, "d-1", None).await;
    // The head of a stream whose chunks are still to come, as for a large image.
    let mut head = ReplyHead::ok(
        "d-1",
        ImageHead {
            size: Some(2048),
            ..image_head("slow", "a.jpg", "image/jpeg")
        },
    );
    head.chunked = Some(Chunked {
        flow: new_flow_subject(None),
        chunk_size: 1024,
        chunks: 2,
    });
    h.fake
        .publish_with_headers(h.callback.clone(), head.to_headers(), Vec::new().into())
        .await
        .unwrap();
    h.fake.flush().await.unwrap();
    // From now on only the owner's death allows a takeover, however long the stream lasts.
    let record = record_when(&h.kv, "d-1", "the record to say delivering", |r| {
        r["delivering"] == true
    })
    .await;
    assert_eq!(record["state"], "pending", "{record}");
    assert_eq!(record["owner"], "gw-one", "{record}");
}

/// The happy path's records cost two writes per request, archive on or off: `pending`, then
/// the outcome, as a compare-and-set on the revision the gateway wrote (no `delivering` step
/// for an inline image, whose copy is one bounded write).
#[tokio::test]
async fn an_inline_image_costs_two_record_writes_archived_or_not() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let archive = tempfile::tempdir().unwrap();
    let archiving = gateway(&nats, archive.path(), |c| c.instance = "gw-arch".into()).await;
    let plain = Gateway::start(&nats.url(), |c| {
        c.archive = None;
        c.instance = "gw-plain".into();
    })
    .await;
    let kv = results_bucket(&nats).await;
    let writes = |kv: async_nats::jetstream::kv::Store| async move {
        let mut stream = kv.stream.clone();
        stream.info().await.unwrap().state.last_sequence
    };
    for (gw, id, state) in [
        (&archiving, "w-arch", "done"),
        (&plain, "w-plain", "unarchived"),
    ] {
        let before = writes(kv.clone()).await;
        let r = get(&gw.http("/v1/images/harbor/quay-east.jpg"), None, Some(id)).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let record = eventually("the outcome's record", Duration::from_secs(10), || async {
            let record = record_of(&kv, id).await;
            (record["state"] == state).then_some(record)
        })
        .await;
        // Nothing else is written after the outcome: wait a little for a stray write.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let entry = kv.entry(id).await.unwrap().expect("the record");
        assert_eq!(
            (writes(kv.clone()).await - before, entry.revision - before),
            (2, 2),
            "{id}: pending and {state} should be the only writes: {record}"
        );
    }
}
