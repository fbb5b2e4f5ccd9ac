//! TLS on both sides, with certificates the test makes: SNI certificate choice and
//! ALPN h2 on the listener; custom CA and client certificates towards regions.

mod support;

use std::sync::Arc;

use georouter::tools::sim::SimRegion;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use support::*;
use tokio_rustls::TlsConnector;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn tls_router(pki: &Pki, upstream: &SimRegion) -> TestRouter {
    let (a_cert, a_key, _) = pki.issue("a", &["a.test"]);
    let (b_cert, b_key, _) = pki.issue("b", &["b.test", "*.b.test"]);
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [[listeners.tls.certificates]]
        cert = "{}"
        key = "{}"
        server_names = ["a.test"]
        [[listeners.tls.certificates]]
        cert = "{}"
        key = "{}"
        server_names = ["b.test", "*.b.test"]
        [[regions]]
        name = "r"
        endpoints = [{{ url = "{}" }}]
        "#,
        toml_path(&a_cert),
        toml_path(&a_key),
        toml_path(&b_cert),
        toml_path(&b_key),
        upstream.url()
    );
    TestRouter::spawn(&toml).await
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let pki = Pki::new("sni");
    let up = region("r").await;
    let router = tls_router(&pki, &up).await;
    let a_der = std::fs::read_to_string(pki.dir.join("a.pem")).unwrap();
    let b_der = std::fs::read_to_string(pki.dir.join("b.pem")).unwrap();
    assert_ne!(a_der, b_der);
    for (sni, want) in [("a.test", "a"), ("b.test", "b"), ("www.b.test", "b")] {
        let (_, leaf, _) = pki.connect(router.addr(), sni, &[b"http/1.1"]).await;
        let expected =
            rustls::pki_types::CertificateDer::from_pem_file(pki.dir.join(format!("{want}.pem")));
        assert_eq!(
            leaf,
            expected.unwrap().to_vec(),
            "SNI {sni} should get certificate {want}"
        );
    }
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn alpn_h2_and_http11_are_both_served_over_tls() {
    let pki = Pki::new("alpn");
    let up = region("r").await;
    let router = tls_router(&pki, &up).await;

    let (tls, _, alpn) = pki
        .connect(router.addr(), "a.test", &[b"h2", b"http/1.1"])
        .await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.test/echo")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");

    let (tls, _, alpn) = pki.connect(router.addr(), "a.test", &[b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let resp = h1_get_over(tls, "a.test", "/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-georouter-region"], "r");
}

fn server_config(pki: &Pki, client_auth: bool) -> Arc<rustls::ServerConfig> {
    let (cert, key, _) = pki.issue("upstream", &["localhost"]);
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_path()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut c = builder.with_single_cert(chain, key).unwrap();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

fn https_policy(up: &SimRegion, tls: &str, protocol: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"secure\"\n\
         endpoints = [{{ url = \"{}\", protocol = \"{protocol}\" }}]\n{tls}\n",
        up.url()
    )
}

#[tokio::test]
async fn https_region_with_custom_ca_over_http1_and_http2() {
    let pki = Pki::new("upstream-ca");
    let up = SimRegion::spawn_tls("secure", server_config(&pki, false))
        .await
        .unwrap();
    let tls = format!("[regions.tls]\nca = \"{}\"\n", toml_path(&pki.ca_path()));
    for protocol in ["http1", "http2"] {
        let router = TestRouter::spawn(&https_policy(&up, &tls, protocol)).await;
        // The client's Host is preserved: as `:authority` over HTTP/2 (TLS
        // still names the endpoint, `localhost`, by SNI).
        let first_line = match protocol {
            "http1" => "GET /echo HTTP/1.1".to_owned(),
            _ => format!("GET https://{}/echo HTTP/2.0", router.addr()),
        };
        let r = get(&h1_client(), &router.url("/echo")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.body.lines().next(),
            Some(first_line.as_str()),
            "{}",
            r.body
        );
    }
}

#[tokio::test]
async fn https_region_signed_by_an_unknown_ca_is_unreachable() {
    let pki = Pki::new("upstream-unknown");
    let up = SimRegion::spawn_tls("secure", server_config(&pki, false))
        .await
        .unwrap();
    // No `ca`: the public roots, which do not know the test CA.
    let router = TestRouter::spawn(&https_policy(&up, "", "http1")).await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn mtls_region_needs_the_client_certificate() {
    let pki = Pki::new("mtls");
    let up = SimRegion::spawn_tls("secure", server_config(&pki, true))
        .await
        .unwrap();
    let (cert, key, _) = pki.issue("router-client", &["georouter.test"]);
    let with_cert = format!(
        "[regions.tls]\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        toml_path(&pki.ca_path()),
        toml_path(&cert),
        toml_path(&key)
    );
    let router = TestRouter::spawn(&https_policy(&up, &with_cert, "http1")).await;
    assert_eq!(get(&h1_client(), &router.url("/")).await.status, 200);

    let without = format!("[regions.tls]\nca = \"{}\"\n", toml_path(&pki.ca_path()));
    let router = TestRouter::spawn(&https_policy(&up, &without, "http1")).await;
    assert_eq!(get(&h1_client(), &router.url("/")).await.status, 502);
}

/// A TLS router for `a.test` whose `[listeners.tls.resumption]` is `resumption`.
async fn resuming_router(pki: &Pki, upstream: &SimRegion, resumption: &str) -> TestRouter {
    let (cert, key, _) = pki.issue("resume", &["a.test"]);
    TestRouter::spawn(&format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [[listeners.tls.certificates]]
        cert = "{}"
        key = "{}"
        [listeners.tls.resumption]
        {resumption}
        [[regions]]
        name = "r"
        endpoints = [{{ url = "{}" }}]
        "#,
        toml_path(&cert),
        toml_path(&key),
        upstream.url()
    ))
    .await
}

/// One request over a new TLS connection made with `client` (whose session
/// store carries tickets between calls); how the handshake went.
async fn handshake_kind(
    client: &Arc<rustls::ClientConfig>,
    router: &TestRouter,
) -> rustls::HandshakeKind {
    let tcp = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    let tls = TlsConnector::from(client.clone())
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    // A whole exchange, so that TLS 1.3 tickets (sent after the handshake) arrive.
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "a.test")
        .header("connection", "close")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let _ = conn.await;
    kind
}

fn tls12_client(pki: &Pki) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth(),
    )
}

/// Resumption is a policy choice per listener: on by default (tickets and a
/// session cache, TLS 1.2 and 1.3), either alone still resumes, both off
/// means a full handshake every time.
#[tokio::test]
async fn session_resumption_follows_the_listener_policy() {
    use rustls::HandshakeKind::{Full, Resumed};
    let pki = Pki::new("resumption");
    let up = SimRegion::spawn("r").await.unwrap();
    let cases = [
        ("", Resumed),
        ("tickets = false", Resumed),
        ("session_cache = 0", Resumed),
        ("tickets = false\nsession_cache = 0", Full),
    ];
    for (resumption, second) in cases {
        let router = resuming_router(&pki, &up, resumption).await;
        for (version, client) in [
            ("TLS 1.3", Arc::new(pki.client_config(&[]))),
            ("TLS 1.2", tls12_client(&pki)),
        ] {
            assert_eq!(
                handshake_kind(&client, &router).await,
                Full,
                "{resumption:?}"
            );
            assert_eq!(
                handshake_kind(&client, &router).await,
                second,
                "{resumption:?}, {version}"
            );
        }
    }
}

/// Instances that share a ticket key file resume each other's sessions (one
/// anycast address, many routers); with keys of their own they cannot.
#[tokio::test]
async fn a_shared_ticket_key_file_resumes_across_instances() {
    use base64::Engine;
    use rustls::HandshakeKind::{Full, Resumed};
    let pki = Pki::new("shared-tickets");
    let up = SimRegion::spawn("r").await.unwrap();
    let keys = pki.dir.join("ticket.keys");
    let line = base64::engine::general_purpose::STANDARD.encode([7u8; 80]);
    std::fs::write(&keys, format!("{line}\n")).unwrap();
    let shared = format!("session_cache = 0\nticket_keys = \"{}\"", toml_path(&keys));
    let (x, y) = (
        resuming_router(&pki, &up, &shared).await,
        resuming_router(&pki, &up, &shared).await,
    );
    let client = Arc::new(pki.client_config(&[]));
    assert_eq!(handshake_kind(&client, &x).await, Full);
    assert_eq!(
        handshake_kind(&client, &y).await,
        Resumed,
        "y opens x's ticket"
    );

    let (x, y) = (
        resuming_router(&pki, &up, "session_cache = 0").await,
        resuming_router(&pki, &up, "session_cache = 0").await,
    );
    let client = Arc::new(pki.client_config(&[]));
    assert_eq!(handshake_kind(&client, &x).await, Full);
    assert_eq!(handshake_kind(&client, &y).await, Full, "keys of its own");
}

/// A ticket key file that cannot be used refuses the listener, saying which
/// setting, which file and which line.
#[tokio::test]
async fn a_bad_ticket_key_file_is_refused_where_it_is() {
    let pki = Pki::new("bad-ticket-keys");
    let (cert, key, _) = pki.issue("bad-keys", &["a.test"]);
    let keys = pki.dir.join("short.keys");
    std::fs::write(&keys, "c2hvcnQ=\n").unwrap();
    let config = georouter::config::Config::from_toml(&format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [[listeners.tls.certificates]]
        cert = "{}"
        key = "{}"
        [listeners.tls.resumption]
        ticket_keys = "{}"
        [[regions]]
        name = "r"
        endpoints = [{{ url = "http://127.0.0.1:1" }}]
        "#,
        toml_path(&cert),
        toml_path(&key),
        toml_path(&keys),
    ))
    .unwrap();
    let Err(e) = georouter::edge::server::bind(&config.listeners, &config.server) else {
        panic!("a listener with an unusable ticket key file was bound");
    };
    let e = e.to_string();
    let want = format!(
        "listeners[0].tls: resumption.ticket_keys: {}, line 1: 5 bytes",
        keys.display()
    );
    assert!(e.starts_with(&want), "{e}");
}

/// One HTTP/1.1 request on a TLS connection with SNI `sni` and `Host: host`.
async fn status_with(pki: &Pki, router: &TestRouter, sni: &str, host: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tls, _, _) = pki.connect(router.addr(), sni, &[b"http/1.1"]).await;
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    status_of(&String::from_utf8_lossy(&out))
}

#[tokio::test]
async fn a_host_the_connections_certificate_does_not_cover_is_misdirected() {
    let pki = Pki::new("misdirected");
    let up = region("r").await;
    let router = tls_router(&pki, &up).await;
    assert_eq!(status_with(&pki, &router, "a.test", "a.test").await, 200);
    assert_eq!(
        status_with(&pki, &router, "b.test", "www.b.test:443").await,
        200
    );
    // A connection made for a.test asking for b.test: its certificate does not
    // vouch for that host (RFC 9110 7.4, 15.5.20).
    assert_eq!(status_with(&pki, &router, "a.test", "b.test").await, 421);
    assert_eq!(
        status_with(&pki, &router, "b.test", "x.y.b.test").await,
        421
    );
    assert_eq!(up.requests(), 2);
}
