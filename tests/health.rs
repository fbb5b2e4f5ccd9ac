//! Health, failover and failback with real sockets: a region killed under a steady
//! stream, failing its checks, failing real traffic, drained under load, and
//! ramped back in. Timers are short here; the timer logic itself is tested on a
//! paused clock in `src/control/health/machine.rs`.

mod support;

use georouter::tools::sim::{Mode, SimRegion};
use support::*;
use tokio::time::Instant;

#[tokio::test]
async fn killing_a_region_under_load_loses_no_idempotent_request() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&two_regions(&a, &b, "")).await;
    let load = Load::start(router.url("/"), 4);
    load.wait_for(50).await;
    let killed = Instant::now();
    a.kill();
    eventually("a taken out", || phase(&router, "a") != "up").await;
    let detected = killed.elapsed();
    let before = b.requests();
    load.wait_for(100).await;
    let report = load.stop().await;
    assert!(report.failed().is_empty(), "failed: {:?}", report.failed());
    assert!(report.served_by("a") >= 50 && b.requests() >= before + 100);
    // Every answer after the first from b came from b: no flapping back to a.
    let first_b = report.answers.iter().position(|(_, r)| r == "b").unwrap();
    eprintln!(
        "kill -> region out: {detected:?}; {} requests, 0 failed, first served by b at #{first_b}",
        report.answers.len()
    );
    let metrics = get(&h1_client(), &format!("http://{}/metrics", router.admin))
        .await
        .body;
    assert_metrics(
        &metrics,
        &[
            r#"georouter_region_healthy{region="a"} 0"#,
            r#"georouter_failovers_total{from="a""#,
        ],
    );
}

#[tokio::test]
async fn failing_checks_take_a_region_out_and_passing_ones_ramp_it_back() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&two_regions(&a, &b, "[failback]\nslow_start = \"1h\"\n")).await;
    let client = h1_client();
    eventually("first checks", || router.control.ready()).await;
    a.set_health(false);
    eventually("a down", || phase(&router, "a") == "down").await;
    let v = region_view(router.admin, "a").await;
    assert_eq!(v["healthy"], false);
    assert!(
        v["last_transition"]["cause"]
            .as_str()
            .unwrap()
            .contains("2 checks failed"),
        "{v}"
    );
    let r = get(&client, &router.url("/")).await;
    assert_eq!(r.headers["x-georouter-region"], "b");

    a.set_health(true);
    eventually("a up", || phase(&router, "a") == "up").await;
    let v = region_view(router.admin, "a").await;
    let weight = v["weight"].as_f64().unwrap();
    assert!(
        weight > 0.0 && weight < 0.05,
        "a region back for a moment of a one-hour ramp gets a trickle: {v}"
    );
    // Most requests still go to b while a ramps.
    let mut to_a = 0;
    for _ in 0..40 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200);
        if r.headers["x-georouter-region"] == "a" {
            to_a += 1;
        }
    }
    assert!(to_a < 20, "{to_a} of 40 went to a ramping region");
}

/// Regions a (answering 503 to everything) and b behind a router; `health` goes
/// under `[health]`.
async fn a_failing(health: &str) -> (SimRegion, SimRegion, TestRouter) {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&two_regions(&a, &b, health)).await;
    a.set_mode(Mode::Fail);
    (a, b, router)
}

#[tokio::test]
async fn failures_in_real_traffic_eject_a_region_before_any_check_notices() {
    let (a, _b, router) = a_failing(
        "enabled = false\n[health.passive]\nconsecutive_failures = 3\nejection = \"1h\"\nmax_ejection = \"2h\"\nmin_distinct_clients = 1\n",
    )
    .await;
    let client = h1_client();
    // Each GET gets a 503 from a, is retried on b, and the client sees b's 200.
    for _ in 0..3 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-georouter-region"], "b");
    }
    eventually("a ejected", || phase(&router, "a") == "ejected").await;
    let seen = a.requests();
    for _ in 0..10 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.headers["x-georouter-region"], "b");
    }
    assert_eq!(a.requests(), seen, "an ejected region gets no traffic");
    let v = region_view(router.admin, "a").await;
    assert!(
        v["last_transition"]["cause"]
            .as_str()
            .unwrap()
            .contains("3 consecutive failures in traffic (last: status_5xx)"),
        "{v}"
    );
}

#[tokio::test]
async fn a_post_whose_region_refuses_connections_is_sent_to_the_next() {
    let b = region("b").await;
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [health]
        enabled = false
        [[regions]]
        name = "a"
        endpoints = [{{ url = "http://127.0.0.1:{}" }}]
        [[regions]]
        name = "b"
        endpoints = [{{ url = "{}" }}]
        [[routes]]
        regions = ["a", "b"]
        "#,
        refused_port(),
        b.url()
    );
    let router = TestRouter::spawn(&toml).await;
    let r = send(
        &h1_client(),
        http::Request::post(router.url("/count"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"12345",
            )))
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.body.trim()), (200, "5"));
    assert_eq!(r.headers["x-georouter-region"], "b");
}

#[tokio::test]
async fn the_retry_budget_stops_retries_of_requests_a_region_received() {
    let (_a, _b, router) = a_failing(
        "enabled = false\n[health.passive]\nconsecutive_failures = 0\n[retry]\nbudget = 0.0\nmin_retries = 2\n",
    )
    .await;
    let client = h1_client();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&client, &router.url("/")).await.status);
    }
    // Two retries in the budget (b answers 200), then a's own 503 comes through.
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
    let metrics = String::from_utf8(router.state.metrics.render()).unwrap();
    assert_metrics(&metrics, &["georouter_retry_budget_exhausted_total 4"]);
}

#[tokio::test]
async fn draining_under_load_fails_nothing_and_sends_nothing_new_there() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn_with_token(&two_regions(&a, &b, ""), "t0ken").await;
    let load = Load::start(router.url("/"), 4);
    load.wait_for(50).await;
    let (status, body) =
        admin_post(router.admin, "/regions/a/drain?reason=drill", Some("t0ken")).await;
    assert_eq!(status, 200, "{body}");
    let at_drain = a.requests();
    load.wait_for(100).await;
    let report = load.stop().await;
    assert!(report.failed().is_empty(), "failed: {:?}", report.failed());
    assert!(
        a.requests() <= at_drain + 4,
        "at most the 4 requests in flight at the drain reach a"
    );
    let v = region_view(router.admin, "a").await;
    assert_eq!(
        (v["drained"].clone(), v["healthy"].clone()),
        (true.into(), true.into())
    );
    assert_eq!(v["drain_reason"], "drill");
    assert!(v["requests"].as_u64().unwrap() >= 50, "{v}");

    let (status, _) = admin_post(router.admin, "/regions/a/undrain", Some("t0ken")).await;
    assert_eq!(status, 200);
    // Back in service through slow start: caches are cold after a drain too.
    let v = region_view(router.admin, "a").await;
    assert_eq!(v["serving"], true, "{v}");
    assert!(v["weight"].as_f64().unwrap() < 0.5, "{v}");
}

#[tokio::test]
async fn latency_steering_follows_the_measured_rtt() {
    let a = region("a").await;
    let b = region("b").await;
    a.set_latency(std::time::Duration::from_millis(60));
    let toml = two_regions(&a, &b, "[health.latency]\nhysteresis = \"20ms\"\n").replace(
        "regions = [\"a\", \"b\"]",
        "regions = [\"a\", \"b\"]\nsteering = \"latency\"",
    );
    let router = TestRouter::spawn(&toml).await;
    eventually("both measured", || {
        georouter::admin::views::regions(&router.control)
            .iter()
            .all(|r| r.rtt_ms.is_some())
    })
    .await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(
        r.headers["x-georouter-region"], "b",
        "the written order says a; b is faster"
    );
    let v = region_view(router.admin, "a").await;
    assert!(v["rtt_ms"].as_f64().unwrap() >= 60.0, "{v}");
}

#[tokio::test]
async fn panic_mode_routes_to_unhealthy_regions_instead_of_refusing() {
    let a = region("a").await;
    let b = region("b").await;
    let toml = two_regions(&a, &b, "").replace(
        "[[routes]]\n            regions = [\"a\", \"b\"]",
        "[[routes]]\n            path_prefix = \"/panic\"\n            panic_mode = true\n            regions = [\"a\", \"b\"]\n            [[routes]]\n            regions = [\"a\", \"b\"]",
    );
    assert!(toml.contains("panic_mode"));
    let router = TestRouter::spawn(&toml).await;
    a.set_health(false);
    b.set_health(false);
    eventually("both down", || {
        phase(&router, "a") == "down" && phase(&router, "b") == "down"
    })
    .await;
    let client = h1_client();
    let refused = get(&client, &router.url("/")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let served = get(&client, &router.url("/panic")).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.headers["x-georouter-region"], "a");
    // /explain reads the same facts the same way: routed in panic mode there,
    // refused on the other route.
    let explain = |path: &str| {
        let url = format!("http://{}/explain?ip=3.3.3.3&path={path}", router.admin);
        async move {
            let r = get(&h1_client(), &url).await;
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
        }
    };
    let e = explain("/panic").await;
    assert_eq!(e["chosen"], "a", "{e}");
    assert!(e["outcome"].as_str().unwrap().contains("panic mode"), "{e}");
    let e = explain("/").await;
    assert!(e["chosen"].is_null(), "{e}");
    assert!(e["outcome"].as_str().unwrap().starts_with("refused"), "{e}");
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_within_its_region() {
    let a = region("a").await;
    let b = region("b").await;
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [health]
        enabled = false
        [[regions]]
        name = "a"
        endpoints = [{{ url = "http://127.0.0.1:{}" }}, {{ url = "{}" }}]
        [[regions]]
        name = "b"
        endpoints = [{{ url = "{}" }}]
        [[routes]]
        regions = ["a", "b"]
        "#,
        refused_port(),
        a.url(),
        b.url()
    );
    let router = TestRouter::spawn(&toml).await;
    let client = h1_client();
    for _ in 0..6 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers["x-georouter-region"], "a",
            "the live endpoint of a serves"
        );
    }
    assert_eq!(b.requests(), 0);
    assert_eq!(
        phase(&router, "a"),
        "up",
        "one dead endpoint does not eject the region"
    );
}

/// Flap damping never refuses a jurisdiction's residents by itself: a region
/// held down for flapping comes back as soon as the rest of its jurisdiction
/// is down (here the hold-down would last an hour).
#[tokio::test]
async fn a_held_down_region_comes_back_when_its_jurisdiction_has_no_other() {
    let a = region("a").await;
    let b = region("b").await;
    let toml = two_regions(
        &a,
        &b,
        "[failback]\nflap_threshold = 1\nhold_down = \"1h\"\nslow_start = \"0s\"\n\
         [[jurisdictions]]\nname = \"eu\"\ncountries = [\"DE\"]\n",
    )
    .replace("name = \"a\"", "name = \"a\"\njurisdiction = \"eu\"")
    .replace("name = \"b\"", "name = \"b\"\njurisdiction = \"eu\"");
    let router = TestRouter::spawn(&toml).await;
    // a flaps once: back, but held down while b serves.
    a.set_health(false);
    eventually("a down", || phase(&router, "a") == "down").await;
    a.set_health(true);
    eventually("a held down", || phase(&router, "a") == "held_down").await;
    let client = h1_client();
    assert_eq!(
        get(&client, &router.url("/")).await.headers["x-georouter-region"],
        "b"
    );
    // b goes down: a is all eu has left.
    b.set_health(false);
    eventually("b down", || phase(&router, "b") == "down").await;
    eventually("a back early", || phase(&router, "a") == "up").await;
    let r = get(&client, &router.url("/")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-georouter-region"], "a");
}

/// The same when the last serving region dies without checks to notice: its
/// connect failures eject it (a region held down beside it does not count as
/// out), and the held-down one comes back.
#[tokio::test]
async fn the_last_serving_region_may_be_ejected_when_a_held_down_one_can_take_over() {
    let a = region("a").await;
    let b = region("b").await;
    let toml = two_regions(
        &a,
        &b,
        "[failback]\nflap_threshold = 1\nhold_down = \"1h\"\nslow_start = \"0s\"\n\
         [health.passive]\nconsecutive_failures = 3\n\
         [[jurisdictions]]\nname = \"eu\"\ncountries = [\"DE\"]\n",
    )
    .replace("name = \"a\"", "name = \"a\"\njurisdiction = \"eu\"")
    .replace(
        "name = \"b\"",
        "name = \"b\"\njurisdiction = \"eu\"\nhealth = { enabled = false }",
    );
    let router = TestRouter::spawn(&toml).await;
    a.set_health(false);
    eventually("a down", || phase(&router, "a") == "down").await;
    a.set_health(true);
    eventually("a held down", || phase(&router, "a") == "held_down").await;
    b.kill();
    let client = h1_client();
    // Not one request fails: while b is still in service, its connect
    // failures fall through to a (held down, passing its checks).
    for i in 0..50 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.headers["x-georouter-region"], "a");
    }
    eventually("b ejected", || phase(&router, "b") == "ejected").await;
    assert_eq!(phase(&router, "a"), "up");
}
