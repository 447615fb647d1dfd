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
            FieldValue::Text(s) => s.to_owned(),
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
    let degrees = |tag: Tag, reference: Tag, negative: &str, limit: f64| -> Option<f64> {
        let Value::Rational(parts) = &exif.get_field(tag, In::PRIMARY)?.value else {
            return None;
        };
        let [d, m, s] = parts.as_slice() else {
            return None;
        };
        let mut v = d.to_f64() + m.to_f64() / 60.0 + s.to_f64() / 3600.0;
        if text(reference).is_some_and(|r| r.eq_ignore_ascii_case(negative)) {
            v = -v;
        }
        (v.is_finite() && v.abs() <= limit).then_some(v)
    };
    let latitude = degrees(Tag::GPSLatitude, Tag::GPSLatitudeRef, "S", 90.0);
    let longitude = degrees(Tag::GPSLongitude, Tag::GPSLongitudeRef, "W", 180.0);

    // "2026:11:20 08:15:30" plus "+08:00"; without an offset the time is taken as UTC.
    let captured_at = text(Tag::DateTimeOriginal).and_then(|dt| {
        let (date, time) = dt.split_once(' ')?;
        let offset = text(Tag::OffsetTimeOriginal).unwrap_or_else(|| "Z".into());
        normalise_time(&format!("{}T{time}{offset}", date.replace(':', "-")))
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
        coordinates: latitude.zip(longitude),
        captured_at,
        device: device.and_then(|d| clean_text(&d)),
        extras: BTreeMap::new(),
    }
}

/// Merges sources, highest precedence first.
pub fn merge(network: &str, meta: &BTreeMap<String, String>, sources: [Partial; 3]) -> ImageInfo {
    let mut info = ImageInfo {
        network: network.to_owned(),
        meta: meta.clone(),
        ..ImageInfo::default()
    };
    let mut coordinates = None;
    // Lowest precedence first, so that higher sources overwrite extras.
    for source in sources.into_iter().rev() {
        info.location.name = source.location.or(info.location.name);
        coordinates = source.coordinates.or(coordinates);
        info.captured_at = source.captured_at.or(info.captured_at);
        info.device = source.device.or(info.device);
        info.extras.extend(source.extras);
    }
    if let Some((lat, lon)) = coordinates {
        info.location = Location {
            name: info.location.name,
            latitude: Some(lat),
            longitude: Some(lon),
        };
    }
    while info.extras.len() > MAX_EXTRAS {
        info.extras.pop_last();
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
