//! The rules every request must pass before it touches a queue or a store.
//!
//! The gateway applies them to reject bad input at once; the resolver applies them again because
//! people publish to the stream by hand.

use std::collections::BTreeMap;

use crate::protocol::FetchRequest;

/// Longest network tag, in bytes.
pub const MAX_NETWORK_LEN: usize = 64;
/// Longest request id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Most entries in a request's `meta`.
pub const MAX_META_ENTRIES: usize = 32;
/// Longest `meta` name, in bytes.
pub const MAX_META_NAME_LEN: usize = 64;
/// Longest `meta` value, in bytes.
pub const MAX_META_VALUE_LEN: usize = 1024;

/// One rule a request broke, with a message fit for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The offending field: `network`, `id`, `key` or `meta`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// A token that is safe inside a NATS subject, a consumer name and a header: `[A-Za-z0-9_-]`.
fn check_token(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(invalid(
            field,
            format!("character {c:?} not allowed (use A-Z, a-z, 0-9, '-' and '_')"),
        ));
    }
    Ok(())
}

/// A network tag: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn network(value: &str) -> Result<(), Invalid> {
    check_token("network", value, MAX_NETWORK_LEN)
}

/// A request id: 1 to 128 of `[A-Za-z0-9_-]`. It becomes a subject token, so nothing else.
pub fn id(value: &str) -> Result<(), Invalid> {
    check_token("id", value, MAX_ID_LEN)
}

/// A JetStream stream name, as nats-server takes it: not empty, at most 255 bytes, and no
/// whitespace, control character, `.`, `*`, `>`, `/` or `\\` (names become subject tokens and
/// file names on the server).
pub fn stream_name(value: &str) -> Result<(), Invalid> {
    const F: &str = "stream name";
    if value.is_empty() {
        return Err(invalid(F, "must not be empty"));
    }
    if value.len() > 255 {
        return Err(invalid(F, "longer than 255 bytes"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(invalid(F, format!("character {c:?} not allowed")));
    }
    Ok(())
}

/// A key-value bucket name: 1 to 255 of `[A-Za-z0-9_-]`.
pub fn bucket_name(value: &str) -> Result<(), Invalid> {
    check_token("bucket name", value, 255)
}

/// An image key: a relative path of plain segments.
///
/// Rejected: empty, longer than 1024 bytes, absolute, a trailing `/`, empty `.` or `..`
/// segments, backslashes, control characters (NUL included) and percent-encoded escapes.
pub fn key(value: &str) -> Result<(), Invalid> {
    const F: &str = "key";
    if value.is_empty() {
        return Err(invalid(F, "must not be empty"));
    }
    if value.len() > MAX_KEY_LEN {
        return Err(invalid(F, format!("longer than {MAX_KEY_LEN} bytes")));
    }
    if value.starts_with('/') {
        return Err(invalid(F, "must be relative, not start with '/'"));
    }
    if value.contains('\\') {
        return Err(invalid(F, "must not contain a backslash"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(F, "must not contain control characters"));
    }
    if has_percent_escape(value) {
        return Err(invalid(F, "must not contain percent-encoded escapes"));
    }
    for segment in value.split('/') {
        match segment {
            "" => return Err(invalid(F, "must not contain empty segments")),
            "." | ".." => return Err(invalid(F, "must not contain '.' or '..' segments")),
            _ => {}
        }
    }
    Ok(())
}

fn has_percent_escape(value: &str) -> bool {
    value
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// A `meta` map: at most 32 entries, names are tokens, values have no control characters.
pub fn meta(map: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if map.len() > MAX_META_ENTRIES {
        return Err(invalid(
            "meta",
            format!("more than {MAX_META_ENTRIES} entries"),
        ));
    }
    for (name, value) in map {
        check_token("meta", name, MAX_META_NAME_LEN)?;
        if value.len() > MAX_META_VALUE_LEN {
            return Err(invalid(
                "meta",
                format!("value of {name:?} longer than {MAX_META_VALUE_LEN} bytes"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(
                "meta",
                format!("value of {name:?} contains control characters"),
            ));
        }
    }
    Ok(())
}

/// A callback subject: a plain subject (no wildcards, no spaces, at most 512 bytes) outside
/// the server's `$` API subjects, imgfetch's own request, ping and flow subjects and the
/// gateways' and resolvers' inboxes, so that a request cannot make a resolver purge a stream,
/// feed requests back into the queue, or write into another component's inbox. Whether a
/// gateway's callback may be answered depends on the request's origin as well: see
/// [`crate::protocol::Origin`].
pub fn callback(subject: &str) -> Result<(), Invalid> {
    const F: &str = "callback";
    if subject.is_empty() || subject.len() > 512 {
        return Err(invalid(F, "must be 1 to 512 bytes"));
    }
    if subject.split('.').any(|t| {
        t.is_empty()
            || t == "*"
            || t == ">"
            || t.contains(|c: char| c.is_whitespace() || c.is_control())
    }) {
        return Err(invalid(
            F,
            "must be a plain subject without wildcards or spaces",
        ));
    }
    if subject.starts_with('$') {
        return Err(invalid(F, "must not be a server API subject ($...)"));
    }
    for own in [
        crate::protocol::REQUEST_PREFIX,
        crate::protocol::GATEWAY_REQUEST_PREFIX,
        crate::protocol::PING_PREFIX,
        crate::protocol::FLOW_PREFIX,
        crate::protocol::GATEWAY_INBOX_PREFIX,
        crate::protocol::RESOLVER_INBOX_PREFIX,
    ] {
        let under = subject
            .strip_prefix(own)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
        if under {
            return Err(invalid(F, format!("must not be under {own}")));
        }
    }
    Ok(())
}

/// Every rule at once, for a request that arrived on `subject_network`'s subject.
pub fn request(req: &FetchRequest, subject_network: &str) -> Result<(), Invalid> {
    id(&req.id)?;
    network(subject_network)?;
    if let Some(body_network) = &req.network {
        if body_network != subject_network {
            return Err(invalid(
                "network",
                format!("body says {body_network:?} but the subject says {subject_network:?}"),
            ));
        }
    }
    key(&req.key)?;
    meta(&req.meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_and_bucket_names() {
        for good in ["IMGFETCH", "imgfetch_DLQ-2", "ä"] {
            assert!(stream_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a.b",
            "a*",
            "a>",
            "a b",
            "a/b",
            "a\\b",
            "a\tb",
            &"x".repeat(256),
        ] {
            assert!(stream_name(bad).is_err(), "{bad:?}");
        }
        assert!(bucket_name("IMGFETCH_RESULTS").is_ok());
        for bad in ["", "a.b", "a b", "ä"] {
            assert!(bucket_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn good_keys_pass() {
        for k in [
            "a.jpg",
            "dir/sub/a b.png",
            "青岛/港口.jpg",
            "x..y/z",
            "100%.png",
        ] {
            assert_eq!(key(k), Ok(()), "{k}");
        }
    }

    #[test]
    fn hostile_keys_fail_with_a_reason() {
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for (k, why) in [
            ("", "empty"),
            ("/etc/passwd", "relative"),
            ("../secret", "'..'"),
            ("a/../../b", "'..'"),
            ("a/./b", "'..'"),
            ("a//b", "empty segments"),
            ("a/", "empty segments"),
            ("a\\b", "backslash"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            ("%2e%2e/x", "percent"),
            ("a%2Fb", "percent"),
            (long.as_str(), "longer"),
        ] {
            let err = key(k).expect_err(k);
            assert!(err.reason.contains(why), "{k:?}: {err}");
        }
    }

    #[test]
    fn tokens_are_subject_safe() {
        assert!(network("zone-a_1").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", "é"] {
            assert!(network(bad).is_err(), "{bad:?}");
            assert!(id(bad).is_err(), "{bad:?}");
        }
        assert!(id(&"x".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn meta_limits() {
        let ok: BTreeMap<_, _> = [("who".to_string(), "小明".to_string())].into();
        assert!(meta(&ok).is_ok());
        let bad_name: BTreeMap<_, _> = [("a b".to_string(), "x".to_string())].into();
        assert!(meta(&bad_name).is_err());
        let bad_value: BTreeMap<_, _> = [("a".to_string(), "x\r\ny".to_string())].into();
        assert!(meta(&bad_value).is_err());
        let many: BTreeMap<_, _> = (0..=MAX_META_ENTRIES)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(meta(&many).is_err());
    }

    #[test]
    fn callbacks_cannot_reach_server_apis_or_the_queue() {
        for ok in ["my.inbox.1", "_INBOX.abc.def", "imgfetch.reply.gw1.x"] {
            assert!(callback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a.>",
            "a.*.b",
            "a..b",
            "a b",
            "$JS.API.STREAM.PURGE.IMGFETCH",
            "$SYS.REQ.SERVER.PING",
            "imgfetch.req.harbor",
            "imgfetch.ping.harbor",
            "imgfetch.gwreq.harbor",
            "imgfetch.flow.abc",
            "_INBOX_gateway.local-gateway.x",
            "_INBOX_resolver.x.1",
        ] {
            assert!(callback(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn body_network_must_match_subject() {
        let req = FetchRequest {
            id: "r".into(),
            network: Some("a".into()),
            key: "k".into(),
            meta: BTreeMap::new(),
        };
        assert!(request(&req, "a").is_ok());
        assert_eq!(request(&req, "b").unwrap_err().field, "network");
    }
}
