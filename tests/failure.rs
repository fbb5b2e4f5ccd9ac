//! Failure semantics tried as an attacker and as an operator in a bad hour would:
//! what a client can make the router blame on a region, what the router blames
//! on itself, and how residents fail closed.

mod support;

use support::*;

/// A reload storm while `a` is drained: every request reads the table and the
/// region states of one generation, so none reaches the drained region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_never_send_a_request_to_a_drained_region() {
    let a = region("a").await;
    let b = region("b").await;
    let dir = test_dir("reload-storm");
    let path = dir.join("policy.toml");
    std::fs::write(&path, two_regions(&a, &b, "")).unwrap();
    let router = TestRouter::spawn_file(&path, None).await;
    router
        .control
        .set_drain("a", Some("storm".into()), "test", true)
        .unwrap();
    let load = Load::start(router.url("/"), 8);
    load.wait_for(20).await;
    let control = router.control.clone();
    let sent = load.sent.clone();
    let reloads = tokio::spawn(async move {
        let until = sent.load(std::sync::atomic::Ordering::SeqCst) + 3000;
        let mut n = 0;
        while sent.load(std::sync::atomic::Ordering::SeqCst) < until {
            control
                .reload("test")
                .await
                .expect("the same policy reloads");
            n += 1;
        }
        n
    });
    let reloads = reloads.await.unwrap();
    let report = load.stop().await;
    assert!(report.failed().is_empty(), "failed: {:?}", report.failed());
    assert_eq!(
        a.requests(),
        0,
        "the drained region got requests during {reloads} reloads"
    );
}

/// Regions `a` and `b` (a preferred), passive ejection after 5 failures, checks
/// off so that only traffic could take a region out; `extra` may open tables.
fn blame_policy(
    a: &georouter::tools::sim::SimRegion,
    b: &georouter::tools::sim::SimRegion,
    extra: &str,
) -> String {
    two_regions(
        a,
        b,
        &format!("enabled = false\n[health.passive]\nconsecutive_failures = 5\n{extra}"),
    )
}

async fn metrics_of(router: &TestRouter) -> String {
    String::from_utf8(router.state.metrics.render()).unwrap()
}

#[tokio::test]
async fn broken_and_aborted_uploads_eject_nothing() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&blame_policy(&a, &b, "")).await;
    for i in 0..100 {
        // A bad chunk size after the first chunk: the head has gone to the region.
        let r = raw(
            router.addr(),
            b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n",
        )
        .await;
        if i == 0 {
            assert!(
                r.is_empty() || status_of(&r) == 400,
                "a malformed body is the client's fault: {r:?}"
            );
        }
        // A client that promises 1000 bytes, sends 3 and goes away.
        let mut s = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    }
    assert_eq!(phase(&router, "a"), "up");
    assert_eq!(phase(&router, "b"), "up");
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(
        (r.status, r.headers["x-georouter-region"].to_str().unwrap()),
        (200, "a"),
        "other clients are still served by their region"
    );
    let m = metrics_of(&router).await;
    assert_metrics(
        &m,
        &[
            r#"georouter_upstream_errors_total{kind="reset",region="a"} 0"#,
            r#"georouter_ejections_capped_total 0"#,
        ],
    );
    assert!(
        !m.contains(r#"georouter_client_errors_total{kind="malformed_body"} 0"#),
        "malformed bodies are counted as the client's: {m}"
    );
    assert_eq!(
        sum_of(
            &m,
            r#"georouter_health_transitions_total{from="up",region="a""#
        ),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_ejects_nothing() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&blame_policy(
        &a,
        &b,
        "[upstream]\nrequest_body_timeout = \"200ms\"\nresponse_timeout = \"100ms\"\n",
    ))
    .await;
    for _ in 0..8 {
        // 10 of 100 promised bytes, then silence: longer than response_timeout,
        // which is the region's clock and must not start before the body ends.
        let mut s = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .expect("the router answers and closes");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&out), 408, "{out}");
    }
    assert_eq!(phase(&router, "a"), "up");
    assert_metrics(
        &metrics_of(&router).await,
        &[
            r#"georouter_client_errors_total{kind="body_timeout"} 8"#,
            r#"georouter_upstream_errors_total{kind="timeout",region="a"} 0"#,
        ],
    );
}

/// A region that resets every request for 100 ms out of every 200 ms, for two
/// seconds, with the default policy's proportions (an ejection outlasts the
/// flapping): each client leaves it once and comes back once, through a
/// slow-start ramp that admits clients by a stable hash, not per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_region_moves_each_client_at_most_twice() {
    use georouter::tools::sim::Mode;
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&policy(
        &[&a, &b],
        r#"
        [server]
        access_log = false
        [client]
        trusted_proxies = ["127.0.0.0/8"]
        [health]
        interval = "400ms"
        jitter = 0.0
        [health.passive]
        ejection = "3s"
        [failback]
        slow_start = "1s"
        [[routes]]
        regions = ["a", "b"]
        "#,
    ))
    .await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let url = router.url("/");
            let stopped = stopped.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                let client = h1_client();
                let mut served = Vec::new();
                // One more request after the stop: it is decided after the ramp.
                let mut last = false;
                while !last {
                    last = *stopped.borrow();
                    let req = http::Request::get(&url)
                        .header("x-forwarded-for", format!("198.51.100.{}", 10 + i))
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    let r = send(&client, req).await;
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if r.status == 200 {
                        served.push(r.headers["x-georouter-region"].to_str().unwrap().to_owned());
                    }
                }
                served
            })
        })
        .collect();
    // Every client settled at home first.
    eventually("clients served", || {
        answered.load(std::sync::atomic::Ordering::SeqCst) >= 64
    })
    .await;
    let flap_started = std::time::Instant::now();
    for _ in 0..10 {
        a.set_mode(Mode::Reset);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        a.set_mode(Mode::Normal);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let flapped = flap_started.elapsed();
    // Wait for the ejection to end and the ramp to finish.
    let weight_full = || {
        let v = georouter::admin::views::regions(&router.control);
        let a = v.iter().find(|r| r.name == "a").unwrap();
        a.phase == "up" && a.weight >= 1.0 && a.last_transition.is_some()
    };
    eventually("a back at full weight", weight_full).await;
    let _ = stop.send(true);
    for (i, c) in clients.into_iter().enumerate() {
        let served = c.await.unwrap();
        let mut runs: Vec<(String, usize)> = Vec::new();
        for r in &served {
            match runs.last_mut() {
                Some((name, n)) if name == r => *n += 1,
                _ => runs.push((r.clone(), 1)),
            }
        }
        assert!(
            runs.len() <= 3,
            "client {i} changed region {} times (flapping took {flapped:?}): {runs:?}",
            runs.len() - 1
        );
        assert_eq!(
            served.last().map(String::as_str),
            Some("a"),
            "client {i} is back home after the ramp"
        );
    }
}

/// Sends `n` GETs at once and returns (status, serving region) of each.
async fn concurrent_gets(url: &str, n: usize) -> Vec<(u16, String)> {
    support::concurrent_gets(url, n)
        .await
        .iter()
        .map(|r| (r.status, served_or_body(r)))
        .collect()
}

#[tokio::test]
async fn requests_to_a_hung_region_go_on_to_the_next_after_the_try_timeout() {
    use georouter::tools::sim::Mode;
    let a = region("a").await;
    let b = region("b").await;
    a.set_mode(Mode::Hang);
    let router = TestRouter::spawn(&blame_policy(
        &a,
        &b,
        "[upstream]\nresponse_timeout = \"60s\"\ntry_timeout = \"200ms\"\n",
    ))
    .await;
    // The response timeout is far beyond the client's patience (20 s): only the
    // per-try timeout can answer these in time.
    let answers = concurrent_gets(&router.url("/"), 8).await;
    assert!(
        answers.iter().all(|(s, r)| *s == 200 && r == "b"),
        "{answers:?}"
    );
    // Each was a region timeout (some may have started after a was ejected
    // by the first five and gone to b directly).
    let m = metrics_of(&router).await;
    assert!(
        !m.contains(r#"georouter_upstream_errors_total{kind="timeout",region="a"} 0"#),
        "{m}"
    );
}

#[tokio::test]
async fn requests_waiting_on_a_region_that_leaves_service_are_sent_on_at_once() {
    use georouter::tools::sim::Mode;
    let a = region("a").await;
    let b = region("b").await;
    // No per-try timeout: only the region leaving service can free them.
    let router = TestRouter::spawn(&two_regions(
        &a,
        &b,
        "[upstream]\nresponse_timeout = \"60s\"\ntry_timeout = \"0s\"\n",
    ))
    .await;
    eventually("first checks", || router.control.ready()).await;
    a.set_mode(Mode::Hang);
    let before = a.requests();
    let url = router.url("/");
    let in_flight = tokio::spawn(async move { concurrent_gets(&url, 8).await });
    eventually("the requests to reach a", || a.requests() >= before + 8).await;
    // a's checks hang too: it goes down, and its waiting requests move to b.
    let answers = in_flight.await.unwrap();
    assert_ne!(phase(&router, "a"), "up");
    assert!(
        answers.iter().all(|(s, r)| *s == 200 && r == "b"),
        "{answers:?}"
    );
}

#[tokio::test]
async fn when_every_region_fails_at_once_at_most_half_are_ejected() {
    use georouter::tools::sim::Mode;
    let mut sims = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let r = region(name).await;
        r.set_mode(Mode::Reset);
        sims.push(r);
    }
    let refs: Vec<&georouter::tools::sim::SimRegion> = sims.iter().collect();
    let router = TestRouter::spawn(&policy(
        &refs,
        r#"
        [server]
        access_log = false
        [health]
        enabled = false
        [health.passive]
        min_distinct_clients = 1
        [[routes]]
        regions = ["a", "b", "c", "d"]
        "#,
    ))
    .await;
    let client = h1_client();
    for _ in 0..100 {
        assert_eq!(get(&client, &router.url("/")).await.status, 502);
    }
    let out: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .filter(|r| phase(&router, r) != "up")
        .collect();
    assert_eq!(out.len(), 2, "max_ejected_percent = 50 of 4: {out:?}");
    let m = metrics_of(&router).await;
    assert!(
        !m.contains("georouter_ejections_capped_total 0"),
        "refusals are counted: {m}"
    );
    // The rest keep taking traffic: nothing says they are worse than the router.
    let served_by_rest: u64 = sims
        .iter()
        .filter(|s| !out.contains(&s.name()))
        .map(|s| s.requests())
        .sum();
    assert!(served_by_rest >= 100, "{served_by_rest}");
}
