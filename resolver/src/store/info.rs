//! Gathers an image's associated information from three sources and merges them into one
//! [`ImageInfo`].
//!
//! | precedence | source | how it is found |
//! | --- | --- | --- |
//! | 1 | sidecar | `<key>.json` next to the image, a JSON object |
//! | 2 | store metadata | S3 user metadata (`x-amz-meta-*`), through object_store attributes |
//! | 3 | EXIF | GPS position, `DateTimeOriginal` with `OffsetTimeOriginal`, make, model, serial |
//!
//! Each field is taken from the first source that has a valid value; coordinates are taken as
//! a pair. People set sidecars and store metadata on purpose, so they win over what a camera
//! wrote. Field names are `location`, `latitude`, `longitude`, `captured_at` and `device`
//! (`captured-at` on S3, where metadata names use dashes); every other string field is an extra.

use std::collections::BTreeMap;
use std::io::Cursor;

use exif::{In, Tag, Value};
use imgfetch_common::info::{
    clean_text, normalise_time, parse_degrees, ImageInfo, Location, MAX_EXTRAS,
};
use imgfetch_common::validate;

/// Suffix of the sidecar file next to an image.
pub const SIDECAR_SUFFIX: &str = ".json";
/// Largest sidecar read.
pub const MAX_SIDECAR_BYTES: u64 = 64 * 1024;

/// What one source says; `None` where it says nothing (or nothing valid).
#[derive(Debug, Default, PartialEq)]
pub struct Partial {
    /// Place name.
    pub location: Option<String>,
    /// Latitude and longitude, only as a pair.
    pub coordinates: Option<(f64, f64)>,
    /// RFC 3339.
    pub captured_at: Option<String>,
    /// Device.
    pub device: Option<String>,
    /// Other string fields.
    pub extras: BTreeMap<String, String>,
}

/// Reads named fields, as found in a sidecar or in store metadata.
pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, FieldValue<'a>)>) -> Partial {
    let mut partial = Partial::default();
    let (mut lat, mut lon) = (None, None);
    for (name, value) in fields {
        let name = name.trim().to_ascii_lowercase().replace('-', "_");
        let text = match value {
            FieldValue::Text(s) => decode_encoded_word(s),
            FieldValue::Number(n) => n.to_string(),
        };
        match name.as_str() {
            "location" => partial.location = clean_text(&text),
            "latitude" => lat = parse_degrees(&text, 90.0),
            "longitude" => lon = parse_degrees(&text, 180.0),
            "captured_at" => partial.captured_at = normalise_time(&text),
            "device" => partial.device = clean_text(&text),
            _ => {
                let FieldValue::Text(_) = value else { continue };
                let name_ok = validate::network(&name).is_ok();
                if let (true, Some(v)) = (name_ok, clean_text(&text)) {
                    if partial.extras.len() < MAX_EXTRAS {
                        partial.extras.insert(name, v);
                    }
                }
            }
        }
    }
    partial.coordinates = lat.zip(lon);
    partial
}

/// S3 returns non-ASCII user metadata as an RFC 2047 encoded word (`=?UTF-8?B?6Z2S5bKb?=` or
/// `=?UTF-8?Q?S=C3=A3o?=`), since HTTP headers are ASCII; anything else is returned as it is.
pub fn decode_encoded_word(value: &str) -> String {
    use base64::Engine;
    let decoded = (|| {
        let inner = value.trim().strip_prefix("=?")?.strip_suffix("?=")?;
        let mut parts = inner.splitn(3, '?');
        let charset = parts.next()?;
        let encoding = parts.next()?;
        let text = parts.next()?;
        if !charset.eq_ignore_ascii_case("utf-8") {
            return None;
        }
        let bytes = match encoding {
            "B" | "b" => base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?,
            "Q" | "q" => {
                let spaced = text.replace('_', " ");
                percent_like_decode(&spaced)?
            }
            _ => return None,
        };
        String::from_utf8(bytes).ok()
    })();
    decoded.unwrap_or_else(|| value.to_owned())
}

/// The `=XX` escapes of RFC 2047's Q encoding.
fn percent_like_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A field's value in a sidecar (strings and numbers) or in store metadata (strings).
#[derive(Clone, Copy, Debug)]
pub enum FieldValue<'a> {
    /// A string.
    Text(&'a str),
    /// A JSON number.
    Number(f64),
}

/// Reads a sidecar's JSON object. Anything that is not an object yields nothing.
pub fn from_sidecar(body: &[u8]) -> Result<Partial, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    let Some(object) = value.as_object() else {
        return Ok(Partial::default());
    };
    Ok(from_fields(object.iter().filter_map(|(k, v)| match v {
        serde_json::Value::String(s) => Some((k.as_str(), FieldValue::Text(s))),
        serde_json::Value::Number(n) => n.as_f64().map(|n| (k.as_str(), FieldValue::Number(n))),
        _ => None,
    })))
}

/// Reads the EXIF block of an image, if it has one.
pub fn from_exif(bytes: &[u8]) -> Partial {
    let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return Partial::default();
    };
    let text = |tag: Tag| -> Option<String> {
        match &exif.get_field(tag, In::PRIMARY)?.value {
            Value::Ascii(parts) => parts
                .first()
                .and_then(|p| clean_text(&String::from_utf8_lossy(p))),
            _ => None,
        }
    };
    // A coordinate counts only with its hemisphere; cameras without a fix write no reference,
    // a void status, or zeros.
    let degrees = |tag: Tag, reference: Tag, (pos, neg): (&str, &str), limit: f64| {
        let Value::Rational(parts) = &exif.get_field(tag, In::PRIMARY)?.value else {
            return None;
        };
        let [d, m, s] = parts.as_slice() else {
            return None;
        };
        let v = d.to_f64() + m.to_f64() / 60.0 + s.to_f64() / 3600.0;
        let sign = match text(reference)?.to_ascii_uppercase() {
            r if r == pos => 1.0,
            r if r == neg => -1.0,
            _ => return None,
        };
        (v.is_finite() && v <= limit).then_some(sign * v)
    };
    let void = text(Tag::GPSStatus).is_some_and(|s| s.eq_ignore_ascii_case("V"));
    let coordinates = degrees(Tag::GPSLatitude, Tag::GPSLatitudeRef, ("N", "S"), 90.0)
        .zip(degrees(
            Tag::GPSLongitude,
            Tag::GPSLongitudeRef,
            ("E", "W"),
            180.0,
        ))
        .filter(|&(lat, lon)| !void && (lat, lon) != (0.0, 0.0));

    // "2026:11:20 08:15:30" plus "+08:00". Without an offset, the GPS clock (always UTC) tells
    // it, to the quarter hour; without either, the time is taken as UTC.
    let captured_at = text(Tag::DateTimeOriginal).and_then(|dt| {
        let (date, time) = dt.split_once(' ')?;
        let local = format!("{}T{time}", date.replace(':', "-"));
        let offset = text(Tag::OffsetTimeOriginal)
            .or_else(|| offset_from_gps(&exif, &local))
            .unwrap_or_else(|| "Z".into());
        normalise_time(&format!("{local}{offset}"))
    });

    let make = text(Tag::Make);
    let model = text(Tag::Model);
    let serial = text(Tag::BodySerialNumber);
    let mut device = match (make, model) {
        (Some(make), Some(model)) if model.starts_with(&make) => Some(model),
        (Some(make), Some(model)) => Some(format!("{make} {model}")),
        (make, model) => make.or(model),
    };
    if let Some(serial) = serial {
        device = Some(match device {
            Some(d) => format!("{d} (serial {serial})"),
            None => format!("serial {serial}"),
        });
    }
    Partial {
        location: None,
        coordinates,
        captured_at,
        device: device.and_then(|d| clean_text(&d)),
        extras: BTreeMap::new(),
    }
}

/// The offset between a camera-local time and the GPS (UTC) time of the same shot, rounded
/// to 15 minutes, as `+08:00`.
fn offset_from_gps(exif: &exif::Exif, local: &str) -> Option<String> {
    let date = match &exif.get_field(Tag::GPSDateStamp, In::PRIMARY)?.value {
        Value::Ascii(parts) => String::from_utf8_lossy(parts.first()?).replace(':', "-"),
        _ => return None,
    };
    let Value::Rational(hms) = &exif.get_field(Tag::GPSTimeStamp, In::PRIMARY)?.value else {
        return None;
    };
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    let utc = format!(
        "{date}T{:02}:{:02}:{:02}Z",
        h.to_f64() as u32,
        m.to_f64() as u32,
        s.to_f64() as u32
    );
    let fmt = time::format_description::well_known::Rfc3339;
    let utc = time::OffsetDateTime::parse(&utc, &fmt).ok()?;
    let local = time::OffsetDateTime::parse(&format!("{local}Z"), &fmt).ok()?;
    let minutes = ((local - utc).whole_seconds() as f64 / 900.0).round() as i64 * 15;
    if minutes.abs() > 14 * 60 {
        return None;
    }
    let sign = if minutes < 0 { '-' } else { '+' };
    Some(format!(
        "{sign}{:02}:{:02}",
        minutes.abs() / 60,
        minutes.abs() % 60
    ))
}

/// Merges sources, highest precedence first.
pub fn merge(network: &str, meta: &BTreeMap<String, String>, sources: [Partial; 3]) -> ImageInfo {
    let mut info = ImageInfo {
        network: network.to_owned(),
        meta: meta.clone(),
        ..ImageInfo::default()
    };
    let mut coordinates = None;
    for source in sources {
        info.location.name = info.location.name.or(source.location);
        coordinates = coordinates.or(source.coordinates);
        info.captured_at = info.captured_at.or(source.captured_at);
        info.device = info.device.or(source.device);
        // Higher sources fill the extras first, so a lower one can never crowd them out.
        for (name, value) in source.extras {
            if info.extras.len() >= MAX_EXTRAS {
                break;
            }
            info.extras.entry(name).or_insert(value);
        }
    }
    if let Some((lat, lon)) = coordinates {
        info.location = Location {
            name: info.location.name,
            latitude: Some(lat),
            longitude: Some(lon),
        };
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_fields_and_extras() {
        let p = from_sidecar(
            br#"{"location":" Qingdao harbor ","latitude":36.0671,"longitude":"120.3826",
                 "captured_at":"2026-11-20T08:15:30+08:00","device":"cam 7",
                 "operator":"Li","shift":3,"bad name":"x","nested":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(p.location.as_deref(), Some("Qingdao harbor"));
        assert_eq!(p.coordinates, Some((36.0671, 120.3826)));
        assert_eq!(p.captured_at.as_deref(), Some("2026-11-20T08:15:30+08:00"));
        assert_eq!(p.device.as_deref(), Some("cam 7"));
        assert_eq!(
            p.extras,
            [("operator".to_string(), "Li".to_string())].into()
        );
    }

    #[test]
    fn invalid_values_are_dropped_not_trusted() {
        let p = from_fields([
            ("latitude", FieldValue::Text("123")),
            ("longitude", FieldValue::Text("10")),
            ("Captured-At", FieldValue::Text("yesterday")),
            ("location", FieldValue::Text("\u{0}\n")),
        ]);
        assert_eq!(p, Partial::default());
    }

    #[test]
    fn precedence_is_sidecar_then_store_then_exif_field_by_field() {
        let sidecar = Partial {
            location: Some("from sidecar".into()),
            extras: [("a".to_string(), "sidecar".to_string())].into(),
            ..Partial::default()
        };
        let store = Partial {
            location: Some("from store".into()),
            captured_at: Some("2026-01-01T00:00:00Z".into()),
            extras: [
                ("a".to_string(), "store".to_string()),
                ("b".to_string(), "store".to_string()),
            ]
            .into(),
            ..Partial::default()
        };
        let exif = Partial {
            coordinates: Some((1.0, 2.0)),
            captured_at: Some("2025-01-01T00:00:00Z".into()),
            device: Some("exif cam".into()),
            ..Partial::default()
        };
        let info = merge("n", &BTreeMap::new(), [sidecar, store, exif]);
        assert_eq!(info.location.name.as_deref(), Some("from sidecar"));
        assert_eq!(info.location.latitude, Some(1.0));
        assert_eq!(info.captured_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(info.device.as_deref(), Some("exif cam"));
        assert_eq!(info.extras["a"], "sidecar");
        assert_eq!(info.extras["b"], "store");
    }

    #[test]
    fn s3_encoded_words_are_decoded() {
        assert_eq!(decode_encoded_word("=?UTF-8?B?6Z2S5bKb5riv?="), "青岛港");
        assert_eq!(
            decode_encoded_word("=?utf-8?Q?S=C3=A3o_Paulo?="),
            "São Paulo"
        );
        assert_eq!(decode_encoded_word("=?UTF-8?B?!!!?="), "=?UTF-8?B?!!!?=");
        assert_eq!(decode_encoded_word("plain"), "plain");
    }

    #[test]
    fn lower_sources_cannot_crowd_out_higher_extras() {
        let sidecar = Partial {
            extras: [("zone".to_string(), "sidecar".to_string())].into(),
            ..Partial::default()
        };
        let store = Partial {
            extras: (0..MAX_EXTRAS)
                .map(|i| (format!("a{i:02}"), "store".to_string()))
                .collect(),
            ..Partial::default()
        };
        let info = merge("n", &BTreeMap::new(), [sidecar, store, Partial::default()]);
        assert_eq!(info.extras.len(), MAX_EXTRAS);
        assert_eq!(info.extras["zone"], "sidecar");
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn exif_without_an_offset_takes_it_from_the_gps_clock() {
        let p = from_exif(&fixture("gps-clock.jpg"));
        assert_eq!(p.captured_at.as_deref(), Some("2026-11-22T23:59:59+08:00"));
        assert!(p.coordinates.is_some());
    }

    #[test]
    fn exif_without_a_fix_has_no_coordinates() {
        let p = from_exif(&fixture("no-fix.jpg"));
        assert_eq!(p.coordinates, None);
        assert_eq!(p.captured_at.as_deref(), Some("2026-11-23T10:00:00+01:00"));
    }

    #[test]
    fn exif_of_the_sample_jpeg() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../samples/harbor/quay-east.jpg"
        ))
        .unwrap();
        let p = from_exif(&bytes);
        let (lat, lon) = p.coordinates.expect("GPS");
        assert!((lat - 36.0671).abs() < 1e-3, "{lat}");
        assert!((lon - 120.3826).abs() < 1e-3, "{lon}");
        assert_eq!(p.captured_at.as_deref(), Some("2026-11-20T08:15:30+08:00"));
        assert_eq!(
            p.device.as_deref(),
            Some("Hikvision DS-2CD2387 (serial HK-0042)")
        );
        assert_eq!(from_exif(b"not an image"), Partial::default());
    }
}
