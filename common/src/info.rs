//! The *associated information* of an image: where and when it was taken, by what, and
//! whatever else its store says about it. One typed record, carried on the reply as headers.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::protocol::header;

/// Longest text value kept, in characters; longer ones are cut.
pub const MAX_TEXT_CHARS: usize = 256;
/// Most extras kept.
pub const MAX_EXTRAS: usize = 32;
/// The names of the typed fields, which no extra may take.
pub const FIELD_NAMES: [&str; 5] = ["location", "latitude", "longitude", "captured_at", "device"];

/// Where an image was taken: a place name, coordinates, or both.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// A place name, e.g. `Qingdao harbor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Decimal degrees, north positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Decimal degrees, east positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

impl Location {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.latitude.is_none() && self.longitude.is_none()
    }
}

/// Everything known about one image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The network it came from.
    pub network: String,
    /// Where it was taken.
    #[serde(default, skip_serializing_if = "Location::is_empty")]
    pub location: Location,
    /// When it was taken, RFC 3339 with the offset of the place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<String>,
    /// The capturing device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Other string fields from the sidecar or the store's metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extras: BTreeMap<String, String>,
    /// The request's own `meta`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl ImageInfo {
    /// The capture time, parsed.
    pub fn captured(&self) -> Option<OffsetDateTime> {
        self.captured_at
            .as_deref()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    }

    /// Writes the record as reply headers.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(header::NETWORK, self.network.as_str());
        if let Some(v) = &self.location.name {
            headers.insert(header::LOCATION, v.as_str());
        }
        if let Some(v) = self.location.latitude {
            headers.insert(header::LATITUDE, v.to_string().as_str());
        }
        if let Some(v) = self.location.longitude {
            headers.insert(header::LONGITUDE, v.to_string().as_str());
        }
        if let Some(v) = &self.captured_at {
            headers.insert(header::CAPTURED_AT, v.as_str());
        }
        if let Some(v) = &self.device {
            headers.insert(header::DEVICE, v.as_str());
        }
        for (k, v) in &self.extras {
            headers.insert(format!("{}{k}", header::EXTRA_PREFIX).as_str(), v.as_str());
        }
        for (k, v) in &self.meta {
            headers.insert(format!("{}{k}", header::META_PREFIX).as_str(), v.as_str());
        }
    }

    /// Reads the record back from reply headers. Values that do not parse are left out, and
    /// free text is held to the rules every source's values follow (what a resolver writes
    /// passes unchanged): location, device and extras are cleaned by [`clean_text`], extras
    /// need a name that [`extra_name_ok`], and at most [`MAX_EXTRAS`] are kept, the first by
    /// name. `meta` is read as sent.
    pub fn from_headers(headers: &HeaderMap) -> ImageInfo {
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let mut info = ImageInfo {
            network: get(header::NETWORK).unwrap_or_default(),
            location: Location {
                name: get(header::LOCATION).and_then(|v| clean_text(&v)),
                latitude: get(header::LATITUDE).and_then(|v| parse_degrees(&v, 90.0)),
                longitude: get(header::LONGITUDE).and_then(|v| parse_degrees(&v, 180.0)),
            },
            captured_at: get(header::CAPTURED_AT).and_then(|v| normalise_time(&v)),
            device: get(header::DEVICE).and_then(|v| clean_text(&v)),
            ..ImageInfo::default()
        };
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            let Some(value) = values.first().map(|v| v.as_str()) else {
                continue;
            };
            if let Some(k) = name.strip_prefix(header::EXTRA_PREFIX) {
                if let (true, Some(v)) = (extra_name_ok(k), clean_text(value)) {
                    info.extras.insert(k.to_owned(), v);
                }
            } else if let Some(k) = name.strip_prefix(header::META_PREFIX) {
                info.meta.insert(k.to_owned(), value.to_owned());
            }
        }
        // Headers come in no particular order; keep the same extras whatever it was.
        while info.extras.len() > MAX_EXTRAS {
            info.extras.pop_last();
        }
        info
    }
}

/// Whether an extra may have this name: a token of at most 64 bytes of `[A-Za-z0-9_-]` that is
/// not one of the [`FIELD_NAMES`] (the names a resolver gives extras always are).
pub fn extra_name_ok(name: &str) -> bool {
    crate::validate::network(name).is_ok() && !FIELD_NAMES.contains(&name)
}

/// Parses decimal degrees within `±limit`.
pub fn parse_degrees(value: &str, limit: f64) -> Option<f64> {
    let v: f64 = value.trim().parse().ok()?;
    (v.is_finite() && v.abs() <= limit).then_some(v)
}

/// Parses RFC 3339 and writes it back in one canonical form (seconds, the original offset).
pub fn normalise_time(value: &str) -> Option<String> {
    let t = OffsetDateTime::parse(value.trim(), &Rfc3339).ok()?;
    t.replace_nanosecond(0).ok()?.format(&Rfc3339).ok()
}

/// Trims, drops control characters and caps the length of a free-text value; `None` when
/// nothing is left.
pub fn clean_text(value: &str) -> Option<String> {
    let cleaned: String = value
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let info = ImageInfo {
            network: "harbor".into(),
            location: Location {
                name: Some("青岛市".into()),
                latitude: Some(36.0671),
                longitude: Some(-120.5),
            },
            captured_at: Some("2026-11-20T08:15:30+08:00".into()),
            device: Some("Axis P1468 (serial AX-7781)".into()),
            extras: [("operator".to_string(), "Li".to_string())].into(),
            meta: [("ticket".to_string(), "OPS-42".to_string())].into(),
        };
        let mut headers = HeaderMap::new();
        info.write_headers(&mut headers);
        assert_eq!(ImageInfo::from_headers(&headers), info);
    }

    /// Found by the `image_info_headers` fuzz target: the gateway took free text from reply
    /// headers as it came, untrimmed, with control characters, past the length limit, and
    /// any number of extras under any name.
    #[test]
    fn reply_headers_are_held_to_the_source_rules() {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, "  Qingdao\u{1b}[0m harbor\t ");
        headers.insert(header::DEVICE, "x".repeat(1000).as_str());
        headers.insert(header::EXTRA_PREFIX, "no name");
        headers.insert(
            format!("{}location", header::EXTRA_PREFIX).as_str(),
            "a field's",
        );
        headers.insert(format!("{}blank", header::EXTRA_PREFIX).as_str(), " \u{1} ");
        for i in 0..40 {
            headers.insert(format!("{}e{i:02}", header::EXTRA_PREFIX).as_str(), " v ");
        }
        let info = ImageInfo::from_headers(&headers);
        assert_eq!(info.location.name.as_deref(), Some("Qingdao[0m harbor"));
        assert_eq!(info.device.map(|d| d.len()), Some(MAX_TEXT_CHARS));
        let expected: BTreeMap<String, String> = (0..MAX_EXTRAS)
            .map(|i| (format!("e{i:02}"), "v".to_string()))
            .collect();
        assert_eq!(info.extras, expected);
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(parse_degrees("91", 90.0), None);
        assert_eq!(parse_degrees("NaN", 90.0), None);
        assert_eq!(parse_degrees(" -33.5 ", 90.0), Some(-33.5));
        assert_eq!(
            normalise_time("2026-11-20T08:15:30.25+08:00").as_deref(),
            Some("2026-11-20T08:15:30+08:00")
        );
        assert_eq!(normalise_time("2026-11-20 08:15:30"), None);
        assert_eq!(clean_text("  a\u{0}b\n "), Some("ab".into()));
        assert_eq!(clean_text(" \t"), None);
        assert_eq!(clean_text(&"x".repeat(1000)).unwrap().len(), MAX_TEXT_CHARS);
    }
}
