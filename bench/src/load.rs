//! Closed- and open-loop load: `concurrency` workers, each doing one request at a time, for a
//! warm-up and then a measured period; optionally paced to a total rate.
//!
//! Every request is checked (status, size); a wrong answer counts as an error, never as done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

/// What one measured period produced.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Requests answered correctly.
    pub done: u64,
    /// Requests that failed or came back wrong.
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Measured period.
    pub elapsed: Duration,
    /// Latency of each correct answer, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Sample {
    /// Correct answers per second.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    /// The slowest correct answer, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map_or(0.0, |v| f64::from(*v) / 1000.0)
    }
}

/// When a run warms up, measures and ends, and (paced) when each request is due.
pub struct Clock {
    started: Instant,
    measure_from: Instant,
    end: Instant,
    interval: Option<Duration>,
    issued: AtomicUsize,
}

impl Clock {
    /// A clock starting now.
    pub fn new(warmup: Duration, measure: Duration, rate: Option<f64>) -> Arc<Clock> {
        let started = Instant::now();
        Arc::new(Clock {
            started,
            measure_from: started + warmup,
            end: started + warmup + measure,
            interval: rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3))),
            issued: AtomicUsize::new(0),
        })
    }

    /// The next request: its number and when it was due, or `None` when the run is over.
    /// Paced runs sleep until the request is due; latency counts from then, so a stall shows.
    async fn next(&self) -> Option<(usize, Instant)> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let due = match self.interval {
            Some(step) => {
                let due = self.started + step.mul_f64(n as f64);
                if due >= self.end {
                    return None;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        (due < self.end).then_some((n, due))
    }

    /// When measuring starts.
    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    /// When the run ends.
    pub fn end(&self) -> Instant {
        self.end
    }
}

/// A number no other request of this process has had, for request ids: JetStream and the
/// gateway both refuse an id seen in the last two minutes.
pub fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One request: given the request number, fetch and return the bytes received.
pub type Fetch = Box<dyn FnMut(usize) -> BoxFuture<'static, Result<usize, String>> + Send>;

/// Runs one worker per `fetch` until the clock ends; `expect` is the size every answer must
/// have.
pub async fn drive(clock: Arc<Clock>, fetches: Vec<Fetch>, expect: usize) -> Sample {
    let mut workers = tokio::task::JoinSet::new();
    for mut fetch in fetches {
        let clock = clock.clone();
        workers.spawn(async move {
            let mut sample = Sample::default();
            while let Some((n, due)) = clock.next().await {
                let result = fetch(n).await;
                let done = Instant::now();
                if due < clock.measure_from || done > clock.end {
                    continue;
                }
                match result {
                    Ok(len) if len == expect => {
                        sample.done += 1;
                        let us = done.duration_since(due).as_micros();
                        sample
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    Ok(len) => {
                        sample.errors += 1;
                        sample
                            .first_error
                            .get_or_insert_with(|| format!("got {len} bytes, expected {expect}"));
                    }
                    Err(e) => {
                        sample.errors += 1;
                        sample.first_error.get_or_insert(e);
                    }
                }
            }
            sample
        });
    }
    let mut total = Sample {
        elapsed: clock.end - clock.measure_from,
        ..Sample::default()
    };
    while let Some(joined) = workers.join_next().await {
        let s = joined.expect("load worker panicked");
        total.done += s.done;
        total.errors += s.errors;
        if total.first_error.is_none() {
            total.first_error = s.first_error;
        }
        total.latencies_us.extend(s.latencies_us);
    }
    total.latencies_us.sort_unstable();
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn counts_right_answers_and_errors_apart() {
        let clock = Clock::new(Duration::ZERO, Duration::from_millis(100), Some(200.0));
        let fetch: Fetch = Box::new(|n| async move { Ok(if n % 2 == 0 { 10 } else { 9 }) }.boxed());
        let sample = drive(clock, vec![fetch], 10).await;
        // How many fit in 100 ms depends on the machine; that they alternate does not.
        assert!(sample.done >= 1 && sample.errors >= 1, "{sample:?}");
        assert!(sample.done.abs_diff(sample.errors) <= 1, "{sample:?}");
        assert_eq!(sample.latencies_us.len() as u64, sample.done);
        assert!(sample.first_error.unwrap().contains("expected 10"));
    }
}
