//! `athena-dhcpd leases [--mac M] [--ip A] [--subnet S]`: the node's leases as a table,
//! sorted by address, every page of `GET /api/v1/leases` (the filters are the API's own).

use std::fmt::Write;

use super::client::{ApiClient, ClientError};
use super::{ago, clock};
use crate::dhcp::api::{LeasePage, LeaseQuery, LeaseView};

/// Leases asked per request (the API's maximum).
const PAGE: usize = 1000;

/// Every lease that matches `filter`, in address order.
pub async fn fetch(api: &ApiClient, filter: &LeaseQuery) -> Result<Vec<LeaseView>, ClientError> {
    let mut out = Vec::new();
    let mut page = 1;
    loop {
        let q = LeaseQuery {
            page: Some(page),
            per_page: Some(PAGE),
            ..filter.clone()
        };
        // Only strings and numbers: serialising the query cannot fail.
        let query = serde_urlencoded::to_string(&q).unwrap_or_default();
        let p: LeasePage = api.get(&format!("/api/v1/leases?{query}")).await?;
        let got = p.leases.len();
        out.extend(p.leases);
        if got == 0 || out.len() >= p.total {
            return Ok(out);
        }
        page += 1;
    }
}

/// The table, for leases read at `now_ms`.
pub fn render(leases: &[LeaseView], now_ms: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<15} {:<17} {:<20} {:<18} {:<9} EXPIRES (UTC)",
        "IP", "MAC", "HOSTNAME", "SUBNET", "STATE"
    );
    for l in leases {
        let expiry_ms = l.expiry.saturating_mul(1000);
        let _ = writeln!(
            s,
            "{:<15} {:<17} {:<20} {:<18} {:<9} {} ({})",
            l.ip.to_string(),
            l.mac,
            l.hostname.as_deref().unwrap_or("-"),
            l.subnet,
            l.state,
            clock(expiry_ms),
            ago(now_ms, expiry_ms)
        );
    }
    let _ = writeln!(
        s,
        "{} lease{}",
        leases.len(),
        if leases.len() == 1 { "" } else { "s" }
    );
    s
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dhcp::api::list;
    use crate::lease::{Lease, LeaseState};

    #[test]
    fn the_table_shows_what_the_api_serialised() {
        let now_s = 1_796_214_896;
        let lease = |last: u8, host: Option<&str>, state| Lease {
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: [2, 0, 0, 0, 0, last],
            client_id: None,
            hostname: host.map(str::to_string),
            subnet: "10.0.0.0/24".into(),
            state,
            start: now_s - 60,
            expiry: now_s + 3540,
            updated_ms: 0,
            relay_info: None,
            classes: Vec::new(),
        };
        let leases = vec![
            lease(120, None, LeaseState::Declined),
            lease(100, Some("laptop"), LeaseState::Active),
        ];
        // The API's own page, through JSON, as the command receives it.
        let json =
            serde_json::to_string(&list(leases.into_iter(), &LeaseQuery::default())).expect("json");
        let page: LeasePage = serde_json::from_str(&json).expect("parse");
        let text = render(&page.leases, now_s * 1000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("IP "), "{text}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "10.0.0.100",
                "02:00:00:00:00:64",
                "laptop",
                "10.0.0.0/24",
                "active",
                "13:33:56",
                "(in",
                "59m00s)"
            ],
            "{text}"
        );
        assert!(lines[2].starts_with("10.0.0.120 "), "{text}");
        assert!(
            lines[2].contains(" - ") && lines[2].contains("declined"),
            "{text}"
        );
        assert_eq!(lines[3], "2 leases");
    }

    #[test]
    fn the_filters_go_out_as_the_api_reads_them() {
        let q = LeaseQuery {
            mac: Some("02:00:00:00:00:01".into()),
            subnet: Some("10.0.0.0/24".into()),
            page: Some(1),
            ..Default::default()
        };
        let text = serde_urlencoded::to_string(&q).expect("encode");
        let back: LeaseQuery = serde_urlencoded::from_str(&text).expect("decode");
        assert_eq!(back.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(back.subnet.as_deref(), Some("10.0.0.0/24"));
        assert_eq!(back.ip, None);
        assert!(!text.contains("ip="), "{text}");
    }
}
