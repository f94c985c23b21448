# shellcheck shell=bash
# Sourced by benches/dns.sh and benches/dns-outage.sh: the DNS lab of benches/README.md.
# Both need NS (the namespace's name) and WORK (their work directory) set before they call in.
#
# dns_lab: the private namespace NS with only its loopback up, so no query leaves it.
dns_lab() {
  ip netns add "$NS" && ip -n "$NS" link set lo up
}

# inns CMD...: runs CMD inside NS.
inns() { ip netns exec "$NS" "$@"; }

# answers PORT: does host1.bench.lan resolve to an address through 127.0.0.1:PORT? Looks for
# the address because dig prints "communications error ... refused" on stdout too.
answers() {
  inns dig +short +time=1 +tries=1 @127.0.0.1 -p "$1" host1.bench.lan A 2>/dev/null | grep '^[0-9]' >/dev/null
}

# unbound_conf PORT local DATA: an unbound on 127.0.0.1:PORT answering bench.lan from DATA (a
#   file of `local-data:` lines) and nothing else; the upstream both benchmarks forward to.
# unbound_conf PORT forward UPSTREAM [LINES]: an unbound on 127.0.0.1:PORT forwarding every
#   name to 127.0.0.1:UPSTREAM, with LINES (indented `server:` options) added, e.g. its
#   serve-expired settings.
# Either way one thread, in the foreground, no chroot, user or control socket: the benchmark
# runs it as a child it can kill, and the caches are sized as in benches/README.md.
unbound_conf() {
  cat <<EOF
server:
  interface: 127.0.0.1
  port: $1
  num-threads: 1
  do-daemonize: no
  use-syslog: no
  chroot: ""
  username: ""
  pidfile: ""
  directory: "$WORK"
  logfile: ""
  verbosity: 0
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  msg-cache-size: 16m
  rrset-cache-size: 32m
EOF
  case "$2" in
    local)
      echo '  local-zone: "bench.lan." static'
      cat "$3"
      ;;
    forward)
      # unbound refuses to forward to 127.0.0.0/8 unless told otherwise.
      echo '  do-not-query-localhost: no'
      if [ -n "${4:-}" ]; then printf '%s\n' "$4"; fi
      printf 'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@%s\n' "$3"
      ;;
  esac
  printf 'remote-control:\n  control-enable: no\n'
}

# athena_conf NODE: the head of an athena-dhcpd config serving DNS only, on 127.0.0.1:5300
# (no API, no DHCP, a 10,000-entry cache, as the unbound and dnsmasq it is compared with);
# the caller appends its own [dns] keys (local records or forwarders, serve-stale).
athena_conf() {
  cat <<EOF
[server]
node_name = "$1"
log_level = "warn"
lease_db = "$WORK/leases.redb"
drop_privileges = false
[api]
enabled = false
[dns]
enabled = true
listen_udp = "127.0.0.1:5300"
cache_size = 10000
EOF
}
