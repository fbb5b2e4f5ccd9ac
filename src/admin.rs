//! The admin API on its own listener (loopback by default): liveness, readiness and
//! the regions the router knows, and why a request would go where it goes.
//! Read-only for now; mutating routes will need a token.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::server::Shutdown;
use crate::State;

/// Serves the admin API until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut shutdown: Shutdown) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[derive(Serialize)]
struct RegionView<'a> {
    name: &'a str,
    jurisdiction: Option<&'a str>,
    healthy: bool,
    drained: bool,
    endpoints: Vec<String>,
}

/// `GET /explain?ip=..&host=..&path=..&method=..&home=..`: the decision for a hypothetical
/// request from `ip`, as JSON.
fn explain(state: &State, query: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut ip = None;
    let (mut host, mut path, mut home) = (String::new(), "/".to_owned(), None);
    let mut method = http::Method::GET;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "ip" => ip = Some(v.into_owned()),
            "host" => host = v.to_ascii_lowercase(),
            "path" => path = v.into_owned(),
            "home" => home = Some(v.into_owned()),
            "method" => match http::Method::from_bytes(v.to_ascii_uppercase().as_bytes()) {
                Ok(m) => method = m,
                Err(_) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        TEXT,
                        format!("method={v:?} is not an HTTP method\n"),
                    )
                }
            },
            _ => {}
        }
    }
    let Some(ip) = ip else {
        return reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            "explain needs ?ip=ADDRESS (and optionally host, path, home)\n",
        );
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            format!("ip={ip:?} is not an IP address\n"),
        );
    };
    let table = state.table.load();
    let states = state.states.load();
    let facts = crate::policy::RequestFacts {
        client: crate::identity::ClientIp(ip),
        geo: table.geo().lookup(ip),
        host: &host,
        path: &path,
        method: &method,
        home: home
            .as_deref()
            .map(|h| (h, crate::policy::PinSource::Header)),
    };
    let e = crate::explain::explain(&table, &states, &facts);
    let mut body = serde_json::to_vec_pretty(&e).unwrap_or_default();
    body.push(b'\n');
    reply(StatusCode::OK, "application/json", body)
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, "ok\n"),
        (&Method::GET, "/readyz") => reply(StatusCode::OK, TEXT, "ready\n"),
        (&Method::GET, "/regions") => {
            let table = state.table.load();
            let states = state.states.load();
            let views: Vec<RegionView<'_>> = table
                .regions()
                .iter()
                .map(|r| {
                    let s = states.get(&table, r.id);
                    RegionView {
                        name: r.name.as_str(),
                        jurisdiction: r.jurisdiction.as_deref(),
                        healthy: s.healthy,
                        drained: s.drained,
                        endpoints: r
                            .endpoints
                            .iter()
                            .map(|e| format!("{}://{}", e.scheme, e.authority))
                            .collect(),
                    }
                })
                .collect();
            let mut body = serde_json::to_vec_pretty(&views).unwrap_or_default();
            body.push(b'\n');
            reply(StatusCode::OK, "application/json", body)
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        (&Method::GET, "/explain") => explain(&state, req.uri().query().unwrap_or("")),
        (_, "/healthz" | "/readyz" | "/regions" | "/explain" | "/metrics") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => reply(StatusCode::NOT_FOUND, TEXT, "no such admin route\n"),
    })
}
