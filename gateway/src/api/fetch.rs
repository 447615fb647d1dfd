//! The `imgfetch-gateway` service (NATS micro protocol) and its `imgfetch.fetch` endpoint: a
//! synchronous request over core NATS, `nats req imgfetch.fetch '{"network":"N","key":"K"}'`,
//! answered with the image's bytes and the headers of a resolver's inline reply.
//!
//! A request goes through the queue like an HTTP one ([`Dispatcher::submit`]), so it is
//! de-duplicated, recorded and archived the same way. Errors are answered in the micro
//! protocol's `Nats-Service-Error` (`<code>: <message>`) and `Nats-Service-Error-Code` (the
//! code's HTTP status) headers, and counted in `nats micro stats`. An image too large for one
//! message is refused with a pointer to HTTP and the websocket, which stream it.
//!
//! The endpoint is a queue subscription: each request goes to one gateway. It shares the HTTP
//! in-flight cap, and answering it is tracked with the websocket sessions, so a draining
//! gateway still answers what it accepted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{self, endpoint::Endpoint};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use imgfetch_common::digest::sha256_hex;
use imgfetch_common::message::{header_safe, FetchAnswer, ImageHead, ReplyHead, Status};
use imgfetch_common::micro::{MicroError, Registration, REGISTER_TIMEOUT};
use imgfetch_common::protocol::{ErrorCode, FetchRequest, FETCH_SUBJECT};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::archive::Archived;
use crate::failure::Failure;
use crate::image::outcome::{Body, Image};
use crate::queue::dispatch::{new_id, Dispatcher};

/// The endpoint's name in `nats micro info` and `stats`.
pub const FETCH_ENDPOINT: &str = "fetch";
/// Longest an answer may wait for the connection.
const RESPOND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the service task stopped before draining.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The service could not register.
    #[error(transparent)]
    Register(#[from] MicroError),
    /// The endpoint could not subscribe.
    #[error("cannot add the {FETCH_SUBJECT} endpoint: {0}")]
    Endpoint(#[source] async_nats::Error),
    /// Adding the endpoint did not finish in time.
    #[error("adding the {FETCH_SUBJECT} endpoint timed out after {REGISTER_TIMEOUT:?}")]
    EndpointTimeout,
    /// The endpoint's subscription ended.
    #[error("the {FETCH_SUBJECT} subscription ended")]
    Ended,
}

/// The body of an `imgfetch.fetch` request: a [`FetchRequest`] whose id may be left out.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchBody {
    #[serde(default)]
    id: Option<String>,
    network: String,
    key: String,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

/// What the service task needs.
#[derive(Clone, Debug)]
pub struct FetchService {
    /// The instance's entry in the service directory.
    pub registration: Registration,
    /// Where requests are queued.
    pub dispatcher: Arc<Dispatcher>,
    /// The HTTP in-flight cap, shared.
    pub slots: Arc<Semaphore>,
    /// Answers in progress, waited for when draining.
    pub answering: TaskTracker,
}

impl FetchService {
    /// Registers the service and answers `imgfetch.fetch` until `draining` fires.
    pub async fn run(
        self,
        client: async_nats::Client,
        draining: CancellationToken,
    ) -> Result<(), FetchError> {
        let registered = self.registration.register(&client).await?;
        let add = registered
            .service()
            .endpoint_builder()
            .name(FETCH_ENDPOINT)
            .add(FETCH_SUBJECT);
        let mut endpoint: Endpoint = tokio::time::timeout(REGISTER_TIMEOUT, add)
            .await
            .map_err(|_| FetchError::EndpointTimeout)?
            .map_err(FetchError::Endpoint)?;
        loop {
            let request = tokio::select! {
                _ = draining.cancelled() => return Ok(()),
                next = endpoint.next() => next.ok_or(FetchError::Ended)?,
            };
            let (dispatcher, slots) = (self.dispatcher.clone(), self.slots.clone());
            self.answering.spawn(async move {
                let (result, headers) = match slots.try_acquire_owned() {
                    Ok(_slot) => answer(fetch(&dispatcher, &request.message.payload).await),
                    Err(_) => answer(Err(Failure::new(
                        ErrorCode::Unavailable,
                        "too many HTTP and NATS requests in flight",
                    ))),
                };
                let respond = request.respond_with_headers(result, headers);
                match tokio::time::timeout(RESPOND_TIMEOUT, respond).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::debug!(%err, "fetch answer failed"),
                    Err(_) => tracing::debug!("fetch answer not sent in time"),
                }
            });
        }
    }
}

/// Reads the body, queues the request and waits for its answer.
async fn fetch(dispatcher: &Dispatcher, body: &[u8]) -> Result<Image, Failure> {
    let body: FetchBody = serde_json::from_slice(body).map_err(|e| {
        Failure::new(
            ErrorCode::InvalidRequest,
            format!("the body must be {{\"network\":\"N\",\"key\":\"K\"}} (optional \"id\", \"meta\"): {e}"),
        )
    })?;
    let request = FetchRequest {
        id: body.id.unwrap_or_else(new_id),
        network: Some(body.network),
        key: body.key,
        meta: body.meta,
    };
    // As over HTTP and the websocket: every line about this request names its id and network.
    let span = tracing::error_span!(
        "request",
        id = %request.id,
        network = request.network.as_deref().unwrap_or_default()
    );
    let outcome = async { dispatcher.submit(request, None).await?.outcome().await };
    let mut image = outcome.instrument(span).await?;
    match std::mem::replace(&mut image.body, Body::Inline(Bytes::new())) {
        Body::Inline(bytes) => {
            image.body = Body::Inline(bytes);
            Ok(image)
        }
        // Dropping a streamed body cancels the stream.
        body => Err(Failure::new(
            ErrorCode::TooLarge,
            format!(
                "the image ({} bytes) is too large for one NATS message; fetch it over HTTP \
                 (GET /v1/images/{{network}}/{{key}}) or the websocket, which stream it",
                body.size()
            ),
        )),
    }
}

/// The answer to send: the image with a resolver's inline headers, or a micro protocol error.
fn answer(outcome: Result<Image, Failure>) -> (Result<Bytes, service::error::Error>, HeaderMap) {
    match outcome {
        Ok(mut image) => {
            let bytes = match std::mem::replace(&mut image.body, Body::Inline(Bytes::new())) {
                Body::Inline(bytes) => bytes,
                _ => Bytes::new(),
            };
            let metadata = |key: &str| image.metadata.get(key).cloned();
            let head = ImageHead {
                key: image.key.clone(),
                content_type: image.content_type.clone(),
                size: metadata("size").and_then(|size| size.parse().ok()),
                last_modified: metadata("last_modified"),
                etag: metadata("etag"),
                sha256: Some(sha256_hex(&bytes)),
                info: image.info,
            };
            let (archived_as, archive_error) = match image.archived {
                Archived::Planned { path, .. } => (Some(path), None),
                Archived::Failed(why) => (None, Some(why.to_string())),
                Archived::Disabled => (None, None),
            };
            let answer = FetchAnswer {
                head: ReplyHead::ok(&image.id, head),
                archived_as,
                archive_error,
            };
            (Ok(bytes), answer.to_headers())
        }
        Err(failure) => {
            let error = service::error::Error {
                status: header_safe(&failure.to_string()),
                code: failure.code.http_status().into(),
            };
            (Err(error), Status::Error(failure.code).to_headers())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_code_and_http_status() {
        let (result, headers) = answer(Err(Failure::new(
            ErrorCode::NotFound,
            "no such key\r\nInjected: yes",
        )));
        let error = result.expect_err("an error");
        assert_eq!(error.code, 404);
        assert_eq!(error.status, "not_found: no such key  Injected: yes");
        assert_eq!(
            FetchAnswer::from_headers(Some(&headers))
                .unwrap()
                .head
                .status,
            Status::Error(ErrorCode::NotFound)
        );
    }
}
