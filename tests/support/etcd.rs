//! A real etcd for the fleet tests: Debian's `etcd-server`, started on free
//! loopback ports with a data directory of its own, stopped by PID.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

/// One etcd member serving on 127.0.0.1.
pub struct Etcd {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    /// With TLS: the CA, and the client certificate and key etcd requires.
    pub tls: Option<EtcdTls>,
}

/// The files of an etcd that requires mTLS.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts a fresh etcd and waits until it answers.
    pub async fn start(tag: &str) -> Etcd {
        let dir = super::test_dir(&format!("etcd-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls: None,
        };
        etcd.run().await;
        etcd
    }

    /// Starts an etcd that serves TLS only and requires a client certificate
    /// signed by `pki`'s CA.
    pub async fn start_mtls(tag: &str, pki: &super::Pki) -> Etcd {
        let dir = super::test_dir(&format!("etcd-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (server_cert, server_key, _) = pki.issue("etcd-server", &["127.0.0.1", "localhost"]);
        let (client_cert, client_key, _) = pki.issue("etcd-client", &["georouter"]);
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls: Some(EtcdTls {
                ca: pki.ca_path(),
                server_cert,
                server_key,
                client_cert,
                client_key,
            }),
        };
        etcd.run().await;
        etcd
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// curl's options to reach this etcd.
    fn curl_tls(&self) -> Vec<String> {
        match &self.tls {
            None => Vec::new(),
            Some(t) => vec![
                "--cacert".into(),
                t.ca.display().to_string(),
                "--cert".into(),
                t.client_cert.display().to_string(),
                "--key".into(),
                t.client_key.display().to_string(),
            ],
        }
    }

    async fn run(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = super::tool("etcd", "--version", "etcd-server");
        if let Some(t) = &self.tls {
            command.args([
                "--cert-file",
                t.server_cert.to_str().unwrap(),
                "--key-file",
                t.server_key.to_str().unwrap(),
                "--trusted-ca-file",
                t.ca.to_str().unwrap(),
                "--client-cert-auth",
            ]);
        }
        let child = command
            .args([
                "--name",
                "test",
                "--data-dir",
                self.dir.join("data").to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("test={peer}"),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let health = format!("{client}/health");
        let tls = self.curl_tls();
        super::eventually_within(Duration::from_secs(20), "etcd to answer", || {
            std::process::Command::new("curl")
                .args(&tls)
                .args(["-sf", "-m", "1", &health])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .await;
    }

    /// Kills etcd (SIGKILL, by PID): a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }

    /// Starts it again on the same ports with no data: a disk lost, or a
    /// restore that went wrong.
    pub async fn wipe(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
        self.run().await;
    }

    /// Compacts etcd's history up to its current revision.
    pub fn compact(&self) {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                &format!("{}/v3/kv/range", self.url()),
                "-d",
                "{\"key\":\"AA==\"}",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let revision = v["header"]["revision"].as_str().unwrap().to_owned();
        let out = std::process::Command::new("curl")
            .args(self.curl_tls())
            .args([
                "-sf",
                "-X",
                "POST",
                &format!("{}/v3/kv/compaction", self.url()),
                "-d",
                &format!("{{\"revision\":\"{revision}\",\"physical\":true}}"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "compaction: {out:?}");
    }
}

impl Drop for Etcd {
    /// Stops etcd and removes its data (its WAL alone preallocates 64 MB).
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
