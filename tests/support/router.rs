//! A router under test, started as the binary starts one (`launch::start`) or on the test's own thread.

use super::*;

/// A router under test, started as the binary starts one.
pub struct TestRouter {
    /// Address of each listener, in config order.
    pub addrs: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub state: Arc<State>,
    pub control: Arc<Control>,
    /// Accept failures such as EMFILE, as the accept loop counts them.
    pub accept_errors: Arc<std::sync::atomic::AtomicU64>,
    serving: Serving,
}

/// How a test router serves.
enum Serving {
    /// Through `launch::start`: worker threads with their own runtimes and
    /// thread-local pools, as in production.
    Launched(georouter::launch::Running),
    /// On the test's own runtime and thread (for tokio's paused clock, and to
    /// look at the serving thread's pool).
    Here {
        stop: watch::Sender<bool>,
        served: tokio::task::JoinHandle<()>,
    },
}

impl TestRouter {
    /// Starts a router from policy text; its listeners should use port 0.
    pub async fn spawn(toml: &str) -> TestRouter {
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("test policy invalid: {e}"));
        Self::start(config, Options::default()).await
    }

    /// Starts a router from policy text with a mutating admin token.
    pub async fn spawn_with_token(toml: &str, token: &str) -> TestRouter {
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("test policy invalid: {e}"));
        Self::start(
            config,
            Options {
                config_path: None,
                admin_token: Some(token.to_owned()),
                fleet_policy_revision: 0,
                ..Default::default()
            },
        )
        .await
    }

    /// Starts a router from a policy file, which reloads read again.
    pub async fn spawn_file(path: &Path, admin_token: Option<&str>) -> TestRouter {
        let config = Config::load(path).unwrap_or_else(|e| panic!("test policy invalid: {e}"));
        Self::start(
            config,
            Options {
                config_path: Some(path.to_owned()),
                admin_token: admin_token.map(str::to_owned),
                fleet_policy_revision: 0,
                ..Default::default()
            },
        )
        .await
    }

    /// Starts a router through the binary's own entry point (`launch::start`):
    /// the control plane and admin API on the test's runtime, the listeners on
    /// worker threads.
    pub async fn start(config: Config, options: Options) -> TestRouter {
        let listeners = server::bind(&config.listeners, &config.server).expect("bind listeners");
        let addrs = listeners
            .iter()
            .map(|l| l.tcp.local_addr().unwrap())
            .collect();
        let admin_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let running = georouter::launch::start(config, listeners, admin_listener, options)
            .unwrap_or_else(|e| panic!("router start: {e}"));
        TestRouter {
            addrs,
            admin,
            state: running.state.clone(),
            control: running.control.clone(),
            accept_errors: running.accept_errors.clone(),
            serving: Serving::Launched(running),
        }
    }

    /// Starts a router that serves on the test's own runtime and thread.
    pub async fn spawn_here(toml: &str) -> TestRouter {
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("test policy invalid: {e}"));
        let listeners = server::bind(&config.listeners, &config.server).expect("bind listeners");
        let addrs = listeners
            .iter()
            .map(|l| l.tcp.local_addr().unwrap())
            .collect();
        let limits = ConnLimits::new(&config.server);
        let accept_errors = limits.accept_errors.clone();
        let state = Arc::new(State::new(config).expect("compile table"));
        let (stop, shutdown) = watch::channel(false);
        let control = Control::start(state.clone(), Options::default(), shutdown.clone())
            .expect("control plane");
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        tokio::spawn(georouter::admin::serve(
            admin_listener,
            control.clone(),
            shutdown.clone(),
        ));
        let served = tokio::spawn(server::run(
            listeners,
            georouter::proxy::App {
                state: state.clone(),
            },
            limits,
            shutdown,
        ));
        TestRouter {
            addrs,
            admin,
            state,
            control,
            accept_errors,
            serving: Serving::Here { stop, served },
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// Signals shutdown and returns the future that ends when the router has drained.
    pub fn shutdown(self) -> tokio::task::JoinHandle<()> {
        match self.serving {
            Serving::Launched(running) => tokio::spawn(running.shutdown()),
            Serving::Here { stop, served } => {
                let _ = stop.send(true);
                served
            }
        }
    }
}
