//! An HTTP/3 load generator for `bench/h3.sh` (h2load here has no QUIC):
//! `h3_load ADDR SNI CA_PEM REQUESTS CONNECTIONS STREAMS [new]`. Keep-alive:
//! CONNECTIONS connections, each with STREAMS requests in flight, REQUESTS in
//! all. With `new`, every request opens a connection of its own (a full
//! handshake each, CONNECTIONS at once). Prints `requests=N seconds=S failed=F`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;

type Failed = Arc<AtomicU64>;

fn client_config(ca: &str) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read the CA file");
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).expect("a CA certificate");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    quinn::ClientConfig::new(Arc::new(crypto))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// One connection: `count` requests, `streams` at a time.
async fn connection(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    sni: &str,
    count: u64,
    streams: u64,
    failed: &Failed,
) {
    let conn = match endpoint.connect(addr, sni) {
        Ok(c) => match c.await {
            Ok(c) => c,
            Err(_) => {
                failed.fetch_add(count, Ordering::Relaxed);
                return;
            }
        },
        Err(_) => {
            failed.fetch_add(count, Ordering::Relaxed);
            return;
        }
    };
    let Ok((mut driver, send)) = h3::client::new(h3_quinn::Connection::new(conn)).await else {
        failed.fetch_add(count, Ordering::Relaxed);
        return;
    };
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let left = Arc::new(AtomicU64::new(count));
    let mut lanes = Vec::new();
    for _ in 0..streams.min(count) {
        let (mut send, left, failed) = (send.clone(), left.clone(), failed.clone());
        let uri = format!("https://{sni}/");
        lanes.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                if one(&mut send, &uri).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for lane in lanes {
        let _ = lane.await;
    }
    drop(send);
    drive.abort();
}

async fn one(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    uri: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let req = http::Request::get(uri).body(())?;
    let mut stream = send.send_request(req).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    while let Some(mut chunk) = stream.recv_data().await? {
        chunk.advance(chunk.remaining());
    }
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()).into());
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: h3_load ADDR SNI CA_PEM REQUESTS CONNECTIONS STREAMS [new]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR");
    let sni = args[2].clone();
    let requests: u64 = args[4].parse().expect("REQUESTS");
    let connections: u64 = args[5].parse().expect("CONNECTIONS");
    let streams: u64 = args[6].parse().expect("STREAMS");
    let fresh = args.get(7).is_some_and(|a| a == "new");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("UDP socket");
    endpoint.set_default_client_config(client_config(&args[3]));
    let failed: Failed = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (endpoint, sni, failed) = (endpoint.clone(), sni.clone(), failed.clone());
        // Keep-alive: the requests split over the connections. New: each lane
        // opens a connection per request.
        let share = requests / connections + u64::from(i < requests % connections);
        tasks.push(tokio::spawn(async move {
            if fresh {
                for _ in 0..share {
                    connection(&endpoint, addr, &sni, 1, 1, &failed).await;
                }
            } else {
                connection(&endpoint, addr, &sni, share, streams, &failed).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    endpoint.close(0u32.into(), b"done");
    println!(
        "requests={requests} seconds={seconds:.3} failed={}",
        failed.load(Ordering::Relaxed)
    );
}
