//! Policy reload: load and validate the file and compile its table off the
//! async runtime, then swap table, region states and admin tokens in as one
//! change; the file watch that triggers it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::record::Record;
use super::Control;
use crate::config::{Config, LoadError};
use crate::control::auth::{AdminAuth, AuthError};
use crate::routing::accounting::RegionAccount;
use crate::routing::table::{RoutingTable, TableError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no policy file to reload from (the router was started without one)")]
    NoFile,
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("admin tokens: {0}")]
    Auth(#[from] AuthError),
    #[error("the policy load was interrupted (the loading task panicked); the previous policy keeps serving")]
    Interrupted,
    #[error("this router takes its policy from the fleet (fleet.policy = true): change it with `georouter fleet push -c FILE`")]
    FromFleet,
    #[error("the fleet's policy: {0}")]
    Text(#[from] crate::config::FromTomlError),
    #[error(
        "the fleet's policy changes [fleet] ({0}); a router reads [fleet] from its own file only"
    )]
    FleetChanged(String),
}

/// What a policy file holds, loaded, validated and compiled.
struct Loaded {
    config: Config,
    table: RoutingTable,
    auth: AdminAuth,
}

/// A validated policy's table and admin tokens.
fn compile(config: Config, token: Option<&str>) -> Result<Loaded, ReloadError> {
    let table = RoutingTable::compile(&config)?;
    let auth = AdminAuth::from_settings(&config.admin, token)?;
    Ok(Loaded {
        config,
        table,
        auth,
    })
}

/// The effective TOML of a reloaded policy as it is in service (the
/// restart-only `sections` as `running` has them) and, apart, what the file
/// says of those sections (empty when nothing waits for a restart).
fn split_effective(running: &str, file: &str, sections: &[&str]) -> (std::sync::Arc<str>, String) {
    let (Ok(mut merged), Ok(old)) = (
        toml::from_str::<toml::Table>(file),
        toml::from_str::<toml::Table>(running),
    ) else {
        return (std::sync::Arc::from(file), String::new());
    };
    let mut waiting = toml::Table::new();
    for section in sections {
        let mut path = section.split('.');
        let top = path.next().unwrap_or_default();
        match path.next() {
            None => {
                if let Some(v) = merged.remove(top) {
                    waiting.insert(top.to_owned(), v);
                }
                if let Some(v) = old.get(top) {
                    merged.insert(top.to_owned(), v.clone());
                }
            }
            Some(key) => {
                let old_value = old.get(top).and_then(|t| t.get(key)).cloned();
                if let Some(toml::Value::Table(t)) = merged.get_mut(top) {
                    if let Some(v) = t.remove(key) {
                        let mut sub = toml::Table::new();
                        sub.insert(key.to_owned(), v);
                        waiting.insert(top.to_owned(), toml::Value::Table(sub));
                    }
                    if let Some(v) = old_value {
                        t.insert(key.to_owned(), v);
                    }
                }
            }
        }
    }
    let in_service = toml::to_string_pretty(&merged).unwrap_or_else(|_| file.to_owned());
    let waiting = if waiting.is_empty() {
        String::new()
    } else {
        toml::to_string_pretty(&waiting).unwrap_or_default()
    };
    (std::sync::Arc::from(in_service), waiting)
}

/// Sections (or `section.key`s) read only at start: a change to them waits for
/// a restart. `[server]`'s per-request settings (limits on URI and body, Host,
/// the region header, TRACE, encoded slashes, the access log) apply at reload.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    [
        (
            "listeners",
            format!("{:?}", old.listeners) != format!("{:?}", new.listeners),
        ),
        ("admin.address", old.admin.address != new.admin.address),
        (
            "client.max_connections_per_ip",
            old.client.max_connections_per_ip != new.client.max_connections_per_ip,
        ),
        (
            "fleet",
            format!("{:?}", old.fleet) != format!("{:?}", new.fleet),
        ),
        ("server.workers", a.workers != b.workers),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "server.header_read_timeout",
            a.header_read_timeout != b.header_read_timeout,
        ),
        ("server.idle_timeout", a.idle_timeout != b.idle_timeout),
        (
            "server.max_header_bytes",
            a.max_header_bytes != b.max_header_bytes,
        ),
        ("server.max_headers", a.max_headers != b.max_headers),
        (
            "server.http2_max_concurrent_streams",
            a.http2_max_concurrent_streams != b.http2_max_concurrent_streams,
        ),
        (
            "server.http2_max_control_frames",
            a.http2_max_control_frames != b.http2_max_control_frames,
        ),
        (
            "server.http2_stream_window, http2_connection_window, http2_max_frame_size, http2_adaptive_window",
            a.http2 != b.http2,
        ),
        (
            "server.shutdown_grace",
            a.shutdown_grace != b.shutdown_grace,
        ),
    ]
    .into_iter()
    .filter_map(|(what, changed)| changed.then_some(what))
    .collect()
}

/// Keeps in `new` what `running` serves of the sections read only at start.
fn keep_restart_only(new: &mut Config, running: &Config) {
    new.listeners = running.listeners.clone();
    new.admin.address = running.admin.address;
    new.client.max_connections_per_ip = running.client.max_connections_per_ip;
    new.fleet = running.fleet.clone();
    let (s, r) = (&mut new.server, &running.server);
    s.workers = r.workers;
    s.max_connections = r.max_connections;
    s.header_read_timeout = r.header_read_timeout;
    s.idle_timeout = r.idle_timeout;
    s.max_header_bytes = r.max_header_bytes;
    s.max_headers = r.max_headers;
    s.http2_max_concurrent_streams = r.http2_max_concurrent_streams;
    s.http2_max_control_frames = r.http2_max_control_frames;
    s.http2 = r.http2;
    s.shutdown_grace = r.shutdown_grace;
}

impl Control {
    /// Loads the policy file again and swaps it in, or keeps the one in service
    /// and says why. Health, drains and RTT history carry over by region name.
    pub async fn reload(self: &Arc<Self>, trigger: &str) -> Result<u64, ReloadError> {
        if self.fleet.as_ref().is_some_and(|f| f.settings.policy) {
            return self.reloaded(trigger, Err(ReloadError::FromFleet));
        }
        let loaded = self.load().await;
        self.reloaded(trigger, loaded)
    }

    /// Applies a policy given as text (the fleet's), or keeps the one in
    /// service and says why. Its `[fleet]` must be this router's own.
    pub async fn reload_text(
        self: &Arc<Self>,
        text: String,
        trigger: &str,
    ) -> Result<u64, ReloadError> {
        let token = self.options.admin_token.clone();
        let own = self.config().fleet.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let config = Config::from_toml(&text)?;
            let same = |a: &Option<crate::config::FleetSettings>| {
                a.as_ref()
                    .map(|f| (f.endpoints.clone(), f.prefix.clone(), f.policy))
            };
            if same(&config.fleet) != same(&own) {
                return Err(ReloadError::FleetChanged(
                    "endpoints, prefix or policy differ".to_owned(),
                ));
            }
            compile(config, token.as_deref())
        })
        .await
        .map_err(|_| ReloadError::Interrupted)
        .and_then(|r| r);
        self.reloaded(trigger, loaded)
    }

    fn reloaded(
        self: &Arc<Self>,
        trigger: &str,
        loaded: Result<Loaded, ReloadError>,
    ) -> Result<u64, ReloadError> {
        let result = loaded.map(|loaded| self.apply(loaded));
        let m = &self.state.metrics;
        match &result {
            Ok(generation) => {
                m.control
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                m.control.config_generation.set(*generation as i64);
                tracing::info!(%trigger, generation, "policy reloaded");
                self.journal.record(
                    "",
                    "reload",
                    format!("generation {generation}"),
                    trigger.to_owned(),
                );
            }
            Err(e) => {
                m.control
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(%trigger, error = %e, "policy reload rejected; the previous policy keeps serving");
                self.journal.record(
                    "",
                    "reload",
                    "rejected".to_owned(),
                    format!("{trigger}: {e}"),
                );
            }
        }
        result
    }

    /// Reads, validates and compiles the policy file on the blocking pool: the
    /// geo database walk alone takes a fraction of a second.
    async fn load(&self) -> Result<Loaded, ReloadError> {
        let path: PathBuf = self
            .options
            .config_path
            .clone()
            .ok_or(ReloadError::NoFile)?;
        let token = self.options.admin_token.clone();
        let overrides = self.options.overrides.clone();
        tokio::task::spawn_blocking(move || {
            compile(Config::load_with(&path, &overrides)?, token.as_deref())
        })
        .await
        .map_err(|_| ReloadError::Interrupted)?
    }

    /// Swaps a loaded policy in; returns its generation.
    fn apply(self: &Arc<Self>, loaded: Loaded) -> u64 {
        let Loaded {
            mut config,
            table,
            auth,
        } = loaded;
        // The table and its records change together, and go out as one
        // snapshot: no publisher in between sees one without the other.
        let publishing = super::lock(&self.publishing);
        let in_service = self.config();
        let pending = restart_only_changes(&in_service, &config);
        for section in &pending {
            tracing::warn!(
                section,
                "changed in the policy file; it takes effect at the next restart"
            );
        }
        // What is in service keeps the sections read only at start; what the
        // file says of them waits for a restart (GET /config shows both).
        let file_effective = config.effective.clone();
        keep_restart_only(&mut config, &in_service);
        let (effective, waiting) =
            split_effective(&in_service.effective, &file_effective, &pending);
        config.effective = effective;
        if let Ok(mut p) = self.pending_restart.lock() {
            *p = waiting;
        }
        let scales = self.drains.read(|d| d.scales());
        let mut health = self.health();
        let mut regions = HashMap::new();
        for spec in &config.regions {
            let account = || {
                Arc::new(RegionAccount::new(
                    spec.name.clone(),
                    &self.state.metrics,
                    &spec.endpoints,
                    &spec.capacity,
                ))
            };
            let rec = match health.regions.remove(&spec.name) {
                Some(mut rec) => {
                    rec.check = spec.health.clone();
                    if rec.account.load.tracks(&spec.endpoints) {
                        rec.account
                            .load
                            .set_capacity(&spec.endpoints, &spec.capacity);
                    } else {
                        // Other endpoints: their load starts afresh.
                        rec.account = account();
                    }
                    rec
                }
                None => {
                    let kept = scales
                        .iter()
                        .find(|(r, _)| r == spec.name.as_str())
                        .map(|(_, s)| s.clone());
                    Record::new(spec.health.clone(), account()).with_scale(kept)
                }
            };
            regions.insert(spec.name.clone(), rec);
        }
        let names: Vec<&str> = health
            .regions
            .keys()
            .chain(regions.keys())
            .map(|n| n.as_str())
            .collect();
        for gone in health.regions.keys() {
            tracing::info!(region = %gone, "region left the policy");
            crate::routing::accounting::forget_region(&self.state.metrics, gone.as_str(), &names);
        }
        crate::routing::accounting::export_known_series(&self.state.metrics, &table);
        let table = Arc::new(table);
        let config = Arc::new(config);
        health.regions = regions;
        health.table = table.clone();
        self.restart_checkers(&mut health);
        drop(health);
        self.drains.change(|d| d.set_fences(super::fences(&table)));
        // Refusals the new fences make or lift are in the snapshot's gauges.
        self.drains.refused_changed();
        self.state.config.store(config);
        // The table and its states go out as one snapshot: no request sees the new
        // table with the old states, or the other way round.
        self.publish_while(&publishing);
        drop(publishing);
        self.auth.store(Arc::new(auth));
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Reloads when the policy file's bytes change (read off the runtime).
    pub(super) async fn watch_file(self: Arc<Self>, path: PathBuf) {
        let mut shutdown = self.shutdown.clone();
        let mut seen = tokio::fs::read(&path).await.ok();
        loop {
            let every = self.config().reload.watch_interval;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let now = tokio::fs::read(&path).await.ok();
            if now.is_some() && now != seen {
                seen = now;
                let _ = self.reload("file change").await;
            }
        }
    }
}
