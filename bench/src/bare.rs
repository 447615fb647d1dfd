//! The bare JetStream ceiling: the hops imgfetch makes, with none of imgfetch's code.
//!
//! A requester publishes a small request with `Nats-Msg-Id` and a callback header to a
//! work-queue stream and waits for the publish ack; a responder pulls it from a durable pull
//! consumer (a persistent pull, async-nats' `stream()`), publishes the image bytes (held in
//! memory) on the callback subject as a core message and acks; the requester receives them.
//! Requester and responder use their own connections, as a gateway and a resolver would.
//!
//! `bare+file` is the archive's ceiling: the same hops, then the requester writes the image
//! into a directory the way a careful program would (a temporary file, then a rename to its
//! final name, on a blocking thread), and only then counts the request done.

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::load::Fetch;

const STREAM: &str = "BENCH_BARE";
const SUBJECT: &str = "bench.bare.req";
const CALLBACK: &str = "Bench-Callback";

/// A running bare responder serving one set of images.
pub struct Bare {
    requester: async_nats::Client,
    responder: JoinHandle<()>,
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.responder.abort();
    }
}

impl Bare {
    /// Sets up the stream and consumer and starts the responder over `images`.
    pub async fn start(nats_url: &str, images: Vec<Bytes>) -> anyhow::Result<Bare> {
        let responder_client = async_nats::connect(nats_url).await?;
        let js = jetstream::new(responder_client.clone());
        let _ = js.delete_stream(STREAM).await;
        let stream = js
            .create_stream(stream::Config {
                name: STREAM.to_owned(),
                subjects: vec![SUBJECT.to_owned()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bare".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 1000,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(128)
            .messages()
            .await?;
        let images = Arc::new(images);
        let responder = tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                let callback = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(CALLBACK))
                    .map(|v| v.as_str().to_owned());
                let index: usize = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if let Some(callback) = callback {
                    let image = images[index % images.len()].clone();
                    let _ = responder_client.publish(callback, image).await;
                }
                let _ = message.ack().await;
            }
        });
        Ok(Bare {
            requester: async_nats::connect(nats_url).await?,
            responder,
        })
    }

    /// `concurrency` requesters, each with its own reply subscription; with `file_dir`, each
    /// image is also written into that directory (`bare+file`) before the request counts.
    pub async fn fetches(
        &self,
        images: usize,
        concurrency: usize,
        file_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Vec<Fetch>> {
        let js = jetstream::new(self.requester.clone());
        let mut fetches = Vec::new();
        for w in 0..concurrency {
            let inbox = format!("bench.bare.reply.{w}");
            let replies = Arc::new(Mutex::new(self.requester.subscribe(inbox.clone()).await?));
            let js = js.clone();
            let file_dir = file_dir.map(std::path::Path::to_path_buf);
            let fetch: Fetch = Box::new(move |n| {
                let js = js.clone();
                let replies = replies.clone();
                let inbox = inbox.clone();
                let file_dir = file_dir.clone();
                async move {
                    let mut replies = replies.lock().await;
                    // By hand: the bare ceiling uses none of imgfetch's messages.
                    let mut headers = HeaderMap::new();
                    headers.insert(CALLBACK, inbox.as_str());
                    headers.insert(
                        NATS_MESSAGE_ID,
                        format!("bare-{}", crate::load::unique()).as_str(),
                    );
                    let index = crate::corpus::pick(n, images);
                    js.publish_with_headers(SUBJECT, headers, index.to_string().into())
                        .await
                        .map_err(|e| e.to_string())?
                        .await
                        .map_err(|e| e.to_string())?;
                    let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
                        .await
                        .map_err(|_| "no reply within 10 s".to_owned())?
                        .ok_or("reply subscription ended")?;
                    if let Some(dir) = file_dir {
                        let bytes = reply.payload.clone();
                        tokio::task::spawn_blocking(move || write_file(&dir, &bytes))
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| format!("writing the file: {e}"))?;
                    }
                    Ok(reply.payload.len())
                }
                .boxed()
            });
            fetches.push(fetch);
        }
        Ok(fetches)
    }
}

/// Writes `bytes` as a new file of `dir`: a temporary file, then a rename to a unique name.
fn write_file(dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = format!("{}.jpg", crate::load::unique());
    let staging = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&staging)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&staging, dir.join(name))
}
