//! A batch: every key fetched with at most `concurrency` in flight, each outcome counted.

use std::time::Instant;

use futures::StreamExt;

use crate::fetch::Fetcher;
use crate::progress::Progress;
use crate::summary::Summary;

/// Fetches `keys` through `fetcher`, `concurrency` at once, and sums up the outcomes.
/// Each saved path is printed on stdout as it is saved. When `stop` completes first (Ctrl-C),
/// the fetches in flight are dropped, which removes their temp files, and the summary says the
/// run was interrupted.
pub async fn fetch_all(
    fetcher: &Fetcher,
    keys: Vec<String>,
    concurrency: usize,
    progress: &Progress,
    stop: impl std::future::Future<Output = ()>,
) -> Summary {
    let start = Instant::now();
    let total = keys.len() as u64;
    let mut outcomes = futures::stream::iter(keys)
        .map(|key| async move {
            let outcome = fetcher.fetch(&key, |n| progress.add_bytes(n)).await;
            progress.finish_one(outcome.is_ok());
            (key, outcome)
        })
        .buffer_unordered(concurrency);
    let mut summary = Summary {
        total,
        ..Summary::default()
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        let (key, outcome) = tokio::select! {
            next = outcomes.next() => match next {
                Some(next) => next,
                None => break,
            },
            () = &mut stop => {
                summary.interrupted = true;
                break;
            }
        };
        match outcome {
            Ok(saved) => {
                progress.suspend(|| println!("{}", saved.path.display()));
                summary.saved += 1;
                summary.bytes += saved.bytes;
            }
            Err(error) => summary.failed.push((key, error)),
        }
    }
    summary.elapsed = start.elapsed();
    summary
}
