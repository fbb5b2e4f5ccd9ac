//! One reading of a path: the route the router picks, the residency fence it
//! applies and the path the region acts on come from the same reading, or the
//! router refuses (400). Proved against simulated regions and, by difference,
//! against a real nginx that echoes its own reading (`$uri`).

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use support::nginx::Nginx;
use support::*;

/// Spellings of `/static/../api/me` that some reader splits into `/api/me`.
const ESCAPES: &[&str] = &[
    "/static/..%2fapi/me",
    "/static/..%2Fapi/me",
    "/static%2f..%2fapi/me",
    "/static/%2e%2e%2fapi/me",
    "/static/.%2e%2Fapi/me",
    "/static/x/..%2f..%2fapi/me",
    "/static/..%5capi/me",
    "/static/..\\api/me",
    "/static/..;/api/me",
    "/static/%2e%2e/api/me",
];

/// A German resident's `eu` jurisdiction; `/static/` is public and served from
/// the US, everything else by the resident's jurisdiction.
async fn fenced_world(
    server: &str,
) -> (
    TestRouter,
    georouter::tools::sim::SimRegion,
    georouter::tools::sim::SimRegion,
) {
    let us = region("us").await;
    let eu = region("eu1").await;
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [server]
        {server}
        [client]
        trusted_proxies = ["127.0.0.0/8"]
        [geo]
        database = "{db}"
        {regions}
        [[jurisdictions]]
        name = "eu"
        countries = ["DE"]
        [[routes]]
        name = "static"
        path_prefix = "/static/"
        residency = false
        regions = ["us"]
        [[routes]]
        name = "app"
        regions = ["us", "eu1"]
        [[routes.rules]]
        countries = ["DE"]
        regions = ["eu1"]
        "#,
        db = toml_path(&country_mmdb()),
        regions = regions_toml(&[(&us, None), (&eu, Some("eu"))]),
    );
    (TestRouter::spawn(&toml).await, us, eu)
}

/// Status, headers and body of a raw HTTP/1.1 exchange.
fn parse(reply: &str) -> (u16, String, String) {
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    (status_of(reply), head.to_ascii_lowercase(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .map(str::trim)
}

async fn german(router: &TestRouter, target: &str, absolute: bool) -> (u16, String, String) {
    let target = if absolute {
        format!("http://example.com{target}")
    } else {
        target.to_owned()
    };
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 80.128.0.1\r\nConnection: close\r\n\r\n"
    );
    parse(&raw(router.addr(), req.as_bytes()).await)
}

async fn german_h2(router: &TestRouter, target: &str) -> Reply {
    let req = http::Request::get(router.url(target))
        .header("x-forwarded-for", "80.128.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&h2c_client(), req).await
}

#[tokio::test]
async fn an_escaped_separator_cannot_take_a_resident_out_of_the_fence() {
    let (router, us, eu) = fenced_world("access_log = false").await;
    for target in ESCAPES {
        for absolute in [false, true] {
            let (status, _, body) = german(&router, target, absolute).await;
            assert_eq!(status, 400, "{target} (absolute form: {absolute}): {body}");
        }
        let r = german_h2(&router, target).await;
        assert_eq!(r.status, 400, "{target} over HTTP/2: {}", r.body);
    }
    assert_eq!(us.requests(), 0, "an escaped path reached the US region");
    assert_eq!(eu.requests(), 0, "a refused path was forwarded");
    // The plain spelling is the same request, read once: the resident's region.
    let (status, head, _) = german(&router, "/static/../api/me", false).await;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "x-sim-path"), Some("/api/me"));
    assert_eq!(header(&head, "x-georouter-region"), Some("eu1"));
}

#[tokio::test]
async fn a_decoding_route_forwards_the_reading_it_routed_and_fenced_by() {
    let (router, us, _eu) = fenced_world("path_escapes = \"decode\"\naccess_log = false").await;
    for target in ESCAPES {
        for absolute in [false, true] {
            let (status, head, body) = german(&router, target, absolute).await;
            assert_eq!(status, 200, "{target}: {body}");
            assert_eq!(header(&head, "x-georouter-region"), Some("eu1"), "{target}");
            assert_eq!(header(&head, "x-sim-path"), Some("/api/me"), "{target}");
        }
        let r = german_h2(&router, target).await;
        assert_eq!(r.headers["x-sim-path"], "/api/me", "{target} over HTTP/2");
    }
    assert_eq!(
        us.requests(),
        0,
        "a resident's request left the jurisdiction"
    );
}

#[tokio::test]
async fn a_route_that_rejects_escapes_refuses_a_path_decoded_into_it() {
    // One route decodes; the route a decoded path reaches may not.
    let eu = region("eu1").await;
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n{regions}\
         [[routes]]\nname = \"files\"\npath_prefix = \"/files/\"\npath_escapes = \"decode\"\nregions = [\"eu1\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nregions = [\"eu1\"]\n",
        regions = regions_toml(&[(&eu, None)]),
    );
    let router = TestRouter::spawn(&toml).await;
    let ask =
        |t: &str| format!("GET {t} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    let (status, head, _) = parse(&raw(router.addr(), ask("/files/a%2Fb").as_bytes()).await);
    assert_eq!(status, 200);
    assert_eq!(header(&head, "x-sim-path"), Some("/files/a/b"));
    let (status, _, body) = parse(&raw(router.addr(), ask("/files/..%2fapi/me").as_bytes()).await);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("encoded slash"), "{body}");
    let (status, _, body) = parse(&raw(router.addr(), ask("/api/a%2fb").as_bytes()).await);
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn explain_reads_the_path_as_the_data_path_does() {
    let (router, _us, _eu) = fenced_world("access_log = false").await;
    let url = format!(
        "http://{}/explain?ip=80.128.0.1&path=%2Fstatic%2F..%252fapi%2Fme",
        router.admin
    );
    let e = get(&h1_client(), &url).await;
    assert_eq!(e.status, 200, "{}", e.body);
    let v: serde_json::Value = serde_json::from_str(&e.body).unwrap();
    assert!(
        v["outcome"].as_str().unwrap().contains("encoded slash"),
        "{v}"
    );
    assert!(v["chosen"].is_null(), "{v}");
    // Methods are read exactly, as the data path reads them.
    let e = get(
        &h1_client(),
        &format!("http://{}/explain?ip=80.128.0.1&method=post", router.admin),
    )
    .await;
    assert_eq!(e.status, 400, "{}", e.body);
    assert!(e.body.contains("case-sensitive"), "{}", e.body);
}

/// The route a reader of `path` would take, by the policy's prefixes.
fn route_of(path: &str) -> &'static str {
    for (prefix, region) in [("/static/", "static"), ("/api/", "api"), ("/admin/", "adm")] {
        if path.starts_with(prefix) {
            return region;
        }
    }
    "other"
}

/// At least 200 spellings: separators and dot-segments encoded every way the
/// literature knows (once, twice, upper and lower case, overlong UTF-8,
/// backslashes, parameters), case and unreserved escapes, absolute form.
fn corpus() -> Vec<String> {
    let seps = [
        "/",
        "%2f",
        "%2F",
        "%252f",
        "\\",
        "%5c",
        "%5C",
        "%c0%af",
        "%e0%80%af",
        ";/",
        "//",
        "/./",
        "%2f.%2f",
        "%ef%bc%8f",
    ];
    let dots = [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e.",
        "%252e%252e",
        "%c0%ae%c0%ae",
        "..;",
        "..;x=1",
    ];
    let mut out = Vec::new();
    for d in dots {
        for s in seps {
            out.push(format!("/static/{d}{s}api/me"));
            out.push(format!("/static{s}{d}{s}api/me"));
        }
    }
    for p in [
        "/api/me",
        "/API/me",
        "/Api/me",
        "/%61pi/me",
        "/%41PI/me",
        "/ap%69/me",
        "/api%2fme",
        "/api%2Fme",
        "/api;x/me",
        "/api;/me",
        "/api%3b/me",
        "/api%3Bx/me",
        "//api/me",
        "///static/../api/me",
        "/static//../api/me",
        "/static/./../api/me",
        "/static/%2e/../api/me",
        "/static/..%00/api/me",
        "/static/%0a/../api/me",
        "/static/..%u2215api/me",
        "/static/..%2",
        "/static/%",
        "/static/a%zzb",
        "/st%61tic/../api/me",
        "/static/..%252f..%252fapi/me",
        "/static/%25%32%65%25%32%65/api/me",
        "/static/#/../api/me",
        "/static/?/../api/me",
        "/static/caf%C3%A9/../../api/me",
        "/static/caf\u{e9}/../../api/me",
        "/admin%2f../api/me",
        "/admin/..%5c..%5capi/me",
        "/%2e%2e/api/me",
        "/static/../../api/me",
        "/static/~%7e/x",
        "/api/./me/.",
        "/api/me/..",
        "/api/me%2f..",
        "/static%2e%2e/api/me",
        "/a/b/../../admin/x",
    ] {
        out.push(p.to_owned());
    }
    let absolute: Vec<String> = out
        .iter()
        .take(40)
        .map(|p| format!("http://example.com{p}"))
        .collect();
    out.extend(absolute);
    out
}

/// One raw HTTP/1.1 GET of `target` to `addr`.
async fn fetch(addr: SocketAddr, target: &str) -> (u16, String, String) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    parse(&raw(addr, req.as_bytes()).await)
}

async fn prove_by_difference(escapes: &str, nginx: &Nginx) -> (usize, usize) {
    let regions: String = ["static", "api", "adm", "other"]
        .iter()
        .map(|r| {
            format!(
                "[[regions]]\nname = \"{r}\"\nendpoints = [{{ url = \"{}\" }}]\n",
                nginx.url()
            )
        })
        .collect();
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[server]\naccess_log = false\npath_escapes = \"{escapes}\"\n\
         {regions}\
         [[routes]]\npath_prefix = \"/static/\"\nregions = [\"static\"]\n\
         [[routes]]\npath_prefix = \"/api/\"\nregions = [\"api\"]\n\
         [[routes]]\npath_prefix = \"/admin/\"\nregions = [\"adm\"]\n\
         [[routes]]\nregions = [\"other\"]\n"
    );
    let router = TestRouter::spawn(&toml).await;
    let (mut served, mut refused) = (0, 0);
    let corpus = corpus();
    assert!(corpus.len() >= 200, "{} variants", corpus.len());
    for target in &corpus {
        let (status, head, seen) = fetch(router.addr(), target).await;
        if status == 400 {
            refused += 1;
            continue;
        }
        assert_eq!(status, 200, "{target} ({escapes}): {head}\n{seen}");
        served += 1;
        let chose = header(&head, "x-georouter-region")
            .unwrap_or("-")
            .to_owned();
        // The region acts on what it was sent: its reading takes the same route.
        assert_eq!(
            route_of(&seen),
            chose,
            "{target} ({escapes}): the router chose {chose}, nginx read {seen:?}"
        );
        // With escapes refused, nginx's own reading of the client's spelling
        // takes the same route too (where nginx accepts that spelling).
        if escapes == "reject" {
            let (status, _, direct) = fetch(nginx.addr, target).await;
            if status == 200 {
                assert_eq!(
                    route_of(&direct),
                    chose,
                    "{target}: the router chose {chose}, nginx reads the spelling as {direct:?}"
                );
            }
        }
    }
    (served, refused)
}

#[tokio::test]
async fn the_router_and_an_nginx_region_read_every_spelling_alike() {
    let nginx = Nginx::start("paths").await;
    let (served, refused) = prove_by_difference("reject", &nginx).await;
    // The corpus exercises both answers.
    assert!(
        served >= 30 && refused >= 100,
        "served {served}, refused {refused}"
    );
    let (served_decoded, _) = prove_by_difference("decode", &nginx).await;
    assert!(
        served_decoded > served,
        "decode served {served_decoded}, reject {served}"
    );
}
