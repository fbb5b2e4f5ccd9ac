//! The admin API: token cases, drains with their guard rail and state file,
//! reloads (50 under load, some invalid), the effective config, readiness, and
//! the metrics text (checked by promtool, which the test needs).

mod support;

use georouter::tools::sim::SimRegion;
use support::*;

fn eu_policy(a: &SimRegion, b: &SimRegion, extra: &str) -> String {
    format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [server]
        access_log = false
        [health]
        interval = "50ms"
        jitter = 0.0
        [reload]
        watch = false
        {extra}
        {regions}
        [[jurisdictions]]
        name = "eu"
        countries = ["DE"]
        [[routes]]
        regions = ["a", "b"]
        "#,
        regions = regions_toml(&[(a, Some("eu")), (b, Some("eu"))]),
    )
}

#[tokio::test]
async fn mutating_calls_need_the_token_and_a_wrong_one_looks_like_none() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn_with_token(&eu_policy(&a, &b, ""), "s3cret").await;
    let (none, none_body) = admin_post(router.admin, "/regions/a/drain", None).await;
    let (wrong, wrong_body) = admin_post(router.admin, "/regions/a/drain", Some("s3cre")).await;
    let (longer, _) = admin_post(router.admin, "/regions/a/drain", Some("s3cret!")).await;
    assert_eq!((none, wrong, longer), (401, 401, 401));
    assert_eq!(none_body, wrong_body);
    assert_eq!(region_view(router.admin, "a").await["drained"], false);
    let (ok, body) = admin_post(router.admin, "/regions/a/drain", Some("s3cret")).await;
    assert_eq!(ok, 200, "{body}");
    assert_eq!(region_view(router.admin, "a").await["drained"], true);
    let (missing, body) = admin_post(router.admin, "/regions/zz/drain", Some("s3cret")).await;
    assert_eq!(missing, 404, "{body}");
    // Reads are open when no read token is set.
    let r = get(&h1_client(), &format!("http://{}/regions", router.admin)).await;
    assert_eq!(r.status, 200);
}

/// Named tokens: who drains is the token's name (and the address it came
/// from), in `/regions` and the drain's record; a read token cannot drain.
#[tokio::test]
async fn a_drain_records_the_name_of_the_token_that_made_it() {
    let a = region("a").await;
    let b = region("b").await;
    let oncall = "oncall-secret-0123456789abcdef0123456789";
    let dashboard = "dashboard-secret-0123456789abcdef012345";
    std::env::set_var("GEOROUTER_TEST_ONCALL_TOKEN", oncall);
    std::env::set_var("GEOROUTER_TEST_DASHBOARD_TOKEN", dashboard);
    let tokens = r#"
        [[admin.tokens]]
        name = "oncall"
        env = "GEOROUTER_TEST_ONCALL_TOKEN"
        [[admin.tokens]]
        name = "dashboard"
        env = "GEOROUTER_TEST_DASHBOARD_TOKEN"
        access = "read"
    "#;
    let router = TestRouter::spawn_with_token(&eu_policy(&a, &b, tokens), "s3cret").await;
    // Reads need a token now (a read token is set): the dashboard's.
    let view = |name: &'static str| region_view_as(router.admin, name, Some(dashboard));
    let (s, body) = admin_post(router.admin, "/regions/a/drain?reason=test", Some(oncall)).await;
    assert_eq!(s, 200, "{body}");
    let v = view("a").await;
    assert_eq!(v["drained_by"], "oncall from 127.0.0.1", "{v}");
    let (s, body) = admin_post(router.admin, "/regions/a/undrain", Some(dashboard)).await;
    assert_eq!(s, 401, "a read token drained: {body}");
    // The unnamed token acts as "admin".
    let (s, body) = admin_post(router.admin, "/regions/b/drain?force=true", Some("s3cret")).await;
    assert_eq!(s, 200, "{body}");
    let v = view("b").await;
    assert_eq!(v["drained_by"], "admin from 127.0.0.1", "{v}");
    // An undrain names its actor too, in the journal the status page shows.
    let (s, body) = admin_post(router.admin, "/regions/a/undrain", Some(oncall)).await;
    assert_eq!(s, 200, "{body}");
    let status = admin_json(router.admin, "/status", Some(dashboard)).await;
    let undrain = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "undrain" && e["region"] == "a")
        .cloned()
        .unwrap_or_default();
    assert_eq!(undrain["cause"], "by oncall from 127.0.0.1", "{status}");
}

#[tokio::test]
async fn without_a_configured_token_mutating_calls_are_off() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&eu_policy(&a, &b, "")).await;
    let (status, body) = admin_post(router.admin, "/regions/a/drain", Some("anything")).await;
    assert_eq!(status, 403);
    assert!(body.contains("admin.token_file"), "{body}");
}

#[tokio::test]
async fn a_read_token_guards_reads_but_not_probes_and_cannot_mutate() {
    let a = region("a").await;
    let b = region("b").await;
    let dir = test_dir("read-token");
    std::fs::write(dir.join("read"), "reader-reader-reader-reader-reader\n").unwrap();
    let extra = format!(
        "[admin]\nread_token_file = \"{}\"\n",
        toml_path(&dir.join("read"))
    );
    let router = TestRouter::spawn_with_token(&eu_policy(&a, &b, &extra), "writer").await;
    let client = h1_client();
    let url = |p: &str| format!("http://{}{p}", router.admin);
    for path in ["/regions", "/metrics", "/config", "/explain?ip=1.2.3.4"] {
        assert_eq!(get(&client, &url(path)).await.status, 401, "{path}");
        for token in ["reader-reader-reader-reader-reader", "writer"] {
            let r = send(
                &client,
                http::Request::get(url(path))
                    .header("authorization", format!("Bearer {token}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 200, "{path} with {token}");
        }
    }
    assert_eq!(get(&client, &url("/healthz")).await.status, 200);
    for probe in ["/healthz", "/readyz"] {
        let head = http::Request::head(url(probe))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = send(&client, head).await;
        assert!(
            r.status == 200 || (probe == "/readyz" && r.status == 503),
            "HEAD {probe}: {}",
            r.status
        );
        assert!(r.body.is_empty(), "HEAD has no body");
    }
    let (status, _) = admin_post(
        router.admin,
        "/regions/a/drain",
        Some("reader-reader-reader-reader-reader"),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_last_serving_region_of_a_jurisdiction_is_drained_only_by_force() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn_with_token(&eu_policy(&a, &b, ""), "t").await;
    assert_eq!(
        admin_post(router.admin, "/regions/a/drain", Some("t"))
            .await
            .0,
        200
    );
    let (status, body) = admin_post(router.admin, "/regions/b/drain?reason=x", Some("t")).await;
    assert_eq!(status, 409);
    assert!(
        body.contains("last serving region of jurisdiction eu") && body.contains("force=true"),
        "{body}"
    );
    assert_eq!(region_view(router.admin, "b").await["drained"], false);
    let (status, _) = admin_post(router.admin, "/regions/b/drain?force=true", Some("t")).await;
    assert_eq!(status, 200);
    // Everything in the jurisdiction is drained: residents are refused, not spilled.
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn two_drains_raced_never_both_pass_the_last_serving_guard() {
    // The guard and the change it guards are one step under the drains'
    // owner: two callers cannot both read "the other one still serves".
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn_with_token(&eu_policy(&a, &b, ""), "t").await;
    for round in 0..20 {
        let (x, y) = tokio::join!(
            admin_post(router.admin, "/regions/a/drain", Some("t")),
            admin_post(router.admin, "/regions/b/drain", Some("t")),
        );
        let mut statuses = [x.0, y.0];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}: {x:?} {y:?}");
        for r in ["a", "b"] {
            assert_eq!(
                admin_post(router.admin, &format!("/regions/{r}/undrain"), Some("t"))
                    .await
                    .0,
                200
            );
        }
    }
}

#[tokio::test]
async fn drains_are_kept_in_the_state_file_and_reapplied_at_start() {
    let a = region("a").await;
    let b = region("b").await;
    let dir = test_dir("state-file");
    let file = dir.join("state.json");
    let _ = std::fs::remove_file(&file);
    let extra = format!("[admin]\nstate_file = \"{}\"\n", toml_path(&file));
    let toml = eu_policy(&a, &b, &extra);
    let first = TestRouter::spawn_with_token(&toml, "t").await;
    let (status, body) = admin_post(
        first.admin,
        "/regions/a/drain?reason=maintenance",
        Some("t"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let _ = first.shutdown().await;

    let second = TestRouter::spawn_with_token(&toml, "t").await;
    let v = region_view(second.admin, "a").await;
    assert_eq!(v["drained"], true);
    assert_eq!(v["drain_reason"], "maintenance");
    let r = get(&h1_client(), &second.url("/")).await;
    assert_eq!(r.headers["x-georouter-region"], "b");
}

#[tokio::test]
async fn fifty_reloads_under_load_lose_nothing_and_invalid_ones_are_rejected() {
    let a = region("a").await;
    let b = region("b").await;
    let dir = test_dir("reloads");
    let path = dir.join("policy.toml");
    let valid = |first: &str, second: &str| {
        eu_policy(&a, &b, "").replace(
            "regions = [\"a\", \"b\"]",
            &format!("regions = [\"{first}\", \"{second}\"]"),
        )
    };
    std::fs::write(&path, valid("a", "b")).unwrap();
    let router = TestRouter::spawn_file(&path, Some("t")).await;
    let load = Load::start(router.url("/"), 4);
    let mut last_first = "a";
    for i in 0..50 {
        let invalid = i % 5 == 4;
        if invalid {
            // A validation error on every fifth: a route to a region that does not exist.
            std::fs::write(&path, valid("a", "nowhere")).unwrap();
        } else {
            last_first = if i % 2 == 0 { "b" } else { "a" };
            let second = if last_first == "a" { "b" } else { "a" };
            std::fs::write(&path, valid(last_first, second)).unwrap();
        }
        let (status, body) = admin_post(router.admin, "/reload", Some("t")).await;
        if invalid {
            assert_eq!(status, 400, "reload {i}: {body}");
            assert!(
                body.contains("routes[0].regions[1]") && body.contains("nowhere"),
                "{body}"
            );
        } else {
            assert_eq!(status, 200, "reload {i}: {body}");
        }
        load.wait_for(5).await;
    }
    let report = load.stop().await;
    assert!(report.failed().is_empty(), "failed: {:?}", report.failed());
    assert!(report.answers.len() >= 250);
    let r = get(&h1_client(), &router.url("/")).await;
    assert_eq!(r.headers["x-georouter-region"], last_first);
    let metrics = String::from_utf8(router.state.metrics.render()).unwrap();
    assert_metrics(
        &metrics,
        &[
            r#"georouter_config_reloads_total{result="failure"} 10"#,
            r#"georouter_config_reloads_total{result="success"} 40"#,
        ],
    );
}

#[tokio::test]
async fn a_changed_policy_file_is_picked_up_and_drains_and_health_survive() {
    let a = region("a").await;
    let b = region("b").await;
    let dir = test_dir("watch");
    let path = dir.join("policy.toml");
    let toml =
        eu_policy(&a, &b, "").replace("watch = false", "watch = true\nwatch_interval = \"20ms\"");
    std::fs::write(&path, &toml).unwrap();
    let router = TestRouter::spawn_file(&path, Some("t")).await;
    assert_eq!(
        admin_post(router.admin, "/regions/a/drain", Some("t"))
            .await
            .0,
        200
    );
    b.set_health(false);
    eventually("b down", || phase(&router, "b") == "down").await;
    let generation = router.state.routing.load().table.generation();
    // Same regions, a new route for /new.
    std::fs::write(
        &path,
        toml.replace(
            "[[routes]]",
            "[[routes]]\npath_prefix = \"/new\"\nregions = [\"b\"]\nresidency = false\n\n[[routes]]",
        ),
    )
    .unwrap();
    eventually("the file reloaded", || {
        router.state.routing.load().table.generation() != generation
    })
    .await;
    let v = region_view(router.admin, "a").await;
    assert_eq!(v["drained"], true, "{v}");
    assert_eq!(phase(&router, "b"), "down");
}

#[tokio::test]
async fn not_ready_until_every_region_has_been_checked() {
    let a = region("a").await;
    let b = region("b").await;
    // a's first check hangs (for an hour): the router cannot be ready.
    a.set_mode(georouter::tools::sim::Mode::Hang);
    let router = TestRouter::spawn(&policy(&[&a, &b], "[health]\ntimeout = \"1h\"\n")).await;
    let r = get(&h1_client(), &format!("http://{}/readyz", router.admin)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("first round of health checks"),
        "{}",
        r.body
    );
    assert_eq!(
        get(&h1_client(), &format!("http://{}/healthz", router.admin))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn ready_after_the_first_checks_and_config_is_redacted() {
    let a = region("a").await;
    let b = region("b").await;
    let dir = test_dir("redact");
    std::fs::write(dir.join("token"), "hunter2-hunter2-hunter2-hunter2-hunter2").unwrap();
    let extra = format!(
        "[admin]\ntoken_file = \"{}\"\n",
        toml_path(&dir.join("token"))
    );
    let router = TestRouter::spawn(&eu_policy(&a, &b, &extra)).await;
    eventually("ready", || router.control.ready()).await;
    let client = h1_client();
    let r = get(&client, &format!("http://{}/readyz", router.admin)).await;
    assert_eq!(r.status, 200);
    let r = get(&client, &format!("http://{}/config", router.admin)).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("token_file = \"<redacted>\""), "{}", r.body);
    assert!(
        r.body.contains("rise = 2"),
        "defaults are shown: {}",
        r.body
    );
    assert!(!r.body.contains(&toml_path(&dir)), "{}", r.body);
}

#[tokio::test]
async fn metrics_name_what_happened_and_pass_promtool() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn_with_token(&eu_policy(&a, &b, ""), "t").await;
    let client = h1_client();
    for _ in 0..3 {
        get(&client, &router.url("/")).await;
    }
    get(&client, &router.url("/status/404")).await;
    admin_post(router.admin, "/regions/a/drain", Some("t")).await;
    get(&client, &router.url("/")).await;
    eventually("checks", || router.control.ready()).await;
    let text = get(&client, &format!("http://{}/metrics", router.admin))
        .await
        .body;
    let needles = &[
        r#"georouter_requests_total{code="200",region="a"} 3"#,
        r#"georouter_requests_total{code="404",region="a"} 1"#,
        r#"georouter_requests_total{code="200",region="b"} 1"#,
        r#"georouter_request_duration_seconds_bucket{region="a",le="+Inf"} 4"#,
        r#"georouter_region_drained{region="a"} 1"#,
        r#"georouter_region_healthy{region="b"} 1"#,
        r#"georouter_region_weight{region="b"} 1"#,
        r#"georouter_region_rtt_seconds{region="b"}"#,
        r#"georouter_failovers_total{from="a",reason="drained",to="b"} 1"#,
        r#"georouter_admin_requests_total{action="drain",result="ok"} 1"#,
        "georouter_config_generation 1",
        r#"georouter_jurisdiction_serving_regions{jurisdiction="eu"} 1"#,
        "process_resident_memory_bytes",
    ];
    assert_metrics(&text, needles);
    let out = promtool()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run promtool check metrics");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A short token, or a placeholder shipped in the deploy files, is refused at
/// load with what to do: a guessable admin token is a lever on every region.
#[test]
fn short_and_placeholder_secrets_are_refused_at_load() {
    let dir = test_dir("weak-secrets");
    let policy = |extra: &str| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"a\"\n\
             endpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n[[routes]]\nregions = [\"a\"]\n{extra}"
        )
    };
    let start = |extra: &str| {
        let config = georouter::config::Config::from_toml(&policy(extra)).unwrap();
        georouter::control::preflight(&config, &Default::default())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let token = dir.join("token");
    let admin = format!("[admin]\ntoken_file = \"{}\"\n", toml_path(&token));
    std::fs::write(&token, "s3cret").unwrap();
    let e = start(&admin).unwrap_err();
    assert!(
        e.contains("admin.token_file") && e.contains("6 bytes") && e.contains("32"),
        "{e}"
    );
    std::fs::write(&token, "REPLACE-WITH-A-LONG-RANDOM-TOKEN\n").unwrap();
    let e = start(&admin).unwrap_err();
    assert!(e.contains("placeholder"), "{e}");
    std::fs::write(&token, "a-long-enough-random-looking-token-0123").unwrap();
    start(&admin).unwrap();

    let key = dir.join("cookie.key");
    std::fs::write(&key, "REPLACE-WITH-AT-LEAST-32-RANDOM-BYTES").unwrap();
    let residency = format!(
        "[residency]\ncookie = \"home\"\ncookie_key_file = \"{}\"\n",
        toml_path(&key)
    );
    let compiled = georouter::routing::table::RoutingTable::compile(
        &georouter::config::Config::from_toml(&policy(&residency)).unwrap(),
    );
    let e = compiled.unwrap_err().to_string();
    assert!(e.contains("placeholder"), "{e}");
}

/// `/config` shows the policy in service: after a reload that changes a
/// listener and a connection limit (read only at start), those show as they
/// serve, and what the file says of them is listed apart, as waiting for a
/// restart; a per-request setting changed by the same reload is in service.
#[tokio::test]
async fn config_shows_what_serves_and_apart_what_a_restart_would_change() {
    let a = region("a").await;
    let dir = test_dir("config-restart");
    let path = dir.join("policy.toml");
    let policy = |listen: &str, extra: &str| {
        format!(
            "[server]\nidle_timeout = \"{extra}\"\nallow_trace = {}\n[[listeners]]\naddress = \"{listen}\"\n\
             [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"{}\" }}]\n[[routes]]\nregions = [\"a\"]\n",
            extra != "60s",
            a.url()
        )
    };
    std::fs::write(&path, policy("127.0.0.1:0", "60s")).unwrap();
    let token = "config-restart-token-0123456789abcdef";
    let router = TestRouter::spawn_file(&path, Some(token)).await;
    let config = || async {
        let r = get(&h1_client(), &format!("http://{}/config", router.admin)).await;
        assert_eq!(r.status, 200);
        r.body
    };
    let before = config().await;
    assert!(!before.contains("after a restart"), "{before}");

    std::fs::write(&path, policy("127.0.0.1:1", "5s")).unwrap();
    let (s, body) = admin_post(router.admin, "/reload", Some(token)).await;
    assert_eq!(s, 200, "{body}");
    let after = config().await;
    let (in_service, waiting) = after
        .split_once("# Changed in the policy file, in service only after a restart:")
        .unwrap_or_else(|| panic!("no restart section in {after}"));
    assert!(in_service.contains("127.0.0.1:0"), "{in_service}");
    assert!(!in_service.contains("127.0.0.1:1"), "{in_service}");
    assert!(in_service.contains("idle_timeout = \"1m\""), "{in_service}");
    assert!(
        in_service.contains("allow_trace = true"),
        "per request: in service now\n{in_service}"
    );
    assert!(waiting.contains("# address = \"127.0.0.1:1\""), "{waiting}");
    assert!(waiting.contains("# idle_timeout = \"5s\""), "{waiting}");
    assert!(!waiting.contains("allow_trace"), "{waiting}");
}

/// What alerts and the dashboard read exists from the start, at 0, before its
/// first event (an increase over a series that appears at its first event
/// misses that event); the build is named.
#[tokio::test]
async fn the_series_alerts_read_are_exported_at_zero_from_the_start() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&eu_policy(&a, &b, "")).await;
    let text = get(&h1_client(), &format!("http://{}/metrics", router.admin))
        .await
        .body;
    for needle in [
        r#"georouter_config_reloads_total{result="failure"} 0"#,
        r#"georouter_config_reloads_total{result="success"} 0"#,
        r#"georouter_failovers_total{from="a",reason="connect",to="b"} 0"#,
        r#"georouter_failovers_total{from="b",reason="drained",to="a"} 0"#,
        r#"georouter_residency_refusals_total{jurisdiction="eu"} 0"#,
        r#"georouter_health_transitions_total{from="up",region="a",to="down"} 0"#,
        r#"georouter_admin_requests_total{action="drain",result="denied"} 0"#,
        r#"georouter_build_info{commit="#,
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

/// A region that leaves the policy leaves the metrics too: the series it was
/// exported with at 0 (failovers to and from it, its health transitions) go.
#[tokio::test]
async fn a_region_that_leaves_the_policy_is_not_exported_at_zero_for_ever() {
    let a = region("a").await;
    let b = region("b").await;
    let dir = test_dir("forget-region");
    let path = dir.join("policy.toml");
    let policy = |regions: &[&georouter::tools::sim::SimRegion]| {
        let names: Vec<String> = regions
            .iter()
            .map(|r| format!("\"{}\"", r.name()))
            .collect();
        format!(
            "{}\n[[routes]]\nregions = [{}]\n",
            support::policy(regions, ""),
            names.join(", ")
        )
    };
    std::fs::write(&path, policy(&[&a, &b])).unwrap();
    let token = "forget-region-token-0123456789abcdef";
    let router = TestRouter::spawn_file(&path, Some(token)).await;
    let metrics = || async {
        get(&h1_client(), &format!("http://{}/metrics", router.admin))
            .await
            .body
    };
    let before = metrics().await;
    assert!(
        before.contains(r#"georouter_failovers_total{from="b",reason="connect",to="a"} 0"#),
        "{before}"
    );
    std::fs::write(&path, policy(&[&a])).unwrap();
    let (s, body) = admin_post(router.admin, "/reload", Some(token)).await;
    assert_eq!(s, 200, "{body}");
    let after = metrics().await;
    for family in [
        "georouter_failovers_total",
        "georouter_health_transitions_total",
    ] {
        assert!(
            !after
                .lines()
                .any(|l| l.starts_with(family) && l.contains(r#""b""#)),
            "{family} still names b:\n{after}"
        );
    }
}

#[tokio::test]
async fn the_admin_api_answers_only_the_names_it_is_known_by() {
    let a = region("a").await;
    let toml = policy(
        &[&a],
        "[admin]\naddress = \"127.0.0.1:0\"\nhosts = [\"router.internal\"]\n",
    );
    let router = TestRouter::spawn(&toml).await;
    let port = router.admin.port();
    for (host, status) in [
        (format!("127.0.0.1:{port}"), 200),
        ("localhost".to_owned(), 200),
        (format!("LOCALHOST:{port}"), 200),
        (format!("[::1]:{port}"), 200),
        ("router.internal".to_owned(), 200),
        (format!("evil.example:{port}"), 421),
        ("127.0.0.1.evil.example".to_owned(), 421),
    ] {
        let reply = raw(
            router.admin,
            format!("GET /regions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&reply), status, "Host: {host}: {reply}");
    }
}

#[tokio::test]
async fn idle_admin_connections_are_bounded_and_closed() {
    use tokio::io::AsyncReadExt;
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    let mut idle = Vec::new();
    for _ in 0..georouter::admin::MAX_CONNECTIONS + 16 {
        idle.push(tokio::net::TcpStream::connect(router.admin).await.unwrap());
    }
    // Past the cap, newcomers are closed at once; the rest when their head
    // does not come: every one of them ends without a byte of ours.
    let mut closed = 0;
    for mut s in idle {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("an idle admin connection was closed")
            .unwrap_or(0);
        if n == 0 {
            closed += 1;
        }
    }
    assert_eq!(closed, georouter::admin::MAX_CONNECTIONS + 16);
    // And the listener still answers.
    let r = get(&h1_client(), &format!("http://{}/healthz", router.admin)).await;
    assert_eq!(r.status, 200);
}
