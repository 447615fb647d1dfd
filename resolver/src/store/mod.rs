//! One object store per network, built once at start and shared, and the one read the resolver
//! does against it.
//!
//! Reads of a directory store run whole on one [`ReadPool`] thread: `object_store` does local
//! file I/O inline when it is called outside the tokio runtime, and on tokio's blocking pool
//! (one hand-off per step) inside it. One hand-off per request instead of five (confine, open,
//! read, and the sidecar's confine and open) was the largest single saving in the resolver;
//! see `docs/PERFORMANCE.md`. S3 stores are asynchronous and are read on the runtime.

pub mod info;

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::PoisonError;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use imgfetch_common::store::{self, StoreSpec};
use object_store::path::Path;
use object_store::{
    Attribute, GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt,
};

/// What went wrong reading an image; the caller branches on [`StoreError::kind`].
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

/// The kinds of [`StoreError`], one per way the resolver reacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// No object at that key: answer `not_found`.
    #[error("not found")]
    NotFound,
    /// The key is not a valid path for this store: answer `invalid_request`.
    #[error("invalid key")]
    InvalidKey,
    /// The object is larger than the resolver serves: answer `too_large`.
    #[error("too large")]
    TooLarge,
    /// The store refused access (bad credentials, a per-object policy). For an image this is
    /// retried like [`Transient`](StoreErrorKind::Transient), since credentials get fixed; for a
    /// sidecar it means "no sidecar".
    #[error("access denied")]
    Denied,
    /// The store failed in a way that may pass: retry, then answer `store_unavailable`.
    #[error("store unavailable")]
    Transient,
}

impl StoreError {
    /// How the caller should react.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }
}

impl From<object_store::Error> for StoreError {
    fn from(err: object_store::Error) -> Self {
        let kind = match &err {
            object_store::Error::NotFound { .. } => StoreErrorKind::NotFound,
            object_store::Error::InvalidPath { .. } => StoreErrorKind::InvalidKey,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StoreErrorKind::Denied,
            _ => StoreErrorKind::Transient,
        };
        StoreError::new(kind, err.to_string())
    }
}

/// A store could not be built or read at start.
#[derive(Debug, thiserror::Error)]
#[error("network {network:?}: {source}")]
pub struct OpenError {
    network: String,
    #[source]
    source: store::OpenError,
}

impl OpenError {
    /// The network whose store it is.
    pub fn network(&self) -> &str {
        &self.network
    }
}

/// An image and what the store knows about it.
#[derive(Debug)]
pub struct Fetched {
    /// The whole image when [`body`](Fetched::body) is `None`; otherwise its first bytes (at
    /// most [`HEAD_BYTES`]), for sniffing the type and reading EXIF.
    pub bytes: Bytes,
    /// The image's size.
    pub size: u64,
    /// For an image over the inline limit: where the rest is read from, a range at a time.
    pub body: Option<Body>,
    /// Last modification time, RFC 3339.
    pub last_modified: String,
    /// Entity tag, when the store has one.
    pub e_tag: Option<String>,
    /// The object's user metadata, by lower-case name.
    pub attributes: Vec<(String, String)>,
}

/// Bytes read from the start of a large image before it is streamed: EXIF sits in the first
/// 64 KiB of a JPEG, and the media type in the first few bytes of anything.
pub const HEAD_BYTES: u64 = 128 * 1024;

/// The rest of a large image, read by ranges.
///
/// A directory store keeps the file it opened, so a file replaced while it streams is still read
/// whole from the old inode. An S3 store reads each range with `If-Match` on the first read's
/// entity tag, so an object replaced meanwhile fails the read instead of mixing two images.
#[derive(Clone, Debug)]
pub struct Body {
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    File {
        file: Arc<std::fs::File>,
        readers: Arc<ReadPool>,
    },
    Remote {
        store: Arc<dyn ObjectStore>,
        path: Path,
        e_tag: Option<String>,
        size: u64,
    },
}

impl Body {
    /// Reads `range`, which must lie within the image.
    pub async fn read(&self, range: Range<u64>) -> Result<Bytes, StoreError> {
        match &self.source {
            Source::File { file, readers } => {
                let file = file.clone();
                // The buffer is allocated here, on the runtime, where it is also freed once
                // sent: allocated on a reader thread, every reader's allocator would keep some
                // freed chunks (measured: +15 MiB peak at 16 readers; docs/PERFORMANCE.md).
                let len = usize::try_from(range.end - range.start).map_err(|_| changed())?;
                let buf = vec![0u8; len];
                readers
                    .run(move || fill_at(&file, range.start, buf))
                    .await
                    .unwrap_or_else(|| Err(reader_gone()))
            }
            Source::Remote {
                store,
                path,
                e_tag,
                size,
            } => {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: e_tag.clone(),
                    ..GetOptions::default()
                };
                let result = store.get_opts(path, options).await?;
                // Not every S3-compatible server honours If-Match: check the tag and size too.
                if result.meta.size != *size
                    || (e_tag.is_some() && result.meta.e_tag.as_ref() != e_tag.as_ref())
                {
                    return Err(changed());
                }
                let bytes = result.bytes().await?;
                if bytes.len() as u64 != range.end - range.start {
                    return Err(changed());
                }
                Ok(bytes)
            }
        }
    }
}

fn read_at(file: &std::fs::File, range: Range<u64>) -> Result<Bytes, StoreError> {
    let len = usize::try_from(range.end - range.start).map_err(|_| changed())?;
    fill_at(file, range.start, vec![0u8; len])
}

fn fill_at(file: &std::fs::File, offset: u64, mut buf: Vec<u8>) -> Result<Bytes, StoreError> {
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            changed()
        } else {
            StoreError::new(StoreErrorKind::Transient, e.to_string())
        }
    })?;
    Ok(Bytes::from(buf))
}

fn changed() -> StoreError {
    StoreError::new(
        StoreErrorKind::Transient,
        "the image changed while it was being read",
    )
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads outside the tokio runtime that run directory-store reads from start to end.
///
/// `min` threads are always there; when no thread is free for a new job (a slow disk, a hung
/// network mount) another is started, up to [`MAX_READERS`], so one stuck read cannot stop the
/// reads of every network. Once work stops, threads beyond `min` end one at a time, each after
/// waiting [`READER_IDLE`] for a job. A job whose caller has given up (its store timeout passed)
/// is skipped, and a job that panics costs its caller an error, not the thread.
#[derive(Debug)]
pub struct ReadPool {
    jobs: mpsc::Sender<Job>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Threads running.
    threads: Arc<AtomicUsize>,
    /// Threads waiting for a job, less jobs queued for one. A job sent when this is not above
    /// zero has no thread of its own to run it, so a thread is started for it; counting free
    /// threads alone let two jobs sent together both count on the same one, and a job queued
    /// behind a stuck read waited for ever.
    free: Arc<AtomicIsize>,
    min: usize,
}

/// Most reader threads, as tokio's own blocking pool allows.
pub const MAX_READERS: usize = 512;
/// How long a reader thread beyond the minimum waits for work before it ends.
const READER_IDLE: Duration = Duration::from_secs(10);

impl ReadPool {
    /// Starts `min` reader threads; they end when the pool is dropped.
    pub fn new(min: usize) -> Arc<ReadPool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let pool = Arc::new(ReadPool {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            threads: Arc::new(AtomicUsize::new(0)),
            free: Arc::new(AtomicIsize::new(0)),
            min: min.max(1),
        });
        for _ in 0..pool.min {
            pool.start_thread();
        }
        pool
    }

    /// Starts a thread, which counts as free until it ends. It is counted once it exists: counted
    /// before, an idle thread could leave on the strength of one that then failed to start.
    fn start_thread(&self) {
        let n = self.threads.load(Ordering::Acquire);
        let (queue, threads, free, min) = (
            self.queue.clone(),
            self.threads.clone(),
            self.free.clone(),
            self.min,
        );
        let started = std::thread::Builder::new()
            .name(format!("imgfetch-reader-{n}"))
            .spawn(move || loop {
                let job = {
                    let queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
                    if threads.load(Ordering::Acquire) > min {
                        queue.recv_timeout(READER_IDLE)
                    } else {
                        queue
                            .recv()
                            .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                    }
                };
                match job {
                    // Taking a queued job leaves `free` as it is: one thread and one job fewer.
                    Ok(job) => {
                        // A panic ends the job, whose caller then sees the pool's error.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        free.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        threads.fetch_sub(1, Ordering::AcqRel);
                        return;
                    }
                    // Idle too long: leave if no queued job counts on this thread, and the
                    // pool keeps its minimum.
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if free
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                                (f > 0).then(|| f - 1)
                            })
                            .is_ok()
                        {
                            if threads
                                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                                    (t > min).then(|| t - 1)
                                })
                                .is_ok()
                            {
                                return;
                            }
                            free.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                }
            });
        match started {
            Ok(_) => {
                self.threads.fetch_add(1, Ordering::AcqRel);
                self.free.fetch_add(1, Ordering::AcqRel);
            }
            Err(err) => tracing::warn!(%err, "cannot start a reader thread"),
        }
    }

    /// Queues `f` for a reader thread, starting one if none is free for it; the receiver
    /// closes without a value if `f` panics or the pool is gone.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(f());
            }
        });
        // Counted before it is sent, so no thread can take it while it is not yet counted.
        if self.free.fetch_sub(1, Ordering::AcqRel) <= 0
            && self.threads.load(Ordering::Acquire) < MAX_READERS
        {
            self.start_thread();
        }
        // The pool holds the receiver, so the queue is open while `self` is.
        let _ = self.jobs.send(job);
        rx
    }

    /// Runs `f` on a reader thread and waits for its result; `None` if it could not run.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        self.submit(f).await.ok()
    }
}

/// One network's store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// For directory stores, the canonical root no resolved path may leave, symlinks included.
    confine: Option<PathBuf>,
    /// For directory stores, where reads run.
    readers: Option<Arc<ReadPool>>,
}

impl Store {
    /// Builds the store for `spec` and checks that it can be listed. Directory stores read on
    /// `readers`.
    pub async fn open(
        network: &str,
        spec: &StoreSpec,
        timeout: Duration,
        readers: &Arc<ReadPool>,
    ) -> Result<Store, OpenError> {
        let fail = |source: store::OpenError| OpenError {
            network: network.to_owned(),
            source,
        };
        let opened = store::build(spec, timeout, false).map_err(fail)?;
        store::check_readable(opened.store.as_ref())
            .await
            .map_err(fail)?;
        Ok(Store {
            readers: opened.root.is_some().then(|| readers.clone()),
            inner: opened.store,
            confine: opened.root,
        })
    }

    /// Reads `key`, refusing objects over `limits.max` before downloading them. An object over
    /// `limits.inline` is not read whole: see [`Fetched::body`].
    pub async fn read(&self, key: &str, limits: Limits) -> Result<Fetched, StoreError> {
        let Some(readers) = &self.readers else {
            return self.fetch(key, limits).await;
        };
        let this = self.clone();
        let key = key.to_owned();
        readers
            .run(move || this.read_here(&key, limits))
            .await
            .unwrap_or_else(|| Err(reader_gone()))
    }

    /// Reads an image and its sidecar: for a directory in one hand-off, for S3 at once.
    pub async fn read_pair(
        &self,
        key: &str,
        limits: Limits,
        sidecar: &str,
        max_sidecar_bytes: u64,
    ) -> (Result<Fetched, StoreError>, Result<Fetched, StoreError>) {
        let sidecar_limits = Limits {
            max: max_sidecar_bytes,
            inline: max_sidecar_bytes,
        };
        let Some(readers) = &self.readers else {
            return tokio::join!(self.fetch(key, limits), self.fetch(sidecar, sidecar_limits));
        };
        let this = self.clone();
        let (key, sidecar) = (key.to_owned(), sidecar.to_owned());
        readers
            .run(move || {
                (
                    this.read_here(&key, limits),
                    this.read_here(&sidecar, sidecar_limits),
                )
            })
            .await
            .unwrap_or_else(|| (Err(reader_gone()), Err(reader_gone())))
    }

    /// What the store knows of `key` (size, date, etag) without reading it, under the same key
    /// rules and directory confinement as a read.
    pub async fn head(&self, key: &str) -> Result<object_store::ObjectMeta, StoreError> {
        let path = parse(key)?;
        let Some(readers) = &self.readers else {
            return Ok(self.inner.head(&path).await?);
        };
        let this = self.clone();
        let key = key.to_owned();
        readers
            .run(move || {
                if let Some(root) = &this.confine {
                    confine(root, &key)?;
                }
                Ok(futures::executor::block_on(this.inner.head(&path))?)
            })
            .await
            .unwrap_or_else(|| Err(reader_gone()))
    }

    /// A directory-store read on the calling (reader) thread, where `object_store` does its
    /// file I/O inline.
    fn read_here(&self, key: &str, limits: Limits) -> Result<Fetched, StoreError> {
        let path = parse(key)?;
        if let Some(root) = &self.confine {
            confine(root, key)?;
        }
        futures::executor::block_on(self.get(&path, limits))
    }

    /// A read on the runtime, for stores that are asynchronous.
    async fn fetch(&self, key: &str, limits: Limits) -> Result<Fetched, StoreError> {
        self.get(&parse(key)?, limits).await
    }

    /// The `object_store` part of a read.
    async fn get(&self, path: &Path, limits: Limits) -> Result<Fetched, StoreError> {
        let max_bytes = limits.max;
        let result = self.inner.get(path).await?;
        let too_large = |size: u64| {
            StoreError::new(
                StoreErrorKind::TooLarge,
                format!("{size} bytes is over the resolver's {max_bytes}-byte limit"),
            )
        };
        if result.meta.size > max_bytes {
            return Err(too_large(result.meta.size));
        }
        let size = result.meta.size;
        let last_modified = result.meta.last_modified.to_rfc3339();
        let e_tag = result.meta.e_tag.clone();
        // User metadata (S3 `x-amz-meta-*`); the content type is sniffed from the bytes
        // instead of trusted from the store.
        let attributes = result
            .attributes
            .iter()
            .filter_map(|(attr, value)| match attr {
                Attribute::Metadata(name) => {
                    Some((name.to_ascii_lowercase(), value.as_ref().to_owned()))
                }
                _ => None,
            })
            .collect();
        if size > limits.inline {
            let head = 0..size.min(HEAD_BYTES);
            let source = match result.payload {
                // Directory stores are read on a reader thread: the file is already open.
                GetResultPayload::File(file, _) => Source::File {
                    file: Arc::new(file),
                    readers: self.readers.clone().ok_or_else(reader_gone)?,
                },
                // The GET's body is dropped unread; the image is read by ranges instead, each
                // within the client's request timeout however slowly the receiver takes it.
                GetResultPayload::Stream(_) => Source::Remote {
                    store: self.inner.clone(),
                    path: path.clone(),
                    e_tag: e_tag.clone(),
                    size,
                },
            };
            let body = Body { source };
            let bytes = match &body.source {
                Source::File { file, .. } => read_at(file, head)?,
                Source::Remote { .. } => body.read(head).await?,
            };
            return Ok(Fetched {
                bytes,
                size,
                body: Some(body),
                last_modified,
                e_tag,
                attributes,
            });
        }
        let bytes = result.bytes().await?;
        // The object may have grown between the metadata and the body.
        if bytes.len() as u64 > limits.inline {
            return Err(changed());
        }
        Ok(Fetched {
            size: bytes.len() as u64,
            bytes,
            body: None,
            last_modified,
            e_tag,
            attributes,
        })
    }
}

/// Size limits of one read.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Larger objects are refused.
    pub max: u64,
    /// Larger objects are not read whole.
    pub inline: u64,
}

impl Limits {
    /// Objects up to `max` bytes, read whole.
    pub fn whole(max: u64) -> Limits {
        Limits { max, inline: max }
    }
}

fn parse(key: &str) -> Result<Path, StoreError> {
    Path::parse(key).map_err(|e| StoreError::new(StoreErrorKind::InvalidKey, e.to_string()))
}

fn reader_gone() -> StoreError {
    StoreError::new(StoreErrorKind::Transient, "the reader threads have stopped")
}

/// Refuses a key whose real path, symlinks resolved, is outside `root`.
fn confine(root: &std::path::Path, key: &str) -> Result<(), StoreError> {
    match std::fs::canonicalize(root.join(key)) {
        // Opening a FIFO or a device would block or read without end: only files are images.
        Ok(real) if real.starts_with(root) => match std::fs::metadata(&real) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(StoreError::new(
                StoreErrorKind::NotFound,
                format!("no file at {key:?}"),
            )),
            Err(e) => Err(StoreError::new(StoreErrorKind::Transient, e.to_string())),
        },
        Ok(_) => Err(StoreError::new(
            StoreErrorKind::InvalidKey,
            format!("key {key:?} resolves outside the store's directory"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::new(
            StoreErrorKind::NotFound,
            format!("no object at {key:?}"),
        )),
        Err(e) => Err(StoreError::new(StoreErrorKind::Transient, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: Limits = Limits {
        max: 1 << 20,
        inline: 1 << 20,
    };

    /// Awaits `f`, or fails the test naming `what` after 30 s: a pool bug must not hang it.
    /// The bound ends a hang and is not a timing (a job takes microseconds): a thread start
    /// on a loaded 2-core machine has taken over 5 s.
    async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .unwrap_or_else(|_| panic!("{what} within 30 s"))
    }

    #[tokio::test]
    async fn a_stuck_read_does_not_stop_the_others_and_a_panic_costs_no_thread() {
        let pool = ReadPool::new(1);
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        // Sent together, before the only thread has taken either: the second must not count on
        // the thread the first will block.
        let blocked = pool.submit(move || stuck.recv().is_ok());
        let quick = pool.submit(|| 42);
        assert_eq!(
            within("a job sent with a stuck one ran", quick).await,
            Ok(42)
        );
        // The same after the pool has settled with one thread stuck.
        let later = within("a job after a stuck one ran", pool.run(|| 43)).await;
        assert_eq!(later, Some(43));
        let panicked = within(
            "a panicking job ended",
            pool.run(|| -> u8 { panic!("fails") }),
        );
        assert_eq!(panicked.await, None, "a panicking job answers nothing");
        let after = within("the pool still works", pool.run(|| 7)).await;
        assert_eq!(after, Some(7));
        release.send(()).unwrap();
        let freed = within("the stuck job ended when released", blocked).await;
        assert_eq!(freed, Ok(true));
    }

    #[tokio::test]
    async fn jobs_sent_at_once_each_get_a_thread_and_no_more_are_started() {
        let pool = ReadPool::new(2);
        let gate = Arc::new(std::sync::Barrier::new(9));
        // Eight jobs that can only finish together: each needs a thread of its own.
        let jobs: Vec<_> = (0..8)
            .map(|i| {
                let gate = gate.clone();
                pool.submit(move || {
                    gate.wait();
                    i
                })
            })
            .collect();
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait())
        };
        for (i, job) in jobs.into_iter().enumerate() {
            let got = within("every job had a thread", job).await;
            assert_eq!(got.ok(), Some(i));
        }
        opener.join().unwrap();
        assert_eq!(
            pool.threads.load(Ordering::Acquire),
            8,
            "a thread for each job"
        );
        // All are free again (each counts itself once its job has returned): a ninth job needs
        // no new thread.
        within("every thread free again", async {
            while pool.free.load(Ordering::Acquire) != 8 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(within("a ninth job", pool.run(|| 9)).await, Some(9));
        assert_eq!(pool.threads.load(Ordering::Acquire), 8);
    }

    #[tokio::test]
    async fn a_key_naming_a_fifo_is_not_found_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join("pipe.jpg"))
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        std::fs::write(dir.path().join("real.jpg"), b"jpeg").unwrap();
        let spec = StoreSpec::File {
            root: dir.path().to_path_buf(),
        };
        let store = Store::open("t", &spec, Duration::from_secs(5), &ReadPool::new(1))
            .await
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), store.read("pipe.jpg", MIB))
            .await
            .expect("the read returned instead of blocking on the FIFO")
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err}");
        let ok = within("a file read", store.read("real.jpg", MIB))
            .await
            .unwrap();
        assert_eq!(&ok.bytes[..], b"jpeg");
    }
}
