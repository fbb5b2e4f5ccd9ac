//! The fleet's rules over the in-memory store (`fleet::store::MemoryStore`):
//! routers in one process sharing one store, each through its own link, with
//! partitions and data loss played by the store. The same scenarios against a
//! real etcd are in tests/fleet.rs; these need no etcd binary.

mod support;

use std::sync::Arc;

use georouter::config::Config;
use georouter::control::Options;
use georouter::fleet::store::MemoryStore;
use georouter::tools::sim::SimRegion;
use support::*;

const TOKEN: &str = "fleet-store-test-token-0123456789ab";

struct World {
    us: SimRegion,
    eu1: SimRegion,
    eu2: SimRegion,
    store: MemoryStore,
}

impl World {
    async fn new() -> World {
        World {
            us: region("us").await,
            eu1: region("eu1").await,
            eu2: region("eu2").await,
            store: MemoryStore::new(),
        }
    }

    /// Instance `id`, on its own link to the store; eu is strict and the
    /// route has only its two regions.
    async fn instance(&self, id: &str) -> (TestRouter, MemoryStore) {
        self.instance_seeing(id, None).await
    }

    /// Instance `id`; `dead_eu2`: its policy points eu2 at a port where
    /// nothing listens, so that this instance (alone) sees eu2 down.
    async fn instance_seeing(&self, id: &str, dead_eu2: Option<u16>) -> (TestRouter, MemoryStore) {
        let eu2 = match dead_eu2 {
            Some(port) => {
                Policy::new().region_at("eu2", &format!("http://127.0.0.1:{port}"), Some("eu"))
            }
            None => Policy::new().region_in(&self.eu2, "eu"),
        };
        let toml = Policy::new()
            .section("[health]\ninterval = \"50ms\"")
            .section(&format!(
                "[fleet]\nendpoints = [\"http://127.0.0.1:9\"]\nprefix = \"/mem\"\ninstance = {id:?}\nlease_ttl = \"2s\"\ntimeout = \"500ms\""
            ))
            .region(&self.us)
            .region_in(&self.eu1, "eu")
            .merge(eu2)
            .jurisdiction("eu", true, &["DE"])
            .route(&["eu1", "eu2"])
            .toml();
        let config = Config::from_toml(&toml).unwrap();
        let link = self.store.client();
        let router = TestRouter::start(
            config,
            Options {
                admin_token: Some(TOKEN.to_owned()),
                fleet_store: Some(Arc::new(link.clone())),
                ..Default::default()
            },
        )
        .await;
        let fleet = router.control.fleet().unwrap().clone();
        eventually("joined", move || fleet.connected()).await;
        (router, link)
    }
}

fn drained(r: &TestRouter, region: &str) -> bool {
    drained_in(&r.control, region)
}

fn drained_in(control: &Arc<georouter::control::Control>, region: &str) -> bool {
    georouter::admin::views::regions(control)
        .iter()
        .any(|v| v.name == region && v.drained)
}

/// Until `r`'s own checks have taken `region` out of service.
async fn sees_down(r: &TestRouter, region: &'static str) {
    let control = r.control.clone();
    eventually("the region seen down", move || {
        georouter::admin::views::regions(&control)
            .iter()
            .any(|v| v.name == region && !v.healthy)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_reaches_every_instance_through_the_store() {
    let w = World::new().await;
    let (a, _) = w.instance("a").await;
    let (b, _) = w.instance("b").await;
    let (s, body) = admin_post(a.admin, "/regions/eu1/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["fleet"]["acknowledged"].as_array().unwrap().len(),
        2,
        "{v}"
    );
    assert!(drained(&b, "eu1"));
    // The guard: eu2 is the jurisdiction's last serving region.
    let (s, body) = admin_post(b.admin, "/regions/eu2/drain", Some(TOKEN)).await;
    assert_eq!(s, 409, "{body}");
    assert!(!drained(&a, "eu2") && !drained(&b, "eu2"));
}

/// A cut off from the store drains eu1 (held), B drains eu2 for the fleet; on
/// heal, A's held drain no longer passes the guard and is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_never_drains_a_whole_jurisdiction() {
    let w = World::new().await;
    let (a, link_a) = w.instance("a").await;
    let (b, _) = w.instance("b").await;
    link_a.set_reachable(false);
    let fleet_a = a.control.fleet().unwrap().clone();
    eventually("a cut off", move || !fleet_a.connected()).await;
    let (s, body) = admin_post(a.admin, "/regions/eu1/drain", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["fleet"]["held"], true, "{v}");
    let (s, body) = admin_post(b.admin, "/regions/eu2/drain", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    link_a.set_reachable(true);
    for r in [&a, &b] {
        let control = r.control.clone();
        eventually("eu2 drained, eu1 serving", move || {
            let v = georouter::admin::views::regions(&control);
            let drained = |n: &str| v.iter().any(|r| r.name == n && r.drained);
            drained("eu2") && !drained("eu1")
        })
        .await;
        let reply = get(&h1_client(), &r.url("/")).await;
        assert_eq!(reply.headers["x-georouter-region"], "eu1", "{}", reply.body);
    }
}

/// The store loses its data: every instance notices the history changed and
/// keeps the drains it applied; nothing is undrained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_loss_keeps_every_drain() {
    let w = World::new().await;
    let (a, _) = w.instance("a").await;
    let (b, _) = w.instance("b").await;
    let (s, body) = admin_post(a.admin, "/regions/eu1/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    w.store.wipe();
    for r in [&a, &b] {
        let fleet = r.control.fleet().unwrap().clone();
        eventually("the history change noticed", move || {
            fleet.history_changed()
        })
        .await;
        assert!(drained(r, "eu1"), "undrained by a data loss");
        let reply = get(&h1_client(), &r.url("/")).await;
        assert_eq!(reply.headers["x-georouter-region"], "eu2");
    }
}

/// The guard reads every live instance's own view, not only the caller's: B
/// sees eu2 down (its checks fail), so draining eu1 through A, which sees eu2
/// serving, would leave B's residents with no region. Refused, naming B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_empties_the_jurisdiction_on_another_instance_is_refused() {
    let w = World::new().await;
    let (a, _) = w.instance("a").await;
    let (b, _) = w.instance_seeing("b", Some(refused_port())).await;
    sees_down(&b, "eu2").await;
    // B's record says so in the store.
    let fleet = a.control.fleet().unwrap().clone();
    eventually_async("b's record reporting eu2 down", || {
        let fleet = fleet.clone();
        async move {
            let status = fleet.status().await.unwrap();
            status.instances.iter().any(|i| {
                i.instance == "b" && i.regions.get("eu2").is_some_and(|v| !v.starts_with("up"))
            })
        }
    })
    .await;
    let (s, body) = admin_post(a.admin, "/regions/eu1/drain", Some(TOKEN)).await;
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("on instance b"), "{body}");
    assert!(!drained(&a, "eu1") && !drained(&b, "eu1"));
    // Forced, it goes through.
    let (s, body) = admin_post(a.admin, "/regions/eu1/drain?force=true", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
}

/// The status page's data in a fleet: every member and whether it is in
/// step; cut off from the store, a banner says so (not grey small print).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_the_members_and_a_banner_when_the_store_is_out_of_reach() {
    let w = World::new().await;
    let (a, link_a) = w.instance("a").await;
    let (_b, _) = w.instance("b").await;
    let (s, body) = admin_post(a.admin, "/regions/eu1/drain?wait=5s", Some(TOKEN)).await;
    assert_eq!(s, 200, "{body}");
    let status = georouter::admin::views::status(&a.control).await;
    let fleet = status.fleet.as_ref().unwrap();
    let members = fleet.members.as_ref().expect("the members are read");
    let names: Vec<&str> = members.iter().map(|m| m.instance.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(members.iter().all(|m| m.in_step), "{members:?}");
    assert!(status.alerts.is_empty(), "{:?}", status.alerts);
    // Polled by any number of pages, the members cost etcd one read a second:
    // 50 polls at once, the first read shared (a status is 4 ranges).
    let before = link_a.reads();
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let control = a.control.clone();
        polls.spawn(async move { georouter::admin::views::status(&control).await });
    }
    while let Some(s) = polls.join_next().await {
        assert!(s.unwrap().fleet.unwrap().members.is_some());
    }
    assert!(
        link_a.reads() - before <= 4,
        "{} reads",
        link_a.reads() - before
    );
    link_a.set_reachable(false);
    let fleet_a = a.control.fleet().unwrap().clone();
    eventually("a cut off", move || !fleet_a.connected()).await;
    let status = georouter::admin::views::status(&a.control).await;
    let fleet = status.fleet.as_ref().unwrap();
    assert!(
        fleet.members.is_none() && fleet.error.is_some(),
        "{fleet:?}"
    );
    assert!(
        status
            .alerts
            .iter()
            .any(|a| a.contains("etcd is unreachable")),
        "{:?}",
        status.alerts
    );
}

/// The apply-side guard counts what the instance itself sees: a drain of
/// eu1 written straight into the store (past the writer's guard) is applied
/// by A, which sees eu2 serve, and held back by B, whose checks fail eu2 —
/// until eu2 is back for B. A drain in force stays when a region fails later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_applies_no_drain_that_leaves_it_without_a_serving_region() {
    let w = World::new().await;
    let (a, _) = w.instance("a").await;
    let port = refused_port();
    let (b, _) = w.instance_seeing("b", Some(port)).await;
    sees_down(&b, "eu2").await;
    let fleet = a.control.fleet().unwrap().clone();
    let value = format!(
        r#"{{"drained":true,"reason":"direct","by":"mallory","instance":"x","at_ms":{}}}"#,
        georouter::fleet::now_ms()
    );
    fleet
        .store
        .put(&fleet.keys.drain("eu1"), value.as_bytes(), None)
        .await
        .unwrap();
    let control = a.control.clone();
    eventually("a applies it", move || drained_in(&control, "eu1")).await;
    let control = b.control.clone();
    eventually("b holds it back", move || {
        georouter::admin::views::regions(&control)
            .iter()
            .any(|v| v.name == "eu1" && v.drain_refused.as_deref() == Some("eu"))
    })
    .await;
    assert!(!drained(&b, "eu1"), "b left its residents no region");
    let reply = get(&h1_client(), &b.url("/")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["x-georouter-region"], "eu1");
    // eu2 comes back for B: the drain held back applies there too.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let _eu2_for_b = georouter::tools::sim::SimRegion::serve("eu2", listener);
    let control = b.control.clone();
    eventually("b applies it once eu2 serves", move || {
        drained_in(&control, "eu1")
    })
    .await;
}
