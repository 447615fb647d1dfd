//! Client authentication: bearer tokens from a tokens file, each allowed a set of networks and a
//! share of in-flight requests.
//!
//! Without a tokens file every client is [`Client::Open`] and nothing below applies. With one:
//!
//! | client sends                            | HTTP | websocket                          |
//! | --------------------------------------- | ---- | ---------------------------------- |
//! | no token, or one not in the file        | 401 `unauthorized` | 401 before the upgrade |
//! | a token, for a network it may not fetch | 403 `forbidden`    | `error` frame `forbidden` |
//! | a token already at its in-flight limit  | 429 `too_many_requests` | `error` frame `too_many_requests` |
//!
//! The file is TOML and holds SHA-256 hashes of the tokens, never the tokens themselves:
//!
//! ```toml
//! [[token]]
//! name = "ops"                      # shown in logs, never the token
//! sha256 = "9f86d08188…"            # printf %s "$TOKEN" | sha256sum
//! networks = ["harbor", "plant"]    # or ["*"] for every network
//! ```
//!
//! A presented token is hashed and compared with every entry in constant time, so neither the
//! comparison nor the position of the match tells an attacker anything.
//!
//! The file is read again on SIGHUP and whenever its contents change (checked every
//! `--tokens-reload-interval`), so tokens are added and revoked without a restart ([`watch`]).
//! A revoked token is refused from then on, also on a websocket it opened earlier; a file that
//! no longer parses is logged and counted, and the tokens in force stay.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use imgfetch_common::protocol::ErrorCode;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::failure::Failure;
use crate::metric;

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// The file could not be read.
    #[error("tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("tokens file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// An entry is unusable.
    #[error("tokens file {path}: token {name:?}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The entry's name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    networks: Vec<String>,
}

/// The networks a token may fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Networks {
    /// Every network (`["*"]`).
    All,
    /// Only these.
    Only(Vec<String>),
}

impl Networks {
    /// Whether `network` is among them.
    pub fn allows(&self, network: &str) -> bool {
        match self {
            Networks::All => true,
            Networks::Only(list) => list.iter().any(|n| n == network),
        }
    }
}

/// One entry of the tokens file.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// A name for logs.
    pub name: String,
    /// SHA-256 of the token, lower-case hex.
    sha256: [u8; 64],
    /// What it may fetch.
    pub networks: Networks,
}

/// The parsed tokens file.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    specs: Vec<TokenSpec>,
}

impl Tokens {
    /// Reads and checks a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        Tokens::parse(&text, path)
    }

    /// Parses the text of a tokens file; `path` is only named in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, TokensError> {
        let file: File = toml::from_str(text).map_err(|source| TokensError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |name: &str, reason| TokensError::Invalid {
            path: path.to_owned(),
            name: name.to_owned(),
            reason,
        };
        let mut specs: Vec<TokenSpec> = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let hex = entry.sha256.to_ascii_lowercase();
            let sha256: [u8; 64] = hex
                .as_bytes()
                .try_into()
                .ok()
                .filter(|h: &[u8; 64]| h.iter().all(u8::is_ascii_hexdigit))
                .ok_or_else(|| invalid(&entry.name, "sha256 must be 64 hex digits"))?;
            if entry.name.is_empty() {
                return Err(invalid(&entry.name, "name must not be empty"));
            }
            if specs.iter().any(|s| s.name == entry.name) {
                return Err(invalid(&entry.name, "name used twice"));
            }
            if specs.iter().any(|s| s.sha256 == sha256) {
                return Err(invalid(&entry.name, "the same token is listed twice"));
            }
            let networks = if entry.networks.iter().any(|n| n == "*") {
                if entry.networks.len() != 1 {
                    return Err(invalid(&entry.name, "\"*\" must be the only network"));
                }
                Networks::All
            } else if entry.networks.is_empty() {
                return Err(invalid(&entry.name, "networks must not be empty"));
            } else {
                Networks::Only(entry.networks)
            };
            specs.push(TokenSpec {
                name: entry.name,
                sha256,
                networks,
            });
        }
        Ok(Tokens { specs })
    }

    /// How many tokens the file lists.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether it lists none (then every client is refused).
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

/// A known token, with its share of in-flight requests.
#[derive(Debug)]
pub struct Grant {
    spec: TokenSpec,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    /// Set when a reloaded file no longer lists the token (or changed what it may fetch).
    revoked: AtomicBool,
}

impl Grant {
    /// The token's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Who is asking.
#[derive(Clone, Debug)]
pub enum Client {
    /// Authentication is off.
    Open,
    /// A client that showed a known token.
    Token(Arc<Grant>),
}

/// Held while a request is in flight; counts against the token's limit.
#[derive(Debug)]
pub struct InFlight(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Client {
    /// The token's name, whose results only it may read; `None` when authentication is off.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Client::Open => None,
            Client::Token(grant) => Some(grant.name()),
        }
    }

    /// Whether the client may fetch from `network` (what `/v1/networks` lists for it).
    pub fn may_fetch(&self, network: &str) -> bool {
        match self {
            Client::Open => true,
            Client::Token(grant) => {
                !grant.revoked.load(Ordering::Acquire) && grant.spec.networks.allows(network)
            }
        }
    }

    /// Checks that the client may fetch from `network`, and takes one of its in-flight slots.
    pub fn begin(&self, network: &str) -> Result<InFlight, Failure> {
        let grant = match self {
            Client::Open => return Ok(InFlight(None)),
            Client::Token(grant) => grant,
        };
        if grant.revoked.load(Ordering::Acquire) {
            return Err(Failure::new(
                ErrorCode::Unauthorized,
                format!("token {:?} has been revoked", grant.spec.name),
            ));
        }
        if !grant.spec.networks.allows(network) {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                format!(
                    "token {:?} may not fetch from network {network:?}",
                    grant.spec.name
                ),
            ));
        }
        match grant.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Ok(InFlight(Some(permit))),
            Err(_) => Err(Failure::new(
                ErrorCode::TooManyRequests,
                format!(
                    "token {:?} already has {} requests in flight",
                    grant.spec.name, grant.max_in_flight
                ),
            )),
        }
    }
}

/// The tokens in force; a reload swaps the whole list.
type Grants = Arc<[Arc<Grant>]>;

/// The gateway's view of client authentication.
#[derive(Clone, Debug)]
pub struct Auth {
    grants: Option<Arc<RwLock<Grants>>>,
    max_in_flight: usize,
}

/// What a reload changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Tokens the new file adds (or whose networks it changed).
    pub added: usize,
    /// Tokens it no longer lists (or whose networks it changed): refused from now on.
    pub revoked: usize,
    /// Tokens it lists as before; their requests in flight still count.
    pub kept: usize,
}

impl Auth {
    /// Every client is let in.
    pub fn open() -> Auth {
        Auth {
            grants: None,
            max_in_flight: 0,
        }
    }

    /// Clients must show one of `tokens`; each may have `max_in_flight` requests at once.
    pub fn with_tokens(tokens: &Tokens, max_in_flight: usize) -> Auth {
        let grants = tokens
            .specs
            .iter()
            .map(|spec| new_grant(spec, max_in_flight))
            .collect();
        Auth {
            grants: Some(Arc::new(RwLock::new(grants))),
            max_in_flight,
        }
    }

    /// Puts `tokens` in force. A token listed as before keeps its grant (and the count of its
    /// requests in flight); every other earlier token is revoked, also for clients that showed
    /// it already. Does nothing when authentication is off.
    pub fn replace(&self, tokens: &Tokens) -> Reloaded {
        let Some(grants) = &self.grants else {
            return Reloaded::default();
        };
        let mut current = grants.write().unwrap_or_else(PoisonError::into_inner);
        let mut reloaded = Reloaded::default();
        let next: Grants = tokens
            .specs
            .iter()
            .map(|spec| {
                let same = current.iter().find(|g| {
                    g.spec.name == spec.name
                        && g.spec.sha256 == spec.sha256
                        && g.spec.networks == spec.networks
                });
                match same {
                    Some(grant) => {
                        reloaded.kept += 1;
                        grant.clone()
                    }
                    None => {
                        reloaded.added += 1;
                        new_grant(spec, self.max_in_flight)
                    }
                }
            })
            .collect();
        for old in current.iter() {
            if !next.iter().any(|g| Arc::ptr_eq(g, old)) {
                old.revoked.store(true, Ordering::Release);
                reloaded.revoked += 1;
            }
        }
        *current = next;
        reloaded
    }

    /// Identifies the client from `Authorization: Bearer <token>`, or from `query_token` (the
    /// websocket `?token=`) when there is no such header.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Client, Failure> {
        let Some(grants) = &self.grants else {
            return Ok(Client::Open);
        };
        let grants = grants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let from_header = match headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let value = value.to_str().unwrap_or_default();
                let token = value
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim());
                match token {
                    Some(t) => Some(t),
                    None => {
                        return Err(Failure::new(
                            ErrorCode::Unauthorized,
                            "the Authorization header must be `Bearer <token>`",
                        ))
                    }
                }
            }
            None => None,
        };
        let Some(token) = from_header.or(query_token).filter(|t| !t.is_empty()) else {
            return Err(Failure::new(
                ErrorCode::Unauthorized,
                "a bearer token is required (Authorization: Bearer <token>)",
            ));
        };
        let presented = imgfetch_common::digest::sha256_hex(token.as_bytes());
        let presented = presented.as_bytes();
        // Every entry is compared, whatever matches, so the time taken says nothing.
        let mut found = None;
        for grant in grants.iter() {
            if bool::from(grant.spec.sha256[..].ct_eq(presented)) {
                found = Some(grant);
            }
        }
        match found {
            Some(grant) => Ok(Client::Token(grant.clone())),
            None => Err(Failure::new(
                ErrorCode::Unauthorized,
                "the bearer token is not valid",
            )),
        }
    }
}

fn new_grant(spec: &TokenSpec, max_in_flight: usize) -> Arc<Grant> {
    Arc::new(Grant {
        spec: spec.clone(),
        in_flight: Arc::new(Semaphore::new(max_in_flight)),
        max_in_flight,
        revoked: AtomicBool::new(false),
    })
}

/// Reads the tokens file at `path` again on SIGHUP, and whenever its contents differ from the
/// last read (checked every `interval`: a Kubernetes Secret changes under a mounted file with no
/// signal), and puts what it lists in force in `auth`. A file that cannot be read or parsed is
/// logged and counted (`imgfetch_gateway_tokens_reloads_total{result="error"}`), and the tokens
/// in force stay. Runs until `stop`.
pub async fn watch(
    auth: Auth,
    path: PathBuf,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut last = std::fs::read(&path).ok();
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGHUP; the tokens file is still re-read when it changes");
            None
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(source) => {
                let err = TokensError::Read {
                    path: path.clone(),
                    source,
                };
                if forced || last.is_some() {
                    tracing::warn!(%err, "cannot re-read the tokens file; the tokens in force stay");
                    metrics::counter!(metric::TOKENS_RELOADS_TOTAL, "result" => "error")
                        .increment(1);
                }
                last = None;
                continue;
            }
        };
        if !forced && last.as_deref() == Some(text.as_slice()) {
            continue;
        }
        last = Some(text.clone());
        let parsed = std::str::from_utf8(&text)
            .map_err(|_| TokensError::Invalid {
                path: path.clone(),
                name: String::new(),
                reason: "the file is not UTF-8",
            })
            .and_then(|text| Tokens::parse(text, &path));
        match parsed {
            Ok(tokens) => {
                let r = auth.replace(&tokens);
                if tokens.is_empty() {
                    tracing::warn!(
                        "the reloaded tokens file lists no tokens: every client is refused"
                    );
                }
                tracing::info!(
                    added = r.added,
                    revoked = r.revoked,
                    kept = r.kept,
                    "reloaded the tokens file"
                );
                metrics::counter!(metric::TOKENS_RELOADS_TOTAL, "result" => "ok").increment(1);
            }
            Err(err) => {
                tracing::warn!(%err, "the changed tokens file is not valid; the tokens in force stay");
                metrics::counter!(metric::TOKENS_RELOADS_TOTAL, "result" => "error").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Tokens, String> {
        Tokens::parse(text, Path::new("tokens.toml")).map_err(|e| e.to_string())
    }

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn a_listed_token_is_known_and_limited_to_its_networks() {
        let tokens = parse(&format!(
            "[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nnetworks = [\"harbor\"]\n",
            ABC.to_uppercase()
        ))
        .unwrap();
        let auth = Auth::with_tokens(&tokens, 1);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        let client = auth.identify(&headers, None).unwrap();
        let held = client.begin("harbor").unwrap();
        assert_eq!(
            client.begin("harbor").unwrap_err().code,
            ErrorCode::TooManyRequests
        );
        drop(held);
        assert_eq!(
            client.begin("plant").unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert!(auth.identify(&HeaderMap::new(), Some("abc")).is_ok());
        let wrong = auth.identify(&HeaderMap::new(), Some("abd")).unwrap_err();
        assert_eq!(wrong.code, ErrorCode::Unauthorized);
        let none = auth.identify(&HeaderMap::new(), None).unwrap_err();
        assert_eq!(none.code, ErrorCode::Unauthorized);
        assert!(matches!(
            Auth::open().identify(&HeaderMap::new(), None),
            Ok(Client::Open)
        ));
    }

    #[test]
    fn a_reload_revokes_what_it_drops_and_keeps_the_rest_with_its_count() {
        // sha256("abc") and sha256("xyz").
        const XYZ: &str = "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282";
        let both = parse(&format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{ABC}\"\nnetworks = [\"*\"]\n\
             [[token]]\nname = \"x\"\nsha256 = \"{XYZ}\"\nnetworks = [\"*\"]\n"
        ))
        .unwrap();
        let auth = Auth::with_tokens(&both, 1);
        let a = auth.identify(&HeaderMap::new(), Some("abc")).unwrap();
        let x = auth.identify(&HeaderMap::new(), Some("xyz")).unwrap();
        let held = a.begin("harbor").unwrap();
        let only_a = parse(&format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{ABC}\"\nnetworks = [\"*\"]\n"
        ))
        .unwrap();
        assert_eq!(
            auth.replace(&only_a),
            Reloaded {
                added: 0,
                revoked: 1,
                kept: 1
            }
        );
        // The revoked token: refused when shown again, and on a client that showed it before.
        let err = auth.identify(&HeaderMap::new(), Some("xyz")).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthorized);
        let err = x.begin("harbor").unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthorized);
        assert!(err.message.contains("revoked"), "{}", err.message);
        assert!(!x.may_fetch("harbor"));
        // The kept token still counts the request it had in flight.
        assert_eq!(
            a.begin("harbor").unwrap_err().code,
            ErrorCode::TooManyRequests
        );
        drop(held);
        assert!(a.begin("harbor").is_ok());
        // Open stays open.
        assert_eq!(Auth::open().replace(&only_a), Reloaded::default());
    }

    #[test]
    fn bad_files_are_rejected_with_the_reason() {
        for (text, expect) in [
            (
                "[[token]]\nname = \"a\"\nsha256 = \"abc\"\nnetworks = [\"*\"]",
                "64 hex",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{ABC}\"\nnetworks = []").as_str(),
                "must not be empty",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{ABC}\"\nnetworks = [\"*\", \"x\"]")
                    .as_str(),
                "only network",
            ),
            (
                format!("[[token]]\nname = \"a\"\ntoken = \"{ABC}\"\nnetworks = [\"*\"]").as_str(),
                "unknown field",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{ABC}\"\nnetworks = [\"*\"]\n\
                     [[token]]\nname = \"b\"\nsha256 = \"{ABC}\"\nnetworks = [\"*\"]"
                )
                .as_str(),
                "listed twice",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expect), "expected {expect:?} in {err:?}");
        }
    }
}
