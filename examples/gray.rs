//! Gray-failure drills at a fixed open-loop rate against a router binary:
//! what clients see when a survivor lacks capacity, a region hangs, an endpoint
//! hangs, an endpoint resets, or a long soak with resets and region bounces.
//! A measurement, not a test: it prints counts, never asserts on time.
//!
//! `bench/gray.sh [SCENARIO] [SECONDS]` (SCENARIO: survivor, survivor-default,
//! hung-region, hung-endpoint, resets, soak, all).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use georouter::tools::sim::{Mode, SimRegion};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// Clients and their share of the load: half EU residents, the rest America and Asia.
const CLIENTS: [(&str, u32); 6] = [
    ("80.128.0.1", 20),  // DE
    ("90.0.0.1", 15),    // FR
    ("2.16.0.1", 15),    // NL
    ("8.8.8.8", 35),     // US
    ("203.116.0.1", 10), // SG
    ("1.32.0.1", 5),     // MY
];

/// Seconds between region bounces in the soak.
const BOUNCE_EVERY: u64 = 20;

/// How long a client waits before it gives up: a timeout is a failure.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Survivor { capacity_in_policy: bool },
    HungRegion,
    HungEndpoint,
    Resets,
    Soak,
}

struct Sample {
    status: Option<u16>,
    retry_after: bool,
    latency: Duration,
    region: String,
}

struct Router {
    child: std::process::Child,
    target: SocketAddr,
    _dir: PathBuf,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    l.local_addr().expect("an address")
}

fn endpoints(urls: &[String], extra: &str) -> String {
    let list: Vec<String> = urls
        .iter()
        .map(|u| format!("{{ url = \"{u}\"{extra} }}"))
        .collect();
    format!("[{}]", list.join(", "))
}

async fn start_router(bin: &str, policy: &str) -> Router {
    let dir = std::env::temp_dir().join(format!("georouter-gray-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let file = dir.join("policy.toml");
    let target = free_port();
    let admin = free_port();
    let text = policy
        .replace("@LISTEN@", &target.to_string())
        .replace("@ADMIN@", &admin.to_string());
    std::fs::write(&file, text).expect("the policy written");
    let mut child = std::process::Command::new(bin)
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let client = client();
    for _ in 0..200 {
        let req = http::Request::get(format!("http://{target}/"))
            .header("x-forwarded-for", "8.8.8.8")
            .body(Empty::<Bytes>::new())
            .expect("a request");
        if let Ok(r) = client.request(req).await {
            if r.status() == 200 {
                return Router {
                    child,
                    target,
                    _dir: dir,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the router at {target} did not serve within 10 s");
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(c)
}

/// The router's open descriptors and resident memory (kB), from /proc.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (fds, rss)
}

fn policy(scenario: Scenario, r: &Regions) -> String {
    let db = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/geo-whois-asn-country.mmdb"
    );
    let mut eu_central_cap = String::new();
    if scenario
        == (Scenario::Survivor {
            capacity_in_policy: true,
        })
    {
        eu_central_cap = format!("max_in_flight = {}\n", SURVIVOR_CAP);
    }
    format!(
        r#"
[client]
trusted_proxies = ["127.0.0.0/8"]
[[listeners]]
name = "public"
address = "@LISTEN@"
[admin]
address = "@ADMIN@"
[geo]
database = "{db}"
[health]
interval = "500ms"
timeout = "250ms"
[[regions]]
name = "us-east"
location = {{ lat = 39.0, lon = -77.5 }}
endpoints = {us}
[[regions]]
name = "eu-west"
jurisdiction = "eu"
location = {{ lat = 53.3, lon = -6.3 }}
endpoints = {euw}
[[regions]]
name = "eu-central"
jurisdiction = "eu"
location = {{ lat = 50.1, lon = 8.7 }}
{eu_central_cap}endpoints = {euc}
[[regions]]
name = "ap-southeast"
location = {{ lat = 1.35, lon = 103.8 }}
endpoints = {ap}
[[jurisdictions]]
name = "eu"
strict = true
countries = ["DE", "FR", "NL"]
[[routes]]
name = "default"
regions = ["us-east", "eu-west", "ap-southeast"]
[[routes.rules]]
continents = ["EU"]
regions = ["eu-west", "eu-central"]
[[routes.rules]]
continents = ["AS"]
regions = ["ap-southeast", "us-east"]
"#,
        us = endpoints(&urls(&r.us), ""),
        euw = endpoints(&urls(&r.eu_west), ""),
        euc = endpoints(&urls(&r.eu_central), ""),
        ap = endpoints(&urls(&r.ap), ""),
    )
}

fn urls(sims: &[SimRegion]) -> Vec<String> {
    sims.iter().map(SimRegion::url).collect()
}

/// eu-central serves this many at once, at `BASE_LATENCY`: about half the EU load.
const SURVIVOR_CAP: u64 = 3;
const BASE_LATENCY: Duration = Duration::from_millis(20);

struct Regions {
    us: Vec<SimRegion>,
    eu_west: Vec<SimRegion>,
    eu_central: Vec<SimRegion>,
    ap: Vec<SimRegion>,
}

impl Regions {
    fn all(&self) -> impl Iterator<Item = &SimRegion> {
        self.us
            .iter()
            .chain(&self.eu_west)
            .chain(&self.eu_central)
            .chain(&self.ap)
    }
}

async fn spawn(name: &str, n: usize) -> Vec<SimRegion> {
    let mut v = Vec::new();
    for _ in 0..n {
        let s = SimRegion::spawn(name).await.expect("a simulated region");
        s.set_latency(BASE_LATENCY);
        v.push(s);
    }
    v
}

async fn run(bin: &str, scenario: Scenario, rate: u32, secs: u64) {
    let two = matches!(scenario, Scenario::HungEndpoint | Scenario::Resets);
    let regions = Regions {
        us: spawn("us-east", 1).await,
        eu_west: spawn("eu-west", if two { 2 } else { 1 }).await,
        eu_central: spawn("eu-central", 1).await,
        ap: spawn("ap-southeast", 1).await,
    };
    let router = start_router(bin, &policy(scenario, &regions)).await;
    let pid = router.child.id();
    if scenario == Scenario::Resets {
        // One serving region in the jurisdiction: eu-central is down.
        regions.eu_central[0].set_mode(Mode::Fail);
        regions.eu_central[0].set_health(false);
    }
    if let Scenario::Survivor { .. } = scenario {
        regions.eu_central[0].set_max_concurrency(SURVIVOR_CAP);
    }
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let peak = Arc::new(Mutex::new((0usize, 0u64)));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (f, m) = usage(pid);
                {
                    let mut p = peak.lock().unwrap();
                    p.0 = p.0.max(f);
                    p.1 = p.1.max(m);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let before = usage(pid);
    let client = client();
    let weights: u32 = CLIENTS.iter().map(|c| c.1).sum();
    let interval = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let total = rate as u64 * secs;
    let fault_at = total / 5;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut next_bounce = 0usize;
    let revived: Arc<Mutex<Vec<SimRegion>>> = Arc::default();
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        if i == fault_at {
            fault(scenario, &regions);
        }
        if scenario == Scenario::Soak && i > 0 && i % (rate as u64 * BOUNCE_EVERY) == 0 {
            // A region bounce every 20 s, in turn: killed, back 2 s later.
            let (name, original) = match next_bounce % 3 {
                0 => ("eu-west", &regions.eu_west[0]),
                1 => ("us-east", &regions.us[0]),
                _ => ("eu-central", &regions.eu_central[0]),
            };
            next_bounce += 1;
            let addr = original.addr();
            original.kill();
            let mut live = revived.lock().unwrap();
            if let Some(at) = live.iter().position(|s| s.addr() == addr) {
                live.swap_remove(at).kill();
            }
            drop(live);
            let (name, revived) = (name.to_owned(), revived.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                loop {
                    if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                        let s = SimRegion::serve(&name, l);
                        s.set_latency(BASE_LATENCY);
                        s.set_reset_every(100);
                        revived.lock().unwrap().push(s);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        let mut pick = fastrand::u32(0..weights);
        let ip = CLIENTS
            .iter()
            .find(|c| {
                if pick < c.1 {
                    true
                } else {
                    pick -= c.1;
                    false
                }
            })
            .map_or("8.8.8.8", |c| c.0);
        let req = http::Request::get(format!("http://{}/", router.target))
            .header("x-forwarded-for", ip)
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let (client, samples) = (client.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let out = tokio::time::timeout(CLIENT_TIMEOUT, async {
                let r = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let body = r
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e:?}"))?;
                Ok::<_, String>((
                    status,
                    retry_after,
                    String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                ))
            })
            .await;
            let latency = sent.elapsed();
            let s = match out {
                Ok(Ok((status, retry_after, body))) => Sample {
                    status: Some(status),
                    retry_after,
                    latency,
                    region: if status == 200 || status >= 500 {
                        body
                    } else {
                        String::new()
                    },
                },
                Ok(Err(error)) => Sample {
                    status: Some(0),
                    retry_after: false,
                    latency,
                    region: error,
                },
                Err(_) => Sample {
                    status: None,
                    retry_after: false,
                    latency,
                    region: String::new(),
                },
            };
            samples.lock().unwrap().push(s);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;
    let elapsed = start.elapsed();
    report(
        scenario,
        &samples.lock().unwrap(),
        elapsed,
        before,
        *peak.lock().unwrap(),
        &regions,
    );
    drop(router);
}

fn fault(scenario: Scenario, r: &Regions) {
    match scenario {
        Scenario::Survivor { .. } => r.eu_west[0].kill(),
        Scenario::HungRegion => r.eu_west[0].set_mode(Mode::Hang),
        Scenario::HungEndpoint => r.eu_west[1].set_mode(Mode::Hang),
        Scenario::Resets => r.eu_west[1].set_mode(Mode::Reset),
        Scenario::Soak => {
            for s in r.all() {
                s.set_reset_every(100);
            }
        }
    }
}

fn report(
    scenario: Scenario,
    samples: &[Sample],
    elapsed: Duration,
    before: (usize, u64),
    peak: (usize, u64),
    regions: &Regions,
) {
    let n = samples.len();
    let ok = samples.iter().filter(|s| s.status == Some(200)).count();
    let timeouts = samples.iter().filter(|s| s.status.is_none()).count();
    let broken = samples.iter().filter(|s| s.status == Some(0)).count();
    let shed: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status == Some(503) && s.retry_after)
        .collect();
    let mut other = std::collections::BTreeMap::<u16, usize>::new();
    for s in samples.iter().filter_map(|s| s.status) {
        if s != 200 && s != 0 && s != 503 {
            *other.entry(s).or_default() += 1;
        }
    }
    let bare_503 = samples
        .iter()
        .filter(|s| s.status == Some(503) && !s.retry_after)
        .count();
    let mut lat: Vec<Duration> = samples
        .iter()
        .filter(|s| s.status == Some(200))
        .map(|s| s.latency)
        .collect();
    lat.sort();
    let q = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)));
    let shed_max = shed.iter().map(|s| s.latency).max();
    let mut by_region = std::collections::BTreeMap::<&str, usize>::new();
    for s in samples.iter().filter(|s| s.status == Some(200)) {
        *by_region.entry(s.region.as_str()).or_default() += 1;
    }
    println!("== {scenario:?}: {n} requests in {elapsed:.1?}");
    println!(
        "   served {ok}; failed {} (client timeouts {timeouts}, broken {broken}, 503 without Retry-After {bare_503}, other {other:?}); shed 503+Retry-After {}",
        n - ok - shed.len(),
        shed.len()
    );
    println!(
        "   served latency p50 {:?} p99 {:?} max {:?}; slowest shed {:?}",
        q(0.5),
        q(0.99),
        lat.last(),
        shed_max
    );
    println!("   served by {by_region:?}");
    let mut causes = std::collections::BTreeMap::<String, usize>::new();
    for s in samples
        .iter()
        .filter(|s| s.status.is_some_and(|c| c >= 500 || c == 0) && !s.retry_after)
    {
        let line = s
            .region
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect();
        *causes.entry(line).or_default() += 1;
    }
    for (cause, n) in causes.iter().take(8) {
        println!("   failed {n}: {cause}");
    }
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for s in shed.iter() {
        let line = s
            .region
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect();
        *reasons.entry(line).or_default() += 1;
    }
    for (reason, n) in reasons.iter().take(8) {
        println!("   shed {n}: {reason}");
    }
    println!(
        "   router descriptors {} -> peak {}; RSS {} -> peak {} MB",
        before.0,
        peak.0,
        before.1 / 1024,
        peak.1 / 1024
    );
    if let Scenario::Survivor { .. } = scenario {
        println!(
            "   eu-central peak concurrency {} (cap {SURVIVOR_CAP})",
            regions.eu_central[0].peak_concurrency()
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "all".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let rate: u32 = std::env::var("RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let bin = std::env::var("GEOROUTER").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/georouter").to_owned()
    });
    let scenarios: Vec<Scenario> = match which.as_str() {
        "survivor" => vec![Scenario::Survivor {
            capacity_in_policy: true,
        }],
        "survivor-default" => vec![Scenario::Survivor {
            capacity_in_policy: false,
        }],
        "hung-region" => vec![Scenario::HungRegion],
        "hung-endpoint" => vec![Scenario::HungEndpoint],
        "resets" => vec![Scenario::Resets],
        "soak" => vec![Scenario::Soak],
        "all" => vec![
            Scenario::Survivor {
                capacity_in_policy: true,
            },
            Scenario::Survivor {
                capacity_in_policy: false,
            },
            Scenario::HungRegion,
            Scenario::HungEndpoint,
            Scenario::Resets,
        ],
        other => panic!("unknown scenario {other:?}: survivor, survivor-default, hung-region, hung-endpoint, resets, soak, all"),
    };
    let _ = rlimit::increase_nofile_limit(65536);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    for s in scenarios {
        rt.block_on(run(&bin, s, rate, secs));
    }
}
