//! HTTPS on the API (`[api] tls_cert` / `tls_key`) with two real daemons in the lab: curl
//! from a client checks the certificate and gets health over HTTPS, plain HTTP to the same
//! port is refused with a body that says to use https, and the HA pair still links (the peer
//! link upgrades from plain HTTP on the shared port) and replicates a lease; a renewed
//! certificate is picked up on SIGHUP, without a restart. The certificates are made here with
//! rcgen, self-signed for both nodes' addresses.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::lab::{dhclient_once, Lab, Node, NodeOpts, READ_TOKEN};
use common::netns::{require_root, Netns};

/// A fresh self-signed certificate for 10.0.0.1 and 10.0.0.2, written over `dir`'s
/// api-cert.pem / api-key.pem (as a renewal would); returns their paths.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let names = vec![Node::A.addr().to_string(), Node::B.addr().to_string()];
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let (cert, key) = (dir.join("api-cert.pem"), dir.join("api-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    (cert, key)
}

/// `curl` inside `ns`: (HTTP status, body), or (0, curl's error) when no HTTP answer came.
fn curl(ns: &Netns, args: &[&str]) -> (u16, String) {
    let mut all = vec!["curl", "-sS", "--max-time", "3", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = ns.try_run(&all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    match code.trim().parse() {
        Ok(c) if c != 0 => (c, body.to_string()),
        _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn https(node: Node, path: &str) -> String {
    format!("https://{}{path}", node.api())
}

/// `/api/v1/ha/status` of `node` over HTTPS from the client.
fn ha_status(lab: &Lab, ca: &str, node: Node) -> Option<serde_json::Value> {
    let (code, body) = curl(&lab.c, &["--cacert", ca, &https(node, "/api/v1/ha/status")]);
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

#[test]
fn https_api_serves_health_refuses_plain_http_the_pair_links_and_replicates_and_sighup_renews() {
    if !require_root("https_api_serves_health_refuses_plain_http_the_pair_links_and_replicates") {
        return;
    }
    let mut lab = Lab::new("tls");
    let (cert, key) = certificate(lab.dir.path());
    let ca = cert.display().to_string();
    let o = NodeOpts {
        vip: false,
        dns: false,
        dhcp: true,
        api_extra: format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
        ..common::ha_pair::opts(true)
    };
    // Not `Lab::start`: it waits for the API over plain HTTP, which a TLS port refuses.
    for n in [Node::A, Node::B] {
        lab.write_config(n, &o);
        lab.spawn(n);
    }
    lab.wait_for(
        "A ACTIVE and B STANDBY, linked (status over HTTPS)",
        Duration::from_secs(20),
        |l| {
            let a = ha_status(l, &ca, Node::A);
            let b = ha_status(l, &ca, Node::B);
            matches!((a, b), (Some(a), Some(b))
                if a["state"] == "ACTIVE" && b["state"] == "STANDBY"
                && a["peer_connected"] == true && b["peer_connected"] == true)
        },
    );

    // HTTPS with the certificate checked against the CA file.
    let (code, body) = curl(
        &lab.c,
        &["--cacert", &ca, &https(Node::A, "/api/v1/health")],
    );
    assert_eq!(code, 200, "health over HTTPS: {body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    // It is real TLS: without the CA file curl does not trust the self-signed certificate.
    let (code, err) = curl(&lab.c, &[&https(Node::A, "/api/v1/health")]);
    assert_eq!(code, 0, "an unknown certificate must fail: {err}");
    assert!(
        err.contains("certificate"),
        "curl names the certificate: {err}"
    );

    // Plain HTTP from a client: refused, and the body says what to do.
    let (code, body) = curl(
        &lab.c,
        &[&format!("http://{}/api/v1/health", Node::A.api())],
    );
    assert_eq!(code, 400, "plain HTTP to the HTTPS port: {body}");
    assert!(body.contains("speaks HTTPS"), "{body}");
    assert!(
        body.contains(&format!("https://{}/api/v1/health", Node::A.api())),
        "{body}"
    );
    let (code, body) = curl(
        &lab.c,
        &[
            "-H",
            &format!("Authorization: Bearer {READ_TOKEN}"),
            &format!("http://{}/api/v1/leases", Node::A.api()),
        ],
    );
    assert_eq!(
        code, 400,
        "no lease data over plain HTTP, token or not: {body}"
    );

    // A lease ACKed by A reaches B over the peer link; read it from B over HTTPS.
    lab.add_client("d0");
    let lease = dhclient_once(&lab.clients()[0], lab.dir.path(), "tls0")
        .unwrap_or_else(|| panic!("no lease from the pair{}", lab.dump()));
    assert_eq!(lease.server_id, Some(Node::A.addr()), "A serves");
    let ip = lease.ip.expect("leased address").to_string();
    let auth = format!("Authorization: Bearer {READ_TOKEN}");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = curl(
            &lab.c,
            &[
                "--cacert",
                &ca,
                "-H",
                &auth,
                &https(Node::B, "/api/v1/leases?state=active"),
            ],
        );
        assert_eq!(code, 200, "B's leases over HTTPS: {body}");
        if body.contains(&format!("\"ip\":\"{ip}\"")) {
            break;
        }
        assert!(
            Instant::now() < end,
            "lease {ip} not replicated to B within 5 s: {body}{}",
            lab.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Renewal: new files in place, SIGHUP to A only. A presents the new certificate at once
    // (no restart: still ACTIVE and linked); B, not reloaded, still the old one.
    let old_ca = std::fs::read_to_string(&cert).expect("read cert");
    let old = lab.dir.path().join("old-ca.pem");
    std::fs::write(&old, old_ca).expect("keep the old certificate");
    certificate(lab.dir.path());
    lab.signal(Node::A, libc::SIGHUP);
    let health = https(Node::A, "/api/v1/health");
    lab.wait_for(
        "A presents the renewed certificate",
        Duration::from_secs(5),
        |l| curl(&l.c, &["--cacert", &ca, &health]).0 == 200,
    );
    let old = old.display().to_string();
    assert_eq!(
        curl(&lab.c, &["--cacert", &old, &health]).0,
        0,
        "A dropped the old one"
    );
    assert_eq!(
        curl(
            &lab.c,
            &["--cacert", &old, &https(Node::B, "/api/v1/health")]
        )
        .0,
        200,
        "B was not reloaded"
    );
    let a = ha_status(&lab, &ca, Node::A).expect("A's status");
    assert!(
        a["state"] == "ACTIVE" && a["peer_connected"] == true,
        "the reload moved nothing: {a}"
    );
    assert!(
        lab.log(Node::A).contains("API certificate reloaded"),
        "the reload is logged{}",
        lab.dump()
    );
}
