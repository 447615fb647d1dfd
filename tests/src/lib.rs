//! Test harness for imgfetch: real servers on random ports, torn down on drop.
//!
//! # Layout
//!
//! - [`nats`]: a `nats-server` with JetStream in a temp directory, or a three-node cluster.
//! - [`s3`]: an `s3s-fs` S3 server (it checks SigV4 signatures) in a temp directory.
//! - [`pipeline`]: resolvers and gateways run in this process through their `run` functions,
//!   plus the clients the tests talk through, which write and read frames and messages through
//!   `imgfetch_common`'s types.
//! - [`fake`]: a stand-in resolver that sends exactly what a faulty or hostile resolver would,
//!   for faults and forgery.
//! - [`fuzzing`]: the fuzz targets' bodies and invariants, shared by `fuzz/` and the replay test.
//!
//! Each server's log is written to its temp directory and printed when a test fails, so a
//! failure can be read.

pub mod counted;
pub mod fake;
pub mod fuzzing;
pub mod latency;
pub mod nats;
pub mod pipeline;
pub mod s3;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`. An attempt that
/// does not return by then fails the test too, rather than hanging it.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.max(Duration::from_millis(100)), check()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}: an attempt hung"),
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Awaits `f`, or panics naming `what` after `limit`: for waits that a bug would make endless.
pub async fn within<F: std::future::Future>(what: &str, limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// The committed sample images, by path under `samples/`.
pub fn sample(path: &str) -> Vec<u8> {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("cannot read sample {}: {e}", full.display()))
}

/// Sends log output of the code under test to the test's captured output.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Finds a binary by an override variable, then on `PATH`, or panics with the install hint.
pub(crate) fn find_binary(name: &str, override_var: &str, hint: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` was not found on PATH (or in ${override_var}). Install it: {hint}");
}

/// Writes a gateway tokens file at `path` with one entry: `name` may fetch `networks` with the
/// bearer token `token` (the file holds its SHA-256; the format is in docs/SECURITY.md).
pub fn write_tokens_file(path: &std::path::Path, name: &str, token: &str, networks: &[&str]) {
    let networks = networks
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sha256 = imgfetch_common::digest::sha256_hex(token.as_bytes());
    let entry =
        format!("[[token]]\nname = {name:?}\nsha256 = \"{sha256}\"\nnetworks = [{networks}]\n");
    std::fs::write(path, entry).expect("write the tokens file");
}

/// A free TCP port on 127.0.0.1, for servers that cannot pick their own.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Writes an image of `size` bytes at `path`: a sample JPEG's header (with its EXIF) and then
/// bytes from a seeded generator, written a mebibyte at a time. Returns its SHA-256 (hex).
pub fn write_large_image(path: &std::path::Path, size: usize, seed: u64) -> String {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create image"));
    let mut hasher = imgfetch_common::digest::Hasher::new();
    let jpeg = sample("harbor/quay-east.jpg");
    let head = &jpeg[..jpeg.len().min(size).min(4096)];
    file.write_all(head).expect("write");
    hasher.update(head);
    let mut state = seed | 1;
    let mut written = head.len();
    let mut block = vec![0u8; 1 << 20];
    while written < size {
        let n = block.len().min(size - written);
        for word in block[..n].chunks_mut(8) {
            // xorshift64: cheap, deterministic, and not compressible.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        file.write_all(&block[..n]).expect("write");
        hasher.update(&block[..n]);
        written += n;
    }
    file.flush().expect("flush");
    hasher.finish()
}
