//! Headless Chromium through chromedriver (Debian: chromium, chromium-driver),
//! installed where it can be; started on a loopback port, stopped by its
//! process group when dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

pub struct Browser {
    driver: Child,
    pub client: Client,
}

impl Browser {
    /// A fresh headless browser with a desktop-sized window.
    pub async fn start() -> Browser {
        // chromium-driver depends on chromium: one install brings both.
        super::tool("chromedriver", "--version", "chromium-driver");
        super::tool("chromium", "--version", "chromium");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that the browsers it starts go with it.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        super::eventually_within(Duration::from_secs(20), "chromedriver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1280,1000",
                    "--hide-scrollbars",
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        Browser { driver, client }
    }

    /// Ends the session (the browser exits); the driver goes on drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.driver.wait();
    }
}
