//! Clients and requests: hyper clients (HTTP/1.1, h2c), raw bytes for what a compliant client cannot send, HTTP/2 SETTINGS.

use super::*;

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub version: http::Version,
    pub body: String,
}

pub async fn get(client: &TestClient, url: &str) -> Reply {
    send(
        client,
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// A GET of `url` that names `host` in its Host header.
pub async fn get_as(client: &TestClient, url: &str, host: &str) -> Reply {
    send(
        client,
        http::Request::get(url)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

pub async fn send(client: &TestClient, req: http::Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("response within 20 s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        version: parts.version,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `n` GETs of `url` at once, each on its own client, in the order sent.
pub async fn concurrent_gets(url: &str, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { get(&h1_client(), &url).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The region that served a reply, or the router's own text when none did.
pub fn served_or_body(r: &Reply) -> String {
    r.headers
        .get("x-georouter-region")
        .map_or_else(|| r.body.clone(), |v| v.to_str().unwrap().to_owned())
}

/// Writes raw bytes on a new connection and reads until the peer closes (or the
/// bound runs out); for requests a compliant client library cannot make.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"))
}

/// A loopback port with nothing listening on it.
pub fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// The (identifier, value) pairs of an HTTP/2 SETTINGS payload (RFC 9113 6.5.1).
pub fn settings_of(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|c| {
            let id = u16::from_be_bytes([c[0], c[1]]);
            (id, u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
        })
        .collect()
}
