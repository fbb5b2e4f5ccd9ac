//! Large bodies stream through in bounded memory, both ways. In a binary of its own
//! so that nothing else moves the process's peak memory while it runs.

mod support;

use georouter::tools::sim::Generated;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;

const GIB: u64 = 1 << 30;
/// Peak memory may grow by this much while a GiB passes: a few buffers, not the body.
const BUDGET: u64 = 96 << 20;

/// Peak resident set of this process, from /proc (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_both_ways_in_bounded_memory() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nmax_body_bytes = 2147483648\n")).await;
    // Warm up every piece once so that start-up allocations are not counted.
    assert_eq!(
        get(&h1_client(), &router.url("/bytes/1000"))
            .await
            .body
            .len(),
        1000
    );
    let before = peak_rss();

    let download = h1_client()
        .get(router.url(&format!("/bytes/{GIB}")).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let mut body = download.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, GIB);

    let uploader: Client<_, Generated> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(router.url("/count"))
        .body(Generated::new(GIB))
        .unwrap();
    let resp = uploader.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let counted = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(counted, format!("{GIB}\n"));

    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < BUDGET,
        "peak memory grew by {} MiB while 2 GiB streamed",
        grown >> 20
    );
}
