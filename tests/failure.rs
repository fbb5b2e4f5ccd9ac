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
        .set_drain("a", Some(("storm".into(), "test".into())), true)
        .unwrap();
    let load = Load::start(router.url("/"), 8);
    load.wait_for(20).await;
    let control = router.control.clone();
    let sent = load.sent.clone();
    let reloads = tokio::task::spawn_blocking(move || {
        let until = sent.load(std::sync::atomic::Ordering::SeqCst) + 3000;
        let mut n = 0;
        while sent.load(std::sync::atomic::Ordering::SeqCst) < until {
            control.reload("test").expect("the same policy reloads");
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
/// off so that only traffic could take a region out; `extra` goes at the top level.
fn blame_policy(
    a: &georouter::sim::SimRegion,
    b: &georouter::sim::SimRegion,
    extra: &str,
) -> String {
    policy(
        &[a, b],
        &format!(
            r#"
            [server]
            access_log = false
            [health]
            enabled = false
            [health.passive]
            consecutive_failures = 5
            {extra}
            [[routes]]
            regions = ["a", "b"]
            "#
        ),
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
    assert!(
        !m.contains(r#"georouter_health_transitions_total{from="up",region="a""#),
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
