//! Bearer tokens: the TOML tokens file, roles, and constant-time lookup.
//!
//! ```toml
//! [[tokens]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! subscription = "acme"
//! role = "shipper"
//! name = "acme-prod shipper"    # optional, for humans
//!
//! [[tokens]]
//! token = "dev-admin"            # plain text: development only
//! subscription = "*"
//! role = "admin"
//!
//! [[tokens]]
//! sha256 = "..."
//! subscription = "acme"
//! role = "shipper"
//! sources = ["acme-prod", "host:vm-*"]   # optional: the only sources it may write
//! ```
//!
//! The file holds secrets (plain tokens, or digests that let an attacker
//! test guesses offline): the server refuses to start when it is readable
//! by group or others ([`check_private`]), and `token add` makes it 0600.
//!
//! A presented token is hashed with SHA-256 and compared with every entry's
//! digest in constant time (`subtle`), without stopping at a match, so the
//! answer time does not tell how much of a digest matched or which entry.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Ingest for its own subscription.
    Shipper,
    /// Read its own subscription; manage its rules and silences.
    Operator,
    /// Everything, every subscription, termination and checkpoints.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shipper" => Ok(Role::Shipper),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?} (expected shipper, operator or admin)"
            )),
        }
    }
}

/// Which subscriptions a token covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    One(String),
}

/// The identity behind an authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Option<String>,
    pub scope: Scope,
    pub role: Role,
    /// Glob patterns of the sources a shipper token may write; `None`:
    /// any source of its subscription.
    pub sources: Option<Vec<String>>,
    patterns: Option<Vec<glob::Pattern>>,
}

impl Principal {
    /// Whether this principal may see data of `subscription`.
    pub fn covers(&self, subscription: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::One(s) => s == subscription,
        }
    }

    /// The one subscription this principal is limited to, if any.
    pub fn subscription(&self) -> Option<&str> {
        match &self.scope {
            Scope::All => None,
            Scope::One(s) => Some(s),
        }
    }

    /// Whether this principal may write records of `source`.
    pub fn may_write_source(&self, source: &str) -> bool {
        self.patterns
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(source)))
    }
}

/// One `[[tokens]]` entry as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    token: Option<String>,
    subscription: String,
    role: Role,
    #[serde(default)]
    name: Option<String>,
    /// Glob patterns of the sources the token may write (shipper tokens).
    #[serde(default)]
    sources: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// A bad tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("read tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("tokens file {path}: entry {index}: {message}")]
    Entry {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error("write tokens file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {path} is readable by group or others (mode {mode:o}); it holds secrets: run `chmod 600 {path}`")]
    NotPrivate { path: PathBuf, mode: u32 },
}

#[derive(Debug, Clone)]
struct Known {
    digest: [u8; 32],
    principal: Principal,
}

/// The loaded tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    known: Vec<Known>,
}

/// Validates a subscription name: what ingest accepts for records too.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && !s.chars().any(|c| c.is_control())
}

impl Tokens {
    /// Parses a tokens file's text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, TokensError> {
        let file: TokensFile = toml::from_str(text).map_err(|e| TokensError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut known = Vec::with_capacity(file.tokens.len());
        for (index, e) in file.tokens.into_iter().enumerate() {
            let bad = |message: String| TokensError::Entry {
                path: path.to_path_buf(),
                index,
                message,
            };
            let digest = match (&e.sha256, &e.token) {
                (Some(h), None) => {
                    let bytes = hex::decode(h.trim())
                        .map_err(|err| bad(format!("sha256 is not hex: {err}")))?;
                    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                        bad(format!(
                            "sha256 must be 64 hex digits, got {}",
                            h.trim().len()
                        ))
                    })?
                }
                (None, Some(t)) => {
                    if t.is_empty() {
                        return Err(bad("token is empty".into()));
                    }
                    sha256(t.as_bytes())
                }
                (Some(_), Some(_)) => {
                    return Err(bad("give either sha256 or token, not both".into()))
                }
                (None, None) => return Err(bad("missing sha256 (or token)".into())),
            };
            let scope = if e.subscription == "*" {
                Scope::All
            } else if valid_name(&e.subscription) {
                Scope::One(e.subscription.clone())
            } else {
                return Err(bad(format!("invalid subscription {:?}", e.subscription)));
            };
            if scope == Scope::All && e.role != Role::Admin {
                return Err(bad(
                    "subscription \"*\" is only allowed for role admin".into()
                ));
            }
            if scope != Scope::All && e.role == Role::Admin {
                return Err(bad(
                    "role admin needs subscription \"*\" (admins see every subscription)".into(),
                ));
            }
            let patterns = match &e.sources {
                None => None,
                Some(list) => {
                    if e.role != Role::Shipper {
                        return Err(bad("sources may only be given for role shipper".into()));
                    }
                    if list.is_empty() {
                        return Err(bad(
                            "sources is empty (omit it to allow every source)".into()
                        ));
                    }
                    let mut ps = Vec::with_capacity(list.len());
                    for g in list {
                        ps.push(glob::Pattern::new(g).map_err(|err| {
                            bad(format!("sources: {g:?} is not a glob pattern: {err}"))
                        })?);
                    }
                    Some(ps)
                }
            };
            known.push(Known {
                digest,
                principal: Principal {
                    name: e.name,
                    scope,
                    role: e.role,
                    sources: e.sources,
                    patterns,
                },
            });
        }
        Ok(Tokens { known })
    }

    /// Loads the tokens file at `path`.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokensError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Tokens::parse(&text, path)
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// The subscriptions named by tokens limited to one, sorted, each once.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .known
            .iter()
            .filter_map(|k| k.principal.subscription().map(str::to_string))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The principal of `token`, comparing against every entry in constant
    /// time.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let digest = sha256(token.as_bytes());
        let mut found: Option<&Known> = None;
        for k in &self.known {
            let eq: bool = k.digest.ct_eq(&digest).into();
            if eq && found.is_none() {
                found = Some(k);
            }
        }
        found.map(|k| k.principal.clone())
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b);
    h.finalize().into()
}

/// Refuses a tokens file that group or others may read (or write).
pub fn check_private(path: &Path) -> Result<(), TokensError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(path).map_err(|e| TokensError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokensError::NotPrivate {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// Makes a random token (256 bits, hex), appends its SHA-256 entry to the
/// tokens file (created with mode 0600 when missing; an existing file is
/// made 0600) and returns the token. The file's existing content is
/// validated first and kept as is.
pub fn add_token(path: &Path, subscription: &str, role: Role) -> Result<String, TokensError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(TokensError::Read {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    Tokens::parse(&existing, path)?;
    let mut raw = [0u8; 32];
    rand::rng().fill(&mut raw[..]);
    let token = format!("sct_{}", hex::encode(raw));
    let entry = format!(
        "\n[[tokens]]\nsha256 = \"{}\"\nsubscription = {}\nrole = \"{}\"\n",
        hex::encode(sha256(token.as_bytes())),
        toml_string(subscription),
        match role {
            Role::Shipper => "shipper",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    );
    // Validate the new entry the same way the server will read it.
    Tokens::parse(&format!("{existing}{entry}"), path)?;
    let write_err = |e| TokensError::Write {
        path: path.to_path_buf(),
        source: e,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(write_err)?;
    #[cfg(unix)]
    {
        // `mode` only applies to a new file; an existing one may be 0644.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
    }
    f.write_all(entry.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    Ok(token)
}

fn toml_string(s: &str) -> String {
    // serde_json's string escaping is valid TOML basic-string escaping for
    // the characters a validated name can contain.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_and_plain_tokens_authenticate_to_their_principal() {
        let text = format!(
            "[[tokens]]\nsha256 = \"{}\"\nsubscription = \"acme\"\nrole = \"shipper\"\n\n\
             [[tokens]]\ntoken = \"adm\"\nsubscription = \"*\"\nrole = \"admin\"\n",
            hex::encode(sha256(b"ship-secret"))
        );
        let t = Tokens::parse(&text, Path::new("t.toml")).expect("parse");
        let p = t.authenticate("ship-secret").expect("shipper");
        assert_eq!(p.role, Role::Shipper);
        assert_eq!(p.scope, Scope::One("acme".into()));
        assert_eq!(t.authenticate("adm").map(|p| p.role), Some(Role::Admin));
        assert!(t.authenticate("ship-secret ").is_none());
        assert!(t.authenticate("").is_none());
    }

    #[test]
    fn bad_entries_are_refused_with_their_index() {
        for (text, needle) in [
            (
                "[[tokens]]\nsubscription = \"a\"\nrole = \"shipper\"\n",
                "missing sha256",
            ),
            (
                "[[tokens]]\nsha256 = \"abc\"\nsubscription = \"a\"\nrole = \"shipper\"\n",
                "not hex",
            ),
            (
                "[[tokens]]\ntoken = \"x\"\nsubscription = \"*\"\nrole = \"operator\"\n",
                "only allowed for role admin",
            ),
            (
                "[[tokens]]\ntoken = \"x\"\nsubscription = \"a\"\nrole = \"root\"\n",
                "unknown variant",
            ),
            (
                "[[tokens]]\ntoken = \"x\"\nsubscription = \"a\"\nrole = \"shipper\"\ncolour = 1\n",
                "unknown field",
            ),
        ] {
            let e = Tokens::parse(text, Path::new("t.toml")).expect_err(text);
            assert!(
                e.to_string().contains(needle),
                "{e} should contain {needle}"
            );
        }
    }

    #[test]
    fn a_token_bound_to_sources_writes_only_those() {
        let text = "[[tokens]]\ntoken = \"s\"\nsubscription = \"acme\"\nrole = \"shipper\"\nsources = [\"acme-prod\", \"host:vm-*\"]\n\n\
                    [[tokens]]\ntoken = \"t\"\nsubscription = \"acme\"\nrole = \"shipper\"\n";
        let t = Tokens::parse(text, Path::new("t.toml")).expect("parse");
        let bound = t.authenticate("s").expect("s");
        assert!(bound.may_write_source("acme-prod"));
        assert!(bound.may_write_source("host:vm-7"));
        assert!(!bound.may_write_source("acme-test"));
        assert!(!bound.may_write_source("host:db-1"));
        let free = t.authenticate("t").expect("t");
        assert!(free.may_write_source("anything"));
        for (text, needle) in [
            (
                "[[tokens]]\ntoken = \"x\"\nsubscription = \"a\"\nrole = \"operator\"\nsources = [\"n\"]\n",
                "only be given for role shipper",
            ),
            (
                "[[tokens]]\ntoken = \"x\"\nsubscription = \"a\"\nrole = \"shipper\"\nsources = [\"[\"]\n",
                "not a glob pattern",
            ),
            (
                "[[tokens]]\ntoken = \"x\"\nsubscription = \"a\"\nrole = \"shipper\"\nsources = []\n",
                "sources is empty",
            ),
        ] {
            let e = Tokens::parse(text, Path::new("t.toml")).expect_err(text);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn readable_tokens_files_are_refused_and_token_add_makes_them_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = check_private(&path).expect_err("0644");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        add_token(&path, "acme", Role::Shipper).expect("add");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        check_private(&path).expect("now private");
    }

    #[test]
    fn add_token_stores_only_the_hash_and_the_token_then_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "# keep me\n").expect("write");
        let token = add_token(&path, "acme", Role::Operator).expect("add");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# keep me\n"));
        assert!(!text.contains(&token), "the plain token must not be stored");
        let t = Tokens::load(&path).expect("load");
        assert_eq!(t.len(), 1);
        let p = t.authenticate(&token).expect("new token works");
        assert_eq!(p.role, Role::Operator);
        assert!(p.covers("acme") && !p.covers("other"));
        let second = add_token(&path, "beta", Role::Shipper).expect("add 2");
        assert_ne!(token, second);
        assert_eq!(Tokens::load(&path).expect("load").len(), 2);
    }
}
