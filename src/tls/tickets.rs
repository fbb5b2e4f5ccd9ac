//! TLS session tickets: keys made in the process and rotated on a schedule, or
//! read from a file that several instances share (so a client resumes on any of
//! them behind one address), re-read while the router runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How often a shared key file is read again.
pub const KEY_FILE_RELOAD: Duration = Duration::from_secs(60);

/// A ticket is never longer than this: a longer ciphertext is refused unread
/// (partitioning-oracle attacks feed long ones).
const MAX_TICKET: usize = 4096;
const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("{path}: cannot read the ticket key file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no key in the file; put one key a line, e.g. `openssl rand 80 | base64 -w0 >> {path}`")]
    Empty { path: PathBuf },
    #[error("{path}, line {line}: {problem}; a key is 80 (or 48) random bytes in base64, e.g. `openssl rand 80 | base64 -w0`")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("the system random number generator failed")]
    Random,
}

/// One ticket key: its public name (the ticket's first 16 bytes) and the AEAD
/// key (ChaCha20-Poly1305) derived from its secret part.
struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

impl Key {
    /// From key material: the first 16 bytes name it, the rest is stretched
    /// into the AEAD key with HKDF-SHA256.
    fn from_material(material: &[u8]) -> Key {
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&material[..NAME_LEN]);
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"georouter session ticket")
            .extract(&material[NAME_LEN..]);
        let okm = prk
            .expand(&[b"chacha20-poly1305 key"], &CHACHA20_POLY1305)
            .expect("the AEAD key length is within HKDF's");
        Key {
            name,
            aead: LessSafeKey::new(UnboundKey::from(okm)),
        }
    }

    fn random() -> Result<Key, TicketKeyError> {
        let mut material = [0u8; 48];
        SystemRandom::new()
            .fill(&mut material)
            .map_err(|_| TicketKeyError::Random)?;
        Ok(Key::from_material(&material))
    }

    /// name || nonce || ciphertext || tag, the name also authenticated.
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.name),
                &mut out[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let nonce =
            Nonce::try_assume_unique_for_key(&ticket[NAME_LEN..NAME_LEN + NONCE_LEN]).ok()?;
        let mut body = ticket[NAME_LEN + NONCE_LEN..].to_vec();
        let plain_len = self
            .aead
            .open_in_place(nonce, Aad::from(self.name), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

/// Keys in order: the first seals new tickets, every one opens them.
struct KeyRing(Vec<Key>);

impl KeyRing {
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.first()?.seal(plain)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN || ticket.len() > MAX_TICKET {
            return None;
        }
        self.0
            .iter()
            .find(|k| k.name[..] == ticket[..NAME_LEN])?
            .open(ticket)
    }
}

/// Reads a key file: one base64 key a line (80 or 48 bytes), `#` comments and
/// blank lines skipped.
fn read_key_file(path: &Path) -> Result<KeyRing, TicketKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| TicketKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |problem: String| TicketKeyError::Line {
            path: path.to_owned(),
            line: i + 1,
            problem,
        };
        let material = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| bad(format!("not base64 ({e})")))?;
        if material.len() != 80 && material.len() != 48 {
            return Err(bad(format!("{} bytes", material.len())));
        }
        keys.push(Key::from_material(&material));
    }
    if keys.is_empty() {
        return Err(TicketKeyError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(KeyRing(keys))
}

/// Tickets under a shared key file's keys, re-read every [`KEY_FILE_RELOAD`]
/// by a thread of its own (a file that cannot be read then keeps the keys in
/// use, and says so in the log).
pub struct FileTicketer {
    path: PathBuf,
    keys: ArcSwap<KeyRing>,
    lifetime: u32,
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTicketer")
            .field("path", &self.path)
            .field("keys", &self.keys.load().0.len())
            .finish()
    }
}

impl FileTicketer {
    /// Reads `path` now (an error refuses the policy) and starts its re-reads.
    pub fn start(path: &Path, lifetime: Duration) -> Result<Arc<FileTicketer>, TicketKeyError> {
        let t = Arc::new(FileTicketer {
            path: path.to_owned(),
            keys: ArcSwap::from_pointee(read_key_file(path)?),
            lifetime: lifetime.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
        });
        let weak: Weak<FileTicketer> = Arc::downgrade(&t);
        let spawned = std::thread::Builder::new()
            .name("georouter-ticket-keys".into())
            .spawn(move || loop {
                std::thread::sleep(KEY_FILE_RELOAD);
                match weak.upgrade() {
                    Some(t) => t.reload(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(path = %path.display(), error = %e, "cannot start the ticket key file's re-reads; the keys read now stay in use");
        }
        Ok(t)
    }

    /// Reads the file again; keeps the keys in use when it cannot.
    pub fn reload(&self) {
        match read_key_file(&self.path) {
            Ok(ring) => self.keys.store(Arc::new(ring)),
            Err(e) => {
                tracing::warn!(error = %e, "ticket keys not reloaded; the previous keys stay in use")
            }
        }
    }
}

impl ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.load().seal(plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.keys.load().open(ticket)
    }
}

/// One random key, for [`rotating`].
struct Generated(KeyRing);

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Generated")
    }
}

impl ProducesTickets for Generated {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        0 // the rotator's lifetime is the one told to clients
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.seal(plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.0.open(ticket)
    }
}

fn generate() -> Result<Box<dyn ProducesTickets>, rustls::crypto::GetRandomFailed> {
    let key = Key::random().map_err(|_| rustls::crypto::GetRandomFailed)?;
    Ok(Box::new(Generated(KeyRing(vec![key]))))
}

/// Keys made in this process: a new one every `rotation`, the previous one
/// still opening tickets (so a ticket lives at most twice `rotation`).
pub fn rotating(rotation: Duration) -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    let secs = rotation.as_secs().clamp(1, u64::from(u32::MAX / 2)) as u32;
    Ok(Arc::new(rustls::ticketer::TicketRotator::new(
        secs, generate,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 80])
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("georouter-tickets-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_ticket_opens_under_the_same_file_elsewhere_and_after_a_rotation() {
        let path = dir().join("rotation.keys");
        std::fs::write(&path, format!("# fleet keys\n{}\n", key_line(1))).unwrap();
        let a = FileTicketer::start(&path, Duration::from_secs(3600)).unwrap();
        let b = FileTicketer::start(&path, Duration::from_secs(3600)).unwrap();
        let old = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&old).unwrap(), b"session state");
        // Rotation: a new key first; the old one still opens what it sealed.
        std::fs::write(&path, format!("{}\n{}\n", key_line(2), key_line(1))).unwrap();
        b.reload();
        let new = b.encrypt(b"newer").unwrap();
        assert_ne!(new[..NAME_LEN], old[..NAME_LEN], "sealed under the new key");
        assert_eq!(b.decrypt(&old).unwrap(), b"session state");
        assert_eq!(a.decrypt(&new), None, "a has not read the new key yet");
        a.reload();
        assert_eq!(a.decrypt(&new).unwrap(), b"newer");
        // The old key retired: its tickets no longer open.
        std::fs::write(&path, format!("{}\n", key_line(2))).unwrap();
        a.reload();
        assert_eq!(a.decrypt(&old), None);
    }

    #[test]
    fn a_tampered_or_oversized_ticket_is_refused() {
        let path = dir().join("tamper.keys");
        std::fs::write(&path, key_line(3)).unwrap();
        let t = FileTicketer::start(&path, Duration::from_secs(60)).unwrap();
        let mut ticket = t.encrypt(b"state").unwrap();
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(t.decrypt(&ticket), None);
        assert_eq!(t.decrypt(&[0u8; 10]), None);
        let mut long = t.encrypt(&[0u8; MAX_TICKET]).unwrap();
        long.truncate(MAX_TICKET + 1);
        assert_eq!(t.decrypt(&long), None);
    }

    #[test]
    fn a_bad_key_file_is_refused_with_its_line_and_a_broken_reload_keeps_the_keys() {
        let path = dir().join("bad.keys");
        std::fs::write(&path, format!("{}\nnot base64!\n", key_line(4))).unwrap();
        let e = FileTicketer::start(&path, Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("line 2: not base64"), "{e}");
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        let e = FileTicketer::start(&path, Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("line 1: 5 bytes"), "{e}");
        std::fs::write(&path, "# nothing\n").unwrap();
        let e = FileTicketer::start(&path, Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("no key in the file"), "{e}");
        std::fs::write(&path, key_line(5)).unwrap();
        let t = FileTicketer::start(&path, Duration::from_secs(60)).unwrap();
        let ticket = t.encrypt(b"kept").unwrap();
        std::fs::write(&path, "garbage\n").unwrap();
        t.reload();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"kept");
    }

    #[test]
    fn generated_keys_rotate_and_open_their_own_tickets() {
        let t = rotating(Duration::from_secs(3600)).unwrap();
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 7200);
        let ticket = t.encrypt(b"state").unwrap();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"state");
        let other = rotating(Duration::from_secs(3600)).unwrap();
        assert_eq!(other.decrypt(&ticket), None, "another process's keys");
    }
}
