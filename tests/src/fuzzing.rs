//! The bodies of the fuzz targets in `fuzz/`, shared with the stable replay of their corpora
//! (`tests/tests/fuzz_corpus.rs`), so that CI checks every committed input exactly as the
//! fuzzer did.
//!
//! Each function takes the raw fuzzer input and panics if the code under test panics or breaks
//! one of its documented invariants. Structured inputs are read from the bytes with
//! [`arbitrary`], the same way `libfuzzer-sys` would. See `docs/FUZZING.md`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use imgfetch_common::codec;
use imgfetch_common::info::{
    clean_text, normalise_time, ImageInfo, FIELD_NAMES, MAX_EXTRAS, MAX_TEXT_CHARS,
};
use imgfetch_common::protocol::{self, header, ErrorCode, FetchRequest};
use imgfetch_common::validate;
use imgfetch_gateway::api::http;
use imgfetch_gateway::api::ws::{self, Asked};
use imgfetch_gateway::archive;
use imgfetch_gateway::archive::template::{self, Template};
use imgfetch_gateway::config::defaults;
use imgfetch_gateway::image::outcome::Failure;
use imgfetch_gateway::image::transfer::Head;
use imgfetch_resolver::store::info::{self, FieldValue, Partial};
use time::OffsetDateTime;

/// A target's body: the raw fuzzer input in, a panic on failure.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory of its corpus) and its body.
pub const TARGETS: [(&str, Check); 10] = [
    ("decode", decode),
    ("validate", validators),
    ("sidecar", sidecar),
    ("fields", fields),
    ("exif", exif),
    ("archive_path", archive_path),
    ("ws_frame", ws_frame),
    ("http_path", http_path),
    ("image_info_headers", image_info_headers),
    ("stream_headers", stream_headers),
];

/// `codec::decode` on any bytes: no panic; a decoded request round-trips through msgpack
/// (`codec::encode`) and through JSON; a request that validates satisfies every rule.
pub fn decode(data: &[u8]) {
    let Ok(req) = codec::decode(data) else {
        return;
    };
    let packed = codec::encode(&req);
    assert_eq!(
        codec::decode(&packed).expect("encoded request decodes"),
        req
    );
    let json = serde_json::to_vec(&req).expect("request serialises as JSON");
    assert_eq!(codec::decode(&json).expect("JSON request decodes"), req);
    let network = req.network.clone().unwrap_or_else(|| "fuzz".to_owned());
    if validate::request(&req, &network).is_ok() {
        check_valid_request(&req, &network);
    }
}

fn check_valid_request(req: &FetchRequest, network: &str) {
    check_token(&req.id, validate::MAX_ID_LEN);
    check_token(network, validate::MAX_NETWORK_LEN);
    check_key(&req.key);
    check_meta(&req.meta);
    let subject = protocol::request_subject(network);
    assert_eq!(protocol::network_of_subject(&subject), Some(network));
}

/// Every validator in `imgfetch_common::validate` on the input as text (and `meta` on a map
/// read from it): whatever passes satisfies the documented rules.
pub fn validators(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    if validate::key(text).is_ok() {
        check_key(text);
    }
    if validate::id(text).is_ok() {
        check_token(text, validate::MAX_ID_LEN);
    }
    if validate::network(text).is_ok() {
        check_token(text, validate::MAX_NETWORK_LEN);
        let subject = protocol::request_subject(text);
        assert_eq!(protocol::network_of_subject(&subject), Some(text));
    }
    if validate::callback(text).is_ok() {
        check_callback(text);
    }
    // Keys are often nested; check each line on its own too, so that short inputs reach deep.
    for line in text.split('\n') {
        if validate::key(line).is_ok() {
            check_key(line);
        }
        if validate::callback(line).is_ok() {
            check_callback(line);
        }
    }
    let u = Unstructured::new(data);
    if let Ok(map) = BTreeMap::<String, String>::arbitrary_take_rest(u) {
        if validate::meta(&map).is_ok() {
            check_meta(&map);
        }
    }
}

/// A key that validates: a non-empty relative path of plain segments, no longer than the
/// limit, with nothing that could climb out of a root or be decoded into something else.
pub fn check_key(key: &str) {
    assert!(!key.is_empty(), "{key:?}");
    assert!(key.len() <= validate::MAX_KEY_LEN, "{key:?}");
    assert!(!key.starts_with('/'), "{key:?}");
    assert!(!key.contains('\\'), "{key:?}");
    assert!(!key.chars().any(char::is_control), "{key:?}");
    assert!(
        !key.as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit()),
        "{key:?}"
    );
    for segment in key.split('/') {
        assert!(!matches!(segment, "" | "." | ".."), "{key:?}");
    }
    // Joined under a root, it stays there.
    let root = std::path::Path::new("/root");
    let joined = root.join(key);
    assert!(joined.starts_with(root), "{key:?}");
    assert!(
        std::path::Path::new(key)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_))),
        "{key:?}"
    );
    // The resolver reads it as an object_store path; it must parse to itself.
    let path = object_store::path::Path::parse(key).expect("a valid key is an object path");
    assert_eq!(path.as_ref(), key);
}

/// A token that validates (network, id, meta name): 1 to `max` of `[A-Za-z0-9_-]`.
pub fn check_token(token: &str, max: usize) {
    assert!(!token.is_empty() && token.len() <= max, "{token:?}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{token:?}"
    );
}

/// A `meta` map that validates.
pub fn check_meta(map: &BTreeMap<String, String>) {
    assert!(map.len() <= validate::MAX_META_ENTRIES);
    for (name, value) in map {
        check_token(name, validate::MAX_META_NAME_LEN);
        assert!(value.len() <= validate::MAX_META_VALUE_LEN, "{value:?}");
        assert!(!value.chars().any(char::is_control), "{value:?}");
    }
}

/// A callback subject that validates: plain, no wildcards or blanks, not a server API subject
/// and not under imgfetch's request or ping subjects.
pub fn check_callback(subject: &str) {
    assert!(!subject.is_empty() && subject.len() <= 512, "{subject:?}");
    assert!(!subject.starts_with('$'), "{subject:?}");
    for token in subject.split('.') {
        assert!(!token.is_empty(), "{subject:?}");
        assert!(token != "*" && token != ">", "{subject:?}");
        assert!(
            !token.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{subject:?}"
        );
    }
    for own in [protocol::REQUEST_PREFIX, protocol::PING_PREFIX] {
        assert!(
            subject != own && !subject.starts_with(&format!("{own}.")),
            "{subject:?}"
        );
    }
}

/// What every source's [`Partial`] promises: coordinates in range and finite, a canonical
/// RFC 3339 time, free text trimmed, without control characters and capped, extras bounded
/// and named by tokens.
pub fn check_partial(p: &Partial) {
    if let Some((lat, lon)) = p.coordinates {
        assert!(lat.is_finite() && lat.abs() <= 90.0, "{lat}");
        assert!(lon.is_finite() && lon.abs() <= 180.0, "{lon}");
    }
    if let Some(t) = &p.captured_at {
        assert_eq!(normalise_time(t).as_deref(), Some(t.as_str()), "{t:?}");
    }
    for text in p.location.iter().chain(&p.device).chain(p.extras.values()) {
        check_clean(text);
    }
    assert!(p.extras.len() <= MAX_EXTRAS);
    for name in p.extras.keys() {
        check_token(name, validate::MAX_NETWORK_LEN);
        assert!(
            !matches!(
                name.as_str(),
                "location" | "latitude" | "longitude" | "captured_at" | "device"
            ),
            "{name:?}"
        );
    }
}

fn check_clean(text: &str) {
    assert!(!text.is_empty(), "{text:?}");
    assert_eq!(text.trim(), text);
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(text.chars().count() <= MAX_TEXT_CHARS, "{text:?}");
}

/// Whether no value of `p` looks like an RFC 2047 encoded word, which a second reading would
/// decode again (so the round trip below does not apply).
fn no_encoded_words(p: &Partial) -> bool {
    !p.location
        .iter()
        .chain(&p.device)
        .chain(&p.captured_at)
        .chain(p.extras.values())
        .any(|v| v.contains("=?"))
}

/// Writes a [`Partial`] back as sidecar fields.
fn as_fields(p: &Partial) -> Vec<(String, FieldValue<'_>)> {
    let mut out = Vec::new();
    if let Some(v) = &p.location {
        out.push(("location".to_owned(), FieldValue::Text(v)));
    }
    if let Some((lat, lon)) = p.coordinates {
        out.push(("latitude".to_owned(), FieldValue::Number(lat)));
        out.push(("longitude".to_owned(), FieldValue::Number(lon)));
    }
    if let Some(v) = &p.captured_at {
        out.push(("captured_at".to_owned(), FieldValue::Text(v)));
    }
    if let Some(v) = &p.device {
        out.push(("device".to_owned(), FieldValue::Text(v)));
    }
    for (k, v) in &p.extras {
        out.push((k.clone(), FieldValue::Text(v)));
    }
    out
}

/// What was read, written back and read again, is read the same.
fn check_round_trip(p: &Partial) {
    if !no_encoded_words(p) {
        return;
    }
    let fields = as_fields(p);
    let again = info::from_fields(fields.iter().map(|(k, v)| (k.as_str(), *v)));
    assert_eq!(&again, p);
}

/// `info::from_sidecar` on any bytes.
pub fn sidecar(data: &[u8]) {
    let Ok(p) = info::from_sidecar(data) else {
        return;
    };
    check_partial(&p);
    check_round_trip(&p);
}

/// A field name: one the reader knows, in some spelling, or anything.
#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Free(String),
}

const KNOWN_NAMES: [&str; 10] = [
    "location",
    "latitude",
    "longitude",
    "captured_at",
    "captured-at",
    "device",
    " Location ",
    "LATITUDE",
    "Captured-At",
    "operator",
];

#[derive(Arbitrary, Debug)]
enum Value {
    Text(String),
    Number(f64),
}

/// `info::from_fields` on structured input: a list of (name, value) pairs.
pub fn fields(data: &[u8]) {
    let u = Unstructured::new(data);
    let Ok(input) = Vec::<(Name, Value)>::arbitrary_take_rest(u) else {
        return;
    };
    let named: Vec<(String, FieldValue<'_>)> = input
        .iter()
        .map(|(name, value)| {
            let name = match name {
                Name::Known(i) => KNOWN_NAMES[usize::from(*i) % KNOWN_NAMES.len()].to_owned(),
                Name::Free(s) => s.clone(),
            };
            let value = match value {
                Value::Text(s) => FieldValue::Text(s),
                Value::Number(n) => FieldValue::Number(*n),
            };
            (name, value)
        })
        .collect();
    let p = info::from_fields(named.iter().map(|(k, v)| (k.as_str(), *v)));
    check_partial(&p);
    check_round_trip(&p);
}

/// `info::from_exif` on any bytes (a JPEG, PNG, TIFF, WebP or HEIF container, or garbage).
pub fn exif(data: &[u8]) {
    let p = info::from_exif(data);
    check_partial(&p);
    assert_eq!(p.location, None);
    assert!(p.extras.is_empty());
    if let Some(c) = p.coordinates {
        assert_ne!(c, (0.0, 0.0));
    }
}

/// One piece of a template, before it is written out as text.
#[derive(Arbitrary, Debug)]
enum Piece {
    Text(String),
    Placeholder(u8),
    Slash,
}

#[derive(Arbitrary, Debug)]
enum TemplateText {
    Raw(String),
    Built(Vec<Piece>),
    Default,
}

impl TemplateText {
    fn text(&self, default: &str) -> String {
        match self {
            TemplateText::Raw(s) => s.clone(),
            TemplateText::Default => default.to_owned(),
            TemplateText::Built(pieces) => pieces
                .iter()
                .map(|p| match p {
                    Piece::Text(s) => s.clone(),
                    Piece::Placeholder(i) => format!(
                        "{{{}}}",
                        template::PLACEHOLDERS[usize::from(*i) % template::PLACEHOLDERS.len()]
                    ),
                    Piece::Slash => "/".to_owned(),
                })
                .collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct ArchiveInput {
    dir: TemplateText,
    file: TemplateText,
    id: String,
    key: String,
    content_type: String,
    network: String,
    location: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    captured_at: Option<String>,
    device: Option<String>,
    received: i64,
    segment: String,
}

/// The archive path builder: `Template::parse`, `Template::render` through
/// `archive::plan_path`, and `template::segment`, on structured input.
///
/// A planned path is relative, has no empty, `.` or `..` segment, no control character, keeps
/// to the segment and path limits, and parses to itself as an object_store path. A sanitised
/// segment is one non-empty segment within the value limits.
pub fn archive_path(data: &[u8]) {
    let u = Unstructured::new(data);
    let Ok(input) = ArchiveInput::arbitrary_take_rest(u) else {
        return;
    };
    check_segment(&input.segment);

    let dir_text = input.dir.text(template::DEFAULT_DIR);
    let file_text = input.file.text(template::DEFAULT_FILE);
    let (Ok(dir), Ok(file)) = (
        Template::parse(&dir_text, true),
        Template::parse(&file_text, false),
    ) else {
        return;
    };
    // Ids are validated long before a path is planned; keep the fuzzer's if it is one.
    let id = if validate::id(&input.id).is_ok() {
        input.id.clone()
    } else {
        let kept: String = input
            .id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(validate::MAX_ID_LEN)
            .collect();
        if kept.is_empty() {
            "r1".to_owned()
        } else {
            kept
        }
    };
    let info = imgfetch_common::info::ImageInfo {
        network: input.network.clone(),
        location: imgfetch_common::info::Location {
            name: input.location.clone(),
            latitude: input.latitude,
            longitude: input.longitude,
        },
        captured_at: input.captured_at.clone(),
        device: input.device.clone(),
        ..Default::default()
    };
    // Any instant time can represent.
    let span = 253_402_300_799_i64 + 377_705_116_800;
    let received =
        OffsetDateTime::from_unix_timestamp(input.received.rem_euclid(span) - 377_705_116_800)
            .expect("in range");
    let Ok(path) = archive::plan_path(
        &dir,
        &file,
        &id,
        &input.key,
        &input.content_type,
        &info,
        received,
    ) else {
        return;
    };
    assert!(!path.is_empty(), "{path:?}");
    assert!(!path.starts_with('/') && !path.ends_with('/'), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    assert!(!path.chars().any(char::is_control), "{path:?}");
    assert!(!path.contains('\\'), "{path:?}");
    assert!(path.len() <= template::MAX_PATH_BYTES, "{path:?}");
    let segments: Vec<&str> = path.split('/').collect();
    assert_eq!(
        segments.len(),
        dir_text.split('/').count() + 1,
        "{dir_text:?} {path:?}"
    );
    for s in &segments {
        assert!(!matches!(*s, "" | "." | ".."), "{path:?}");
        assert!(s.len() <= template::MAX_SEGMENT_BYTES, "{path:?}");
    }
    assert!(
        segments.last().unwrap().contains(&id) || !file_text.contains("{id}"),
        "{path:?}"
    );
    let object = object_store::path::Path::parse(&path).expect("an archive path is an object path");
    assert_eq!(object.as_ref(), path);
}

/// `template::segment`'s promises: one non-empty piece of a segment, nothing that separates
/// or climbs, no control or blank characters, at most 64 characters and 96 bytes.
pub fn check_segment(value: &str) {
    let s = template::segment(value, "unknown");
    assert!(!s.is_empty(), "{value:?}");
    assert!(!matches!(s.as_str(), "." | ".."), "{value:?} -> {s:?}");
    assert!(!s.contains(['/', '\\']), "{value:?} -> {s:?}");
    assert!(
        !s.chars().any(|c| c.is_control() || c.is_whitespace()),
        "{value:?} -> {s:?}"
    );
    assert!(!s.starts_with(['.', '-']), "{value:?} -> {s:?}");
    assert!(
        s.chars().count() <= template::MAX_VALUE_CHARS,
        "{value:?} -> {s:?}"
    );
    assert!(s.len() <= template::MAX_VALUE_BYTES, "{value:?} -> {s:?}");
}

// The gateway's readers of what clients and resolvers send: websocket frames, HTTP paths,
// reply headers (associated information) and the heads of streamed answers.

/// Largest message a websocket client may send, as the gateway configures its sockets
/// (the default of `--max-client-frame-bytes`).
pub const WS_LIMIT: usize = defaults::MAX_CLIENT_FRAME_BYTES;

/// The in-memory socket the `ws_frame` target reads client frames from (and writes any reply to).
struct Wire {
    input: std::io::Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl std::io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl std::io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A websocket message from a client, as the gateway reads it: masked frames read by
/// tungstenite (the version axum uses) with the gateway's limits, then each text message through
/// `ws::read_frame` and, for a fetch, the validation `Dispatcher::submit` applies.
///
/// Input: a flags byte (bit 0: binary, bit 1: sent as two fragments, bit 2: padded with JSON
/// whitespace to `WS_LIMIT - 128 + <next byte>` bytes), then the payload.
///
/// A message over `WS_LIMIT` bytes never reaches the session; one within it arrives whole. A
/// text frame is a fetch or a replay that says exactly what the JSON says, or an
/// `invalid_request` failure; a fetch that passes the validators satisfies every rule (as in
/// `decode`); JSON of the right shape is never refused. A binary frame is `invalid_request`.
pub fn ws_frame(data: &[u8]) {
    use std::io::Read as _;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
    use tokio_tungstenite::tungstenite::{Error, Message};

    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let binary = flags & 1 != 0;
    let fragmented = flags & 2 != 0;
    let mut payload = rest.to_vec();
    if flags & 4 != 0 {
        let (pad, text) = rest.split_at(rest.len().min(1));
        let target = WS_LIMIT - 128 + usize::from(pad.first().copied().unwrap_or(0));
        payload = text.to_vec();
        if payload.len() < target {
            payload.resize(target, b' ');
        }
    }
    let opcode = if binary { Data::Binary } else { Data::Text };
    let parts: Vec<(&[u8], Data, bool)> = if fragmented && payload.len() >= 2 {
        let (a, b) = payload.split_at(payload.len() / 2);
        vec![(a, opcode, false), (b, Data::Continue, true)]
    } else {
        vec![(&payload[..], opcode, true)]
    };
    let mut wire = Vec::new();
    for (part, op, fin) in parts {
        let mut frame = Frame::message(part.to_vec(), OpCode::Data(op), fin);
        // Clients must mask; any mask will do.
        frame.header_mut().mask = Some([0x37, 0xfa, 0x21, 0x3d]);
        frame.format(&mut wire).expect("a frame formats");
    }
    // As `http::websocket` configures the upgrade.
    let config = WebSocketConfig::default()
        .max_message_size(Some(WS_LIMIT))
        .max_frame_size(Some(WS_LIMIT));
    let stream = Wire {
        input: std::io::Cursor::new(wire),
        output: Vec::new(),
    };
    let mut socket = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    let mut messages = Vec::new();
    let error = loop {
        match socket.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => messages.push(m),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    let mut unread = Vec::new();
    let _ = socket.get_mut().input.read_to_end(&mut unread);

    let size = payload.len();
    if size > WS_LIMIT {
        assert!(
            messages.is_empty(),
            "a {size}-byte message passed the {WS_LIMIT}-byte limit"
        );
        assert!(
            matches!(error, Error::Capacity(_) | Error::Utf8(_)),
            "a {size}-byte message ended in {error:?}"
        );
        return;
    }
    if binary {
        assert_eq!(messages.len(), 1, "{size} bytes, {error:?}");
        assert_eq!(messages[0], Message::Binary(payload.into()));
        let refused = ws::binary_frame_refused();
        assert_eq!(refused.code, ErrorCode::InvalidRequest);
        return;
    }
    let Ok(text) = std::str::from_utf8(&payload) else {
        assert!(messages.is_empty(), "invalid UTF-8 delivered as text");
        return;
    };
    assert_eq!(messages.len(), 1, "{size} bytes of text, {error:?}");
    assert_eq!(messages[0], Message::Text(text.into()));
    check_client_frame(text);
}

/// What the session makes of one text frame, checked against the JSON it holds.
pub fn check_client_frame(text: &str) {
    use serde_json::Value;
    let value = serde_json::from_str::<Value>(text).ok();
    let field = |name: &str| value.as_ref().and_then(|v| v.get(name)).cloned();
    match ws::read_frame(text) {
        Ok(Asked::Fetch(req)) => {
            assert!(
                frame_shape(value.as_ref().expect("an accepted frame is JSON")) == Some("fetch"),
                "{text:?}"
            );
            let network = req.network.clone().expect("a fetch names its network");
            assert_eq!(field("network"), Some(Value::String(network.clone())));
            assert_eq!(field("key"), Some(Value::String(req.key.clone())));
            match field("id") {
                Some(Value::String(id)) => assert_eq!(id, req.id),
                // The gateway's own id, which is valid.
                None | Some(Value::Null) => check_token(&req.id, validate::MAX_ID_LEN),
                other => panic!("id {other:?} accepted in {text:?}"),
            }
            let meta: BTreeMap<String, String> = match field("meta") {
                None => BTreeMap::new(),
                Some(m) => serde_json::from_value(m).expect("meta is a map of strings"),
            };
            assert_eq!(meta, req.meta);
            // What `Dispatcher::submit` does next.
            match validate::request(&req, &network) {
                Ok(()) => check_valid_request(&req, &network),
                Err(e) => {
                    assert!(["id", "network", "key", "meta"].contains(&e.field), "{e:?}");
                    assert!(!e.reason.is_empty());
                }
            }
        }
        Ok(Asked::Result { id }) => {
            assert!(
                frame_shape(value.as_ref().expect("an accepted frame is JSON")) == Some("result"),
                "{text:?}"
            );
            assert_eq!(field("id"), Some(Value::String(id.clone())));
            if validate::id(&id).is_ok() {
                check_token(&id, validate::MAX_ID_LEN);
            }
        }
        Err(f) => {
            assert_eq!(f.code, ErrorCode::InvalidRequest, "{f:?}");
            assert!(f.message.starts_with("malformed frame: "), "{f:?}");
            // A frame of the right shape is refused only for what its JSON text says twice
            // (a duplicate field); written once, it is read.
            if let Some(v) = value.as_ref().filter(|v| frame_shape(v).is_some()) {
                let once = serde_json::to_string(v).expect("JSON writes");
                assert!(
                    ws::read_frame(&once).is_ok(),
                    "{once:?} refused: {:?}",
                    ws::read_frame(&once)
                );
            }
        }
    }
}

/// `Some("fetch")` or `Some("result")` for JSON shaped like that client frame. The oracle reads
/// the JSON by hand, apart from `ClientFrame`, which it checks.
fn frame_shape(v: &serde_json::Value) -> Option<&'static str> {
    use serde_json::Value;
    let obj = v.as_object()?;
    let only = |names: &[&str]| obj.keys().all(|k| names.contains(&k.as_str()));
    let string = |name: &str| obj.get(name).is_some_and(Value::is_string);
    match obj.get("type")?.as_str()? {
        "fetch" => {
            let id_ok = matches!(obj.get("id"), None | Some(Value::Null | Value::String(_)));
            let meta_ok = match obj.get("meta") {
                None => true,
                Some(Value::Object(m)) => m.values().all(Value::is_string),
                Some(_) => false,
            };
            (only(&["type", "id", "network", "key", "meta"])
                && id_ok
                && meta_ok
                && string("network")
                && string("key"))
            .then_some("fetch")
        }
        "result" => (only(&["type", "id"]) && string("id")).then_some("result"),
        _ => None,
    }
}

/// What the test router's handlers saw: the extractors of the gateway's handlers, on the
/// gateway's routes.
#[derive(Clone, Debug)]
enum Routed {
    Image {
        network: String,
        key: String,
        id: Result<String, Failure>,
    },
    Result {
        id: String,
    },
    Ws {
        token: Option<String>,
    },
}

/// The gateway's routes (`http::IMAGE_ROUTE`, `RESULT_ROUTE`, `WS_ROUTE`) with the extractors
/// of its handlers, reporting what they extracted instead of acting on it.
fn path_router() -> &'static axum::Router {
    use axum::extract::{Path, Query};
    use axum::routing::get;
    use axum::Extension;
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        axum::Router::new()
            .route(
                http::IMAGE_ROUTE,
                get(
                    |Path((network, key)): Path<(String, String)>,
                     headers: axum::http::HeaderMap| async move {
                        let id = http::request_id(&headers);
                        Extension(Routed::Image { network, key, id })
                    },
                ),
            )
            .route(
                http::RESULT_ROUTE,
                get(|Path(id): Path<String>| async move { Extension(Routed::Result { id }) }),
            )
            .route(
                http::WS_ROUTE,
                get(|Query(params): Query<http::WsParams>| async move {
                    Extension(Routed::Ws {
                        token: params.token,
                    })
                }),
            )
    })
}

/// A path segment percent-decoded once, as axum decodes path parameters; `None` if the result
/// is not UTF-8.
fn decoded(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The `name=value` pairs of a query string, decoded as `application/x-www-form-urlencoded`.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        String::from_utf8_lossy(&percent_encoding::percent_decode_str(&spaced).collect::<Vec<u8>>())
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(n), decode(v))
        })
        .collect()
}

/// A GET request through the gateway's routes and extractors, then the gateway's checks.
///
/// Input: the request target (path and query) up to the first newline, then the value of
/// `X-Request-Id` if there is a newline.
///
/// An image path reaches its handler with the network and key percent-decoded exactly once,
/// whenever the key is non-empty and both decode to UTF-8; a request built from them that passes the
/// validators has a relative key with no empty, `.` or `..` segment and no escape left (so
/// nothing downstream can decode it into a climb). The id is the `X-Request-Id` if valid, a
/// fresh valid one without it, and `invalid_request` otherwise. A result path's id is decoded
/// once. The websocket query's `token` is the decoded value of its one `token` pair.
pub fn http_path(data: &[u8]) {
    use tower::ServiceExt as _;
    let (target, id_header) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    // What hyper would refuse before any routing.
    let Ok(uri) = axum::http::Uri::try_from(target) else {
        return;
    };
    let header = id_header.and_then(|v| axum::http::HeaderValue::from_bytes(v).ok());
    let mut request = axum::http::Request::get(uri.clone());
    if let Some(v) = &header {
        request = request.header(http::REQUEST_ID, v.clone());
    }
    let Ok(request) = request.body(axum::body::Body::empty()) else {
        return;
    };
    let response = futures::executor::block_on(path_router().clone().oneshot(request))
        .expect("routing is infallible");
    let routed = response.extensions().get::<Routed>().cloned();
    let path = uri.path();
    // The router matches an empty network segment (`/v1/images//a`; validation refuses it)
    // but never an empty key.
    let image_parts = path
        .strip_prefix("/v1/images/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(_, k)| !k.is_empty());
    let result_part = path
        .strip_prefix("/v1/requests/")
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let query = form_pairs(uri.query().unwrap_or(""));
    let tokens: Vec<&String> = query
        .iter()
        .filter(|(n, _)| n == "token")
        .map(|(_, v)| v)
        .collect();

    match routed {
        Some(Routed::Image { network, key, id }) => {
            let (raw_network, raw_key) = image_parts.expect("only image paths reach it");
            assert_eq!(
                decoded(raw_network).as_deref(),
                Some(network.as_str()),
                "{path:?}"
            );
            assert_eq!(decoded(raw_key).as_deref(), Some(key.as_str()), "{path:?}");
            let sent = header
                .as_ref()
                .map(|v| v.to_str().ok().filter(|s| validate::id(s).is_ok()));
            let id = match (sent, id) {
                (None, Ok(fresh)) => fresh,
                (Some(Some(sent)), Ok(id)) => {
                    assert_eq!(sent, id);
                    id
                }
                (Some(None), Err(f)) => {
                    assert_eq!(f.code, ErrorCode::InvalidRequest);
                    return;
                }
                (sent, id) => panic!("X-Request-Id {sent:?} gave {id:?}"),
            };
            check_token(&id, validate::MAX_ID_LEN);
            let req = FetchRequest {
                id,
                network: Some(network.clone()),
                key,
                meta: BTreeMap::new(),
            };
            if validate::request(&req, &network).is_ok() {
                check_valid_request(&req, &network);
            }
        }
        Some(Routed::Result { id }) => {
            let raw = result_part.expect("only result paths reach it");
            assert_eq!(decoded(raw).as_deref(), Some(id.as_str()), "{path:?}");
            if validate::id(&id).is_ok() {
                check_token(&id, validate::MAX_ID_LEN);
            }
        }
        Some(Routed::Ws { token }) => {
            assert_eq!(path, "/v1/ws");
            match tokens.as_slice() {
                [] => assert_eq!(token, None, "{uri}"),
                [one] => assert_eq!(token.as_ref(), Some(*one), "{uri}"),
                _ => panic!("{uri}: several tokens, and {token:?} taken"),
            }
        }
        None => {
            let status = response.status();
            if let Some((n, k)) = image_parts {
                assert!(
                    decoded(n).is_none() || decoded(k).is_none(),
                    "{path:?} did not reach the image handler ({status})"
                );
            }
            if let Some(id) = result_part {
                assert!(
                    decoded(id).is_none(),
                    "{path:?} did not reach the result handler ({status})"
                );
            }
            if path == "/v1/ws" {
                assert!(tokens.len() > 1, "{uri} refused ({status})");
            }
        }
    }
}

/// Reads (name, value) pairs from the fuzzer's bytes and builds the NATS header map they make,
/// leaving out what a `HeaderMap` cannot hold (as no message off the wire can).
///
/// Each pair: a name byte `t` (below 0x40: `names[t % len]`; below 0x80:
/// `prefixes[t % len]` followed by a text of the next byte's length; otherwise a text of
/// `t - 0x80` bytes), then a value byte `v` (below 0xc0: a text of `v` bytes; otherwise a
/// number: eight bytes, written in the way `v & 0x3f` picks, see [`value_text`]).
pub fn header_input(
    data: &[u8],
    names: &[&str],
    prefixes: &[&str],
) -> (Vec<(String, String)>, async_nats::HeaderMap) {
    fn text(u: &mut Unstructured<'_>, len: usize) -> String {
        let n = len.min(u.len());
        String::from_utf8_lossy(u.bytes(n).unwrap_or_default()).into_owned()
    }
    let mut u = Unstructured::new(data);
    let mut entries = Vec::new();
    while !u.is_empty() {
        let tag: u8 = u.arbitrary().unwrap_or(0);
        let name = match tag {
            0..=0x3f => names[usize::from(tag) % names.len()].to_owned(),
            0x40..=0x7f => {
                let len: u8 = u.arbitrary().unwrap_or(0);
                let prefix = prefixes[usize::from(tag) % prefixes.len()];
                format!("{prefix}{}", text(&mut u, usize::from(len)))
            }
            _ => text(&mut u, usize::from(tag - 0x80)),
        };
        let vtag: u8 = u.arbitrary().unwrap_or(0);
        let value = if vtag < 0xc0 {
            text(&mut u, usize::from(vtag))
        } else {
            value_text(vtag & 0x3f, u.arbitrary().unwrap_or(0))
        };
        entries.push((name, value));
    }
    // By hand: any header map, which no message type would write, is the input.
    let mut headers = async_nats::HeaderMap::new();
    let mut kept = Vec::new();
    for (name, value) in entries {
        if let (Ok(n), Ok(v)) = (
            name.parse::<async_nats::header::HeaderName>(),
            value.parse::<async_nats::HeaderValue>(),
        ) {
            headers.append(n, v);
            kept.push((name, value));
        }
    }
    (kept, headers)
}

/// A value made from a number, in one of several spellings (`kind`): plain, padded, signed,
/// past `u64::MAX`, fractional, small, a flow subject, degrees near the limits, any `f64`, with
/// a leading zero, an RFC 3339 time (canonical or with a fraction), or a long text (ASCII or
/// not) for the length limits.
pub fn value_text(kind: u8, n: u64) -> String {
    match kind % 14 {
        0 => n.to_string(),
        1 => format!(" {n}\t"),
        2 => format!("+{n}"),
        3 => format!("-{n}"),
        4 => (u128::from(n) + u128::from(u64::MAX) + 1).to_string(),
        5 => format!("{n}.5"),
        6 => (n % 1000).to_string(),
        7 => format!("{}.{n:x}", protocol::FLOW_PREFIX),
        8 => (n as f64 / u64::MAX as f64 * 400.0 - 200.0).to_string(),
        9 => f64::from_bits(n).to_string(),
        10 => format!("0{n}"),
        12 => format!(" {} ", "x".repeat((n % 600) as usize)),
        13 => "é".repeat((n % 600) as usize),
        _ => {
            let span = 253_402_300_799_i64 + 377_705_116_800;
            let secs = (n >> 8) as i64 % span - 377_705_116_800;
            let offset = time::UtcOffset::from_whole_seconds(((n & 0xff) as i32 - 128) * 600)
                .unwrap_or(time::UtcOffset::UTC);
            let utc = OffsetDateTime::from_unix_timestamp(secs).expect("in range");
            // Near the ends of the range an offset can leave it; keep UTC there.
            let t = utc.checked_to_offset(offset).unwrap_or(utc);
            let t = if n & 1 == 1 {
                t.replace_nanosecond((n % 1_000_000_000) as u32)
                    .unwrap_or(t)
            } else {
                t
            };
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        }
    }
}

/// Names of the information headers, in their own and in other spellings.
const INFO_NAMES: [&str; 16] = [
    header::NETWORK,
    header::LOCATION,
    header::LATITUDE,
    header::LONGITUDE,
    header::CAPTURED_AT,
    header::DEVICE,
    "Imgfetch-Extra-operator",
    "Imgfetch-Extra-location",
    "Imgfetch-Meta-ticket",
    "imgfetch-location",
    "IMGFETCH-LATITUDE",
    "Imgfetch-captured-at",
    "imgfetch-device",
    header::STATUS,
    header::CONTENT_TYPE,
    "Imgfetch-Extra-",
];

const INFO_PREFIXES: [&str; 7] = [
    header::EXTRA_PREFIX,
    header::META_PREFIX,
    "imgfetch-extra-",
    "IMGFETCH-META-",
    "Imgfetch-Extra",
    header::LOCATION,
    "Imgfetch-Extra--",
];

/// The first value of the header named exactly `name`.
fn first<'a>(entries: &'a [(String, String)], name: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Degrees as the information headers are read: a finite number within `±limit`.
fn degrees(value: Option<&str>, limit: f64) -> Option<f64> {
    let v: f64 = value?.trim().parse().ok()?;
    (v.is_finite() && v.abs() <= limit).then_some(v)
}

/// `ImageInfo::from_headers` on any NATS header map (names from the protocol in several
/// spellings, or anything).
///
/// The record holds what the headers say and nothing else: coordinates finite and within
/// ±90/±180; `captured_at` canonical RFC 3339; location, device and extras by the `Partial`
/// rules (trimmed, no control character, at most 256 characters, at most 32 extras named by
/// tokens that are not field names); `meta` entries as sent. Written back with `write_headers`
/// and read again, it is the same record.
pub fn image_info_headers(data: &[u8]) {
    let (entries, headers) = header_input(data, &INFO_NAMES, &INFO_PREFIXES);
    let info = ImageInfo::from_headers(&headers);
    // The oracle reads the headers by name, apart from the code under test.
    let get = |name: &str| first(&entries, name);

    assert_eq!(info.network, get(header::NETWORK).unwrap_or_default());
    assert_eq!(info.location.latitude, degrees(get(header::LATITUDE), 90.0));
    assert_eq!(
        info.location.longitude,
        degrees(get(header::LONGITUDE), 180.0)
    );
    if let Some(lat) = info.location.latitude {
        assert!(lat.is_finite() && lat.abs() <= 90.0, "{lat}");
    }
    if let Some(lon) = info.location.longitude {
        assert!(lon.is_finite() && lon.abs() <= 180.0, "{lon}");
    }
    assert_eq!(
        info.captured_at,
        get(header::CAPTURED_AT).and_then(normalise_time)
    );
    if let Some(t) = &info.captured_at {
        assert_eq!(normalise_time(t).as_deref(), Some(t.as_str()), "{t:?}");
    }
    assert_eq!(
        info.location.name,
        get(header::LOCATION).and_then(clean_text)
    );
    assert_eq!(info.device, get(header::DEVICE).and_then(clean_text));
    for text in info.location.name.iter().chain(&info.device) {
        check_clean(text);
    }

    // Extras: the first 32 by name of those with a good name and a value left after cleaning.
    let mut candidates = BTreeMap::new();
    let mut meta = BTreeMap::new();
    for (name, value) in &entries {
        if let Some(k) = name.strip_prefix(header::EXTRA_PREFIX) {
            candidates
                .entry(k.to_owned())
                .or_insert_with(|| value.clone());
        } else if let Some(k) = name.strip_prefix(header::META_PREFIX) {
            meta.entry(k.to_owned()).or_insert_with(|| value.clone());
        }
    }
    let extras: BTreeMap<String, String> = candidates
        .into_iter()
        .filter(|(k, _)| validate::network(k).is_ok() && !FIELD_NAMES.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k, clean_text(&v)?)))
        .take(MAX_EXTRAS)
        .collect();
    assert_eq!(info.extras, extras);
    assert!(info.extras.len() <= MAX_EXTRAS);
    for (name, value) in &info.extras {
        check_token(name, validate::MAX_NETWORK_LEN);
        assert!(!FIELD_NAMES.contains(&name.as_str()), "{name:?}");
        check_clean(value);
    }
    assert_eq!(info.meta, meta);

    let mut again = async_nats::HeaderMap::new();
    info.write_headers(&mut again);
    assert_eq!(ImageInfo::from_headers(&again), info);
}

/// Names of the stream headers, in their own and in other spellings.
const STREAM_NAMES: [&str; 14] = [
    header::FLOW,
    header::SIZE,
    header::CHUNK_SIZE,
    header::CHUNKS,
    header::SEQ,
    header::CREDIT,
    header::CANCEL,
    header::SHA256,
    header::ID,
    header::STATUS,
    "imgfetch-flow",
    "IMGFETCH-SIZE",
    "Imgfetch-Chunk-size",
    "imgfetch-chunks",
];

const STREAM_PREFIXES: [&str; 3] = ["Imgfetch-", "imgfetch-", "Imgfetch-Chunk"];

/// `transfer::Head::from_headers` on any NATS header map (names from the protocol in several
/// spellings, or anything; numbers in many spellings and sizes).
///
/// It accepts exactly the heads whose trimmed `Imgfetch-Size`, `Imgfetch-Chunk-Size` and
/// `Imgfetch-Chunks` are `u64`s with `chunk_size > 0` and `chunks == ceil(size / chunk_size)`
/// (checked here in 128-bit arithmetic), and whose trimmed `Imgfetch-Flow` is `imgfetch.flow.`
/// followed by one or two tokens (a zone, then the token) of `[A-Za-z0-9_-]`, on an `ok`
/// answer (`Imgfetch-Status`); an accepted head says what the headers say, and
/// every chunk's end offset (`seq * chunk_size` before the last) fits in a `u64` below `size`.
/// Anything else is an error that says it is about the stream's head.
pub fn stream_headers(data: &[u8]) {
    let (entries, headers) = header_input(data, &STREAM_NAMES, &STREAM_PREFIXES);
    // The oracle reads the headers by name, apart from the code under test.
    let get = |name: &str| first(&entries, name).map(str::trim);
    let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    let flow = get(header::FLOW).unwrap_or_default();
    // `imgfetch.flow.<token>`, or a zone's resolver's `imgfetch.flow.<zone>.<token>`.
    let flow_ok = flow
        .strip_prefix(protocol::FLOW_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| {
            let parts: Vec<&str> = rest.split('.').collect();
            parts.len() <= 2
                && parts.iter().all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        });
    let (size, chunk_size, chunks) = (
        number(header::SIZE),
        number(header::CHUNK_SIZE),
        number(header::CHUNKS),
    );
    let consistent = match (size, chunk_size, chunks) {
        (Some(size), Some(chunk_size), Some(chunks)) if chunk_size > 0 => {
            let (s, c, n) = (u128::from(size), u128::from(chunk_size), u128::from(chunks));
            if n == 0 {
                s == 0
            } else {
                (n - 1) * c < s && s <= n * c
            }
        }
        _ => false,
    };
    // A head's size is read only from an `ok` answer: an error's head is no stream.
    let status_ok = get(header::STATUS) == Some("ok");
    let expected = flow_ok && consistent && status_ok;
    match Head::from_headers("r1", &headers) {
        Ok(head) => {
            assert!(expected, "accepted {head:?} from {entries:?}");
            assert_eq!(head.id, "r1");
            assert_eq!(head.flow, flow);
            assert_eq!(Some(head.size), size);
            assert_eq!(Some(head.chunk_size), chunk_size);
            assert_eq!(Some(head.chunks), chunks);
            assert!(head.chunk_size > 0);
            assert_eq!(head.chunks, head.size.div_ceil(head.chunk_size));
            if head.chunks > 0 {
                let before_last = (head.chunks - 1)
                    .checked_mul(head.chunk_size)
                    .expect("chunk offsets fit in a u64");
                assert!(before_last < head.size, "{head:?}");
            }
        }
        Err(why) => {
            assert!(!expected, "refused ({why}) {entries:?}");
            assert!(why.starts_with("the stream's head "), "{why}");
        }
    }
}
