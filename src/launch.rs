//! Starting and stopping a router process: worker threads over bound listeners,
//! the admin listener, and one shutdown signal for all of them.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::control::{self, Control};
use crate::edge::server::{self, ConnLimits, Listener};
use crate::routing::table::TableError;
use crate::routing::State;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
    #[error("cannot use the admin listener: {0}")]
    Admin(std::io::Error),
    #[error(transparent)]
    Control(#[from] crate::control::StartError),
    #[error(transparent)]
    Secret(#[from] crate::secret::WorldWritable),
}

/// A router that is serving. Stop it with [`Running::shutdown`].
pub struct Running {
    pub state: Arc<State>,
    pub control: Arc<Control>,
    /// Accept failures that were not about one connection (EMFILE, ...).
    pub accept_errors: Arc<std::sync::atomic::AtomicU64>,
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    admin: tokio::task::JoinHandle<()>,
}

/// Starts serving `listeners` on worker threads and the admin API on the current
/// runtime. Sockets are bound by the caller.
pub fn start(
    config: Config,
    listeners: Vec<Listener>,
    admin: std::net::TcpListener,
    options: control::Options,
) -> Result<Running, StartError> {
    for warning in crate::secret::audit(&config)? {
        tracing::warn!("{warning}");
    }
    let workers = server::worker_count(config.server.workers);
    let endpoints = config.regions.iter().map(|r| r.endpoints.len()).sum();
    let budget = crate::edge::descriptors::raise_and_budget(
        config.server.max_connections,
        endpoints,
        listeners.len(),
    );
    let mut limits = ConnLimits::new(&config.server);
    limits.max_connections = Arc::new(tokio::sync::Semaphore::new(budget.max_connections));
    limits.pressure = Arc::new(crate::edge::pressure::Pressure::new(
        config.client.max_connections_per_ip,
    ));
    let state = Arc::new(State::new(config)?);
    let (stop, shutdown) = watch::channel(false);
    let control = Control::start(state.clone(), options, shutdown.clone())?;
    let workers = server::spawn_workers(
        workers,
        &listeners,
        &crate::proxy::App {
            state: state.clone(),
        },
        &limits,
        &shutdown,
    )
    .map_err(StartError::Workers)?;
    drop(listeners);
    admin.set_nonblocking(true).map_err(StartError::Admin)?;
    let admin = tokio::net::TcpListener::from_std(admin).map_err(StartError::Admin)?;
    let admin = tokio::spawn(crate::admin::serve(admin, control.clone(), shutdown));
    Ok(Running {
        state,
        control,
        accept_errors: limits.accept_errors.clone(),
        stop,
        workers,
        admin,
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within the grace period,
    /// and returns when every worker has stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        let _ = self.admin.await;
    }
}
