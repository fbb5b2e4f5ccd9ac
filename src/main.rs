//! The `georouter` binary: CLI, logging, sockets and signals. Everything else is
//! in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

use georouter::config::{Config, Overrides};
use georouter::{control, edge::server, launch, tools::demo};

#[path = "main/cli.rs"]
mod cli;

use cli::{Cli, Command, DrillArgs, FleetCommand, GeoCommand, LogFormat};

/// mimalloc purges freed pages only when the thread allocates again, after a
/// delay: an idle worker would hold a burst's memory for good. A forced
/// `mi_collect` returns every empty page and segment of the thread's heap
/// (measured with bench/idle.sh: after 8,000 connections close, 277 MB stayed
/// resident without it, 36 MB with it; unforced, 162 MB). Once a second per
/// worker, it costs nothing measurable.
fn purge_allocator() {
    // SAFETY: mi_collect has no preconditions; it acts on the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    georouter::memory::set_purge(purge_allocator);
    let cli = Cli::parse();
    // A drill prints a report; the router's own log would drown it.
    let default_filter = if matches!(cli.command, Command::Drill(_)) {
        "warn"
    } else {
        "info"
    };
    // The policy's choice for `run`, unless the flag or the variable says.
    let format = cli.log_format.unwrap_or(match &cli.command {
        Command::Run { config, .. } => match Config::load(config) {
            Ok(c) if c.server.log_json => LogFormat::Json,
            _ => LogFormat::Text,
        },
        _ => LogFormat::Text,
    });
    init_logging(default_filter, format);
    let result = match cli.command {
        Command::Check {
            config,
            admin_address,
        } => check(&config, &Overrides { admin_address }),
        Command::Geo {
            command: GeoCommand::Lookup { ip, db },
        } => geo_lookup(ip, &db.unwrap_or_else(georouter::geo::default_database)),
        Command::Run {
            config,
            admin_address,
        } => control_runtime().and_then(|rt| rt.block_on(run(config, Overrides { admin_address }))),
        Command::Demo {
            listen,
            admin,
            admin_token,
            db,
            latency,
        } => control_runtime().and_then(|rt| {
            rt.block_on(run_demo(
                listen,
                admin,
                admin_token,
                db.unwrap_or_else(georouter::geo::default_database),
                latency,
            ))
        }),
        Command::Drill(args) => control_runtime().and_then(|rt| rt.block_on(drill(args))),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics when stdout is a closed pipe.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "georouter", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script).map_err(Into::into)
        }
        Command::Man => man(),
        Command::Fleet { command, config } => {
            control_runtime().and_then(|rt| rt.block_on(fleet(command, config)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `georouter check ... | head`: the reader left; nothing more to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("georouter: {}", explained(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a cause whose text its error
/// already quotes (most of ours do) is not repeated.
fn explained(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(part.as_str()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The control plane (admin API, signals) runs on the main thread; traffic runs
/// on worker threads with a runtime each.
fn control_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")
}

fn geo_lookup(ip: std::net::IpAddr, db: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    use georouter::geo::{GeoLookup, MmdbGeo};
    let geo = MmdbGeo::open(db)?;
    let f = geo.lookup(ip);
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    writeln!(out, "ip           {ip}")?;
    writeln!(
        out,
        "country      {}",
        show(f.country.map(|c| c.to_string()))
    )?;
    writeln!(
        out,
        "continent    {}",
        show(f.continent.map(|c| c.to_string()))
    )?;
    writeln!(
        out,
        "subdivision  {}",
        show(f.subdivision.map(|c| c.as_str().to_owned()))
    )?;
    writeln!(
        out,
        "location     {}",
        show(f.location.map(|l| format!("{:.4}, {:.4}", l.lat, l.lon)))
    )?;
    writeln!(out, "database     {}", geo.describe())?;
    Ok(())
}

/// A line to standard output; a reader gone (a closed pipe) is an error the
/// caller returns, never a panic.
fn say(text: impl std::fmt::Display) -> Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}

/// The manual page, from the same definitions as `--help`.
fn man() -> Result<()> {
    use std::io::Write as _;
    let mut page = Vec::new();
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
    std::io::stdout().lock().write_all(&page)?;
    Ok(())
}

fn check(path: &std::path::Path, overrides: &Overrides) -> Result<()> {
    use std::io::Write as _;
    let text = georouter::tools::check::check(path, overrides)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

async fn serve(config: Config, options: control::Options) -> Result<()> {
    let listeners = server::bind(&config.listeners, &config.server)?;
    let admin = std::net::TcpListener::bind(config.admin.address)
        .with_context(|| format!("admin.address: cannot listen on {}", config.admin.address))?;
    // Said only once everything at start passed (the table, the geo database,
    // the control plane): a refused start never looks like a serving one.
    let addresses = listeners
        .iter()
        .map(|l| Ok((l.name.clone(), l.tcp.local_addr()?, l.tls.is_some())))
        .collect::<std::io::Result<Vec<_>>>()?;
    let admin_address = admin.local_addr()?;
    let running = launch::start(config, listeners, admin, options)?;
    for (name, address, tls) in addresses {
        tracing::info!(listener = %name, %address, tls, "listening");
    }
    tracing::info!(address = %admin_address, "admin API listening");
    wait_for_signal(&running.control).await?;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn run(path: PathBuf, overrides: Overrides) -> Result<()> {
    let bootstrap = Config::load_with(&path, &overrides)?;
    // With fleet.policy: the last fleet policy this instance accepted, not
    // its bootstrap file.
    let (config, fleet_policy_revision) = match georouter::fleet::last_accepted_policy(&bootstrap) {
        Some((config, revision)) => {
            tracing::info!(target: "georouter::fleet", revision, "serving the fleet policy accepted before the restart");
            (config, revision)
        }
        None => (bootstrap, 0),
    };
    serve(
        config,
        control::Options {
            config_path: Some(path),
            overrides,
            admin_token: None,
            fleet_policy_revision,
            ..Default::default()
        },
    )
    .await
}

async fn run_demo(
    listen: SocketAddr,
    admin: SocketAddr,
    admin_token: Option<String>,
    db: PathBuf,
    latency: Vec<(String, Duration)>,
) -> Result<()> {
    for (name, _) in &latency {
        anyhow::ensure!(
            demo::REGIONS.contains(&name.as_str()),
            "--latency {name}=...: no demo region {name:?} (regions: {})",
            demo::REGIONS.join(", ")
        );
    }
    let regions = demo::spawn_regions(|name| {
        latency
            .iter()
            .find(|(n, _)| n == name)
            .map_or(Duration::ZERO, |(_, d)| *d)
    })
    .await
    .context("cannot start the simulated regions")?;
    let db = db.exists().then_some(db.as_path()).or_else(|| {
        tracing::warn!(db = %db.display(), "no geo database: every client takes the default regions (run from the repository root, or pass --db)");
        None
    });
    let config = demo::config(listen, admin, &regions, db)?;
    let token = admin_token.unwrap_or_else(|| demo::ADMIN_TOKEN.to_owned());
    say(demo::banner(listen, admin, &token))?;
    serve(
        config,
        control::Options {
            config_path: None,
            admin_token: Some(token),
            fleet_policy_revision: 0,
            ..Default::default()
        },
    )
    .await
}

/// Waits for SIGTERM or SIGINT; reloads the policy on each SIGHUP meanwhile.
async fn wait_for_signal(control: &std::sync::Arc<control::Control>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT"); return Ok(()) }
            _ = hup.recv() => { let _ = control.reload("SIGHUP").await; }
        }
    }
}

async fn drill(mut args: DrillArgs) -> Result<()> {
    use georouter::tools::drill::{self, DrillOptions, Fault};
    let mut demo = None;
    if args.demo {
        let db = georouter::geo::default_database();
        let db = db.as_path();
        anyhow::ensure!(
            db.exists(),
            "{}: no geo database (run from the repository root)",
            db.display()
        );
        let token = args
            .token
            .get_or_insert_with(|| demo::ADMIN_TOKEN.to_owned());
        let d = demo::in_process(db, token).await?;
        (args.target, args.admin) = (d.target, d.admin);
        args.region.get_or_insert_with(|| "eu-west".to_owned());
        if args.headers.is_empty() {
            args.headers.push((
                http::HeaderName::from_static("x-forwarded-for"),
                http::HeaderValue::from_static("80.128.0.1"),
            ));
        }
        demo = Some(d);
    }
    let region = args
        .region
        .clone()
        .context("--region NAME is required (the region to drain or kill)")?;
    let options = DrillOptions {
        target: args.target,
        path: args.path.clone(),
        headers: args.headers.clone(),
        admin: args.admin,
        region: region.clone(),
        rate: args.rate.max(1),
        phase: args.duration,
        timeout: args.timeout,
        clients: if args.shift.is_some() {
            args.clients.max(1)
        } else {
            1
        },
    };
    let quiet = args.json;
    let say = |line: &str| {
        if !quiet {
            eprintln!("drill: {line}");
        }
    };
    if let Some(share) = args.shift {
        anyhow::ensure!(
            options
                .headers
                .iter()
                .any(|(k, _)| k.as_str() == "x-forwarded-for"),
            "--shift plays many clients through X-Forwarded-For: give one (-H 'X-Forwarded-For: 80.128.0.1') and make the router trust the drill as a proxy (client.trusted_proxies)"
        );
        let token = args
            .token
            .clone()
            .context("a shift needs the admin token: --token or GEOROUTER_ADMIN_TOKEN")?;
        let report = drill::shift(&options, &token, share, say).await?;
        return finish_drill(&report, args.json, demo).await;
    }
    let fault = if args.kill {
        let sims = demo
            .as_mut()
            .map(|d| &mut d.regions[..])
            .unwrap_or_default();
        match sims.iter_mut().find(|r| r.name() == region) {
            Some(sim) => Fault::Sim(sim),
            None if args.demo => anyhow::bail!("--region {region}: not a demo region"),
            None => Fault::Operator,
        }
    } else {
        Fault::Drain {
            token: args
                .token
                .clone()
                .context("a drain needs the admin token: --token or GEOROUTER_ADMIN_TOKEN")?,
            force: args.force,
        }
    };
    let report = drill::run(&options, fault, say).await?;
    finish_drill(&report, args.json, demo).await
}

/// Prints a drill's report (as JSON with `--json`) and stops the demo it ran.
async fn finish_drill<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
    demo: Option<demo::InProcess>,
) -> Result<()> {
    if json {
        say(serde_json::to_string_pretty(report)?)?;
    } else {
        say(report)?;
    }
    if let Some(d) = demo {
        d.running.shutdown().await;
    }
    Ok(())
}

async fn fleet(command: FleetCommand, config: Option<PathBuf>) -> Result<()> {
    use georouter::fleet::cli;
    if let FleetCommand::Keygen { out } = &command {
        let public = georouter::signing::keygen(out)?;
        say(&public)?;
        eprintln!(
            "private key written to {} (keep it secret); add the public key above to fleet.policy_keys",
            out.display()
        );
        return Ok(());
    }
    let path =
        config.context("fleet: name the policy file with -c FILE (its [fleet] names etcd)")?;
    let pushing = matches!(command, FleetCommand::Push { .. });
    let config = Config::load(&path).map_err(|e| {
        anyhow::Error::from(e).context(if pushing { "not pushed" } else { "fleet" })
    })?;
    let shown = path.display().to_string();
    let fleet = cli::fleet_of(&config, &shown)?;
    let (revision, status) = match command {
        FleetCommand::Status { json } => {
            let status = fleet.status().await?;
            let text = if json {
                serde_json::to_string_pretty(&status)? + "\n"
            } else {
                cli::render(&status)
            };
            std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
            return Ok(());
        }
        FleetCommand::Drain {
            region,
            reason,
            force,
            wait,
        } => cli::set_drain(&fleet, &config, &region, Some(reason), force, wait).await?,
        FleetCommand::Push { wait, key, canary } => {
            // Every check `georouter check` makes, before anything is written.
            georouter::tools::check::check(&path, &Overrides::default()).context("not pushed")?;
            let (revision, status) = cli::push(&fleet, &path, &key, &canary, wait).await?;
            let text = cli::policy_summary(revision, &status);
            std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
            let (_, rejected, _) = status.policy_outcome(revision);
            anyhow::ensure!(rejected.is_empty(), "some instances refused the policy");
            return Ok(());
        }
        FleetCommand::Undrain { region, wait } => {
            cli::set_drain(&fleet, &config, &region, None, false, wait).await?
        }
        FleetCommand::Keygen { .. } => unreachable!("handled before the policy is read"),
        FleetCommand::Restore { from } => {
            let text = cli::restore(&fleet, &from).await?;
            std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
            return Ok(());
        }
    };
    let text = cli::summary(revision, &status);
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
    Ok(())
}

/// Logging to stderr, as text or one JSON object per line, with a filter the
/// admin API can change while the router runs (`POST /log`).
fn init_logging(default_filter: &str, format: LogFormat) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{reload, EnvFilter};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let initial = filter.to_string();
    georouter::logging::set_json(matches!(format, LogFormat::Json));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    georouter::logging::install(initial, move |directives| {
        let next = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        handle.reload(next).map_err(|e| e.to_string())
    });
}
