//! The record format: one versioned JSON record per request id, and the order in which one
//! request's writes run on one gateway.

use std::collections::BTreeMap;
use std::sync::Arc;

use imgfetch_common::info::ImageInfo;
use imgfetch_common::protocol::ErrorCode;
use serde::{Deserialize, Serialize};

/// Version of the record format, the `v` of every record.
pub const RECORD_VERSION: u32 = 1;

/// One record of the bucket, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Format version, [`RECORD_VERSION`].
    pub v: u32,
    /// The network the request was for.
    pub network: String,
    /// The image key.
    pub key: String,
    /// The request's `meta`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Name of the token that asked; absent when the gateway takes no tokens. Only the same
    /// identity may read the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Where the request stands.
    #[serde(flatten)]
    pub state: State,
}

/// Where a recorded request stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// On the queue; `owner` waits for its answer until `deadline_ms` (Unix milliseconds).
    Pending {
        /// The gateway instance whose callback the request carries.
        owner: String,
        /// The owner's incarnation: the random id its process drew at start. A gateway that
        /// answers on the owner's liveness subject with another one is a new process under the
        /// same name (a restarted pod), which never held the request. Empty in records of older
        /// gateways, whose answers carry none.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        incarnation: String,
        /// When the owner stops waiting; 0 means overdue (a takeover that could not queue the
        /// request again leaves it so, for the next fetch to retry).
        deadline_ms: u64,
        /// Takeovers so far.
        #[serde(default)]
        attempt: u32,
        /// The owner receives the image (a stream's head, or an inline reply, came): the
        /// deadline no longer applies, only the owner's death allows a takeover, so that a long
        /// stream is not run a second time while it is delivered.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delivering: bool,
    },
    /// Delivered and archived: replayed from the archive.
    Done {
        /// Sniffed media type.
        content_type: String,
        /// Bytes of the image.
        size: u64,
        /// What the store reported.
        metadata: BTreeMap<String, String>,
        /// The associated information.
        info: Box<ImageInfo>,
        /// Path of the archive copy.
        archived_as: String,
        /// SHA-256 of the image, lower-case hex, when the resolver sent it inline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// The attempt (takeovers before it) that produced this outcome.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
    /// Delivered (or begun) without an archive copy: nothing to replay.
    Unarchived {
        /// Why there is no copy.
        reason: String,
        /// The attempt that produced this outcome.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
    /// Ended in an error.
    Failed {
        /// The error code.
        code: ErrorCode,
        /// The message.
        message: String,
        /// The attempt that produced this outcome.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl State {
    /// The attempt this state belongs to.
    pub(crate) fn attempt(&self) -> u32 {
        match self {
            State::Pending { attempt, .. }
            | State::Done { attempt, .. }
            | State::Unarchived { attempt, .. }
            | State::Failed { attempt, .. } => *attempt,
        }
    }

    /// Whether a record in state `self` may be replaced by one in state `new` (see
    /// docs/RELIABILITY.md): never by an older attempt's outcome (a late answer after a
    /// takeover), and within one attempt a terminal state only by `done`: a failure never
    /// replaces the image it followed, and a pending state never replaces an outcome.
    pub fn replaceable_by(&self, new: &State) -> bool {
        use std::cmp::Ordering;
        match self.attempt().cmp(&new.attempt()) {
            Ordering::Greater => false,
            Ordering::Less => true,
            Ordering::Equal => match (self, new) {
                (State::Pending { .. }, _) => true,
                (State::Done { .. }, _) | (_, State::Pending { .. }) => false,
                _ => true,
            },
        }
    }
}

/// What a gateway keeps of one request to record its outcome.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The request id: the record's key.
    pub id: String,
    /// The network.
    pub network: String,
    /// The image key.
    pub key: String,
    /// The request's `meta`.
    pub meta: BTreeMap<String, String>,
    /// The token that asked, if any.
    pub identity: Option<String>,
    /// Takeovers before this run of the request; its outcome is recorded with it.
    pub attempt: u32,
    /// Orders this request's writes on this gateway.
    pub writes: WriteOrder,
}

/// The writes of one request on one gateway, run one after the other in the order they were
/// asked for: a fast answer's record is never overwritten by its own `pending` record. It also
/// remembers the revision and state this gateway last wrote, so that the next write is one
/// compare-and-set on that revision, with no read first; the read comes only when someone
/// else wrote in between.
#[derive(Clone, Debug, Default)]
pub struct WriteOrder {
    tail: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    written: Arc<std::sync::Mutex<Option<Written>>>,
}

/// What this gateway last wrote of one request, and the revision it got.
#[derive(Clone, Debug)]
pub(crate) struct Written {
    pub(crate) revision: u64,
    pub(crate) state: State,
}

impl WriteOrder {
    /// Runs `write` once every write asked for before it has ended. Each write is bounded by
    /// its own timeouts, so the chain is too.
    pub(crate) fn then(&self, write: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut last = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let before = last.take();
        *last = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            write.await;
        }));
    }

    pub(crate) fn last_written(&self) -> Option<Written> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn wrote(&self, revision: u64, state: &State) {
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(Written {
            revision,
            state: state.clone(),
        });
    }
}

impl Origin {
    pub(crate) fn record(&self, state: State) -> Record {
        Record {
            v: RECORD_VERSION,
            network: self.network.clone(),
            key: self.key.clone(),
            meta: self.meta.clone(),
            identity: self.identity.clone(),
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_flat_versioned_json() {
        let origin = Origin {
            id: "r1".into(),
            network: "harbor".into(),
            key: "a.jpg".into(),
            meta: BTreeMap::new(),
            identity: Some("ops".into()),
            attempt: 0,
            writes: WriteOrder::default(),
        };
        let record = origin.record(State::Failed {
            code: ErrorCode::NotFound,
            message: "no such key".into(),
            attempt: 0,
        });
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"v":1,"network":"harbor","key":"a.jpg","identity":"ops",
                "state":"failed","code":"not_found","message":"no such key"})
        );
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        let pending: Record = serde_json::from_str(
            r#"{"v":1,"network":"n","key":"k","state":"pending","owner":"gw1","deadline_ms":5}"#,
        )
        .unwrap();
        assert_eq!(
            pending.state,
            State::Pending {
                owner: "gw1".into(),
                incarnation: String::new(),
                deadline_ms: 5,
                attempt: 0,
                delivering: false,
            }
        );
    }

    #[test]
    fn a_late_outcome_never_replaces_a_newer_one() {
        let failed = |attempt| State::Failed {
            code: ErrorCode::Undeliverable,
            message: "late".into(),
            attempt,
        };
        let unarchived = |attempt| State::Unarchived {
            reason: "none".into(),
            attempt,
        };
        let pending = |attempt, delivering| State::Pending {
            owner: "gw".into(),
            incarnation: "a1".into(),
            deadline_ms: 1,
            attempt,
            delivering,
        };
        // A takeover (attempt 1) is not undone by the old owner's late answer (attempt 0).
        assert!(!pending(1, false).replaceable_by(&failed(0)));
        assert!(!unarchived(1).replaceable_by(&failed(0)));
        assert!(pending(0, false).replaceable_by(&failed(1)));
        // Within one attempt: pending gives way to anything, an outcome never to pending.
        assert!(pending(0, false).replaceable_by(&pending(0, true)));
        assert!(pending(0, true).replaceable_by(&failed(0)));
        assert!(!failed(0).replaceable_by(&pending(0, true)));
        assert!(unarchived(0).replaceable_by(&failed(0)));
    }
}
