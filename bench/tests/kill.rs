//! A resolver killed (SIGKILL) in the middle of streaming a large image, with the real binaries
//! on a real nats-server: the client gets a clean error within the chunk timeout, never a hang
//! and never a whole-looking image, and a resolver started afterwards serves the image whole.

use std::time::{Duration, Instant};

use futures::StreamExt;
use imgfetch_bench::procs::zone_pipeline;
use imgfetch_common::digest::Hasher;
use imgfetch_tests::nats::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_killed_mid_stream_is_a_clean_error_and_the_next_one_serves_the_image() {
    let nats = NatsServer::start();
    let images = tempfile::tempdir().unwrap();
    // Six credit windows: the kill comes after 4 MB, well before the end.
    let size = 24_000_000;
    let sha = imgfetch_tests::write_large_image(&images.path().join("big.jpg"), size, 11);
    let logs = tempfile::tempdir().unwrap();
    let gateway_args = ["--chunk-timeout".to_owned(), "3s".to_owned()];
    let mut pipeline = zone_pipeline(
        &nats.url(),
        images.path(),
        logs.path(),
        false,
        &gateway_args,
        &[],
    )
    .await
    .unwrap();
    let url = format!("{}/v1/images/zone/big.jpg", pipeline.base);

    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut got = 0usize;
    while got < 4_000_000 {
        got += body
            .next()
            .await
            .expect("more body")
            .expect("body ok")
            .len();
    }
    pipeline.resolver.kill();
    let killed = Instant::now();

    // The rest of the body: it must end, and end in an error, short of the image.
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match body.next().await {
                Some(Ok(piece)) => got += piece.len(),
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the body ended instead of hanging");
    assert!(end.is_err(), "the body ended cleanly after {got} bytes");
    assert!(got < size, "all {got} bytes arrived from a killed resolver");
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "took {:?}",
        killed.elapsed()
    );

    // A resolver started afterwards serves the same image whole.
    pipeline.restart_resolver().await.unwrap();
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut hasher = Hasher::new();
    let mut len = 0usize;
    while let Some(piece) = body.next().await {
        let piece = piece.unwrap();
        hasher.update(&piece);
        len += piece.len();
    }
    assert_eq!(len, size);
    assert_eq!(hasher.finish(), sha);
}
