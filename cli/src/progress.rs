//! The progress bar: keys done and failed, bytes and rate. Drawn on stderr only when it is a
//! terminal; hidden otherwise, so logs and CI output stay clean.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts a run's progress and draws it.
pub struct Progress {
    bar: ProgressBar,
    failed: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    /// A bar over `total` keys; drawn when `wanted` and stderr is a terminal.
    pub fn new(total: u64, wanted: bool) -> Progress {
        let target = if wanted && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let style =
            ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} done {msg}")
                .expect("a valid template")
                .progress_chars("=> ");
        bar.set_style(style);
        // The rate in the message moves even while no key finishes.
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress {
            bar,
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Bytes written to disk.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if !self.bar.is_hidden() {
            self.redraw();
        }
    }

    /// One key finished, saved or failed.
    pub fn finish_one(&self, ok: bool) {
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.bar.inc(1);
        self.redraw();
    }

    /// Runs `f` with the bar taken off the screen, for printing beside it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Removes the bar before the summary is printed.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    fn redraw(&self) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.bar.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "· {} failed · {} · {}/s",
            self.failed.load(Ordering::Relaxed),
            HumanBytes(bytes),
            HumanBytes((bytes as f64 / secs) as u64),
        ));
    }
}
