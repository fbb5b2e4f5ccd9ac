//! Geography and residency through a real router: clients placed by a test
//! database and X-Forwarded-For from a trusted loopback proxy.

mod support;

use bytes::Bytes;
use georouter::sim::SimRegion;
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
        [[regions]]
        name = "us"
        endpoints = [{{ url = "{us}" }}]
        [[regions]]
        name = "eu1"
        jurisdiction = "eu"
        endpoints = [{{ url = "{eu1}" }}]
        [[regions]]
        name = "eu2"
        jurisdiction = "eu"
        endpoints = [{{ url = "{eu2}" }}]
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
        us = us.url(),
        eu1 = eu1.url(),
        eu2 = eu2.url(),
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
        [[regions]]
        name = "us"
        endpoints = [{{ url = "{}" }}]
        [[regions]]
        name = "eu"
        jurisdiction = "eu"
        endpoints = [{{ url = "{}" }}]
        [[jurisdictions]]
        name = "eu"
        countries = ["DE"]
        [[routes]]
        regions = ["us", "eu"]
        [[routes.rules]]
        countries = ["DE"]
        regions = ["eu"]
        "#,
        us.url(),
        eu.url()
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
    // No health checks yet: a killed region still reads as serving.
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
    assert_eq!(verdict("eu2"), "fallback #2 if the chosen region fails");

    let r = get(&h1_client(), &format!("{admin}/explain?ip=3.3.3.3&home=eu")).await;
    let e: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(e["pin"]["source"], "header");
    assert_eq!(e["chosen"], "eu1");

    let r = get(&h1_client(), &format!("{admin}/explain?ip=nowhere")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not an IP address"), "{}", r.body);
}
