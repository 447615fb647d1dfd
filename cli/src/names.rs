//! File names for saved images: a single plain path segment, whatever the gateway or the key
//! says, so that nothing is ever written outside the output directory.

use percent_encoding::percent_decode_str;

/// The longest name kept, in bytes: file systems allow 255, and the rest leaves room.
const MAX_NAME_BYTES: usize = 200;

/// The file name part of an `Imgfetch-Archived-As` value (a percent-encoded archive path),
/// sanitised; `None` when nothing usable is left.
pub fn from_archive(value: &str) -> Option<String> {
    let path = percent_decode_str(value).decode_utf8_lossy();
    let last = path.rsplit(['/', '\\']).next().unwrap_or_default();
    let name = sanitise(last);
    (name != "_").then_some(name)
}

/// A key as a file name: its `/` become `_`, so `a/b.jpg` is saved as `a_b.jpg`.
pub fn from_key(key: &str) -> String {
    sanitise(key)
}

/// One plain segment: separators and control characters become `_`, a leading dot becomes `_`
/// (no `..`, no hidden files), and the result is never empty and at most [`MAX_NAME_BYTES`].
fn sanitise(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    if name.is_empty() {
        name.push('_');
    }
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Component, Path};

    fn is_plain(name: &str) -> bool {
        let mut parts = Path::new(name).components();
        matches!(parts.next(), Some(Component::Normal(_))) && parts.next().is_none()
    }

    #[test]
    fn archive_names_keep_their_file_name_only() {
        assert_eq!(
            from_archive("harbor/quay/2024-05-01/quay_101500_abc.jpg").as_deref(),
            Some("quay_101500_abc.jpg")
        );
        assert_eq!(
            from_archive("harbor/%E9%9D%92%E5%B2%9B/x/%E9%9D%92%E5%B2%9B_1.jpg").as_deref(),
            Some("青岛_1.jpg")
        );
    }

    #[test]
    fn hostile_names_stay_one_plain_segment() {
        for raw in [
            "../../etc/passwd",
            "..",
            ".",
            "",
            "/",
            "a/..",
            "..%2F..%2Fx",
            "%2E%2E",
            "x\\..\\..\\y",
            "C:\\x",
            "a\0b",
            "a\nb",
            &"é".repeat(300),
        ] {
            let key_name = from_key(raw);
            assert!(is_plain(&key_name), "from_key({raw:?}) = {key_name:?}");
            assert!(key_name.len() <= MAX_NAME_BYTES);
            if let Some(name) = from_archive(raw) {
                assert!(is_plain(&name), "from_archive({raw:?}) = {name:?}");
            }
        }
    }

    #[test]
    fn keys_become_flat_names() {
        assert_eq!(from_key("dir/sub/a b.png"), "dir_sub_a b.png");
        assert_eq!(from_key("../x"), "_._x");
        assert_eq!(from_key(".hidden"), "_hidden");
    }
}
