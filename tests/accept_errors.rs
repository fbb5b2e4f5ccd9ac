//! Running out of file descriptors makes accept fail (EMFILE); the router backs
//! off and serves again once descriptors are free. In a binary of its own: the
//! limit is per process.

mod support;

use std::sync::atomic::Ordering;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens files until the process has no descriptor left, then frees one.
fn exhaust_descriptors() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "expected EMFILE, got {e}");
                break;
            }
        }
    }
    held.pop();
    held
}

#[tokio::test]
async fn emfile_on_accept_is_survived() {
    let a = region("a").await;
    // One worker: the upstream pool is per worker, and with two the warmed
    // connection may sit in the other's pool (then serving needs a new
    // descriptor, and the answer is a 503 for the router's own shortage).
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nworkers = 1\n")).await;
    // Warm the upstream pool so that serving needs no new descriptor but the accept.
    assert_eq!(get(&h1_client(), &router.url("/")).await.status, 200);

    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    // Room for exactly one more descriptor: the client's socket takes it, so the
    // router's accept of that connection fails with EMFILE.
    rlimit::Resource::NOFILE.set(256, hard).unwrap();
    let held = exhaust_descriptors();
    let mut client = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    eventually("an accept to fail", || {
        router.accept_errors.load(Ordering::Relaxed) > 0
    })
    .await;

    drop(held);
    rlimit::Resource::NOFILE.set(soft, hard).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).await.unwrap();
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("a\n"), "{reply}");
}
