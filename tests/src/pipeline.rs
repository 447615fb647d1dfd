//! Resolvers and gateways run in this process, and the three kinds of client the tests use:
//! websocket, HTTP, and a hand publisher like the NATS CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use imgfetch_common::frames::{ClientFrame, ServerFrame};
use imgfetch_common::info::ImageInfo;
use imgfetch_common::message::{ReplyHead, RequestHead, Status};
use imgfetch_common::protocol::{header, ping_subject, ErrorCode, FetchRequest};
use imgfetch_resolver::config::{NetworkSpec, StoreSpec};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A resolver running in this process.
pub struct Resolver {
    token: CancellationToken,
    handle: Option<JoinHandle<Result<(), imgfetch_resolver::RunError>>>,
}

impl Resolver {
    /// Starts a resolver and waits until every one of its networks answers pings.
    pub async fn start(config: imgfetch_resolver::Config) -> Resolver {
        let client = config
            .nats_auth
            .connect(
                &config.nats_url,
                "test pings".into(),
                imgfetch_common::protocol::RESOLVER_INBOX_PREFIX,
            )
            .await
            .expect("connect for pings");
        Resolver::start_pinging(config, &client).await
    }

    /// Starts a resolver and waits until every one of its networks answers pings sent through
    /// `client` (for a resolver whose own credentials may not ping).
    pub async fn start_pinging(
        config: imgfetch_resolver::Config,
        client: &async_nats::Client,
    ) -> Resolver {
        let networks: Vec<String> = config.networks.iter().map(|n| n.name.clone()).collect();
        let token = CancellationToken::new();
        let handle = tokio::spawn(imgfetch_resolver::run(config, token.clone()));
        let resolver = Resolver {
            token,
            handle: Some(handle),
        };
        for net in networks {
            wait_served(client, &net).await;
        }
        resolver
    }

    /// Starts a resolver that is expected to fail at start, and returns its error.
    pub async fn start_err(config: imgfetch_resolver::Config) -> imgfetch_resolver::RunError {
        let token = CancellationToken::new();
        match tokio::time::timeout(
            Duration::from_secs(20),
            imgfetch_resolver::run(config, token),
        )
        .await
        {
            Ok(Err(e)) => e,
            Ok(Ok(())) => {
                panic!("expected the resolver to fail at start, but it ran and stopped cleanly")
            }
            Err(_) => panic!(
                "expected the resolver to fail at start, but it was still running after 20 s"
            ),
        }
    }

    /// Stops it and waits for the drain to finish.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            h.await
                .expect("resolver task")
                .expect("resolver ran cleanly");
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Polls the network's ping subject until a resolver answers.
pub async fn wait_served(client: &async_nats::Client, network: &str) {
    crate::eventually(
        &format!("a resolver serving {network:?}"),
        Duration::from_secs(20),
        || async {
            client
                .request(ping_subject(network), "".into())
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await
}

/// A gateway running in this process, on a runtime of its own (as if it were its own process):
/// [`Gateway::kill`] ends everything it runs at once, its sockets, sessions and NATS
/// connection included.
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    token: CancellationToken,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<Result<(), imgfetch_gateway::RunError>>>,
}

impl Gateway {
    /// Starts a gateway on a random port with defaults, changed by `tweak`.
    pub async fn start(
        nats_url: &str,
        tweak: impl FnOnce(&mut imgfetch_gateway::Config),
    ) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Gateway::serve(listener, nats_url, tweak).await
    }

    /// Starts a gateway on `addr`, as a restarted gateway comes back on its old port (a browser
    /// reconnects to the same address). Retries the bind while the old socket lets go.
    pub async fn start_at(
        addr: SocketAddr,
        nats_url: &str,
        tweak: impl FnOnce(&mut imgfetch_gateway::Config),
    ) -> Gateway {
        let mut bound = None;
        for _ in 0..100 {
            // tokio sets SO_REUSEADDR, so the old gateway's closed connections do not block it.
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let listener = bound.unwrap_or_else(|| panic!("cannot bind {addr} again within 5 s"));
        Gateway::serve(listener, nats_url, tweak).await
    }

    async fn serve(
        listener: tokio::net::TcpListener,
        nats_url: &str,
        tweak: impl FnOnce(&mut imgfetch_gateway::Config),
    ) -> Gateway {
        let mut config = imgfetch_gateway::Config::new(nats_url);
        tweak(&mut config);
        let addr = listener.local_addr().expect("addr");
        let listener = listener.into_std().expect("listener off this runtime");
        let token = CancellationToken::new();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel();
        let shutdown = token.clone();
        std::thread::Builder::new()
            .name(format!("gateway {addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("gateway runtime");
                let outcome = runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("gateway listener");
                    // Only a sent kill kills: a dropped `Gateway` drains instead.
                    let killed = async {
                        if killed.await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        ran = imgfetch_gateway::run(listener, config, shutdown) => Some(ran),
                        () = killed => None,
                    }
                });
                // What the gateway still runs (sessions, supervised tasks, its NATS connection)
                // ends with its runtime, as it would with its process.
                runtime.shutdown_timeout(Duration::from_millis(500));
                if let Some(ran) = outcome {
                    let _ = finished.send(ran);
                }
            })
            .expect("gateway thread");
        let gateway = Gateway {
            addr,
            token,
            kill: Some(kill),
            done: Some(done),
        };
        // Started: past the start-up answers (`connecting to NATS`), serving its routes. Ready
        // or not is each test's business (a gateway is not ready until a resolver made the
        // stream).
        let url = gateway.http("/readyz");
        crate::eventually("the gateway to start", Duration::from_secs(10), || async {
            let r = reqwest::get(&url).await.ok()?;
            let body = r.text().await.ok()?;
            (body != "connecting to NATS").then_some(())
        })
        .await;
        gateway
    }

    /// `http://addr{path}`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The websocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Fires shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.token.cancel();
    }

    /// Stops it and waits for the drain.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(done) = self.done.take() {
            done.await
                .expect("the gateway's runtime ended without its result")
                .expect("gateway ran cleanly");
        }
    }

    /// Stops it abruptly, as a crash would: its runtime is shut down with no drain, which
    /// closes its listener, its client connections and its NATS connection. What it held in
    /// flight is left to other gateways. Returns once its listener is closed.
    pub async fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        let addr = self.addr;
        crate::eventually(
            "the killed gateway to stop listening",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// GETs `url`, checks the status, and returns the JSON error body.
pub async fn error_body(url: &str, status: u16) -> Value {
    let r = reqwest::get(url).await.expect("HTTP request");
    let got = r.status();
    let body: Value = r.json().await.expect("a JSON error body");
    assert_eq!(got, status, "status of {url}: {body}");
    body
}

/// The committed `samples/` directory.
pub fn samples_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

/// A network served from a directory.
pub fn file_network(name: &str, dir: impl Into<PathBuf>) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        store: StoreSpec::File { root: dir.into() },
    }
}

/// A resolver serving the committed `samples/<network>` directory as `network`.
pub async fn sample_resolver(nats_url: &str, network: &str) -> Resolver {
    Resolver::start(resolver_config(
        nats_url,
        vec![file_network(network, samples_dir().join(network))],
    ))
    .await
}

/// A resolver serving `dir` as `network`.
pub async fn dir_resolver(nats_url: &str, network: &str, dir: &std::path::Path) -> Resolver {
    Resolver::start(resolver_config(nats_url, vec![file_network(network, dir)])).await
}

/// A resolver config with test-friendly retry timings.
pub fn resolver_config(nats_url: &str, networks: Vec<NetworkSpec>) -> imgfetch_resolver::Config {
    let mut config = imgfetch_resolver::Config::new(nats_url, networks);
    config.retry_delay = Duration::from_millis(50);
    config.retry_delay_max = Duration::from_millis(200);
    config.store_timeout = Duration::from_secs(5);
    config.grace = Duration::from_secs(5);
    config
}

/// A websocket client speaking the gateway's protocol.
pub struct WsClient {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// A JSON frame from the gateway, as a client reads it.
pub type Frame = ServerFrame<'static>;

/// One answer on a websocket: the JSON frame, and the bytes when it was an image.
#[derive(Debug)]
pub struct WsAnswer {
    /// The `image` or `error` frame.
    pub frame: Frame,
    /// The binary frames after an `image` frame, joined.
    pub bytes: Option<Vec<u8>>,
}

/// The code of an `error` frame; `None` for any other frame.
pub fn error_code(frame: &Frame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// The id a frame names, if any.
pub fn frame_id(frame: &Frame) -> Option<&str> {
    match frame {
        ServerFrame::Accepted { id }
        | ServerFrame::Image { id, .. }
        | ServerFrame::ArchiveFailed { id, .. } => Some(id),
        ServerFrame::Error { id, .. } => id.as_deref(),
    }
}

/// Where an `image` or `archive_failed` frame says the archive copy goes; `None` for any
/// other frame.
pub fn archived_as(frame: &Frame) -> Option<&str> {
    match frame {
        ServerFrame::Image { archived_as, .. } => archived_as.as_deref(),
        ServerFrame::ArchiveFailed { archived_as, .. } => Some(archived_as),
        _ => None,
    }
}

/// Panics unless `frame` is an `image` frame.
pub fn assert_image(frame: &Frame) {
    assert!(
        matches!(frame, ServerFrame::Image { .. }),
        "expected an image frame, got {}",
        frame.to_json()
    );
}

/// Panics unless `frame` is an `error` frame with `code`.
pub fn assert_error(frame: &Frame, code: ErrorCode) {
    assert_eq!(error_code(frame), Some(code), "{}", frame.to_json());
}

/// The `info` of an `image` frame; panics on any other frame.
pub fn image_info(frame: &Frame) -> &ImageInfo {
    match frame {
        ServerFrame::Image { info, .. } => info,
        other => panic!("expected an image frame, got {}", other.to_json()),
    }
}

impl WsClient {
    /// Connects.
    pub async fn connect(url: &str) -> WsClient {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        WsClient { socket }
    }

    /// Connects with a request of one's own (headers, query); the handshake's error, such as
    /// the refusal's status, comes back as it is.
    pub async fn try_connect(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsClient { socket })
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.expect("send");
    }

    /// Sends a raw message.
    pub async fn send(&mut self, message: Message) {
        self.socket.send(message).await.expect("send");
    }

    /// Sends a frame.
    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        let text = serde_json::to_string(frame).expect("frames serialise");
        self.send_text(&text).await;
    }

    /// Sends a `fetch` frame, with an id or without (the gateway makes one).
    pub async fn fetch(&mut self, id: Option<&str>, network: &str, key: &str) {
        self.send_frame(&ClientFrame::Fetch {
            id: id.map(str::to_owned),
            network: network.to_owned(),
            key: key.to_owned(),
            meta: Default::default(),
        })
        .await;
    }

    /// Next text frame as sent (panics on anything else or after 30 s): for a test of the
    /// exact JSON on the wire.
    pub async fn next_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("a frame within 30 s")
                .expect("socket open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return t.as_str().to_owned(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    /// Next JSON frame (panics on anything else or after 30 s).
    pub async fn next_frame(&mut self) -> Frame {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a frame ({e}): {text}"))
    }

    /// Next frame, which must be `accepted`; returns its id.
    pub async fn next_accepted(&mut self) -> String {
        match self.next_frame().await {
            ServerFrame::Accepted { id } => id.into_owned(),
            other => panic!("expected an accepted frame, got {}", other.to_json()),
        }
    }

    /// Next frame of any kind, or `None` when the socket closes.
    pub async fn next_message(&mut self) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(30), self.socket.next())
            .await
            .expect("a frame within 30 s")
            .and_then(Result::ok)
    }

    /// Reads the next answer (skipping `accepted` frames).
    pub async fn next_answer(&mut self) -> WsAnswer {
        loop {
            let frame = self.next_frame().await;
            match &frame {
                ServerFrame::Accepted { .. } => continue,
                ServerFrame::Image { frames, .. } => {
                    let mut bytes = Vec::new();
                    for _ in 0..*frames {
                        match self.next_message().await {
                            Some(Message::Binary(b)) => bytes.extend_from_slice(&b),
                            // A streamed image that fails part-way ends with its error frame.
                            Some(Message::Text(t)) => {
                                let error: Frame = serde_json::from_str(t.as_str()).expect("JSON");
                                assert!(
                                    matches!(error, ServerFrame::Error { .. }),
                                    "{} inside {}",
                                    error.to_json(),
                                    frame.to_json()
                                );
                                return WsAnswer {
                                    frame: error,
                                    bytes: None,
                                };
                            }
                            other => panic!(
                                "expected a binary frame after {}, got {other:?}",
                                frame.to_json()
                            ),
                        }
                    }
                    return WsAnswer {
                        frame,
                        bytes: Some(bytes),
                    };
                }
                ServerFrame::Error { .. } => return WsAnswer { frame, bytes: None },
                ServerFrame::ArchiveFailed { .. } => {
                    panic!("unexpected frame {}", frame.to_json())
                }
            }
        }
    }
}

/// A request body (JSON) for `key` with `meta`, with no network: the subject names it.
pub fn request_body(
    id: &str,
    key: &str,
    meta: impl IntoIterator<Item = (String, String)>,
) -> String {
    serde_json::to_string(&FetchRequest {
        id: id.to_owned(),
        network: None,
        key: key.to_owned(),
        meta: meta.into_iter().collect(),
    })
    .expect("a request serialises")
}

/// Publishes a body to `imgfetch.req.<network>` the way `nats pub -H` does, with the callback
/// header and a de-duplication id, and returns a subscription on the callback.
pub async fn hand_publish(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    callback: Option<&str>,
    msg_id: Option<&str>,
) -> Option<async_nats::Subscriber> {
    let sub = match callback {
        Some(cb) => Some(
            client
                .subscribe(cb.to_owned())
                .await
                .expect("subscribe callback"),
        ),
        None => None,
    };
    let headers = RequestHead {
        callback: callback.map(str::to_owned),
        msg_id: msg_id.map(str::to_owned),
        ..RequestHead::default()
    }
    .to_headers();
    client
        .publish_with_headers(subject.to_owned(), headers, body.to_owned().into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    sub
}

/// Publishes `body` by hand with id `id` (callback `me.<id>`, `Nats-Msg-Id: <id>`) and returns
/// the answer, panicking if none comes within 10 s.
pub async fn ask(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    id: &str,
) -> async_nats::Message {
    let callback = format!("me.{id}");
    let mut sub = hand_publish(client, subject, body, Some(&callback), Some(id))
        .await
        .expect("a callback subscription");
    next_within(&mut sub, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer within 10 s to {body}"))
}

/// The next message on `sub`, within `timeout`.
pub async fn next_within(
    sub: &mut async_nats::Subscriber,
    timeout: Duration,
) -> Option<async_nats::Message> {
    tokio::time::timeout(timeout, sub.next())
        .await
        .ok()
        .flatten()
}

/// The messages that still come on `sub` until it is quiet for `quiet`, for at most 10 s: a
/// product that kept answering (a redelivery loop) fails the test's count instead of hanging it.
pub async fn the_rest(
    sub: &mut async_nats::Subscriber,
    quiet: Duration,
) -> Vec<async_nats::Message> {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut rest = Vec::new();
    while tokio::time::Instant::now() < until {
        match next_within(sub, quiet).await {
            Some(msg) => rest.push(msg),
            None => break,
        }
    }
    rest
}

/// The head of a reply on a callback subject (or of an `imgfetch.fetch` answer); panics on a
/// malformed one.
pub fn reply_head(msg: &async_nats::Message) -> ReplyHead {
    ReplyHead::from_headers(msg.headers.as_ref())
        .unwrap_or_else(|e| panic!("a malformed reply head ({e}): {:?}", msg.headers))
}

/// The status of an answer that is nothing but a status (`Status::to_headers`: a stat
/// endpoint's, or an `imgfetch.fetch` error's). No message type reads one back, so it is read
/// here by name.
pub fn answer_status(msg: &async_nats::Message) -> Status {
    Status::parse(header_of(msg, header::STATUS).as_deref())
}

/// A header of a message, as a string: for headers no message type reads (the micro
/// protocol's), or a test of one exact spelling.
pub fn header_of(msg: &async_nats::Message, name: &str) -> Option<String> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}
