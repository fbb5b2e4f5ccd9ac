//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/*`, `/v3/watch`,
//! `/v3/lease/*`, `/v3/auth/authenticate`; etcd 3.4 and later), on the hyper
//! client the router already has: no protobuf compiler in the build.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::store::{Answer, Changes, FleetStore, Kv, Op, Unchanged, WatchStream};
use crate::config::FleetSettings;
mod transport;
mod watch;

pub use watch::Watch;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd unreachable ({endpoints}): {last}")]
    Unreachable { endpoints: String, last: String },
    #[error("etcd refused {call}: {message}")]
    Refused { call: &'static str, message: String },
    #[error("etcd answered {call} with something unreadable: {detail}")]
    Decode { call: &'static str, detail: String },
    #[error("the watch fell behind etcd's compaction (revision {0}); reading everything again")]
    Compacted(i64),
    #[error("etcd TLS settings: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("etcd password: {0}")]
    Password(String),
    /// The fleet's epoch key is gone or changed: etcd lost its data or was
    /// restored from another time. Revisions of the two histories mean nothing
    /// to each other.
    #[error("etcd's history changed (the fleet epoch this instance knows, {remembered}, is {found}): keeping the drains and policy last applied until an operator runs `georouter fleet restore`")]
    HistoryChanged { remembered: String, found: String },
}

impl EtcdError {
    /// Whether the cluster could not be reached (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EtcdError::Unreachable { .. })
    }
}

/// The etcd cluster of a fleet.
pub struct Etcd {
    endpoints: Vec<Uri>,
    tls: Option<tokio_rustls::TlsConnector>,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
    timeout: Duration,
    /// The endpoint that answered last; tried first.
    preferred: std::sync::atomic::AtomicUsize,
    /// Idle connections for unary calls: endpoint index, sender, since when.
    idle: Mutex<Vec<(usize, Sender, std::time::Instant)>>,
}

type Sender = http1::SendRequest<Full<Bytes>>;

/// Idle connections kept per client; one older than this is closed rather
/// than reused (a server may have dropped it).
const IDLE_MAX: usize = 4;
const IDLE_FOR: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// etcd's JSON renders 64-bit integers as strings.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("not an i64")),
        Value::Null => Ok(0),
        other => Err(serde::de::Error::custom(format!("not an integer: {other}"))),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
}

impl RawKv {
    fn decode(self, call: &'static str) -> Result<Kv, EtcdError> {
        let bad = |e: base64::DecodeError| EtcdError::Decode {
            call,
            detail: e.to_string(),
        };
        Ok(Kv {
            key: String::from_utf8_lossy(&B64.decode(self.key).map_err(bad)?).into_owned(),
            value: B64.decode(self.value).map_err(bad)?,
            mod_revision: self.mod_revision,
            lease: self.lease,
        })
    }
}

fn b64(s: impl AsRef<[u8]>) -> String {
    B64.encode(s)
}

/// The end of the key range that holds every key starting with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// A client for the fleet's cluster (no connection is made yet).
    pub fn new(settings: &FleetSettings) -> Result<Etcd, EtcdError> {
        let tls = if settings
            .endpoints
            .iter()
            .any(|u| u.scheme_str() == Some("https"))
        {
            let config = crate::tls::client_config(&settings.tls)?;
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        let credentials = match &settings.username {
            None => None,
            Some(user) => {
                let password = match (&settings.password_file, &settings.password_env) {
                    (Some(path), _) => std::fs::read_to_string(path).map_err(|e| {
                        EtcdError::Password(format!("cannot read {}: {e}", path.display()))
                    })?,
                    (None, Some(var)) => std::env::var(var).map_err(|_| {
                        EtcdError::Password(format!("environment variable {var} is not set"))
                    })?,
                    (None, None) => String::new(),
                };
                Some((
                    user.clone(),
                    password.trim_end_matches(['\r', '\n']).to_owned(),
                ))
            }
        };
        Ok(Etcd {
            endpoints: settings.endpoints.clone(),
            tls,
            credentials,
            token: Mutex::new(None),
            timeout: settings.timeout,
            preferred: Default::default(),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn endpoints_text(&self) -> String {
        self.endpoints
            .iter()
            .map(|u| u.to_string().trim_end_matches('/').to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One unary call: the JSON answer, with authentication (once more after a
    /// stale token).
    async fn call(&self, call: &'static str, path: &str, body: Value) -> Result<Value, EtcdError> {
        for attempt in 0..2 {
            if self.credentials.is_some() && self.token.lock().map_or(true, |t| t.is_none()) {
                self.authenticate().await?;
            }
            let (resp, sender) = self.post(path, &body, true).await?;
            let status = resp.status();
            let bytes = tokio::time::timeout(self.timeout, resp.into_body().collect())
                .await
                .map_err(|_| EtcdError::Unreachable {
                    endpoints: self.endpoints_text(),
                    last: "the answer stalled".to_owned(),
                })?
                .map_err(|e| EtcdError::Unreachable {
                    endpoints: self.endpoints_text(),
                    last: e.to_string(),
                })?
                .to_bytes();
            if let Some(sender) = sender {
                self.give_back(sender);
            }
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| EtcdError::Decode {
                call,
                detail: e.to_string(),
            })?;
            if status == StatusCode::OK {
                return Ok(value);
            }
            let message = value
                .get("error")
                .or_else(|| value.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned();
            let stale_token = message.contains("invalid auth token");
            if stale_token && attempt == 0 && self.credentials.is_some() {
                if let Ok(mut t) = self.token.lock() {
                    *t = None;
                }
                continue;
            }
            return Err(EtcdError::Refused { call, message });
        }
        unreachable!("the loop returns")
    }

    async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(());
        };
        let resp = self
            .post(
                "/v3/auth/authenticate",
                &json!({ "name": name, "password": password }),
                false,
            )
            .await?
            .0;
        let ok = resp.status() == StatusCode::OK;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| EtcdError::Unreachable {
                endpoints: self.endpoints_text(),
                last: e.to_string(),
            })?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match value.get("token").and_then(Value::as_str) {
            Some(token) if ok => {
                if let Ok(mut t) = self.token.lock() {
                    *t = Some(token.to_owned());
                }
                Ok(())
            }
            _ => Err(EtcdError::Refused {
                call: "authenticate",
                message: value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("authentication failed")
                    .to_owned(),
            }),
        }
    }

    /// Every key under `prefix`, and the revision they were read at.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            header: Header,
            #[serde(default)]
            kvs: Vec<RawKv>,
        }
        let v = self
            .call(
                "range",
                "/v3/kv/range",
                json!({ "key": b64(prefix), "range_end": b64(range_end(prefix)) }),
            )
            .await?;
        let a: Answer = serde_json::from_value(v).map_err(|e| EtcdError::Decode {
            call: "range",
            detail: e.to_string(),
        })?;
        let kvs = a
            .kvs
            .into_iter()
            .map(|k| k.decode("range"))
            .collect::<Result<_, _>>()?;
        Ok((a.header.revision, kvs))
    }

    /// How many keys are under `prefix` (etcd sends the count only).
    pub async fn count_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        #[derive(Deserialize)]
        struct Answer {
            // The gateway writes int64 as a string, and leaves out a zero.
            #[serde(default)]
            count: Option<serde_json::Value>,
        }
        let v = self
            .call(
                "range",
                "/v3/kv/range",
                json!({
                    "key": b64(prefix),
                    "range_end": b64(range_end(prefix)),
                    "count_only": true,
                }),
            )
            .await?;
        let a: Answer = serde_json::from_value(v).map_err(|e| EtcdError::Decode {
            call: "range",
            detail: e.to_string(),
        })?;
        Ok(match a.count {
            Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
            Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0),
            _ => 0,
        })
    }

    /// Puts `value` at `key` (bound to `lease` if given); the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key), "value": b64(value) });
        if let Some(l) = lease {
            body["lease"] = json!(l.to_string());
        }
        let v = self.call("put", "/v3/kv/put", body).await?;
        Ok(revision_of(&v))
    }

    /// Runs `ops` if every key in `guards` is unchanged; whether it ran, and the
    /// revision after.
    pub async fn txn(&self, guards: &[Unchanged], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        let compare: Vec<Value> = guards
            .iter()
            .map(|g| {
                json!({
                    "key": b64(&g.key),
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": g.mod_revision.to_string(),
                })
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let mut put = json!({ "key": b64(key), "value": b64(value) });
                    if let Some(l) = lease {
                        put["lease"] = json!(l.to_string());
                    }
                    json!({ "request_put": put })
                }
            })
            .collect();
        let v = self
            .call(
                "txn",
                "/v3/kv/txn",
                json!({ "compare": compare, "success": success }),
            )
            .await?;
        let succeeded = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        Ok((succeeded, revision_of(&v)))
    }

    /// A lease of `ttl`; its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "lease grant",
                "/v3/lease/grant",
                json!({ "TTL": ttl.as_secs().max(1).to_string() }),
            )
            .await?;
        v.get("ID")
            .and_then(|id| id.as_str().and_then(|s| s.parse().ok()).or(id.as_i64()))
            .ok_or(EtcdError::Decode {
                call: "lease grant",
                detail: format!("no lease id in {v}"),
            })
    }

    /// Renews a lease; false when it has expired.
    pub async fn lease_keepalive(&self, id: i64) -> Result<bool, EtcdError> {
        let v = self
            .call(
                "lease keepalive",
                "/v3/lease/keepalive",
                json!({ "ID": id.to_string() }),
            )
            .await?;
        let result = v.get("result").unwrap_or(&v);
        let ttl = result
            .get("TTL")
            .and_then(|t| {
                t.as_str()
                    .and_then(|s| s.parse::<i64>().ok())
                    .or(t.as_i64())
            })
            .unwrap_or(0);
        Ok(ttl > 0)
    }

    /// Ends a lease and its keys at once (a clean shutdown).
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call(
            "lease revoke",
            "/v3/lease/revoke",
            json!({ "ID": id.to_string() }),
        )
        .await
        .map(|_| ())
    }

    /// Watches every key under `prefix` from `start` (a revision).
    pub async fn watch(&self, prefix: &str, start: i64) -> Result<Watch, EtcdError> {
        if self.credentials.is_some() && self.token.lock().map_or(true, |t| t.is_none()) {
            self.authenticate().await?;
        }
        let resp = self
            .post(
                "/v3/watch",
                &json!({ "create_request": {
                    "key": b64(prefix),
                    "range_end": b64(range_end(prefix)),
                    "start_revision": start.to_string(),
                }}),
                false,
            )
            .await?
            .0;
        if resp.status() != StatusCode::OK {
            return Err(EtcdError::Refused {
                call: "watch",
                message: format!("HTTP {}", resp.status()),
            });
        }
        Ok(Watch::new(resp.into_body()))
    }
}

fn revision_of(v: &Value) -> i64 {
    v.get("header")
        .and_then(|h| h.get("revision"))
        .and_then(|r| r.as_str().and_then(|s| s.parse().ok()).or(r.as_i64()))
        .unwrap_or(0)
}

impl FleetStore for Etcd {
    fn range_prefix<'a>(&'a self, prefix: &'a str) -> Answer<'a, (i64, Vec<Kv>)> {
        Box::pin(Etcd::range_prefix(self, prefix))
    }

    fn count_prefix<'a>(&'a self, prefix: &'a str) -> Answer<'a, i64> {
        Box::pin(Etcd::count_prefix(self, prefix))
    }

    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], lease: Option<i64>) -> Answer<'a, i64> {
        Box::pin(Etcd::put(self, key, value, lease))
    }

    fn txn<'a>(&'a self, guards: &'a [Unchanged], ops: &'a [Op]) -> Answer<'a, (bool, i64)> {
        Box::pin(Etcd::txn(self, guards, ops))
    }

    fn lease_grant(&self, ttl: Duration) -> Answer<'_, i64> {
        Box::pin(Etcd::lease_grant(self, ttl))
    }

    fn lease_keepalive(&self, id: i64) -> Answer<'_, bool> {
        Box::pin(Etcd::lease_keepalive(self, id))
    }

    fn lease_revoke(&self, id: i64) -> Answer<'_, ()> {
        Box::pin(Etcd::lease_revoke(self, id))
    }

    fn watch<'a>(&'a self, prefix: &'a str, start: i64) -> Answer<'a, Box<dyn WatchStream>> {
        Box::pin(async move {
            let w = Etcd::watch(self, prefix, start).await?;
            Ok(Box::new(w) as Box<dyn WatchStream>)
        })
    }
}

impl WatchStream for Watch {
    fn next(&mut self) -> Answer<'_, Option<Changes>> {
        Box::pin(Watch::next(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(range_end("/a/"), b"/a0".to_vec());
        assert_eq!(range_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
