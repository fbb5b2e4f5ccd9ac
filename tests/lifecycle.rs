//! Connection lifecycle: header deadline for slow clients, idle connections, and
//! graceful shutdown that finishes what is in flight.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn slow_client_is_closed_at_the_header_deadline() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(
        &[&a],
        "[server]\nheader_read_timeout = \"200ms\"\n",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    // Half a request head, then nothing: the router must give up on it.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the router kept a slow client open");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn idle_http2_connection_is_closed_with_goaway() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nidle_timeout = \"300ms\"\n")).await;
    let tcp = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://x/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    // Nothing more is sent: the connection must end from the router's side.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection was not closed");
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let a = region("a").await;
    a.set_latency(Duration::from_millis(300));
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let addr = router.addr();
    let url = router.url("/");
    let in_flight = tokio::spawn(async move { get(&h1_client(), &url).await });
    eventually("the request to reach the region", || a.requests() == 1).await;

    let drained = router.shutdown();
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "a\n"));
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("router drained")
        .unwrap();
    // Drained means closed: nobody accepts on the port any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_grace_bounds_the_wait_for_a_hung_request() {
    let a = region("a").await;
    a.set_mode(georouter::tools::sim::Mode::Hang);
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nshutdown_grace = \"100ms\"\n")).await;
    let url = router.url("/");
    let _hung = tokio::spawn(async move {
        let _ = h1_client().get(url.parse().unwrap()).await;
    });
    eventually("the request to reach the region", || a.requests() == 1).await;
    let drained = router.shutdown();
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("shutdown is bounded by the grace period")
        .unwrap();
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_slot_busy_with_a_request() {
    let a = region("a").await;
    // The first connection's request is in flight while the second comes: a
    // busy connection is never closed to make room (an idle one would be).
    a.set_slow_requests(Duration::from_millis(1500));
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nmax_connections = 1\n")).await;
    let first = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(first))
        .await
        .unwrap();
    let first_conn = tokio::spawn(conn);
    let req = || {
        http::Request::get("/")
            .header("host", "x")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let first_request = tokio::spawn(send.send_request(req()));
    eventually("the first request at the region", || a.requests() == 1).await;

    // The second connection is not served while the first one's request holds the slot.
    let url = router.url("/");
    let second = tokio::spawn(async move { get(&h1_client(), &url).await });
    let waited = tokio::time::timeout(Duration::from_millis(300), async {
        while !second.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_err(), "a connection over the cap was served");
    assert_eq!(a.requests(), 1);
    assert_eq!(first_request.await.unwrap().unwrap().status(), 200);
    first_conn.abort();
    let r = second.await.unwrap();
    assert_eq!(r.status, 200);
}

/// The header deadline is for request heads: a client slowly reading a large
/// response for longer than it keeps its connection.
#[tokio::test]
async fn a_slow_download_outlives_the_header_deadline() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(
        &[&a],
        "[server]\nheader_read_timeout = \"200ms\"\naccess_log = false\n",
    ))
    .await;
    const LEN: usize = 32 << 20;
    let mut s = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    s.write_all(format!("GET /bytes/{LEN} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    // A slow reader: a little, then a pause, for well past the header deadline.
    while started.elapsed() < Duration::from_millis(1200) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {total} bytes");
        total += n;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("the rest of the body")
            .unwrap();
        total += n;
        if n == 0 || total >= LEN {
            break;
        }
    }
    assert!(total >= LEN, "got {total} of {LEN} body bytes");
}

/// Pooled upstream connections close when `pool_idle_timeout` passes, by a
/// timer, with no request to find them stale.
#[tokio::test(start_paused = true)]
async fn idle_pooled_connections_close_on_time_without_a_checkout() {
    let a = region("a").await;
    let router = TestRouter::spawn_here(&policy(
        &[&a],
        "[server]\naccess_log = false\n[health]\nenabled = false\n[upstream]\npool_idle_timeout = \"60s\"\n",
    ))
    .await;
    assert_eq!(get(&h1_client(), &router.url("/")).await.status, 200);
    // The router serves on this test's thread: its pool is this thread's.
    assert_eq!(georouter::proxy::pool::idle_connections(), 1);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        georouter::proxy::pool::idle_connections(),
        1,
        "not before its time"
    );
    tokio::time::sleep(Duration::from_secs(32)).await;
    assert_eq!(
        georouter::proxy::pool::idle_connections(),
        0,
        "closed by the timer"
    );
}

/// A reload that keeps a region's endpoints keeps the pooled connections to
/// them; one that moves an endpoint connects to the new address.
#[tokio::test]
async fn a_reload_keeps_pooled_connections_to_unchanged_endpoints() {
    let a = region("a").await;
    let moved = region("a").await;
    let dir = test_dir("reload-pool");
    let path = dir.join("policy.toml");
    let write = |endpoint: &georouter::tools::sim::SimRegion, budget: &str| {
        let text = policy(&[endpoint], &format!("[retry]\nbudget = {budget}\n"));
        std::fs::write(&path, text).unwrap();
    };
    write(&a, "0.2");
    let router = TestRouter::spawn_file(&path, None).await;
    // One client connection: one worker thread, one pool.
    let client = h1_client();
    assert_eq!(get(&client, &router.url("/")).await.status, 200);
    assert_eq!(a.connections(), 1);
    write(&a, "0.3");
    router.control.reload("test").await.unwrap();
    assert_eq!(get(&client, &router.url("/")).await.status, 200);
    assert_eq!(a.requests(), 2);
    assert_eq!(
        a.connections(),
        1,
        "the reload dropped the pooled connection"
    );
    write(&moved, "0.3");
    router.control.reload("test").await.unwrap();
    assert_eq!(get(&client, &router.url("/")).await.status, 200);
    assert_eq!(moved.requests(), 1, "the moved endpoint was not used");
}
