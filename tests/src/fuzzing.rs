//! The bodies of the fuzz targets in `fuzz/`, shared with the stable replay of their corpora
//! (`tests/tests/fuzz_corpus.rs`), so that CI checks every committed input exactly as the
//! fuzzer did.
//!
//! Each function takes the raw fuzzer input and panics if the code under test panics or breaks
//! one of its documented invariants. Structured inputs are read from the bytes with
//! [`arbitrary`], the same way `libfuzzer-sys` would. See `docs/FUZZING.md`.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use imgfetch_common::codec;
use imgfetch_common::info::{normalise_time, MAX_EXTRAS, MAX_TEXT_CHARS};
use imgfetch_common::protocol::{self, FetchRequest};
use imgfetch_common::validate;
use imgfetch_gateway::archive;
use imgfetch_gateway::template::{self, Template};
use imgfetch_resolver::info::{self, FieldValue, Partial};
use time::OffsetDateTime;

/// A target's body: the raw fuzzer input in, a panic on failure.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory of its corpus) and its body.
pub const TARGETS: [(&str, Check); 6] = [
    ("decode", decode),
    ("validate", validators),
    ("sidecar", sidecar),
    ("fields", fields),
    ("exif", exif),
    ("archive_path", archive_path),
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
