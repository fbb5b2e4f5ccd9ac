//! Signed fleet policies: an operator signs the policy text with an Ed25519
//! key (`georouter fleet push --key FILE`); an instance applies only a policy
//! signed by one of its own `fleet.policy_keys`. Credentials to etcd alone
//! cannot rewrite where residents' traffic goes.

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// The first line of a signed policy; the signature covers every byte after it.
const HEADER: &str = "# georouter-signature: ";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{0}: not an Ed25519 private key in PKCS#8 (make one with `georouter fleet keygen`)")]
    BadKey(String),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
}

/// Why a pushed policy is not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unsigned {
    #[error("the policy is not signed (push it with `georouter fleet push --key FILE`)")]
    Missing,
    #[error("the policy's signature is not one of fleet.policy_keys")]
    Wrong,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A new key pair: the PKCS#8 document (kept secret) and the public key,
/// base64, for `fleet.policy_keys`.
pub fn generate() -> (Vec<u8>, String) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system's randomness works");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key just made parses");
    (
        pkcs8.as_ref().to_vec(),
        b64().encode(pair.public_key().as_ref()),
    )
}

/// Writes a new private key to `path` (mode 600) and returns its public key.
pub fn keygen(path: &std::path::Path) -> Result<String, SigningError> {
    let (pkcs8, public) = generate();
    let shown = path.display().to_string();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| SigningError::Write(shown.clone(), e))?;
    std::io::Write::write_all(&mut file, pkcs8.as_slice())
        .map_err(|e| SigningError::Write(shown, e))?;
    Ok(public)
}

/// The policy text signed with the private key at `key`.
pub fn sign_with(key: &std::path::Path, text: &str) -> Result<String, SigningError> {
    let shown = key.display().to_string();
    let pkcs8 = std::fs::read(key).map_err(|e| SigningError::Read(shown.clone(), e))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| SigningError::BadKey(shown))?;
    Ok(sign(&pair, text))
}

fn sign(pair: &Ed25519KeyPair, text: &str) -> String {
    let body = strip(text).unwrap_or(text);
    let signature = pair.sign(body.as_bytes());
    format!("{HEADER}{}\n{body}", b64().encode(signature.as_ref()))
}

/// The text after a signature line, if there is one.
fn strip(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(HEADER)?;
    Some(rest.split_once('\n').map_or("", |(_, body)| body))
}

/// Checks a pushed policy against the instance's keys (base64 Ed25519 public
/// keys); the policy text without its signature line when one verifies.
pub fn verify<'t>(text: &'t str, keys: &[String]) -> Result<&'t str, Unsigned> {
    let rest = text.strip_prefix(HEADER).ok_or(Unsigned::Missing)?;
    let (signature, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let signature = b64()
        .decode(signature.trim())
        .map_err(|_| Unsigned::Wrong)?;
    let verified = keys.iter().any(|k| {
        b64().decode(k.trim()).is_ok_and(|public| {
            UnparsedPublicKey::new(&ED25519, public)
                .verify(body.as_bytes(), &signature)
                .is_ok()
        })
    });
    if verified {
        Ok(body)
    } else {
        Err(Unsigned::Wrong)
    }
}

/// The first line of a staged policy's signed body: the instances that take it.
const STAGE: &str = "# georouter-stage: ";

/// A policy body for `instances` only (a canary stage): the list is signed
/// with it, so nobody can widen it.
pub fn staged(text: &str, instances: &[String]) -> String {
    format!("{STAGE}{}\n{text}", instances.join(","))
}

/// Whether a verified policy body is for `instance`: every instance unless it
/// names its stage.
pub fn for_instance(body: &str, instance: &str) -> bool {
    match body.strip_prefix(STAGE) {
        None => true,
        Some(rest) => rest
            .lines()
            .next()
            .unwrap_or("")
            .split(',')
            .any(|i| i.trim() == instance),
    }
}

/// Whether `key` is a base64 Ed25519 public key (32 bytes).
pub fn is_public_key(key: &str) -> bool {
    b64().decode(key.trim()).is_ok_and(|k| k.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_policy_verifies_with_its_key_only_and_any_change_breaks_it() {
        let (pkcs8, public) = generate();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
        let (_, other) = generate();
        let text = "[[listeners]]\naddress = \"127.0.0.1:0\"\n";
        let signed = sign(&pair, text);
        assert_eq!(verify(&signed, &[other.clone(), public.clone()]), Ok(text));
        assert_eq!(verify(&signed, &[other]), Err(Unsigned::Wrong));
        assert_eq!(
            verify(text, std::slice::from_ref(&public)),
            Err(Unsigned::Missing)
        );
        let tampered = signed.replace("127.0.0.1", "10.0.0.1");
        assert_eq!(
            verify(&tampered, std::slice::from_ref(&public)),
            Err(Unsigned::Wrong)
        );
        // Signing a signed text again signs its body, not the old line.
        assert_eq!(verify(&sign(&pair, &signed), &[public]), Ok(text));
        assert!(is_public_key(&generate().1));
        let stage = staged(text, &["fra-1".to_owned(), "lon-1".to_owned()]);
        assert!(for_instance(&stage, "lon-1") && !for_instance(&stage, "fra-2"));
        assert!(for_instance(text, "fra-2"));
        assert!(!is_public_key("not a key"));
    }
}
