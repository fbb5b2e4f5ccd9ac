//! The home-jurisdiction claim that outranks IP geography: a header from a trusted
//! gateway, or a cookie the router signs itself (HMAC-SHA256) and issues on a
//! resident's first response, so a resident who travels stays pinned.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use ring::hmac;

/// What a request's residency cookies say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieClaim<'a> {
    None,
    One(&'a str),
    /// Valid cookies naming different jurisdictions: none is believed.
    Conflict,
}

/// Signs and checks home-jurisdiction cookies.
pub struct CookieSigner {
    pub name: String,
    key: hmac::Key,
    pub max_age: Duration,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSigner")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("max_age", &self.max_age)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("residency.cookie_key_file: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("residency.cookie_key_file: {path} is still the placeholder shipped in deploy/kubernetes/secret.yaml; use at least 32 random bytes (e.g. head -c 32 /dev/urandom > FILE)")]
    Placeholder { path: PathBuf },
    #[error("residency.cookie_key_file: {path} holds {len} bytes; use at least 32 random bytes (e.g. head -c 32 /dev/urandom > FILE)")]
    Short { path: PathBuf, len: usize },
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl CookieSigner {
    /// A signer with the key in `path` (raw bytes, at least 32).
    pub fn from_key_file(name: &str, path: &Path, max_age: Duration) -> Result<Self, KeyError> {
        let key = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8_lossy(&key);
        if crate::secret::PLACEHOLDERS.contains(&text.trim()) {
            return Err(KeyError::Placeholder {
                path: path.to_owned(),
            });
        }
        if key.len() < 32 {
            return Err(KeyError::Short {
                path: path.to_owned(),
                len: key.len(),
            });
        }
        Ok(Self::new(name, &key, max_age))
    }

    pub fn new(name: &str, key: &[u8], max_age: Duration) -> Self {
        Self {
            name: name.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            max_age,
        }
    }

    /// `JURISDICTION.EXPIRY.SIGNATURE`, signed over `JURISDICTION.EXPIRY`.
    pub fn value(&self, jurisdiction: &str, expires: u64) -> String {
        let payload = format!("{jurisdiction}.{expires}");
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", hex(tag.as_ref()))
    }

    /// The jurisdiction a cookie value vouches for, if its signature is ours and
    /// it has not expired. The comparison is constant-time.
    pub fn verify<'v>(&self, value: &'v str) -> Option<&'v str> {
        let (payload, sig) = value.rsplit_once('.')?;
        let (jurisdiction, expires) = payload.split_once('.')?;
        let sig = unhex(sig)?;
        hmac::verify(&self.key, payload.as_bytes(), &sig).ok()?;
        let expires: u64 = expires.parse().ok()?;
        (expires > now_secs()).then_some(jurisdiction)
    }

    /// The claim in a request's `Cookie` headers: the jurisdiction its valid
    /// cookies name. Two valid cookies that name different jurisdictions (one
    /// planted beside the router's) are a conflict, not a claim.
    pub fn from_request<'h>(&self, headers: &'h http::HeaderMap) -> CookieClaim<'h> {
        let mut found = None;
        let valid = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(k, _)| *k == self.name)
            .filter_map(|(_, v)| self.verify(v));
        for j in valid {
            match found {
                None => found = Some(j),
                Some(f) if f == j => {}
                Some(_) => return CookieClaim::Conflict,
            }
        }
        found.map_or(CookieClaim::None, CookieClaim::One)
    }

    /// A `Set-Cookie` pinning the user to `jurisdiction`.
    pub fn set_cookie(&self, jurisdiction: &str, secure: bool) -> HeaderValue {
        let max_age = self.max_age.as_secs();
        let value = self.value(jurisdiction, now_secs() + max_age);
        let secure = if secure { "; Secure" } else { "" };
        let text = format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
            self.name
        );
        HeaderValue::from_str(&text).expect("cookie names and values are token characters")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CookieSigner {
        CookieSigner::new(
            "georouter_home",
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn a_signed_value_verifies_and_names_its_jurisdiction() {
        let s = signer();
        let v = s.value("eu", now_secs() + 60);
        assert_eq!(s.verify(&v), Some("eu"));
    }

    #[test]
    fn tampered_expired_or_foreign_values_are_rejected() {
        let s = signer();
        let v = s.value("eu", now_secs() + 60);
        assert_eq!(
            s.verify(&v.replacen("eu", "us", 1)),
            None,
            "jurisdiction changed"
        );
        assert_eq!(s.verify(&s.value("eu", now_secs() - 1)), None, "expired");
        let other = CookieSigner::new("georouter_home", &[7u8; 32], Duration::from_secs(60));
        assert_eq!(other.verify(&v), None, "signed with another key");
        for junk in ["", "eu", "eu.1", "eu.1.zz", "eu.notanumber.00"] {
            assert_eq!(s.verify(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let s = signer();
        let mut h = http::HeaderMap::new();
        let v = s.value("eu", now_secs() + 60);
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; georouter_home=forged.1.00"),
        );
        h.append(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("b=2; georouter_home={v}")).unwrap(),
        );
        assert_eq!(s.from_request(&h), CookieClaim::One("eu"));
    }

    #[test]
    fn two_valid_cookies_for_different_jurisdictions_are_no_claim() {
        let s = signer();
        let eu = s.value("eu", now_secs() + 60);
        let us = s.value("us", now_secs() + 60);
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("georouter_home={us}; georouter_home={eu}")).unwrap(),
        );
        assert_eq!(s.from_request(&h), CookieClaim::Conflict);
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("georouter_home={eu}; georouter_home={eu}")).unwrap(),
        );
        assert_eq!(s.from_request(&h), CookieClaim::One("eu"));
    }

    #[test]
    fn set_cookie_carries_the_attributes() {
        let c = signer().set_cookie("eu", true);
        let c = c.to_str().unwrap();
        assert!(c.starts_with("georouter_home=eu."), "{c}");
        assert!(
            c.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"),
            "{c}"
        );
    }
}
