//! The public edge, byte by byte: HTTP/1.1 framing and header cases written from
//! RFC 9112 and the request-smuggling literature (CL.TE, TE.CL, TE.TE, obs-fold,
//! duplicate lengths), each with the status the router must answer and whether
//! it must close the connection; and a second request hidden behind a refused
//! head never reaches a region.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What follows every case on the same connection: answered only when the
/// router kept the connection open.
const FOLLOW_UP: &[u8] = b"GET /follow-up HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// Reads one response (head and Content-Length body); `None` at EOF or error.
async fn response(s: &mut tokio::net::TcpStream) -> Option<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    Some(status)
}

/// Sends `case` and reads its answer, then sends [`FOLLOW_UP`] on the same
/// connection: it is answered only when the router kept the connection open.
async fn statuses(addr: std::net::SocketAddr, case: &[u8]) -> Vec<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(case).await.unwrap();
    let mut out = Vec::new();
    let Some(first) = response(&mut s).await else {
        return out;
    };
    out.push(first);
    if s.write_all(FOLLOW_UP).await.is_ok() {
        if let Some(second) = response(&mut s).await {
            out.push(second);
        }
    }
    out
}

/// Whether a case's request reaches the region.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    No,
    Yes,
    /// A body that fails mid-stream: its head may or may not have gone out.
    Maybe,
}
use Reach::{Maybe, No, Yes};

/// (name, bytes, status, closes, reaches the region)
type Case = (&'static str, &'static [u8], u16, bool, Reach);

const CASES: &[Case] = &[
    // Well-framed requests: answered, and the connection stays open.
    ("plain GET", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 200, false, Yes),
    ("POST with a length", b"POST /count HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello", 200, false, Yes),
    ("POST chunked", b"POST /count HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200, false, Yes),
    ("chunked, any case", b"POST /count HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: ChUnKeD\r\n\r\n0\r\n\r\n", 200, false, Yes),
    ("absolute form agreeing with Host", b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 200, false, Yes),
    ("absolute form with the default port", b"GET http://example.com:80/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 200, false, Yes),
    ("host with a port", b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", 200, false, Yes),
    ("IPv6 literal host", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 200, false, Yes),
    // CL.TE and TE.CL: two ways to frame one body.
    ("CL then TE", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400, true, No),
    ("TE then CL", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400, true, No),
    ("CL with TE identity", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello", 400, true, No),
    // Lengths.
    ("two equal lengths", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, true, No),
    ("two different lengths", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, true, No),
    ("a list of lengths", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5, 5\r\n\r\nhello", 400, true, No),
    ("a signed length", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: +5\r\n\r\nhello", 400, true, No),
    ("a negative length", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: -1\r\n\r\n", 400, true, No),
    ("a hex length", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0x5\r\n\r\nhello", 400, true, No),
    ("a huge length", b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400, true, No),
    // TE.TE: codings the router does not speak, or chunked twice.
    ("gzip then chunked", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, true, No),
    ("chunked then gzip", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400, true, No),
    ("chunked twice in one header", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, true, No),
    ("chunked in two headers", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true, No),
    ("a coding that is not chunked", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, true, No),
    ("space before the colon", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, true, No),
    ("TE folded onto the next line", b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400, true, No),
    ("obs-fold in another header", b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Folded: a\r\n b\r\n\r\n", 400, true, No),
    ("chunked in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true, No),
    // Chunk framing the head cannot show: the body fails mid-stream.
    ("a chunk size that is not hex", b"POST /count HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n", 400, true, Maybe),
    ("a chunk size that overflows", b"POST /count HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400, true, Maybe),
    // Authority.
    ("no Host", b"GET / HTTP/1.1\r\n\r\n", 400, true, No),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400, true, No),
    ("a Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, true, No),
    ("a Host with userinfo", b"GET / HTTP/1.1\r\nHost: evil.com@127.0.0.1\r\n\r\n", 400, true, No),
    ("an empty Host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400, true, No),
    ("absolute form against Host", b"GET http://internal.example/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, true, No),
    // Methods and paths.
    ("TRACE", b"TRACE / HTTP/1.1\r\nHost: example.com\r\n\r\n", 405, false, No),
    ("a path above the root", b"GET /../etc/passwd HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, false, No),
    ("an encoded path above the root", b"GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, false, No),
    ("a lower-case POST", b"post /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n", 400, false, No),
    ("a mixed-case GET", b"Get /echo HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, false, No),
    ("a lower-case delete", b"delete /echo HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, false, No),
    ("an encoded slash", b"GET /a%2fb HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, false, No),
    ("a backslash", b"GET /a\\..\\b HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, false, No),
    // Line ends: CRLF only (RFC 9112 2.2 lets a server refuse a bare LF).
    ("a bare LF after the request line", b"GET / HTTP/1.1\nHost: example.com\r\n\r\n", 400, true, No),
    ("bare LFs throughout", b"GET / HTTP/1.1\nHost: example.com\n\n", 400, true, No),
    ("a bare LF ending the head", b"GET / HTTP/1.1\r\nHost: example.com\r\n\n", 400, true, No),
    ("a NUL in a header value", b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\0b\r\n\r\n", 400, true, No),
];

#[tokio::test]
async fn http11_framing_and_header_cases_answer_as_a_hardened_edge() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\naccess_log = false\n")).await;
    assert!(CASES.len() >= 30);
    let mut wrong = Vec::new();
    for (name, bytes, status, closes, reaches) in CASES {
        let before = a.requests();
        let got = statuses(router.addr(), bytes).await;
        let want: Vec<u16> = if *closes {
            vec![*status]
        } else {
            vec![*status, 200]
        };
        // The follow-up reaches the region only on a connection kept open.
        let seen = a.requests() - before - u64::from(!*closes);
        let reached_ok = match reaches {
            Yes => seen == 1,
            No => seen == 0,
            Maybe => seen <= 1,
        };
        if got != want || !reached_ok {
            wrong.push(format!(
                "{name}: answers {got:?}, want {want:?}; the region saw it {seen} times"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_request_hidden_behind_a_refused_head_never_reaches_a_region() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\naccess_log = false\n")).await;
    // CL.TE: a front end honouring Content-Length would see one request, one
    // honouring chunked a second one, `GET /admin`, hidden in the body.
    let smuggle: &[u8] = b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 49\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: example.com\r\n\r\n";
    for _ in 0..20 {
        let got = statuses(router.addr(), smuggle).await;
        assert_eq!(got, [400], "one refusal, then the connection closes");
    }
    assert_eq!(a.requests(), 0, "nothing reached the region");
}

/// RFC 9112 2.2: a server SHOULD ignore at least one empty line before the
/// request line (a client may send a stray CRLF after a body). The cleartext
/// listener's HTTP/2 sniffing answered it with a binary GOAWAY before.
#[tokio::test]
async fn empty_lines_before_the_first_request_line_are_ignored() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "")).await;
    for lead in [&b"\r\n"[..], b"\r\n\r\n", b"\n"] {
        let mut req = lead.to_vec();
        req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = raw(router.addr(), &req).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{lead:?}: {reply:?}");
    }
    // An HTTP/1 minor version hyper does not speak gets an HTTP/1.1 refusal
    // (hyper's 400), not an HTTP/2 frame.
    let reply = raw(router.addr(), b"GET / HTTP/1.2\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
}

/// The head the region received, as the simulated region's `/echo` reports it.
async fn echoed(router: &TestRouter, raw_request: &[u8]) -> String {
    let reply = raw(router.addr(), raw_request).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    reply.to_ascii_lowercase()
}

#[tokio::test]
async fn what_the_region_receives_is_normalised_and_owned_headers_are_the_routers() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\naccess_log = false\n")).await;
    let head = echoed(
        &router,
        b"GET /static/../echo?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Georouter-Region: forged\r\n\
          X-Georouter-Anything: forged\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert!(
        head.contains("get /echo?q=1 http/1.1"),
        "normalised path: {head}"
    );
    assert!(
        !head.contains("forged"),
        "x-georouter-* is the router's: {head}"
    );
    assert!(!head.contains("upgrade"), "h2c is never tunnelled: {head}");
    assert!(
        head.contains("x-request-id: "),
        "an id is made and passed on: {head}"
    );
    // A client's own id is kept.
    let head = echoed(
        &router,
        b"GET /echo HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: trace-42\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.contains("x-request-id: trace-42"), "{head}");
}

#[tokio::test]
async fn routes_match_the_normalised_path() {
    let a = region("a").await;
    let b = region("b").await;
    let router = TestRouter::spawn(&policy(
        &[&a, &b],
        r#"
        [server]
        access_log = false
        [[routes]]
        name = "static"
        path_prefix = "/static/"
        residency = false
        regions = ["a"]
        [[routes]]
        name = "api"
        path_prefix = "/api/"
        regions = ["b"]
        "#,
    ))
    .await;
    let r = get(&h1_client(), &router.url("/static/%2e%2e/api/x")).await;
    assert_eq!(r.status, 400, "an encoded dot-segment is read two ways");
    for path in [
        "/static/../api/x",
        "//api/x",
        "/%61pi/x",
        "/static/./../api/x",
    ] {
        let r = get(&h1_client(), &router.url(path)).await;
        assert_eq!(
            r.headers["x-georouter-region"], "b",
            "{path} is an /api/ request"
        );
    }
}

#[tokio::test]
async fn the_routers_own_errors_carry_the_request_id_and_no_internal_address() {
    let router = TestRouter::spawn(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"dead\"\n\
         endpoints = [{{ url = \"http://127.0.0.1:{}\" }}]\n",
        refused_port()
    ))
    .await;
    let reply = raw(
        router.addr(),
        b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: case-7\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 502, "{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(lower.contains("x-request-id: case-7"), "{reply}");
    assert!(reply.contains("request id: case-7"), "{reply}");
    assert!(!reply.contains("127.0.0.1"), "{reply}");
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peers_are_appended_to_or_replaced() {
    let a = region("a").await;
    let ask: &[u8] = b"GET /echo HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 203.0.113.9\r\n\
        Forwarded: for=198.51.100.1\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n";
    let append = TestRouter::spawn(&policy(&[&a], "[server]\naccess_log = false\n")).await;
    let head = echoed(&append, ask).await;
    assert!(
        head.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{head}"
    );
    let replace = TestRouter::spawn(&policy(
        &[&a],
        "[server]\naccess_log = false\n[client]\nforwarded = \"replace\"\n",
    ))
    .await;
    let head = echoed(&replace, ask).await;
    assert!(head.contains("x-forwarded-for: 127.0.0.1\n"), "{head}");
    assert!(
        !head.contains("203.0.113.9") && !head.contains("198.51.100.1"),
        "{head}"
    );
    assert!(head.contains("x-forwarded-host: example.com"), "{head}");
}

#[tokio::test]
async fn an_upgrade_list_with_one_unlisted_protocol_is_no_upgrade() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\naccess_log = false\n")).await;
    for upgrade in ["websocket, h2c", "h2c, websocket", "websocket,foo/1"] {
        let head = echoed(
            &router,
            format!(
                "GET /echo HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, close\r\nUpgrade: {upgrade}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(!head.contains("upgrade"), "{upgrade}: {head}");
    }
    // Two Upgrade lines are two readings of one list.
    let head = echoed(
        &router,
        b"GET /echo HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert!(!head.contains("upgrade"), "{head}");
}

/// A region that answers every request `101` to `protocol`, whatever was asked.
async fn switching_region(protocol: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                // Health checks get a plain answer.
                let reply = if head.starts_with(b"GET /health") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_owned()
                } else {
                    format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n")
                };
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_switch_to_a_protocol_nobody_asked_for_is_502_and_nothing_is_spliced() {
    let addr = switching_region("h2c").await;
    let router = TestRouter::spawn(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[server]\naccess_log = false\n\
         [[regions]]\nname = \"rogue\"\nendpoints = [{{ url = \"http://{addr}\" }}]\n"
    ))
    .await;
    for request in [
        &b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        &b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        let reply = raw(router.addr(), request).await;
        assert_eq!(status_of(&reply), 502, "{reply}");
        assert!(
            !reply.to_ascii_lowercase().contains("upgrade: h2c"),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn connection_cannot_remove_the_headers_the_router_owes() {
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(&[&a], "[server]\naccess_log = false\n")).await;
    let head = echoed(
        &router,
        b"GET /echo HTTP/1.1\r\nHost: app.example\r\nX-Request-Id: trace-9\r\n\
          Connection: host, x-request-id, x-forwarded-for, x-forwarded-host, close\r\nX-Other: dropped\r\n\r\n",
    )
    .await;
    assert!(head.contains("host: app.example"), "{head}");
    assert!(head.contains("x-request-id: trace-9"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(head.contains("x-forwarded-host: app.example"), "{head}");
    let head = echoed(
        &router,
        b"GET /echo HTTP/1.1\r\nHost: app.example\r\nConnection: x-other, close\r\nX-Other: dropped\r\n\r\n",
    )
    .await;
    assert!(
        !head.contains("x-other"),
        "a header Connection names is still removed: {head}"
    );
}

#[tokio::test]
async fn identity_headers_are_appended_to_or_replaced_as_documented() {
    let a = region("a").await;
    let ask: &[u8] = b"GET /echo HTTP/1.1\r\nHost: example.com\r\nForwarded: for=198.51.100.1\r\n\
        X-Real-IP: 198.51.100.2\r\nX-Forwarded-Port: 8443\r\nX-Forwarded-Prefix: /admin\r\n\
        X-Forwarded-Ssl: on\r\nX-Forwarded-Scheme: https\r\nX-Forwarded-Server: inside\r\n\
        X-Forwarded-Uri: /admin\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
        True-Client-IP: 198.51.100.3\r\nCF-Connecting-IP: 198.51.100.4\r\nConnection: close\r\n\r\n";
    let append = TestRouter::spawn(&policy(&[&a], "[server]\naccess_log = false\n")).await;
    let head = echoed(&append, ask).await;
    assert!(
        head.contains("forwarded: for=198.51.100.1, for=127.0.0.1\n"),
        "append adds the peer to Forwarded: {head}"
    );
    assert!(
        head.contains("x-real-ip: 127.0.0.1\n"),
        "X-Real-IP is the client the router saw: {head}"
    );
    let replace = TestRouter::spawn(&policy(
        &[&a],
        "[server]\naccess_log = false\n[client]\nforwarded = \"replace\"\n",
    ))
    .await;
    let head = echoed(&replace, ask).await;
    for gone in [
        "198.51.100",
        "forwarded:",
        "x-real-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-forwarded-server",
        "x-forwarded-uri",
        "x-original-url",
        "x-rewrite-url",
        "true-client-ip",
        "cf-connecting-ip",
    ] {
        assert!(!head.contains(gone), "replace drops {gone}: {head}");
    }
    assert!(head.contains("x-forwarded-for: 127.0.0.1\n"), "{head}");
}

/// A connection that sends half a head and then nothing.
async fn slowloris(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn when_every_slot_is_taken_silent_connections_make_room_for_newcomers() {
    let a = region("a").await;
    // Long head and idle deadlines: only pressure can free a slot here.
    let router = TestRouter::spawn(&policy(
        &[&a],
        "[server]\naccess_log = false\nworkers = 1\nmax_connections = 20\n\
         header_read_timeout = \"120s\"\nidle_timeout = \"120s\"\n",
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(slowloris(router.addr()).await);
    }
    // Every slot is taken by a connection that never completes its head; fresh
    // clients are still served, each in its turn.
    for i in 0..30 {
        let r = get(&h1_client(), &router.url("/")).await;
        assert_eq!(r.status, 200, "probe {i}");
        held.push(slowloris(router.addr()).await);
    }
    // An idle keep-alive connection makes room too.
    let keep = h1_client();
    assert_eq!(get(&keep, &router.url("/")).await.status, 200);
    for _ in 0..25 {
        held.push(slowloris(router.addr()).await);
    }
    assert_eq!(get(&h1_client(), &router.url("/")).await.status, 200);
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections() {
    use tokio::io::AsyncReadExt;
    let a = region("a").await;
    let router = TestRouter::spawn(&policy(
        &[&a],
        "[server]\naccess_log = false\n[client]\nmax_connections_per_ip = 3\n",
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(slowloris(router.addr()).await);
    }
    let mut fourth = slowloris(router.addr()).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), fourth.read(&mut buf))
        .await
        .expect("the fourth connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    drop(held);
    // Its connections gone, the address is served again.
    let addr = router.addr();
    eventually_async("the address served again", || async move {
        let reply = raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        reply.starts_with("HTTP/1.1 200")
    })
    .await;
}
