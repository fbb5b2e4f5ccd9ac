//! Many routers, one truth: drains shared through a real etcd (Debian's
//! `etcd-server`, started by the test on loopback ports), acknowledged by
//! every instance, guarded fleet-wide, and safe when etcd is gone.

mod support;

use georouter::fleet::cli::Canary;
use georouter::tools::sim::SimRegion;
use support::etcd::Etcd;
use support::*;

const TOKEN: &str = "fleet-test-token-0123456789abcdef";

/// Regions us, eu1 and eu2 (eu1 and eu2 in jurisdiction eu), checks every 50 ms.
struct World {
    us: SimRegion,
    eu1: SimRegion,
    eu2: SimRegion,
}

impl World {
    async fn new() -> World {
        World {
            us: region("us").await,
            eu1: region("eu1").await,
            eu2: region("eu2").await,
        }
    }

    /// The policy of instance `id` of the fleet under `prefix`.
    fn policy(&self, etcd: &Etcd, prefix: &str, id: &str, extra: &str) -> String {
        format!(
            r#"
            [[listeners]]
            address = "127.0.0.1:0"
            [health]
            interval = "50ms"
            [fleet]
            endpoints = ["{url}"]
            prefix = "{prefix}"
            instance = "{id}"
            lease_ttl = "2s"
            timeout = "500ms"
            {extra}
            {regions}
            [[jurisdictions]]
            name = "eu"
            strict = false
            countries = ["DE"]
            [[routes]]
            regions = ["eu1", "eu2", "us"]
            "#,
            url = etcd.url(),
            regions = regions_toml(&[
                (&self.us, None),
                (&self.eu1, Some("eu")),
                (&self.eu2, Some("eu"))
            ]),
        )
    }

    async fn instances(&self, etcd: &Etcd, prefix: &str, n: usize) -> Vec<TestRouter> {
        let mut routers = Vec::new();
        for i in 1..=n {
            let toml = self.policy(etcd, prefix, &format!("r{i}"), "");
            routers.push(TestRouter::spawn_with_token(&toml, TOKEN).await);
        }
        for r in &routers {
            let fleet = r.control.fleet().expect("in a fleet").clone();
            eventually("the instance to join the fleet", move || fleet.connected()).await;
        }
        routers
    }
}

/// An operator's signing key written to `dir/{name}.key`, and the `[fleet]`
/// lines that make instances take policies it signs.
fn signing_key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let (pkcs8, public) = georouter::signing::generate();
    let path = dir.join(format!("{name}.key"));
    std::fs::write(&path, pkcs8).unwrap();
    (path, format!("policy = true\npolicy_keys = [\"{public}\"]"))
}

async fn drained(router: &TestRouter, region: &str) -> Option<String> {
    let v = region_view(router.admin, region).await;
    v["drained"]
        .as_bool()
        .unwrap()
        .then(|| v["drain_scope"].as_str().unwrap_or("?").to_owned())
}

async fn fleet_view(router: &TestRouter) -> serde_json::Value {
    let r = get(&h1_client(), &format!("http://{}/fleet", router.admin)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_on_one_of_three_instances_reaches_all_three_and_they_say_so() {
    let etcd = Etcd::start("reach").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/reach", 3).await;

    let (status, body) = admin_post(
        routers[0].admin,
        "/regions/eu1/drain?reason=DR%20drill&wait=5s",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let acked = v["fleet"]["acknowledged"].as_array().unwrap().len();
    assert_eq!(
        acked, 3,
        "every instance acknowledged before the call returned: {v}"
    );
    assert_eq!(v["fleet"]["not_acknowledged"], serde_json::json!([]));
    for r in &routers {
        assert_eq!(drained(r, "eu1").await.as_deref(), Some("fleet"));
        // The first choice is drained: eu2 serves.
        let reply = get(&h1_client(), &r.url("/")).await;
        assert_eq!(reply.headers["x-georouter-region"], "eu2");
    }
    let f = fleet_view(&routers[2]).await;
    assert_eq!(f["fleet"]["instances"].as_array().unwrap().len(), 3, "{f}");
    assert_eq!(f["fleet"]["drains"]["eu1"]["drained"], true, "{f}");

    // An undrain from another instance reaches the first.
    let (status, body) = admin_post(
        routers[2].admin,
        "/regions/eu1/undrain?wait=5s",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(drained(&routers[0], "eu1").await, None);

    // A local-only drain stays on its instance and says so.
    let (status, body) = admin_post(
        routers[1].admin,
        "/regions/us/drain?scope=local&reason=local%20test",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(drained(&routers[1], "us").await.as_deref(), Some("local"));
    assert_eq!(drained(&routers[0], "us").await, None);
    let m = String::from_utf8(routers[0].state.metrics.render()).unwrap();
    assert!(m.contains("georouter_fleet_connected 1"), "{m}");
    assert!(m.contains("georouter_fleet_instances 3"), "{m}");
    // What the keepalive refreshes the gauge with: etcd's count alone.
    let fleet = routers[0].control.fleet().unwrap().clone();
    assert_eq!(fleet.count_members().await.unwrap(), 3);
}

/// Two instances drain the two EU regions at the same moment: one transaction
/// wins, the other is refused, and eu keeps a serving region everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jurisdiction_guard_holds_across_the_fleet_under_a_race() {
    let etcd = Etcd::start("race").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/race", 2).await;
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            admin_post(routers[0].admin, "/regions/eu1/drain?wait=5s", Some(TOKEN)),
            admin_post(routers[1].admin, "/regions/eu2/drain?wait=5s", Some(TOKEN)),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "exactly one drain wins: {a:?} {b:?}");
        for r in &routers {
            let serving = [drained(r, "eu1").await, drained(r, "eu2").await]
                .iter()
                .filter(|d| d.is_none())
                .count();
            assert_eq!(serving, 1, "one EU region serves everywhere");
        }
        // Undrain both for the next round.
        for region in ["eu1", "eu2"] {
            let (s, body) = admin_post(
                routers[0].admin,
                &format!("/regions/{region}/undrain?wait=5s"),
                Some(TOKEN),
            )
            .await;
            assert_eq!(s, 200, "{body}");
        }
    }
}

/// etcd dies under load: no request fails, drains stay applied (nothing is
/// undrained because etcd went away), a drain change made during the outage
/// holds locally and reaches the fleet when etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_the_fleet_serves_static_and_reconciles_after() {
    let mut etcd = Etcd::start("outage").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/outage", 2).await;
    let (s, body) = admin_post(routers[0].admin, "/regions/eu1/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");

    let load = Load::start(routers[1].url("/"), 4);
    load.wait_for(50).await;
    etcd.kill();
    for r in &routers {
        let fleet = r.control.fleet().unwrap().clone();
        eventually("the instance to notice etcd is gone", move || {
            !fleet.connected()
        })
        .await;
    }
    load.wait_for(500).await;
    for r in &routers {
        assert_eq!(drained(r, "eu1").await.as_deref(), Some("fleet"), "kept");
    }
    let m = String::from_utf8(routers[1].state.metrics.render()).unwrap();
    assert!(m.contains("georouter_fleet_connected 0"), "{m}");

    // An undrain during the outage: held here, not on the other instance.
    let (s, body) = admin_post(routers[1].admin, "/regions/eu1/undrain", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["fleet"]["held"], true, "{body}");
    assert_eq!(drained(&routers[1], "eu1").await, None);
    assert_eq!(drained(&routers[0], "eu1").await.as_deref(), Some("fleet"));
    load.wait_for(200).await;
    let report = load.stop().await;
    assert!(report.failed().is_empty(), "failed: {:?}", report.failed());

    etcd.restart().await;
    for r in &routers {
        let fleet = r.control.fleet().unwrap().clone();
        eventually("the instance to reconnect", move || fleet.connected()).await;
    }
    let first = &routers[0];
    eventually_async("the held undrain to reach the other instance", || async {
        drained(first, "eu1").await.is_none()
    })
    .await;
    assert_eq!(drained(&routers[1], "eu1").await, None);
}

/// A drain written while an instance's watch is down (etcd restarted) is not
/// missed: the instance reads everything again before it watches. The same
/// after a compaction that outran the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_resumes_after_an_etcd_restart_without_missing_a_drain() {
    let mut etcd = Etcd::start("resume").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/resume", 2).await;
    etcd.restart().await;
    // As soon as etcd answers again, before the second instance is back.
    let (s, body) = loop {
        let r = admin_post(routers[0].admin, "/regions/us/drain", Some(TOKEN)).await;
        let v: serde_json::Value = serde_json::from_str(&r.1).unwrap_or_default();
        if v["fleet"]["held"] != true {
            break r;
        }
        // Held: the first instance had not reconnected; undo and try again.
        let _ = admin_post(routers[0].admin, "/regions/us/undrain", Some(TOKEN)).await;
        let fleet = routers[0].control.fleet().unwrap().clone();
        eventually("reconnect", move || fleet.connected()).await;
    };
    assert_eq!(s, 200, "{body}");
    let second = &routers[1];
    eventually_async("the drain to reach the second instance", || async {
        drained(second, "us").await.as_deref() == Some("fleet")
    })
    .await;

    // Many changes, then a compaction past them: a watch that restarts from an
    // old revision must read everything again.
    for _ in 0..3 {
        admin_post(routers[0].admin, "/regions/us/undrain", Some(TOKEN)).await;
        admin_post(routers[0].admin, "/regions/us/drain", Some(TOKEN)).await;
    }
    etcd.compact();
    etcd.restart().await;
    let (s, body) = admin_post(routers[0].admin, "/regions/us/undrain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    eventually_async("the undrain to reach the second instance", || async {
        drained(second, "us").await.is_none()
    })
    .await;
}

/// A router process killed (SIGKILL: no goodbye) leaves the fleet's status when
/// its lease expires; the others say it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_the_fleet_when_its_lease_expires() {
    let etcd = Etcd::start("killed").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/killed", 1).await;
    let dir = test_dir("fleet-killed");
    let policy = dir.join("policy.toml");
    let admin_port = refused_port();
    std::fs::write(
        &policy,
        w.policy(
            &etcd,
            "/t/killed",
            "doomed",
            &format!("[admin]\naddress = \"127.0.0.1:{admin_port}\""),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_georouter"))
        .args(["run", "-c", policy.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = &routers[0];
    eventually_async("the process to join", || async {
        fleet_view(first).await["fleet"]["instances"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    eventually_async("its lease to expire", || async {
        let f = fleet_view(first).await;
        f["fleet"]["instances"].as_array().unwrap().len() == 1
            && f["fleet"]["gone"] == serde_json::json!(["doomed"])
    })
    .await;
}

/// `georouter fleet` talks to etcd directly: a drain reaches the running
/// instances, the guard holds, and the status lists who applied what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_cli_drains_and_reports_without_any_instance_in_the_way() {
    let etcd = Etcd::start("cli").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/cli", 2).await;
    let dir = test_dir("fleet-cli");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, w.policy(&etcd, "/t/cli", "cli", "")).unwrap();
    let cli = |args: &[&str]| {
        let policy = policy.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_georouter"))
                    .arg("fleet")
                    .args(&args)
                    .args(["-c", policy.to_str().unwrap()])
                    .output()
                    .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .await
            .unwrap()
        }
    };
    let (code, out, err) = cli(&["drain", "eu1", "--reason", "DR drill"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("2 of 2 live instance(s) applied it"), "{out}");
    for r in &routers {
        assert_eq!(drained(r, "eu1").await.as_deref(), Some("fleet"));
    }
    let (code, out, err) = cli(&["drain", "eu2"]).await;
    assert_eq!(code, Some(1), "the last EU region is refused: {out}{err}");
    assert!(
        err.contains("last serving region of jurisdiction eu"),
        "{err}"
    );
    let (code, out, _) = cli(&["status"]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("r1") && out.contains("r2") && out.contains("in step"),
        "{out}"
    );
    assert!(out.contains("drained: eu1 (DR drill"), "{out}");
    let (code, out, err) = cli(&["undrain", "eu1"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(drained(&routers[0], "eu1").await, None);
}

/// With fleet.policy, the policy lives in etcd: a push (checked first by the
/// CLI) reaches every instance; a policy the instances cannot load is refused
/// by each, recorded, and the policy before keeps serving everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_policy_reaches_every_instance_and_a_bad_one_replaces_none() {
    let etcd = Etcd::start("policy").await;
    let w = World::new().await;
    let dir = test_dir("fleet-policy");
    let (key, keys) = signing_key(&dir, "operator");
    let (wrong_key, _) = signing_key(&dir, "stranger");
    let mut routers = Vec::new();
    for i in 1..=3 {
        let toml = w.policy(&etcd, "/t/policy", &format!("r{i}"), &keys);
        routers.push(TestRouter::spawn_with_token(&toml, TOKEN).await);
    }
    for r in &routers {
        let fleet = r.control.fleet().unwrap().clone();
        eventually("join", move || fleet.connected()).await;
        assert_eq!(
            get(&h1_client(), &r.url("/")).await.headers["x-georouter-region"],
            "eu1"
        );
    }
    // A local reload is refused: the policy is the fleet's.
    let (s, body) = admin_post(routers[0].admin, "/reload", Some(TOKEN)).await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("georouter fleet push"), "{body}");

    let file = dir.join("policy.toml");
    let pushed = w.policy(&etcd, "/t/policy", "pusher", &keys).replace(
        r#"regions = ["eu1", "eu2", "us"]"#,
        r#"regions = ["eu2", "eu1", "us"]"#,
    );
    std::fs::write(&file, &pushed).unwrap();
    let push_with = |file: std::path::PathBuf, key: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_georouter"))
                .args(["fleet", "push", "-c", file.to_str().unwrap()])
                .args(["--key", key.to_str().unwrap()])
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
        .await
        .unwrap()
    };
    let push = |file: std::path::PathBuf| push_with(file, key.clone());
    // Signed by a key the instances do not list: refused by every one.
    let (code, out) = push_with(file.clone(), wrong_key.clone()).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("0 applied, 3 rejected"), "{out}");
    for r in &routers {
        assert_eq!(
            get(&h1_client(), &r.url("/")).await.headers["x-georouter-region"],
            "eu1"
        );
    }
    let (code, out) = push(file.clone()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("3 applied, 0 rejected"), "{out}");
    for r in &routers {
        assert_eq!(
            get(&h1_client(), &r.url("/")).await.headers["x-georouter-region"],
            "eu2"
        );
    }

    // An invalid file is not pushed at all.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        pushed.replace("[[routes]]", "[[routes]]\nsteering = \"sideways\""),
    )
    .unwrap();
    let (code, out) = push(bad).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not pushed"), "{out}");

    // One that loads where it was checked but not on the instances (here: a
    // geo database they do not have) is refused by each, and said so.
    let elsewhere = format!("{pushed}\n[geo]\ndatabase = \"/nonexistent/geo.mmdb\"\n");
    let fleet = routers[0].control.fleet().unwrap().clone();
    let signed = georouter::signing::sign_with(&key, &elsewhere).unwrap();
    let revision = fleet.push_policy(&signed).await.unwrap();
    eventually_async("every instance to refuse it", || async {
        let (_, rejected, _) = fleet.status().await.unwrap().policy_outcome(revision);
        rejected.len() == 3
    })
    .await;
    let status = fleet.status().await.unwrap();
    let (_, rejected, _) = status.policy_outcome(revision);
    assert!(
        rejected.iter().all(|(_, why)| why.contains("geo")),
        "{rejected:?}"
    );
    for r in &routers {
        assert_eq!(
            get(&h1_client(), &r.url("/")).await.headers["x-georouter-region"],
            "eu2",
            "the policy before keeps serving"
        );
    }
    let text = georouter::fleet::cli::render(&status);
    assert!(text.contains("0 applied, 3 rejected"), "{text}");
}

/// etcd with mutual TLS: the router presents its client certificate and
/// checks etcd's against the CA; without the certificate it cannot join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_that_requires_mtls_is_joined_with_the_client_certificate() {
    let pki = Pki::new("etcd-mtls");
    let etcd = Etcd::start_mtls("mtls", &pki).await;
    let tls = etcd.tls.as_ref().unwrap();
    let w = World::new().await;
    let files = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        toml_path(&tls.ca),
        toml_path(&tls.client_cert),
        toml_path(&tls.client_key)
    );
    let with_cert = w.policy(&etcd, "/t/mtls", "r1", &files);
    let router = TestRouter::spawn_with_token(&with_cert, TOKEN).await;
    let fleet = router.control.fleet().unwrap().clone();
    eventually("the instance to join over mTLS", move || fleet.connected()).await;
    let (s, body) = admin_post(router.admin, "/regions/us/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["fleet"]["acknowledged"],
        serde_json::json!(["r1"]),
        "{body}"
    );

    // Without the client certificate: refused by etcd, so held locally.
    let only_ca = w.policy(
        &etcd,
        "/t/mtls",
        "r2",
        &format!("ca_file = \"{}\"", toml_path(&tls.ca)),
    );
    let stranger = TestRouter::spawn_with_token(&only_ca, TOKEN).await;
    let (s, body) = admin_post(stranger.admin, "/regions/us/undrain", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["fleet"]["held"], true, "{body}");
    assert!(!stranger.control.fleet().unwrap().connected());
}

/// A partial drain made on one instance reaches the others (the same share
/// everywhere), is kept in each one's state file, and ends by a newer one.
#[tokio::test]
async fn a_partial_drain_on_one_instance_reaches_the_whole_fleet() {
    let etcd = Etcd::start("scale").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/scale", 2).await;
    let (status, body) = admin_post(
        routers[0].admin,
        "/regions/eu1/capacity?scale=0.25",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["fleet"]["revision"].as_i64().unwrap() > 0, "{v}");
    let other = routers[1].control.clone();
    eventually("the other instance to apply the partial drain", move || {
        georouter::admin::views::regions(&other)
            .iter()
            .any(|r| r.name == "eu1" && r.capacity_scale == 0.25)
    })
    .await;
    let v = region_view(routers[1].admin, "eu1").await;
    assert_eq!(v["scale_scope"], "fleet", "{v}");
    // A local one stays on its instance.
    let (status, body) = admin_post(
        routers[1].admin,
        "/regions/us/capacity?scale=0.5&scope=local",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        region_view(routers[1].admin, "us").await["scale_scope"],
        "local"
    );
    assert_eq!(
        region_view(routers[0].admin, "us").await["capacity_scale"],
        1.0
    );
    // All back, from the other instance.
    let (status, body) = admin_post(
        routers[1].admin,
        "/regions/eu1/capacity?scale=1",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let first = routers[0].control.clone();
    eventually(
        "the first instance to give eu1 its clients back",
        move || {
            georouter::admin::views::regions(&first)
                .iter()
                .any(|r| r.name == "eu1" && r.capacity_scale == 1.0)
        },
    )
    .await;
}

/// Two direct writes to etcd (credentials, not the admin API: no writer-side
/// guard) draining every EU region: no instance applies the second, each says
/// so, and undraining the first lets the second apply.
#[tokio::test]
async fn direct_writes_that_drain_a_whole_jurisdiction_are_not_applied() {
    let etcd = Etcd::start("direct").await;
    let w = World::new().await;
    let toml = |id: &str| {
        w.policy(&etcd, "/t/direct", id, "")
            .replace("strict = false", "strict = true")
            .replace(
                r#"regions = ["eu1", "eu2", "us"]"#,
                r#"regions = ["eu1", "eu2"]"#,
            )
    };
    let mut routers = Vec::new();
    for id in ["r1", "r2"] {
        let r = TestRouter::spawn_with_token(&toml(id), TOKEN).await;
        let fleet = r.control.fleet().unwrap().clone();
        eventually("joined", move || fleet.connected()).await;
        routers.push(r);
    }
    let fleet = routers[0].control.fleet().unwrap().clone();
    let put = |region: &'static str, drained: bool, at_ms: u64| {
        let fleet = fleet.clone();
        async move {
            let value = serde_json::json!({
                "drained": drained, "reason": "direct", "by": "etcdctl", "at_ms": at_ms,
            });
            fleet
                .store
                .put(
                    &fleet.keys.drain(region),
                    value.to_string().as_bytes(),
                    None,
                )
                .await
                .unwrap();
        }
    };
    let now = georouter::fleet::now_ms();
    put("eu1", true, now).await;
    put("eu2", true, now + 1).await;
    for r in &routers {
        let control = r.control.clone();
        eventually("eu2's drain refused", move || {
            georouter::admin::views::regions(&control)
                .iter()
                .any(|v| v.name == "eu2" && v.drain_refused.as_deref() == Some("eu"))
        })
        .await;
        assert_eq!(drained(r, "eu1").await.as_deref(), Some("fleet"));
        assert_eq!(drained(r, "eu2").await, None, "the whole EU was drained");
        let m = String::from_utf8(r.state.metrics.render()).unwrap();
        assert!(
            m.contains("georouter_drain_refused{region=\"eu2\"} 1"),
            "{m}"
        );
        // The route's clients are still served, by eu2.
        let reply = get(&h1_client(), &r.url("/")).await;
        assert_eq!(reply.headers["x-georouter-region"], "eu2");
    }
    // eu1 undrained: eu2's drain applies now.
    put("eu1", false, now + 2).await;
    for r in &routers {
        let control = r.control.clone();
        eventually("eu2 drained once eu1 is back", move || {
            georouter::admin::views::regions(&control)
                .iter()
                .any(|v| v.name == "eu2" && v.drained && v.drain_refused.is_none())
        })
        .await;
    }
}

/// A partition: A, cut off from etcd, drains eu1 (held: its own view has eu2
/// serving); meanwhile B drains eu2 for the fleet. On heal, A's held drain goes
/// through the guarded transaction, no longer passes, and is dropped: every
/// instance keeps eu1 serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_never_drains_a_whole_jurisdiction() {
    let etcd = Etcd::start("partition").await;
    let w = World::new().await;
    let etcd_addr: std::net::SocketAddr = etcd.url().trim_start_matches("http://").parse().unwrap();
    let link = support::link::Link::to(etcd_addr).await;
    let toml = |id: &str| {
        w.policy(&etcd, "/t/partition", id, "")
            .replace("strict = false", "strict = true")
            .replace(
                r#"regions = ["eu1", "eu2", "us"]"#,
                r#"regions = ["eu1", "eu2"]"#,
            )
    };
    let a = TestRouter::spawn_with_token(
        &toml("a").replace(&etcd.url(), &format!("http://{}", link.addr)),
        TOKEN,
    )
    .await;
    let b = TestRouter::spawn_with_token(&toml("b"), TOKEN).await;
    for r in [&a, &b] {
        let fleet = r.control.fleet().unwrap().clone();
        eventually("joined", move || fleet.connected()).await;
    }
    link.cut();
    let fleet_a = a.control.fleet().unwrap().clone();
    eventually("a cut off", move || !fleet_a.connected()).await;
    let (status, body) =
        admin_post(a.admin, "/regions/eu1/drain?reason=partition", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["fleet"]["held"], true, "{v}");
    let (status, body) = admin_post(b.admin, "/regions/eu2/drain?reason=fleet", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    link.heal();
    let fleet_a = a.control.fleet().unwrap().clone();
    eventually("a back", move || fleet_a.connected()).await;
    for r in [&a, &b] {
        let control = r.control.clone();
        eventually("eu2 drained, eu1 serving", move || {
            let v = georouter::admin::views::regions(&control);
            let drained = |n: &str| v.iter().any(|r| r.name == n && r.drained);
            drained("eu2") && !drained("eu1")
        })
        .await;
        let reply = get(&h1_client(), &r.url("/")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.headers["x-georouter-region"], "eu1");
    }
    // The held drain was dropped, not written: the fleet has eu1 undrained.
    let f = fleet_view(&b).await;
    assert_ne!(f["fleet"]["drains"]["eu1"]["drained"], true, "{f}");
}

/// Drain changes back to back for two and a half lease TTLs: every change
/// makes each instance acknowledge it, and no acknowledgement may push the
/// keepalive back (before, one a second expired every lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_drain_changes_never_cost_an_instance_its_lease() {
    let etcd = Etcd::start("churn").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/churn", 2).await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut changes = 0;
    while std::time::Instant::now() < until {
        let action = if changes % 2 == 0 { "drain" } else { "undrain" };
        let (status, body) = admin_post(
            routers[changes % 2].admin,
            &format!("/regions/us/{action}?wait=5s"),
            Some(TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        changes += 1;
    }
    assert!(changes > 10, "{changes} changes");
    for r in &routers {
        let m = String::from_utf8(r.state.metrics.render()).unwrap();
        assert!(
            m.contains("georouter_fleet_leases_lost_total 0"),
            "after {changes} changes:\n{m}"
        );
        assert!(r.control.fleet().unwrap().connected());
    }
}

/// A record written into instances/ without a lease (by hand, or forged with
/// an instance's credentials) is neither a member nor an acknowledgement.
#[tokio::test]
async fn an_instance_record_without_a_lease_is_not_a_member() {
    let etcd = Etcd::start("forged").await;
    let w = World::new().await;
    let routers = w.instances(&etcd, "/t/forged", 1).await;
    let fleet = routers[0].control.fleet().unwrap().clone();
    let forged = serde_json::json!({
        "instance": "ghost", "applied_revision": 1_000_000, "policy_generation": 1,
        "regions": {}, "at_ms": georouter::fleet::now_ms(),
    });
    fleet
        .store
        .put(
            &fleet.keys.instance("ghost"),
            forged.to_string().as_bytes(),
            None,
        )
        .await
        .unwrap();
    let status = fleet.status().await.unwrap();
    let names: Vec<&str> = status
        .instances
        .iter()
        .map(|i| i.instance.as_str())
        .collect();
    assert_eq!(names, ["r1"], "{status:?}");
}

/// A value in a drain key that is not a record (garbage, or over the size
/// limit) is read one way: the watching instance and a restarted one both
/// keep the region's last drain; `fleet status` names it; guarded drains of
/// other regions are decided, not stuck; a drain of an unknown region is
/// applied nowhere and not written to the state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_drain_value_is_read_alike_everywhere_and_blocks_nothing() {
    let etcd = Etcd::start("malformed").await;
    let w = World::new().await;
    let dir = test_dir("malformed");
    let state = |id: &str| dir.join(format!("{id}.json"));
    for id in ["r1", "r2"] {
        let _ = std::fs::remove_file(state(id));
    }
    let toml = |id: &str| {
        w.policy(
            &etcd,
            "/t/malformed",
            id,
            &format!("[admin]\nstate_file = \"{}\"\n", toml_path(&state(id))),
        )
    };
    let start = |id: &'static str| {
        let text = toml(id);
        async move {
            let r = TestRouter::spawn_with_token(&text, TOKEN).await;
            let fleet = r.control.fleet().unwrap().clone();
            eventually("joined", move || fleet.connected()).await;
            r
        }
    };
    let r1 = start("r1").await;
    let r2 = start("r2").await;
    let (s, body) = admin_post(r1.admin, "/regions/eu1/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let fleet = r1.control.fleet().unwrap().clone();
    fleet
        .store
        .put(&fleet.keys.drain("eu1"), b"{ not a drain", None)
        .await
        .unwrap();
    let big = vec![b' '; 8192];
    fleet
        .store
        .put(&fleet.keys.drain("nowhere"), &big, None)
        .await
        .unwrap();
    let value = serde_json::json!({ "drained": true, "at_ms": georouter::fleet::now_ms() });
    fleet
        .store
        .put(
            &fleet.keys.drain("atlantis"),
            value.to_string().as_bytes(),
            None,
        )
        .await
        .unwrap();
    // A partial drain over the size limit, valid JSON padded out: not applied.
    let padded = format!("{{\"keep\": 0.1, \"at_ms\": 1}}{}", " ".repeat(8192));
    fleet
        .store
        .put(&fleet.keys.scale("us"), padded.as_bytes(), None)
        .await
        .unwrap();
    // The watching instance keeps eu1 drained; a restarted one reads it alike.
    let _ = r2.shutdown().await;
    let r2 = start("r2").await;
    for r in [&r1, &r2] {
        assert_eq!(drained(r, "eu1").await.as_deref(), Some("fleet"));
    }
    for r in [&r1, &r2] {
        assert_eq!(region_view(r.admin, "us").await["capacity_scale"], 1.0);
    }
    let f = fleet_view(&r2).await;
    assert!(f["fleet"]["malformed"]["eu1"].is_string(), "{f}");
    assert!(
        f["fleet"]["malformed"]["nowhere"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{f}"
    );
    let saved = std::fs::read_to_string(state("r2")).unwrap();
    assert!(!saved.contains("atlantis"), "{saved}");
    // Guarded drains are decided, not stuck on the unreadable key: eu2 is
    // refused (eu1 may be drained), us is drained.
    let (s, body) = admin_post(r2.admin, "/regions/eu2/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 409, "{body}");
    let (s, body) = admin_post(r2.admin, "/regions/us/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    // Writing eu1 again ends it.
    let (s, body) = admin_post(r1.admin, "/regions/eu1/undrain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    for r in [&r1, &r2] {
        assert_eq!(drained(r, "eu1").await, None);
    }
}

/// etcd restarted empty under the fleet: every instance notices the fleet's
/// epoch is gone, keeps its drains (fail static), says its history changed
/// and is not counted in step; `fleet restore` from an instance's state file
/// puts the epoch and the drains back and the fleet follows etcd again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_data_loss_keeps_every_drain_until_the_fleet_is_restored() {
    let mut etcd = Etcd::start("wiped").await;
    let w = World::new().await;
    let dir = test_dir("wiped");
    let state = |id: &str| dir.join(format!("{id}.json"));
    let mut routers = Vec::new();
    for id in ["r1", "r2"] {
        let _ = std::fs::remove_file(state(id));
        let toml = w.policy(
            &etcd,
            "/t/wiped",
            id,
            &format!("[admin]\nstate_file = \"{}\"\n", toml_path(&state(id))),
        );
        let r = TestRouter::spawn_with_token(&toml, TOKEN).await;
        let fleet = r.control.fleet().unwrap().clone();
        eventually("joined", move || fleet.connected()).await;
        routers.push(r);
    }
    let (s, body) = admin_post(routers[0].admin, "/regions/eu1/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let load = Load::start(routers[1].url("/"), 2);
    etcd.wipe().await;
    for r in &routers {
        let fleet = r.control.fleet().unwrap().clone();
        eventually("the history change noticed", move || {
            fleet.history_changed()
        })
        .await;
    }
    // Well after: the drains hold, nothing failed.
    load.wait_for(load.sent() + 200).await;
    for r in &routers {
        assert_eq!(drained(r, "eu1").await.as_deref(), Some("fleet"));
        let m = String::from_utf8(r.state.metrics.render()).unwrap();
        assert!(m.contains("georouter_fleet_history_changed 1"), "{m}");
    }
    let status = routers[0].control.fleet().unwrap().status().await.unwrap();
    assert!(
        status.instances.iter().all(|i| !i.in_step),
        "acknowledged across histories: {status:?}"
    );
    let report = load.stop().await;
    assert!(report.failed().is_empty(), "{:?}", report.failed());
    assert_eq!(report.served_by("eu1"), 0, "a drained region served");

    let fleet = routers[0].control.fleet().unwrap().clone();
    let text = georouter::fleet::cli::restore(&fleet, &state("r1"))
        .await
        .unwrap();
    assert!(text.contains("restored: eu1"), "{text}");
    for r in &routers {
        let fleet = r.control.fleet().unwrap().clone();
        eventually("following etcd again", move || {
            !fleet.history_changed() && fleet.connected()
        })
        .await;
        assert_eq!(drained(r, "eu1").await.as_deref(), Some("fleet"));
    }
    let (s, body) = admin_post(routers[1].admin, "/regions/us/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["fleet"]["acknowledged"].as_array().unwrap().len(),
        2,
        "{v}"
    );
}

/// An undrain made while etcd is unreachable holds on the instance, survives
/// its restart (still without etcd), and reaches the fleet when etcd is back:
/// the fleet's older drain does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_undrain_survives_a_restart() {
    let mut etcd = Etcd::start("held-undrain").await;
    let w = World::new().await;
    let dir = test_dir("held-undrain");
    let state = dir.join("r1.json");
    let _ = std::fs::remove_file(&state);
    let toml = w.policy(
        &etcd,
        "/t/held-undrain",
        "r1",
        &format!("[admin]\nstate_file = \"{}\"\n", toml_path(&state)),
    );
    let start = || async {
        let r = TestRouter::spawn_with_token(&toml, TOKEN).await;
        eventually("ready", || r.control.ready()).await;
        r
    };
    let r = start().await;
    let fleet = r.control.fleet().unwrap().clone();
    eventually("joined", move || fleet.connected()).await;
    let (s, body) = admin_post(r.admin, "/regions/eu1/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    etcd.kill();
    let fleet = r.control.fleet().unwrap().clone();
    eventually("etcd gone", move || !fleet.connected()).await;
    let (s, body) = admin_post(r.admin, "/regions/eu1/undrain", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(drained(&r, "eu1").await, None);
    let _ = r.shutdown().await;
    let r = start().await;
    assert_eq!(drained(&r, "eu1").await, None, "the held undrain was lost");
    etcd.restart().await;
    let fleet = r.control.fleet().unwrap().clone();
    eventually("back", move || fleet.connected()).await;
    let f = fleet_view(&r).await;
    assert_eq!(f["fleet"]["drains"]["eu1"]["drained"], false, "{f}");
    assert_eq!(drained(&r, "eu1").await, None);
}

/// With fleet.policy: an instance restarted while etcd is down serves the last
/// fleet policy it accepted, not its bootstrap file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_serves_the_last_fleet_policy_it_accepted() {
    let mut etcd = Etcd::start("kept-policy").await;
    let w = World::new().await;
    let dir = test_dir("kept-policy");
    let state = dir.join("r1.json");
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(dir.join("r1.policy.toml"));
    let (key, keys) = signing_key(&dir, "operator");
    let extra = format!("{keys}\n[admin]\nstate_file = \"{}\"\n", toml_path(&state));
    let bootstrap_file = dir.join("bootstrap.toml");
    std::fs::write(&bootstrap_file, w.policy(&etcd, "/t/kept", "r1", &extra)).unwrap();
    let r = TestRouter::spawn_file(&bootstrap_file, Some(TOKEN)).await;
    let fleet = r.control.fleet().unwrap().clone();
    eventually("joined", move || fleet.connected()).await;
    let pushed = dir.join("pushed.toml");
    std::fs::write(
        &pushed,
        w.policy(&etcd, "/t/kept", "pusher", &keys).replace(
            r#"regions = ["eu1", "eu2", "us"]"#,
            r#"regions = ["eu2", "eu1", "us"]"#,
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_georouter"))
            .args(["fleet", "push", "-c", pushed.to_str().unwrap()])
            .args(["--key", key.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&h1_client(), &r.url("/")).await.headers["x-georouter-region"],
        "eu2"
    );
    etcd.kill();
    let _ = r.shutdown().await;
    // As `georouter run` starts it.
    let bootstrap = georouter::config::Config::load(&bootstrap_file).unwrap();
    let (config, revision) =
        georouter::fleet::last_accepted_policy(&bootstrap).expect("the accepted policy was kept");
    assert!(revision > 0);
    assert_eq!(
        config.fleet.as_ref().unwrap().instance,
        "r1",
        "its own identity"
    );
    let r = TestRouter::start(
        config,
        georouter::control::Options {
            config_path: Some(bootstrap_file.clone()),
            admin_token: Some(TOKEN.to_owned()),
            fleet_policy_revision: revision,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        get(&h1_client(), &r.url("/")).await.headers["x-georouter-region"],
        "eu2"
    );
}

/// A staged push: the canary (the first live instance by name) refuses the
/// policy, so no other instance sees it; a good one goes to the canary first,
/// then to all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_push_with_a_failing_canary_changes_no_other_instance() {
    let etcd = Etcd::start("canary").await;
    let w = World::new().await;
    let dir = test_dir("canary");
    let (key, keys) = signing_key(&dir, "operator");
    let mut routers = Vec::new();
    for i in 1..=3 {
        let toml = w.policy(&etcd, "/t/canary", &format!("r{i}"), &keys);
        let r = TestRouter::spawn_with_token(&toml, TOKEN).await;
        let fleet = r.control.fleet().unwrap().clone();
        eventually("joined", move || fleet.connected()).await;
        routers.push(r);
    }
    let first = |r: &TestRouter| {
        let url = r.url("/");
        async move { get(&h1_client(), &url).await.headers["x-georouter-region"].clone() }
    };
    let good = w.policy(&etcd, "/t/canary", "pusher", &keys).replace(
        r#"regions = ["eu1", "eu2", "us"]"#,
        r#"regions = ["eu2", "eu1", "us"]"#,
    );
    // Loads where it is written, not on the instances (no such geo database).
    let bad = format!("{good}\n[geo]\ndatabase = \"/nonexistent/geo.mmdb\"\n");
    let fleet = routers[0].control.fleet().unwrap().clone();
    let wait = std::time::Duration::from_secs(10);
    let e = georouter::fleet::cli::push_text(&fleet, &bad, &key, &Canary::First(1), wait)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("canary") && e.contains("r1") && e.contains("geo"),
        "{e}"
    );
    for r in &routers {
        assert_eq!(first(r).await, "eu1", "the bad policy reached an instance");
    }
    // A named canary that is not a live instance: nothing is pushed.
    let named = |names: &[&str]| Canary::Named(names.iter().map(|n| n.to_string()).collect());
    let e = georouter::fleet::cli::push_text(&fleet, &bad, &key, &named(&["r9"]), wait)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("r9") && e.contains("not a live instance"), "{e}");
    // Named canaries: the bad policy stops at r3, named; r1 and r2 keep theirs.
    let e = georouter::fleet::cli::push_text(&fleet, &bad, &key, &named(&["r3"]), wait)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("canary") && e.contains("r3"), "{e}");
    for r in &routers {
        assert_eq!(first(r).await, "eu1", "the bad policy reached an instance");
    }
    let (revision, status) =
        georouter::fleet::cli::push_text(&fleet, &good, &key, &named(&["r2", "r3"]), wait)
            .await
            .unwrap();
    let (applied, rejected, _) = status.policy_outcome(revision);
    assert_eq!((applied.len(), rejected.len()), (3, 0), "{status:?}");
    for r in &routers {
        assert_eq!(first(r).await, "eu2");
    }
}

/// The etcd client keeps its connections: a hundred calls in a row take one,
/// and a connection the far side closed is replaced, not failed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_keeps_its_connections() {
    let etcd = Etcd::start("pooled").await;
    let etcd_addr: std::net::SocketAddr = etcd.url().trim_start_matches("http://").parse().unwrap();
    let link = support::link::Link::to(etcd_addr).await;
    let w = World::new().await;
    let toml = w
        .policy(&etcd, "/t/pooled", "cli", "")
        .replace(&etcd.url(), &format!("http://{}", link.addr));
    let config = georouter::config::Config::from_toml(&toml).unwrap();
    let fleet = georouter::fleet::Fleet::new(config.fleet.as_ref().unwrap(), None).unwrap();
    for i in 0..50 {
        fleet
            .store
            .put("/t/pooled/x", format!("{i}").as_bytes(), None)
            .await
            .unwrap();
        fleet.store.range_prefix("/t/pooled/").await.unwrap();
    }
    assert_eq!(link.connections(), 1, "a connection per call");
    link.cut();
    let store = fleet.store.clone();
    eventually_async("the kept connection closed by the far side", || {
        let store = store.clone();
        async move { store.range_prefix("/t/pooled/").await.is_err() }
    })
    .await;
    link.heal();
    let (_, kvs) = fleet.store.range_prefix("/t/pooled/").await.unwrap();
    assert_eq!(kvs[0].value, b"49");
    assert_eq!(link.connections(), 2);
}
