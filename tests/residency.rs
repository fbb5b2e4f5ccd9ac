//! Geography and residency through a real router: clients placed by a test
//! database and X-Forwarded-For from a trusted loopback proxy.

mod support;

use bytes::Bytes;
use georouter::tools::sim::SimRegion;
use http_body_util::Full;
use support::*;

async fn world() -> (TestRouter, SimRegion, SimRegion, SimRegion) {
    let us = region("us").await;
    let eu1 = region("eu1").await;
    let eu2 = region("eu2").await;
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [client]
        trusted_proxies = ["127.0.0.0/8"]
        [geo]
        database = "{db}"
        [residency]
        header = "x-georouter-home"
        {regions}
        [[jurisdictions]]
        name = "eu"
        countries = ["DE"]
        [[routes]]
        regions = ["us", "eu1"]
        [[routes.rules]]
        continents = ["EU"]
        regions = ["eu1", "eu2"]
        "#,
        db = toml_path(&country_mmdb()),
        regions = regions_toml(&[(&us, None), (&eu1, Some("eu")), (&eu2, Some("eu"))]),
    );
    (TestRouter::spawn(&toml).await, us, eu1, eu2)
}

async fn as_client(router: &TestRouter, xff: &str, home: Option<&str>) -> Reply {
    let mut req = http::Request::get(router.url("/")).header("x-forwarded-for", xff);
    if let Some(h) = home {
        req = req.header("x-georouter-home", h);
    }
    send(&h1_client(), req.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn clients_are_routed_by_where_they_are() {
    let (router, _us, _eu1, _eu2) = world().await;
    assert_eq!(as_client(&router, "80.128.0.1", None).await.body, "eu1\n");
    assert_eq!(as_client(&router, "3.3.3.3", None).await.body, "us\n");
    // Unknown to the database: the route's own regions.
    assert_eq!(as_client(&router, "192.0.2.1", None).await.body, "us\n");
}

#[tokio::test]
async fn a_resident_fails_over_inside_the_jurisdiction_then_is_refused() {
    let (router, us, eu1, eu2) = world().await;
    eu1.kill();
    assert_eq!(as_client(&router, "80.128.0.1", None).await.body, "eu2\n");
    eu2.kill();
    let r = as_client(&router, "80.128.0.1", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "5");
    assert!(r.body.contains("jurisdiction eu"), "{}", r.body);
    assert_eq!(
        us.requests(),
        0,
        "a resident's request left the jurisdiction"
    );
}

#[tokio::test]
async fn a_travelling_resident_stays_home_by_the_trusted_header() {
    let (router, us, _eu1, _eu2) = world().await;
    assert_eq!(
        as_client(&router, "3.3.3.3", Some("eu")).await.body,
        "eu1\n"
    );
    assert_eq!(us.requests(), 0);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_jurisdiction_and_its_claim_is_stripped() {
    let us = region("us").await;
    let eu = region("eu").await;
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [residency]
        header = "x-georouter-home"
        {}
        [[jurisdictions]]
        name = "eu"
        countries = ["DE"]
        [[routes]]
        regions = ["us", "eu"]
        [[routes.rules]]
        countries = ["DE"]
        regions = ["eu"]
        "#,
        regions_toml(&[(&us, None), (&eu, Some("eu"))]),
    );
    let router = TestRouter::spawn(&toml).await;
    let req = http::Request::get(router.url("/echo"))
        .header("x-georouter-home", "eu")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&h1_client(), req).await;
    assert_eq!(r.headers["x-georouter-region"], "us");
    assert!(!r.body.contains("x-georouter-home"), "{}", r.body);
}

#[tokio::test]
async fn explain_says_why_and_why_not() {
    let (router, _us, eu1, _eu2) = world().await;
    eu1.kill();
    let admin = format!("http://{}", router.admin);
    let r = get(
        &h1_client(),
        &format!("{admin}/explain?ip=80.128.0.1&path=/cart"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(e["client_ip"], "80.128.0.1");
    assert_eq!(e["geo"]["country"], "DE");
    assert_eq!(e["geo"]["continent"], "EU");
    assert!(
        e["database"].as_str().unwrap().contains("built 2025-11-22"),
        "{e}"
    );
    assert_eq!(e["matched"], "rules[0] (continent)");
    assert_eq!(e["pin"]["jurisdiction"], "eu");
    assert_eq!(e["pin"]["source"], "country");
    assert_eq!(e["fenced"], true);
    assert_eq!(e["candidates"], serde_json::json!(["eu1", "eu2"]));
    // Fewer than `fall` failed checks so far: a killed region still reads as serving.
    assert_eq!(e["chosen"], "eu1");
    let verdict = |name: &str| {
        e["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["region"] == name)
            .unwrap()["verdict"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(verdict("us"), "excluded: outside jurisdiction eu (strict)");
    assert_eq!(verdict("eu2"), "fallback #1 if the chosen region fails");

    let r = get(&h1_client(), &format!("{admin}/explain?ip=3.3.3.3&home=eu")).await;
    let e: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(e["pin"]["source"], "header");
    assert_eq!(e["chosen"], "eu1");

    let r = get(&h1_client(), &format!("{admin}/explain?ip=nowhere")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not an IP address"), "{}", r.body);
}

/// The world of `world()`, with a signed home cookie.
async fn world_with_cookie() -> (TestRouter, SimRegion, SimRegion) {
    let us = region("us").await;
    let eu = region("eu").await;
    let key = mmdb_dir().join("cookie.key");
    // Written aside and renamed: tests running at once never read it half-written.
    let tmp = mmdb_dir().join(format!("cookie.key.{:?}", std::thread::current().id()));
    std::fs::write(&tmp, [42u8; 32]).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [client]
        trusted_proxies = ["127.0.0.0/8"]
        [geo]
        database = "{db}"
        [residency]
        cookie = "georouter_home"
        cookie_key_file = "{key}"
        {regions}
        [[jurisdictions]]
        name = "eu"
        countries = ["DE"]
        [[routes]]
        regions = ["us", "eu"]
        [[routes.rules]]
        countries = ["DE"]
        regions = ["eu"]
        "#,
        db = toml_path(&country_mmdb()),
        key = toml_path(&key),
        regions = regions_toml(&[(&us, None), (&eu, Some("eu"))]),
    );
    (TestRouter::spawn(&toml).await, us, eu)
}

#[tokio::test]
async fn a_resident_gets_a_signed_cookie_that_keeps_them_home_abroad() {
    let (router, us, _eu) = world_with_cookie().await;
    let at_home = as_client(&router, "80.128.0.1", None).await;
    assert_eq!(at_home.body, "eu\n");
    let set = at_home.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("__Host-georouter_home=eu."), "{set}");
    assert!(
        set.contains("; Path=/;") && set.contains("; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    assert!(
        !set.contains("Secure"),
        "plain HTTP, no proxy saying https: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();

    let client = h1_client();
    let abroad = |cookie: String| {
        let req = http::Request::get(router.url("/"))
            .header("x-forwarded-for", "3.3.3.3")
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&client, req)
    };
    let r = abroad(cookie.clone()).await;
    assert_eq!(r.body, "eu\n");
    assert!(
        !r.headers.contains_key("set-cookie"),
        "a valid cookie is not issued again"
    );
    assert_eq!(us.requests(), 0);

    // A forged or altered cookie is worth nothing: the traveller is a US client.
    let forged = cookie.replacen("=eu.", "=eu.9", 1);
    assert_eq!(abroad(forged).await.body, "us\n");
}

#[tokio::test]
async fn a_proxy_protocol_listener_takes_the_client_from_the_header() {
    let us = region("us").await;
    let eu = region("eu").await;
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        proxy_protocol = true
        [geo]
        database = "{db}"
        {regions}
        [[routes]]
        regions = ["us"]
        [[routes.rules]]
        continents = ["EU"]
        regions = ["eu"]
        "#,
        db = toml_path(&country_mmdb()),
        regions = regions_toml(&[(&us, None), (&eu, None)]),
    );
    let router = TestRouter::spawn(&toml).await;
    let v1 = raw(
        router.addr(),
        b"PROXY TCP4 80.128.0.1 10.0.0.1 56324 443\r\nGET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&v1), 200, "{v1}");
    assert!(v1.contains("x-georouter-region: eu"), "{v1}");
    assert!(v1.contains("x-forwarded-for: 80.128.0.1"), "{v1}");

    let mut v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "3.3.3.3:4711".parse::<std::net::SocketAddr>().unwrap(),
            "10.0.0.1:443".parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    v2.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let reply = raw(router.addr(), &v2).await;
    assert!(reply.contains("x-georouter-region: us"), "{reply}");

    // No header where one is required: the connection is closed unanswered.
    let bare = raw(
        router.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(bare, "");
    assert_eq!(us.requests() + eu.requests(), 2);
}

/// `/explain` reads a request's facts the way the proxy does: the signed cookie
/// pins the traveller home there too, a forged one does not, and a path is
/// normalised before the route is matched.
#[tokio::test]
async fn explain_agrees_with_what_a_request_gets() {
    let (router, _us, _eu) = world_with_cookie().await;
    let at_home = as_client(&router, "80.128.0.1", None).await;
    let set = at_home.headers["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let admin = format!("http://{}", router.admin);
    let explain = |query: String| {
        let url = format!("{admin}/explain?{query}");
        async move {
            let r = get(&h1_client(), &url).await;
            assert_eq!(r.status, 200, "{}", r.body);
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
        }
    };
    let encoded: String = form_urlencoded::byte_serialize(cookie.as_bytes()).collect();
    let e = explain(format!("ip=3.3.3.3&cookie={encoded}")).await;
    assert_eq!(e["chosen"], "eu", "{e}");
    let forged: String =
        form_urlencoded::byte_serialize(cookie.replacen("=eu.", "=eu.9", 1).as_bytes()).collect();
    let e = explain(format!("ip=3.3.3.3&cookie={forged}")).await;
    assert_eq!(e["chosen"], "us", "{e}");

    let r = get(
        &h1_client(),
        &format!("{admin}/explain?ip=3.3.3.3&path=/../../etc"),
    )
    .await;
    assert_eq!(
        r.status, 400,
        "a path above the root is refused as a request's is: {}",
        r.body
    );
    let r = get(
        &h1_client(),
        &format!("{admin}/explain?ip=3.3.3.3&host=a%20b"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn the_cookie_is_secure_behind_a_trusted_tls_terminator() {
    let (router, _us, _eu) = world_with_cookie().await;
    let req = http::Request::get(router.url("/"))
        .header("x-forwarded-for", "80.128.0.1")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&h1_client(), req).await;
    let set = r.headers["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("__Host-georouter_home=eu."), "{set}");
    assert!(set.ends_with("; Secure"), "{set}");
}

#[tokio::test]
async fn two_valid_cookies_for_different_jurisdictions_pin_nobody() {
    let (router, us, _eu) = world_with_cookie().await;
    let key = mmdb_dir().join("cookie.key");
    let signer = georouter::routing::residency::CookieSigner::from_key_file(
        "__Host-georouter_home",
        &key,
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let (eu, elsewhere) = (signer.value("eu", expires), signer.value("us", expires));
    let req = http::Request::get(router.url("/"))
        .header("x-forwarded-for", "3.3.3.3")
        .header(
            "cookie",
            format!("__Host-georouter_home={elsewhere}; __Host-georouter_home={eu}"),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&h1_client(), req).await;
    // Neither is believed: the client is where its address says.
    assert_eq!(r.body, "us\n");
    assert_eq!(us.requests(), 1);
    let m = String::from_utf8(router.state.metrics.render()).unwrap();
    assert_metrics(&m, &["georouter_residency_cookie_conflicts_total 1"]);
    // Without the prefix, a cookie a sibling subdomain could plant is ignored.
    let req = http::Request::get(router.url("/"))
        .header("x-forwarded-for", "3.3.3.3")
        .header("cookie", format!("georouter_home={eu}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.body, "us\n");
}
