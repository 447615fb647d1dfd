//! The load of a fault run: websocket clients (`/v1/ws`) sending requests with known ids at a
//! steady pace for images whose SHA-256 is known, verifying every image's bytes, moving to the
//! next gateway when theirs goes away, and in the end asking again by id
//! (`GET /v1/requests/{id}`) for whatever has no correct image. With a bearer token, both the
//! websocket upgrade and the asking again carry it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use imgfetch_common::frames::ServerFrame;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::ledger::{Ledger, Reask};
use crate::clients::{connect_ws_as, fetch_message, read_frame};
use crate::corpus;

/// The images a run asks for, by key, with their SHA-256.
pub struct Images {
    keys: Vec<String>,
    sha: HashMap<String, [u8; 32]>,
}

impl Images {
    /// Hashes every image of the corpus of `count` images of `size` bytes, as
    /// [`corpus::images`] makes them (the bytes any store of that corpus holds).
    pub fn generated(size: usize, count: usize) -> Images {
        let mut keys = Vec::new();
        let mut sha = HashMap::new();
        for (key, bytes) in corpus::images(size, count) {
            sha.insert(key.clone(), Sha256::digest(bytes).into());
            keys.push(key);
        }
        Images { keys, sha }
    }

    /// The keys, for copying the images into another store.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    fn matches(&self, key: &str, bytes_sha: [u8; 32]) -> bool {
        self.sha.get(key) == Some(&bytes_sha)
    }
}

/// How the clients load the gateways.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The networks asked: client `n` asks network `n` modulo their number.
    pub networks: Vec<String>,
    /// A bearer token for the websocket upgrade, when the gateways have a tokens file.
    pub token: Option<String>,
    /// Websocket clients.
    pub clients: usize,
    /// Each client sends one request per interval.
    pub interval: Duration,
    /// A client skips its turn while it has this many requests unanswered.
    pub max_in_flight: usize,
    /// How long clients wait for the answers still due once the load stops.
    pub drain: Duration,
    /// Prefix of every request id of the run (ids are `<prefix>-<client>-<n>`).
    pub prefix: String,
}

/// Running clients; [`Load::finish`] stops them and waits for the answers due.
pub struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The gateways clients may connect to (`http://127.0.0.1:<port>`); a client whose gateway
/// goes away tries the next one.
pub type Gateways = Arc<Mutex<Vec<String>>>;

impl Load {
    /// Starts `spec.clients` clients, client `n` on gateway `n` modulo their number.
    pub fn start(
        spec: &LoadSpec,
        gateways: Gateways,
        images: Arc<Images>,
        ledger: Arc<Ledger>,
    ) -> Load {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..spec.clients)
            .map(|n| {
                tokio::spawn(client(
                    n,
                    spec.clone(),
                    gateways.clone(),
                    images.clone(),
                    ledger.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops sending and waits until every client has its answers or gave up waiting.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// An image whose binary frames are arriving.
struct Incoming {
    id: String,
    key: String,
    frames_left: u64,
    size: u64,
    got: u64,
    hasher: Sha256,
}

/// One client: connects, sends, reads, and reconnects elsewhere when its socket dies.
async fn client(
    n: usize,
    spec: LoadSpec,
    gateways: Gateways,
    images: Arc<Images>,
    ledger: Arc<Ledger>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut gateway = n;
    let network = &spec.networks[n % spec.networks.len()];
    let mut seq = 0usize;
    let mut drain_until: Option<Instant> = None;
    loop {
        if *stopped.borrow() {
            // Nothing is in flight on a fresh socket: a stopped client has nothing to wait for.
            return;
        }
        let base = {
            let list = gateways.lock().expect("gateway list");
            list[gateway % list.len()].clone()
        };
        let connect = connect_ws_as(&base, spec.token.as_deref());
        let socket = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(socket)) => socket,
            failed => {
                ledger.connect_failed(match failed {
                    Ok(Err(e)) => why_not_connected(&e),
                    _ => "timeout".to_owned(),
                });
                gateway += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (mut sink, mut frames) = socket.split();
        let mut ticker = tokio::time::interval(spec.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight: HashMap<String, ()> = HashMap::new();
        let mut incoming: Option<Incoming> = None;
        loop {
            let stopping = *stopped.borrow();
            if stopping {
                let until = *drain_until.get_or_insert_with(|| Instant::now() + spec.drain);
                if in_flight.is_empty() || Instant::now() >= until {
                    let _ = sink.close().await;
                    return;
                }
            }
            let wake = drain_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = ticker.tick(), if !stopping => {
                    if in_flight.len() >= spec.max_in_flight {
                        continue;
                    }
                    let id = format!("{}-{n}-{seq}", spec.prefix);
                    let key = images.keys[corpus::pick(seq * 7919 + n, images.keys.len())].clone();
                    seq += 1;
                    ledger.with(&id, |e| e.key = key.clone());
                    let frame = fetch_message(Some(id.clone()), network, &key);
                    in_flight.insert(id.clone(), ());
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
                _ = stopped.changed() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
                message = frames.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        on_text(text.as_str(), &images, &ledger, &mut in_flight, &mut incoming);
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        on_binary(&bytes, &images, &ledger, &mut in_flight, &mut incoming);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
        // The socket died. What it had sent and not seen accepted may or may not have been
        // stored; the accepted ones are asked for again by id at the end.
        for id in in_flight.keys() {
            ledger.with(id, |e| {
                if e.accepted.is_none() && e.refused.is_none() {
                    e.refused = Some("connection_lost".to_owned());
                }
            });
        }
        gateway += 1;
    }
}

/// Why a websocket could not be opened, in few words so that failures add up by reason: the
/// `code` of a refused upgrade's JSON body (`unauthorized`), else its HTTP status, else what
/// the connection met (`connection refused`).
fn why_not_connected(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(response) => response
            .body()
            .as_deref()
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", response.status())),
        Error::Io(e) => e.kind().to_string(),
        other => other.to_string(),
    }
}

fn on_text(
    text: &str,
    images: &Images,
    ledger: &Ledger,
    in_flight: &mut HashMap<String, ()>,
    incoming: &mut Option<Incoming>,
) {
    let Ok(frame) = read_frame(text) else {
        return;
    };
    match frame {
        ServerFrame::Accepted { id } => ledger.with(&id, |e| e.accepted = Some(Instant::now())),
        ServerFrame::Image {
            id,
            key,
            size,
            frames,
            archive_error,
            ..
        } => {
            if archive_error.is_some() {
                ledger.with(&id, |e| e.archive_failed = true);
            }
            let image = Incoming {
                id: id.into_owned(),
                key: key.into_owned(),
                frames_left: frames,
                size,
                got: 0,
                hasher: Sha256::new(),
            };
            if image.frames_left == 0 {
                finish_image(image, images, ledger, in_flight);
            } else {
                *incoming = Some(image);
            }
        }
        // An error without an id belongs to no request of this client.
        ServerFrame::Error { id: None, .. } => {}
        ServerFrame::Error {
            id: Some(id), code, ..
        } => {
            let code = code.as_str().to_owned();
            if incoming.as_ref().is_some_and(|i| i.id == id) {
                *incoming = None;
            }
            in_flight.remove(id.as_ref());
            ledger.with(&id, |e| {
                if e.accepted.is_some() {
                    e.terminals.push(Err(code));
                } else {
                    e.refused = Some(code);
                }
            });
        }
        ServerFrame::ArchiveFailed { id, .. } => ledger.with(&id, |e| e.archive_failed = true),
    }
}

fn on_binary(
    bytes: &[u8],
    images: &Images,
    ledger: &Ledger,
    in_flight: &mut HashMap<String, ()>,
    incoming: &mut Option<Incoming>,
) {
    let Some(image) = incoming.as_mut() else {
        return;
    };
    image.hasher.update(bytes);
    image.got += bytes.len() as u64;
    image.frames_left -= 1;
    if image.frames_left == 0 {
        let image = incoming.take().expect("an image in progress");
        finish_image(image, images, ledger, in_flight);
    }
}

fn finish_image(
    image: Incoming,
    images: &Images,
    ledger: &Ledger,
    in_flight: &mut HashMap<String, ()>,
) {
    in_flight.remove(&image.id);
    let whole =
        image.got == image.size && images.matches(&image.key, image.hasher.finalize().into());
    ledger.with(&image.id, |e| {
        let asked = e.key == image.key;
        if whole && asked {
            e.terminals.push(Ok(()));
            e.ok_at.get_or_insert_with(Instant::now);
        } else {
            e.terminals.push(Err("damaged".to_owned()));
        }
    });
}

/// Asks again, by id, for every accepted request without a correct image, and records the
/// answers: each id on the first of `bases` that answers at all (the next one is tried when
/// the HTTP request itself fails), with `Authorization: Bearer <token>` when a token is given.
/// A 404 without `{"code":"unknown_request"}` means the route does not exist.
pub async fn reask(bases: &[String], token: Option<&str>, images: &Images, ledger: &Ledger) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(45))
        .build()
        .expect("HTTP client");
    let ids = ledger.without_image();
    let answers = futures::stream::iter(ids.into_iter().map(|id| {
        let http = http.clone();
        async move {
            let mut answer = Err(Reask::Failed("no gateway to ask".to_owned()));
            for base in bases {
                answer = ask_by_id(&http, &format!("{base}/v1/requests/{id}"), token).await;
                if !matches!(answer, Err(Reask::Failed(_))) {
                    break;
                }
            }
            (id, answer)
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<(String, Result<[u8; 32], Reask>)>>()
    .await;
    for (id, answer) in answers {
        ledger.with(&id, |e| {
            e.reask = Some(match answer {
                Ok(sha) if images.matches(&e.key, sha) => Reask::Image,
                Ok(_) => Reask::Damaged,
                Err(reask) => reask,
            });
        });
    }
}

/// `GET url`: the SHA-256 of the image, or what came instead.
async fn ask_by_id(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<[u8; 32], Reask> {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Reask::Failed(e.to_string()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| Reask::Failed(e.to_string()))?;
    if status.is_success() {
        return Ok(Sha256::digest(&body).into());
    }
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    Err(match code {
        Some(code) => Reask::Error(code),
        None => Reask::Failed(format!("HTTP {status}")),
    })
}
