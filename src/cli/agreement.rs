//! `check-config FILE --peer HOST:PORT`: the file against what the running peer serves, so an
//! admin sees before a deploy what the pair would disagree on. The comparison is the one the
//! nodes make between themselves ([`SharedConfig`]); only the peer's side comes over HTTP.

use serde::Deserialize;

use super::client::{ApiClient, ClientError};
use crate::config::{Config, Difference, SharedConfig};

/// The part of `GET /api/v1/ha/config` this command reads.
#[derive(Debug, Deserialize)]
pub struct PeerConfig {
    pub shared: SharedConfig,
}

pub async fn fetch(client: &ApiClient) -> Result<PeerConfig, ClientError> {
    client.get("/api/v1/ha/config").await
}

/// The differences, `here` being the file.
pub fn compare(file: &Config, peer: &PeerConfig) -> Vec<Difference> {
    SharedConfig::of(file).diff(&peer.shared)
}

/// What the command prints: one line per differing key, or that they agree.
pub fn render(file: &str, peer: &str, diffs: &[Difference]) -> String {
    if diffs.is_empty() {
        return format!("{file} serves the same configuration as {peer}\n");
    }
    let mut out = format!(
        "{file} differs from what {peer} serves in {} key(s):\n",
        diffs.len()
    );
    for d in diffs {
        out.push_str("  ");
        out.push_str(&d.describe(peer));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(end: &str, node: &str) -> Config {
        let text = format!(
            "[server]\nnode_name = \"{node}\"\n[[subnet]]\nnetwork = \"10.0.0.0/24\"\n[[subnet.pool]]\nrange_start = \"10.0.0.100\"\nrange_end = \"{end}\"\n"
        );
        crate::config::parse(&text, std::path::Path::new("t.toml")).expect("parse")
    }

    /// The peer's answer as the daemon writes it (its own types serialised, not a fixture).
    fn answer(c: &Config) -> PeerConfig {
        let view = crate::ha::agreement::Agreement::new(SharedConfig::of(c), 2).view();
        serde_json::from_str(&serde_json::to_string(&view).expect("json")).expect("parse")
    }

    #[test]
    fn a_differing_pool_is_named_and_node_names_are_not() {
        let peer = answer(&cfg("10.0.0.199", "node-b"));
        let d = compare(&cfg("10.0.0.200", "node-a"), &peer);
        let text = render("a.toml", "10.0.0.2:8067", &d);
        assert_eq!(
            text,
            "a.toml differs from what 10.0.0.2:8067 serves in 1 key(s):\n  subnet 10.0.0.0/24 pool[0].range_end: 10.0.0.200 here, 10.0.0.199 on 10.0.0.2:8067\n"
        );
        let same = compare(&cfg("10.0.0.199", "node-a"), &peer);
        assert!(same.is_empty());
        assert!(render("a.toml", "b", &same).contains("serves the same configuration"));
    }
}
