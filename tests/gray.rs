//! Gray failure through a real router: regions that are full, slow, hung or
//! resetting lose their traffic smoothly; a survivor gets only what it can take
//! and the rest is refused fast with Retry-After; no request waits on a region
//! already known bad.

mod support;

use std::time::Duration;

use georouter::tools::sim::{Mode, SimRegion};
use support::*;

/// One region `r` with the given simulated endpoints, then `extra`.
fn one_region(endpoints: &[&SimRegion], region_extra: &str, extra: &str) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{ url = \"{}\" }}", e.url()))
        .collect();
    let health = if extra.contains("[health]") {
        ""
    } else {
        "[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\njitter = 0.0\n"
    };
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [server]\naccess_log = false\n\
         {health}\
         {extra}\n\
         [[regions]]\nname = \"r\"\nendpoints = [{}]\n{region_extra}\n",
        list.join(", ")
    )
}

/// `n` GETs of `url`, all at once; (status, region or body, Retry-After).
async fn burst(url: String, n: usize) -> Vec<(u16, String, Option<String>)> {
    concurrent_gets(&url, n)
        .await
        .iter()
        .map(|r| {
            let retry = r
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status, served_or_body(r), retry)
        })
        .collect()
}

#[tokio::test]
async fn a_failover_onto_a_region_without_the_capacity_serves_or_sheds_fast() {
    let a = region("a").await;
    let b = region("b").await;
    // b can take 4 requests at once, each 100 ms: it cannot absorb a's load.
    b.set_slow_requests(Duration::from_millis(100));
    let router = TestRouter::spawn(&format!(
        "{}\n",
        two_regions(
            &a,
            &b,
            "[upstream]\nmax_queue = 8\nqueue_timeout = \"300ms\"\n"
        )
        .replace(
            &format!("name = \"b\"\nendpoints = [{{ url = \"{}\" }}]", b.url()),
            &format!(
                "name = \"b\"\nmax_in_flight = 4\nendpoints = [{{ url = \"{}\" }}]",
                b.url()
            ),
        )
    ))
    .await;
    a.kill();
    let answers = burst(router.url("/"), 120).await;
    let served = answers
        .iter()
        .filter(|(s, r, _)| *s == 200 && r == "b")
        .count();
    let shed: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    let other: Vec<_> = answers
        .iter()
        .filter(|(s, r, _)| !(*s == 200 && r == "b") && *s != 503)
        .collect();
    assert!(other.is_empty(), "neither served nor shed: {other:?}");
    assert!(served >= 4, "b served {served}");
    assert!(
        !shed.is_empty(),
        "120 requests at once onto 4 slots shed none"
    );
    for (_, body, retry) in &shed {
        assert_eq!(retry.as_deref(), Some("1"), "{body}");
        assert!(body.contains("at capacity"), "{body}");
    }
    assert!(
        b.peak_concurrency() <= 4,
        "b saw {} requests at once, over its bound of 4",
        b.peak_concurrency()
    );
    let metrics = String::from_utf8(router.state.metrics.render()).unwrap();
    assert!(sum_of(&metrics, "georouter_shed_total{") >= shed.len() as f64);
    // Shedding is not b's fault: it stays in service.
    assert_eq!(phase(&router, "b"), "up");
    // The status page counts what was shed.
    let r = get(&h1_client(), &format!("http://{}/status", router.admin)).await;
    let status: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(
        status["shed"].as_u64().unwrap() >= shed.len() as u64,
        "{status}"
    );
}

#[tokio::test]
async fn a_full_region_spills_over_to_the_next_candidate() {
    let a = region("a").await;
    let b = region("b").await;
    a.set_slow_requests(Duration::from_millis(100));
    let toml = two_regions(&a, &b, "").replace(
        &format!("name = \"a\"\nendpoints = [{{ url = \"{}\" }}]", a.url()),
        &format!(
            "name = \"a\"\nmax_in_flight = 2\nendpoints = [{{ url = \"{}\" }}]",
            a.url()
        ),
    );
    let router = TestRouter::spawn(&toml).await;
    let answers = burst(router.url("/"), 40).await;
    assert!(answers.iter().all(|(s, _, _)| *s == 200), "{answers:?}");
    let by_b = answers.iter().filter(|(_, r, _)| r == "b").count();
    assert!(by_b > 0, "nothing spilled over to b");
    assert!(a.peak_concurrency() <= 2, "a saw {}", a.peak_concurrency());
    let metrics = String::from_utf8(router.state.metrics.render()).unwrap();
    assert_metrics(
        &metrics,
        &["georouter_spillover_total{from=\"a\",to=\"b\"}"],
    );
    assert!(sum_of(&metrics, "georouter_spillover_total{from=\"a\",to=\"b\"}") >= by_b as f64);
}

#[tokio::test]
async fn every_request_waiting_on_a_hung_region_moves_when_it_leaves_service() {
    let a = region("a").await;
    let b = region("b").await;
    // Only the region leaving service (the drain below) moves them: no checks,
    // no try_timeout, and a retry budget that would allow none.
    let router = TestRouter::spawn_with_token(
        &two_regions(
            &a,
            &b,
            "enabled = false\n[upstream]\ntry_timeout = \"0s\"\nresponse_timeout = \"20s\"\n\
             [retry]\nbudget = 0.0\nmin_retries = 0\n",
        ),
        "t0ken",
    )
    .await;
    a.set_mode(Mode::Hang);
    let waiting = tokio::spawn(burst(router.url("/"), 200));
    eventually("200 requests waiting on a", || a.requests() >= 200).await;
    let (status, body) =
        admin_post(router.admin, "/regions/a/drain?reason=hung", Some("t0ken")).await;
    assert_eq!(status, 200, "{body}");
    let answers = waiting.await.unwrap();
    let failed: Vec<_> = answers.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(answers.iter().all(|(_, r, _)| r == "b"));
}

#[tokio::test]
async fn a_hung_endpoint_leaves_the_rotation_while_its_sibling_serves() {
    let e1 = region("r").await;
    let e2 = region("r").await;
    let router = TestRouter::spawn(&one_region(
        &[&e1, &e2],
        "",
        "[upstream]\ntry_timeout = \"300ms\"\nresponse_timeout = \"10s\"\n",
    ))
    .await;
    e1.set_mode(Mode::Hang);
    let load = Load::start(router.url("/"), 4);
    load.wait_for(200).await;
    let report = load.stop().await;
    assert!(
        report.failed().is_empty(),
        "{} failed: {:?}",
        report.failed().len(),
        &report.failed()[..report.failed().len().min(3)]
    );
    // The checks see it too: out of rotation, and said so.
    let key = format!("http://{}", e1.addr());
    eventually("the hung endpoint out of rotation", || {
        let m = String::from_utf8(router.state.metrics.render()).unwrap();
        m.contains(&format!(
            "georouter_endpoint_healthy{{endpoint=\"{key}\",region=\"r\"}} 0"
        ))
    })
    .await;
    assert_eq!(
        phase(&router, "r"),
        "up",
        "the region serves on its sibling"
    );
    let view = region_view(router.admin, "r").await;
    let endpoints = view["load"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints[0]["url"], key.as_str());
    assert_eq!(endpoints[0]["healthy"], false, "{view}");
    assert_eq!(endpoints[1]["healthy"], true, "{view}");
}

#[tokio::test]
async fn a_reset_on_a_single_region_route_is_retried_on_the_sibling_endpoint() {
    let e1 = region("r").await;
    let e2 = region("r").await;
    e1.set_mode(Mode::Reset);
    let router = TestRouter::spawn(&one_region(
        &[&e1, &e2],
        "",
        "[health]\nenabled = false\n[health.passive]\nconsecutive_failures = 0\n",
    ))
    .await;
    let client = h1_client();
    for i in 0..60 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    assert!(e1.requests() > 0, "the resetting endpoint was never tried");
}

/// A jurisdiction's last serving region during a failover: one region, one
/// endpoint, nowhere else to go. Once the region has reset a request, a reset
/// of a replayable request is replayed once on a new connection, not answered
/// 502 (the first one is: no copy of the request was kept for a region that
/// had not reset).
#[tokio::test]
async fn a_reset_on_the_only_endpoint_of_the_only_region_is_retried_once() {
    let e = region("r").await;
    e.set_reset_every(3);
    let router = TestRouter::spawn(&one_region(
        &[&e],
        "",
        "[health]\nenabled = false\n[health.passive]\nconsecutive_failures = 0\n",
    ))
    .await;
    let client = h1_client();
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(get(&client, &router.url("/")).await.status);
    }
    assert_eq!(
        first,
        [200, 200, 502],
        "the first reset, before any was seen"
    );
    for i in 0..60 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    assert!(
        e.requests() >= 80,
        "{} requests: no resets were retried",
        e.requests()
    );
    // A POST is not replayed: it may have been acted on.
    e.set_mode(Mode::Reset);
    let post = http::Request::post(router.url("/"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .unwrap();
    let before = e.requests();
    assert_eq!(send(&client, post).await.status, 502);
    assert_eq!(e.requests(), before + 1, "the POST was sent twice");
}

#[tokio::test]
async fn a_reset_on_a_lone_endpoint_is_retried_on_a_new_connection_before_the_next_region() {
    let e = region("r").await;
    let next = region("next").await;
    e.set_reset_every(3);
    let toml = one_region(
        &[&e],
        "",
        "[health]\nenabled = false\n[health.passive]\nconsecutive_failures = 0\n",
    ) + &format!(
        "[[regions]]\nname = \"next\"\nendpoints = [{{ url = \"{}\" }}]\n\
         [[routes]]\nregions = [\"r\", \"next\"]\n",
        next.url()
    );
    let router = TestRouter::spawn(&toml).await;
    let client = h1_client();
    for i in 0..60 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.headers["x-georouter-region"], "r", "request {i}");
    }
    assert!(
        e.requests() >= 80,
        "{} requests: no resets were retried",
        e.requests()
    );
    assert_eq!(next.requests(), 0, "a reset went to the next region first");
}

#[tokio::test]
async fn a_slow_endpoint_loses_its_share_to_a_fast_sibling() {
    let slow = region("r").await;
    let fast = region("r").await;
    // Slow on real requests only: its checks stay fast.
    slow.set_slow_requests(Duration::from_millis(300));
    let router = TestRouter::spawn(&one_region(&[&slow, &fast], "", "")).await;
    let load = Load::start(router.url("/"), 4);
    load.wait_for(400).await;
    let report = load.stop().await;
    assert!(report.failed().is_empty(), "{:?}", report.failed());
    let total = slow.requests() + fast.requests();
    assert!(
        slow.requests() * 10 < total,
        "the slow endpoint took {} of {total} requests",
        slow.requests()
    );
}

#[tokio::test]
async fn upstream_connections_stay_within_the_endpoints_bound() {
    let e = region("r").await;
    e.set_slow_requests(Duration::from_millis(50));
    // One worker: one pool, so every connection it opens is counted here.
    let router = TestRouter::spawn(
        &one_region(
            &[&e],
            "max_in_flight = 3\nmax_queue = 1000\nqueue_timeout = \"10s\"",
            "",
        )
        .replace("[server]\n", "[server]\nworkers = 1\n"),
    )
    .await;
    let answers = burst(router.url("/"), 60).await;
    assert!(answers.iter().all(|(s, _, _)| *s == 200), "{answers:?}");
    assert!(e.peak_concurrency() <= 3, "peak {}", e.peak_concurrency());
    assert!(
        e.connections() <= 3,
        "{} upstream connections for a bound of 3",
        e.connections()
    );
}

#[test]
fn capacity_settings_are_checked_with_their_paths() {
    let base = "[[listeners]]\naddress = \"127.0.0.1:0\"\n";
    let toml = format!(
        "{base}[upstream]\nmax_in_flight = 0\n[[regions]]\nname = \"a\"\nmax_queue = 5\nqueue_timeout = \"0s\"\n\
         endpoints = [{{ url = \"http://127.0.0.1:1\", max_in_flight = 0 }}]\n"
    );
    let err = georouter::config::Config::from_toml(&toml)
        .unwrap_err()
        .to_string();
    for line in [
        "upstream.max_in_flight: must be at least 1",
        "regions[0].queue_timeout: must be longer than 0s when max_queue is above 0",
        "regions[0].endpoints[0].max_in_flight: must be at least 1",
    ] {
        assert!(err.contains(line), "{line} missing from: {err}");
    }
}

/// Which region served each of `clients` (addresses told by a trusted proxy).
async fn served_by(router: &TestRouter, clients: &[String]) -> Vec<String> {
    let client = h1_client();
    let mut out = Vec::new();
    for ip in clients {
        let req = http::Request::get(router.url("/"))
            .header("x-forwarded-for", ip)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = send(&client, req).await;
        assert_eq!(r.status, 200, "{}", r.body);
        out.push(r.headers["x-georouter-region"].to_str().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn a_partial_drain_moves_the_stated_share_and_the_same_clients_each_time() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn_with_token(
        &two_regions(&a, &b, "[client]\ntrusted_proxies = [\"127.0.0.0/8\"]\n"),
        "t0ken",
    )
    .await;
    let clients: Vec<String> = (0..400)
        .map(|i| format!("3.1.{}.{}", i / 200, i % 200 + 1))
        .collect();
    assert!(served_by(&router, &clients).await.iter().all(|r| r == "a"));
    let (status, body) = admin_post(
        router.admin,
        "/regions/a/capacity?scale=0.25",
        Some("t0ken"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let first = served_by(&router, &clients).await;
    let kept = first.iter().filter(|r| *r == "a").count();
    // 25 % of 400 clients, within what chance allows (about 4 standard deviations).
    assert!((65..=135).contains(&kept), "a kept {kept} of 400 clients");
    assert_eq!(
        served_by(&router, &clients).await,
        first,
        "the moved clients changed"
    );
    let view = region_view(router.admin, "a").await;
    assert_eq!(view["capacity_scale"], 0.25, "{view}");
    // A 10 % shift first, then all back.
    let (status, _) =
        admin_post(router.admin, "/regions/a/capacity?scale=90%", Some("t0ken")).await;
    assert_eq!(status, 200);
    let shifted = served_by(&router, &clients).await;
    let moved = shifted.iter().filter(|r| *r == "b").count();
    assert!(
        (10..=70).contains(&moved),
        "{moved} of 400 moved for a 10 % shift"
    );
    for (before, after) in first.iter().zip(&shifted) {
        // A client a kept at 25 % is kept at 90 %: the shares nest.
        assert!(!(before == "a" && after == "b"), "a client bounced");
    }
    let (status, _) = admin_post(router.admin, "/regions/a/capacity?scale=1", Some("t0ken")).await;
    assert_eq!(status, 200);
    assert!(served_by(&router, &clients).await.iter().all(|r| r == "a"));
    let (status, _) = admin_post(router.admin, "/regions/a/capacity?scale=2", Some("t0ken")).await;
    assert_eq!(status, 400);
    let (status, _) = admin_post(router.admin, "/regions/a/capacity?scale=0.5", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_region_slow_on_real_requests_loses_its_traffic_to_its_peers() {
    let a = region("a").await;
    let b = region("b").await;
    // Slow on real requests only: its checks stay fast and pass.
    a.set_slow_requests(Duration::from_millis(600));
    let toml = policy(
        &[&a, &b],
        r#"
        [server]
        access_log = false
        [health]
        interval = "50ms"
        timeout = "200ms"
        jitter = 0.0
        [health.passive]
        slow_factor = 5.0
        slow_min = "250ms"
        slow_min_requests = 5
        [[routes]]
        path_prefix = "/a/"
        regions = ["a", "b"]
        [[routes]]
        regions = ["b", "a"]
        "#,
    );
    let router = TestRouter::spawn(&toml).await;
    // Clients of both regions, so each has peers to be compared with.
    let near_a = Load::start(router.url("/a/x"), 8);
    let near_b = Load::start(router.url("/b/x"), 2);
    eventually("the slow region out of service", || {
        phase(&router, "a") != "up"
    })
    .await;
    near_a.wait_for(50).await;
    let a_requests = a.requests();
    near_a.wait_for(50).await;
    let (ra, rb) = (near_a.stop().await, near_b.stop().await);
    assert!(ra.failed().is_empty() && rb.failed().is_empty());
    assert_eq!(
        a.requests(),
        a_requests,
        "the slow region still got new requests"
    );
    let metrics = String::from_utf8(router.state.metrics.render()).unwrap();
    assert!(sum_of(&metrics, "georouter_latency_outliers_total{region=\"a\"}") >= 1.0);
}

/// POSTs (never replayed elsewhere) of `path` from each of `clients` (told
/// by a trusted proxy), `n` each.
async fn from_clients(router: &TestRouter, path: &str, clients: &[&str], n: usize) {
    let client = h1_client();
    for ip in clients {
        for _ in 0..n {
            let req = http::Request::post(router.url(path))
                .header("x-forwarded-for", *ip)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            send(&client, req).await;
        }
    }
}

#[tokio::test]
async fn one_client_cannot_eject_a_region_with_any_status() {
    for count_5xx in ["gateway", "all"] {
        let a = region("a").await;
        let b = region("b").await;
        let router = TestRouter::spawn(&two_regions(
            &a,
            &b,
            &format!(
                "enabled = false\n[health.passive]\nconsecutive_failures = 3\ncount_5xx = \"{count_5xx}\"\n\
                 [client]\ntrusted_proxies = [\"127.0.0.0/8\"]\n"
            ),
        ))
        .await;
        // One client, any number of 500s and 502s: a stays in service.
        from_clients(&router, "/status/500", &["3.3.3.3"], 12).await;
        from_clients(&router, "/status/502", &["3.3.3.3"], 12).await;
        assert_eq!(phase(&router, "a"), "up", "count_5xx = {count_5xx}");
        // Application errors count only when the policy says so, and then
        // only from a quorum of clients.
        from_clients(
            &router,
            "/status/500",
            &["3.3.3.4", "3.3.3.5", "3.3.3.6"],
            2,
        )
        .await;
        let after_500s = phase(&router, "a");
        if count_5xx == "gateway" {
            assert_eq!(after_500s, "up", "500s are the application's answers");
            from_clients(
                &router,
                "/status/502",
                &["3.3.3.4", "3.3.3.5", "3.3.3.6"],
                2,
            )
            .await;
        }
        eventually("a ejected by three clients' failures", || {
            phase(&router, "a") == "ejected"
        })
        .await;
    }
}

/// The region `name` as `/regions` shows it, read in process.
fn view_of(router: &TestRouter, name: &str) -> georouter::admin::views::RegionView {
    georouter::admin::views::regions(&router.control)
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no region {name}"))
}

#[tokio::test]
async fn waiting_in_the_routers_queue_is_not_the_region_being_slow() {
    let a = region("a").await;
    let b = region("b").await;
    // a answers in 30 ms but takes one request at a time: requests that wait
    // for it wait in the router's queue, not in the region.
    a.set_latency(Duration::from_millis(30));
    let toml = policy(
        &[&a, &b],
        r#"
        [server]
        access_log = false
        [health]
        interval = "50ms"
        timeout = "500ms"
        jitter = 0.0
        [health.passive]
        slow_factor = 5.0
        slow_min = "250ms"
        slow_min_requests = 5
        [upstream]
        max_queue = 500
        queue_timeout = "60s"
        [[routes]]
        path_prefix = "/a/"
        regions = ["a"]
        [[routes]]
        regions = ["b"]
        "#,
    )
    .replace("name = \"a\"", "name = \"a\"\nmax_in_flight = 1");
    assert!(toml.contains("max_in_flight = 1"), "{toml}");
    let router = TestRouter::spawn(&toml).await;
    let near_b = Load::start(router.url("/b/x"), 1);
    // 40 at once: the last waits about 1.2 s in the queue, 30 ms in the region.
    let replies = burst(router.url("/a/x"), 40).await;
    assert!(replies.iter().all(|r| r.0 == 200), "{replies:?}");
    near_b.wait_for(10).await;
    eventually("both regions' real latency measured", || {
        view_of(&router, "a").real_latency_ms.is_some()
            && view_of(&router, "b").real_latency_ms.is_some()
    })
    .await;
    let report = near_b.stop().await;
    assert!(report.failed().is_empty());
    let v = view_of(&router, "a");
    assert!(
        v.real_latency_ms.unwrap() < 250.0 && !v.slow,
        "the queue was counted as the region's latency: {:?}",
        v.real_latency_ms
    );
    assert_eq!(phase(&router, "a"), "up");
    let metrics = String::from_utf8(router.state.metrics.render()).unwrap();
    assert_eq!(
        sum_of(&metrics, "georouter_latency_outliers_total{region=\"a\"}"),
        0.0
    );
}

#[tokio::test]
async fn an_endpoint_slow_on_real_requests_leaves_the_rotation() {
    let slow = region("r").await;
    let fast = region("r").await;
    // Slow on real requests only: its checks stay fast and pass.
    slow.set_slow_requests(Duration::from_millis(200));
    let extra = "[health.passive]\nslow_factor = 5.0\nslow_min = \"50ms\"\nslow_min_requests = 3\nejection = \"60s\"\nmax_ejection = \"60s\"\n";
    let router = TestRouter::spawn(&one_region(&[&slow, &fast], "", extra)).await;
    let client = h1_client();
    // One request at a time: both endpoints have none in flight at each
    // choice, so only their latency can tell them apart.
    let mut ejected = false;
    for _ in 0..300 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200);
        let v = view_of(&router, "r");
        if v.load.endpoints[0].ejected {
            ejected = true;
            break;
        }
    }
    assert!(ejected, "the slow endpoint stayed in rotation");
    let before = slow.requests();
    for _ in 0..20 {
        assert_eq!(get(&client, &router.url("/")).await.status, 200);
    }
    assert_eq!(slow.requests(), before, "the ejected endpoint got requests");
    let v = view_of(&router, "r");
    assert!(v.load.endpoints[1].healthy, "{:?}", v.load);
    assert_eq!(v.phase, "up", "the region serves through its fast endpoint");
    let metrics = String::from_utf8(router.state.metrics.render()).unwrap();
    assert!(sum_of(&metrics, "georouter_endpoint_ejections_total") >= 1.0);
}

#[tokio::test]
async fn latency_steering_reads_real_requests_as_well_as_the_probes() {
    let a = region("a").await;
    let b = region("b").await;
    // a's probes are fast and its real requests slow; b is 40 ms on both.
    a.set_slow_requests(Duration::from_millis(300));
    b.set_latency(Duration::from_millis(40));
    let toml = policy(
        &[&a, &b],
        r#"
        [server]
        access_log = false
        [health]
        interval = "50ms"
        timeout = "500ms"
        jitter = 0.0
        [health.passive]
        slow_factor = 0.0
        [[routes]]
        steering = "latency"
        regions = ["a", "b"]
        "#,
    );
    let router = TestRouter::spawn(&toml).await;
    eventually("both probed", || {
        georouter::admin::views::regions(&router.control)
            .iter()
            .all(|r| r.rtt_ms.is_some())
    })
    .await;
    let client = h1_client();
    assert_eq!(
        get(&client, &router.url("/")).await.headers["x-georouter-region"],
        "a",
        "by the probes alone, a is nearer"
    );
    let mut moved = false;
    for _ in 0..100 {
        let r = get(&client, &router.url("/")).await;
        assert_eq!(r.status, 200);
        if r.headers["x-georouter-region"] == "b" {
            moved = true;
            break;
        }
    }
    assert!(moved, "steering still reads the probes only");
    let v = view_of(&router, "a");
    assert!(
        v.steering_latency_ms.unwrap() > 100.0,
        "{:?}",
        v.steering_latency_ms
    );
}

#[tokio::test]
async fn a_partial_drain_is_kept_in_the_state_file_and_reapplied_at_start() {
    let a = region("a").await;
    let b = region("b").await;
    let dir = test_dir("scale-state");
    let file = dir.join("state.json");
    let _ = std::fs::remove_file(&file);
    let toml = two_regions(
        &a,
        &b,
        &format!(
            "[client]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[admin]\nstate_file = \"{}\"\n",
            toml_path(&file)
        ),
    );
    let clients: Vec<String> = (0..200).map(|i| format!("3.1.0.{}", i + 1)).collect();
    let first = TestRouter::spawn_with_token(&toml, "t").await;
    let (status, body) = admin_post(first.admin, "/regions/a/capacity?scale=0.5", Some("t")).await;
    assert_eq!(status, 200, "{body}");
    let before = served_by(&first, &clients).await;
    let _ = first.shutdown().await;

    let second = TestRouter::spawn_with_token(&toml, "t").await;
    let v = region_view(second.admin, "a").await;
    assert_eq!(v["capacity_scale"], 0.5, "{v}");
    assert_eq!(v["scale_scope"], "local", "{v}");
    assert_eq!(
        served_by(&second, &clients).await,
        before,
        "the same clients moved after the restart"
    );
}
