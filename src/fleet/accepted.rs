//! The fleet policy an instance last accepted, kept beside its state file so
//! that a restart serves it (not the bootstrap file) until the fleet says otherwise.

/// Where an instance keeps the last fleet policy it accepted: beside its
/// state file (`state.json` -> `state.policy.toml`). None without a state file
/// or without `fleet.policy`.
pub fn accepted_policy_path(config: &crate::config::Config) -> Option<std::path::PathBuf> {
    config.fleet.as_ref().filter(|f| f.policy)?;
    Some(
        config
            .admin
            .state_file
            .as_ref()?
            .with_extension("policy.toml"),
    )
}

/// Keeps a fleet policy just accepted (its etcd revision in the first line)
/// beside the instance's own state file, written aside, flushed and renamed
/// over, so that a restart serves it.
pub fn keep_accepted_policy(state_file: Option<&std::path::Path>, text: &str, revision: i64) {
    let Some(path) = state_file.map(|f| f.with_extension("policy.toml")) else {
        return;
    };
    let body = format!("# georouter: fleet policy accepted at etcd revision {revision}\n{text}");
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        std::io::Write::write_all(&mut f, body.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
        tracing::warn!(target: "georouter::fleet", path = %path.display(), error = %e, "the fleet policy applies but could not be kept for a restart");
    }
}

/// At start, with `fleet.policy`: the last fleet policy this instance
/// accepted, and its revision, instead of the bootstrap file (its own
/// `[fleet]` section, the instance's identity and credentials, kept from the
/// bootstrap). None when there is none, or it no longer loads (then the
/// bootstrap serves, with a warning).
pub fn last_accepted_policy(
    bootstrap: &crate::config::Config,
) -> Option<(crate::config::Config, i64)> {
    let path = accepted_policy_path(bootstrap)?;
    let text = std::fs::read_to_string(&path).ok()?;
    let revision = text
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|r| r.parse::<i64>().ok())
        .unwrap_or(0);
    match crate::config::Config::from_toml(&text) {
        Ok(mut config) => {
            config.fleet.clone_from(&bootstrap.fleet);
            config
                .admin
                .state_file
                .clone_from(&bootstrap.admin.state_file);
            Some((config, revision))
        }
        Err(e) => {
            tracing::warn!(target: "georouter::fleet", path = %path.display(), error = %e, "the fleet policy kept from before does not load; serving the bootstrap file");
            None
        }
    }
}
