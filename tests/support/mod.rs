//! Test support: a real router on 127.0.0.1 port 0, simulated regions, clients,
//! and certificates made on the spot. No fixed ports, no sleeps.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use georouter::config::Config;
use georouter::control::{Control, Options};
use georouter::edge::server::{self, ConnLimits};
use georouter::tools::sim::SimRegion;
use georouter::State;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

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
        let listeners = server::bind(&config.listeners).expect("bind listeners");
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
        let listeners = server::bind(&config.listeners).expect("bind listeners");
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

/// `[[listeners]]` on port 0, `[[regions]]` one per simulated region (HTTP/1.1),
/// then `extra` (routes, settings).
pub fn policy(regions: &[&SimRegion], extra: &str) -> String {
    let mut s = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n");
    for r in regions {
        s.push_str(&format!(
            "[[regions]]\nname = \"{}\"\nendpoints = [{{ url = \"{}\" }}]\n\n",
            r.name(),
            r.url()
        ));
    }
    s.push_str(extra);
    s
}

/// `[[regions]]` blocks for simulated regions, each with its jurisdiction if any.
pub fn regions_toml(regions: &[(&SimRegion, Option<&str>)]) -> String {
    let mut s = String::new();
    for (r, jurisdiction) in regions {
        s.push_str(&format!("[[regions]]\nname = \"{}\"\n", r.name()));
        if let Some(j) = jurisdiction {
            s.push_str(&format!("jurisdiction = \"{j}\"\n"));
        }
        s.push_str(&format!("endpoints = [{{ url = \"{}\" }}]\n", r.url()));
    }
    s
}

pub async fn region(name: &str) -> SimRegion {
    SimRegion::spawn(name)
        .await
        .expect("start simulated region")
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub version: http::Version,
    pub body: String,
}

pub async fn get(client: &TestClient, url: &str) -> Reply {
    send(
        client,
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// A GET of `url` that names `host` in its Host header.
pub async fn get_as(client: &TestClient, url: &str, host: &str) -> Reply {
    send(
        client,
        http::Request::get(url)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

pub async fn send(client: &TestClient, req: http::Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("response within 20 s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        version: parts.version,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `n` GETs of `url` at once, each on its own client, in the order sent.
pub async fn concurrent_gets(url: &str, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { get(&h1_client(), &url).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The region that served a reply, or the router's own text when none did.
pub fn served_or_body(r: &Reply) -> String {
    r.headers
        .get("x-georouter-region")
        .map_or_else(|| r.body.clone(), |v| v.to_str().unwrap().to_owned())
}

/// Writes raw bytes on a new connection and reads until the peer closes (or the
/// bound runs out); for requests a compliant client library cannot make.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"))
}

/// Polls `cond` every few milliseconds until it holds, for at most 10 s.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(Duration::from_secs(10), what, cond).await
}

/// Polls an async condition until it holds, for at most 10 s.
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`eventually`] with its own time limit.
pub async fn eventually_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A loopback port with nothing listening on it.
pub fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A CA and certificates it signs, written as PEM files in a temp dir.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("georouter-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "georouter test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `names`; returns (cert path, key path, DER).
    pub fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, cert.der().to_vec())
    }

    /// Roots holding this CA only.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A rustls client config that trusts this CA, with the given ALPN.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(self.roots())
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c
    }
}

pub fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "/")
}

pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

pub fn mmdb_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("georouter-geo-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes an IPv4 MaxMind DB in the temp dir: each CIDR maps to its record.
pub fn write_mmdb(name: &str, kind: &str, entries: &[(&str, serde_json::Value)]) -> PathBuf {
    use maxminddb_writer::paths::IpAddrWithMask;
    let mut db = maxminddb_writer::Database::default();
    db.metadata.database_type = kind.to_owned();
    db.metadata.binary_format_major_version = 2;
    db.metadata.build_epoch = 1_763_769_600; // 2025-11-22
    for (cidr, record) in entries {
        let data = db.insert_value(record).unwrap();
        db.insert_node(cidr.parse::<IpAddrWithMask>().unwrap(), data);
    }
    // Written aside and renamed into place: tests running in parallel may
    // write the same fixture, and a reader must never see half a file.
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = mmdb_dir().join(name);
    let tmp = mmdb_dir().join(format!(".{name}.{n}.tmp"));
    let file = std::fs::File::create(&tmp).unwrap();
    db.write_to(std::io::BufWriter::new(file)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// A country database: 80.128.0.0/16 is Germany, 3.0.0.0/8 the United States,
/// 1.0.16.0/20 Japan.
pub fn country_mmdb() -> PathBuf {
    write_mmdb(
        "countries.mmdb",
        "test country",
        &[
            ("80.128.0.0/16", serde_json::json!({ "country_code": "DE" })),
            ("3.0.0.0/8", serde_json::json!({ "country_code": "US" })),
            ("1.0.16.0/20", serde_json::json!({ "country_code": "JP" })),
        ],
    )
}

/// A steady stream of GETs from `concurrency` clients until stopped; every answer
/// is recorded, so a test can say how many failed and who served the rest.
pub struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u16, String)>>>,
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    /// (status, x-georouter-region or the body of a failure), in order per client.
    pub answers: Vec<(u16, String)>,
}

impl LoadReport {
    pub fn failed(&self) -> Vec<&(u16, String)> {
        self.answers.iter().filter(|(s, _)| *s != 200).collect()
    }
    pub fn served_by(&self, region: &str) -> usize {
        self.answers
            .iter()
            .filter(|(s, r)| *s == 200 && r == region)
            .count()
    }
}

impl Load {
    pub fn start(url: String, concurrency: usize) -> Load {
        let (stop, stopped) = watch::channel(false);
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..concurrency)
            .map(|_| {
                let url = url.clone();
                let stopped = stopped.clone();
                let sent = sent.clone();
                tokio::spawn(async move {
                    let client = h1_client();
                    let mut out = Vec::new();
                    while !*stopped.borrow() {
                        let r = get(&client, &url).await;
                        let region = r
                            .headers
                            .get("x-georouter-region")
                            .map(|v| v.to_str().unwrap().to_owned());
                        out.push((r.status, region.unwrap_or(r.body)));
                        sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks, sent }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` more requests were answered.
    pub async fn wait_for(&self, n: u64) {
        let target = self.sent() + n;
        eventually(&format!("{n} more requests"), || self.sent() >= target).await;
    }

    pub async fn stop(self) -> LoadReport {
        let _ = self.stop.send(true);
        let mut answers = Vec::new();
        for t in self.tasks {
            answers.extend(t.await.unwrap());
        }
        LoadReport { answers }
    }
}

/// POSTs to the admin API with an optional bearer token; (status, body).
pub async fn admin_post(
    admin: SocketAddr,
    path_and_query: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = http::Request::post(format!("http://{admin}{path_and_query}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = send(&h1_client(), req.body(Full::new(Bytes::new())).unwrap()).await;
    (r.status, r.body)
}

/// `GET /regions` as JSON, the entry for `name`.
pub async fn region_view(admin: SocketAddr, name: &str) -> serde_json::Value {
    let r = get(&h1_client(), &format!("http://{admin}/regions")).await;
    let all: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no region {name} in {all}"))
}

/// The phase a region is in, as the control plane sees it.
pub fn phase(router: &TestRouter, name: &str) -> &'static str {
    router
        .control
        .region_reports()
        .into_iter()
        .find(|r| r.name.as_str() == name)
        .unwrap_or_else(|| panic!("no region {name}"))
        .phase
        .name()
}

/// A temp dir for one test's files.
pub fn test_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("georouter-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Regions `a` and `b`, `a` preferred, with checks every 50 ms (two failures take
/// a region out, two passes bring it back), no jitter, no access log; `extra` goes
/// inside `[health]` and may open further tables.
pub fn two_regions(a: &SimRegion, b: &SimRegion, extra: &str) -> String {
    policy(
        &[a, b],
        &format!(
            r#"
            [server]
            access_log = false
            [health]
            interval = "50ms"
            timeout = "200ms"
            fall = 2
            rise = 2
            jitter = 0.0
            {extra}
            [[routes]]
            regions = ["a", "b"]
            "#
        ),
    )
}

/// Asserts that the metrics text has every one of `needles`.
pub fn assert_metrics(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

/// `promtool`, installed on the spot where that can be done (root on Debian:
/// `apt-get install prometheus`); otherwise the test fails and says what is
/// missing. A test never passes because its tool is absent.
pub fn promtool() -> std::process::Command {
    tool("promtool", "--version", "prometheus")
}

/// A tool the tests need, installed on the spot where that can be done (root
/// on Debian: `apt-get install PACKAGE`, one install at a time); otherwise the
/// test fails and says what is missing. A test never passes because its tool
/// is absent.
pub fn tool(binary: &str, probe: &str, package: &str) -> std::process::Command {
    use std::process::{Command, Stdio};
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let found = || {
        Command::new(binary)
            .arg(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !found() {
        let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        if !found() && root && Path::new("/usr/bin/apt-get").exists() {
            eprintln!("{binary} missing: apt-get install {package}");
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends", package])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status();
        }
        assert!(
            found(),
            "{binary} is needed and could not be installed: apt-get install {package} (Debian) or put {binary} on PATH"
        );
    }
    Command::new(binary)
}

pub mod browser;
pub mod etcd;
pub mod link;
pub mod nginx;

/// The sum of the values of every sample in `metrics` (text exposition) whose
/// line starts with `prefix` (a family name, with labels begun if wanted).
pub fn sum_of(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The (identifier, value) pairs of an HTTP/2 SETTINGS payload (RFC 9113 6.5.1).
pub fn settings_of(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|c| {
            let id = u16::from_be_bytes([c[0], c[1]]);
            (id, u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
        })
        .collect()
}
