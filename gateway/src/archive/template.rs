//! Archive path templates, and turning untrusted metadata into safe path segments.
//!
//! A template is text with `{placeholder}`s. The directory template may have several
//! `/`-separated segments; the file template is one segment. Every placeholder's value passes
//! through [`segment`], so no value can add a `/`, climb with `..`, or hide a control character.

use std::collections::BTreeMap;

/// Every placeholder a template may use.
pub const PLACEHOLDERS: [&str; 11] = [
    "network",
    "location",
    "capture_date",
    "capture_time",
    "year",
    "month",
    "day",
    "device",
    "id",
    "ext",
    "key_stem",
];

/// Default directory template.
pub const DEFAULT_DIR: &str = "{network}/{location}/{capture_date}";
/// Default file template.
pub const DEFAULT_FILE: &str = "{location}_{capture_time}_{id}.{ext}";

/// Longest value of one placeholder, in characters, after sanitising.
pub const MAX_VALUE_CHARS: usize = 64;
/// Longest value of one placeholder, in bytes (64 characters of a 4-byte script would be 256).
pub const MAX_VALUE_BYTES: usize = 96;
/// Longest rendered path segment, in bytes: 255, the usual file-name limit, less room for the
/// suffix of the staging file a local write renames into place.
pub const MAX_SEGMENT_BYTES: usize = 248;
/// Longest whole path, in bytes (S3 keys end at 1024).
pub const MAX_PATH_BYTES: usize = 1000;

/// A template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template:?}: {reason}")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Value(&'static str),
}

/// A parsed template: segments of pieces.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    segments: Vec<Vec<Piece>>,
}

impl Template {
    /// Parses a directory template (`multi` = true, `/` separates segments) or a file template.
    pub fn parse(text: &str, multi: bool) -> Result<Template, TemplateError> {
        let fail = |reason: String| TemplateError {
            template: text.to_owned(),
            reason,
        };
        if !multi && text.contains('/') {
            return Err(fail("a file template cannot contain '/'".into()));
        }
        let mut segments = Vec::new();
        for raw in text.split('/') {
            let mut pieces = Vec::new();
            let mut rest = raw;
            while !rest.is_empty() {
                match rest.find(['{', '}']) {
                    Some(i) if rest.as_bytes()[i] == b'}' => {
                        return Err(fail("unmatched '}'".into()))
                    }
                    Some(i) => {
                        if i > 0 {
                            pieces.push(Piece::Text(literal(&rest[..i]).map_err(fail)?));
                        }
                        let close = rest[i..]
                            .find('}')
                            .ok_or_else(|| fail("unmatched '{'".into()))?;
                        let name = &rest[i + 1..i + close];
                        let known = PLACEHOLDERS.iter().find(|p| **p == name).ok_or_else(|| {
                            fail(format!(
                                "unknown placeholder {{{name}}}; known: {}",
                                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
                            ))
                        })?;
                        pieces.push(Piece::Value(known));
                        rest = &rest[i + close + 1..];
                    }
                    None => {
                        pieces.push(Piece::Text(literal(rest).map_err(fail)?));
                        rest = "";
                    }
                }
            }
            if pieces.is_empty() {
                return Err(fail("empty path segment".into()));
            }
            if matches!(pieces.as_slice(), [Piece::Text(t)] if t == "." || t == "..") {
                return Err(fail("'.' and '..' segments are not allowed".into()));
            }
            segments.push(pieces);
        }
        Ok(Template { segments })
    }

    /// Renders with `values`; each value is made a safe piece of one segment. `exact` values
    /// (ids, already restricted to `A-Z a-z 0-9 - _`) are used as they are, never trimmed or
    /// cut, so that two ids can never render alike. A segment that comes out too long is an
    /// error, never cut short, for the same reason.
    pub fn render(
        &self,
        values: &BTreeMap<&'static str, String>,
        exact: &[&str],
    ) -> Result<Vec<String>, String> {
        self.segments
            .iter()
            .map(|pieces| {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Value(name) => {
                            let value = values.get(name).map(String::as_str).unwrap_or("");
                            if exact.contains(name) {
                                out.push_str(value);
                            } else {
                                out.push_str(&segment(value, "unknown"));
                            }
                        }
                    }
                }
                if out.len() > MAX_SEGMENT_BYTES {
                    return Err(format!(
                        "path segment of {} bytes is over the {MAX_SEGMENT_BYTES}-byte limit",
                        out.len()
                    ));
                }
                Ok(out)
            })
            .collect()
    }
}

/// Literal template text may only hold characters that [`segment`] would keep.
fn literal(text: &str) -> Result<String, String> {
    if text.chars().all(keep) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "literal text {text:?} may only use letters, digits and - _ . +"
        ))
    }
}

fn keep(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '+') || joins(c)
}

/// Combining marks (accents, vowel signs, viramas) and the zero-width (non-)joiners belong to
/// the letters around them in many scripts.
fn joins(c: char) -> bool {
    unicode_normalization::char::is_combining_mark(c) || matches!(c, '\u{200C}' | '\u{200D}')
}

/// Device names Windows reserves, which no segment may be.
const RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Makes an untrusted value one safe path segment piece.
///
/// Letters of every script and digits are kept, with `-`, `_`, `.` and `+`; every run of
/// anything else (slashes, backslashes, spaces, control, bidirectional and other format
/// characters, punctuation) becomes one `-`. Leading and trailing `-`, `.` and `_` are trimmed,
/// so `..` cannot survive; the result is cut to 64 characters and 96 bytes; a reserved device
/// name gets a `_` appended, within those limits; an empty result becomes `fallback`.
pub fn segment(value: &str, fallback: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::new();
    let mut pending_dash = false;
    // NFC first, so that a decomposed "São" and a composed one name the same directory.
    for c in value.nfc() {
        if keep(c) {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        } else {
            pending_dash = true;
        }
    }
    // A mark may end a word (a vowel sign) but cannot start one.
    let is_edge = |c: char| matches!(c, '-' | '.' | '_' | '\u{200C}' | '\u{200D}');
    let mut trimmed = String::new();
    let start = out.trim_start_matches(|c| is_edge(c) || joins(c));
    for c in start
        .trim_end_matches(is_edge)
        .chars()
        .take(MAX_VALUE_CHARS)
    {
        if trimmed.len() + c.len_utf8() > MAX_VALUE_BYTES {
            break;
        }
        trimmed.push(c);
    }
    let mut trimmed = trimmed.trim_end_matches(is_edge).to_owned();
    if trimmed.is_empty() {
        return fallback.to_owned();
    }
    let stem = trimmed.split('.').next().unwrap_or("");
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        // The `_` must fit in the limits too: make room for it at the end (the stem, at most
        // four characters at the start, stays).
        while trimmed.chars().count() >= MAX_VALUE_CHARS || trimmed.len() >= MAX_VALUE_BYTES {
            trimmed.pop();
        }
        trimmed.push('_');
    }
    trimmed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_unknown_placeholders_do_not() {
        Template::parse(DEFAULT_DIR, true).unwrap();
        Template::parse(DEFAULT_FILE, false).unwrap();
        let err = Template::parse("{network}/{city}", true).unwrap_err();
        assert!(err.reason.contains("unknown placeholder {city}"), "{err}");
        for (t, multi, why) in [
            ("{network", true, "unmatched '{'"),
            ("network}", true, "unmatched '}'"),
            ("a//b", true, "empty"),
            ("../{id}", true, "'..'"),
            ("a b/{id}", true, "literal"),
            ("{id}/x", false, "cannot contain '/'"),
            ("{id} copy", false, "literal"),
            ("..", true, "'..'"),
        ] {
            let err = Template::parse(t, multi).unwrap_err();
            assert!(err.reason.contains(why), "{t}: {err}");
        }
    }

    #[test]
    fn hostile_values_become_one_safe_segment() {
        for (value, expect) in [
            ("../../etc/passwd", "etc-passwd"),
            ("..", "unknown"),
            ("", "unknown"),
            ("a/b\\c", "a-b-c"),
            ("line\nbreak\u{0}nul", "line-break-nul"),
            ("evil\u{202e}gpj.exe", "evil-gpj.exe"),
            ("青岛市", "青岛市"),
            ("São Paulo", "São-Paulo"),
            ("Sa\u{303}o Paulo", "São-Paulo"),
            ("दिल्ली", "दिल्ली"),
            ("می\u{200c}خواهم", "می\u{200c}خواهم"),
            ("CON", "CON_"),
            ("nul.txt", "nul.txt_"),
            ("  spaced  out ", "spaced-out"),
            (".hidden", "hidden"),
        ] {
            assert_eq!(segment(value, "unknown"), expect, "{value:?}");
        }
        let long = segment(&"长".repeat(500), "unknown");
        assert_eq!(long.chars().count(), MAX_VALUE_BYTES / 3);
        let wide = segment(&"\u{20000}".repeat(100), "unknown");
        assert_eq!(wide.len(), MAX_VALUE_BYTES);
        assert_eq!(segment(&"a".repeat(100), "unknown").len(), MAX_VALUE_CHARS);
    }

    /// Found by fuzzing (archive_path): the `_` appended to a reserved device name took a
    /// value that was already at the limit to 65 characters or 97 bytes.
    #[test]
    fn reserved_names_stay_within_the_limits() {
        let long = segment(&format!("CON.{}", "a".repeat(100)), "unknown");
        assert_eq!(long.chars().count(), MAX_VALUE_CHARS);
        assert!(long.starts_with("CON.a") && long.ends_with("a_"), "{long}");
        let wide = segment(&format!("nul.aa{}", "长".repeat(40)), "unknown");
        assert!(wide.len() <= MAX_VALUE_BYTES, "{} bytes", wide.len());
        assert!(wide.starts_with("nul.aa") && wide.ends_with('_'), "{wide}");
        assert_eq!(segment("aux", "unknown"), "aux_");
    }

    #[test]
    fn render_fills_and_sanitises() {
        let t = Template::parse("{network}/{location}/{capture_date}", true).unwrap();
        let values: BTreeMap<_, _> = [
            ("network", "harbor".to_string()),
            ("location", "../青岛市/港口".to_string()),
            ("capture_date", "2026-11-20".to_string()),
        ]
        .into();
        assert_eq!(
            t.render(&values, &[]).unwrap(),
            ["harbor", "青岛市-港口", "2026-11-20"]
        );
        let f = Template::parse("{location}_{capture_time}_{id}.{ext}", false).unwrap();
        let values: BTreeMap<_, _> = [
            ("location", "".to_string()),
            ("capture_time", "20261120T081530".to_string()),
            ("id", "r1".to_string()),
            ("ext", "jpg".to_string()),
        ]
        .into();
        assert_eq!(
            f.render(&values, &["id"]).unwrap(),
            ["unknown_20261120T081530_r1.jpg"]
        );
    }

    #[test]
    fn ids_are_kept_whole_and_long_segments_are_refused_not_cut() {
        let f = Template::parse("{location}_{id}.{ext}", false).unwrap();
        let mut values: BTreeMap<_, _> = [
            ("location", "\u{20000}".repeat(64)),
            ("id", "_a-".to_string()),
            ("ext", "jpg".to_string()),
        ]
        .into();
        let name = f.render(&values, &["id"]).unwrap().remove(0);
        assert!(name.ends_with("__a-.jpg"), "{name}");
        values.insert("id", "x".repeat(128));
        let name = f.render(&values, &["id"]).unwrap().remove(0);
        assert!(
            name.ends_with(&format!("_{}.jpg", "x".repeat(128))),
            "{name}"
        );
        let many = Template::parse("{location}{location}{location}", false).unwrap();
        let err = many.render(&values, &["id"]).unwrap_err();
        assert!(err.contains("over the 248-byte limit"), "{err}");
    }
}
