//! `georouter drill`: a disaster-recovery drill against a running router. A
//! bounded, rate-limited stream of requests; a fault (a drain through the admin
//! API, a region killed by the operator, or a simulated region killed in the
//! demo); then the repair and the failback through slow start. Everything is
//! measured from what clients saw and what the admin API said.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::tools::sim::SimRegion;

mod report;
mod shift;

pub use report::Report;
use report::{shares, summarize, Marks, Sample};
pub use shift::{shift, ShiftReport};

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("admin API at {admin}: {detail}")]
    Admin { admin: SocketAddr, detail: String },
    #[error("region {0:?} is not in the router's policy")]
    UnknownRegion(String),
    #[error("no request was served by {region} before the fault: the drill's requests do not reach it (pick a client with --header, e.g. 'X-Forwarded-For: 80.128.0.1')")]
    NotServing { region: String },
    #[error(
        "region {0} is not serving before the drill (GET /regions): undrain or repair it first"
    )]
    NotServingBefore(String),
    #[error("cannot restart simulated region {region} on {addr}: {source}")]
    Restart {
        region: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: not within {timeout} (--timeout)", timeout = humantime::format_duration(*.timeout))]
    Timeout { what: String, timeout: Duration },
}

/// What breaks the region, and how it comes back.
pub enum Fault<'a> {
    /// Drain through the admin API; undrain after.
    Drain { token: String, force: bool },
    /// The operator kills the region, then brings it back; the drill waits for both.
    Operator,
    /// A simulated region (the demo): killed, then served again on its address.
    Sim(&'a mut SimRegion),
}

impl Fault<'_> {
    fn name(&self) -> &'static str {
        match self {
            Fault::Drain { .. } => "drain",
            Fault::Operator => "operator-kill",
            Fault::Sim(_) => "kill",
        }
    }
}

pub struct DrillOptions {
    /// The router's listener.
    pub target: SocketAddr,
    pub path: String,
    /// Extra request headers, to play a client from somewhere (X-Forwarded-For).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub admin: SocketAddr,
    pub region: String,
    /// Requests per second, over all connections.
    pub rate: u32,
    /// Length of the steady phases (before the fault, and while it lasts).
    pub phase: Duration,
    /// The longest wait for a detection, a repair, or the failback to complete.
    pub timeout: Duration,
    /// Clients played: 1 sends `headers` as given; more vary the last two
    /// octets of the IPv4 `X-Forwarded-For` among that many addresses (the
    /// router must trust the drill as a proxy), so a share of them can move.
    pub clients: u32,
}

async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, String), String> {
    let io = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A mutating admin call (`what` names it in errors) that must answer 200.
async fn post(o: &DrillOptions, path: &str, token: &str, what: &str) -> Result<(), DrillError> {
    let admin_err = |detail: String| DrillError::Admin {
        admin: o.admin,
        detail,
    };
    let (status, body) = call(o.admin, Method::POST, path, Some(token))
        .await
        .map_err(admin_err)?;
    if status != StatusCode::OK {
        return Err(admin_err(format!("{what}: {status}: {}", body.trim())));
    }
    Ok(())
}

/// Whether the admin API shows `region` serving.
async fn serving(o: &DrillOptions) -> Result<bool, DrillError> {
    let admin_err = |detail: String| DrillError::Admin {
        admin: o.admin,
        detail,
    };
    let (status, body) = call(o.admin, Method::GET, "/regions", None)
        .await
        .map_err(admin_err)?;
    if status != StatusCode::OK {
        return Err(admin_err(format!(
            "GET /regions: {status}: {}",
            body.trim()
        )));
    }
    let regions: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| admin_err(format!("GET /regions: {e}")))?;
    regions
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == o.region.as_str()))
        .map(|r| r["serving"].as_bool().unwrap_or(false))
        .ok_or_else(|| DrillError::UnknownRegion(o.region.clone()))
}

/// The rate-limited request stream; samples go into `out` until `stop`.
fn start_load(
    o: &DrillOptions,
    started: Instant,
    out: Arc<Mutex<Vec<Sample>>>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let connections = o.rate.clamp(1, 16);
    let every = Duration::from_secs_f64(f64::from(connections) / f64::from(o.rate.max(1)));
    let next_client = Arc::new(std::sync::atomic::AtomicU32::new(0));
    (0..connections)
        .map(|i| {
            let (target, path) = (o.target, o.path.clone());
            let clients = client_headers(&o.headers, o.clients);
            let next_client = next_client.clone();
            let out = out.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                // Spread the connections' ticks over one period.
                let first = Instant::now() + every.mul_f64(f64::from(i) / f64::from(connections));
                let mut tick = tokio::time::interval_at(first, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sender = None;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    let at = started.elapsed();
                    let client = next_client.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        % clients.len() as u32;
                    let result = tokio::time::timeout(
                        Duration::from_secs(5),
                        one(target, &path, &clients[client as usize], &mut sender),
                    )
                    .await;
                    let sample = match result {
                        Ok(Ok((status, region))) => Sample {
                            at,
                            status,
                            region,
                            client,
                        },
                        _ => {
                            sender = None;
                            Sample {
                                at,
                                status: 0,
                                region: None,
                                client,
                            }
                        }
                    };
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                }
            })
        })
        .collect()
}

/// The headers of each client played: `headers` itself for one; for more,
/// copies whose `X-Forwarded-For` (IPv4) varies in its last two octets.
fn client_headers(
    headers: &[(HeaderName, HeaderValue)],
    clients: u32,
) -> Arc<Vec<Vec<(HeaderName, HeaderValue)>>> {
    let xff = http::header::HeaderName::from_static("x-forwarded-for");
    let base = headers
        .iter()
        .find(|(k, _)| *k == xff)
        .and_then(|(_, v)| v.to_str().ok()?.trim().parse::<std::net::Ipv4Addr>().ok());
    let (Some(base), true) = (base, clients > 1) else {
        return Arc::new(vec![headers.to_vec()]);
    };
    let [a, b, ..] = base.octets();
    Arc::new(
        (0..clients.min(60_000))
            .map(|i| {
                let ip = std::net::Ipv4Addr::new(a, b, (i / 250) as u8, (i % 250 + 1) as u8);
                let mut h: Vec<(HeaderName, HeaderValue)> =
                    headers.iter().filter(|(k, _)| *k != xff).cloned().collect();
                h.push((
                    xff.clone(),
                    HeaderValue::from_str(&ip.to_string()).expect("an address is a header value"),
                ));
                h
            })
            .collect(),
    )
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn one(
    target: SocketAddr,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    sender: &mut Option<Sender>,
) -> Result<(u16, Option<String>), String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let io = TcpStream::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        let _ = io.set_nodelay(true);
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().expect("connected above");
    s.ready().await.map_err(|e| e.to_string())?;
    let mut req = Request::get(path)
        .header(http::header::HOST, target.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    for (k, v) in headers {
        req.headers_mut().append(k.clone(), v.clone());
    }
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let region = resp
        .headers()
        .get("x-georouter-region")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, region))
}

/// Each region's share of the answered requests among `samples`.
async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<(), DrillError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, DrillError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DrillError::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A drill under way: its clock, the samples so far, and its load.
struct Steady {
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: watch::Sender<bool>,
    load: Vec<tokio::task::JoinHandle<()>>,
}

/// Every drill's start: the region serving, the load running, one steady
/// phase (`over` adds to what the operator is told).
async fn steady(o: &DrillOptions, say: &impl Fn(&str), over: &str) -> Result<Steady, DrillError> {
    if !serving(o).await? {
        return Err(DrillError::NotServingBefore(o.region.clone()));
    }
    let started = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let load = start_load(o, started, samples.clone(), stopped);
    say(&format!(
        "steady state for {} at {} req/s{over}",
        humantime::format_duration(o.phase),
        o.rate
    ));
    tokio::time::sleep(o.phase).await;
    Ok(Steady {
        started,
        samples,
        stop,
        load,
    })
}

/// Undoes the drill's fault: the undrain, the simulated region restarted on
/// its address, or the operator asked to bring the region back.
async fn repair(
    o: &DrillOptions,
    fault: &mut Fault<'_>,
    say: impl Fn(&str),
) -> Result<(), DrillError> {
    match fault {
        Fault::Drain { token, .. } => {
            say(&format!("undraining {}", o.region));
            let path = format!("/regions/{}/undrain?reason=georouter+drill", o.region);
            call(o.admin, Method::POST, &path, Some(token))
                .await
                .map_err(|detail| DrillError::Admin {
                    admin: o.admin,
                    detail,
                })?;
        }
        Fault::Sim(sim) => {
            say(&format!("restarting simulated region {}", o.region));
            let addr = sim.addr();
            let latency = sim.latency();
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DrillError::Restart {
                    region: o.region.clone(),
                    addr,
                    source,
                })?;
            **sim = SimRegion::serve(&o.region, listener);
            sim.set_latency(latency);
        }
        Fault::Operator => say(&format!("bring {} back; waiting", o.region)),
    }
    Ok(())
}

/// Runs one drill and reports what clients and the admin API saw. `say` gets the
/// lines meant for the operator as the drill goes.
pub async fn run(
    o: &DrillOptions,
    mut fault: Fault<'_>,
    say: impl Fn(&str),
) -> Result<Report, DrillError> {
    let Steady {
        started,
        samples,
        stop,
        load,
    } = steady(o, &say, "").await?;
    let snapshot = || samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let before = snapshot();
    let region_share = shares(&before).get(&o.region).copied().unwrap_or(0.0);
    if region_share == 0.0 {
        let _ = stop.send(true);
        return Err(DrillError::NotServing {
            region: o.region.clone(),
        });
    }

    // The fault.
    let fault_at;
    match &mut fault {
        Fault::Drain { token, force } => {
            say(&format!("draining {}", o.region));
            fault_at = started.elapsed();
            let path = format!(
                "/regions/{}/drain?reason=georouter+drill{}",
                o.region,
                if *force { "&force=true" } else { "" }
            );
            if let Err(e) = post(o, &path, token, "drain").await {
                let _ = stop.send(true);
                return Err(e);
            }
        }
        Fault::Sim(sim) => {
            say(&format!("killing simulated region {}", o.region));
            fault_at = started.elapsed();
            sim.kill();
        }
        Fault::Operator => {
            say(&format!(
                "kill {} now; waiting for the router to notice",
                o.region
            ));
            // The fault is when clients first see something change: a failure,
            // or an answer from another region.
            let base = started.elapsed();
            let first_change = || {
                snapshot()
                    .iter()
                    .filter(|x| x.at >= base && (x.failed() || !x.served_by(&o.region)))
                    .map(|x| x.at)
                    .min()
            };
            wait_until(o.timeout, "a client seeing the fault", || async {
                Ok(first_change().is_some())
            })
            .await?;
            fault_at = first_change().unwrap_or(base);
        }
    }
    wait_until(o.timeout, "the router taking the region out", || async {
        serving(o).await.map(|s| !s)
    })
    .await?;
    let detection = started.elapsed().saturating_sub(fault_at);
    tokio::time::sleep(o.phase).await;

    // The repair. The router may serve from the region again before the admin
    // API says so to our polling: what happens from here on is failback.
    let repair_started = started.elapsed();
    repair(o, &mut fault, &say).await?;
    wait_until(o.timeout, "the region back in service", || serving(o)).await?;
    let repair_at = started.elapsed();
    say("waiting for the failback to complete");
    let window = Duration::from_secs(1);
    let full = wait_until(o.timeout, "the full failback", || {
        let s = snapshot();
        let region = o.region.clone();
        async move {
            let now = started.elapsed();
            if now < repair_at + window {
                return Ok(false);
            }
            let recent = s.iter().filter(|x| x.at + window >= now);
            Ok(shares(recent).get(&region).copied().unwrap_or(0.0) >= 0.9 * region_share)
        }
    })
    .await;
    let full_at = full.is_ok().then(|| started.elapsed());
    let _ = stop.send(true);
    for t in load {
        let _ = t.await;
    }

    let marks = Marks {
        fault_at,
        detection,
        repair_started,
        repair_at,
        full_at,
        window,
    };
    Ok(summarize(o, fault.name(), &snapshot(), &before, &marks))
}

/// What the drill's tests build their cases from.
#[cfg(test)]
pub(super) mod fixtures {
    use super::*;

    /// A drill against nothing (no request is sent), with `clients` clients.
    pub(super) fn options(clients: u32) -> DrillOptions {
        DrillOptions {
            target: "127.0.0.1:1".parse().unwrap(),
            path: "/".to_owned(),
            headers: Vec::new(),
            admin: "127.0.0.1:2".parse().unwrap(),
            region: "a".to_owned(),
            rate: 100,
            phase: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            clients,
        }
    }

    /// A 200 from `region` to `client` at `ms`.
    pub(super) fn sample(ms: u64, client: u32, region: &str) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            status: 200,
            region: Some(region.to_owned()),
            client,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, region: &str) -> Sample {
        fixtures::sample(ms, 0, region)
    }

    #[test]
    fn answers_from_the_region_after_its_restart_are_failback_not_outage() {
        let o = fixtures::options(1);
        let before: Vec<Sample> = (0..10).map(|i| sample(i * 10, "a")).collect();
        let mut all = before.clone();
        all.extend((11..40).map(|i| sample(i * 10, "b")));
        // Restarted at 400 ms; the router sends to it at 420 ms; the drill's
        // poll of the admin API sees it back at 450 ms.
        all.push(sample(420, "a"));
        all.extend((45..60).map(|i| sample(i * 10, "a")));
        let marks = Marks {
            fault_at: Duration::from_millis(100),
            detection: Duration::from_millis(5),
            repair_started: Duration::from_millis(400),
            repair_at: Duration::from_millis(450),
            full_at: Some(Duration::from_millis(600)),
            window: Duration::from_millis(100),
        };
        let r = summarize(&o, "kill", &all, &before, &marks);
        assert_eq!(r.share_during.get("b"), Some(&1.0), "{r}");
        assert_eq!(r.switch_ms, 0, "{r}");
        assert_eq!(r.failback_first_ms, Some(0), "{r}");
        assert_eq!(r.share_after.get("a"), Some(&1.0), "{r}");
    }
}
