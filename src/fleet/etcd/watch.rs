//! A watch's stream of changes: etcd's JSON gateway sends one object per line.

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::Value;

use super::{int, EtcdError, Header, RawKv};
use crate::fleet::store::{Changes, Event};

/// A watch's stream of changes: one JSON object per line.
pub struct Watch {
    body: Incoming,
    buf: BytesMut,
}

impl Watch {
    pub(super) fn new(body: Incoming) -> Watch {
        Watch {
            body,
            buf: BytesMut::new(),
        }
    }

    /// The next batch of changes; `None` when etcd closed the stream.
    pub async fn next(&mut self) -> Result<Option<Changes>, EtcdError> {
        #[derive(Deserialize)]
        struct Line {
            result: Option<WatchResult>,
            error: Option<Value>,
        }
        #[derive(Deserialize)]
        struct WatchResult {
            #[serde(default)]
            header: Header,
            #[serde(default)]
            events: Vec<RawEvent>,
            #[serde(default)]
            canceled: bool,
            #[serde(default, deserialize_with = "int")]
            compact_revision: i64,
            #[serde(default)]
            cancel_reason: String,
        }
        #[derive(Deserialize)]
        struct RawEvent {
            #[serde(default, rename = "type")]
            kind: String,
            kv: RawKv,
        }
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(at + 1);
                let line: Line = serde_json::from_slice(&line).map_err(|e| EtcdError::Decode {
                    call: "watch",
                    detail: e.to_string(),
                })?;
                if let Some(e) = line.error {
                    return Err(EtcdError::Refused {
                        call: "watch",
                        message: e.to_string(),
                    });
                }
                let Some(r) = line.result else { continue };
                if r.compact_revision > 0 {
                    return Err(EtcdError::Compacted(r.compact_revision));
                }
                if r.canceled {
                    return Err(EtcdError::Refused {
                        call: "watch",
                        message: format!("canceled: {}", r.cancel_reason),
                    });
                }
                let mut changes = Changes {
                    revision: r.header.revision,
                    events: Vec::with_capacity(r.events.len()),
                };
                for e in r.events {
                    let kv = e.kv.decode("watch")?;
                    changes.events.push(if e.kind == "DELETE" {
                        Event::Delete {
                            key: kv.key,
                            mod_revision: kv.mod_revision,
                        }
                    } else {
                        Event::Put(kv)
                    });
                }
                return Ok(Some(changes));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(EtcdError::Unreachable {
                        endpoints: "the watch's connection".to_owned(),
                        last: format!("it broke: {e}"),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}
