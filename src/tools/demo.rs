//! The embedded default: four simulated regions on loopback and the policy in
//! `config/demo.toml` in front of them, so a fresh clone has something to curl.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, FromTomlError};
use crate::tools::sim::SimRegion;

/// The demo's policy template.
pub const POLICY: &str = include_str!("../../config/demo.toml");

/// The demo's regions, in the order they are declared.
pub const REGIONS: [&str; 4] = ["us-east", "eu-west", "eu-central", "ap-southeast"];

/// Starts the simulated regions on ephemeral loopback ports, each with its
/// artificial latency (`latency(name)`).
pub async fn spawn_regions(latency: impl Fn(&str) -> Duration) -> std::io::Result<Vec<SimRegion>> {
    let mut regions = Vec::with_capacity(REGIONS.len());
    for name in REGIONS {
        let r = SimRegion::spawn(name).await?;
        r.set_latency(latency(name));
        regions.push(r);
    }
    Ok(regions)
}

/// The demo policy with its listener, admin address and region URLs filled in,
/// and the geo database when there is one.
pub fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    regions: &[SimRegion],
    geo_database: Option<&Path>,
) -> Result<Config, FromTomlError> {
    let mut text = POLICY
        .replace("@LISTEN@", &listen.to_string())
        .replace("@ADMIN@", &admin.to_string());
    for r in regions {
        text = text.replace(&format!("@URL:{}@", r.name()), &r.url());
    }
    if let Some(db) = geo_database {
        let path = db.display().to_string().replace('\\', "/");
        text.push_str(&format!("\n[geo]\ndatabase = {path:?}\n"));
    }
    Config::from_toml(&text)
}

/// The demo's mutating admin token unless `--admin-token` gives another (the
/// admin API listens on loopback only).
pub const ADMIN_TOKEN: &str = "demo-token";

/// The demo on ephemeral loopback ports, in this process (for `drill --demo`):
/// its simulated regions, the running router, its listener and admin addresses.
pub struct InProcess {
    pub regions: Vec<SimRegion>,
    pub running: crate::launch::Running,
    pub target: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts [`InProcess`] and waits (up to 10 s) for its first health checks.
pub async fn in_process(db: &Path, token: &str) -> Result<InProcess, InProcessError> {
    let regions = spawn_regions(|_| Duration::ZERO).await?;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let config = config(any, any, &regions, Some(db))?;
    let listeners = crate::edge::server::bind(&config.listeners, &config.server)?;
    let target = listeners[0].tcp.local_addr()?;
    let admin = std::net::TcpListener::bind(any)?;
    let admin_addr = admin.local_addr()?;
    let running = crate::launch::start(
        config,
        listeners,
        admin,
        crate::control::Options {
            config_path: None,
            admin_token: Some(token.to_owned()),
            fleet_policy_revision: 0,
            ..Default::default()
        },
    )?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !running.control.ready() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(InProcess {
        regions,
        running,
        target,
        admin: admin_addr,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    #[error("cannot start the demo: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Policy(#[from] FromTomlError),
    #[error(transparent)]
    Start(#[from] crate::launch::StartError),
    #[error(transparent)]
    Bind(#[from] crate::edge::server::BindError),
}

/// What the demo prints once it serves.
pub fn banner(listen: SocketAddr, admin: SocketAddr, token: &str) -> String {
    format!(
        "georouter demo: 4 simulated regions ({regions}) behind http://{listen}\n\
         admin API on http://{admin}\n\
         status page: open http://{admin}/ in a browser (drain buttons take the token {token:?})\n\n\
         Loopback is a trusted proxy here, so X-Forwarded-For plays a client anywhere:\n  \
         curl -i -H 'X-Forwarded-For: 80.128.0.1' http://{listen}/    # Germany (EU resident): eu-west\n  \
         curl -i -H 'X-Forwarded-For: 8.8.8.8' http://{listen}/       # United States: us-east\n  \
         curl -i -H 'X-Forwarded-For: 1.0.16.1' http://{listen}/      # Japan: ap-southeast\n  \
         curl -i -H 'X-Forwarded-For: 8.8.8.8' -H 'x-georouter-home: eu' http://{listen}/\n  \
                                                                 # EU resident travelling in the US: eu-west\n  \
         curl -i --http2-prior-knowledge http://{listen}/             # h2c\n  \
         curl -s http://{listen}/echo                                 # what the region received\n  \
         curl -s http://{admin}/regions                         # regions and their state\n  \
         curl -s -X POST -H 'Authorization: Bearer {token}' 'http://{admin}/regions/eu-west/drain?reason=drill'\n  \
         curl -s -X POST -H 'Authorization: Bearer {token}' http://{admin}/regions/eu-west/undrain\n  \
         curl -s http://{admin}/metrics | grep ^georouter_region\n\n\
         Ctrl-C stops it (in-flight requests finish first).\n",
        regions = REGIONS.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn demo_policy_is_valid() {
        let regions = spawn_regions(|_| Duration::ZERO).await.unwrap();
        let c = config(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9901".parse().unwrap(),
            &regions,
            Some(Path::new("data/geo-whois-asn-country.mmdb")),
        )
        .unwrap();
        assert_eq!(c.regions.len(), 4);
        assert_eq!(c.jurisdictions.len(), 1);
        assert_eq!(c.routes[0].rules.len(), 3);
        assert!(c.geo_database.is_some());
    }
}
