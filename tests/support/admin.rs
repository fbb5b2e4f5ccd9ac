//! The admin API as tests call it.

use super::*;

/// POSTs to the admin API with an optional bearer token; (status, body).
pub async fn admin_post(
    admin: SocketAddr,
    path_and_query: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = http::Request::post(format!("http://{admin}{path_and_query}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = send(&h1_client(), req.body(Full::new(Bytes::new())).unwrap()).await;
    (r.status, r.body)
}

/// A read view of the admin API as JSON (`/regions`, `/status`), with an
/// optional bearer token; it must answer 200.
pub async fn admin_json(admin: SocketAddr, path: &str, token: Option<&str>) -> serde_json::Value {
    let mut req = http::Request::get(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = send(&h1_client(), req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body))
}

/// `GET /regions` as JSON, the entry for `name`.
pub async fn region_view(admin: SocketAddr, name: &str) -> serde_json::Value {
    region_view_as(admin, name, None).await
}

/// `GET /regions` with a bearer token, the entry for `name`.
pub async fn region_view_as(
    admin: SocketAddr,
    name: &str,
    token: Option<&str>,
) -> serde_json::Value {
    let all = admin_json(admin, "/regions", token).await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no region {name} in {all}"))
}

/// The phase a region is in, as the control plane sees it.
pub fn phase(router: &TestRouter, name: &str) -> &'static str {
    router
        .control
        .region_reports()
        .into_iter()
        .find(|r| r.name.as_str() == name)
        .unwrap_or_else(|| panic!("no region {name}"))
        .phase
        .name()
}
