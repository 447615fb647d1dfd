//! The gateway's limits on clients, each hit on purpose: a websocket left idle, a client that
//! never finishes its headers, connections beyond the cap, a token beyond its in-flight share.

use std::time::{Duration, Instant};

use imgfetch_common::digest::sha256_hex;
use imgfetch_common::frames::ServerFrame;
use imgfetch_common::protocol::ErrorCode;
use imgfetch_gateway::auth::Tokens;
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{
    assert_error, dir_resolver, error_code, frame_id, sample_resolver, Gateway, WsClient,
};
use imgfetch_tests::{eventually, init_logs, within, write_large_image};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The next frame within `within`, or `None` if the socket closed or nothing came.
async fn next_frame(ws: &mut WsClient, within: Duration) -> Option<Message> {
    tokio::time::timeout(within, ws.next_message())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn idle_websocket_is_closed_with_a_reason_but_not_while_it_waits_for_an_answer() {
    init_logs();
    let nats = NatsServer::start();
    // A network whose requests are stored and never taken: the stand-in answers pings, so the
    // gateway accepts requests, and never pulls, so they stay in flight until their deadline.
    let _silent = imgfetch_tests::fake::fake_resolver(&nats.url(), "quiet").await;
    let gateway = Gateway::start(&nats.url(), |c| {
        c.clients.ws_idle_timeout = Duration::from_millis(400);
        c.request_timeout = Duration::from_millis(1500);
    })
    .await;

    // A request in flight longer than the idle timeout: the client is waiting, not idle.
    let mut ws = WsClient::connect(&gateway.ws_url()).await;
    ws.fetch(Some("slow"), "quiet", "a.jpg").await;
    ws.next_accepted().await;
    let answer = ws.next_answer().await.frame;
    assert_eq!(
        error_code(&answer),
        Some(ErrorCode::Timeout),
        "the socket must stay open until its request is answered: {}",
        answer.to_json()
    );

    // Then silence: closed with a close frame saying why.
    let started = Instant::now();
    match next_frame(&mut ws, Duration::from_secs(5)).await {
        Some(Message::Close(Some(frame))) => {
            assert!(
                frame.reason.contains("idle"),
                "the close frame must say why: {frame:?}"
            );
        }
        other => panic!("expected a close frame for the idle socket within 5 s, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "closed only after {waited:?}"
    );

    // A client that keeps talking is not idle.
    let mut busy = WsClient::connect(&gateway.ws_url()).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        busy.send(Message::Ping(Vec::new().into())).await;
    }
    busy.fetch(None, "quiet", "a.jpg").await;
    let frame = busy.next_frame().await;
    assert!(
        matches!(frame, ServerFrame::Accepted { .. }),
        "a talking client must still be served after longer than the idle timeout: {}",
        frame.to_json()
    );
}

#[tokio::test]
async fn a_client_that_sends_half_a_header_line_is_cut_after_the_header_timeout() {
    init_logs();
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.clients.header_read_timeout = Duration::from_millis(500);
    })
    .await;

    let mut slow = TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection must be closed after the 500 ms header timeout, still open after 5 s"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "cut after {waited:?}, before the timeout"
    );
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 408"),
        "expected a plain close or a 408, got {got:?}"
    );

    // Nor may a client that sends nothing at all hold its connection.
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a connection that sends nothing must be closed after the header timeout"
    );

    // A client that sends its headers in time is served as usual.
    let mut prompt = TcpStream::connect(gateway.addr).await.unwrap();
    prompt
        .write_all(b"GET /livez HTTP/1.1\r\nHost: loc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let read = prompt.read_to_string(&mut answer);
    within(
        "the answer to a prompt client",
        Duration::from_secs(5),
        read,
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Sends `GET /livez` on a kept-alive connection; the status line's code.
async fn livez_on(tcp: &mut TcpStream) -> Option<u16> {
    tcp.write_all(b"GET /livez HTTP/1.1\r\nHost: loc\r\n\r\n")
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return;
                }
            }
        }
    })
    .await;
    let _ = read;
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_at_once_websockets_included() {
    init_logs();
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.clients.max_connections = 2;
        c.clients.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    // The start-up probe's connection may linger for a moment; take the slots as they free.
    let ws = eventually("a websocket slot", Duration::from_secs(5), || async {
        WsClient::try_connect(gateway.ws_url().as_str()).await.ok()
    })
    .await;
    let mut held = eventually("a connection slot", Duration::from_secs(5), || async {
        let mut tcp = TcpStream::connect(gateway.addr).await.ok()?;
        (livez_on(&mut tcp).await == Some(200)).then_some(tcp)
    })
    .await;

    // The cap is reached by one websocket and one HTTP connection.
    let started = Instant::now();
    let mut third = TcpStream::connect(gateway.addr).await.unwrap();
    let status = livez_on(&mut third).await;
    assert_eq!(
        status,
        Some(503),
        "a third connection over a cap of 2 must get 503"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "refused slowly");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the refused connection must be closed");
    let refused_ws = WsClient::try_connect(gateway.ws_url().as_str()).await;
    assert!(
        refused_ws.is_err(),
        "a websocket over the cap must be refused"
    );

    // The held connections still work, and a freed slot is taken again.
    assert_eq!(livez_on(&mut held).await, Some(200));
    drop(ws);
    eventually(
        "a slot freed by the closed websocket",
        Duration::from_secs(5),
        || async {
            let mut tcp = TcpStream::connect(gateway.addr).await.ok()?;
            (livez_on(&mut tcp).await == Some(200)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_token_has_at_most_its_in_flight_requests_over_http_and_websocket() {
    init_logs();
    let nats = NatsServer::start();
    // A network whose requests are stored and never taken: the stand-in answers pings, so the
    // gateway accepts requests, and never pulls, so they stay in flight until their deadline.
    let _silent = imgfetch_tests::fake::fake_resolver(&nats.url(), "quiet").await;
    let _resolver = sample_resolver(&nats.url(), "harbor").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nnetworks = [\"*\"]\n\
             [[token]]\nname = \"b\"\nsha256 = \"{}\"\nnetworks = [\"*\"]\n",
            sha256_hex(b"token-a"),
            sha256_hex(b"token-b")
        ),
    )
    .unwrap();
    let tokens = Tokens::load(&path).unwrap();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.clients.tokens = Some(tokens);
        c.clients.max_in_flight_per_token = 1;
        c.request_timeout = Duration::from_secs(2);
    })
    .await;
    let get = |token: &'static str, path: &str| {
        reqwest::Client::new()
            .get(gateway.http(path))
            .bearer_auth(token)
            .send()
    };

    // Token a's one request is in flight on a websocket.
    let mut ws = WsClient::try_connect(format!("{}?token=token-a", gateway.ws_url()).as_str())
        .await
        .expect("connect with token a");
    ws.fetch(Some("held"), "quiet", "a.jpg").await;
    ws.next_accepted().await;

    // Its next one is refused, by HTTP and on the websocket, at once.
    let started = Instant::now();
    let r = get("token-a", "/v1/images/harbor/quay-east.jpg")
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "too_many_requests", "{body}");
    ws.fetch(Some("more"), "harbor", "quay-east.jpg").await;
    let refused = ws.next_frame().await;
    let shown = refused.to_json();
    assert_eq!(frame_id(&refused), Some("more"), "{shown}");
    assert_error(&refused, ErrorCode::TooManyRequests);
    assert!(started.elapsed() < Duration::from_secs(1), "refused slowly");

    // Token b has its own share.
    let b = get("token-b", "/v1/images/harbor/quay-east.jpg")
        .await
        .unwrap();
    assert_eq!(b.status(), 200, "token b must not be limited by token a");

    // Once the held request is answered (by its deadline), token a may fetch again.
    let answer = ws.next_answer().await.frame;
    let shown = answer.to_json();
    assert_eq!(frame_id(&answer), Some("held"), "{shown}");
    assert_error(&answer, ErrorCode::Timeout);
    let again = get("token-a", "/v1/images/harbor/quay-east.jpg")
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_streamed_http_image_holds_its_tokens_slot_until_the_body_is_done() {
    init_logs();
    let nats = NatsServer::start();
    let images = tempfile::tempdir().unwrap();
    // Well over the inline limit and the credit window, so it streams at the client's pace.
    write_large_image(&images.path().join("big.jpg"), 24 << 20, 3);
    let _resolver = dir_resolver(&nats.url(), "scans", images.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nnetworks = [\"*\"]\n",
            sha256_hex(b"token-a")
        ),
    )
    .unwrap();
    let tokens = Tokens::load(&path).unwrap();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.clients.tokens = Some(tokens);
        c.clients.max_in_flight_per_token = 1;
    })
    .await;
    let url = gateway.http("/v1/images/scans/big.jpg");
    let get = || {
        reqwest::Client::new()
            .get(&url)
            .bearer_auth("token-a")
            .send()
    };

    // Headers are in, the body is not read: the request is still in flight.
    let streaming = get().await.unwrap();
    assert_eq!(streaming.status(), 200);
    let second = get().await.unwrap();
    assert_eq!(
        second.status(),
        429,
        "a streamed body still being sent must count against its token"
    );
    // Reading it to the end frees the slot.
    let body = streaming.bytes().await.unwrap();
    assert_eq!(body.len(), 24 << 20);
    eventually("the token's slot back", Duration::from_secs(5), || async {
        let r = get().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}
