//! The command line: subcommands, their flags and how their values are read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "georouter",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("GEOROUTER_COMMIT"), ")"),
    about = "A geo-aware global traffic router"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// The log's format: text (key=value) or json (one object per line);
    /// default: the policy's server.log_format for `run`, else text.
    #[arg(long, global = true, value_enum, env = "GEOROUTER_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Serve traffic with a policy file.
    Run {
        /// The policy file (TOML); paths inside it are relative to it.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Where the admin API listens, over the policy's admin.address (a
        /// container's: 0.0.0.0:9901). Off loopback, an admin token is required.
        #[arg(long, value_name = "ADDR", env = "GEOROUTER_ADMIN_ADDRESS")]
        admin_address: Option<String>,
    },
    /// Validate a policy file without serving (like `nginx -t`); exit 0 or 1.
    Check {
        /// The policy file (TOML) to validate.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// As for `run`: the admin address to check the policy with.
        #[arg(long, value_name = "ADDR", env = "GEOROUTER_ADMIN_ADDRESS")]
        admin_address: Option<String>,
    },
    /// Geography tools.
    Geo {
        #[command(subcommand)]
        command: GeoCommand,
    },
    /// Run the embedded default: four simulated regions and the router in front.
    Demo {
        /// Where the router listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin API listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Bearer token for mutating admin calls.
        #[arg(long)]
        admin_token: Option<String>,
        /// Geo database (default: the shipped country database, found through
        /// $GEOROUTER_GEO_DB, data/ here, beside the binary, or in the
        /// repository it was built in).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// Artificial latency of a simulated region, e.g. `eu-west=40ms` (repeatable).
        #[arg(long, value_name = "REGION=DURATION", value_parser = parse_latency)]
        latency: Vec<(String, Duration)>,
    },
    /// A disaster-recovery drill: drain (or kill) a region under a bounded stream
    /// of requests, measure detection, switch, RTO and failback.
    Drill(DrillArgs),
    /// Print a shell completion script: `georouter completions bash > /etc/bash_completion.d/georouter`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `georouter man > /usr/share/man/man1/georouter.1`.
    Man,
    /// The fleet through etcd directly (the policy's [fleet]), for when no
    /// instance is reachable.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
        /// The policy file whose [fleet] names the etcd cluster.
        #[arg(short, long, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum FleetCommand {
    /// The live instances, whether each applied the latest drain, the gone ones, the drains.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drain a region on every instance (refused for the last serving region of
    /// a jurisdiction unless --force).
    Drain {
        /// The region to drain (its name in the policy).
        region: String,
        /// Why (shown by /regions and `fleet status`).
        #[arg(long, default_value = "no reason given")]
        reason: String,
        /// Drain even the last serving region of a jurisdiction.
        #[arg(long)]
        force: bool,
        /// How long to wait for every live instance to apply it.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Push the policy file (-c) to every instance (fleet.policy = true): checked
    /// here first, checked again by each instance, applied or refused by each.
    Push {
        /// How long to wait for every live instance to apply or refuse it.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// The operator's Ed25519 private key (PKCS#8, `fleet keygen`): instances
        /// apply only a policy signed by one of their fleet.policy_keys.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// First to these live instances: a count (the first N by name) or
        /// their names (fra-1,ams-2); the rest only when each of them applied
        /// it. Any refusal halts the push and says where.
        #[arg(long, value_name = "N|NAMES", default_value = "0")]
        canary: georouter::fleet::cli::Canary,
    },
    /// Make an Ed25519 key pair for signing fleet policies: the private key
    /// goes to --out (mode 600), the public key (for fleet.policy_keys) to stdout.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// After etcd lost its data (or was restored from another time): write back
    /// the fleet's epoch and the fleet drains an instance last applied, from its
    /// state file, so every instance follows etcd again.
    Restore {
        /// An instance's state file (admin.state_file).
        #[arg(long, value_name = "STATE_FILE")]
        from: PathBuf,
    },
    /// Undrain a region on every instance.
    Undrain {
        /// The region to undrain (its name in the policy).
        region: String,
        /// How long to wait for every live instance to apply it.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

#[derive(clap::Args)]
pub(crate) struct DrillArgs {
    /// Drill an in-process demo (simulated regions and a router on loopback)
    /// instead of a running router.
    #[arg(long)]
    pub(crate) demo: bool,
    /// The router's listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) target: SocketAddr,
    /// The router's admin API.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub(crate) admin: SocketAddr,
    /// The region to drain or kill (with --demo: eu-west).
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Mutating admin token (or GEOROUTER_ADMIN_TOKEN).
    #[arg(long, env = "GEOROUTER_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Instead of draining: wait for the operator to kill the region and bring
    /// it back (with --demo: kill and restart the simulated region).
    #[arg(long)]
    pub(crate) kill: bool,
    /// Drain even the last serving region of a jurisdiction.
    #[arg(long)]
    pub(crate) force: bool,
    /// Instead of draining the whole region: move this share of its clients
    /// (a partial drain, e.g. 10%), then give them back. Plays --clients
    /// clients (the router must trust the drill's X-Forwarded-For).
    #[arg(long, value_parser = parse_share, conflicts_with_all = ["kill", "force"])]
    pub(crate) shift: Option<f64>,
    /// Clients played with --shift, varying the X-Forwarded-For address.
    #[arg(long, default_value_t = 200)]
    pub(crate) clients: u32,
    /// Requests per second.
    #[arg(long, default_value_t = 200)]
    pub(crate) rate: u32,
    /// Length of the steady phases: before the fault and while it lasts.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// The longest wait for detection, repair or failback.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// Request path.
    #[arg(long, default_value = "/")]
    pub(crate) path: String,
    /// Extra request header, `Name: value` (repeatable); with --demo,
    /// `X-Forwarded-For: 80.128.0.1` (a client in Germany).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub(crate) headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `10%` or `0.1`: a share of 0 to 1.
pub(crate) fn parse_share(s: &str) -> Result<f64, String> {
    let v = s.trim();
    let share = match v.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => v.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?}: a share such as 10% or 0.1"))?;
    if (0.0..=1.0).contains(&share) && share > 0.0 {
        Ok(share)
    } else {
        Err(format!("{s:?}: a share above 0% and at most 100%"))
    }
}

pub(crate) fn parse_header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected 'Name: value'"))?;
    Ok((
        k.trim().parse().map_err(|e| format!("{k:?}: {e}"))?,
        v.trim().parse().map_err(|e| format!("{v:?}: {e}"))?,
    ))
}

#[derive(Subcommand)]
pub(crate) enum GeoCommand {
    /// Print what the router knows about an address.
    Lookup {
        /// The address to look up (IPv4 or IPv6).
        ip: std::net::IpAddr,
        /// A MaxMind DB file (default: the shipped country database, found
        /// through $GEOROUTER_GEO_DB, data/ here, beside the binary, or in the
        /// repository it was built in).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
    },
}

pub(crate) fn parse_latency(s: &str) -> Result<(String, Duration), String> {
    let (name, d) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected REGION=DURATION, e.g. eu-west=40ms"))?;
    let d = humantime::parse_duration(d).map_err(|e| format!("{d:?}: {e}"))?;
    Ok((name.to_owned(), d))
}
