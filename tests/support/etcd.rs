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
        };
        etcd.run().await;
        etcd
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    async fn run(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = super::tool("etcd", "--version", "etcd-server")
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
        super::eventually_within(Duration::from_secs(20), "etcd to answer", || {
            std::process::Command::new("curl")
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
    fn drop(&mut self) {
        self.kill();
    }
}
