//! The archive: every image fetched successfully is written to an `object_store` under a
//! directory and a name chosen from its associated information.
//!
//! - **Where:** [`Archive::plan`] renders the directory and file templates (see
//!   `docs/ARCHIVE.md`). For an image with a capture time, the same information and id always
//!   give the same path, so a repeated write replaces the file with the same bytes instead of
//!   adding a copy. Ids are used whole, so two ids never share a path.
//! - **Whole files only:** object_store writes a local file under a staging name and renames it
//!   into place; an S3 PUT is all-or-nothing. No half-written file is visible under its final
//!   name. (Local writes are not fsynced; a power cut can lose a recent copy.)
//! - **Off the latency path:** the write runs in the background; the client gets the image at
//!   once, with the planned path, and hears of a failure afterwards.
//! - **Streamed images** are written part by part as they pass through ([`ArchiveSink`]),
//!   and completed only once verified whole.

use crate::metric;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imgfetch_common::info::ImageInfo;
use imgfetch_common::store::{self, StoreSpec};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use time::OffsetDateTime;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::task::TaskTracker;

pub mod template;

use self::template::{Template, TemplateError};

/// Image bytes waiting to be written, at most, in KiB; beyond this an image is not archived
/// (and the client is told). A write holds its share until it has really finished.
const MAX_PENDING_KIB: usize = 256 * 1024;
/// Archive writes running at once; the rest wait their turn (their bytes count against
/// [`MAX_PENDING_KIB`]). This bounds the blocking threads the archive can occupy: measured at
/// 64 KiB, 2 writers fell behind the pipeline, 16 keep up at the same cost per image as an
/// unbounded number (docs/PERFORMANCE.md).
const WRITERS: usize = 16;
/// Parts of a streamed image's archive copy being written at once, besides the one filling.
const PART_CONCURRENCY: usize = 1;
/// Bytes per part of a streamed image's archive copy: S3's smallest part, and 1 MiB for a
/// directory, which has no such minimum. A copy holds at most two parts of the image.
const S3_PART_BYTES: usize = 5 << 20;
const FILE_PART_BYTES: usize = 1 << 20;
/// Name of the object written and deleted at start to prove the archive can be written.
const PROBE: &str = ".imgfetch-write-probe";

/// Archive settings.
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    /// Where the archive lives.
    pub store: StoreSpec,
    /// Directory template.
    pub dir_template: String,
    /// File template.
    pub file_template: String,
}

impl ArchiveConfig {
    /// An archive at `store` with the default templates.
    pub fn new(store: StoreSpec) -> ArchiveConfig {
        ArchiveConfig {
            store,
            dir_template: template::DEFAULT_DIR.to_owned(),
            file_template: template::DEFAULT_FILE.to_owned(),
        }
    }
}

/// Why the archive could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A template is invalid.
    #[error("archive {0}")]
    Template(#[from] TemplateError),
    /// The store could not be built or read.
    #[error("archive store: {0}")]
    Open(#[from] imgfetch_common::store::OpenError),
    /// The store could not be written.
    #[error("archive store: cannot write: {source}")]
    Store {
        /// The probe written to prove the store takes writes.
        path: Path,
        /// Why.
        source: object_store::Error,
    },
}

/// Why an image's archive copy was not written. Its text is what clients are told (the
/// `imgfetch-archive-error` header, the `archive_failed` frame); the store's own error is kept as
/// the source.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The templates gave no usable path for this image.
    #[error("{0}")]
    Plan(String),
    /// The planned path is not a valid object path.
    #[error("bad archive path {path:?}: {source}")]
    BadPath {
        /// The planned path.
        path: String,
        /// Why the store refuses it.
        source: object_store::path::Error,
    },
    /// Too many bytes wait to be written already.
    #[error("the archive has too many writes pending")]
    Busy,
    /// The store refused to start a multipart upload.
    #[error("cannot start the archive copy: {0}")]
    Start(#[source] object_store::Error),
    /// The store failed a write.
    #[error("archive write failed: {0}")]
    Write(#[source] object_store::Error),
    /// The image ended before any byte was written.
    #[error("no bytes were written")]
    Empty,
    /// The transfer ended before the image was complete.
    #[error("the transfer ended before the image was complete")]
    Incomplete,
    /// The image itself failed; its client hears of that, not of the archive.
    #[error("the image failed: {0}")]
    Discarded(String),
}

/// Why an archive copy cannot be read back (a result replayed by id).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The recorded path is not a valid object path.
    #[error("bad archive path: {0}")]
    BadPath(#[source] object_store::path::Error),
    /// The store failed the read.
    #[error("{0}")]
    Store(#[source] object_store::Error),
}

/// What became of an image's archive copy.
#[derive(Debug)]
pub enum Archived {
    /// No archive is configured.
    Disabled,
    /// Being written at `path`; `written` says how it ended.
    Planned {
        /// The path in the archive.
        path: String,
        /// The write's result.
        written: oneshot::Receiver<Result<(), WriteError>>,
    },
    /// The image will not be archived.
    Failed(WriteError),
}

/// The archive writer, shared by the whole gateway.
#[derive(Debug)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    part_bytes: usize,
    dir: Template,
    file: Template,
    slots: Arc<Semaphore>,
    writers: Arc<Semaphore>,
    writes: TaskTracker,
}

impl Archive {
    /// Parses the templates, builds the store, and proves it can be listed and written.
    pub async fn open(config: &ArchiveConfig) -> Result<Archive, ArchiveError> {
        let dir = Template::parse(&config.dir_template, true)?;
        let file = Template::parse(&config.file_template, false)?;
        let opened = store::build(&config.store, Duration::from_secs(30), true)?;
        store::check_readable(opened.store.as_ref()).await?;
        let probe = Path::from(PROBE);
        opened
            .store
            .put(&probe, PutPayload::from_static(b"imgfetch"))
            .await
            .map_err(|source| ArchiveError::Store {
                path: probe.clone(),
                source,
            })?;
        let _ = opened.store.delete(&probe).await;
        Ok(Archive {
            part_bytes: if opened.root.is_some() {
                FILE_PART_BYTES
            } else {
                S3_PART_BYTES
            },
            store: opened.store,
            dir,
            file,
            slots: Arc::new(Semaphore::new(MAX_PENDING_KIB)),
            writers: Arc::new(Semaphore::new(WRITERS)),
            writes: TaskTracker::new(),
        })
    }

    /// The path an image goes to. `received` stands in for a missing capture time.
    pub fn plan(
        &self,
        id: &str,
        key: &str,
        content_type: &str,
        info: &ImageInfo,
        received: OffsetDateTime,
    ) -> Result<String, String> {
        plan_path(&self.dir, &self.file, id, key, content_type, info, received)
    }

    /// The planned path of an image and its object path, or why it will not be archived.
    fn target(
        &self,
        id: &str,
        key: &str,
        content_type: &str,
        info: &ImageInfo,
    ) -> Result<(String, Path), Archived> {
        let path = self
            .plan(id, key, content_type, info, OffsetDateTime::now_utc())
            .map_err(|why| not_archived(id, WriteError::Plan(why)))?;
        let object = Path::parse(&path).map_err(|source| {
            not_archived(
                id,
                WriteError::BadPath {
                    path: path.clone(),
                    source,
                },
            )
        })?;
        Ok((path, object))
    }

    /// Plans the path and starts the write in the background.
    pub fn store(
        &self,
        id: &str,
        key: &str,
        content_type: &str,
        info: &ImageInfo,
        bytes: Bytes,
    ) -> Archived {
        let (path, object) = match self.target(id, key, content_type, info) {
            Ok(target) => target,
            Err(failed) => return failed,
        };
        let kib = u32::try_from(bytes.len().div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let Ok(slot) = self.slots.clone().try_acquire_many_owned(kib) else {
            return not_archived(id, WriteError::Busy);
        };
        let (tx, written) = oneshot::channel();
        let store = self.store.clone();
        let writers = self.writers.clone();
        let id = id.to_owned();
        let logged_path = path.clone();
        self.writes.spawn(async move {
            let _writer = writers.acquire().await;
            // No timeout here: a dropped local write would go on in its blocking thread, and the
            // slot must stay taken until it really ends. S3 requests time out in the client.
            let result = store
                .put(&object, PutPayload::from_bytes(bytes))
                .await
                .map(|_| ())
                .map_err(WriteError::Write);
            match &result {
                Ok(()) => metrics::counter!(metric::ARCHIVED_TOTAL).increment(1),
                Err(err) => {
                    metrics::counter!(metric::ARCHIVE_FAILURES_TOTAL).increment(1);
                    tracing::warn!(id, path = logged_path, %err, "archive write failed");
                }
            }
            let _ = tx.send(result);
            drop(slot);
        });
        Archived::Planned { path, written }
    }

    /// Plans the path of a streamed image; the returned sink writes it part by part as the
    /// image passes through, and completes it only once the image is verified whole.
    pub fn begin(
        &self,
        id: &str,
        key: &str,
        content_type: &str,
        info: &ImageInfo,
    ) -> (Archived, Option<ArchiveSink>) {
        let (path, object) = match self.target(id, key, content_type, info) {
            Ok(target) => target,
            Err(failed) => return (failed, None),
        };
        let (tx, written) = oneshot::channel();
        let sink = ArchiveSink {
            store: self.store.clone(),
            part_bytes: self.part_bytes,
            object,
            upload: None,
            report: Some(tx),
            id: id.to_owned(),
        };
        (Archived::Planned { path, written }, Some(sink))
    }

    /// Opens the copy at `path` for reading: its size, and its bytes as the store reads them
    /// (a result replayed by id streams from here, never whole in memory).
    pub async fn read(
        &self,
        path: &str,
    ) -> Result<
        (
            u64,
            futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
        ),
        ReadError,
    > {
        let object = Path::parse(path).map_err(ReadError::BadPath)?;
        let found = self.store.get(&object).await.map_err(ReadError::Store)?;
        let size = found.meta.size;
        Ok((size, found.into_stream()))
    }

    /// Waits for writes in progress, e.g. during shutdown.
    pub async fn drain(&self) {
        self.writes.close();
        self.writes.wait().await;
    }
}

/// The path an image goes to under the `dir` and `file` templates: what [`Archive::plan`] does,
/// without a store, so that the path rules can be checked (and fuzzed) on their own.
///
/// `id` must be a valid request id (`imgfetch_common::validate::id`); it is used whole. The
/// result is `/`-separated, with no empty, `.` or `..` segment, no leading `/` and no control
/// character, each segment at most [`template::MAX_SEGMENT_BYTES`] and the whole at most
/// [`template::MAX_PATH_BYTES`] bytes.
pub fn plan_path(
    dir: &Template,
    file: &Template,
    id: &str,
    key: &str,
    content_type: &str,
    info: &ImageInfo,
    received: OffsetDateTime,
) -> Result<String, String> {
    let values = placeholder_values(id, key, content_type, info, received);
    let mut segments = dir.render(&values, &["id"])?;
    segments.extend(file.render(&values, &["id"])?);
    let path = segments.join("/");
    if path.len() > template::MAX_PATH_BYTES {
        return Err(format!(
            "archive path of {} bytes is over the {}-byte limit",
            path.len(),
            template::MAX_PATH_BYTES
        ));
    }
    Ok(path)
}

fn not_archived(id: &str, why: WriteError) -> Archived {
    metrics::counter!(metric::ARCHIVE_FAILURES_TOTAL).increment(1);
    tracing::warn!(id, %why, "image not archived");
    Archived::Failed(why)
}

/// The archive copy of a streamed image, written as the image passes through: a multipart
/// upload, started with the first chunk, completed by [`finish`](ArchiveSink::finish) after the
/// image is verified, and aborted otherwise (dropped unfinished, or failed). An aborted copy
/// leaves nothing under the final name.
#[derive(Debug)]
pub struct ArchiveSink {
    store: Arc<dyn ObjectStore>,
    part_bytes: usize,
    object: Path,
    upload: Option<WriteMultipart>,
    report: Option<oneshot::Sender<Result<(), WriteError>>>,
    id: String,
}

impl ArchiveSink {
    /// Adds the next bytes. An archive failure ends the copy, never the transfer.
    pub async fn write(&mut self, bytes: &Bytes) {
        if self.report.is_none() {
            return;
        }
        if self.upload.is_none() {
            match self.store.put_multipart(&self.object).await {
                Ok(upload) => {
                    self.upload = Some(WriteMultipart::new_with_chunk_size(upload, self.part_bytes))
                }
                Err(e) => return self.fail(WriteError::Start(e)),
            }
        }
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        match upload.wait_for_capacity(PART_CONCURRENCY).await {
            // Copied into the part's own buffer, so the chunk (and the NATS read buffer it is
            // a slice of) is freed now rather than when the part is written.
            Ok(()) => upload.write(bytes),
            Err(e) => self.fail(WriteError::Write(e)),
        }
    }

    /// Completes the copy: the image was received whole and verified.
    pub async fn finish(mut self) {
        let Some(report) = self.report.take() else {
            return;
        };
        let result = match self.upload.take() {
            Some(upload) => upload.finish().await.map(|_| ()).map_err(WriteError::Write),
            None => Err(WriteError::Empty),
        };
        match &result {
            Ok(()) => metrics::counter!(metric::ARCHIVED_TOTAL).increment(1),
            Err(err) => {
                metrics::counter!(metric::ARCHIVE_FAILURES_TOTAL).increment(1);
                tracing::warn!(id = self.id, %err, "archive write failed");
            }
        }
        let _ = report.send(result);
    }

    /// Gives the copy up because the image itself failed: the client hears of the image's
    /// failure, so no separate archive failure is reported.
    pub fn discard(&mut self, why: &str) {
        if self.report.take().is_some() {
            tracing::info!(id = self.id, why, "archive copy discarded");
        }
        self.fail(WriteError::Discarded(why.to_owned()));
    }

    /// Gives the copy up, saying why.
    pub fn fail(&mut self, why: WriteError) {
        if let Some(upload) = self.upload.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = upload.abort().await;
                });
            }
        }
        if let Some(report) = self.report.take() {
            metrics::counter!(metric::ARCHIVE_FAILURES_TOTAL).increment(1);
            tracing::info!(id = self.id, %why, "image not archived");
            let _ = report.send(Err(why));
        }
    }
}

impl Drop for ArchiveSink {
    fn drop(&mut self) {
        self.fail(WriteError::Incomplete);
    }
}

fn placeholder_values(
    id: &str,
    key: &str,
    content_type: &str,
    info: &ImageInfo,
    received: OffsetDateTime,
) -> BTreeMap<&'static str, String> {
    let when = info.captured().unwrap_or(received);
    let location = match (
        &info.location.name,
        info.location.latitude,
        info.location.longitude,
    ) {
        (Some(name), _, _) => name.clone(),
        (None, Some(lat), Some(lon)) => format!(
            "{:.3}{}_{:.3}{}",
            lat.abs(),
            if lat < 0.0 { 'S' } else { 'N' },
            lon.abs(),
            if lon < 0.0 { 'W' } else { 'E' }
        ),
        _ => "unknown-location".to_owned(),
    };
    let file_name = key.rsplit('/').next().unwrap_or(key);
    let key_stem = file_name.rsplit_once('.').map_or(file_name, |(s, _)| s);
    [
        ("network", info.network.clone()),
        ("location", template::segment(&location, "unknown-location")),
        (
            "capture_date",
            format!(
                "{:04}-{:02}-{:02}",
                when.year(),
                u8::from(when.month()),
                when.day()
            ),
        ),
        (
            "capture_time",
            format!(
                "{:04}{:02}{:02}T{:02}{:02}{:02}",
                when.year(),
                u8::from(when.month()),
                when.day(),
                when.hour(),
                when.minute(),
                when.second()
            ),
        ),
        ("year", format!("{:04}", when.year())),
        ("month", format!("{:02}", u8::from(when.month()))),
        ("day", format!("{:02}", when.day())),
        (
            "device",
            info.device
                .clone()
                .unwrap_or_else(|| "unknown-device".into()),
        ),
        ("id", id.to_owned()),
        ("ext", extension(content_type).to_owned()),
        ("key_stem", key_stem.to_owned()),
    ]
    .into()
}

/// File extension for a sniffed media type.
pub fn extension(content_type: &str) -> &'static str {
    match content_type.split(';').next().unwrap_or("").trim() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/tiff" => "tif",
        "image/bmp" => "bmp",
        "image/heif" => "heic",
        "image/avif" => "avif",
        "image/x-icon" | "image/vnd.microsoft.icon" => "ico",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgfetch_common::info::Location;

    fn archive() -> Archive {
        Archive {
            store: Arc::new(object_store::memory::InMemory::new()),
            part_bytes: FILE_PART_BYTES,
            dir: Template::parse(template::DEFAULT_DIR, true).unwrap(),
            file: Template::parse(template::DEFAULT_FILE, false).unwrap(),
            slots: Arc::new(Semaphore::new(1024)),
            writers: Arc::new(Semaphore::new(WRITERS)),
            writes: TaskTracker::new(),
        }
    }

    fn received() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
    }

    #[test]
    fn default_layout_uses_place_and_local_capture_time() {
        let info = ImageInfo {
            network: "harbor".into(),
            location: Location {
                name: Some("青岛市".into()),
                ..Location::default()
            },
            captured_at: Some("2026-11-20T08:15:30+08:00".into()),
            ..ImageInfo::default()
        };
        assert_eq!(
            archive()
                .plan("r1", "a/b.jpg", "image/jpeg", &info, received())
                .unwrap(),
            "harbor/青岛市/2026-11-20/青岛市_20261120T081530_r1.jpg"
        );
    }

    #[test]
    fn missing_information_falls_back() {
        let info = ImageInfo {
            network: "plant".into(),
            ..ImageInfo::default()
        };
        let r = received();
        let date = format!("{:04}-{:02}-{:02}", r.year(), u8::from(r.month()), r.day());
        let path = archive()
            .plan("r2", "x.png", "image/png", &info, r)
            .unwrap();
        assert!(
            path.starts_with(&format!("plant/unknown-location/{date}/unknown-location_")),
            "{path}"
        );
        assert!(path.ends_with("_r2.png"), "{path}");

        let coords = ImageInfo {
            network: "plant".into(),
            location: Location {
                name: None,
                latitude: Some(-33.8688),
                longitude: Some(151.2093),
            },
            ..ImageInfo::default()
        };
        let path = archive()
            .plan("r3", "x.gif", "image/gif", &coords, r)
            .unwrap();
        assert!(path.starts_with("plant/33.869S_151.209E/"), "{path}");
        assert!(path.ends_with(".gif"), "{path}");
    }
}
