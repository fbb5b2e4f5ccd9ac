//! HTTP/2 abuse over real sockets (h2c prior knowledge): control-frame floods
//! (bounded by `edge::h2_guard`), rapid reset and CONTINUATION floods (bounded
//! by h2 itself) end with GOAWAY(ENHANCE_YOUR_CALM), a broken preface with
//! GOAWAY(PROTOCOL_ERROR), and an ordinary client is not disturbed.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends `opening` then `flood` repeated `times`, and reads frames until a
/// GOAWAY (its error code) or the end of the connection (`None`).
async fn goaway_after(
    addr: std::net::SocketAddr,
    opening: Vec<u8>,
    flood: Vec<u8>,
    times: usize,
) -> Option<u32> {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(&opening).await.is_err() {
            return;
        }
        let batch: Vec<u8> = flood
            .iter()
            .copied()
            .cycle()
            .take(flood.len() * 1000)
            .collect();
        for _ in 0..times.div_ceil(1000) {
            if wr.write_all(&batch).await.is_err() {
                return;
            }
        }
    });
    let mut head = [0u8; 9];
    let found = loop {
        let read = tokio::time::timeout(Duration::from_secs(20), rd.read_exact(&mut head)).await;
        let Ok(Ok(_)) = read else { break None };
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            break None;
        }
        if head[3] == 0x7 && len >= 8 {
            break Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    };
    writer.abort();
    found
}

async fn router() -> (georouter::tools::sim::SimRegion, TestRouter) {
    let a = region("a").await;
    let r = TestRouter::spawn(&policy(&[&a], "[server]\naccess_log = false\n")).await;
    (a, r)
}

fn opening() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(frame(0x4, 0, 0, &[]));
    b
}

#[tokio::test]
async fn control_frame_floods_end_with_enhance_your_calm() {
    let (_a, router) = router().await;
    for (what, flood) in [
        ("SETTINGS", frame(0x4, 0, 0, &[])),
        ("PING", frame(0x6, 0, 0, &[7; 8])),
        ("WINDOW_UPDATE", frame(0x8, 0, 0, &[0, 0, 0, 1])),
        ("PRIORITY", frame(0x2, 0, 1, &[0, 0, 0, 0, 16])),
    ] {
        let code = goaway_after(router.addr(), opening(), flood, 100_000).await;
        assert_eq!(code, Some(0xb), "{what} flood: GOAWAY(ENHANCE_YOUR_CALM)");
    }
}

/// A request's header block (HPACK): GET http://example.com/.
fn get_block() -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table), :authority as a
    // literal without indexing (name index 1).
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 11];
    b.extend_from_slice(b"example.com");
    b
}

/// What h2 0.4 bounds itself, checked through this router's configuration
/// of it (h2_guard leaves these to h2).
#[tokio::test]
async fn rapid_reset_ends_with_enhance_your_calm() {
    // CVE-2023-44487: streams opened and cancelled at once cost the server a
    // request each while the client pays nothing.
    let (_a, router) = router().await;
    let mut bytes = opening();
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        bytes.extend(frame(0x1, 0x5, stream, &get_block()));
        bytes.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    let code = goaway_after(router.addr(), bytes, Vec::new(), 0).await;
    assert_eq!(code, Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM)");
}

#[tokio::test]
async fn a_continuation_flood_ends_with_enhance_your_calm() {
    // CVE-2024-27316 class: a header block that never ends, one small
    // CONTINUATION frame at a time.
    let (_a, router) = router().await;
    let mut bytes = opening();
    bytes.extend(frame(0x1, 0x1, 1, &get_block()));
    for _ in 0..10_000 {
        bytes.extend(frame(0x9, 0, 1, &[]));
    }
    let code = goaway_after(router.addr(), bytes, Vec::new(), 0).await;
    assert_eq!(code, Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM)");
}

#[tokio::test]
async fn an_invalid_preface_gets_goaway_protocol_error() {
    let (_a, router) = router().await;
    let code = goaway_after(
        router.addr(),
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
        Vec::new(),
        0,
    )
    .await;
    assert_eq!(code, Some(0x1));
    // A preface that is not even PRI, and not an HTTP/1 request line either
    // (h2spec 3.5 on h2c): the same GOAWAY, not an HTTP/1.1 400.
    let code = goaway_after(
        router.addr(),
        b"INVALID CONNECTION PREFACE\r\n\r\n".to_vec(),
        Vec::new(),
        0,
    )
    .await;
    assert_eq!(code, Some(0x1));
}

#[tokio::test]
async fn an_ordinary_http2_client_is_not_disturbed() {
    let (_a, router) = router().await;
    let client = h2c_client();
    for _ in 0..200 {
        assert_eq!(get(&client, &router.url("/")).await.status, 200);
    }
}

/// The HTTP/2 settings of `[server]` reach the client: the stream window and
/// frame size in the router's SETTINGS, the connection window by a
/// WINDOW_UPDATE on stream 0.
#[tokio::test]
async fn the_configured_http2_windows_and_frame_size_are_advertised() {
    let a = region("a").await;
    let r = TestRouter::spawn(&policy(
        &[&a],
        "[server]\nhttp2_stream_window = 262144\nhttp2_connection_window = 524288\n\
         http2_max_frame_size = 32768\n",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(r.addr()).await.unwrap();
    s.write_all(&opening()).await.unwrap();
    let (mut settings, mut connection_increment) = (Vec::new(), None);
    while settings.is_empty() || connection_increment.is_none() {
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head))
            .await
            .expect("the router's SETTINGS and WINDOW_UPDATE within 20 s")
            .unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        match head[3] {
            0x4 if head[4] & 0x1 == 0 => {
                settings = settings_of(&payload);
            }
            0x8 if stream == 0 => {
                connection_increment = Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
            }
            _ => {}
        }
    }
    assert!(settings.contains(&(0x4, 262_144)), "{settings:?}");
    assert!(settings.contains(&(0x5, 32_768)), "{settings:?}");
    assert_eq!(connection_increment, Some(524_288 - 65_535));
}
