//! Everything between a request message and its settle.
//!
//! - [`worker`]: one network's persistent pull on its shared durable consumer, with credit per
//!   network and slots shared by all.
//! - [`request`]: one message in, one reply out, then ack, nak or term.
//! - [`chunks`]: an image over the inline limit, sent as a chunked transfer at the receiver's
//!   pace.
//! - [`dlq`]: requests that end without an answer: copied to the dead-letter stream, their
//!   requesters told `undeliverable`.
//! - [`ping`]: the liveness answer gateways use to detect "no resolver", given only while the
//!   network can be served.
//! - [`context`]: what those steps share: the handler context, the lease a request holds, the
//!   decision and the settle.
//!
//! Dependencies run one way: `worker` → `request` → `chunks`, `dlq` → `context`.

pub mod chunks;
pub mod context;
pub mod dlq;
pub mod ping;
pub mod request;
pub mod worker;

pub use context::{Context, Decision, Lease, Reply, Settle, Unsettled};
