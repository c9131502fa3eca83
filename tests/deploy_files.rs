//! The configs shipped in deploy/ load and validate as the gateway would
//! load them, and the Grafana dashboard only queries metrics the gateway
//! exports: a renamed key or metric breaks this test, not a production
//! start or an empty graph. (.ci/deploy-check validates the manifests
//! themselves with systemd-analyze, docker-compose and kubernetes-validate.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use intake::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The TOML under `intake.toml: |` in a ConfigMap, unindented.
fn configmap_entry(yaml: &str, key: &str) -> String {
    let header = format!("  {key}: |");
    let mut lines = yaml.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "no `{key}` in the ConfigMap");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Validates `text` with the deployment's paths mapped into `root`: each
/// secret file the config names is created there (with a dummy value) and
/// the rules folder is the repository's.
fn validate(what: &str, text: &str, secret_dir: &str, root: &Path) {
    let secrets = root.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let rules = repo().join("rules");
    let text = text
        .replace(secret_dir, &format!("{}/", secrets.display()))
        .replace("\"/etc/intake/rules\"", &format!("\"{}\"", rules.display()));
    for line in text.lines() {
        if let Some(start) = line.find(&format!("\"{}/", secrets.display())) {
            let rest = &line[start + 1..];
            let path = &rest[..rest.find('"').unwrap()];
            std::fs::write(path, "0123456789abcdef0123456789abcdef\n").unwrap();
        }
    }
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{what} does not parse: {e}"));
    if let Err(problems) = config.validate() {
        panic!("{what} is invalid:\n  {}", problems.join("\n  "));
    }
}

#[test]
fn systemd_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    validate(
        "deploy/systemd/intake.toml",
        &read("deploy/systemd/intake.toml"),
        "/run/credentials/intake.service/",
        dir.path(),
    );
    // Every credential the config reads is one the unit loads.
    let unit = read("deploy/systemd/intake.service");
    let config = read("deploy/systemd/intake.toml");
    for name in config
        .split("/run/credentials/intake.service/")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
    {
        assert!(
            unit.contains(&format!("LoadCredential={name}:")),
            "intake.service does not load credential {name}"
        );
    }
}

#[test]
fn docker_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    validate(
        "deploy/docker/intake.toml",
        &read("deploy/docker/intake.toml"),
        "/run/secrets/",
        dir.path(),
    );
    let compose = read("deploy/docker/compose.yaml");
    for name in ["mailgate-token", "admin-token"] {
        assert!(
            compose.contains(&format!("      - {name}")),
            "compose.yaml hands the gateway no secret {name}"
        );
    }
}

#[test]
fn kubernetes_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let toml = configmap_entry(&read("deploy/k8s/config.yaml"), "intake.toml");
    validate(
        "deploy/k8s/config.yaml",
        &toml,
        "/run/secrets/intake/",
        dir.path(),
    );
    // The secret the pods mount has every key the config reads.
    let secret = read("deploy/k8s/secret.example.yaml");
    for name in toml
        .split("/run/secrets/intake/")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
    {
        assert!(
            secret.contains(&format!("  {name}: ")),
            "secret.example.yaml has no key {name}"
        );
    }
}

#[test]
fn kubernetes_rules_are_the_repositorys_rules() {
    let yaml = read("deploy/k8s/rules-configmap.yaml");
    let mut files: Vec<_> = std::fs::read_dir(repo().join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let shipped = configmap_entry(&yaml, name);
        let source = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            shipped.trim_end(),
            source.trim_end(),
            "{name} differs: run deploy/k8s/sync-rules"
        );
    }
}

/// Every `intake_*` metric the dashboard queries, without the suffixes
/// Prometheus adds to histograms.
fn dashboard_metrics() -> BTreeSet<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/intake.json")).expect("dashboard is JSON");
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(start) = rest.find("intake_") {
                let tail = &rest[start..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let name = &tail[..end];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                names.insert(base.to_string());
                rest = &tail[end..];
            }
        }
    }
    names
}

fn source_text(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_text(&path, into);
        } else if path.extension().is_some_and(|x| x == "rs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn dashboard_queries_only_metrics_the_gateway_exports() {
    let names = dashboard_metrics();
    assert!(
        names.len() >= 15,
        "the dashboard covers the gateway: {names:?}"
    );
    let mut src = String::new();
    source_text(&repo().join("src"), &mut src);
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !src.contains(&format!("\"{n}\"")))
        .collect();
    assert!(missing.is_empty(), "not exported by src/: {missing:?}");
}

/// Every `intake_*` metric the alerting rules example
/// (deploy/prometheus/alerts.yaml) names is one the gateway exports.
#[test]
fn alert_examples_use_only_metrics_the_gateway_exports() {
    let alerts = read("deploy/prometheus/alerts.yaml");
    let mut src = String::new();
    source_text(&repo().join("src"), &mut src);
    let mut names = BTreeSet::new();
    for line in alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        let mut rest = line;
        while let Some(start) = rest.find("intake_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    assert!(
        names.contains("intake_delivery_lag_seconds"),
        "the lag alert is there: {names:?}"
    );
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !src.contains(&format!("\"{n}\"")))
        .collect();
    assert!(missing.is_empty(), "not exported by src/: {missing:?}");
}

/// Every `](#anchor)` link in the README names one of its headings (as
/// GitHub makes the anchor: lower case, spaces to dashes, punctuation
/// dropped). A rewrite that loses a section breaks this test, not the
/// reader's link.
#[test]
fn readme_links_lead_to_its_headings() {
    let readme = read("README.md");
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        anchors.insert(anchor);
    }
    let links: BTreeSet<&str> = readme
        .split("](#")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .collect();
    assert!(!links.is_empty(), "the README links to its sections");
    let missing: Vec<_> = links.iter().filter(|l| !anchors.contains(**l)).collect();
    assert!(
        missing.is_empty(),
        "README links to missing sections: {missing:?}"
    );
}
