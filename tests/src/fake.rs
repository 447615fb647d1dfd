//! A stand-in resolver speaking the wire protocol (through `imgfetch_common::message`) on the
//! real NATS server, for tests that need to send exactly what a faulty or hostile resolver
//! would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use imgfetch_common::digest::sha256_hex;
use imgfetch_common::info::ImageInfo;
use imgfetch_common::message::{
    Chunk, Chunked, ChunkedEnd, Flow, ImageHead, ReplyHead, RequestHead, Status,
};
use imgfetch_common::protocol::{self, ResolverInfo};
use imgfetch_common::provision::ConsumerSettings;
use tokio_util::sync::CancellationToken;

use crate::pipeline::wait_served;

/// Stands in for a resolver of `network` on the real NATS server, so a test can send exactly
/// the stream it wants: answers pings and takes requests from the network's consumer.
pub async fn fake_resolver(
    nats_url: &str,
    network: &str,
) -> (
    async_nats::Client,
    async_nats::jetstream::consumer::PullConsumer,
) {
    fake_resolver_with(nats_url, network, &ConsumerSettings::default()).await
}

/// [`fake_resolver`], with the network's consumer set up to redeliver by `settings`.
pub async fn fake_resolver_with(
    nats_url: &str,
    network: &str,
    settings: &ConsumerSettings,
) -> (
    async_nats::Client,
    async_nats::jetstream::consumer::PullConsumer,
) {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let consumer = imgfetch_common::provision::ensure_network(
        &js,
        &Default::default(),
        settings,
        network,
        true,
    )
    .await
    .unwrap();
    let mut pings = client
        .subscribe(protocol::ping_subject(network))
        .await
        .unwrap();
    let answerer = client.clone();
    let info = ResolverInfo {
        instance: "fake".into(),
        networks: vec![network.into()],
        max_image_bytes: 1 << 30,
        max_inline_bytes: 900_000,
    };
    tokio::spawn(async move {
        while let Some(ping) = pings.next().await {
            if let Some(reply) = ping.reply {
                let body = serde_json::to_vec(&info).unwrap();
                let _ = answerer.publish(reply, body.into()).await;
            }
        }
    });
    // A flush only writes the subscription out; an answered ping proves the server has it.
    wait_served(&client, network).await;
    (client, consumer)
}

/// Takes the next request off the consumer; its id and callback.
pub async fn take_request(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
) -> (String, String, async_nats::jetstream::Message) {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), batch.next())
        .await
        .expect("a request within 10 s")
        .unwrap()
        .unwrap();
    let head = RequestHead::from_headers(msg.headers.as_ref());
    assert!(head.accept_stream, "the gateway accepts streams");
    (
        head.msg_id.unwrap_or_default(),
        head.callback.unwrap_or_default(),
        msg,
    )
}

/// What an answer says of image `key` of `network`, of media type `content_type`, and no
/// more.
pub fn image_head(network: &str, key: &str, content_type: &str) -> ImageHead {
    ImageHead {
        key: key.to_owned(),
        content_type: content_type.to_owned(),
        info: ImageInfo {
            network: network.to_owned(),
            ..ImageInfo::default()
        },
        ..ImageHead::default()
    }
}

/// Answers request `id` on `callback` with `bytes` as an inline JPEG of `network`/`key`, as a
/// resolver would.
pub async fn answer_image(
    client: &async_nats::Client,
    callback: String,
    id: &str,
    network: &str,
    key: &str,
    bytes: Vec<u8>,
) {
    let headers = ReplyHead::ok(
        id,
        ImageHead {
            sha256: Some(sha256_hex(&bytes)),
            ..image_head(network, key, "image/jpeg")
        },
    )
    .to_headers();
    client
        .publish_with_headers(callback, headers, bytes.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// The value of header `name` of a JetStream message, or "" without it.
pub fn header_of_js(msg: &async_nats::jetstream::Message, name: &str) -> String {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

/// A resolver of `network` that takes every request and never settles it, as one that crashes
/// on each would: its consumer redelivers by `settings` until `max_deliver` runs out. Counts
/// the deliveries it takes; stops pulling when the token is cancelled.
pub async fn stuck_resolver(
    nats_url: &str,
    network: &str,
    settings: &ConsumerSettings,
) -> (Arc<AtomicUsize>, CancellationToken) {
    let (_client, consumer) = fake_resolver_with(nats_url, network, settings).await;
    never_settle(consumer)
}

/// Pulls from `consumer` and never settles what it takes, until the token is cancelled; counts
/// the deliveries.
pub fn never_settle(
    consumer: async_nats::jetstream::consumer::PullConsumer,
) -> (Arc<AtomicUsize>, CancellationToken) {
    let taken = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (count, token) = (taken.clone(), stop.clone());
    tokio::spawn(async move {
        // Always a pull waiting, as a live resolver keeps one, so each redelivery is taken
        // as soon as the ack wait runs out.
        while !token.is_cancelled() {
            let Ok(mut batch) = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_millis(500))
                .messages()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while let Some(Ok(_unsettled)) = batch.next().await {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (taken, stop)
}

/// Sends `image` as a stream of `chunk`-byte chunks on `callback`, honouring credit, with
/// chunk `corrupt` (if any) altered after hashing, and `skip` (if any) left out.
pub async fn send_stream(
    client: &async_nats::Client,
    id: &str,
    callback: &str,
    image: &[u8],
    chunk: usize,
    corrupt: Option<u64>,
    skip: Option<u64>,
) {
    let faults = Faults {
        corrupt,
        skip,
        stop_after: None,
    };
    stream_with(client, id, callback, image, chunk, faults).await
}

/// Starts `image` as a stream like [`send_stream`], but sends only chunks `1..=stop_after` and
/// then nothing more: a resolver stalled part-way.
pub async fn send_stream_part(
    client: &async_nats::Client,
    id: &str,
    callback: &str,
    image: &[u8],
    chunk: usize,
    stop_after: u64,
) {
    let faults = Faults {
        corrupt: None,
        skip: None,
        stop_after: Some(stop_after),
    };
    stream_with(client, id, callback, image, chunk, faults).await
}

/// What a stream sent by [`stream_with`] gets wrong.
struct Faults {
    corrupt: Option<u64>,
    skip: Option<u64>,
    stop_after: Option<u64>,
}

async fn stream_with(
    client: &async_nats::Client,
    id: &str,
    callback: &str,
    image: &[u8],
    chunk: usize,
    Faults {
        corrupt,
        skip,
        stop_after,
    }: Faults,
) {
    let flow = protocol::new_flow_subject(None);
    let mut credits = client.subscribe(flow.clone()).await.unwrap();
    let chunks = image.len().div_ceil(chunk) as u64;
    let mut head = ReplyHead::ok(
        id,
        ImageHead {
            size: Some(image.len() as u64),
            ..image_head("forge", "x.jpg", "image/jpeg")
        },
    );
    head.chunked = Some(Chunked {
        flow: flow.clone(),
        chunk_size: chunk as u64,
        chunks,
    });
    let head = head.to_headers();
    client
        .publish_with_headers(callback.to_owned(), head, Bytes::new())
        .await
        .unwrap();
    let mut credit = 0u64;
    for seq in 1..=chunks {
        if stop_after.is_some_and(|last| seq > last) {
            client.flush().await.unwrap();
            return;
        }
        while credit < seq {
            let Some(Some(m)) = next_within_sub(&mut credits).await else {
                return; // cancelled or nobody granted: the gateway gave up
            };
            match Flow::from_headers(m.headers.as_ref()) {
                Some(Flow::Cancel(_)) => return,
                Some(Flow::Credit(n)) => credit = credit.max(n),
                None => {}
            }
        }
        if Some(seq) == skip {
            continue;
        }
        let start = (seq as usize - 1) * chunk;
        let mut bytes = image[start..(start + chunk).min(image.len())].to_vec();
        if Some(seq) == corrupt {
            bytes[0] ^= 0xff;
        }
        let h = Chunk {
            id: id.to_owned(),
            flow: flow.clone(),
            seq,
        }
        .to_headers();
        client
            .publish_with_headers(callback.to_owned(), h, bytes.into())
            .await
            .unwrap();
    }
    let end = ChunkedEnd {
        id: id.to_owned(),
        flow,
        status: Status::Ok,
        sha256: Some(sha256_hex(image)),
    }
    .to_headers();
    client
        .publish_with_headers(callback.to_owned(), end, Bytes::new())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// The next message on `sub` within 10 s; `None` if none came.
async fn next_within_sub(sub: &mut async_nats::Subscriber) -> Option<Option<async_nats::Message>> {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .ok()
}
