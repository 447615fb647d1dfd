//! Client authentication with a tokens file, over HTTP and websocket, and what the gateway tells
//! browsers about the bytes it serves (`Content-Type` of images only, `nosniff` everywhere).

use std::path::Path;

use imgfetch_common::digest::sha256_hex;
use imgfetch_common::protocol::ErrorCode;
use imgfetch_gateway::auth::Tokens;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    assert_error, assert_image, dir_resolver, frame_id, sample_resolver, Gateway, Resolver,
    WsClient,
};
use imgfetch_tests::{init_logs, sample};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

/// May fetch from `harbor` only.
const HARBOR_TOKEN: &str = "harbor-7f3a9c1e5d";
/// May fetch from every network.
const ANY_TOKEN: &str = "any-0b8e2d4f6a";

/// Writes a tokens file for [`HARBOR_TOKEN`] and [`ANY_TOKEN`] and loads it as the gateway does.
fn tokens(dir: &Path) -> Tokens {
    let path = dir.join("tokens.toml");
    let text = format!(
        "[[token]]\nname = \"harbor-only\"\nsha256 = \"{}\"\nnetworks = [\"harbor\"]\n\n\
         [[token]]\nname = \"ops\"\nsha256 = \"{}\"\nnetworks = [\"*\"]\n",
        sha256_hex(HARBOR_TOKEN.as_bytes()),
        sha256_hex(ANY_TOKEN.as_bytes()),
    );
    std::fs::write(&path, text).expect("write tokens file");
    Tokens::load(&path).expect("a valid tokens file")
}

/// A resolver serving `harbor` from the samples, and a gateway with the test's tokens on.
async fn with_tokens() -> (NatsServer, Resolver, Gateway) {
    init_logs();
    let nats = NatsServer::start();
    let resolver = sample_resolver(&nats.url(), "harbor").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens(dir.path());
    let gateway = Gateway::start(&nats.url(), |c| c.clients.tokens = Some(tokens)).await;
    (nats, resolver, gateway)
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.expect("HTTP request")
}

fn nosniff(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get("x-content-type-options")
        .and_then(|v| v.to_str().ok())
}

/// Checks status, code and `nosniff` of an error response.
async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let got = response.status().as_u16();
    assert_eq!(
        nosniff(&response),
        Some("nosniff"),
        "errors must carry nosniff"
    );
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(got, status, "expected {status} {code}, got {got}: {body}");
    assert_eq!(body["code"], code, "{body}");
    body
}

#[tokio::test]
async fn http_refuses_missing_wrong_and_other_network_tokens_and_serves_a_valid_one() {
    let (_nats, _resolver, gateway) = with_tokens().await;
    let image = gateway.http("/v1/images/harbor/quay-east.jpg");

    let missing = get(&image, None).await;
    assert_eq!(
        missing
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some("Bearer")
    );
    expect_error(missing, 401, "unauthorized").await;
    expect_error(get(&image, Some("not-a-token")).await, 401, "unauthorized").await;
    let basic = reqwest::Client::new()
        .get(&image)
        .basic_auth("ops", Some(ANY_TOKEN))
        .send()
        .await
        .unwrap();
    expect_error(basic, 401, "unauthorized").await;
    let other = gateway.http("/v1/images/plant/line-3/press-1.jpg");
    let body = expect_error(get(&other, Some(HARBOR_TOKEN)).await, 403, "forbidden").await;
    assert!(
        body["message"].as_str().unwrap().contains("harbor-only"),
        "the refusal names the token, never its secret: {body}"
    );

    let expected = sample("harbor/quay-east.jpg");
    for token in [HARBOR_TOKEN, ANY_TOKEN] {
        let ok = get(&image, Some(token)).await;
        assert_eq!(ok.status(), 200, "a valid token must fetch its network");
        assert_eq!(nosniff(&ok), Some("nosniff"));
        assert_eq!(ok.headers()["content-type"], "image/jpeg");
        assert_eq!(ok.bytes().await.unwrap().as_ref(), expected.as_slice());
    }
    // A token for every network passes the check and meets the usual answer.
    let missing_image = gateway.http("/v1/images/harbor/missing.jpg");
    expect_error(get(&missing_image, Some(ANY_TOKEN)).await, 404, "not_found").await;

    // Health and metrics stay open to probes and scrapers.
    for (path, status) in [("/livez", 200), ("/readyz", 200), ("/metrics", 404)] {
        let r = get(&gateway.http(path), None).await;
        assert_eq!(r.status(), status, "{path} without a token");
        assert_eq!(nosniff(&r), Some("nosniff"), "{path} must carry nosniff");
    }
}

/// The status of a refused websocket handshake.
fn refused_status(result: Result<WsClient, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal of the upgrade, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal of the upgrade, but the socket opened"),
    }
}

fn with_bearer(
    url: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn websocket_refuses_missing_and_wrong_tokens_before_the_upgrade() {
    let (_nats, _resolver, gateway) = with_tokens().await;
    let url = gateway.ws_url();

    assert_eq!(
        refused_status(WsClient::try_connect(url.as_str()).await),
        401
    );
    let wrong_query = format!("{url}?token=not-a-token");
    assert_eq!(
        refused_status(WsClient::try_connect(wrong_query.as_str()).await),
        401
    );
    assert_eq!(
        refused_status(WsClient::try_connect(with_bearer(&url, "not-a-token")).await),
        401
    );
}

#[tokio::test]
async fn websocket_with_a_valid_token_fetches_its_networks_and_is_refused_others() {
    let (_nats, _resolver, gateway) = with_tokens().await;
    let url = gateway.ws_url();
    let expected = sample("harbor/quay-east.jpg");

    let by_query = format!("{url}?token={HARBOR_TOKEN}");
    for request in [
        with_bearer(&url, HARBOR_TOKEN),
        by_query.into_client_request().unwrap(),
    ] {
        let mut ws = WsClient::try_connect(request)
            .await
            .expect("a valid token opens the socket");
        ws.fetch(Some("other"), "plant", "line-3/press-1.jpg").await;
        let refused = ws.next_answer().await.frame;
        let shown = refused.to_json();
        assert_error(&refused, ErrorCode::Forbidden);
        assert_eq!(frame_id(&refused), Some("other"), "{shown}");
        // The socket stays open and serves the token's own network.
        ws.fetch(None, "harbor", "quay-east.jpg").await;
        let answer = ws.next_answer().await;
        assert_image(&answer.frame);
        assert_eq!(answer.bytes.as_deref(), Some(expected.as_slice()));
    }

    let mut any = WsClient::try_connect(with_bearer(&url, ANY_TOKEN))
        .await
        .expect("a valid token opens the socket");
    any.fetch(None, "harbor", "quay-east.jpg").await;
    assert_image(&any.next_answer().await.frame);
}

#[tokio::test]
async fn authentication_is_off_by_default() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let r = get(&gateway.http("/v1/images/harbor/quay-east.jpg"), None).await;
    assert_eq!(r.status(), 200);
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(None, "harbor", "quay-east.jpg").await;
    assert_image(&ws.next_answer().await.frame);
}

#[tokio::test]
async fn html_stored_as_jpg_is_served_as_octet_stream_with_nosniff() {
    init_logs();
    let nats = NatsServer::start();
    let store = tempfile::tempdir().unwrap();
    let html = b"<!DOCTYPE html>\n<html><head><title>x</title></head>\
                 <body><script>alert(document.cookie)</script></body></html>\n";
    std::fs::write(store.path().join("x.jpg"), html).unwrap();
    std::fs::copy(
        imgfetch_tests::pipeline::samples_dir().join("harbor/quay-east.jpg"),
        store.path().join("real.jpg"),
    )
    .unwrap();
    let _resolver = dir_resolver(&nats.url(), "uploads", store.path()).await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;

    let r = get(&gateway.http("/v1/images/uploads/x.jpg"), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/octet-stream",
        "an HTML document must not be served as a renderable type"
    );
    assert_eq!(nosniff(&r), Some("nosniff"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), html.as_slice());

    let real = get(&gateway.http("/v1/images/uploads/real.jpg"), None).await;
    assert_eq!(real.headers()["content-type"], "image/jpeg");
    assert_eq!(nosniff(&real), Some("nosniff"));
}

/// A token removed from the tokens file is refused without a restart: over HTTP, at a new
/// websocket upgrade, and on a websocket it opened before. The others keep working, and a file
/// that no longer parses leaves the tokens in force.
#[tokio::test]
async fn a_revoked_token_is_refused_without_a_restart() {
    init_logs();
    let nats = NatsServer::start();
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let dir = tempfile::tempdir().unwrap();
    let loaded = tokens(dir.path());
    let path = dir.path().join("tokens.toml");
    let watched = path.clone();
    let gateway = Gateway::start(&nats.url(), move |c| {
        c.clients.tokens = Some(loaded);
        c.clients.tokens_file = Some(watched);
        c.clients.tokens_reload_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let image = gateway.http("/v1/images/harbor/quay-east.jpg");
    assert_eq!(get(&image, Some(HARBOR_TOKEN)).await.status(), 200);
    let mut open_socket = WsClient::try_connect(with_bearer(&gateway.ws_url(), HARBOR_TOKEN))
        .await
        .expect("a valid token opens the socket");

    // The file without the harbor token, written as a new file and renamed over the old one
    // (as an editor or a Secret update does).
    let only_ops = format!(
        "[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nnetworks = [\"*\"]\n",
        sha256_hex(ANY_TOKEN.as_bytes()),
    );
    let next = dir.path().join("tokens.toml.new");
    std::fs::write(&next, only_ops).unwrap();
    std::fs::rename(&next, &path).unwrap();
    imgfetch_tests::eventually(
        "the harbor token refused",
        std::time::Duration::from_secs(10),
        || async { (get(&image, Some(HARBOR_TOKEN)).await.status() == 401).then_some(()) },
    )
    .await;
    expect_error(get(&image, Some(HARBOR_TOKEN)).await, 401, "unauthorized").await;
    assert_eq!(
        refused_status(WsClient::try_connect(with_bearer(&gateway.ws_url(), HARBOR_TOKEN)).await),
        401
    );
    open_socket
        .fetch(Some("after"), "harbor", "quay-east.jpg")
        .await;
    let refused = open_socket.next_answer().await.frame;
    assert_error(&refused, ErrorCode::Unauthorized);
    assert_eq!(get(&image, Some(ANY_TOKEN)).await.status(), 200);

    // A broken file: the tokens in force stay. Renamed into place like the one above: written
    // in place, the reload could read it empty (truncated, not yet written), a valid file of no
    // tokens, which refuses everyone by design.
    std::fs::write(&next, "[[token]]\nname = 3\n").unwrap();
    std::fs::rename(&next, &path).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(get(&image, Some(ANY_TOKEN)).await.status(), 200);
    assert_eq!(get(&image, Some(HARBOR_TOKEN)).await.status(), 401);
    gateway.stop().await;
}
