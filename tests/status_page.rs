//! The admin listener's status page in a real headless Chromium (Debian's
//! chromium and chromium-driver, installed by the test where it can be): it
//! lists the demo's regions, drains and undrains through its buttons with the
//! token, follows a change made elsewhere without a reload, explains a
//! request, and fits a phone's width. It saves a screenshot (into docs/ with
//! GEOROUTER_UPDATE_SCREENSHOT=1).

mod support;

use std::time::Duration;

use bytes::Bytes;
use fantoccini::{Client, Locator};
use http_body_util::Full;
use support::browser::Browser;
use support::*;

const TOKEN: &str = "status-page-test-token";

async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn fill(client: &Client, css: &str, value: &str) {
    let input = client.find(Locator::Css(css)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_regions_and_drains_through_its_buttons() {
    let demo = georouter::tools::demo::in_process(&georouter::geo::default_database(), TOKEN)
        .await
        .expect("the demo starts");
    let admin = demo.admin;
    // Traffic from three countries while the page is open, so that it has
    // shares to show (a steady trickle, not a synchronisation).
    let target = demo.target;
    let traffic = tokio::spawn(async move {
        let client = h1_client();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for ip in ["80.128.0.1", "8.8.8.8", "1.0.16.1"].iter().cycle() {
            tick.tick().await;
            let req = http::Request::get(format!("http://{target}/"))
                .header("x-forwarded-for", *ip)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let _ = client.request(req).await;
        }
    });

    let browser = Browser::start().await;
    let c = &browser.client;
    c.goto(&format!("http://{admin}/")).await.unwrap();

    // Every region of the demo has a row; the EU has both its regions serving.
    for name in georouter::tools::demo::REGIONS {
        wait_for(
            c,
            &format!("#regions tr[data-region='{name}'][data-phase='up']"),
        )
        .await;
    }
    let rows = c.find_all(Locator::Css("#regions tbody tr")).await.unwrap();
    assert_eq!(rows.len(), georouter::tools::demo::REGIONS.len());
    let eu = text(c, "[data-jurisdiction='eu']").await;
    assert!(eu.contains("2 of 2 serving"), "{eu}");
    let conn = text(c, "#conn").await;
    assert!(conn.starts_with("live"), "{conn}");

    // A drain through the button: refused with a wrong token, done with the
    // right one; the page and /regions agree.
    click(c, "button[data-action='drain'][data-region='eu-west']").await;
    fill(c, "#act-reason", "browser drill").await;
    fill(c, "#act-token", "not-the-token").await;
    click(c, "#act-confirm").await;
    let refused = wait_for(c, "#act-error:not(:empty)").await;
    assert_eq!(refused.text().await.unwrap(), "The token was refused.");
    assert_eq!(region_view(admin, "eu-west").await["drained"], false);
    fill(c, "#act-token", TOKEN).await;
    click(c, "#act-confirm").await;
    wait_for(c, "#regions tr[data-region='eu-west'][data-drained='true']").await;
    let drain = text(c, "#regions tr[data-region='eu-west'] td.drain").await;
    assert!(drain.contains("browser drill"), "{drain}");
    let view = region_view(admin, "eu-west").await;
    assert_eq!(view["drained"], true, "{view}");
    assert_eq!(view["drain_reason"], "browser drill", "{view}");
    let eu = text(c, "[data-jurisdiction='eu']").await;
    assert!(eu.contains("1 of 2 serving"), "{eu}");
    let events = text(c, "#events").await;
    assert!(
        events.contains("eu-west")
            && events.contains("drained")
            && events.contains("browser drill"),
        "{events}"
    );

    // The screenshot, with a drain showing.
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png"),
        &png,
    )
    .unwrap();
    if std::env::var_os("GEOROUTER_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png"),
            &png,
        )
        .unwrap();
    }

    // Undrained elsewhere (the API): the page follows without a reload.
    let (status, body) = admin_post(admin, "/regions/eu-west/undrain", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    wait_for(
        c,
        "#regions tr[data-region='eu-west'][data-drained='false']",
    )
    .await;

    // An outage: both EU regions fail their checks and their traffic. The
    // page says how big it is: the EU card and the banner name the refusals,
    // a down region shows no RTT.
    for r in demo.regions.iter().filter(|r| r.name().starts_with("eu-")) {
        r.set_health(false);
        r.set_mode(georouter::tools::sim::Mode::Fail);
    }
    wait_for(c, "[data-jurisdiction='eu'].none").await;
    wait_for(c, "[data-jurisdiction='eu']:not([data-refused='0'])").await;
    let eu = text(c, "[data-jurisdiction='eu']").await;
    assert!(
        eu.contains("0 of 2 serving") && eu.contains("refused in the last interval"),
        "{eu}"
    );
    let alerts = wait_for(c, "#alerts:not([hidden])")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        alerts.contains("Jurisdiction eu has no serving region"),
        "{alerts}"
    );
    wait_for(c, "#regions tr[data-region='eu-west'][data-phase='down']").await;
    assert_eq!(
        text(c, "#regions tr[data-region='eu-west'] td.rtt").await,
        "—"
    );
    let events = text(c, "#events").await;
    assert!(
        events.contains(" UTC"),
        "event times say their zone: {events}"
    );
    let png = c.screenshot().await.unwrap();
    if std::env::var_os("GEOROUTER_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page-outage.png"),
            &png,
        )
        .unwrap();
    }
    for r in &demo.regions {
        r.set_mode(georouter::tools::sim::Mode::Normal);
        r.set_health(true);
    }
    wait_for(c, "#alerts[hidden]").await;

    // The explain form.
    fill(c, "#explain input[name='ip']", "80.128.0.1").await;
    click(c, "#explain button[type='submit']").await;
    let summary = wait_for(c, "#explain-summary:not(:empty)").await;
    let summary = summary.text().await.unwrap();
    assert!(
        summary.contains("80.128.0.1") && summary.contains("DE"),
        "{summary}"
    );

    // A phone's width: nothing wider than the screen.
    c.set_window_size(390, 844).await.unwrap();
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        fits,
        serde_json::Value::Bool(true),
        "the page is wider than a phone"
    );

    browser.close().await;
    traffic.abort();
    demo.running.shutdown().await;
}

/// The page's files need no token and load nothing from elsewhere; its data
/// needs the read token like every other view.
#[tokio::test]
async fn the_page_is_self_contained_and_its_data_needs_the_read_token() {
    let dir = test_dir("status-page-read-token");
    let read = "r".repeat(40);
    std::fs::write(dir.join("read-token"), &read).unwrap();
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&two_regions(
        &a,
        &b,
        &format!(
            "[admin]\nread_token_file = \"{}\"\n",
            toml_path(&dir.join("read-token"))
        ),
    ))
    .await;
    let client = h1_client();
    for path in ["/", "/status.css", "/status.js"] {
        let r = get(&client, &format!("http://{}{path}", router.admin)).await;
        assert_eq!(r.status, 200, "{path}");
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            !r.body.contains("http://") && !r.body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    let r = get(&client, &format!("http://{}/status", router.admin)).await;
    assert_eq!(r.status, 401);
    let req = http::Request::get(format!("http://{}/status", router.admin))
        .header("authorization", format!("Bearer {read}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&client, req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(status["regions"].as_array().unwrap().len(), 2);
    assert_eq!(status["writes_enabled"], false);
    assert_eq!(status["generation"], 1);
}

/// The page's event list: a health transition with its cause, a drain with
/// its reason, a reload; newest first.
#[tokio::test]
async fn status_lists_transitions_drains_and_reloads_newest_first() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn_with_token(&two_regions(&a, &b, ""), TOKEN).await;
    a.set_health(false);
    eventually("a out of service", || phase(&router, "a") == "down").await;
    let (status, body) = admin_post(
        router.admin,
        "/regions/b/drain?reason=INC-7&force=true",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // No policy file: the reload is rejected, and that is an event too.
    let (status, _) = admin_post(router.admin, "/reload", Some(TOKEN)).await;
    assert_eq!(status, 400);
    let r = get(&h1_client(), &format!("http://{}/status", router.admin)).await;
    let s: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let events = s["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reload", "drain", "health"], "{events:?}");
    assert_eq!(events[0]["what"], "rejected");
    assert_eq!(events[1]["region"], "b");
    assert!(events[1]["cause"].as_str().unwrap().contains("INC-7"));
    assert_eq!(events[2]["region"], "a");
    assert_eq!(events[2]["what"], "up -> down");
    assert!(!events[2]["cause"].as_str().unwrap().is_empty());
    assert!(events[0]["at_ms"].as_u64() >= events[2]["at_ms"].as_u64());
    let eu: Vec<_> = s["jurisdictions"].as_array().unwrap().to_vec();
    assert!(eu.is_empty(), "{eu:?}");
}
