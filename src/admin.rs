//! The admin API on its own listener (loopback by default): liveness, readiness,
//! metrics, regions, the effective policy, why a request would go where it goes;
//! and, with the mutating token, drains and reloads, each an audit event. `/` is
//! a status page over the same calls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

mod mutate;
mod page;
pub mod views;

use crate::control::auth::{Access, Denied};
use crate::control::{Control, DrainError};
use crate::edge::server::Shutdown;
use crate::routing::facts::{RequestFacts, Sources};
use crate::routing::State;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// Serves the admin API until `shutdown` fires.
/// Connections the admin listener serves at once; past it, a new one is
/// closed at once (operators and Prometheus need a handful). Counted in the
/// descriptor budget's reserve.
pub const MAX_CONNECTIONS: usize = crate::edge::descriptors::ADMIN_CONNECTIONS;
/// The time a connection has to send its request head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest any admin connection lives (a `wait` on a fleet drain is 60 s at most).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(90);

pub async fn serve(listener: TcpListener, control: Arc<Control>, mut shutdown: Shutdown) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    static ACCEPT: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    if let Some(suppressed) = ACCEPT.allow() {
                        tracing::warn!(error = %e, suppressed, "admin accept failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Full: the newcomer is closed, its descriptor freed at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| route(control.clone(), peer, req));
            // One request a connection: nothing idles here between polls.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

/// `GET /explain?ip=..&host=..&path=..&method=..&home=..&cookie=..`: the decision
/// for a hypothetical request from `ip`, as JSON. Its facts are made as a real
/// request's are ([`RequestFacts::from_request`]): the host and path normalised
/// the same way, `home` read as the residency header from a trusted proxy, and
/// `cookie` as the request's `Cookie` header (the router's signed residency
/// cookie counts when it verifies).
fn explain(state: &State, query: &str) -> Response<Full<Bytes>> {
    let bad = |text: String| reply(StatusCode::BAD_REQUEST, TEXT, text);
    let mut ip = None;
    let (mut host, mut path, mut home, mut cookie) = (String::new(), "/".to_owned(), None, None);
    let mut method = http::Method::GET;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "ip" => ip = Some(v.into_owned()),
            "host" => host = v.into_owned(),
            "path" => path = v.into_owned(),
            "home" => home = Some(v.into_owned()),
            "cookie" => cookie = Some(v.into_owned()),
            // Read as the data path reads it: exactly, case variants refused.
            "method" => match http::Method::from_bytes(v.as_bytes()) {
                Ok(m) if crate::proxy::admit::case_variant(&m) => {
                    return bad(format!(
                        "method={v:?}: {}\n",
                        crate::proxy::admit::Refused::MethodCase
                    ))
                }
                Ok(m) => method = m,
                Err(_) => return bad(format!("method={v:?} is not an HTTP method\n")),
            },
            _ => {}
        }
    }
    let Some(ip) = ip else {
        return bad(
            "explain needs ?ip=ADDRESS (and optionally host, path, method, home, cookie)\n".into(),
        );
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return bad(format!("ip={ip:?} is not an IP address\n"));
    };
    let snapshot = state.routing.load();
    let (table, states) = (&snapshot.table, &snapshot.states);
    let mut host_buf = [0u8; 256];
    let host = match host.as_str() {
        "" => "",
        h => match crate::proxy::authority::parse(h.as_bytes()) {
            Some(at) => at.of(h, &mut host_buf),
            None => return bad(format!("host={h:?} is not a valid host[:port]\n")),
        },
    };
    let (path, ambiguity) = match crate::path::read(&path) {
        Ok(r) => (r.path, r.ambiguity),
        Err(e) => return bad(format!("path={path:?}: {e}\n")),
    };
    let mut headers = http::HeaderMap::new();
    if let (Some(name), Some(home)) = (&table.residency_header, &home) {
        match http::HeaderValue::from_str(home) {
            Ok(v) => {
                headers.insert(name.clone(), v);
            }
            Err(_) => return bad(format!("home={home:?} is not a header value\n")),
        }
    }
    if let Some(cookie) = &cookie {
        match http::HeaderValue::from_str(cookie) {
            Ok(v) => {
                headers.insert(header::COOKIE, v);
            }
            Err(_) => return bad(format!("cookie={cookie:?} is not a header value\n")),
        }
    }
    let facts = RequestFacts::from_request(
        table,
        Sources {
            client: crate::routing::identity::ClientIp(ip),
            host,
            path: &path,
            ambiguity,
            method: &method,
            headers: &headers,
            peer_trusted: home.is_some(),
        },
    );
    json(
        StatusCode::OK,
        &crate::routing::explain::explain(table, states, &facts),
    )
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

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, JSON, body)
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn denied(d: Denied) -> Response<Full<Bytes>> {
    match d {
        Denied::Unauthorized => {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                TEXT,
                "a valid bearer token is required (Authorization: Bearer TOKEN)\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"georouter-admin\""),
            );
            r
        }
        Denied::WritesDisabled => reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "mutating admin calls are disabled: set admin.token_file or admin.token_env\n",
        ),
    }
}

async fn route(
    control: Arc<Control>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    // A page on another site whose name resolves to this address (DNS
    // rebinding) sends its own name as Host: only names this listener is
    // known by are answered.
    if let Some(host) = req.headers().get(header::HOST) {
        if !control.admin_host_allowed(host.as_bytes()) {
            return Ok(reply(
                StatusCode::MISDIRECTED_REQUEST,
                TEXT,
                "this admin listener does not answer for that Host: use its address, localhost, or a name in admin.hosts\n",
            ));
        }
    }
    // Liveness and readiness are for probes: never behind a token.
    match (&method, path.as_str()) {
        // HEAD as GET (hyper sends no body): load balancers probe with either.
        (&Method::GET | &Method::HEAD, "/healthz") => {
            return Ok(reply(StatusCode::OK, TEXT, "ok\n"))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            return Ok(if control.ready() {
                reply(StatusCode::OK, TEXT, "ready\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready: waiting for the first round of health checks\n",
                )
            })
        }
        // The status page's files: nothing secret, so no token; its data
        // (`/status`) is behind the read token like every other view.
        (&Method::GET | &Method::HEAD, _) => {
            if let Some(page) = page::asset(&path) {
                return Ok(page);
            }
        }
        _ => {}
    }
    if method == Method::POST {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        return Ok(match segments.as_slice() {
            ["reload"] => mutate::mutate(&control, peer, &req, "reload", None).await,
            ["log"] => mutate::mutate(&control, peer, &req, "log", None).await,
            ["regions", name, action @ ("drain" | "undrain" | "capacity")] => {
                mutate::mutate(&control, peer, &req, action, Some(name)).await
            }
            _ => reply(StatusCode::NOT_FOUND, TEXT, "no such admin route\n"),
        });
    }
    let known = matches!(
        path.as_str(),
        "/metrics" | "/regions" | "/config" | "/explain" | "/fleet" | "/status" | "/log"
    );
    if method != Method::GET {
        return Ok(if known {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        } else {
            reply(StatusCode::NOT_FOUND, TEXT, "no such admin route\n")
        });
    }
    if known {
        let authz = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(d) = control.auth().check(authz, Access::Read) {
            return Ok(denied(d));
        }
    }
    Ok(view(&control, &path, &req).await)
}

/// A read-only view: `GET /regions`, `/status`, `/metrics`, `/config`,
/// `/explain`, `/log`, `/fleet` (the caller was authorised).
async fn view(
    control: &Arc<Control>,
    path: &str,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let state = control.state();
    match path {
        "/regions" => json(StatusCode::OK, &views::regions(control)),
        "/status" => {
            let mut r = json(StatusCode::OK, &views::status(control).await);
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        "/config" => {
            // The policy in service; then, apart and commented out, what the
            // file says of the sections that take effect only at a restart.
            let mut text = format!(
                "# The policy in service (every default filled in, secrets redacted).\n{}",
                state.config.load().effective
            );
            let pending = control.pending_restart();
            if !pending.is_empty() {
                text.push_str("\n# Changed in the policy file, in service only after a restart:\n");
                for line in pending.lines() {
                    text.push_str("# ");
                    text.push_str(line);
                    text.push('\n');
                }
            }
            reply(StatusCode::OK, "application/toml; charset=utf-8", text)
        }
        "/explain" => explain(state, req.uri().query().unwrap_or("")),
        "/log" => match crate::logging::current() {
            Some(filter) => json(StatusCode::OK, &serde_json::json!({ "filter": filter })),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "this process's log filter cannot be read or changed at run time\n",
            ),
        },
        "/fleet" => match control.fleet() {
            None => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "this router is not in a fleet (no [fleet] in its policy)\n",
            ),
            Some(fleet) => match fleet.status().await {
                Ok(status) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "instance": fleet.instance(),
                        "connected": fleet.connected(),
                        "applied_revision": fleet.applied(),
                        "fleet": status,
                    }),
                ),
                Err(e) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!(
                        "{e}\nthis instance serves with the drains it last applied (revision {})\n",
                        fleet.applied()
                    ),
                ),
            },
        },
        _ => reply(StatusCode::NOT_FOUND, TEXT, "no such admin route\n"),
    }
}
