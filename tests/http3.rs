//! HTTP/3 over QUIC, driven by a client that is not the router's own stack
//! (Python's aioquic): requests reach the regions through the same pipeline as
//! TCP ones, TCP answers advertise HTTP/3, early data is refused where a replay
//! could hurt (RFC 8470), residency holds, malformed requests are reset.

mod support;

use georouter::tools::sim::SimRegion;
use support::h3::*;
use support::*;

/// A TLS listener on port 0 with HTTP/3 on the same port over UDP, serving
/// `a.test`; `http3` goes into `[listeners.http3]`, `rest` after the listener.
async fn h3_router(pki: &Pki, http3: &str, rest: &str) -> TestRouter {
    let (cert, key, _) = pki.issue("a", &["a.test"]);
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [[listeners.tls.certificates]]
        cert = "{}"
        key = "{}"
        server_names = ["a.test"]
        [listeners.http3]
        {http3}
        {rest}
        "#,
        toml_path(&cert),
        toml_path(&key),
    );
    TestRouter::spawn(&toml).await
}

/// A router with HTTP/3 (`http3` in its section) in front of one region `r`,
/// with `sections` (whole policy sections) besides, and the client's target.
async fn one_region_h3(
    tag: &str,
    http3: &str,
    sections: &str,
) -> (SimRegion, TestRouter, H3Target) {
    let pki = Pki::new(tag);
    let up = region("r").await;
    let router = h3_router(
        &pki,
        http3,
        &format!("{sections}\n{}", regions_toml(&[(&up, None)])),
    )
    .await;
    let t = target(&router, &pki);
    (up, router, t)
}

/// RFC 9114 8.1: closing with nothing wrong.
const H3_NO_ERROR: u64 = 0x100;

/// Starts a client on a task of its own and returns once the router has begun
/// its request; with `hold`, the client then keeps the connection (PINGing)
/// until the server closes it.
async fn started(
    router: &TestRouter,
    t: &H3Target,
    request: H3Request,
    hold: bool,
) -> tokio::task::JoinHandle<(H3Session, Vec<H3Reply>)> {
    let t = H3Target {
        wait_close: hold,
        ..t.clone()
    };
    let client = tokio::spawn(async move { h3_session(&t, false, vec![request]).await });
    let state = router.state.clone();
    eventually("the router has begun the request", || {
        state.metrics.protocol_requests[georouter::metrics::protocol_of(http::Version::HTTP_3)]
            .get()
            == 1
    })
    .await;
    client
}

fn target(router: &TestRouter, pki: &Pki) -> H3Target {
    H3Target {
        // The HTTP/3 socket takes the TCP listener's port.
        addr: router.addr(),
        sni: "a.test".into(),
        ca: pki.ca_path(),
        wait_close: false,
    }
}

#[tokio::test]
async fn a_get_and_a_streamed_post_reach_the_region_over_http3() {
    let (up, _router, t) = one_region_h3("h3-basic", "", "").await;
    let (_, replies) = h3_send(
        &t,
        false,
        vec![
            H3Request::get("/echo"),
            H3Request::post("/count", &["one ", "two ", "three"]),
            H3Request::post("/mirror", &["a", "b", "c"]).header("content-length", "3"),
        ],
    )
    .await;
    let get = &replies[0];
    assert_eq!(get.status, Some(200), "{get:?}");
    assert_eq!(get.header("x-georouter-region"), Some("r"));
    // The region got an ordinary request: its own protocol, the client's host,
    // the router's forwarding headers.
    assert!(get.body.starts_with("GET /echo HTTP/1.1\n"), "{}", get.body);
    assert!(get.body.contains("host: a.test\n"), "{}", get.body);
    assert!(
        get.body.contains("x-forwarded-proto: https\n"),
        "{}",
        get.body
    );
    assert!(!get.body.contains("early-data"), "{}", get.body);
    let count = &replies[1];
    assert_eq!(
        (count.status, count.body.as_str()),
        (Some(200), "13\n"),
        "{count:?}"
    );
    let mirror = &replies[2];
    assert_eq!(
        (mirror.status, mirror.body.as_str()),
        (Some(200), "abc"),
        "{mirror:?}"
    );
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn tcp_answers_advertise_http3_on_its_port() {
    let pki = Pki::new("h3-altsvc");
    let up = region("r").await;
    let router = h3_router(
        &pki,
        "alt_svc_max_age = \"1h\"",
        &regions_toml(&[(&up, None)]),
    )
    .await;
    let (tls, _, _) = pki.connect(router.addr(), "a.test", &[b"http/1.1"]).await;
    let resp = h1_get_over(tls, "a.test", "/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["alt-svc"],
        format!("h3=\":{}\"; ma=3600", router.addr().port()).as_str()
    );
}

#[tokio::test]
async fn a_listener_without_http3_advertises_none() {
    let up = region("r").await;
    let router = TestRouter::spawn(&policy(&[&up], "")).await;
    let reply = get(&h1_client(), &router.url("/")).await;
    assert_eq!(reply.status, 200);
    assert!(!reply.headers.contains_key("alt-svc"));
}

#[tokio::test]
async fn early_data_carries_only_safe_methods_and_the_rest_get_425() {
    let (up, _router, t) = one_region_h3("h3-0rtt", "early_data = true", "").await;
    let (accepted, replies) = h3_send(
        &t,
        true,
        vec![
            H3Request::post("/count", &["payment"]),
            H3Request::get("/echo"),
        ],
    )
    .await;
    assert!(
        accepted,
        "the router did not accept 0-RTT with early_data on"
    );
    let post = &replies[0];
    assert_eq!(post.status, Some(425), "{post:?}");
    let echo = &replies[1];
    assert_eq!(echo.status, Some(200), "{echo:?}");
    // RFC 8470 5.2: the region is told the request came early.
    assert!(echo.body.contains("early-data: 1\n"), "{}", echo.body);
    // The warm-up GET and the early GET; never the early POST.
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn without_early_data_a_resumed_client_waits_for_the_handshake() {
    let (_up, _router, t) = one_region_h3("h3-no0rtt", "", "").await;
    let (accepted, replies) =
        h3_send(&t, true, vec![H3Request::post("/count", &["payment"])]).await;
    assert!(!accepted, "0-RTT accepted although early_data is off");
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (Some(200), "7\n")
    );
}

#[tokio::test]
async fn a_resident_is_refused_over_http3_when_the_jurisdiction_is_down() {
    let pki = Pki::new("h3-residency");
    let us = region("us").await;
    let eu1 = region("eu1").await;
    let rest = format!(
        r#"
        [client]
        trusted_proxies = ["127.0.0.0/8"]
        [geo]
        database = "{db}"
        {regions}
        [[jurisdictions]]
        name = "eu"
        countries = ["DE"]
        [[routes]]
        regions = ["us", "eu1"]
        [[routes.rules]]
        continents = ["EU"]
        regions = ["eu1"]
        "#,
        db = toml_path(&country_mmdb()),
        regions = regions_toml(&[(&us, None), (&eu1, Some("eu"))]),
    );
    let router = h3_router(&pki, "", &rest).await;
    eu1.kill();
    let t = target(&router, &pki);
    let (_, replies) = h3_send(
        &t,
        false,
        vec![
            H3Request::get("/").header("x-forwarded-for", "80.128.0.1"),
            H3Request::get("/").header("x-forwarded-for", "3.3.3.3"),
        ],
    )
    .await;
    let resident = &replies[0];
    assert_eq!(resident.status, Some(503), "{resident:?}");
    assert_eq!(resident.header("retry-after"), Some("5"));
    assert!(
        resident.body.contains("jurisdiction eu"),
        "{}",
        resident.body
    );
    assert_eq!(
        (replies[1].status, replies[1].body.as_str()),
        (Some(200), "us\n")
    );
    assert_eq!(
        us.requests(),
        1,
        "the resident's request left the jurisdiction"
    );
}

const H3_MESSAGE_ERROR: u64 = 0x10e;

/// Every request was reset as malformed (RFC 9114 4.1.2) and none reached the
/// region.
fn all_reset_as_malformed(replies: &[H3Reply], up: &SimRegion) {
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.reset, Some(H3_MESSAGE_ERROR), "request {i}: {r:?}");
    }
    assert_eq!(up.requests(), 0, "a malformed request reached the region");
}

/// RFC 9114 4.2 and 4.1.2: fields that belong to one HTTP/1.1 connection, a
/// `te` other than `trailers`, and a body that is not its `content-length`
/// make a request malformed; none of them reaches a region.
#[tokio::test]
async fn malformed_http3_requests_are_reset_and_reach_no_region() {
    let (up, _router, t) = one_region_h3("h3-malformed", "", "").await;
    let (_, replies) = h3_send(
        &t,
        false,
        vec![
            H3Request::post("/count", &["abc"]).header("transfer-encoding", "chunked"),
            H3Request::get("/").header("connection", "close"),
            H3Request::get("/").header("te", "gzip"),
            H3Request::post("/count", &["abc"]).header("content-length", "1,3"),
            H3Request::post("/count", &["abc"]).header("content-length", "x"),
        ],
    )
    .await;
    all_reset_as_malformed(&replies, &up);
    // A body other than its content-length is the client's fault: answered by
    // the router, never passed on whole.
    let (_, replies) = h3_send(
        &t,
        false,
        vec![
            H3Request::post("/count", &["abc"]).header("content-length", "10"),
            H3Request::post("/count", &["abcdef"]).header("content-length", "2"),
            H3Request::get("/"),
            // A value padded with whitespace (RFC 9114 4.2 by RFC 9110 5.5).
            H3Request::get("/").header("x-a", " lead"),
        ],
    )
    .await;
    // Short: found while it streams to the region, which gets no whole body.
    assert_eq!(replies[0].status, Some(400), "{:?}", replies[0]);
    // Long: found when the router reads past the length (reset), or while it
    // streams (400), whichever comes first.
    let long = &replies[1];
    assert!(
        long.status == Some(400) || long.reset == Some(H3_MESSAGE_ERROR),
        "{long:?}"
    );
    assert_eq!(
        (replies[2].status, replies[2].body.as_str()),
        (Some(200), "r\n")
    );
    assert_eq!(replies[3].status, Some(400), "{:?}", replies[3]);
}

/// RFC 9114 4.3: a repeated pseudo-header field, one after a regular field,
/// and a response's `:status` in a request make it malformed. h3 keeps the
/// last of a repeat and drops the rest, so the router reads the field section
/// as the client encoded it: two `:path`s are two readings of where a request
/// goes (a second one named a path the region would then serve).
#[tokio::test]
async fn pseudo_headers_repeated_out_of_order_or_for_responses_are_reset() {
    let (up, _router, t) = one_region_h3("h3-pseudo", "", "").await;
    let a = t.sni.as_str();
    let (_, replies) = h3_send(
        &t,
        false,
        vec![
            H3Request::fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", a),
                (":path", "/"),
                (":path", "/count"),
            ]),
            H3Request::fields(&[
                (":method", "GET"),
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", a),
                (":path", "/"),
            ]),
            H3Request::fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", a),
                ("x-a", "1"),
                (":path", "/"),
            ]),
            H3Request::fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", a),
                (":path", "/"),
                (":status", "200"),
            ]),
        ],
    )
    .await;
    all_reset_as_malformed(&replies, &up);
    // The same fields once each and in order are served.
    let (_, replies) = h3_send(
        &t,
        false,
        vec![H3Request::fields(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", a),
            (":path", "/"),
            ("x-a", "1"),
        ])],
    )
    .await;
    assert_eq!(replies[0].status, Some(200), "{:?}", replies[0]);
}

/// RFC 9114 4.2.1: cookies split into several fields reach an HTTP/1.1 region
/// as one, joined with "; ".
#[tokio::test]
async fn split_cookies_reach_the_region_as_one_field() {
    let (_up, _router, t) = one_region_h3("h3-cookies", "", "").await;
    let (_, replies) = h3_send(
        &t,
        false,
        vec![H3Request::get("/echo")
            .header("cookie", "a=1")
            .header("cookie", "b=2")],
    )
    .await;
    let cookies: Vec<&str> = replies[0]
        .body
        .lines()
        .filter(|l| l.starts_with("cookie:"))
        .collect();
    assert_eq!(cookies, ["cookie: a=1; b=2"], "{:?}", replies[0]);
}

/// Past `retry_threshold` handshakes in progress a new client proves its
/// address first (RFC 9000 8.1); below it, no round trip is added. At 0 every
/// client is asked, and still served.
#[tokio::test]
async fn clients_prove_their_address_with_a_retry_past_the_threshold() {
    let (_up, _always, t) = one_region_h3("h3-retry", "retry_threshold = 0", "").await;
    let (session, replies) = h3_session(&t, false, vec![H3Request::get("/")]).await;
    assert!(session.retried, "no Retry with retry_threshold = 0");
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (Some(200), "r\n")
    );
    let (_up, _default, t) = one_region_h3("h3-no-retry", "", "").await;
    let (session, replies) = h3_session(&t, false, vec![H3Request::get("/")]).await;
    assert!(
        !session.retried,
        "a Retry round trip with no handshake in progress"
    );
    assert_eq!(replies[0].status, Some(200));
}

/// A connection with no request for `idle_timeout` is closed as on TCP, even
/// while the client keeps QUIC itself alive with PINGs.
#[tokio::test]
async fn a_silent_http3_connection_is_closed_after_the_idle_timeout() {
    let (_up, _router, t) = one_region_h3("h3-idle", "", "[server]\nidle_timeout = \"1s\"").await;
    let t = H3Target {
        wait_close: true,
        ..t
    };
    let (session, replies) = h3_session(&t, false, vec![H3Request::get("/")]).await;
    assert_eq!(replies[0].status, Some(200));
    assert_eq!(session.closed, Some(H3_NO_ERROR), "{session:?}");
}

/// At shutdown an HTTP/3 connection gets GOAWAY and, with nothing in flight,
/// is closed at once: a client that keeps the connection alive does not hold
/// the router for its whole grace period.
#[tokio::test]
async fn shutdown_closes_an_idle_http3_connection_at_once() {
    let (_up, router, t) =
        one_region_h3("h3-shutdown", "", "[server]\nshutdown_grace = \"60s\"").await;
    let client = started(&router, &t, H3Request::get("/"), true).await;
    router.shutdown().await.unwrap();
    let (session, replies) = client.await.unwrap();
    assert_eq!(replies[0].status, Some(200));
    assert_eq!(session.closed, Some(H3_NO_ERROR), "{session:?}");
    // RFC 9114 5.2: requests from the GOAWAY's identifier on were not
    // processed; request 0 was, so the identifier is past it.
    assert_eq!(session.goaways, [4], "{session:?}");
}

/// `client.max_connections_per_ip` counts QUIC connections as TCP ones.
#[tokio::test]
async fn the_per_address_cap_holds_for_http3() {
    let (_up, router, t) =
        one_region_h3("h3-per-ip", "", "[client]\nmax_connections_per_ip = 1").await;
    let held = started(&router, &t, H3Request::get("/"), true).await;
    let (session, replies) = h3_session(&t, false, vec![H3Request::get("/")]).await;
    assert!(
        session.refused.is_some(),
        "a second connection from the address: {replies:?}"
    );
    router.shutdown().await.unwrap();
    let (session, replies) = held.await.unwrap();
    assert_eq!(replies[0].status, Some(200));
    assert_eq!(session.closed, Some(H3_NO_ERROR), "{session:?}");
}

/// Every connection slot taken: an idle connection is closed to make room and
/// the newcomer refused at once, never queued.
#[tokio::test]
async fn a_full_router_reclaims_an_idle_http3_connection() {
    let (_up, router, t) = one_region_h3("h3-full", "", "[server]\nmax_connections = 1").await;
    let held = started(&router, &t, H3Request::get("/"), true).await;
    let (session, _) = h3_session(&t, false, vec![H3Request::get("/")]).await;
    assert!(session.refused.is_some(), "{session:?}");
    let (session, replies) = held.await.unwrap();
    assert_eq!(replies[0].status, Some(200));
    assert_eq!(
        session.closed,
        Some(H3_NO_ERROR),
        "the idle connection was not reclaimed: {session:?}"
    );
    // Room again: a client that tries again is served.
    let (_, replies) = h3_send(&t, false, vec![H3Request::get("/")]).await;
    assert_eq!(replies[0].status, Some(200));
}

/// An answer still streaming when the router shuts down reaches the client
/// whole: closing the connection at once would discard what the client had
/// not acknowledged yet.
#[tokio::test]
async fn an_answer_streaming_at_shutdown_arrives_whole() {
    const SIZE: usize = 4 << 20;
    let (_up, router, t) = one_region_h3("h3-shutdown-streaming", "", "").await;
    let path = format!("/bytes/{SIZE}");
    let client = started(&router, &t, H3Request::get(&path), false).await;
    router.shutdown().await.unwrap();
    let (session, replies) = client.await.unwrap();
    assert_eq!(replies[0].status, Some(200), "{:?}", replies[0].reset);
    assert_eq!(
        replies[0].body.len(),
        SIZE,
        "the answer was cut at shutdown"
    );
    // The download in flight is one the router says it processes: a client
    // that read GOAWAY as "not processed" would send it again elsewhere.
    assert_eq!(session.goaways, [4], "{session:?}");
}
