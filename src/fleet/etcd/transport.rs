//! How the etcd client reaches a member: a POST to the first endpoint that
//! takes it, on a kept connection when one is idle (TLS for `https`).

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use super::{Etcd, EtcdError, Sender, IDLE_FOR, IDLE_MAX};

impl Etcd {
    /// Sends one POST to the first endpoint that takes it; the response head,
    /// and (`keep`) its connection, to give back once the body is read.
    pub(super) async fn post(
        &self,
        path: &str,
        body: &Value,
        keep: bool,
    ) -> Result<(http::Response<Incoming>, Option<(usize, Sender)>), EtcdError> {
        let body = Bytes::from(serde_json::to_vec(body).expect("JSON serialises"));
        let n = self.endpoints.len();
        let first = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = String::from("no endpoint");
        for i in 0..n {
            let at = (first + i) % n;
            let endpoint = &self.endpoints[at];
            let token = self.token.lock().ok().and_then(|t| t.clone());
            match tokio::time::timeout(
                self.timeout,
                self.send(at, path, body.clone(), token.as_deref(), keep),
            )
            .await
            {
                Ok(Ok((resp, sender))) => {
                    self.preferred
                        .store(at, std::sync::atomic::Ordering::Relaxed);
                    return Ok((resp, sender.map(|s| (at, s))));
                }
                Ok(Err(e)) => last = format!("{endpoint}: {e}"),
                Err(_) => {
                    last = format!(
                        "{endpoint}: no answer within {}",
                        humantime::format_duration(self.timeout)
                    )
                }
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints_text(),
            last,
        })
    }

    /// An idle connection to endpoint `at` that is still open.
    fn take_idle(&self, at: usize) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        idle.retain(|(_, s, since)| !s.is_closed() && since.elapsed() < IDLE_FOR);
        let i = idle.iter().position(|(e, _, _)| *e == at)?;
        Some(idle.swap_remove(i).1)
    }

    /// Keeps a connection whose last answer was read whole.
    pub(super) fn give_back(&self, (at, sender): (usize, Sender)) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < IDLE_MAX && !sender.is_closed() {
                idle.push((at, sender, std::time::Instant::now()));
            }
        }
    }

    /// One request to endpoint `at`: on an idle connection when there is one
    /// (a request it could not take goes on a new one), else a new connection.
    async fn send(
        &self,
        at: usize,
        path: &str,
        body: Bytes,
        token: Option<&str>,
        keep: bool,
    ) -> Result<(http::Response<Incoming>, Option<Sender>), Box<dyn std::error::Error + Send + Sync>>
    {
        let endpoint = &self.endpoints[at];
        let authority = endpoint.authority().ok_or("no host")?;
        let mut req = Request::post(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, t);
        }
        let mut req = req.body(Full::new(body))?;
        let idle = keep.then(|| self.take_idle(at)).flatten();
        // Ready as soon as the connection has finished with the last answer.
        if let Some(mut sender) = idle {
            if sender.ready().await.is_err() {
                return self.send_new(endpoint, req, keep).await;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Some(sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        self.send_new(endpoint, req, keep).await
    }

    async fn send_new(
        &self,
        endpoint: &Uri,
        req: Request<Full<Bytes>>,
        keep: bool,
    ) -> Result<(http::Response<Incoming>, Option<Sender>), Box<dyn std::error::Error + Send + Sync>>
    {
        let mut sender = self.connect(endpoint).await?;
        let resp = sender.send_request(req).await?;
        Ok((resp, keep.then_some(sender)))
    }

    /// A new HTTP/1.1 connection to `endpoint` (TLS for `https`).
    async fn connect(
        &self,
        endpoint: &Uri,
    ) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
        let authority = endpoint.authority().ok_or("no host")?;
        let port = authority.port_u16().unwrap_or(match endpoint.scheme_str() {
            Some("https") => 443,
            _ => 2379,
        });
        let tcp = TcpStream::connect((authority.host(), port)).await?;
        tcp.set_nodelay(true)?;
        Ok(match (&self.tls, endpoint.scheme_str()) {
            (Some(tls), Some("https")) => {
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
                let stream = tls.connect(name, tcp).await?;
                let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
            _ => {
                let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                sender
            }
        })
    }
}
