//! The one configuration style of both binaries: a flag, an `IMGFETCH_*` variable, or a key of
//! the TOML file named by `--config`, in that order of precedence, over a built-in default.
//!
//! This module holds what the two share:
//! - [`duration`]: durations in human form (`30s`, `1m 30s`, `500ms`, `7d`), for flags, variables
//!   and, through [`de_duration`], TOML keys;
//! - [`read_toml`]: reads the file, refusing unknown keys with the key and the file named;
//! - [`secret`]: a secret given either as itself or as a file holding it (the `*_FILE` twin),
//!   never both, or a [`SecretError`] naming the setting;
//! - [`S3Settings`]: the S3 keys of a store, declared once, read from a TOML table or, through
//!   [`s3_from_env`], from the `AWS_*` variables, with `AWS_SECRET_ACCESS_KEY_FILE` and
//!   `AWS_SESSION_TOKEN_FILE` read at start;
//! - [`renamed`]: settings whose names changed, refused with the new name rather than ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::store::S3Options;

/// Parses a duration in human form: `30s`, `1m 30s`, `500ms`, `2h`, `7d`. A bare number is
/// refused (was it seconds or milliseconds?), with an example in the message.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} has no unit: write it as {text}s or {text}ms (units: ms, s, m, h, d)"
        ));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

/// Prints a duration the way [`duration`] reads it back (`30s`, `1m 30s`, `250ms`).
pub fn show(value: Duration) -> String {
    humantime::format_duration(value).to_string()
}

/// `#[serde(default, deserialize_with = "de_duration")]` for an `Option<Duration>` TOML key,
/// written as a string in human form (`ack_wait = "30s"`).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    duration(&text).map(Some).map_err(serde::de::Error::custom)
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, has a key of the wrong type, or a key the binary does not know.
    #[error(transparent)]
    Toml(Box<TomlError>),
}

/// A TOML file that does not parse into the settings.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TomlError {
    /// The file.
    pub path: PathBuf,
    /// The parser's message, with the line and the key, and the new name of a renamed key.
    pub message: String,
    /// The parser's error.
    pub source: toml::de::Error,
}

/// Reads the TOML file at `path` through `read` (tests pass a map of files). The target type
/// should refuse unknown keys (`#[serde(deny_unknown_fields)]`): a misspelt key is an error,
/// not a setting silently left at its default. An unknown key that is the file form of a
/// variable in `renamed` (`grace_ms` for `IMGFETCH_GRACE_MS`) is named with its new key.
pub fn read_toml<T: DeserializeOwned>(
    path: &Path,
    read: impl Fn(&Path) -> std::io::Result<String>,
    renamed: &[Renamed],
) -> Result<T, FileError> {
    let text = read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        let line = error_line(&text, &e);
        let mut message = match line {
            Some(line) => format!("line {line}: {}", e.message()),
            None => e.message().to_owned(),
        };
        for r in renamed {
            if message.contains(&format!("unknown field `{}`", r.old_key())) {
                message = format!(
                    "{}: `{}` is now `{}`, a duration in human form (e.g. {} = \"{}\")",
                    message.lines().next().unwrap_or_default(),
                    r.old_key(),
                    r.new_key(),
                    r.new_key(),
                    r.example
                );
            }
        }
        FileError::Toml(Box::new(TomlError {
            path: path.to_owned(),
            message,
            source: e,
        }))
    })
}

/// The line of the file a TOML error is on, if known. A key of a `#[serde(flatten)]` struct
/// loses its place (serde buffers the table's keys): its error is reported for the whole table,
/// with the span of the table's header, or an empty span for the top level. Then the line is
/// that of the key an unknown-key error names, found in the table; else the header's, or none
/// for the top level rather than a wrong one.
fn error_line(text: &str, e: &toml::de::Error) -> Option<usize> {
    let span = e.span()?;
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let top_level = span == (0..0);
    if !top_level && !text[span.clone()].starts_with('[') {
        return Some(line_of(span.start));
    }
    let unknown = e
        .message()
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key);
    let found = unknown.and_then(|key| key_line(text, span.end, key, top_level));
    match found {
        Some(line) => Some(line_of(span.end) + line),
        None => (!top_level).then(|| line_of(span.start)),
    }
}

/// Where `key` is set in the table whose lines begin at byte `from`, in lines after the first:
/// a `key = …` or `key.… = …` line before the next header, or, at the top level, a `[key]` or
/// `[key.…]` header too.
fn key_line(text: &str, from: usize, key: &str, top_level: bool) -> Option<usize> {
    let names = |line: &str| {
        let rest = line
            .strip_prefix(key)
            .or_else(|| line.strip_prefix(&format!("\"{key}\"")));
        rest.is_some_and(|rest| rest.trim_start().starts_with(['=', '.', ']']))
    };
    let mut in_body = true;
    for (n, line) in text[from..].lines().enumerate() {
        let line = line.trim_start();
        if let Some(header) = line.strip_prefix('[') {
            if top_level && names(header.trim_start_matches('[').trim_start()) {
                return Some(n);
            }
            in_body = false;
        } else if in_body && names(line) {
            return Some(n);
        }
    }
    None
}

/// A secret given as itself (the setting `name`) or as a file holding it (the setting
/// `file_name`, whitespace around the secret dropped), or neither; never both. The names are the
/// settings' as the user wrote them (`secret_access_key_file`, `AWS_SECRET_ACCESS_KEY_FILE`),
/// for the error.
pub fn secret(
    name: &str,
    file_name: &str,
    value: Option<String>,
    file: Option<PathBuf>,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Option<String>, SecretError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(SecretError::Both {
            value: name.to_owned(),
            file: file_name.to_owned(),
        }),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => match read(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(source) => Err(SecretError::Read {
                setting: file_name.to_owned(),
                path,
                source,
            }),
        },
        (None, None) => Ok(None),
    }
}

/// A secret that could not be had; each names the setting as the user wrote it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The secret was given both as itself and as a file.
    #[error("give {value} or {file}, not both")]
    Both {
        /// The setting holding the secret itself.
        value: String,
        /// The setting naming its file.
        file: String,
    },
    /// The file holding the secret could not be read.
    #[error("{setting}: cannot read {}: {source}", path.display())]
    Read {
        /// The setting naming the file.
        setting: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The S3 settings of a store, declared once for every place they are read: the keys of a TOML
/// table (flattened into a resolver's `[networks.NAME]`), and the `AWS_*` variables
/// ([`s3_from_env`]), where each key is a variable (`session_token_file` is
/// `AWS_SESSION_TOKEN_FILE`). A secret is given as itself or as a file holding it (its `_file`
/// twin, a mounted Kubernetes Secret), never both. `Debug` never shows a secret.
///
/// Unknown keys are refused by the table it is flattened into.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
pub struct S3Settings {
    /// S3 endpoint, for S3-compatible servers.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// S3 access key id.
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    pub secret_access_key: Option<String>,
    /// File holding the S3 secret access key (a mounted Kubernetes Secret).
    pub secret_access_key_file: Option<PathBuf>,
    /// S3 session token.
    pub session_token: Option<String>,
    /// File holding the S3 session token.
    pub session_token_file: Option<PathBuf>,
    /// Allow plain-HTTP endpoints.
    pub allow_http: Option<bool>,
    /// Use virtual-hosted-style requests instead of path style.
    pub virtual_hosted_style: Option<bool>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("session_token", &hidden(&self.session_token))
            .field("session_token_file", &self.session_token_file)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

impl S3Settings {
    /// The store options of a TOML table, its secrets read from their files through `read`;
    /// nothing comes from the `AWS_*` variables.
    pub fn options(
        self,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<S3Options, SecretError> {
        self.resolve(str::to_owned, read)
    }

    /// The options, each secret read from its file; `name` gives a key's name where it was read,
    /// for errors.
    fn resolve(
        self,
        name: impl Fn(&str) -> String,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<S3Options, SecretError> {
        let secret = |key: &str, value, file| {
            secret(
                &name(key),
                &name(&format!("{key}_file")),
                value,
                file,
                &read,
            )
        };
        Ok(S3Options {
            from_env: false,
            endpoint: self.endpoint,
            region: self.region,
            access_key_id: self.access_key_id,
            secret_access_key: secret(
                "secret_access_key",
                self.secret_access_key,
                self.secret_access_key_file,
            )?,
            session_token: secret("session_token", self.session_token, self.session_token_file)?,
            allow_http: self.allow_http,
            virtual_hosted_style: self.virtual_hosted_style,
        })
    }
}

/// The `AWS_*` variable of an [`S3Settings`] key: `session_token_file` is
/// `AWS_SESSION_TOKEN_FILE`.
fn aws_variable(key: &str) -> String {
    format!("AWS_{}", key.to_ascii_uppercase())
}

/// S3 settings from the standard `AWS_*` variables (read by the S3 client itself), plus the
/// `*_FILE` twins of the secret ones, which the S3 client does not know: a variable
/// `AWS_SECRET_ACCESS_KEY_FILE` (or `AWS_SESSION_TOKEN_FILE`) names a file, typically a mounted
/// Kubernetes Secret, read here, at start. Giving a variable and its `_FILE` twin is an error.
///
/// Only `urls` that are S3 URLs need the secrets read: for none, the plain `from_env` options.
pub fn s3_from_env<'a>(
    urls: impl IntoIterator<Item = &'a str>,
    env: impl Fn(&str) -> Option<String>,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<S3Options, SecretError> {
    if !urls.into_iter().any(is_s3_url) {
        return Ok(S3Options {
            from_env: true,
            ..S3Options::default()
        });
    }
    let var = |key: &str| env(&aws_variable(key));
    // The rest of the AWS_* variables are the S3 client's to read.
    let secrets = S3Settings {
        secret_access_key: var("secret_access_key"),
        secret_access_key_file: var("secret_access_key_file").map(PathBuf::from),
        session_token: var("session_token"),
        session_token_file: var("session_token_file").map(PathBuf::from),
        ..S3Settings::default()
    };
    Ok(S3Options {
        from_env: true,
        ..secrets.resolve(aws_variable, read)?
    })
}

/// Whether `url` is an `s3://` URL; schemes are case-insensitive (`S3://bucket` is one too).
pub fn is_s3_url(url: &str) -> bool {
    url.get(..5)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("s3://"))
}

/// A setting whose name changed: its old variable and the new one with how to write it.
#[derive(Clone, Copy, Debug)]
pub struct Renamed {
    /// The variable as it was.
    pub old: &'static str,
    /// The variable now.
    pub new: &'static str,
    /// An example of the new value.
    pub example: &'static str,
}

impl Renamed {
    /// The old setting's key in a TOML file: `IMGFETCH_GRACE_MS` is `grace_ms`.
    pub fn old_key(&self) -> String {
        key_of(self.old)
    }

    /// The new setting's key in a TOML file.
    pub fn new_key(&self) -> String {
        key_of(self.new)
    }
}

fn key_of(variable: &str) -> String {
    variable
        .strip_prefix("IMGFETCH_")
        .unwrap_or(variable)
        .to_ascii_lowercase()
}

/// The variables of `table` still set in `env`, each as a message naming the new variable: an
/// old `IMGFETCH_GRACE_MS=30000` would otherwise be silently ignored and the default used.
pub fn renamed(table: &[Renamed], env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    let set: Vec<String> = table
        .iter()
        .filter(|r| env(r.old).is_some())
        .map(|r| {
            format!(
                "{} is now {} and takes a duration in human form (e.g. {}={})",
                r.old, r.new, r.new, r.example
            )
        })
        .collect();
    if set.is_empty() {
        Ok(())
    } else {
        Err(set.join("; "))
    }
}

/// Parses the command line of binary `name`, then refuses the variables of `renamed_vars` that
/// are still set. Every configuration error, the parser's included, prints its message and
/// exits 64 (EX_USAGE); `--help` and `--version` print and exit 0.
pub fn parse_args<A: clap::Parser>(name: &str, renamed_vars: &[Renamed]) -> A {
    let args = match A::try_parse() {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let _ = err.print();
            std::process::exit(EXIT_CONFIG);
        }
    };
    or_exit(name, renamed(renamed_vars, |k| std::env::var(k).ok()));
    args
}

/// The value, or, for a configuration that cannot be used, `name: configuration error: …` on
/// stderr and exit status 64.
pub fn or_exit<T, E: std::fmt::Display>(name: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|err| {
        eprintln!("{name}: configuration error: {err}");
        std::process::exit(EXIT_CONFIG);
    })
}

/// Exit status of a configuration that cannot be used (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// A reader of files held in memory, by path, for the `read` argument of the functions here:
/// what tests give instead of the file system. A path not in `map` is not found.
pub fn in_memory(
    map: &'static [(&'static str, &'static str)],
) -> impl Fn(&Path) -> std::io::Result<String> {
    move |p: &Path| {
        map.iter()
            .find(|(name, _)| Path::new(name) == p)
            .map(|(_, text)| text.to_string())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
}

#[cfg(test)]
mod tests {
    use super::in_memory as files;
    use super::*;

    #[test]
    fn durations_are_read_in_human_form_and_bare_numbers_refused() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        let err = duration("30000").unwrap_err();
        assert!(err.contains("no unit") && err.contains("30000ms"), "{err}");
        assert!(duration("soon").unwrap_err().contains("not a duration"));
        assert_eq!(show(Duration::from_millis(90_250)), "1m 30s 250ms");
        assert_eq!(
            duration(&show(Duration::from_millis(90_250))),
            Ok(Duration::from_millis(90_250))
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default, deserialize_with = "de_duration")]
        grace: Option<Duration>,
        name: Option<String>,
    }

    #[test]
    fn toml_files_name_the_line_of_a_bad_or_unknown_key() {
        let ok: Sample = read_toml(
            Path::new("/a.toml"),
            files(&[("/a.toml", "name = \"x\"\ngrace = \"45s\"\n")]),
            &[],
        )
        .unwrap();
        assert_eq!(ok.grace, Some(Duration::from_secs(45)));
        assert_eq!(ok.name.as_deref(), Some("x"));
        for (text, expect) in [
            (
                "name = \"x\"\ngrace_ms = 5\n",
                "line 2: unknown field `grace_ms`",
            ),
            ("grace = \"5\"\n", "no unit"),
            ("grace = 5\n", "invalid type"),
            ("name = \n", "line 1"),
        ] {
            let err =
                read_toml::<Sample>(Path::new("/b.toml"), |_: &Path| Ok(text.to_owned()), &[])
                    .unwrap_err()
                    .to_string();
            assert!(
                err.starts_with("/b.toml: ") && err.contains(expect),
                "{text:?}: {err}"
            );
        }
        let err = read_toml::<Sample>(Path::new("/none.toml"), files(&[]), &[]).unwrap_err();
        assert!(matches!(err, FileError::Read { .. }), "{err}");
        let renamed = [Renamed {
            old: "IMGFETCH_GRACE_MS",
            new: "IMGFETCH_GRACE",
            example: "30s",
        }];
        let err = read_toml::<Sample>(
            Path::new("/c.toml"),
            |_: &Path| Ok("grace_ms = 3000\n".to_owned()),
            &renamed,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "/c.toml: line 1: unknown field `grace_ms`, expected `grace` or `name`: `grace_ms` \
             is now `grace`, a duration in human form (e.g. grace = \"30s\")"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Flat {
        name: Option<String>,
        #[serde(flatten)]
        inner: Inner,
        #[serde(default)]
        tables: std::collections::BTreeMap<String, Table>,
    }

    #[derive(Debug, Deserialize)]
    struct Inner {
        flag: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        #[serde(flatten)]
        inner: Inner,
    }

    #[test]
    fn keys_of_flattened_structs_keep_their_line() {
        let ok: Flat = read_toml(
            Path::new("/f.toml"),
            |_: &Path| Ok("name = \"x\"\nflag = true\n[tables.a]\nflag = false\n".to_owned()),
            &[],
        )
        .unwrap();
        assert_eq!(ok.name.as_deref(), Some("x"));
        assert_eq!(ok.inner.flag, Some(true));
        assert_eq!(ok.tables["a"].inner.flag, Some(false));
        for (text, expect) in [
            (
                "name = \"x\"\n\ncolour = 1\n",
                "line 3: unknown field `colour`",
            ),
            (
                "name = \"x\"\n\"colour\" = 1\n",
                "line 2: unknown field `colour`",
            ),
            (
                "name = \"x\"\n[colour]\nx = 1\n",
                "line 2: unknown field `colour`",
            ),
            (
                "[tables.a]\nflag = true\n[tables.b]\n\nflg = 1\n",
                "line 5: unknown field `flg`",
            ),
            // A wrong type in a table: its header's line.
            (
                "name = \"x\"\n[tables.a]\nflag = \"yes\"\n",
                "line 2: invalid type",
            ),
            // At the top level, no line rather than line 1.
            ("name = \"x\"\nflag = \"yes\"\n", "/f.toml: invalid type"),
            // A key the struct itself holds keeps its precise place.
            ("flag = true\nname = 5\n", "line 2: invalid type"),
        ] {
            let err = read_toml::<Flat>(Path::new("/f.toml"), |_: &Path| Ok(text.to_owned()), &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expect),
                "{text:?}: expected {expect:?} in {err:?}"
            );
        }
    }

    #[test]
    fn secrets_come_from_their_value_or_their_file_never_both() {
        let read = files(&[("/s", "hunter2\n")]);
        let secret = |value: Option<&str>, file: Option<&str>| {
            secret(
                "k",
                "k_file",
                value.map(Into::into),
                file.map(Into::into),
                &read,
            )
        };
        assert_eq!(secret(None, None).unwrap(), None);
        assert_eq!(secret(Some("v"), None).unwrap().as_deref(), Some("v"));
        assert_eq!(
            secret(None, Some("/s")).unwrap().as_deref(),
            Some("hunter2")
        );
        let both = secret(Some("v"), Some("/s")).unwrap_err();
        assert!(
            matches!(&both, SecretError::Both { value, file } if value == "k" && file == "k_file"),
            "{both:?}"
        );
        assert_eq!(both.to_string(), "give k or k_file, not both");
        let missing = secret(None, Some("/missing")).unwrap_err();
        let SecretError::Read { setting, path, .. } = &missing else {
            panic!("expected a read error, got {missing:?}");
        };
        assert_eq!(
            (setting.as_str(), path.as_path()),
            ("k_file", Path::new("/missing"))
        );
        // The io::Error is kept as the source, not only as text.
        let io = std::error::Error::source(&missing)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .expect("the io::Error is the source");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(
            missing
                .to_string()
                .starts_with("k_file: cannot read /missing: "),
            "{missing}"
        );
    }

    #[test]
    fn s3_table_keys_name_themselves_in_errors() {
        let read = files(&[("/sk", "SK\n")]);
        let options = S3Settings {
            endpoint: Some("http://minio:9000".into()),
            secret_access_key_file: Some("/sk".into()),
            allow_http: Some(true),
            ..S3Settings::default()
        }
        .options(&read)
        .unwrap();
        assert!(!options.from_env);
        assert_eq!(options.secret_access_key.as_deref(), Some("SK"));
        assert_eq!(options.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(options.allow_http, Some(true));
        let err = S3Settings {
            session_token_file: Some("/none".into()),
            ..S3Settings::default()
        }
        .options(&read)
        .unwrap_err();
        assert!(
            matches!(&err, SecretError::Read { setting, .. } if setting == "session_token_file"),
            "{err:?}"
        );
        let shown = format!(
            "{:?}",
            S3Settings {
                secret_access_key: Some("SK-NOT-SHOWN".into()),
                ..S3Settings::default()
            }
        );
        assert!(!shown.contains("SK-NOT-SHOWN"), "{shown}");
    }

    #[test]
    fn s3_secret_files_are_read_from_the_environment() {
        let read = files(&[("/run/sk", "SK\n"), ("/run/st", "ST")]);
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let options = s3_from_env(
            ["s3://b"],
            env(&[
                ("AWS_SECRET_ACCESS_KEY_FILE", "/run/sk"),
                ("AWS_SESSION_TOKEN_FILE", "/run/st"),
            ]),
            &read,
        )
        .unwrap();
        assert!(options.from_env);
        assert_eq!(options.secret_access_key.as_deref(), Some("SK"));
        assert_eq!(options.session_token.as_deref(), Some("ST"));
        // Without the _FILE twins the S3 client reads the variables itself.
        let plain = s3_from_env(["S3://b"], env(&[("AWS_SECRET_ACCESS_KEY", "X")]), &read).unwrap();
        assert_eq!(plain.secret_access_key.as_deref(), Some("X"));
        let both = s3_from_env(
            ["s3://b"],
            env(&[
                ("AWS_SECRET_ACCESS_KEY", "X"),
                ("AWS_SECRET_ACCESS_KEY_FILE", "/run/sk"),
            ]),
            &read,
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("AWS_SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY_FILE"),
            "{both}"
        );
        let missing = s3_from_env(
            ["s3://b"],
            env(&[("AWS_SESSION_TOKEN_FILE", "/nope")]),
            &read,
        )
        .unwrap_err();
        assert!(
            matches!(&missing, SecretError::Read { setting, .. } if setting == "AWS_SESSION_TOKEN_FILE"),
            "{missing:?}"
        );
        let missing = missing.to_string();
        // No S3 URL: the secret files are not read at all.
        let file_only = s3_from_env(
            ["file:///x"],
            env(&[("AWS_SESSION_TOKEN_FILE", "/nope")]),
            &read,
        )
        .unwrap();
        assert!(file_only.from_env && file_only.session_token.is_none());
        assert!(
            missing.contains("AWS_SESSION_TOKEN_FILE: cannot read /nope"),
            "{missing}"
        );
    }

    #[test]
    fn old_variable_names_are_refused_with_the_new_one() {
        const TABLE: &[Renamed] = &[Renamed {
            old: "IMGFETCH_GRACE_MS",
            new: "IMGFETCH_GRACE",
            example: "30s",
        }];
        assert_eq!(renamed(TABLE, |_| None), Ok(()));
        let err = renamed(TABLE, |k| {
            (k == "IMGFETCH_GRACE_MS").then(|| "30000".into())
        })
        .unwrap_err();
        assert!(
            err.contains("IMGFETCH_GRACE_MS is now IMGFETCH_GRACE")
                && err.contains("IMGFETCH_GRACE=30s"),
            "{err}"
        );
    }
}
