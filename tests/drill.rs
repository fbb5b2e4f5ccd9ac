//! `georouter drill` against an in-process router and simulated regions: a drain
//! and a kill, each with its failback through slow start.

mod support;

use std::time::Duration;

use georouter::tools::drill::{self, DrillOptions, Fault};
use support::*;

async fn router(
    a: &georouter::tools::sim::SimRegion,
    b: &georouter::tools::sim::SimRegion,
) -> TestRouter {
    let extra = "[health.passive]\nejection = \"200ms\"\n[failback]\nslow_start = \"500ms\"\n";
    let r = TestRouter::spawn_with_token(&two_regions(a, b, extra), "t").await;
    eventually("ready", || r.control.ready()).await;
    r
}

fn options(router: &TestRouter) -> DrillOptions {
    DrillOptions {
        target: router.addr(),
        path: "/".to_owned(),
        headers: Vec::new(),
        admin: router.admin,
        region: "a".to_owned(),
        rate: 200,
        phase: Duration::from_millis(300),
        timeout: Duration::from_secs(20),
        clients: 1,
    }
}

#[tokio::test]
async fn a_drain_drill_moves_traffic_and_brings_it_back() {
    let a = region("a").await;
    let b = region("b").await;
    let router = router(&a, &b).await;
    let fault = Fault::Drain {
        token: "t".to_owned(),
        force: false,
    };
    let report = drill::run(&options(&router), fault, |_| {}).await.unwrap();
    eprintln!("{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.share_before.get("a"), Some(&1.0), "{report}");
    assert_eq!(report.share_during.get("b"), Some(&1.0), "{report}");
    assert!(
        report.failback_first_ms.is_some() && report.failback_full_ms.is_some(),
        "{report}"
    );
    assert!(
        report.share_after.get("a").copied().unwrap_or(0.0) >= 0.9,
        "{report}"
    );
    assert_eq!(region_view(router.admin, "a").await["drained"], false);
}

#[tokio::test]
async fn a_kill_drill_loses_no_request() {
    let mut a = region("a").await;
    let b = region("b").await;
    let router = router(&a, &b).await;
    let report = drill::run(&options(&router), Fault::Sim(&mut a), |_| {})
        .await
        .unwrap();
    eprintln!("{report}");
    assert_eq!(report.fault, "kill");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.share_during.get("b"), Some(&1.0), "{report}");
    assert!(report.failback_full_ms.is_some(), "{report}");
    let json = serde_json::to_value(&report).unwrap();
    assert!(
        json["detection_ms"].is_u64() && json["rto_ms"] == 0,
        "{json}"
    );
}

#[tokio::test]
async fn a_drill_refuses_a_region_its_requests_do_not_reach() {
    let a = region("a").await;
    let b = region("b").await;
    let router = router(&a, &b).await;
    let mut o = options(&router);
    o.region = "b".to_owned();
    let e = drill::run(
        &o,
        Fault::Drain {
            token: "t".to_owned(),
            force: false,
        },
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("do not reach it"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_drill_moves_the_stated_share_of_clients_and_the_same_ones() {
    let a = region("a").await;
    let b = region("b").await;
    let extra = "[client]\ntrusted_proxies = [\"127.0.0.0/8\"]\n";
    let router = TestRouter::spawn_with_token(&two_regions(&a, &b, extra), "t").await;
    eventually("ready", || router.control.ready()).await;
    let o = DrillOptions {
        headers: vec![(
            http::HeaderName::from_static("x-forwarded-for"),
            http::HeaderValue::from_static("3.1.0.1"),
        )],
        rate: 400,
        phase: Duration::from_millis(600),
        clients: 100,
        ..options(&router)
    };
    let report = drill::shift(&o, "t", 0.1, |_| {}).await.unwrap();
    eprintln!("{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.clients, 100, "{report}");
    assert_eq!(
        report.region_clients, 100,
        "every client was a's before: {report}"
    );
    // 10 % of 100 clients, within what chance allows (about 3 standard deviations).
    assert!((1..=19).contains(&report.moved), "{report}");
    assert_eq!(
        report.unstable, 0,
        "a moved client came back during the shift: {report}"
    );
    assert_eq!(report.returned, report.moved, "{report}");
    assert_eq!(region_view(router.admin, "a").await["capacity_scale"], 1.0);
}
