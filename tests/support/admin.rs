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

/// `GET /regions` as JSON, the entry for `name`.
pub async fn region_view(admin: SocketAddr, name: &str) -> serde_json::Value {
    let r = get(&h1_client(), &format!("http://{admin}/regions")).await;
    let all: serde_json::Value = serde_json::from_str(&r.body).unwrap();
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
