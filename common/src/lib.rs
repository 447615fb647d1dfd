//! Pieces shared by the imgfetch gateway and resolver.
//!
//! Everything that crosses the wire is defined here, once, so the two sides cannot drift apart.
//! `docs/PROTOCOL.md` (NATS subjects, headers, bodies, error codes) and `docs/API.md` (HTTP and
//! websocket frames) are the prose version of this crate.
//!
//! # Layout
//!
//! - [`protocol`]: subject names, header names, the [`protocol::ErrorCode`] enum and the
//!   [`protocol::FetchRequest`] body.
//! - [`connect`]: NATS credentials and TLS, turned into connect options once for both binaries.
//! - [`codec`]: turns request bodies into bytes (msgpack) and back (msgpack or JSON).
//! - [`digest`]: the SHA-256 every image travels with.
//! - [`frames`]: the websocket frames, both ways.
//! - [`info`]: the associated information of an image (place, time, device) as one record.
//! - [`validate`]: the rules for network names, request ids, keys and `meta` maps.
//! - [`message`]: every message that crosses NATS as a type: request and reply heads, chunks,
//!   flow, dead letters, liveness; each writes and reads its own headers.
//! - [`micro`]: service discovery: registering with the NATS micro protocol (`$SRV.*`).
//! - [`provision`]: creates or verifies the JetStream stream and the per-network consumers.
//! - [`store`]: store URLs (`file://`, `s3://`) and building an `object_store` from one.
//! - [`settings`]: the configuration style both binaries share: human durations, the TOML
//!   file, secrets as `*_FILE`.
//! - [`shutdown`]: one cancellation token fired by SIGTERM or SIGINT.
//! - [`health`]: readiness of named components; ready when all are, with the first reason.
//! - [`supervise`]: long-lived tasks restarted with backoff when they end early, counted.
//! - [`telemetry`]: tracing-subscriber setup.
//! - [`prometheus`]: the `/metrics` recorder, with histogram buckets.

pub mod codec;
pub mod connect;
pub mod digest;
pub mod frames;
pub mod health;
pub mod info;
pub mod message;
pub mod micro;
pub mod prometheus;
pub mod protocol;
pub mod provision;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod validate;
