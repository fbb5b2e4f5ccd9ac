//! External tools the tests need, installed where that can be done.

use super::*;

/// `promtool`, installed on the spot where that can be done (root on Debian:
/// `apt-get install prometheus`); otherwise the test fails and says what is
/// missing. A test never passes because its tool is absent.
pub fn promtool() -> std::process::Command {
    tool("promtool", "--version", "prometheus")
}

/// A tool the tests need, installed on the spot where that can be done (root
/// on Debian: `apt-get install PACKAGE`, one install at a time); otherwise the
/// test fails and says what is missing. A test never passes because its tool
/// is absent.
pub fn tool(binary: &str, probe: &str, package: &str) -> std::process::Command {
    use std::process::{Command, Stdio};
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let found = || {
        Command::new(binary)
            .arg(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !found() {
        let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        if !found() && root {
            eprintln!("{binary} missing: apt-get install {package}");
            apt_install(package);
        }
        assert!(
            found(),
            "{binary} is needed and could not be installed: apt-get install {package} (Debian) or put {binary} on PATH"
        );
    }
    Command::new(binary)
}

/// `apt-get install PACKAGE` where apt-get is there (the caller checks that
/// it runs as root, or lets the install fail); whether it succeeded.
pub fn apt_install(package: &str) -> bool {
    use std::process::{Command, Stdio};
    if !Path::new("/usr/bin/apt-get").exists() {
        return false;
    }
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
