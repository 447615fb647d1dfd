//! Requests on their way through JetStream and back.
//!
//! - [`dispatch`]: enqueue with de-duplication, route callbacks to waiters, enforce deadlines.
//! - [`directory`]: which networks exist and are served, learned from NATS alone.
//! - [`sentinel`]: answers hand-published requests that no stream captured.
//! - [`replay`]: a result asked for by id: replayed from its record, waited for, or taken over
//!   from a gateway that is gone and run again.
//!
//! `queue` uses [`results`](crate::results) to record outcomes; `results` never uses `queue`.

pub mod directory;
pub mod dispatch;
pub mod replay;
pub mod sentinel;
