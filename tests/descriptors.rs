//! The router's own descriptor limit is never a region's fault: with no
//! descriptor left, health checks and new upstream connections fail locally,
//! are counted as local errors, and every region stays up. In a binary of its
//! own: the limit is per process.

mod support;

use support::*;

#[tokio::test]
async fn a_descriptor_starved_router_keeps_its_regions_up() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&two_regions(&a, &b, "")).await;
    eventually("first checks", || router.control.ready()).await;
    let local = |router: &TestRouter| {
        router.state.metrics.local_errors[georouter::blame::LocalFault::Descriptors as usize].get()
    };

    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(256, hard).unwrap();
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
    }
    // Checks run every 50 ms and two failures take a region out: ten local
    // failures would have taken both out twice over.
    eventually("checks to fail for want of descriptors", || {
        local(&router) >= 10
    })
    .await;
    drop(held);
    rlimit::Resource::NOFILE.set(soft, hard).unwrap();

    assert_eq!(phase(&router, "a"), "up");
    assert_eq!(phase(&router, "b"), "up");
    let m = String::from_utf8(router.state.metrics.render()).unwrap();
    assert_eq!(
        sum_of(&m, "georouter_health_transitions_total{"),
        0.0,
        "no region changed phase: {m}"
    );
    assert_eq!(get(&h1_client(), &router.url("/")).await.status, 200);
}
