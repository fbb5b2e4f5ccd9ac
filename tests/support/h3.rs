//! An HTTP/3 client that is not the router's own stack: Python's aioquic,
//! installed from PyPI on the spot where that can be done.

use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::*;

/// One request of a job: method, path, extra headers, body pieces sent one by one.
#[derive(Debug, Clone, Default)]
pub struct H3Request {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<String>,
    /// The whole field section, pseudo-header fields too, sent in this order
    /// instead of the usual one made of method, path and headers.
    pub fields: Option<Vec<(String, String)>>,
}

impl H3Request {
    pub fn get(path: &str) -> Self {
        Self {
            method: "GET",
            path: path.to_owned(),
            ..Self::default()
        }
    }

    pub fn post(path: &str, chunks: &[&str]) -> Self {
        Self {
            method: "POST",
            path: path.to_owned(),
            chunks: chunks.iter().map(|c| c.to_string()).collect(),
            ..Self::default()
        }
    }

    /// A bodiless request whose field section is exactly `fields`.
    pub fn fields(fields: &[(&str, &str)]) -> Self {
        Self {
            method: "GET",
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Self::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What the server answered on one stream (`reset`: the stream's error code).
#[derive(Debug, Clone)]
pub struct H3Reply {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub reset: Option<u64>,
}

impl H3Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where the client connects (SNI and authority `sni`) and whom it trusts.
#[derive(Debug, Clone)]
pub struct H3Target {
    pub addr: SocketAddr,
    pub sni: String,
    pub ca: PathBuf,
    /// After the replies, wait for the server to close the connection.
    pub wait_close: bool,
}

/// What one client run saw besides its replies.
#[derive(Debug, Clone)]
pub struct H3Session {
    /// The server accepted 0-RTT early data.
    pub early_data_accepted: bool,
    /// The server asked the client to prove its address (a Retry packet).
    pub retried: bool,
    /// With [`H3Target::wait_close`]: the error code the server closed with.
    pub closed: Option<u64>,
    /// The connection was refused or closed before any request (and why).
    pub refused: Option<String>,
    /// The GOAWAY identifiers the server sent, in order.
    pub goaways: Vec<u64>,
}

/// Sends `requests` on one HTTP/3 connection (with `zero_rtt`: on a resumed
/// one, in early data); whether early data was accepted, and the replies. The
/// client runs as a process of its own, off the test's runtime.
pub async fn h3_send(
    target: &H3Target,
    zero_rtt: bool,
    requests: Vec<H3Request>,
) -> (bool, Vec<H3Reply>) {
    let (session, replies) = h3_session(target, zero_rtt, requests).await;
    (session.early_data_accepted, replies)
}

/// [`h3_send`], with what the session saw.
pub async fn h3_session(
    target: &H3Target,
    zero_rtt: bool,
    requests: Vec<H3Request>,
) -> (H3Session, Vec<H3Reply>) {
    let target = target.clone();
    tokio::task::spawn_blocking(move || h3_requests(&target, zero_rtt, &requests))
        .await
        .unwrap()
}

fn h3_requests(
    target: &H3Target,
    zero_rtt: bool,
    requests: &[H3Request],
) -> (H3Session, Vec<H3Reply>) {
    let python = aioquic();
    let job = json!({
        "host": target.addr.ip().to_string(),
        "port": target.addr.port(),
        "sni": target.sni,
        "ca": target.ca,
        "zero_rtt": zero_rtt,
        "wait_close": target.wait_close,
        "requests": requests.iter().map(|r| json!({
            "method": r.method,
            "path": r.path,
            "authority": target.sni,
            "headers": r.headers,
            "chunks": r.chunks,
            "fields": r.fields,
        })).collect::<Vec<_>>(),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/h3_client.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the HTTP/3 client");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(job.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "HTTP/3 client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the client's report");
    let replies = report["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| H3Reply {
            status: r["status"].as_u64().map(|s| s as u16),
            headers: r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap().to_owned(),
                        h[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
            body: r["body"].as_str().unwrap_or("").to_owned(),
            reset: r["reset"].as_u64(),
        })
        .collect();
    let session = H3Session {
        early_data_accepted: report["early_data_accepted"].as_bool().unwrap_or(false),
        retried: report["retried"].as_bool().unwrap_or(false),
        closed: report["closed"].as_u64(),
        refused: report["refused"].as_str().map(str::to_owned),
        goaways: report["goaways"]
            .as_array()
            .map(|g| g.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default(),
    };
    (session, replies)
}

/// A Python that can import aioquic: pip installs it where it can (and apt
/// installs pip on Debian as root); otherwise the test fails saying what is
/// missing. A test never passes because its client is absent.
fn aioquic() -> &'static str {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let has = || {
        Command::new("python3")
            .args(["-c", "import aioquic"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has() {
        return "python3";
    }
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "aioquic"])
            .args(extra)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has() {
        let has_pip = Command::new("python3")
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_pip {
            eprintln!("pip missing: apt-get install python3-pip");
            super::tools::apt_install("python3-pip");
        }
        eprintln!("aioquic missing: python3 -m pip install aioquic");
        // Debian's own Python refuses a system-wide pip install without the flag.
        if !pip(&[]) {
            pip(&["--break-system-packages"]);
        }
    }
    assert!(
        has(),
        "the HTTP/3 tests need Python's aioquic and it could not be installed: python3 -m pip install aioquic"
    );
    "python3"
}
