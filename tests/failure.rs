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
