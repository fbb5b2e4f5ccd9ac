//! `[fleet]`: the etcd cluster many routers share drains (and optionally the
//! policy) through, validated with every error at its path.

use std::path::PathBuf;
use std::time::Duration;

use http::uri::Scheme;
use http::Uri;

use super::{raw, Invalid, RegionTls};

/// Where the fleet's shared state lives and who this router is in it.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub endpoints: Vec<Uri>,
    /// Every key of the fleet starts with it (no trailing `/`).
    pub prefix: String,
    pub instance: String,
    /// CA and client certificate for etcd, when its endpoints are `https://`.
    pub tls: RegionTls,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub lease_ttl: Duration,
    pub timeout: Duration,
    pub policy: bool,
    /// Ed25519 public keys (base64): a pushed policy applies only when one of
    /// them signed it.
    pub policy_keys: Vec<String>,
}

/// This host's name, for the default instance id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("georouter-{}", std::process::id()))
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn fleet(f: raw::RawFleet, errs: &mut Invalid) -> FleetSettings {
    if f.endpoints.is_empty() {
        errs.push(
            "fleet.endpoints",
            "no etcd endpoint: list its client URLs (e.g. [\"http://10.0.0.5:2379\"])".to_owned(),
        );
    }
    let endpoints = endpoints(&f.endpoints, errs);
    let prefix = f.prefix.trim_end_matches('/').to_owned();
    if !prefix.starts_with('/') || prefix.len() < 2 {
        errs.push(
            "fleet.prefix",
            format!(
                "{:?}: a prefix starts with / and names the fleet (e.g. \"/georouter/prod\")",
                f.prefix
            ),
        );
    }
    let instance = f.instance.clone().unwrap_or_else(hostname);
    if !is_id(&instance) {
        errs.push(
            "fleet.instance",
            format!("{instance:?}: use 1 to 128 letters, digits, '-', '_' or '.'"),
        );
    }
    credentials(&f, errs);
    if f.lease_ttl < Duration::from_secs(2) {
        errs.push(
            "fleet.lease_ttl",
            format!(
                "{}: at least 2s (an instance renews its lease every third of it)",
                humantime::format_duration(f.lease_ttl)
            ),
        );
    }
    if f.policy && f.policy_keys.is_empty() {
        errs.push(
            "fleet.policy_keys",
            "a fleet policy must be signed: list the operators' Ed25519 public keys (make a pair with `georouter fleet keygen --out FILE`)".to_owned(),
        );
    }
    for (i, k) in f.policy_keys.iter().enumerate() {
        if !crate::signing::is_public_key(k) {
            errs.push(
                format!("fleet.policy_keys[{i}]"),
                format!("{k:?} is not an Ed25519 public key in base64 (`georouter fleet keygen` prints one)"),
            );
        }
    }
    if f.timeout.is_zero() {
        errs.push(
            "fleet.timeout",
            "must be more than 0 (e.g. \"2s\")".to_owned(),
        );
    }
    FleetSettings {
        endpoints,
        prefix,
        instance,
        tls: RegionTls {
            ca: f.ca_file,
            client_cert: f.cert_file,
            client_key: f.key_file,
        },
        username: f.username,
        password_file: f.password_file,
        password_env: f.password_env,
        lease_ttl: f.lease_ttl,
        timeout: f.timeout,
        policy: f.policy,
        policy_keys: f.policy_keys.clone(),
    }
}

/// The etcd client URLs, each checked.
fn endpoints(raw: &[String], errs: &mut Invalid) -> Vec<Uri> {
    let mut endpoints = Vec::new();
    for (i, e) in raw.iter().enumerate() {
        let path = format!("fleet.endpoints[{i}]");
        match e.parse::<Uri>() {
            Ok(u)
                if (u.scheme() == Some(&Scheme::HTTP) || u.scheme() == Some(&Scheme::HTTPS))
                    && u.authority().is_some()
                    && u.path() == "/" =>
            {
                endpoints.push(u)
            }
            _ => errs.push(
                path,
                format!(
                    "{e:?} is not an etcd client URL: use http://host:port or https://host:port"
                ),
            ),
        }
    }
    endpoints
}

/// The client certificate and the password each come whole.
fn credentials(f: &raw::RawFleet, errs: &mut Invalid) {
    if f.cert_file.is_some() != f.key_file.is_some() {
        errs.push(
            "fleet.cert_file",
            "cert_file and key_file go together (the client certificate for mTLS)".to_owned(),
        );
    }
    if (f.password_file.is_some() || f.password_env.is_some()) && f.username.is_none() {
        errs.push(
            "fleet.username",
            "a password is set without a username".to_owned(),
        );
    }
    if f.username.is_some() && f.password_file.is_none() && f.password_env.is_none() {
        errs.push(
            "fleet.password_file",
            "a username needs its password: password_file or password_env".to_owned(),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const REGIONS: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"a\"\nendpoints = [{ url = \"http://127.0.0.1:1\" }]\n[[routes]]\nregions = [\"a\"]\n";

    #[test]
    fn a_fleet_section_is_read_with_its_defaults() {
        let c = Config::from_toml(&format!(
            "[fleet]\nendpoints = [\"http://10.0.0.5:2379\"]\ninstance = \"fra-1\"\n{REGIONS}"
        ))
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.prefix, "/georouter");
        assert_eq!(f.instance, "fra-1");
        assert_eq!(f.lease_ttl, std::time::Duration::from_secs(10));
    }

    #[test]
    fn every_fleet_mistake_is_reported_at_its_path() {
        let e = Config::from_toml(&format!(
            "[fleet]\nendpoints = [\"etcd:2379\"]\nprefix = \"nope\"\ninstance = \"a b\"\n\
             cert_file = \"c.pem\"\npassword_env = \"P\"\nlease_ttl = \"1s\"\n{REGIONS}"
        ))
        .unwrap_err()
        .to_string();
        for path in [
            "fleet.endpoints[0]",
            "fleet.prefix",
            "fleet.instance",
            "fleet.cert_file",
            "fleet.username",
            "fleet.lease_ttl",
        ] {
            assert!(e.contains(path), "{path} in {e}");
        }
    }
}
