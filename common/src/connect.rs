//! How the gateway and the resolver connect to NATS: who they are (a `.creds` file, or a user
//! and a password read from a file) and whether the connection is TLS, trusting which CA.
//!
//! Both binaries take the same five settings, declared once in [`NatsSettings`] (`--nats-url`,
//! `--nats-creds`, `--nats-user`, `--nats-password-file`, `--nats-tls-ca`, their variables and
//! TOML keys), and hand the four of identity and TLS here as a [`NatsAuth`], so that the
//! connection is built in one place. A password is read from its file only when connecting,
//! and never appears in logs or in `Debug` output: only the file's path does.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The NATS settings of both binaries, declared once: as flags and `IMGFETCH_NATS_*` variables
/// (`#[command(flatten)]`; the doc comments are their help) and as keys of the TOML file
/// (`#[serde(flatten)]`). Each is optional here; [`NatsSettings::or`] puts the flags over the
/// file.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
pub struct NatsSettings {
    /// NATS server URL, or a comma-separated list of the nodes of a cluster
    /// [default: nats://127.0.0.1:4222].
    #[arg(long, env = "IMGFETCH_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS .creds file (user JWT and nkey seed).
    #[arg(long, env = "IMGFETCH_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user name; the password comes from --nats-password-file.
    #[arg(long, env = "IMGFETCH_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS user's password (never logged; trailing newlines are ignored).
    #[arg(long, env = "IMGFETCH_NATS_PASSWORD_FILE", value_name = "FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// PEM file of the CA to trust for NATS; makes the connection TLS.
    #[arg(long, env = "IMGFETCH_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
}

impl NatsSettings {
    /// These settings (flags and variables) over `file`'s: the URL if given here, and the
    /// identity as [`NatsAuth::or`] merges it.
    pub fn or(self, file: NatsSettings) -> NatsSettings {
        let auth = self.auth().or(file.auth());
        NatsSettings {
            nats_url: self.nats_url.or(file.nats_url),
            nats_creds: auth.creds_file,
            nats_user: auth.user,
            nats_password_file: auth.password_file,
            nats_tls_ca: auth.tls_ca,
        }
    }

    /// The credentials and TLS these settings name.
    pub fn auth(&self) -> NatsAuth {
        NatsAuth {
            creds_file: self.nats_creds.clone(),
            user: self.nats_user.clone(),
            password_file: self.nats_password_file.clone(),
            tls_ca: self.nats_tls_ca.clone(),
        }
    }
}

/// Credentials and TLS of a NATS connection, resolved from [`NatsSettings`]. All empty:
/// anonymous, plain TCP (what a server without `authorization` or `accounts` accepts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// NATS .creds file (user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// NATS user name; the password comes from `password_file`.
    pub user: Option<String>,
    /// File holding the NATS user's password.
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA to trust; makes the connection TLS.
    pub tls_ca: Option<PathBuf>,
}

/// Why a NATS connection could not be set up or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The settings contradict each other or miss a part.
    #[error("NATS credentials: {0}")]
    Settings(&'static str),
    /// The password file or the creds file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A NATS URL in the list is malformed.
    #[error("bad NATS URL {url:?}: {source}")]
    Url {
        /// The URL as given.
        url: String,
        /// The parser's error.
        source: std::io::Error,
    },
    /// The server could not be reached, refused the credentials, or failed TLS.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The client's error (its kind says authorization, TLS, I/O, ...).
        source: async_nats::ConnectError,
    },
}

impl ConnectError {
    /// Whether waiting could fix it: no server reachable yet (refused, unresolvable, timed
    /// out). Refused credentials, TLS failures and bad settings are not.
    pub fn is_transient(&self) -> bool {
        use async_nats::ConnectErrorKind as Kind;
        let ConnectError::Connect { source, .. } = self else {
            return false;
        };
        match source.kind() {
            Kind::TimedOut | Kind::Dns | Kind::MaxReconnects => true,
            // A failed TLS handshake (an unknown CA, a bad certificate) arrives as an I/O
            // error of kind `InvalidData`: no retry mends it.
            Kind::Io => {
                let io = std::error::Error::source(source)
                    .and_then(|e| e.downcast_ref::<std::io::Error>())
                    .map(std::io::Error::kind);
                !matches!(
                    io,
                    Some(
                        std::io::ErrorKind::InvalidData
                            | std::io::ErrorKind::InvalidInput
                            | std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::Unsupported
                    )
                )
            }
            Kind::ServerParse | Kind::Authentication | Kind::AuthorizationViolation | Kind::Tls => {
                false
            }
        }
    }
}

/// First wait between attempts at a first connection; doubled up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between attempts at a first connection.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

impl NatsAuth {
    /// These settings over `fallback` (flags over a config file). An identity named here (a
    /// creds file, or a user) replaces the fallback's whole: `--nats-creds` over a file's user
    /// and password is the creds file alone, not a conflict. Otherwise each setting missing
    /// here is taken from `fallback` (a password file here with the file's user, say).
    pub fn or(self, fallback: NatsAuth) -> NatsAuth {
        let tls_ca = self.tls_ca.or(fallback.tls_ca);
        if self.creds_file.is_some() || self.user.is_some() {
            return NatsAuth { tls_ca, ..self };
        }
        NatsAuth {
            creds_file: fallback.creds_file,
            user: fallback.user,
            password_file: self.password_file.or(fallback.password_file),
            tls_ca,
        }
    }

    /// How the connection logs in, for `--check-config` summaries: " as USER", " with a creds
    /// file", or nothing when anonymous. Names no secret.
    pub fn summary(&self) -> String {
        match (&self.user, &self.creds_file) {
            (Some(user), _) => format!(" as {user}"),
            (None, Some(_)) => " with a creds file".to_owned(),
            (None, None) => String::new(),
        }
    }

    /// Checks that the settings fit together: a creds file or a user with a password file,
    /// not both; a password file only with a user. Files are read later, when connecting.
    pub fn check(&self) -> Result<(), ConnectError> {
        match (&self.creds_file, &self.user, &self.password_file) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ConnectError::Settings(
                "give a creds file or a user and password file, not both",
            )),
            (None, Some(_), None) => Err(ConnectError::Settings(
                "a NATS user needs a password file (--nats-password-file)",
            )),
            (None, None, Some(_)) => Err(ConnectError::Settings(
                "a NATS password file needs a user (--nats-user)",
            )),
            _ => Ok(()),
        }
    }

    /// Connect options carrying these credentials and TLS settings, named `name` (the name
    /// shows in the server's connection list), with inboxes under `inbox_prefix` (each role has
    /// its own, and may subscribe to no other: docs/SECURITY.md).
    pub async fn options(
        &self,
        name: String,
        inbox_prefix: &str,
    ) -> Result<async_nats::ConnectOptions, ConnectError> {
        self.check()?;
        install_tls_provider();
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .custom_inbox_prefix(inbox_prefix);
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|source| read_error(path, source))?;
        }
        if let (Some(user), Some(path)) = (&self.user, &self.password_file) {
            let password = std::fs::read_to_string(path)
                .map_err(|source| read_error(path, source))?
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            options = options.user_and_password(user.clone(), password);
        }
        if let Some(ca) = &self.tls_ca {
            if !ca.is_file() {
                return Err(read_error(
                    ca,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such CA file"),
                ));
            }
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok(options)
    }

    /// Reads every file these settings name, as a start would, for `--check-config`: the
    /// password file (which must not be empty), the creds file (parsed), and the CA (which must
    /// hold a PEM certificate). Nothing is connected to.
    pub async fn check_files(&self) -> Result<(), ConnectError> {
        // Reads and parses the password and creds files.
        self.options(String::new(), "_INBOX").await?;
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| read_error(path, source))?;
            if text.trim_end_matches(['\r', '\n']).is_empty() {
                return Err(read_error(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the password file is empty",
                    ),
                ));
            }
        }
        if let Some(path) = &self.tls_ca {
            let text = std::fs::read_to_string(path).map_err(|source| read_error(path, source))?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(read_error(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no PEM certificate (-----BEGIN CERTIFICATE-----) in the CA file",
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Connects to `url` (one URL, or a comma-separated list of a cluster's nodes, between
    /// which the client fails over) as `name`, with inboxes under `inbox_prefix`.
    pub async fn connect(
        &self,
        url: &str,
        name: String,
        inbox_prefix: &str,
    ) -> Result<async_nats::Client, ConnectError> {
        let addrs = server_addrs(url)?;
        self.options(name, inbox_prefix)
            .await?
            .connect(addrs)
            .await
            .map_err(|source| ConnectError::Connect {
                url: url.to_owned(),
                source,
            })
    }
}

impl NatsAuth {
    /// [`NatsAuth::connect`], tried again with backoff ([`RETRY_FIRST`] doubling to
    /// [`RETRY_MAX`]) while no server is reachable, as when NATS starts after its clients;
    /// anything waiting cannot fix fails at once. `None` if `stop` fired first.
    pub async fn connect_retrying(
        &self,
        url: &str,
        name: String,
        inbox_prefix: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<async_nats::Client>, ConnectError> {
        let mut wait = RETRY_FIRST;
        loop {
            match self.connect(url, name.clone(), inbox_prefix).await {
                Ok(client) => return Ok(Some(client)),
                Err(err) if err.is_transient() => {
                    tracing::warn!(error = %err, retry_in = ?wait, "NATS is not reachable yet; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return Ok(None),
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`), each checked.
pub fn server_addrs(list: &str) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
    let addrs = list
        .split(',')
        .map(str::trim)
        .map(|url| {
            let bad = |source| ConnectError::Url {
                url: url.to_owned(),
                source,
            };
            let addr = url.parse::<async_nats::ServerAddr>().map_err(bad)?;
            if addr.host().is_empty() {
                return Err(bad(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "no host",
                )));
            }
            Ok(addr)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(addrs)
}

/// Makes ring rustls' process-wide crypto provider, unless one is installed already; called
/// before any NATS connection or S3 client is built. ring is the only provider compiled in
/// (async-nats uses it, and object_store's reqwest has none of its own), and reqwest panics when
/// it builds a client while no provider is installed.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_error(path: &Path, source: std::io::Error) -> ConnectError {
    ConnectError::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_must_fit_together() {
        let p = || Some(PathBuf::from("/p"));
        let u = || Some("gateway".to_owned());
        for (auth, ok) in [
            (NatsAuth::default(), true),
            (
                NatsAuth {
                    user: u(),
                    password_file: p(),
                    ..NatsAuth::default()
                },
                true,
            ),
            (
                NatsAuth {
                    creds_file: p(),
                    tls_ca: p(),
                    ..NatsAuth::default()
                },
                true,
            ),
            (
                NatsAuth {
                    user: u(),
                    ..NatsAuth::default()
                },
                false,
            ),
            (
                NatsAuth {
                    password_file: p(),
                    ..NatsAuth::default()
                },
                false,
            ),
            (
                NatsAuth {
                    creds_file: p(),
                    user: u(),
                    password_file: p(),
                    ..NatsAuth::default()
                },
                false,
            ),
        ] {
            assert_eq!(auth.check().is_ok(), ok, "{auth:?}");
        }
    }

    #[test]
    fn an_identity_given_by_flags_replaces_the_file_s_whole() {
        let file = NatsAuth {
            creds_file: None,
            user: Some("resolver".into()),
            password_file: Some("/file/password".into()),
            tls_ca: Some("/file/ca.pem".into()),
        };
        let creds = NatsAuth {
            creds_file: Some("/flag/x.creds".into()),
            ..NatsAuth::default()
        };
        let merged = creds.or(file.clone());
        assert_eq!(
            merged,
            NatsAuth {
                creds_file: Some("/flag/x.creds".into()),
                user: None,
                password_file: None,
                tls_ca: Some("/file/ca.pem".into()),
            }
        );
        merged.check().expect("the flag's creds file alone");
        // A password file alone goes with the file's user.
        let password = NatsAuth {
            password_file: Some("/flag/password".into()),
            ..NatsAuth::default()
        };
        let merged = password.or(file.clone());
        assert_eq!(merged.user.as_deref(), Some("resolver"));
        assert_eq!(merged.password_file, Some("/flag/password".into()));
        // Nothing given: the file's settings.
        assert_eq!(NatsAuth::default().or(file.clone()), file);
    }

    #[test]
    fn nats_settings_put_flags_over_the_file_identity_whole() {
        let file = NatsSettings {
            nats_url: Some("nats://file:4222".into()),
            nats_user: Some("resolver".into()),
            nats_password_file: Some("/file/password".into()),
            nats_tls_ca: Some("/file/ca.pem".into()),
            ..NatsSettings::default()
        };
        let flags = NatsSettings {
            nats_creds: Some("/flag/x.creds".into()),
            ..NatsSettings::default()
        };
        let merged = flags.or(file.clone());
        assert_eq!(merged.nats_url.as_deref(), Some("nats://file:4222"));
        assert_eq!(
            merged.auth(),
            NatsAuth {
                creds_file: Some("/flag/x.creds".into()),
                user: None,
                password_file: None,
                tls_ca: Some("/file/ca.pem".into()),
            }
        );
        let url = NatsSettings {
            nats_url: Some("nats://flag:4222".into()),
            ..NatsSettings::default()
        };
        let merged = url.or(file.clone());
        assert_eq!(merged.nats_url.as_deref(), Some("nats://flag:4222"));
        assert_eq!(merged.auth(), file.auth());
    }

    #[test]
    fn url_lists_name_every_node_and_a_bad_one_is_named() {
        let addrs = server_addrs("nats://a:4222, nats://b:4223,c:4224").unwrap();
        let hosts: Vec<_> = addrs
            .iter()
            .map(|a| (a.host().to_owned(), a.port()))
            .collect();
        assert_eq!(
            hosts,
            [("a".into(), 4222), ("b".into(), 4223), ("c".into(), 4224)]
        );
        let err = server_addrs("nats://a:4222,http://b:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad NATS URL \"http://b:1\""), "{err}");
        let err = server_addrs("nats://a:4222,").unwrap_err().to_string();
        assert!(err.contains("bad NATS URL \"\""), "{err}");
    }

    #[tokio::test]
    async fn the_password_is_read_from_its_file_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("imgfetch-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret-pass\n").unwrap();
        let auth = NatsAuth {
            user: Some("gateway".into()),
            password_file: Some(file),
            ..NatsAuth::default()
        };
        assert!(auth.options("t".into(), "_INBOX").await.is_ok());
        assert!(!format!("{auth:?}").contains("s3cret"));
        let missing = NatsAuth {
            user: Some("gateway".into()),
            password_file: Some(dir.join("missing")),
            ..NatsAuth::default()
        };
        let err = missing
            .options("t".into(), "_INBOX")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("missing"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn check_files_reads_every_file_it_names() {
        let dir = std::env::temp_dir().join(format!("imgfetch-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let good = NatsAuth {
            user: Some("gateway".into()),
            password_file: Some(password.clone()),
            tls_ca: Some(ca.clone()),
            ..NatsAuth::default()
        };
        good.check_files().await.expect("every file is there");
        let cases = [
            (
                NatsAuth {
                    password_file: Some(dir.join("nope")),
                    ..good.clone()
                },
                "nope",
            ),
            (
                NatsAuth {
                    tls_ca: Some(dir.join("no-ca.pem")),
                    ..good.clone()
                },
                "no-ca.pem",
            ),
            (
                NatsAuth {
                    tls_ca: Some(password.clone()),
                    ..good.clone()
                },
                "no PEM certificate",
            ),
            (
                NatsAuth {
                    creds_file: Some(dir.join("missing.creds")),
                    user: None,
                    password_file: None,
                    tls_ca: None,
                },
                "missing.creds",
            ),
            (
                NatsAuth {
                    creds_file: Some(password.clone()),
                    user: None,
                    password_file: None,
                    tls_ca: None,
                },
                "password",
            ),
        ];
        for (auth, expected) in cases {
            let err = auth.check_files().await.expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        std::fs::write(&password, "\n").unwrap();
        let err = good.check_files().await.unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
