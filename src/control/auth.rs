//! Admin API tokens: a mutating token and an optional read-only one, from a file or
//! the environment, compared in constant time. A missing and a wrong token are
//! refused alike.

use std::path::{Path, PathBuf};

use ring::hmac;

use crate::config::AdminSettings;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("admin.{field}: cannot read {path}: {source}")]
    Read {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin.{field}: environment variable {var} is not set")]
    MissingEnv { field: String, var: String },
    #[error("admin.{field}: the token is empty")]
    Empty { field: String },
    #[error("admin.{field}: the token is {len} bytes; use at least 32 random ones (e.g. openssl rand -hex 32 > FILE)")]
    Short { field: String, len: usize },
    #[error("admin.{field}: the token is still the placeholder shipped in deploy/kubernetes/secret.yaml; put a real secret there")]
    Placeholder { field: String },
}

/// The shortest token a policy may name (a command-line token, the demo's, is
/// exempt).
pub const MIN_TOKEN_BYTES: usize = 32;

/// A token, kept only as an HMAC under a per-process random key: checking a
/// presented token is a constant-time tag comparison whatever its length.
struct Token {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl Token {
    fn new(secret: &str) -> Token {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system RNG works");
        let tag = hmac::sign(&key, secret.as_bytes());
        Token { key, tag }
    }

    fn matches(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or a wrong one (401, the same answer for both).
    Unauthorized,
    /// Mutating calls are off: no token is configured (403).
    WritesDisabled,
}

#[derive(Default)]
pub struct AdminAuth {
    write: Option<Token>,
    read: Option<Token>,
    /// `[[admin.tokens]]`: name, whether it may write, the token.
    named: Vec<(String, bool, Token)>,
}

/// Who the unnamed mutating token (`admin.token_file`/`token_env`, or
/// `--admin-token`) acts as.
pub const ADMIN: &str = "admin";
/// Who the unnamed read-only token acts as.
pub const READER: &str = "reader";
/// Who reads when reads need no token.
pub const ANYONE: &str = "anyone";

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("write", &self.write.is_some())
            .field("read", &self.read.is_some())
            .field(
                "named",
                &self
                    .named
                    .iter()
                    .map(|(n, w, _)| (n, w))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn load(
    field: &str,
    env_field: &str,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<Token>, AuthError> {
    let secret = match (file, env) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|source| AuthError::Read {
                field: field.to_owned(),
                path: path.to_owned(),
                source,
            })?
            .trim()
            .to_owned(),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| AuthError::MissingEnv {
                field: env_field.to_owned(),
                var: var.to_owned(),
            })?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if secret.is_empty() {
        return Err(AuthError::Empty {
            field: field.to_owned(),
        });
    }
    if crate::secret::PLACEHOLDERS.contains(&secret.as_str()) {
        return Err(AuthError::Placeholder {
            field: field.to_owned(),
        });
    }
    if secret.len() < MIN_TOKEN_BYTES {
        return Err(AuthError::Short {
            field: field.to_owned(),
            len: secret.len(),
        });
    }
    Ok(Some(Token::new(&secret)))
}

impl AdminAuth {
    /// Tokens from the policy; `write_override` (a command-line token) wins over it.
    pub fn from_settings(
        a: &AdminSettings,
        write_override: Option<&str>,
    ) -> Result<AdminAuth, AuthError> {
        let write = match write_override {
            Some(t) if !t.trim().is_empty() => Some(Token::new(t.trim())),
            Some(_) => {
                return Err(AuthError::Empty {
                    field: "token".to_owned(),
                })
            }
            None => load(
                "token_file",
                "token_env",
                a.token_file.as_deref(),
                a.token_env.as_deref(),
            )?,
        };
        let read = load(
            "read_token_file",
            "read_token_env",
            a.read_token_file.as_deref(),
            a.read_token_env.as_deref(),
        )?;
        let mut named = Vec::with_capacity(a.tokens.len());
        for (i, t) in a.tokens.iter().enumerate() {
            // Errors name the token's place in the policy: admin.tokens[0].env.
            let (file, env) = (format!("tokens[{i}].file"), format!("tokens[{i}].env"));
            if let Some(token) = load(&file, &env, t.file.as_deref(), t.env.as_deref())? {
                named.push((t.name.clone(), t.write, token));
            }
        }
        Ok(AdminAuth { write, read, named })
    }

    /// Mutating calls are possible (a mutating token is set).
    pub fn writes_enabled(&self) -> bool {
        self.write.is_some() || self.named.iter().any(|(_, w, _)| *w)
    }

    /// Read-only calls need a token (one for reading is set).
    fn reads_guarded(&self) -> bool {
        self.read.is_some() || self.named.iter().any(|(_, w, _)| !*w)
    }

    /// Checks an `Authorization` header value against what `access` needs;
    /// who is acting: the token's name (`admin`, `reader` for the unnamed
    /// ones; `anyone` for an open read).
    pub fn check(&self, authorization: Option<&[u8]>, access: Access) -> Result<&str, Denied> {
        let presented = authorization.and_then(|h| {
            let (scheme, token) = h.split_at(h.len().min(7));
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
        });
        // Verified whether or not a token was presented, and against every
        // token whichever matches, so that the time tells nothing.
        let presented = presented.unwrap_or(b"");
        let mut who: Option<(&str, bool)> = None;
        let unnamed = [(ADMIN, true, &self.write), (READER, false, &self.read)];
        let tokens = unnamed
            .into_iter()
            .filter_map(|(n, w, t)| t.as_ref().map(|t| (n, w, t)))
            .chain(self.named.iter().map(|(n, w, t)| (n.as_str(), *w, t)));
        for (name, write, token) in tokens {
            if token.matches(presented) && who.is_none() {
                who = Some((name, write));
            }
        }
        match access {
            Access::Write if !self.writes_enabled() => Err(Denied::WritesDisabled),
            Access::Write => match who {
                Some((name, true)) => Ok(name),
                _ => Err(Denied::Unauthorized),
            },
            Access::Read if !self.reads_guarded() => Ok(who.map_or(ANYONE, |(name, _)| name)),
            Access::Read => who.map(|(name, _)| name).ok_or(Denied::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(write: Option<&str>, read: Option<&str>) -> AdminAuth {
        AdminAuth {
            write: write.map(Token::new),
            read: read.map(Token::new),
            named: Vec::new(),
        }
    }

    #[test]
    fn every_token_case() {
        let a = auth(Some("w-secret"), Some("r-secret"));
        let h = |s: &'static str| Some(s.as_bytes());
        assert_eq!(a.check(h("Bearer w-secret"), Access::Write), Ok(ADMIN));
        assert_eq!(a.check(h("bearer w-secret"), Access::Write), Ok(ADMIN));
        assert_eq!(
            a.check(h("Bearer r-secret"), Access::Write),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            a.check(h("Bearer w-secre"), Access::Write),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            a.check(h("Bearer w-secret2"), Access::Write),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            a.check(h("Basic w-secret"), Access::Write),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            a.check(h("Bearer "), Access::Write),
            Err(Denied::Unauthorized)
        );
        assert_eq!(a.check(None, Access::Write), Err(Denied::Unauthorized));
        assert_eq!(a.check(h("Bearer r-secret"), Access::Read), Ok(READER));
        assert_eq!(a.check(h("Bearer w-secret"), Access::Read), Ok(ADMIN));
        assert_eq!(a.check(None, Access::Read), Err(Denied::Unauthorized));
        assert_eq!(
            a.check(h("Bearer nope"), Access::Read),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn without_tokens_reads_are_open_and_writes_are_off() {
        let a = auth(None, None);
        assert_eq!(a.check(None, Access::Read), Ok(ANYONE));
        assert_eq!(
            a.check(Some(b"Bearer x"), Access::Write),
            Err(Denied::WritesDisabled)
        );
    }

    #[test]
    fn a_named_tokens_error_names_its_place_in_the_policy() {
        let settings = AdminSettings {
            address: "127.0.0.1:0".parse().unwrap(),
            token_file: None,
            token_env: None,
            read_token_file: None,
            read_token_env: None,
            state_file: None,
            hosts: Vec::new(),
            tokens: vec![crate::config::TokenSpec {
                name: "oncall".to_owned(),
                file: None,
                env: Some("GEOROUTER_TEST_NEVER_SET_TOKEN".to_owned()),
                write: true,
            }],
        };
        let e = AdminAuth::from_settings(&settings, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("admin.tokens[0].env: "), "{e}");
        assert!(e.contains("GEOROUTER_TEST_NEVER_SET_TOKEN"), "{e}");
    }

    #[test]
    fn a_named_token_acts_under_its_name_within_its_access() {
        let mut a = auth(Some("w-secret"), None);
        a.named
            .push(("oncall".to_owned(), true, Token::new("o-secret")));
        a.named
            .push(("dashboard".to_owned(), false, Token::new("d-secret")));
        let h = |s: &'static str| Some(s.as_bytes());
        assert_eq!(a.check(h("Bearer o-secret"), Access::Write), Ok("oncall"));
        assert_eq!(a.check(h("Bearer w-secret"), Access::Write), Ok(ADMIN));
        assert_eq!(
            a.check(h("Bearer d-secret"), Access::Write),
            Err(Denied::Unauthorized),
            "a read token cannot write"
        );
        // A read token guards reads now: without a token they are refused.
        assert_eq!(a.check(h("Bearer d-secret"), Access::Read), Ok("dashboard"));
        assert_eq!(a.check(h("Bearer o-secret"), Access::Read), Ok("oncall"));
        assert_eq!(a.check(None, Access::Read), Err(Denied::Unauthorized));
        // Named tokens alone enable writes.
        let mut b = auth(None, None);
        b.named
            .push(("ci".to_owned(), true, Token::new("c-secret")));
        assert!(b.writes_enabled());
        assert_eq!(b.check(h("Bearer c-secret"), Access::Write), Ok("ci"));
        assert_eq!(b.check(None, Access::Read), Ok(ANYONE));
    }

    #[test]
    fn tokens_come_from_files_and_the_environment() {
        let dir = std::env::temp_dir().join(format!("georouter-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file-from-file-from-file-from-file\n").unwrap();
        std::env::set_var(
            "GEOROUTER_TEST_READ_TOKEN",
            "from-env-from-env-from-env-from-env",
        );
        let settings = AdminSettings {
            address: "127.0.0.1:0".parse().unwrap(),
            token_file: Some(file),
            token_env: None,
            read_token_file: None,
            read_token_env: Some("GEOROUTER_TEST_READ_TOKEN".to_owned()),
            state_file: None,
            hosts: Vec::new(),
            tokens: vec![crate::config::TokenSpec {
                name: "oncall".to_owned(),
                file: None,
                env: Some("GEOROUTER_TEST_READ_TOKEN".to_owned()),
                write: false,
            }],
        };
        let a = AdminAuth::from_settings(&settings, None).unwrap();
        assert_eq!(
            a.check(
                Some(b"Bearer from-file-from-file-from-file-from-file"),
                Access::Write
            ),
            Ok(ADMIN)
        );
        assert_eq!(
            a.check(
                Some(b"Bearer from-env-from-env-from-env-from-env"),
                Access::Read
            ),
            Ok(READER)
        );
        let missing = AdminSettings {
            token_env: Some("GEOROUTER_TEST_UNSET_TOKEN".to_owned()),
            token_file: None,
            ..settings
        };
        let e = AdminAuth::from_settings(&missing, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("admin.token_env") && e.contains("GEOROUTER_TEST_UNSET_TOKEN"),
            "{e}"
        );
    }
}
