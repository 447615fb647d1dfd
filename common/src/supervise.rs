//! Supervision of long-lived tasks: a task that ends while the process is not shutting down,
//! fails or panics is logged with its name, turns its [`health`](crate::health) component
//! unready, is counted in `<metric>{task}`, and is started again after a backoff (100 ms
//! doubling to 10 s, back to 100 ms once a run lasted a minute). Each run is a fresh future from
//! the task's factory, so a restart subscribes anew.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// First delay before a restart.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);

/// Starts tasks that are restarted when they end early.
#[derive(Clone, Debug)]
pub struct Supervisor {
    health: Health,
    metric: &'static str,
    shutdown: CancellationToken,
    backoff_min: Duration,
}

impl Supervisor {
    /// Tasks report to `health` as `task <name>`, count restarts in the counter `metric`, and
    /// may end once `shutdown` fires.
    pub fn new(health: Health, metric: &'static str, shutdown: CancellationToken) -> Supervisor {
        Supervisor {
            health,
            metric,
            shutdown,
            backoff_min: BACKOFF_MIN,
        }
    }

    /// The same supervisor, for tasks that may end once `shutdown` fires instead.
    pub fn until(&self, shutdown: CancellationToken) -> Supervisor {
        Supervisor {
            shutdown,
            ..self.clone()
        }
    }

    /// The readiness the tasks report to.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Runs `make()` as the task `name`, again and again while it ends before shutdown. The
    /// handle finishes once a run ended after shutdown fired.
    pub fn spawn<F, Fut, E>(&self, name: impl Into<String>, mut make: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let name = name.into();
        let component = self.health.component(format!("task {name}"), "starting");
        let metric = self.metric;
        let shutdown = self.shutdown.clone();
        let mut backoff = self.backoff_min;
        let backoff_min = self.backoff_min;
        tokio::spawn(async move {
            loop {
                component.ready();
                let started = Instant::now();
                let outcome = tokio::spawn(make()).await;
                if shutdown.is_cancelled() {
                    return;
                }
                let why = match outcome {
                    Ok(Ok(())) => "it ended".to_owned(),
                    Ok(Err(err)) => format!("it failed: {err}"),
                    Err(join) if join.is_panic() => format!("it panicked: {join}"),
                    Err(join) => format!("it was cancelled: {join}"),
                };
                if started.elapsed() >= STABLE {
                    backoff = backoff_min;
                }
                tracing::error!(
                    task = name,
                    reason = why,
                    ?backoff,
                    "a supervised task stopped; restarting it"
                );
                component.unready(format!("{why}; restarting"));
                metrics::counter!(metric, "task" => name.clone()).increment(1);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_or_panics_is_restarted_and_unready_meanwhile() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(health.clone(), "test_restarts_total", shutdown.clone());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, _) = tokio::sync::broadcast::channel::<()>(4);
        let handle = supervisor.spawn("flaky", {
            let runs = runs.clone();
            let release = release.clone();
            move || {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                let mut released = release.subscribe();
                async move {
                    match run {
                        0 => panic!("first run panics"),
                        1 => Err("second run fails"),
                        // Later runs last until released, then end as if their subscription had.
                        _ => {
                            let _ = released.recv().await;
                            Ok(())
                        }
                    }
                }
            }
        });
        let wait = |n: usize| {
            let runs = runs.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), async {
                    while runs.load(Ordering::SeqCst) < n {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .expect("the task is restarted");
            }
        };
        let turns = |ready: bool| {
            let health = health.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), health.wait("task flaky", ready))
                    .await
                    .unwrap_or_else(|_| panic!("the task's readiness turns {ready}"));
            }
        };
        // Panic, then failure: two restarts, the second after a doubled backoff.
        wait(3).await;
        turns(true).await;
        assert_eq!(health.check(), Ok(()));
        // The third run ends early: unready until the fourth starts.
        release.send(()).unwrap();
        turns(false).await;
        let reason = health.check().unwrap_err();
        assert!(reason.starts_with("task flaky: it ended"), "{reason}");
        wait(4).await;
        turns(true).await;
        // Ending after shutdown is no failure: no restart.
        shutdown.cancel();
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the supervisor stops with its task")
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }
}
