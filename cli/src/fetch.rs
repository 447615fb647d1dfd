//! One key, fetched and saved: `GET /v1/images/{network}/{key}` with a fresh `X-Request-Id`,
//! the body streamed into a temporary file in the output directory, renamed when whole.
//!
//! | what happens | outcome |
//! | --- | --- |
//! | the key breaks the gateway's key rules | [`FetchError::InvalidKey`], nothing sent |
//! | an error status | [`FetchError::Refused`] with the JSON body's code and message |
//! | no connection, or no headers in time | [`FetchError::Transport`] |
//! | the body fails or stalls part-way | [`FetchError::Body`], the temp file removed |
//! | the body ends short of `Content-Length` (a damaged stream) | [`FetchError::Short`], removed |
//! | the file cannot be written or renamed | [`FetchError::Write`], removed |
//! | the whole body | renamed to its final name: [`Saved`] |

use std::path::{Path, PathBuf};

use futures::StreamExt;
use imgfetch_common::protocol::http_header::{ARCHIVED_AS, REQUEST_ID};
use imgfetch_common::validate;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::names;

/// The most of an error body read, which is a short JSON object.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A key that failed, and why. [`FetchError::status`] and [`FetchError::code`] are what the
/// summary prints.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The key would be refused by the gateway; it is not sent.
    #[error("invalid key")]
    InvalidKey(#[source] validate::Invalid),
    /// The gateway answered with an error.
    #[error("HTTP {status} {code}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error code of the JSON body (`not_found`, ...), or `http` without one.
        code: String,
        /// Its message.
        message: String,
    },
    /// No answer: the connection failed or timed out.
    #[error("request failed")]
    Transport(#[source] reqwest::Error),
    /// The body failed part-way.
    #[error("body failed after {got} bytes")]
    Body {
        /// Bytes received before.
        got: u64,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The body ended short of its `Content-Length`: the gateway cut a damaged stream.
    #[error("body ended after {got} of {expected} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The image could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// The HTTP status, when the gateway answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short code: the gateway's error code, or one naming the client-side failure.
    pub fn code(&self) -> &str {
        match self {
            FetchError::InvalidKey(_) => "invalid_key",
            FetchError::Refused { code, .. } => code,
            FetchError::Transport(_) => "transport",
            FetchError::Body { .. } => "body",
            FetchError::Short { .. } => "short_body",
            FetchError::Write { .. } => "write",
        }
    }
}

/// An image saved whole.
#[derive(Debug)]
pub struct Saved {
    /// Where.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// The gateway's JSON error body.
#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

/// Fetches keys of one network into one directory.
pub struct Fetcher {
    client: reqwest::Client,
    base: reqwest::Url,
    network: String,
    auth: Option<HeaderValue>,
    dir: PathBuf,
    keep_names: bool,
}

impl Fetcher {
    /// A fetcher through `client` from the gateway at `base`.
    pub fn new(
        client: reqwest::Client,
        base: reqwest::Url,
        network: String,
        token: Option<&str>,
        dir: PathBuf,
        keep_names: bool,
    ) -> Result<Fetcher, reqwest::header::InvalidHeaderValue> {
        let auth = token
            .map(|t| {
                let mut value = HeaderValue::from_str(&format!("Bearer {t}"))?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        Ok(Fetcher {
            client,
            base,
            network,
            auth,
            dir,
            keep_names,
        })
    }

    /// `{base}/v1/images/{network}/{key}`, each segment percent-encoded.
    fn url(&self, key: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["v1", "images", self.network.as_str()])
                .extend(key.split('/'));
        }
        url
    }

    /// Fetches `key` and saves it; `progress` is told the size of each piece as it is written.
    pub async fn fetch(&self, key: &str, progress: impl Fn(u64)) -> Result<Saved, FetchError> {
        validate::key(key).map_err(FetchError::InvalidKey)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut request = self.client.get(self.url(key)).header(REQUEST_ID, &id);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request.send().await.map_err(FetchError::Transport)?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let name = match response.headers().get(ARCHIVED_AS) {
            Some(archived) if !self.keep_names => {
                archived.to_str().ok().and_then(names::from_archive)
            }
            _ => None,
        }
        .unwrap_or_else(|| names::from_key(key));
        let expected = response.content_length();
        let temp = TempFile::new(self.dir.join(format!(".imgfetch-{id}.part")));
        let got = write_body(response, temp.path(), progress).await?;
        if let Some(expected) = expected.filter(|&n| n != got) {
            return Err(FetchError::Short { got, expected });
        }
        let path = self.dir.join(name);
        temp.persist(&path).await?;
        Ok(Saved { path, bytes: got })
    }
}

/// Streams the body into `path` piece by piece, so memory stays bounded; returns its length.
async fn write_body(
    response: reqwest::Response,
    path: &Path,
    progress: impl Fn(u64),
) -> Result<u64, FetchError> {
    let write_err = |source| FetchError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::create(path).await.map_err(write_err)?;
    let mut body = response.bytes_stream();
    let mut got = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|source| FetchError::Body { got, source })?;
        file.write_all(&piece).await.map_err(write_err)?;
        got += piece.len() as u64;
        progress(piece.len() as u64);
    }
    file.flush().await.map_err(write_err)?;
    Ok(got)
}

/// The error of a refused request, from its JSON body when it has one.
async fn refused(response: reqwest::Response) -> FetchError {
    let status = response.status().as_u16();
    let mut text = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(Ok(piece)) = body.next().await {
        text.extend_from_slice(&piece);
        if text.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    match serde_json::from_slice::<ErrorBody>(&text) {
        Ok(body) => FetchError::Refused {
            status,
            code: body.code,
            message: body.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&text[..text.len().min(200)]);
            FetchError::Refused {
                status,
                code: "http".into(),
                message: text.trim().to_owned(),
            }
        }
    }
}

/// A temporary file removed on drop unless persisted, so no half image stays behind, even when
/// the run is cancelled.
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile { path: Some(path) }
    }

    fn path(&self) -> &Path {
        self.path.as_deref().expect("a temp file not yet persisted")
    }

    /// Renames it to `to` (replacing what is there).
    async fn persist(mut self, to: &Path) -> Result<(), FetchError> {
        let from = self.path.take().expect("a temp file not yet persisted");
        match tokio::fs::rename(&from, to).await {
            Ok(()) => Ok(()),
            Err(source) => {
                self.path = Some(from);
                Err(FetchError::Write {
                    path: to.to_owned(),
                    source,
                })
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // It may not exist yet (the create failed); nothing else to do then.
            let _ = std::fs::remove_file(path);
        }
    }
}
