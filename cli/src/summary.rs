//! The summary printed when a run ends: counts, bytes, time and rate, then every failure with
//! its key, HTTP status, error code and message.

use std::fmt;
use std::time::Duration;

use indicatif::HumanBytes;

use crate::fetch::FetchError;

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Keys asked for.
    pub total: u64,
    /// Images saved.
    pub saved: u64,
    /// Bytes saved.
    pub bytes: u64,
    /// Keys that failed, in the order they finished.
    pub failed: Vec<(String, FetchError)>,
    /// Wall time of the fetching.
    pub elapsed: Duration,
    /// Whether the run was stopped (Ctrl-C) before every key finished.
    pub interrupted: bool,
}

impl Summary {
    /// Whether every key was saved.
    pub fn all_saved(&self) -> bool {
        self.failed.is_empty() && !self.interrupted
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        writeln!(
            f,
            "saved {} of {}, failed {}; {} in {secs:.2} s ({}/s, {:.0} images/s)",
            self.saved,
            self.total,
            self.failed.len(),
            HumanBytes(self.bytes),
            HumanBytes(per_sec(self.bytes as f64) as u64),
            per_sec(self.saved as f64),
        )?;
        if self.interrupted {
            writeln!(
                f,
                "interrupted: the keys still in flight or not started were not saved"
            )?;
        }
        for (key, error) in &self.failed {
            let status = error
                .status()
                .map_or_else(|| "-".to_owned(), |s| s.to_string());
            write!(f, "failed {key:?}: status {status}, {}: ", error.code())?;
            write_chain(f, error)?;
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The gateway's message for a refused key; otherwise the error and its causes, `: `-separated.
fn write_chain(f: &mut fmt::Formatter<'_>, error: &FetchError) -> fmt::Result {
    if let FetchError::Refused { message, .. } = error {
        return write!(f, "{message}");
    }
    write!(f, "{error}")?;
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        write!(f, ": {e}")?;
        cause = e.source();
    }
    Ok(())
}
