//! The one error type a request can end in: a [`Failure`], with a code clients branch on and a
//! message for people. Every layer of the gateway speaks it, so it depends on nothing else.

use imgfetch_common::protocol::ErrorCode;
use serde::Serialize;

/// A terminal error, with a code the client can branch on and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Failure {
    /// The code.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl Failure {
    /// Builds a failure.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}
