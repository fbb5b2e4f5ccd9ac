//! The admin API's mutating calls (`POST /reload`, `/log`,
//! `/regions/{name}/drain|undrain|capacity`): authorised, done, audited once.

use super::*;

/// One mutating call: who made it, what it asks, and its audit line.
struct Call<'a> {
    control: &'a Arc<Control>,
    peer: SocketAddr,
    req: &'a Request<Incoming>,
    action: &'a str,
    region: Option<&'a str>,
    reason: String,
    force: bool,
    /// Who acts: the name of the token presented (`admin` for the unnamed
    /// one); empty until the token is checked.
    actor: String,
}

/// A mutating call: `POST /regions/{name}/drain|undrain|capacity`, `POST
/// /reload`, `POST /log`.
pub(super) async fn mutate(
    control: &Arc<Control>,
    peer: SocketAddr,
    req: &Request<Incoming>,
    action: &str,
    region: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut call = Call {
        control,
        peer,
        req,
        action,
        region,
        reason: query_param(req, "reason").unwrap_or_default(),
        force: query_param(req, "force").is_some_and(|v| v == "true" || v == "1"),
        actor: String::new(),
    };
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match control.auth().check(authz, Access::Write) {
        Ok(actor) => call.actor = actor.to_owned(),
        Err(d) => {
            call.audit("denied", "");
            return denied(d);
        }
    }
    match (action, region) {
        ("log", _) => call.log(),
        ("reload", _) => call.reload().await,
        ("capacity", Some(name)) => call.capacity(name).await,
        (_, Some(name)) => call.drain(name).await,
        _ => reply(StatusCode::NOT_FOUND, TEXT, "no such admin route\n"),
    }
}

impl Call<'_> {
    /// Who a drain records as its author: the token's name and the address
    /// it came from.
    fn by(&self, peer: SocketAddr) -> String {
        format!("{} from {}", self.actor, peer.ip())
    }

    /// What the caller wrote (reason, region, detail) is quoted and escaped
    /// (Debug): a newline or a terminal escape cannot forge or hide a line.
    /// Denied calls are logged at most once a second (each is counted).
    fn audit(&self, result: &str, detail: &str) {
        static DENIED: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
        self.control
            .state()
            .metrics
            .control
            .admin_requests
            .with_label_values(&[self.action, result])
            .inc();
        let suppressed = match result {
            "denied" => match DENIED.allow() {
                Some(n) => n,
                None => return,
            },
            _ => 0,
        };
        tracing::info!(
            target: "georouter::audit",
            peer = %self.peer,
            actor = %if self.actor.is_empty() { "-" } else { self.actor.as_str() },
            action = self.action,
            region = ?self.region.unwrap_or("-"),
            reason = ?self.reason,
            force = self.force,
            result,
            detail = ?detail,
            suppressed,
        );
    }

    /// `POST /log?filter=`: the log filter (the audit log stays on).
    fn log(&self) -> Response<Full<Bytes>> {
        let req = self.req;
        let filter = query_param(req, "filter").unwrap_or_default();
        match crate::logging::set_filter(&filter) {
            Ok(in_force) => {
                self.audit("ok", &in_force);
                tracing::info!(target: "georouter::audit", filter = ?in_force, "log filter changed");
                json(StatusCode::OK, &serde_json::json!({ "filter": in_force }))
            }
            Err(e @ crate::logging::FilterError::NotReloadable) => {
                self.audit("failed", &e.to_string());
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n"))
            }
            Err(e) => {
                self.audit("rejected", &e.to_string());
                reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n"))
            }
        }
    }

    /// `POST /reload`: the policy file read again, or the reason it was not.
    async fn reload(&self) -> Response<Full<Bytes>> {
        let (control, peer) = (self.control, self.peer);
        match control.reload(&format!("POST /reload from {peer}")).await {
            Ok(generation) => {
                self.audit("ok", "");
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "result": "reloaded", "generation": generation }),
                )
            }
            Err(e) => {
                self.audit("rejected", &e.to_string());
                reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    format!("reload rejected; the previous policy keeps serving:\n{e}\n"),
                )
            }
        }
    }

    /// `POST /regions/{name}/capacity?scale=`: a partial drain.
    async fn capacity(&self, name: &str) -> Response<Full<Bytes>> {
        let (control, peer, req) = (self.control, self.peer, self.req);
        let scale = query_param(req, "scale").and_then(|v| {
            let v = v.trim();
            match v.strip_suffix('%') {
                Some(p) => p.parse::<f64>().ok().map(|p| p / 100.0),
                None => v.parse::<f64>().ok(),
            }
        });
        let Some(scale) = scale.filter(|s| (0.0..=1.0).contains(s)) else {
            self.audit("rejected", "scale");
            return reply(
                StatusCode::BAD_REQUEST,
                TEXT,
                "scale: the share of its clients the region keeps, 0 to 1 or 0% to 100% (e.g. scale=0.25; scale=1 gives them all back)\n",
            );
        };
        let local = query_param(req, "scope").is_some_and(|v| v == "local");
        match control.scale(name, scale, &self.by(peer), local).await {
            Ok(done) => {
                self.audit("ok", &format!("scale={scale}"));
                let view = views::regions(control)
                    .into_iter()
                    .find(|r| r.name == *name);
                let mut body = serde_json::json!({
                    "region": view,
                    "persist_warning": done.persist_warning,
                });
                if control.fleet().is_some() && !local {
                    body["fleet"] = match done.revision {
                        Some(revision) => serde_json::json!({ "revision": revision }),
                        None => serde_json::json!({
                            "held": done.held,
                            "note": "etcd is unreachable: the partial drain holds on this instance and goes to the fleet when etcd is back",
                        }),
                    };
                }
                json(StatusCode::OK, &body)
            }
            Err(e @ DrainError::Fleet(_)) => {
                self.audit("failed", &e.to_string());
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n"))
            }
            Err(e) => {
                self.audit("rejected", &e.to_string());
                reply(StatusCode::NOT_FOUND, TEXT, format!("{e}\n"))
            }
        }
    }

    /// `POST /regions/{name}/drain|undrain`, here or for the fleet.
    async fn drain(&self, name: &str) -> Response<Full<Bytes>> {
        let (control, peer, req) = (self.control, self.peer, self.req);
        let (action, reason, force) = (self.action, &self.reason, self.force);
        let drain = (action == "drain").then(|| {
            if reason.is_empty() {
                "no reason given".to_owned()
            } else {
                reason.clone()
            }
        });
        let local = query_param(req, "scope").is_some_and(|v| v == "local");
        let wait = match query_param(req, "wait").map(|w| humantime::parse_duration(&w)) {
            None => None,
            Some(Ok(w)) if w <= std::time::Duration::from_secs(60) => Some(w),
            Some(_) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    "wait: a duration of at most 60s (e.g. wait=5s)\n",
                )
            }
        };
        match control
            .drain(name, drain, &self.by(peer), force, local)
            .await
        {
            Ok(done) => {
                self.audit("ok", done.persist_warning.as_deref().unwrap_or(""));
                let view = views::regions(control).into_iter().find(|r| r.name == name);
                let mut body = serde_json::json!({
                    "region": view,
                    "persist_warning": done.persist_warning,
                });
                if let Some(fleet) = control.fleet().filter(|_| !local) {
                    body["fleet"] = match (done.revision, wait) {
                        (None, _) => serde_json::json!({
                            "held": done.held,
                            "note": "etcd is unreachable: the change holds on this instance and goes to the fleet when etcd is back",
                        }),
                        (Some(revision), None) => serde_json::json!({ "revision": revision }),
                        (Some(revision), Some(w)) => match fleet.wait_for(revision, w).await {
                            Ok(status) => serde_json::json!({
                                "revision": revision,
                                "acknowledged": status.instances.iter().filter(|i| i.in_step).map(|i| &i.instance).collect::<Vec<_>>(),
                                "not_acknowledged": status.lagging(),
                            }),
                            Err(e) => {
                                serde_json::json!({ "revision": revision, "wait_error": e.to_string() })
                            }
                        },
                    };
                }
                json(StatusCode::OK, &body)
            }
            Err(e @ DrainError::UnknownRegion(_)) => {
                self.audit("rejected", &e.to_string());
                reply(StatusCode::NOT_FOUND, TEXT, format!("{e}\n"))
            }
            Err(e @ (DrainError::LastInJurisdiction { .. } | DrainError::LastOnInstance(_))) => {
                self.audit("rejected", &e.to_string());
                reply(StatusCode::CONFLICT, TEXT, format!("{e}\n"))
            }
            Err(e @ DrainError::Fleet(_)) => {
                self.audit("failed", &e.to_string());
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n"))
            }
        }
    }
}
