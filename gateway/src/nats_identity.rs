//! `--install-nats-identity DIR`: copies this instance's own NATS credentials, the file named
//! after the instance in DIR (a Secret holding every replica's, mounted whole), to the password
//! file or the creds file the configuration names, readable by its owner only, then exits. The
//! Helm chart's init container runs it, so that the gateway container mounts only its own
//! credentials, never another replica's (docs/DEPLOY.md). The images hold no `cp`: the gateway
//! does the copy itself.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use imgfetch_common::connect::NatsAuth;

/// The installed file's mode: read by its owner, the gateway's user, and nobody else.
pub const MODE: u32 = 0o400;

/// Which of the two NATS credential files the configuration names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `--nats-password-file` (`IMGFETCH_NATS_PASSWORD_FILE`).
    Password,
    /// `--nats-creds` (`IMGFETCH_NATS_CREDS`).
    Creds,
}

/// What [`install`] wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct Installed {
    /// The file read: DIR/<instance>.
    pub from: PathBuf,
    /// The file written.
    pub to: PathBuf,
    /// A password or a creds file.
    pub kind: Kind,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            Kind::Password => "NATS password",
            Kind::Creds => "NATS creds file",
        };
        write!(
            f,
            "installed {what} {} to {} (mode {MODE:04o})",
            self.from.display(),
            self.to.display()
        )
    }
}

/// Why the credentials were not installed; each message names the setting, key or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// No instance name: the key to copy is named after it.
    #[error(
        "--install-nats-identity: no instance name (--instance, IMGFETCH_INSTANCE), which names \
         the key to copy"
    )]
    NoInstance,
    /// The instance name is not a valid id, so not a key name either.
    #[error("--install-nats-identity: instance: {}", .0.reason)]
    Instance(#[source] imgfetch_common::validate::Invalid),
    /// Neither a password file nor a creds file is configured.
    #[error(
        "--install-nats-identity: nowhere to install to: set --nats-password-file \
         (IMGFETCH_NATS_PASSWORD_FILE) or --nats-creds (IMGFETCH_NATS_CREDS)"
    )]
    NoTarget,
    /// Both are configured: which one the key is is unknown.
    #[error(
        "--install-nats-identity: both --nats-creds and --nats-password-file are set; a \
         connection uses one"
    )]
    BothTargets,
    /// DIR has no key of this instance's name.
    #[error("--install-nats-identity: no key {key:?} in {} (the NATS credentials of instance {key})", .dir.display())]
    MissingKey {
        /// The directory searched.
        dir: PathBuf,
        /// The key, the instance name.
        key: String,
    },
    /// The key is there but empty.
    #[error("--install-nats-identity: key {key:?} in {} is empty", .dir.display())]
    EmptyKey {
        /// The directory.
        dir: PathBuf,
        /// The key.
        key: String,
    },
    /// The key could not be read.
    #[error("--install-nats-identity: cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The target could not be written.
    #[error("--install-nats-identity: cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Copies `dir/<instance>` to the creds file or the password file of `auth`, whichever is set,
/// with mode [`MODE`]. The file is written beside the target and renamed over it, so a target
/// left by an earlier run (an init container runs again when its pod restarts) is replaced,
/// and a reader never sees half a file.
pub fn install(
    dir: &Path,
    instance: Option<&str>,
    auth: &NatsAuth,
) -> Result<Installed, InstallError> {
    let key = instance.ok_or(InstallError::NoInstance)?;
    // Also what keeps the key a plain file name: no '/', no "..".
    imgfetch_common::validate::id(key).map_err(InstallError::Instance)?;
    let (to, kind) = match (&auth.creds_file, &auth.password_file) {
        (Some(creds), None) => (creds.clone(), Kind::Creds),
        (None, Some(password)) => (password.clone(), Kind::Password),
        (Some(_), Some(_)) => return Err(InstallError::BothTargets),
        (None, None) => return Err(InstallError::NoTarget),
    };
    let from = dir.join(key);
    let content = match std::fs::read(&from) {
        Ok(content) => content,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(InstallError::MissingKey {
                dir: dir.to_owned(),
                key: key.to_owned(),
            })
        }
        Err(source) => return Err(InstallError::Read { path: from, source }),
    };
    if content.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return Err(InstallError::EmptyKey {
            dir: dir.to_owned(),
            key: key.to_owned(),
        });
    }
    write_new(&to, &content).map_err(|source| InstallError::Write {
        path: to.clone(),
        source,
    })?;
    Ok(Installed { from, to, kind })
}

/// Writes `content` to a new file beside `to`, with mode [`MODE`], then renames it over `to`.
fn write_new(to: &Path, content: &[u8]) -> std::io::Result<()> {
    let name = to
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = to.with_file_name(temp_name);
    let _ = std::fs::remove_file(&temp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .open(&temp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&temp, to)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory holding `identities/` (with `gw-0` and an empty `gw-2`) and `out/`.
    fn layout(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("imgfetch-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("identities")).unwrap();
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::write(root.join("identities/gw-0"), "s3cret\n").unwrap();
        std::fs::write(root.join("identities/gw-1"), "other\n").unwrap();
        std::fs::write(root.join("identities/gw-2"), "\n").unwrap();
        root
    }

    fn password(root: &Path) -> NatsAuth {
        NatsAuth {
            user: Some("gw-0".into()),
            password_file: Some(root.join("out/password")),
            ..NatsAuth::default()
        }
    }

    #[test]
    fn copies_the_instances_own_key_owner_read_only() {
        let root = layout("copy");
        let dir = root.join("identities");
        let done = install(&dir, Some("gw-0"), &password(&root)).unwrap();
        assert_eq!(done.kind, Kind::Password);
        assert_eq!(done.to, root.join("out/password"));
        assert_eq!(
            std::fs::read_to_string(&done.to).unwrap(),
            "s3cret\n",
            "the key byte for byte"
        );
        let mode = std::fs::metadata(&done.to).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, MODE);
        assert!(done.to_string().contains("gw-0"), "{done}");

        // A second run (the pod restarted) replaces the read-only file, and leaves nothing else.
        std::fs::write(dir.join("gw-0"), "rotated").unwrap();
        install(&dir, Some("gw-0"), &password(&root)).unwrap();
        assert_eq!(std::fs::read_to_string(&done.to).unwrap(), "rotated");
        let left: Vec<_> = std::fs::read_dir(root.join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["password"]);

        let creds = NatsAuth {
            creds_file: Some(root.join("out/nats.creds")),
            ..NatsAuth::default()
        };
        let done = install(&dir, Some("gw-1"), &creds).unwrap();
        assert_eq!(done.kind, Kind::Creds);
        assert_eq!(std::fs::read_to_string(&done.to).unwrap(), "other\n");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_a_missing_key_and_a_configuration_without_a_target() {
        let root = layout("refuse");
        let dir = root.join("identities");
        let err = install(&dir, Some("gw-9"), &password(&root)).unwrap_err();
        assert!(
            matches!(&err, InstallError::MissingKey { key, .. } if key == "gw-9"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("no key \"gw-9\" in") && text.contains("identities"),
            "{text}"
        );
        assert!(!root.join("out/password").exists());

        let err = install(&dir, Some("gw-2"), &password(&root)).unwrap_err();
        assert!(matches!(err, InstallError::EmptyKey { .. }), "{err:?}");
        let err = install(&dir, None, &password(&root)).unwrap_err();
        assert!(matches!(err, InstallError::NoInstance), "{err:?}");
        for bad in ["../gw-0", "gw.0", ""] {
            let err = install(&dir, Some(bad), &password(&root)).unwrap_err();
            assert!(matches!(err, InstallError::Instance(_)), "{bad:?}: {err:?}");
        }
        let err = install(&dir, Some("gw-0"), &NatsAuth::default()).unwrap_err();
        assert!(matches!(err, InstallError::NoTarget), "{err:?}");
        assert!(
            err.to_string().contains("IMGFETCH_NATS_PASSWORD_FILE"),
            "{err}"
        );
        let both = NatsAuth {
            creds_file: Some(root.join("out/nats.creds")),
            ..password(&root)
        };
        let err = install(&dir, Some("gw-0"), &both).unwrap_err();
        assert!(matches!(err, InstallError::BothTargets), "{err:?}");
        let nowhere = NatsAuth {
            password_file: Some(root.join("missing/password")),
            ..NatsAuth::default()
        };
        let err = install(&dir, Some("gw-0"), &nowhere).unwrap_err();
        assert!(
            matches!(err, InstallError::Write { .. }) && err.to_string().contains("missing"),
            "{err:?}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
