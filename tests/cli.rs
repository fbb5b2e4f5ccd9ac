//! The binary's `check` verb: exit 0 with a summary, or 1 with every error and its path.

use std::process::Command;

fn georouter(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_georouter"))
        .args(args)
        .output()
        .expect("run georouter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_policy_and_summarises_it() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/georouter.toml");
    let (code, out, err) = georouter(&["check", "-c", example]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok: 1 listener(s), 4 region(s), 6 route(s)"),
        "{out}"
    );
    assert!(
        out.contains("rules[0] continent EU -> eu-west > eu-central"),
        "{out}"
    );
    assert!(
        out.contains("jurisdiction eu (strict) regions: eu-west > eu-central"),
        "{out}"
    );
}

#[test]
fn check_rejects_a_bad_policy_with_every_path() {
    let dir = std::env::temp_dir().join(format!("georouter-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[listeners]]\naddress = \"nowhere\"\n[[regions]]\nname = \"a\"\nendpoints = []\n",
    )
    .unwrap();
    let (code, out, err) = georouter(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("bad.toml: 2 errors in policy"), "{err}");
    assert!(err.contains("listeners[0].address"), "{err}");
    assert!(err.contains("regions[0].endpoints"), "{err}");
}

#[test]
fn check_reports_a_missing_file() {
    let (code, _, err) = georouter(&["check", "-c", "/nonexistent/georouter.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read /nonexistent/georouter.toml"),
        "{err}"
    );
}

#[test]
fn check_fails_on_what_run_would_refuse_a_missing_token_file() {
    let dir = std::env::temp_dir().join(format!("georouter-cli-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("tokens.toml");
    std::fs::write(
        &policy,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"a\"\n\
         endpoints = [{ url = \"http://127.0.0.1:1\" }]\n\
         [admin]\ntoken_file = \"/nonexistent/admin-token\"\n",
    )
    .unwrap();
    let (code, out, err) = georouter(&["check", "-c", policy.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("/nonexistent/admin-token"), "{err}");
    assert!(err.contains("token_file"), "{err}");
}

/// A state file `run` could not write (no such directory) fails `check` too,
/// naming the file and the setting.
#[test]
fn check_fails_on_an_unwritable_state_file() {
    let dir = std::env::temp_dir().join(format!("georouter-cli-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("state.toml");
    let write = |state: &str| {
        std::fs::write(
            &policy,
            format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"a\"\n\
                 endpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n\
                 [admin]\nstate_file = \"{state}\"\n"
            ),
        )
        .unwrap()
    };
    write("/nonexistent-dir/georouter/state.json");
    let (code, out, err) = georouter(&["check", "-c", policy.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("/nonexistent-dir/georouter/state.json"),
        "{err}"
    );
    assert!(err.contains("admin.state_file"), "{err}");
    // A writable place passes, and the probe leaves nothing behind.
    let state = dir.join("state.json");
    write(state.to_str().unwrap());
    let (code, out, err) = georouter(&["check", "-c", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("state.json"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn check_into_a_closed_pipe_ends_quietly() {
    // `georouter check ... | head -1`: the reader is gone before the output.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/georouter.toml");
    let key = std::env::temp_dir().join(format!("georouter-pipe-key-{}", std::process::id()));
    let _ = std::fs::remove_file(&key);
    let key = key.to_str().unwrap().to_owned();
    for args in [
        &["check", "-c", example][..],
        &["man"],
        &["completions", "zsh"],
        &["geo", "lookup", "80.128.0.1"],
        &["fleet", "keygen", "--out", &key],
        &["--help"],
        &["--version"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_georouter"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run georouter");
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

/// `georouter man` prints the manual page from the CLI's own definitions.
#[test]
fn the_manual_page_covers_every_command() {
    let (code, page, err) = georouter(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        page.contains(".TH georouter 1") && page.contains(".SH NAME"),
        "{page}"
    );
    for command in [
        "run",
        "check",
        "demo",
        "drill",
        "fleet",
        "geo",
        "completions",
    ] {
        assert!(page.contains(command), "the page lacks {command}");
    }
}

/// Run from anywhere: the example policy's relative database path is relative
/// to the policy file, and `geo lookup` finds the shipped database without
/// --db from another directory.
#[test]
fn the_cli_works_from_any_directory() {
    let elsewhere = std::env::temp_dir();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/georouter.toml");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_georouter"))
            .args(args)
            .current_dir(&elsewhere)
            .env_remove("GEOROUTER_GEO_DB")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&["check", "-c", example]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["geo", "lookup", "8.8.8.8"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("US"), "{out}");
}

/// Every command and every flag says what it is for in --help; --version names
/// the commit; completion scripts come out for the usual shells.
#[test]
fn every_flag_has_help_the_version_names_the_commit_and_completions_exist() {
    let commands: [&[&str]; 14] = [
        &[],
        &["run"],
        &["check"],
        &["geo", "lookup"],
        &["demo"],
        &["drill"],
        &["fleet", "status"],
        &["fleet", "drain"],
        &["fleet", "undrain"],
        &["fleet", "push"],
        &["fleet", "restore"],
        &["fleet", "keygen"],
        &["completions"],
        &["geo"],
    ];
    for path in commands {
        let mut args = path.to_vec();
        args.push("--help");
        let (code, out, err) = georouter(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let mut section = "";
        for line in out.lines() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line;
                continue;
            }
            if !matches!(section, "Options:" | "Arguments:" | "Commands:") {
                continue;
            }
            let entry = line.trim_start();
            if entry.is_empty() || line.starts_with("          ") {
                continue; // a wrapped description or a possible-values list
            }
            // "-c, --config <FILE>  The policy file" : text after the spec.
            assert!(
                entry.split("  ").filter(|p| !p.trim().is_empty()).count() >= 2,
                "{args:?}: no help text for {entry:?}\n{out}"
            );
        }
    }
    let (code, out, _) = georouter(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("georouter ") && out.contains("(commit "),
        "{out}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = georouter(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("georouter") && out.contains("drain"),
            "{shell}: {out}"
        );
    }
}

/// `run --log-format json` writes one JSON object per line, every event; the
/// log filter changes at run time through the admin API (token), and a bad
/// filter is refused with an example.
#[test]
fn json_logs_and_a_log_filter_changed_at_run_time() {
    let (port, listen) = (free_port(), free_port());
    let token = "json-log-test-token-0123456789abcdef";
    let (mut child, log) = run_router(
        "json-log",
        &format!(
            "[client]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
             [[listeners]]\naddress = \"127.0.0.1:{listen}\"\n[admin]\naddress = \"127.0.0.1:{port}\"\n\
             token_env = \"GEOROUTER_TEST_TOKEN\"\n[health]\nenabled = false\n\
             [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n\
             [[regions]]\nname = \"b\"\nendpoints = [{{ url = \"http://127.0.0.1:{port}\" }}]\n\
             [[routes]]\nname = \"only-a\"\npath_prefix = \"/only-a\"\nregions = [\"a\"]\n\
             [[routes]]\nregions = [\"a\", \"b\"]\n"
        ),
        &["--log-format", "json"],
        &[("GEOROUTER_TEST_TOKEN", token)],
        port,
    );
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let admin = format!("http://127.0.0.1:{port}");
    let auth = format!("Authorization: Bearer {token}");
    let post = |query: &str| curl(&["-X", "POST", "-H", &auth, &format!("{admin}/log?{query}")]);
    assert_eq!(post("filter=georouter%3Ddebug"), "200");
    assert_eq!(post("filter=georouter%3Dloud"), "400");
    assert_eq!(
        curl(&["-X", "POST", &format!("{admin}/log?filter=debug")]),
        "401"
    );
    // An answer the router gives itself (the region is unreachable): the access
    // log names the client behind the trusted proxy, not the proxy, the route
    // and the region it tried; a request no route takes names neither.
    let status = curl(&[
        "-H",
        "X-Forwarded-For: 80.128.0.1",
        &format!("http://127.0.0.1:{listen}/only-a"),
    ]);
    assert_eq!(status, "502");
    // Served after a failover: region b is this router's own admin API,
    // which answers a POST to / with 404 and 20 bytes.
    let status = curl(&[
        "-H",
        "User-Agent: drill/1.0 \"quoted\"",
        "--data-binary",
        "hello",
        &format!("http://127.0.0.1:{listen}/"),
    ]);
    assert_eq!(status, "404");
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        events.iter().any(|e| e["message"] == "log filter changed"),
        "{text}"
    );
    assert!(events.iter().all(|e| e["level"].is_string()), "{text}");
    let lines: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["target"] == "georouter::access")
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let access = lines[0];
    assert_eq!(access["client"], "80.128.0.1", "{access}");
    assert_eq!(access["status"], 502, "{access}");
    assert_eq!(access["route"], "only-a", "{access}");
    assert_eq!(access["region"], "a", "{access}");
    assert_eq!(access["tried"], "a/127.0.0.1:1:connect", "{access}");
    assert_eq!(access["endpoint"], "-", "{access}");
    assert_eq!(access["host"], format!("127.0.0.1:{listen}"), "{access}");
    assert!(
        access["why"].as_str().unwrap().contains("unreachable"),
        "{access}"
    );
    let served = lines[1];
    assert_eq!(served["status"], 404, "{served}");
    assert_eq!(served["region"], "b", "{served}");
    assert_eq!(served["endpoint"], format!("127.0.0.1:{port}"), "{served}");
    assert_eq!(served["tried"], "a/127.0.0.1:1:connect", "{served}");
    assert_eq!(served["bytes_in"], 5, "{served}");
    assert_eq!(served["bytes_out"], 20, "{served}");
    assert_eq!(served["user_agent"], "drill/1.0 \"quoted\"", "{served}");
    assert_eq!(served["method"], "POST", "{served}");
}

/// A policy error is printed once, not once more as its own cause.
#[test]
fn check_prints_each_error_once() {
    let dir = std::env::temp_dir().join(format!("georouter-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nworker = 4\n").unwrap();
    let (code, _, err) = georouter(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("did you mean `workers`").count(), 1, "{err}");
    std::fs::write(&bad, "[server\n").unwrap();
    let (code, _, err) = georouter(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("line 1").count(), 1, "{err}");
    // A cause its error already quotes (a missing geo database, through the
    // table, the reader and the I/O error) is said once.
    std::fs::write(
        &bad,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[geo]\ndatabase = \"/nonexistent/geo.mmdb\"\n\
         [[regions]]\nname = \"a\"\nendpoints = [{ url = \"http://127.0.0.1:1\" }]\n",
    )
    .unwrap();
    let (code, _, err) = georouter(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("/nonexistent/geo.mmdb").count(), 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `server.log_format = "json"` in the policy makes `run` log JSON without the
/// flag (the flag and GEOROUTER_LOG_FORMAT win over it).
#[test]
fn the_policy_chooses_the_log_format() {
    let port = free_port();
    let text = format!(
        "[server]\nlog_format = \"json\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:{port}\"\n[health]\nenabled = false\n\
         [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n"
    );
    let (mut child, log) = run_router("log-key", &text, &[], &[], port);
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() > 0, "no log at all");
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    let policy = log.with_file_name("policy.toml");
    let (code, _, err) = georouter(&["check", "-c", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&policy, "[server]\nlog_format = \"xml\"\n").unwrap();
    let (code, _, err) = georouter(&["check", "-c", policy.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.log_format") && err.contains("\"json\""),
        "{err}"
    );
}

/// A router process, stopped by PID whatever happens in the test.
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `georouter run` on `policy` (with `args` and `env`), its stderr in a file,
/// returned once the admin listener on `admin_port` accepts.
fn run_router(
    tag: &str,
    policy: &str,
    args: &[&str],
    env: &[(&str, &str)],
    admin_port: u16,
) -> (std::process::Child, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("georouter-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let log = dir.join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_georouter"))
        .args(["run", "-c", path.to_str().unwrap()])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .env_remove("GEOROUTER_LOG_FORMAT")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the router did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, log)
}

/// The text audit log quotes what a caller wrote: a reason with a newline
/// cannot forge a second `result="ok"` line, nor a terminal escape pass;
/// denied calls are logged at most once a second (each is counted); an empty
/// log filter is refused and `GET /log` shows the one in force.
#[test]
fn the_text_audit_log_cannot_be_forged_and_denials_do_not_flood_it() {
    let (port, listen) = (free_port(), free_port());
    let token = "audit-test-token-0123456789abcdef0123";
    let (child, log) = run_router(
        "audit",
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:{listen}\"\n[admin]\naddress = \"127.0.0.1:{port}\"\n\
             token_env = \"GEOROUTER_TEST_TOKEN\"\n[health]\nenabled = false\n\
             [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n\
             [[regions]]\nname = \"b\"\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n"
        ),
        &["--log-format", "text"],
        &[("GEOROUTER_TEST_TOKEN", token)],
        port,
    );
    // Stopped by PID whatever happens below.
    let child = Stop(child);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-m", "2"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let admin = format!("http://127.0.0.1:{port}");
    let auth = format!("Authorization: Bearer {token}");
    let forged = "x%0a2026-01-01T00:00:00Z%20%20INFO%20georouter::audit:%20action=%22undrain%22%20result=%22ok%22%1b%5B2J";
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("{admin}/regions/a/drain?reason={forged}"),
    ]);
    assert!(r.ends_with("200"), "{r}");
    for _ in 0..50 {
        curl(&[
            "-X",
            "POST",
            &format!("{admin}/regions/a/drain?reason=guess"),
        ]);
    }
    let r = curl(&["-X", "POST", "-H", &auth, &format!("{admin}/log?filter=")]);
    assert!(r.ends_with("400"), "an empty filter: {r}");
    let r = curl(&["-H", &auth, &format!("{admin}/log")]);
    assert!(r.contains("\"filter\"") && r.ends_with("200"), "{r}");
    // A target and a request id with quotes: the access log quotes them.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
        s.write_all(
            b"GET /x\"status=200 HTTP/1.1\r\nHost: a\r\nUser-Agent: ua\"status=200\r\nX-Request-Id: id\"route=forged\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    }
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    let access = text
        .lines()
        .find(|l| l.contains("georouter::access"))
        .unwrap_or_else(|| panic!("no access line: {text}"));
    assert!(access.contains(r#"uri="/x\"status=200""#), "{access}");
    assert!(
        access.contains(r#"user_agent="ua\"status=200""#),
        "{access}"
    );
    assert!(access.contains(r#"host="a""#), "{access}");
    assert!(
        access.contains(r#"request_id="id\"route=forged""#),
        "{access}"
    );
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("georouter::audit"))
        .collect();
    assert!(
        !audit.iter().any(|l| l.contains("action=\"undrain\"")),
        "a forged line: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "a terminal escape passed: {text:?}"
    );
    let denied = audit.iter().filter(|l| l.contains("denied")).count();
    assert!(
        (1..=5).contains(&denied),
        "{denied} lines for 50 denied calls: {text}"
    );
}

/// Secret files: readable by group or others is a warning at `check` (and in
/// `run`'s log); writable by everyone is refused, naming the setting and the fix.
#[test]
fn secret_files_anyone_can_read_are_warned_about_and_world_writable_ones_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("georouter-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "a-long-enough-admin-token-0123456789abcdef").unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n",
            token.display()
        ),
    )
    .unwrap();
    let check = || georouter(&["check", "-c", policy.to_str().unwrap()]);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("warning"), "{out}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning: admin.token_file:") && out.contains("can be read by everyone"),
        "{out}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out, err) = check();
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("admin.token_file")
            && err.contains("writable by everyone")
            && err.contains("chmod o-w"),
        "{err}"
    );
}

/// An etcd password over plain http is a warning at `check`: anyone on the
/// path could read it and write the fleet's drains.
#[test]
fn an_etcd_password_over_plain_http_is_warned_about() {
    let dir = std::env::temp_dir().join(format!("georouter-etcd-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    let write = |scheme: &str| {
        std::fs::write(
            &policy,
            format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
                 [fleet]\nendpoints = [\"{scheme}://127.0.0.1:2379\"]\ninstance = \"a\"\n\
                 username = \"router\"\npassword_env = \"GEOROUTER_TEST_ETCD_PASSWORD\"\n\
                 [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n"
            ),
        )
        .unwrap();
    };
    write("http");
    let (code, out, err) = georouter(&["check", "-c", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning: fleet.endpoints: the etcd password goes over plain http"),
        "{out}"
    );
    write("https");
    let (_, out, _) = georouter(&["check", "-c", policy.to_str().unwrap()]);
    assert!(!out.contains("plain http"), "{out}");
}

/// `run` with a geo database it cannot read stops before it says it listens:
/// a refused start never looks like a serving one in the log.
#[test]
fn run_refuses_a_corrupt_geo_database_before_saying_it_listens() {
    let dir = std::env::temp_dir().join(format!("georouter-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("corrupt.mmdb");
    std::fs::write(&db, vec![0x5a; 4096]).unwrap();
    let policy = dir.join("corrupt.toml");
    std::fs::write(
        &policy,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [geo]\ndatabase = \"{}\"\n[[regions]]\nname = \"a\"\n\
             endpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n",
            db.display()
        ),
    )
    .unwrap();
    let (code, out, err) = georouter(&["run", "-c", policy.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("geo database"), "{err}");
    assert!(
        !out.contains("listening") && !err.contains("listening"),
        "{out}{err}"
    );
}

/// A container's admin address comes from the command line or the
/// environment (`--admin-address`, `GEOROUTER_ADMIN_ADDRESS`) over the
/// policy's, validated with it: off loopback without a token, `check` and
/// `run` refuse it; set, `run` listens there and a reload keeps it.
#[test]
fn the_admin_address_can_be_set_from_the_command_line_or_the_environment() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/georouter.toml");
    let (code, _, err) = georouter(&["check", "-c", example, "--admin-address", "0.0.0.0:9901"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("admin.address") && err.contains("no admin token"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_georouter"))
        .args(["check", "-c", example])
        .env("GEOROUTER_ADMIN_ADDRESS", "not-an-address")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("admin.address") && err.contains("not-an-address"),
        "{err}"
    );
    assert!(
        err.contains("GEOROUTER_ADMIN_ADDRESS"),
        "where the value came from: {err}"
    );

    let (port, listen) = (free_port(), free_port());
    let policy = format!(
        "[[listeners]]\naddress = \"127.0.0.1:{listen}\"\n[admin]\naddress = \"127.0.0.1:1\"\n\
         token_env = \"GEOROUTER_TEST_TOKEN\"\n[health]\nenabled = false\n\
         [[regions]]\nname = \"a\"\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n"
    );
    let (child, _log) = run_router(
        "admin-address",
        &policy,
        &[],
        &[
            ("GEOROUTER_ADMIN_ADDRESS", &format!("127.0.0.1:{port}")),
            (
                "GEOROUTER_TEST_TOKEN",
                "admin-address-test-token-0123456789",
            ),
        ],
        port,
    );
    let _child = Stop(child);
    let reload = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "%{http_code}", "-X", "POST"])
        .args([
            "-H",
            "Authorization: Bearer admin-address-test-token-0123456789",
        ])
        .arg(format!("http://127.0.0.1:{port}/reload"))
        .output()
        .unwrap();
    let reload = String::from_utf8_lossy(&reload.stdout);
    assert!(reload.ends_with("200"), "{reload}");
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "2",
            "-H",
            "Authorization: Bearer admin-address-test-token-0123456789",
        ])
        .arg(format!("http://127.0.0.1:{port}/config"))
        .output()
        .unwrap();
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(
        config.contains(&format!("address = \"127.0.0.1:{port}\"")),
        "{config}"
    );
    assert!(
        !config.contains("in service only after a restart"),
        "the override is no pending change: {config}"
    );
}

/// `check` is `run`'s start-up without serving: every way a start can fail
/// on the policy and the files it names fails `check` the same way, naming
/// the same place. Each case is run both ways.
#[test]
fn check_finds_every_failure_run_has_at_start() {
    let dir = std::env::temp_dir().join(format!("georouter-startup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let corrupt_db = file("corrupt.mmdb", &[0x5a; 4096]);
    let not_pem = file("not-a-cert.pem", b"not a certificate\n");
    let short_key = file("short-cookie-key", b"too short");
    let base = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"a\"\n\
                endpoints = [{ url = \"http://127.0.0.1:1\" }]\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a token file that is not there",
            "[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"/nonexistent/admin-token\"\n".into(),
            "/nonexistent/admin-token",
        ),
        (
            "a named token's variable unset",
            "[admin]\naddress = \"127.0.0.1:0\"\n[[admin.tokens]]\nname = \"oncall\"\nenv = \"GEOROUTER_TEST_UNSET_TOKEN\"\n".into(),
            "admin.tokens[0].env",
        ),
        (
            "a state file in no directory",
            "[admin]\naddress = \"127.0.0.1:0\"\nstate_file = \"/nonexistent-dir/state.json\"\n".into(),
            "admin.state_file",
        ),
        (
            "an admin API off loopback without a token",
            "[admin]\naddress = \"0.0.0.0:0\"\n".into(),
            "admin.address",
        ),
        (
            "a corrupt geo database",
            format!("[admin]\naddress = \"127.0.0.1:0\"\n[geo]\ndatabase = \"{corrupt_db}\"\n"),
            "geo database",
        ),
        (
            "a geo database that is not there",
            "[admin]\naddress = \"127.0.0.1:0\"\n[geo]\ndatabase = \"/nonexistent/geo.mmdb\"\n".into(),
            "/nonexistent/geo.mmdb",
        ),
        (
            "a residency cookie key too short",
            format!("[admin]\naddress = \"127.0.0.1:0\"\n[residency]\ncookie = \"home\"\ncookie_key_file = \"{short_key}\"\n"),
            "cookie_key_file",
        ),
    ];
    let mut tls_cases: Vec<(&str, String, &str)> = vec![(
        "a certificate that is not PEM",
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls.certificates = [{{ cert = \"{not_pem}\", key = \"{not_pem}\" }}]\n\
             [admin]\naddress = \"127.0.0.1:0\"\n[[regions]]\nname = \"a\"\n\
             endpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n"
        ),
        "not-a-cert.pem",
    )];
    let mut all: Vec<(&str, String, &str)> = cases
        .into_iter()
        .map(|(what, extra, needle)| (what, format!("{base}{extra}"), needle))
        .collect();
    all.append(&mut tls_cases);
    for (i, (what, policy, needle)) in all.iter().enumerate() {
        let path = dir.join(format!("case{i}.toml"));
        std::fs::write(&path, policy).unwrap();
        let path = path.to_str().unwrap();
        let (code, out, err) = georouter(&["check", "-c", path]);
        assert_eq!(code, 1, "check passed {what}: {out}{err}");
        assert!(
            err.contains(needle),
            "check on {what} does not name {needle}: {err}"
        );
        // `run` refuses it at start, naming the same place; one that starts
        // instead is stopped by its PID after 30 s, and the case fails.
        let child = Command::new(env!("CARGO_BIN_EXE_georouter"))
            .args(["run", "-c", path])
            .env_remove("GEOROUTER_ADMIN_ADDRESS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("run started with {what}");
            }
        };
        let (status, err) = (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(!status.success(), "run passed {what}: {err}");
        assert!(
            err.contains(needle),
            "run on {what} does not name {needle}: {err}"
        );
    }
}

/// A syntax error does not hide the rest: `check` says it first (line,
/// column), then checks the policy with the broken line left out and reports
/// the mistakes of the other sections.
#[test]
fn a_syntax_error_is_said_first_and_the_rest_is_checked_too() {
    let dir = std::env::temp_dir().join(format!("georouter-syntax-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("syntax.toml");
    std::fs::write(
        &policy,
        "[[listeners]]\naddress = \"127.0.0.1:0\n\
         [[regions]]\nname = \"a\"\nendpoints = [{ url = \"http://127.0.0.1:1\" }]\nweigth = 2\n\
         [server]\nworkers = \"two\"\n",
    )
    .unwrap();
    let (code, _, err) = georouter(&["check", "-c", policy.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let parse = err.find("line 2, column").expect("the syntax error");
    let rest = err.find("regions[0].weigth").expect("the rest checked");
    assert!(parse < rest, "{err}");
    assert!(err.contains("server.workers: invalid type"), "{err}");
    assert!(!err.contains("listeners[0].address"), "{err}");
}
