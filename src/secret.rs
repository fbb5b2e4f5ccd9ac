//! Secret files a policy names (tokens, keys, passwords): refused when anyone
//! on the host may write them, warned about when group or others may read them.
//! `check` prints the warnings; `run` logs them and refuses what `check` refuses.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// The placeholder secrets the deploy files ship with: never a real secret.
pub const PLACEHOLDERS: [&str; 2] = [
    "REPLACE-WITH-A-LONG-RANDOM-TOKEN",
    "REPLACE-WITH-AT-LEAST-32-RANDOM-BYTES",
];

/// A secret file anyone on the host may replace.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {} is writable by everyone (mode {mode:o}): anyone on this host could replace it; chmod o-w {}", .path.display(), .path.display())]
pub struct WorldWritable {
    pub setting: String,
    pub path: PathBuf,
    pub mode: u32,
}

/// Every secret file of `config`, with the setting that names it.
fn secrets(config: &Config) -> Vec<(String, &Path)> {
    let mut out: Vec<(String, &Path)> = Vec::new();
    let a = &config.admin;
    for (setting, path) in [
        ("admin.token_file", &a.token_file),
        ("admin.read_token_file", &a.read_token_file),
    ] {
        if let Some(p) = path {
            out.push((setting.to_owned(), p));
        }
    }
    if let Some((_, key, _)) = &config.residency.cookie {
        out.push(("residency.cookie_key_file".to_owned(), key));
    }
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        for (j, c) in tls.certificates.iter().enumerate() {
            out.push((format!("listeners[{i}].tls.certificates[{j}].key"), &c.key));
        }
        if let Some(p) = &tls.resumption.ticket_keys {
            out.push((format!("listeners[{i}].tls.resumption.ticket_keys"), p));
        }
    }
    for (i, r) in config.regions.iter().enumerate() {
        if let Some(p) = &r.tls.client_key {
            out.push((format!("regions[{i}].tls.client_key"), p));
        }
    }
    if let Some(f) = &config.fleet {
        if let Some(p) = &f.password_file {
            out.push(("fleet.password_file".to_owned(), p));
        }
        if let Some(p) = &f.tls.client_key {
            out.push(("fleet.tls.client_key".to_owned(), p));
        }
    }
    out
}

/// Warnings for secret files that group or others may read; an error for one
/// that everyone may write. Files that cannot be read are left to whoever
/// reads them (with their own error).
#[cfg(unix)]
pub fn audit(config: &Config) -> Result<Vec<String>, WorldWritable> {
    use std::os::unix::fs::PermissionsExt;
    let mut warnings = Vec::new();
    for (setting, path) in secrets(config) {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o002 != 0 {
            return Err(WorldWritable {
                setting,
                path: path.to_owned(),
                mode,
            });
        }
        if mode & 0o044 != 0 {
            warnings.push(format!(
                "{setting}: {} can be read by {} (mode {mode:o}); chmod go-r {} (or 600)",
                path.display(),
                if mode & 0o004 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                path.display()
            ));
        }
    }
    warnings.extend(plain_http_password(config));
    Ok(warnings)
}

/// An etcd password sent over plain `http://`: anyone on the path can read it
/// (and then write the fleet's drains).
fn plain_http_password(config: &Config) -> Option<String> {
    let fleet = config.fleet.as_ref()?;
    let has_password = fleet.password_file.is_some() || fleet.password_env.is_some();
    let plain: Vec<String> = fleet
        .endpoints
        .iter()
        .filter(|u| u.scheme_str() == Some("http"))
        .map(|u| u.to_string())
        .collect();
    (has_password && !plain.is_empty()).then(|| {
        format!(
            "fleet.endpoints: the etcd password goes over plain http to {}; use https:// endpoints (fleet.tls) so it cannot be read on the way",
            plain.join(", ")
        )
    })
}

#[cfg(not(unix))]
pub fn audit(_config: &Config) -> Result<Vec<String>, WorldWritable> {
    Ok(Vec::new())
}
