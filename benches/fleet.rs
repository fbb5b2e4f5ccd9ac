//! Fleet propagation: the time from a drain call on one instance to the last
//! instance of the fleet applying it, over a real etcd (Debian's etcd-server).
//! N = 50 instances in this process and N = 3 router processes; median and p99
//! over 100 drain changes. `cargo bench --bench fleet` (add `-- --quick` for
//! 20 changes, `-- --instances 500` for 500 in-process instances only,
//! `-- --processes 50` for 50 router processes only).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::*;

const TOKEN: &str = "fleet-bench-token-0123456789abcdef";

fn policy(etcd: &Etcd, regions: &str, id: &str, admin: &str) -> String {
    format!(
        r#"
        [server]
        workers = 1
        access_log = false
        [[listeners]]
        address = "127.0.0.1:0"
        [admin]
        address = "{admin}"
        token_env = "GEOROUTER_ADMIN_TOKEN"
        [health]
        interval = "10s"
        [fleet]
        endpoints = ["{url}"]
        prefix = "/bench"
        instance = "{id}"
        {regions}
        [[routes]]
        regions = ["a", "b"]
        "#,
        url = etcd.url()
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    println!(
        "{what}: {} drain changes, median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
    );
}

async fn in_process(etcd: &Etcd, regions: &str, n: usize, changes: usize) {
    let mut routers = Vec::new();
    for i in 0..n {
        let toml = policy(etcd, regions, &format!("p{i}"), "127.0.0.1:0");
        routers.push(TestRouter::spawn_with_token(&toml, TOKEN).await);
    }
    for r in &routers {
        let f = r.control.fleet().unwrap().clone();
        eventually_within(Duration::from_secs(60), "join", move || f.connected()).await;
    }
    let mut times = Vec::new();
    for k in 0..changes {
        let action = if k % 2 == 0 { "drain" } else { "undrain" };
        let started = Instant::now();
        let (status, body) = admin_post(
            routers[0].admin,
            &format!("/regions/a/{action}"),
            Some(TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let revision = v["fleet"]["revision"].as_i64().expect("a fleet revision");
        loop {
            if routers
                .iter()
                .all(|r| r.control.fleet().unwrap().applied() >= revision)
            {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(started.elapsed());
    }
    report(&format!("N = {n} in-process instances"), times);
}

/// What a router process has applied, from its metrics: no etcd call on the
/// way (`GET /fleet` reads every instance's record, and 50 of those in a row
/// measured the bench, not the fleet).
async fn applied_revision(client: &TestClient, admin: std::net::SocketAddr) -> i64 {
    let r = get(client, &format!("http://{admin}/metrics")).await;
    if r.status != 200 {
        return -1;
    }
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("georouter_fleet_applied_revision "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(-1, |v| v as i64)
}

async fn processes(etcd: &Etcd, regions: &str, n: usize, changes: usize) {
    let dir = test_dir("fleet-bench");
    let mut children = Vec::new();
    let mut admins = Vec::new();
    for i in 0..n {
        let port = refused_port();
        let path = dir.join(format!("r{i}.toml"));
        std::fs::write(
            &path,
            policy(
                etcd,
                regions,
                &format!("proc{i}"),
                &format!("127.0.0.1:{port}"),
            ),
        )
        .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_georouter"))
            .args(["run", "-c", path.to_str().unwrap()])
            .env("GEOROUTER_ADMIN_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        children.push(child);
        admins.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let client = h1_client();
    let applied = |a| applied_revision(&client, a);
    for &a in &admins {
        // The process binds its admin port when it has started; asking before
        // would be a refused connection.
        eventually_async("the process to listen", || async {
            tokio::net::TcpStream::connect(a).await.is_ok()
        })
        .await;
        eventually_async("the process to join", || async {
            applied(a).await >= 0
                && get(&client, &format!("http://{a}/metrics"))
                    .await
                    .body
                    .contains("georouter_fleet_connected 1")
        })
        .await;
    }
    let mut times = Vec::new();
    for k in 0..changes {
        let action = if k % 2 == 0 { "drain" } else { "undrain" };
        let started = Instant::now();
        let (status, body) =
            admin_post(admins[0], &format!("/regions/a/{action}"), Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let revision = v["fleet"]["revision"].as_i64().expect("a fleet revision");
        // Every process asked at once, each until it has applied the change.
        let mut each = tokio::task::JoinSet::new();
        for &a in &admins {
            let client = client.clone();
            each.spawn(async move { while applied_revision(&client, a).await < revision {} });
        }
        while each.join_next().await.is_some() {}
        times.push(started.elapsed());
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    report(&format!("N = {n} router processes"), times);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let changes = if quick { 20 } else { 100 };
    // `-- --instances N`: N in-process instances only (500 simulates a large
    // fleet on one machine: every one a whole router with its own etcd watch
    // and lease).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--instances")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>().expect("--instances N"));
    // `-- --processes N`: N router processes only.
    let procs = args
        .iter()
        .position(|a| a == "--processes")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>().expect("--processes N"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let etcd = Etcd::start("bench").await;
        let a = region("a").await;
        let b = region("b").await;
        let regions = regions_toml(&[(&a, None), (&b, None)]);
        if let Some(n) = only {
            in_process(&etcd, &regions, n, changes).await;
            return;
        }
        if let Some(n) = procs {
            processes(&etcd, &regions, n, changes).await;
            return;
        }
        processes(&etcd, &regions, 3, changes).await;
        in_process(&etcd, &regions, 50, changes).await;
    });
}
