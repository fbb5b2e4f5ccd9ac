//! The production pack in deploy/: manifests parse and say what they must, the
//! policy in the ConfigMap is valid, the dashboard and the alert rules name only
//! metrics the router exports, and promtool accepts the rules (installed on the
//! spot where it can be; the test fails where it cannot).

mod support;

use std::path::Path;

use georouter::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn manifests() -> Vec<(String, Yaml)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in docs {
            out.push((path.display().to_string(), doc));
        }
    }
    out
}

fn of_kind<'a>(all: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    all.iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

#[test]
fn every_kubernetes_manifest_parses_and_names_its_object() {
    let all = manifests();
    for (file, doc) in &all {
        assert!(
            doc["apiVersion"].as_str().is_some(),
            "{file}: no apiVersion"
        );
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no kind"));
        if kind != "Kustomization" {
            assert!(
                doc["metadata"]["name"].as_str().is_some(),
                "{file}: no metadata.name"
            );
        }
    }
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(!of_kind(&all, kind).is_empty(), "no {kind}");
    }
}

#[test]
fn the_deployment_probes_the_admin_api_and_runs_unprivileged() {
    let all = manifests();
    let d = of_kind(&all, "Deployment")[0];
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
}

#[test]
fn the_configmap_policy_is_valid() {
    let all = manifests();
    let cm = of_kind(&all, "ConfigMap")[0];
    let toml = cm["data"]["georouter.toml"]
        .as_str()
        .expect("georouter.toml");
    let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("ConfigMap policy: {e}"));
    assert_eq!(config.admin.address.port(), 9901);
    assert!(
        config.admin.token_file.is_some(),
        "mutating calls need a token"
    );
}

/// Metric names in a text, with histogram suffixes removed.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("georouter_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_and_the_alerts_use_exported_metrics_only() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/georouter.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5);
    let mut exprs = String::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    for (what, text) in [
        ("dashboard", exprs),
        ("alerts", read("deploy/prometheus/alerts.yml")),
    ] {
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{what} names no metric");
        for n in names {
            assert!(
                georouter::metrics::NAMES.contains(&n.as_str())
                    || georouter::metrics::FLEET_NAMES.contains(&n.as_str()),
                "{what} uses {n}, which the router does not export"
            );
        }
    }
    for needle in [
        "georouter_failovers_total",
        "georouter_region_rtt_seconds",
        "georouter_region_healthy",
        "georouter_residency_refusals_total",
    ] {
        assert!(
            read("deploy/grafana/georouter.json").contains(needle),
            "dashboard lacks {needle}"
        );
    }
}

#[test]
fn promtool_accepts_and_tests_the_alert_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    // A missing promtool fails the test rather than passing it unchecked.
    let check = support::promtool()
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output()
        .expect("run promtool check rules");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = support::promtool()
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn the_systemd_unit_is_sandboxed() {
    let unit = read("deploy/systemd/georouter.service");
    for line in [
        "User=georouter",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "georouter.service lacks {line}"
        );
    }
}

#[test]
fn the_dockerfile_copies_files_that_exist_and_runs_as_non_root() {
    let df = read("deploy/Dockerfile");
    assert!(df.lines().any(|l| l.starts_with("USER nonroot")));
    for path in ["data/", "config/georouter.toml"] {
        assert!(df.contains(&format!("/src/{path}")));
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(path).exists(),
            "{path}"
        );
    }
}

/// The image's default command works on the files the image holds: the
/// Dockerfile's COPY lines are replayed under a temporary root, and its CMD
/// runs (as `check`, which reads everything `run` reads, without binding
/// 0.0.0.0:8080) from another directory.
#[test]
fn the_images_default_command_line_works_on_the_files_the_image_holds() {
    let df = read("deploy/Dockerfile");
    let root = std::env::temp_dir().join(format!("georouter-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let copy = |from: &Path, to: &Path| {
        if from.is_dir() {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.path().is_file() {
                    std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        } else {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, to).unwrap();
        }
    };
    for line in df
        .lines()
        .filter(|l| l.starts_with("COPY --from=build /src/"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (from, to) = (parts[2].trim_start_matches("/src/"), parts[3]);
        if from.starts_with("target/") {
            continue;
        }
        copy(&repo.join(from), &root.join(to.trim_start_matches('/')));
    }
    let cmd = df
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert_eq!(args[0], "run");
    let policy = args
        .iter()
        .skip_while(|a| *a != "-c")
        .nth(1)
        .expect("run -c FILE");
    let policy = root.join(policy.trim_start_matches('/'));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_georouter"))
        .args(["check", "-c", policy.to_str().unwrap()])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl apply -k` never puts a placeholder Secret back over a real one:
/// no resource of the kustomization is a Secret.
#[test]
fn the_kustomization_applies_no_secret() {
    let k = read("deploy/kubernetes/kustomization.yaml");
    let resources: Vec<&str> = k
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .take_while(|l| l.starts_with("  - "))
        .map(|l| l.trim_start_matches("  - ").trim())
        .collect();
    assert!(resources.contains(&"deployment.yaml"), "{resources:?}");
    for r in resources {
        let text = read(&format!("deploy/kubernetes/{r}"));
        assert!(
            !text.lines().any(|l| l.trim() == "kind: Secret"),
            "{r} is a Secret"
        );
    }
}

/// Every alert links its runbook the way Alertmanager templates expect.
#[test]
fn every_alert_has_a_runbook_url() {
    let alerts = read("deploy/prometheus/alerts.yml");
    let count = alerts.matches("- alert:").count();
    assert!(count >= 5);
    assert_eq!(
        alerts.matches("runbook_url: \"docs/operations.md#").count(),
        count
    );
    assert!(!alerts.contains(" runbook:"));
}

/// The README's metric table names every metric the router exports, and
/// nothing it does not.
#[test]
fn the_readme_lists_every_metric() {
    let readme = read("README.md");
    let listed: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `georouter_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    for name in georouter::metrics::NAMES
        .iter()
        .chain(georouter::metrics::FLEET_NAMES)
    {
        let bare = name.trim_start_matches("georouter_");
        assert!(listed.contains(&bare), "README's metric table lacks {name}");
    }
    for bare in listed {
        let name = format!("georouter_{bare}");
        assert!(
            georouter::metrics::NAMES.contains(&name.as_str())
                || georouter::metrics::FLEET_NAMES.contains(&name.as_str()),
            "README lists {name}, which the router does not export"
        );
    }
}

/// A tag moves under a build; the image is built from the bytes it names.
#[test]
fn the_dockerfile_pins_its_base_images_by_digest() {
    let df = read("deploy/Dockerfile");
    let images: Vec<&str> = df
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter(|a| a.contains("_IMAGE="))
        .collect();
    assert_eq!(images.len(), 2, "build and runtime images: {images:?}");
    for arg in images {
        let digest = arg.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{arg} is not pinned by digest"
        );
    }
    for from in df.lines().filter(|l| l.starts_with("FROM ")) {
        assert!(
            from.contains("${"),
            "{from} names an image not pinned above"
        );
    }
}
