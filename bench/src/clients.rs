//! The ways a benchmark asks for an image: HTTP GET and websocket through the gateway, and a
//! direct `object_store` read (the floor no pipeline can beat).

use std::sync::Arc;

use futures::{FutureExt, SinkExt, StreamExt};
use imgfetch_common::frames::{ClientFrame, ServerFrame};
use imgfetch_common::protocol::http_header;
use object_store::{local::LocalFileSystem, ObjectStore, ObjectStoreExt};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::corpus;
use crate::load::Fetch;

/// `concurrency` HTTP workers sharing one keep-alive pool, all asking `network`.
pub fn http(base: &str, network: &str, images: usize, concurrency: usize) -> Vec<Fetch> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("HTTP client");
    let prefix: Arc<str> = format!("{base}/v1/images/{network}/").into();
    (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let prefix = prefix.clone();
            let fetch: Fetch = Box::new(move |n| {
                let url = format!("{prefix}{}", corpus::key(corpus::pick(n, images)));
                let client = client.clone();
                async move {
                    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
                    let status = response.status();
                    // An image the archive refused (its queue full) is a failure of the run.
                    let archive_error = response
                        .headers()
                        .get(http_header::ARCHIVE_ERROR)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                    let body = response.bytes().await.map_err(|e| e.to_string())?;
                    if !status.is_success() {
                        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
                    }
                    if let Some(why) = archive_error {
                        return Err(format!("not archived: {why}"));
                    }
                    Ok(body.len())
                }
                .boxed()
            });
            fetch
        })
        .collect()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `fetch` frame, as the text message that carries it.
pub fn fetch_message(id: Option<String>, network: &str, key: &str) -> Message {
    let frame = ClientFrame::Fetch {
        id,
        network: network.to_owned(),
        key: key.to_owned(),
        meta: Default::default(),
    };
    Message::text(serde_json::to_string(&frame).expect("frames serialise"))
}

/// A JSON frame from the gateway.
pub fn read_frame(text: &str) -> serde_json::Result<ServerFrame<'static>> {
    serde_json::from_str(text)
}

/// Opens a websocket to the gateway.
pub async fn connect_ws(base: &str) -> anyhow::Result<Socket> {
    Ok(connect_ws_as(base, None).await?)
}

/// Opens a websocket to the gateway, with `Authorization: Bearer <token>` on the upgrade when
/// a token is given. The error is tungstenite's, so that a caller can tell a refused upgrade
/// (its HTTP response) from a connection that failed.
pub async fn connect_ws_as(
    base: &str,
    token: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    let url = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))?;
        request.headers_mut().insert("authorization", value);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// `concurrency` websocket workers, one connection each, one request in flight on each.
pub async fn websocket(
    base: &str,
    network: &str,
    images: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Fetch>> {
    let mut fetches = Vec::new();
    for w in 0..concurrency {
        let socket = Arc::new(Mutex::new(connect_ws(base).await?));
        let network: Arc<str> = network.into();
        let fetch: Fetch = Box::new(move |n| {
            let socket = socket.clone();
            let network = network.clone();
            async move {
                let mut socket = socket.lock().await;
                let id = format!("ws{w}-{}", crate::load::unique());
                let key = corpus::key(corpus::pick(n, images));
                socket
                    .send(fetch_message(Some(id), &network, &key))
                    .await
                    .map_err(|e| e.to_string())?;
                loop {
                    let message = socket
                        .next()
                        .await
                        .ok_or("the gateway closed the websocket")?
                        .map_err(|e| e.to_string())?;
                    match message {
                        Message::Text(text) => match read_frame(text.as_str()) {
                            Ok(ServerFrame::Accepted { .. } | ServerFrame::Image { .. }) => {
                                continue
                            }
                            Ok(_) => return Err(format!("websocket answer: {text}")),
                            Err(e) => return Err(e.to_string()),
                        },
                        Message::Binary(bytes) => return Ok(bytes.len()),
                        _ => continue,
                    }
                }
            }
            .boxed()
        });
        fetches.push(fetch);
    }
    Ok(fetches)
}

/// `concurrency` workers reading the store directly through `object_store`.
pub fn floor(root: &std::path::Path, images: usize, concurrency: usize) -> Vec<Fetch> {
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(root).expect("store root"));
    (0..concurrency)
        .map(|_| {
            let store = store.clone();
            let fetch: Fetch = Box::new(move |n| {
                let store = store.clone();
                async move {
                    let path = object_store::path::Path::from(corpus::key(corpus::pick(n, images)));
                    let got = store.get(&path).await.map_err(|e| e.to_string())?;
                    let bytes = got.bytes().await.map_err(|e| e.to_string())?;
                    Ok(bytes.len())
                }
                .boxed()
            });
            fetch
        })
        .collect()
}
