//! A real nginx as a region that reads paths its own way: Debian's `nginx`,
//! started in the foreground on a free loopback port with a directory of its
//! own, answering every request with its decoded, normalised `$uri` (and
//! `/header` with its reading of `x-a`); stopped by PID.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx and waits until it answers.
    pub async fn start(tag: &str) -> Nginx {
        let dir = super::test_dir(&format!("nginx-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "$uri";
        }}
        # A header as nginx reads it, bracketed.
        location = /header {{
            default_type text/plain;
            return 200 "[$http_x_a]";
        }}
    }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = super::tool("nginx", "-v", "nginx")
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let nginx = Nginx { child, addr, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen on {addr} within 20 s; see {}/error.log",
                nginx.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
