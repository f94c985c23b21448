#!/usr/bin/env bash
# Quick look at the daemon: builds it, runs node A's example config inside a private network
# namespace (nothing on the host is touched), shows its health and HA status, stops it.
# Run as root. Replaced by the two-node failover demo once the lab lands.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked
ns="athena-try-$$"; dir=$(mktemp -d)
cleanup() { if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; ip netns del "$ns" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
ip netns add "$ns"; ip -n "$ns" link set lo up
ip -n "$ns" link add eth0 type veth peer name eth0-peer; ip -n "$ns" link set eth0-peer up; ip -n "$ns" addr add 10.0.0.1/24 dev eth0; ip -n "$ns" link set eth0 up
sed -e "s|^\[server\]|[server]\nlease_db = \"$dir/leases.redb\"|" -e 's/^enabled = true$/enabled = false/' config/node-a.toml > "$dir/node.toml"
./target/release/athena-dhcpd check-config "$dir/node.toml"
ip netns exec "$ns" ./target/release/athena-dhcpd --config "$dir/node.toml" & pid=$!
for _ in $(seq 50); do ip netns exec "$ns" curl -sf http://127.0.0.1:8067/api/v1/health >/dev/null 2>&1 && break; sleep 0.1; done
echo "--- GET /api/v1/health";    ip netns exec "$ns" curl -s http://127.0.0.1:8067/api/v1/health; echo
echo "--- GET /api/v1/ha/status"; ip netns exec "$ns" curl -s http://127.0.0.1:8067/api/v1/ha/status; echo
echo "--- CapEff of every thread (CAP_NET_ADMIN only = 0000000000001000)"
grep -h CapEff /proc/$pid/task/*/status | sort | uniq -c
