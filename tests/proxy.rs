//! The data plane through a real router and simulated regions: protocols on both
//! sides, header hygiene, request limits, and what the router answers itself.

mod support;

use bytes::Bytes;
use georouter::tools::sim::Mode;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn h1_request_reaches_the_first_region_and_says_which() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&policy(&[&a, &b], "")).await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "a\n");
    assert_eq!(r.headers["x-georouter-region"], "a");
}

#[tokio::test]
async fn h2c_client_is_served_over_http1_upstream() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let r = get(&h2c_client(), &router.url("/echo")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert!(r.body.starts_with("GET /echo HTTP/1.1\n"), "{}", r.body);
    // An HTTP/2 request has no Host header; the upstream still gets one.
    assert!(
        r.body.contains(&format!("host: {}\n", router.addr())),
        "{}",
        r.body
    );
}

/// RFC 9113 8.2.1: an HTTP/2 field value neither starts nor ends with
/// whitespace. HTTP/1.1 parsers trim it, so a region would read another value
/// than the router did: refused, and the region never sees it.
#[tokio::test]
async fn h2c_values_padded_with_whitespace_are_refused() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let client = h2c_client();
    for v in [" lead", "trail ", "\ttab"] {
        let req = http::Request::get(router.url("/echo"))
            .header("x-a", v)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(&client, req).await;
        assert_eq!(r.status, 400, "{v:?}: {}", r.body);
        assert!(r.body.contains("whitespace"), "{}", r.body);
    }
    assert_eq!(a.requests(), 0, "a padded value reached the region");
    // The connection stays usable: each refusal was one stream's.
    assert_eq!(get(&client, &router.url("/")).await.status, 200);
}

/// RFC 9113 8.2.3: HTTP/2 may split `Cookie` into several fields, which must
/// be joined with "; " before an HTTP/1.1 hop; an application reading only the
/// first `Cookie` line would miss what the router read in the others.
#[tokio::test]
async fn split_cookies_reach_the_region_as_one_field() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    for client in [h2c_client(), h1_client()] {
        let req = http::Request::get(router.url("/echo"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(&client, req).await;
        assert_eq!(r.status, 200);
        let cookies: Vec<&str> = r
            .body
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("cookie:"))
            .collect();
        assert_eq!(cookies, ["cookie: a=1; b=2"], "{:?}: {}", r.version, r.body);
    }
}

/// By difference against a real nginx region: nginx reads a padded value
/// trimmed, so the router, which would read it whole, refuses it instead.
#[tokio::test]
async fn nginx_reads_a_padded_value_trimmed_so_the_router_refuses_it() {
    let nginx = support::nginx::Nginx::start("padded").await;
    // nginx's own reading of `x-a:  lead ` (HTTP/1.1 allows the padding).
    let mut s = tokio::net::TcpStream::connect(nginx.addr).await.unwrap();
    s.write_all(b"GET /header HTTP/1.1\r\nHost: n\r\nx-a:  lead \r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.ends_with("[lead]"), "{raw}");
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"n\"\n\
         endpoints = [{{ url = \"{}\" }}]\n",
        nginx.url()
    );
    let router = TestRouter::spawn(&toml).await;
    let client = h2c_client();
    let padded = http::Request::get(router.url("/header"))
        .header("x-a", " lead ")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&client, padded).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Unpadded, the same value reads the same at both.
    let plain = http::Request::get(router.url("/header"))
        .header("x-a", "lead")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, plain).await.body, "[lead]");
}

#[tokio::test]
async fn http2_endpoint_is_reached_with_prior_knowledge() {
    let a = region("a").await;
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"a\"\n\
         endpoints = [{{ url = \"{}\", protocol = \"http2\" }}]\n",
        a.url()
    );
    let router = TestRouter::spawn(&toml).await;
    for client in [h1_client(), h2c_client()] {
        let r = get(&client, &router.url("/echo")).await;
        assert_eq!(r.status, 200);
        // HTTP/2 requests carry the absolute URI (:scheme, :authority, :path).
        let first = r.body.lines().next().unwrap();
        assert!(
            first.starts_with("GET http://") && first.ends_with("/echo HTTP/2.0"),
            "{}",
            r.body
        );
    }
}

/// RFC 9113 8.3.1: a Host that differs from `:authority` makes an HTTP/2
/// request malformed (nginx answers 400). The preserved host is `:authority`.
#[tokio::test]
async fn http2_endpoint_gets_the_host_as_authority_and_no_host_header() {
    let a = region("a").await;
    for (preserve, authority) in [
        (true, "app.example:8443".to_owned()),
        (false, a.addr().to_string()),
    ] {
        let toml = format!(
            "[server]\npreserve_host = {preserve}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
             [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"{}\", protocol = \"http2\" }}]\n",
            a.url()
        );
        let router = TestRouter::spawn(&toml).await;
        let r = get_as(&h1_client(), &router.url("/echo"), "app.example:8443").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let first = r.body.lines().next().unwrap();
        assert_eq!(
            first,
            format!("GET http://{authority}/echo HTTP/2.0"),
            "preserve_host = {preserve}"
        );
        assert!(
            !r.body.lines().any(|l| l.starts_with("host:")),
            "preserve_host = {preserve}: {}",
            r.body
        );
    }
}

#[tokio::test]
async fn routes_pick_regions_by_host_and_path() {
    let a = region("a").await;
    let b = region("b").await;
    let extra = r#"
        [[routes]]
        host = "api.example.com"
        regions = ["b"]
        [[routes]]
        path_prefix = "/b/"
        regions = ["b", "a"]
        [[routes]]
        regions = ["a"]
    "#;
    let router = TestRouter::spawn(&policy(&[&a, &b], extra)).await;
    let c = h1_client();
    for (host, path, region) in [
        ("API.Example.com:443", "/", "b\n"),
        ("other", "/b/x", "b\n"),
        ("other", "/x", "a\n"),
    ] {
        let r = get_as(&c, &router.url(path), host).await;
        assert_eq!(r.body, region, "{host} {path}");
    }
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_are_stripped() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let req = http::Request::get(router.url("/echo"))
        .header("host", "shop.example.com")
        .header("connection", "x-secret")
        .header("x-secret", "do not forward")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&h1_client(), req).await;
    let seen = r.body.to_ascii_lowercase();
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "connection:",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the upstream:\n{seen}");
    }
    assert!(seen.contains("x-kept: yes\n"), "{seen}");
    assert!(seen.contains("host: shop.example.com\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-host: shop.example.com\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn region_header_can_be_switched_off() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nregion_header = false\n")).await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("x-georouter-region"));
}

#[tokio::test]
async fn two_host_headers_get_400() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let reply = raw(
        router.addr(),
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert!(reply.contains("more than one Host header"), "{reply}");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn http11_without_host_gets_400() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let reply = raw(
        router.addr(),
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nmax_body_bytes = 1000\n")).await;
    // Declared length over the limit: refused before anything goes upstream.
    let req = http::Request::post(router.url("/count"))
        .body(Full::new(Bytes::from(vec![b'x'; 1001])))
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.status, 413);
    assert_eq!(a.requests(), 0);
    // At the limit: passes.
    let req = http::Request::post(router.url("/count"))
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    let r = send(&h1_client(), req).await;
    assert_eq!((r.status, r.body.as_str()), (200, "1000\n"));
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nmax_body_bytes = 1000\n")).await;
    let chunk = format!("{:x}\r\n{}\r\n", 800, "y".repeat(800));
    let request = format!(
        "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let reply = raw(router.addr(), request.as_bytes()).await;
    assert_eq!(status_of(&reply), 413, "{reply}");
}

#[tokio::test]
async fn uri_over_the_limit_gets_414() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nmax_uri_bytes = 100\n")).await;
    let r = get(&h1_client(), &router.url(&format!("/{}", "u".repeat(100)))).await;
    assert_eq!(r.status, 414);
    let r = get(&h1_client(), &router.url(&format!("/{}", "u".repeat(98)))).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn headers_over_the_limit_get_431() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\nmax_header_bytes = 8192\n")).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(10_000)
    );
    let reply = raw(router.addr(), request.as_bytes()).await;
    assert_eq!(status_of(&reply), 431, "{reply}");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn hanging_region_gets_504_at_the_response_timeout() {
    let a = region("a").await;
    a.set_mode(Mode::Hang);
    let router =
        TestRouter::spawn(&policy(&[&a], "[upstream]\nresponse_timeout = \"200ms\"\n")).await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(r.status, 504);
    assert!(r.body.contains("region a did not answer"), "{}", r.body);
}

/// A policy whose first region refuses connections, then `next` if any.
fn dead_then(next: Option<&georouter::tools::sim::SimRegion>) -> String {
    let mut toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"dead\"\n\
         endpoints = [{{ url = \"http://127.0.0.1:{}\" }}]\n",
        refused_port()
    );
    if let Some(r) = next {
        toml.push_str(&format!(
            "[[regions]]\nname = \"{}\"\nendpoints = [{{ url = \"{}\" }}]\n",
            r.name(),
            r.url()
        ));
    }
    toml
}

#[tokio::test]
async fn refused_region_gets_502() {
    let router = TestRouter::spawn(&dead_then(None)).await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(r.status, 502);
    assert!(r.body.contains("region dead is unreachable"), "{}", r.body);
    assert!(
        !r.body.contains("127.0.0.1"),
        "no internal address in a public error: {}",
        r.body
    );
}

#[tokio::test]
async fn refused_region_fails_over_to_the_next_candidate() {
    let b = region("b").await;
    let router = TestRouter::spawn(&dead_then(Some(&b))).await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "b\n"));
    assert_eq!(r.headers["x-georouter-region"], "b");
}

#[tokio::test]
async fn reset_before_response_retries_idempotent_but_not_post() {
    let a = region("a").await;
    let b = region("b").await;
    a.set_mode(Mode::Reset);
    let router = TestRouter::spawn(&policy(&[&a, &b], "")).await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "b\n"));
    let post = http::Request::post(router.url("/count"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    assert_eq!(send(&h1_client(), post).await.status, 502);
}

#[tokio::test]
async fn upgrade_passes_through_after_101() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(
        &[&a],
        "[[routes]]\nregions = [\"a\"]\nupgrades = [\"websocket\", \"echo\"]\n",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed before 101: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping over the tunnel").await.unwrap();
    let mut buf = [0u8; 20];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping over the tunnel");
}

#[tokio::test]
async fn upgrade_refused_upstream_is_a_plain_response() {
    let a = region("a").await;
    a.set_mode(Mode::Fail);
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let reply = raw(
        router.addr(),
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 503, "{reply}");
}

#[tokio::test]
async fn no_route_gets_404_with_a_reason() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(
        &[&a],
        "[[routes]]\nhost = \"only.example.com\"\nregions = [\"a\"]\n",
    ))
    .await;
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no route"), "{}", r.body);
}

#[tokio::test]
async fn refused_region_fails_over_even_for_a_post_with_a_body() {
    let b = region("b").await;
    let router = TestRouter::spawn(&dead_then(Some(&b))).await;
    // Nothing was sent to the dead region, so the body still goes somewhere.
    let post = http::Request::post(router.url("/count"))
        .body(Full::new(Bytes::from_static(b"twelve bytes")))
        .unwrap();
    let r = send(&h1_client(), post).await;
    assert_eq!((r.status, r.body.as_str()), (200, "12\n"));
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let c = h1_client();
    for _ in 0..10 {
        assert_eq!(get(&c, &router.url("/")).await.status, 200);
    }
    assert_eq!(a.requests(), 10);
    assert_eq!(a.connections(), 1);
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_region_is_replaced_without_error() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let c = h1_client();
    assert_eq!(get(&c, &router.url("/")).await.status, 200);
    // The scenario, not a synchronisation: the pooled connection sits idle, then
    // the region closes it (as at its keep-alive timeout); the router must not
    // hand the next request to the closed connection. (A close at the very
    // moment of reuse is the race docs/configuration.md describes under
    // pool_idle_timeout.)
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    a.sever();
    let r = get(&c, &router.url("/count")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "0\n"));
    assert_eq!(a.connections(), 2);
}

#[tokio::test]
async fn host_can_be_rewritten_to_the_endpoint() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\npreserve_host = false\n")).await;
    let r = get_as(&h1_client(), &router.url("/echo"), "shop.example.com").await;
    assert!(
        r.body.contains(&format!("host: {}\n", a.addr())),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("x-forwarded-host: shop.example.com\n"),
        "{}",
        r.body
    );
}

/// The HTTP/2 settings of `[upstream]` reach the region: its first SETTINGS
/// from the router carries the stream window and frame size.
#[tokio::test]
async fn the_upstream_http2_settings_reach_the_region() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = format!(
        "[upstream]\nhttp2_stream_window = 131072\nhttp2_connection_window = 1048576\n\
         http2_max_frame_size = 65536\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"http://{}\", protocol = \"http2\" }}]\n",
        listener.local_addr().unwrap()
    );
    let router = TestRouter::spawn(&toml).await;
    let client = h1_client();
    let url = router.url("/");
    let request = tokio::spawn(async move { get(&client, &url).await });
    // A health check or the request: either connection opens with SETTINGS.
    let (mut s, _) = listener.accept().await.unwrap();
    let mut preface = [0u8; 24];
    s.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "SETTINGS first");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = settings_of(&payload);
    assert!(settings.contains(&(0x4, 131_072)), "{settings:?}");
    assert!(settings.contains(&(0x5, 65_536)), "{settings:?}");
    drop(s);
    request.abort();
}

/// A retry moves from an HTTP/2 endpoint (host in `:authority`, no Host) to
/// an HTTP/1.1 one: the client's host goes with it, as Host.
#[tokio::test]
async fn a_retry_from_an_http2_to_an_http1_region_keeps_the_clients_host() {
    let (a, b) = (region("a").await, region("b").await);
    a.set_mode(Mode::Fail);
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [[routes]]\nregions = [\"a\", \"b\"]\n\
         [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"{}\", protocol = \"http2\" }}]\n\
         [[regions]]\nname = \"b\"\nendpoints = [{{ url = \"{}\" }}]\n",
        a.url(),
        b.url()
    );
    let router = TestRouter::spawn(&toml).await;
    let r = get_as(&h1_client(), &router.url("/echo"), "app.example").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body.lines().next(),
        Some("GET /echo HTTP/1.1"),
        "{}",
        r.body
    );
    assert!(
        r.body.lines().any(|l| l == "host: app.example"),
        "{}",
        r.body
    );
}
