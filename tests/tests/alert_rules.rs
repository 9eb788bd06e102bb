//! The Prometheus alerting rules in `contrib/prometheus/`: `promtool check rules` accepts them,
//! `promtool test rules` runs their unit tests (each alert firing, and not firing, on example
//! series), and every metric they query is one the daemon exports.

use std::{path::PathBuf, process::Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("promtool (Debian package prometheus, installed by `cargo xtask`)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn promtool_checks_the_rules_and_runs_their_tests() {
    let checked = promtool(&["check", "rules", "voipwall-alerts.yml"]);
    assert!(checked.contains("7 rules found"), "{checked}");
    promtool(&["test", "rules", "voipwall-alerts.test.yml"]);
}

#[test]
fn the_rules_query_only_exported_metrics_and_every_alert_is_tested() {
    let rules = std::fs::read_to_string(dir().join("voipwall-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir().join("voipwall-alerts.test.yml")).unwrap();
    let exported: Vec<&str> =
        voipwall::metrics::FAMILIES.iter().chain(voipwall::metrics::FLEET_FAMILIES).copied().collect();
    let mut rest = rules.as_str();
    let mut queried = 0;
    while let Some(at) = rest.find("voipwall_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        assert!(exported.contains(&name.as_str()), "the rules query {name}, which /metrics does not export");
        queried += 1;
    }
    assert!(queried >= 6, "{queried} metric references");
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}")), "{alert} has a promtool test");
    }
}
