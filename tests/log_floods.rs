//! No log line a client can cause at will: 10,000 TLS handshakes naming an IP
//! address as SNI, broken request framing, and requests that fail upstream,
//! counted at the level a deployment logs (info). In a binary of its own: it
//! installs the process's log subscriber (with the `log` bridge, so a library
//! logging through `log` would be counted too).

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn count(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A TLS 1.2 ClientHello whose SNI is `name` (here an IP address, which SNI
/// forbids: RFC 6066 3).
fn client_hello(name: &[u8]) -> Vec<u8> {
    let mut sni = vec![0x00];
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut sni_list = (sni.len() as u16).to_be_bytes().to_vec();
    sni_list.extend(sni);
    let mut ext = vec![0x00, 0x00];
    ext.extend((sni_list.len() as u16).to_be_bytes());
    ext.extend(sni_list);
    ext.extend([0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]); // groups: x25519
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // point formats
    ext.extend([0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x01]); // rsa_pkcs1_sha256
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.push(0); // session id
    body.extend([0x00, 0x02, 0xc0, 0x2f]); // ECDHE-RSA-AES128-GCM-SHA256
    body.extend([0x01, 0x00]); // null compression
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_odd_handshakes_and_bad_requests_write_a_handful_of_lines() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this binary");

    let pki = Pki::new("log-floods");
    let (cert, key, _) = pki.issue("a", &["a.test"]);
    let dead = refused_port();
    let router = TestRouter::spawn(&format!(
        r#"
        [server]
        access_log = false
        [[listeners]]
        address = "127.0.0.1:0"
        [[listeners.tls.certificates]]
        cert = "{}"
        key = "{}"
        server_names = ["a.test"]
        [[listeners]]
        address = "127.0.0.2:0"
        [health]
        enabled = false
        [[regions]]
        name = "dead"
        endpoints = [{{ url = "http://127.0.0.1:{dead}" }}]
        "#,
        toml_path(&cert),
        toml_path(&key),
    ))
    .await;
    let (tls, plain) = (router.addrs[0], router.addrs[1]);
    let before = lines.count();

    let hello = Arc::new(client_hello(b"127.0.0.1"));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let hello = hello.clone();
            tokio::spawn(async move {
                for _ in 0..10_000 / 16 + 1 {
                    let mut s = tokio::net::TcpStream::connect(tls).await.unwrap();
                    let _ = s.write_all(&hello).await;
                    let mut sink = [0u8; 4096];
                    let _ = s.read(&mut sink).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for _ in 0..500 {
        // CL.TE framing, a TRACE, and a request whose region is gone.
        raw(plain, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
        raw(
            plain,
            b"TRACE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        raw(
            plain,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
    }
    let written = lines.count() - before;
    assert!(
        written <= 20,
        "{written} log lines from client-driven events:\n{}",
        lines.text()
    );
}
