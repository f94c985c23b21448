//! The monitoring files cannot rot: `config/prometheus-alerts.yml` passes `promtool check
//! rules` and its own `promtool test rules` cases (each alert fires on its situation and not
//! on a healthy pair), every query of `config/grafana-dashboard.json` is valid PromQL, and
//! every metric either file names is one a real HA pair exports on `/metrics`. Needs
//! `promtool` (Debian's `prometheus` package).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::ha_pair::full_pair;
use common::lab::Node;
use common::netns::require_root;

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus-alerts.yml");
const ALERT_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/monitoring/alerts-test.yml"
);
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");

/// Metrics the files may name before any code exports them (an alert ready for the day it
/// does); the test fails once one is exported, so this list only shrinks. Empty:
/// `athena_ha_config_mismatch` was the last, and the config agreement exports it now.
const NOT_YET_EXPORTED: &[&str] = &[];

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus; tests/run.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{text}",
        out.status
    );
    text
}

/// The `athena_*` names in a text (PromQL inside YAML or JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("athena_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not part of a longer word (a uid like "athena-dhcpd-pair" has no underscore).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// The dashboard's queries, with Grafana's variables replaced by what Prometheus accepts.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("\"$job\"", "\".*\"");
            out.push((p["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    out
}

#[test]
fn the_alert_rules_pass_promtool_and_fire_on_what_they_name() {
    let dir = Path::new(ALERTS).parent().expect("config dir");
    let text = promtool(&["check", "rules", ALERTS], dir);
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
    let tests_dir = Path::new(ALERT_TESTS).parent().expect("tests dir");
    promtool(&["test", "rules", ALERT_TESTS], tests_dir);
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    // promtool checks PromQL in rule files: one recording rule per panel query.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).expect("quote")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, &rules).expect("write");
    promtool(&["check", "rules", &path.to_string_lossy()], dir.path());
    let text = std::fs::read_to_string(DASHBOARD).expect("read");
    for panel in [
        "HA state per node",
        "Failovers",
        "DHCP requests and replies",
        "DHCPACK latency",
        "Pool use",
        "DNS queries",
        "DNS cache hit rate",
    ] {
        assert!(
            text.contains(&format!("\"title\": \"{panel}\"")),
            "no panel {panel:?}"
        );
    }
}

/// The sample names a `/metrics` text can have: each `# TYPE` line's name with the suffixes
/// its type adds (OpenMetrics: counters `_total`, histograms `_bucket`, `_sum`, `_count`).
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in scrape.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let (Some(name), Some(kind)) = (w.next(), w.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for s in suffixes {
            out.insert(format!("{name}{s}"));
        }
    }
    out
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported_by_a_real_pair() {
    if !require_root("every_metric_the_alerts_and_the_dashboard_name_is_exported_by_a_real_pair") {
        return;
    }
    let lab = full_pair("mon");
    let mut names = BTreeSet::new();
    let mut active_scrape = String::new();
    for n in [Node::A, Node::B] {
        let (code, body) = lab.api_get(n, "/metrics").expect("/metrics answers");
        assert_eq!(code, 200, "{body}");
        names.extend(exported(&body));
        if n == Node::A {
            active_scrape = body;
        }
    }
    assert!(names.len() > 40, "too few metrics: {names:?}");
    let mut used = metric_names(&std::fs::read_to_string(ALERTS).expect("alerts"));
    used.extend(metric_names(
        &std::fs::read_to_string(DASHBOARD).expect("dashboard"),
    ));
    assert!(used.len() >= 12, "{used:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| !names.contains(*m) && !NOT_YET_EXPORTED.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "named in the monitoring files but not exported: {missing:?}\nexported: {names:?}"
    );
    for m in NOT_YET_EXPORTED {
        assert!(
            !names.contains(*m),
            "{m} is exported now: remove it from NOT_YET_EXPORTED"
        );
    }
    // The label values the rules select on are the ones the daemon writes.
    for sample in [
        "athena_ha_state{state=\"ACTIVE\"} 1",
        "athena_ha_peer_connected 1",
        // The value is the agreement's business (the lab's nodes differ in one DNS record).
        "\nathena_ha_config_mismatch ",
        "athena_dhcp_pool_addresses{subnet=\"10.0.0.0/24\",pool=\"10.0.0.100-10.0.0.199\",state=\"free\"} 100",
        // A state of its own (the pool-full query counts it as used: state!="free").
        "athena_dhcp_pool_addresses{subnet=\"10.0.0.0/24\",pool=\"10.0.0.100-10.0.0.199\",state=\"conflict\"} 0",
    ] {
        assert!(
            active_scrape.contains(sample),
            "no {sample:?} in node A's /metrics:\n{active_scrape}"
        );
    }
}

#[test]
fn metric_names_are_found_in_promql_and_json() {
    let got = metric_names(
        "sum(rate(athena_dns_cache_hits_total{job=~\"$job\"}[5m])) / athena_ha_epoch uid athena-dhcpd-pair x_athena_not",
    );
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["athena_dns_cache_hits_total", "athena_ha_epoch"]
    );
}
