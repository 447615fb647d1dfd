//! The HTTP surface: `GET /v1/images/{network}/{*key}`, `GET /v1/requests/{id}` (a past
//! answer, by id), `GET /v1/networks`, the websocket upgrade on `/v1/ws`, `/livez`, `/readyz`,
//! `/metrics`, and the web viewer's files (`crate::api::viewer`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use imgfetch_common::info::ImageInfo;
use imgfetch_common::protocol::{header as header_names, ErrorCode, FetchRequest};
use imgfetch_common::validate;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::ws;
use crate::archive::Archived;
use crate::auth::Auth;
use crate::failure::Failure;
use crate::image::outcome::{self, Image};
use crate::queue::dispatch::Dispatcher;
use crate::queue::replay;
use crate::results::Results;

/// A streamed or stored body as a body stream.
fn chunks(
    body: outcome::Body,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold(body, |mut body| async move {
        let next = body.next_chunk().await?;
        Some((next.map_err(std::io::Error::other), body))
    })
}

use imgfetch_common::protocol::http_header as http_header_names;
pub use imgfetch_common::protocol::http_header::{
    ARCHIVED_AS, ARCHIVE_ERROR, INFO_TRUNCATED, REQUEST_ID,
};

/// Bytes of associated-information headers an HTTP response carries at most (extras beyond
/// are left out and `Imgfetch-Info-Truncated: true` says so).
pub const MAX_INFO_HEADER_BYTES: usize = 8 * 1024;
/// Initial read buffer of a websocket connection; it grows for a larger frame, up to the
/// client frame limit.
const WS_READ_BUFFER: usize = 4 * 1024;

/// Characters escaped in header values: controls, `%` itself, and everything outside ASCII
/// (HTTP header values are ASCII; UTF-8 place names arrive percent-encoded).
const HEADER_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

fn encoded(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, HEADER_ESCAPES).to_string()
}

fn insert_encoded(headers: &mut HeaderMap, name: &str, value: &str) {
    let encoded = encoded(value);
    if let (Ok(n), Ok(v)) = (
        HeaderName::try_from(name.to_ascii_lowercase()),
        HeaderValue::from_str(&encoded),
    ) {
        headers.insert(n, v);
    }
}

/// The associated information as HTTP headers, by the same names as on NATS.
fn info_headers(info: &ImageInfo) -> Vec<(String, String)> {
    let mut nats = async_nats::HeaderMap::new();
    info.write_headers(&mut nats);
    nats.iter()
        .filter_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .first()
                .map(|v| (name.to_owned(), v.as_str().to_owned()))
        })
        .collect()
}

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The request side.
    pub dispatcher: Arc<Dispatcher>,
    /// Recorded outcomes, by request id.
    pub results: Arc<Results>,
    /// Open-websocket slots.
    pub websockets: Arc<Semaphore>,
    /// Slots for HTTP image requests waiting for their answer.
    pub http_slots: Arc<Semaphore>,
    /// Websocket sessions, which the server stops tracking once upgraded; `run` waits for them
    /// when draining so that what they accepted is still answered.
    pub sessions: tokio_util::task::TaskTracker,
    /// Websocket session limits.
    pub limits: ws::Limits,
    /// Largest client websocket message.
    pub max_client_frame_bytes: usize,
    /// Fired when draining starts: readiness turns false, sessions wind down.
    pub draining: CancellationToken,
    /// NATS connection, for readiness.
    pub client: async_nats::Client,
    /// Metrics renderer.
    pub metrics: Option<PrometheusHandle>,
    /// Readiness of the supervised tasks.
    pub health: imgfetch_common::health::Health,
    /// Who may fetch what.
    pub auth: Auth,
}

/// The image route: the network is one path segment, the key all the rest. axum hands both to
/// the image handler percent-decoded once; the token's check and [`Dispatcher::submit`]'s
/// validation are all that happens to them before they are queued.
pub const IMAGE_ROUTE: &str = "/v1/images/{network}/{*key}";
/// A past answer, by id.
pub const RESULT_ROUTE: &str = "/v1/requests/{id}";
/// The websocket upgrade (its query: [`WsParams`]).
pub const WS_ROUTE: &str = "/v1/ws";

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(IMAGE_ROUTE, get(get_image))
        .route(RESULT_ROUTE, get(get_result))
        .route("/v1/networks", get(list_networks))
        .route(WS_ROUTE, get(websocket))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::api::viewer::routes())
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::map_response(nosniff))
        .with_state(state)
}

/// What the port answers while the gateway starts (NATS not reached yet): `/livez` 200,
/// `/readyz` 503 `connecting to NATS`, anything else 503 `unavailable`.
pub fn starting_router() -> Router {
    let starting = Failure::new(
        ErrorCode::Unavailable,
        "the gateway is starting: it has not reached NATS yet",
    );
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "connecting to NATS") }),
        )
        .fallback(move || {
            let starting = starting.clone();
            async move { error_response(None, &starting) }
        })
        .layer(axum::middleware::map_response(nosniff))
}

/// Every response tells browsers not to guess its type: an image must never be run as a page.
async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The `Content-Type` an image is served with: the sniffed type if it is an image a browser
/// only ever displays, `application/octet-stream` for anything else (an HTML page stored as
/// `x.jpg` must not be rendered, nor an SVG with its scripts).
pub fn served_content_type(sniffed: &str) -> &str {
    let essence = sniffed.split(';').next().unwrap_or_default().trim();
    let is_image = essence
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("image/"));
    if is_image && !essence.eq_ignore_ascii_case("image/svg+xml") {
        sniffed
    } else {
        "application/octet-stream"
    }
}

/// HTTP status of each error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn error_response(id: Option<&str>, failure: &Failure) -> Response {
    let body = serde_json::json!({ "id": id, "code": failure.code, "message": failure.message });
    let mut response = (status_of(failure.code), Json(body)).into_response();
    if let Some(v) = id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    if failure.code == ErrorCode::Unauthorized {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

async fn get_image(
    State(state): State<AppState>,
    Path((network, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // Who asks comes first: a stranger learns nothing, not even whether its id was valid.
    let client = match state.auth.identify(&headers, None) {
        Ok(c) => c,
        Err(f) => return error_response(None, &f),
    };
    let id = match request_id(&headers) {
        Ok(id) => id,
        Err(f) => return error_response(None, &f),
    };
    let span = tracing::error_span!("request", id, network);
    answer_image(state, client, id, network, key)
        .instrument(span)
        .await
}

/// The id of an image request: its `X-Request-Id` if that is a valid id, a fresh one if it has
/// none, and `invalid_request` otherwise.
pub fn request_id(headers: &HeaderMap) -> Result<String, Failure> {
    match headers.get(REQUEST_ID) {
        Some(v) => match v.to_str().ok().filter(|s| validate::id(s).is_ok()) {
            Some(s) => Ok(s.to_owned()),
            None => Err(Failure::new(
                ErrorCode::InvalidRequest,
                "X-Request-Id must be 1 to 128 of A-Z, a-z, 0-9, '-' and '_'",
            )),
        },
        None => Ok(crate::queue::dispatch::new_id()),
    }
}

/// The rest of `GET /v1/images`, within the request's span.
async fn answer_image(
    state: AppState,
    client: crate::auth::Client,
    id: String,
    network: String,
    key: String,
) -> Response {
    let in_flight = match client.begin(&network) {
        Ok(held) => held,
        Err(f) => return error_response(Some(&id), &f),
    };
    let request = FetchRequest {
        id: id.clone(),
        network: Some(network),
        key,
        meta: Default::default(),
    };
    let Ok(_slot) = state.http_slots.clone().try_acquire_owned() else {
        let f = Failure::new(ErrorCode::Unavailable, "too many HTTP requests in flight");
        return error_response(Some(&id), &f);
    };
    let ticket = match state.dispatcher.submit(request, client.identity()).await {
        Ok(t) => t,
        Err(f) => return error_response(Some(&id), &f),
    };
    match ticket.outcome().await {
        Ok(image) => image_response(&id, image, in_flight),
        Err(f) => error_response(Some(&id), &f),
    }
}

/// The response carrying `image`; `held` (the token's in-flight slot) is kept until the body is
/// sent or dropped, not only until the headers are.
fn image_response(id: &str, mut image: Image, held: impl Send + Sync + 'static) -> Response {
    let size = image.body.size();
    let body = std::mem::replace(&mut image.body, outcome::Body::Inline(bytes::Bytes::new()));
    let mut response = match body {
        outcome::Body::Inline(bytes) => Response::new(Body::from(bytes)),
        // Chunks go out as the client takes them. A failure mid-way ends the body short
        // of its Content-Length, which every HTTP client reports as an error; the last
        // chunk is only released once the image is verified.
        body => {
            let body = chunks(body).map(move |chunk| {
                let _held = &held;
                chunk
            });
            let mut response = Response::new(Body::from_stream(body));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            response
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(served_content_type(&image.content_type)) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(REQUEST_ID, v);
    }
    for (name, value) in &image.metadata {
        let name = format!("{}{}", http_header_names::PREFIX, name.replace('_', "-"));
        insert_encoded(h, &name, value);
    }
    // Percent-encoding can make wide-script metadata many times longer; proxies refuse
    // responses with large headers, so extras stop at a budget (websocket clients and
    // the archive still get them all).
    let mut budget = MAX_INFO_HEADER_BYTES;
    for (name, value) in info_headers(&image.info) {
        let cost = name.len() + encoded(&value).len();
        if name.starts_with(header_names::EXTRA_PREFIX) && cost > budget {
            h.insert(
                HeaderName::from_static(INFO_TRUNCATED),
                HeaderValue::from_static("true"),
            );
            continue;
        }
        budget = budget.saturating_sub(cost);
        insert_encoded(h, &name, &value);
    }
    match &image.archived {
        Archived::Planned { path, .. } => insert_encoded(h, ARCHIVED_AS, path),
        Archived::Failed(why) => insert_encoded(h, ARCHIVE_ERROR, &why.to_string()),
        Archived::Disabled => {}
    }
    response
}

/// `GET /v1/requests/{id}`: the answer to an earlier request, from any gateway, as
/// [`get_image`] gave it (or would have): the image from the archive, or the error's status
/// and body. Another token's result is answered exactly like an unknown id.
async fn get_result(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let client = match state.auth.identify(&headers, None) {
        Ok(c) => c,
        Err(f) => return error_response(None, &f),
    };
    if validate::id(&id).is_err() {
        let f = Failure::new(
            ErrorCode::InvalidRequest,
            "a request id is 1 to 128 of A-Z, a-z, 0-9, '-' and '_'",
        );
        return error_response(None, &f);
    }
    let Ok(_slot) = state.http_slots.clone().try_acquire_owned() else {
        let f = Failure::new(ErrorCode::Unavailable, "too many HTTP requests in flight");
        return error_response(Some(&id), &f);
    };
    let until = tokio::time::Instant::now() + state.dispatcher.request_timeout();
    match replay::fetch(&state.results, &id, &client, &state.dispatcher, until).await {
        Ok(replay) => image_response(&id, replay.image, replay.held),
        Err(f) => error_response(Some(&id), &f),
    }
}

/// Query parameters of the websocket upgrade.
#[derive(Debug, serde::Deserialize)]
pub struct WsParams {
    /// The bearer token, for browsers, which cannot set headers on a websocket.
    pub token: Option<String>,
}

async fn websocket(
    State(state): State<AppState>,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Refused before the upgrade: no session, no slot, no buffers for a stranger.
    let client = match state.auth.identify(&headers, params.token.as_deref()) {
        Ok(c) => c,
        Err(f) => return error_response(None, &f),
    };
    let Ok(slot) = state.websockets.clone().try_acquire_owned() else {
        let f = Failure::new(ErrorCode::Unavailable, "too many open websockets");
        return error_response(None, &f);
    };
    if state.draining.is_cancelled() {
        return error_response(
            None,
            &Failure::new(ErrorCode::Unavailable, "the gateway is shutting down"),
        );
    }
    upgrade
        // Client frames are small JSON requests; tungstenite's default 128 KiB read buffer,
        // allocated per connection up front, is what made idle clients expensive.
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(state.max_client_frame_bytes)
        .max_frame_size(state.max_client_frame_bytes)
        .on_upgrade(move |socket| {
            let sessions = state.sessions.clone();
            sessions.track_future(async move {
                let (sink, source) = socket.split();
                ws::session(
                    sink,
                    source,
                    state.dispatcher.clone(),
                    state.results.clone(),
                    client,
                    state.limits,
                    state.draining.clone(),
                )
                .await;
                drop(slot);
            })
        })
}

/// `GET /v1/networks`: the networks the client may fetch from, each with whether a resolver
/// serves it right now. `{"networks":[{"name":"harbor","served":true}]}`, sorted by name.
async fn list_networks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let client = match state.auth.identify(&headers, None) {
        Ok(c) => c,
        Err(f) => return error_response(None, &f),
    };
    match state.dispatcher.directory().list().await {
        Ok(networks) => {
            let networks: Vec<_> = networks
                .into_iter()
                .filter(|(name, _)| client.may_fetch(name))
                .map(|(name, served)| serde_json::json!({ "name": name, "served": served }))
                .collect();
            let mut response = Json(serde_json::json!({ "networks": networks })).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(failure) => error_response(None, &failure),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if state.client.connection_state() != async_nats::connection::State::Connected {
        return (StatusCode::SERVICE_UNAVAILABLE, "NATS is not connected").into_response();
    }
    if !state.dispatcher.directory().stream_reachable().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the stream is not reachable",
        )
            .into_response();
    }
    if let Err(reason) = state.health.check() {
        return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => handle.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}
