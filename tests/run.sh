#!/usr/bin/env bash
# Runs every test of athena-dhcpd. Needs root: most tests build private network namespaces
# (nothing outside them is touched). Installs the real clients the tests drive, from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(iproute2 isc-dhcp-client isc-dhcp-relay udhcpc busybox bind9-dnsutils curl procps psmisc tcpdump iputils-arping nftables man-db groff-base strace systemd e2fsprogs adduser lintian dpkg-dev binutils prometheus util-linux mount)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "tests/run.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tests/packaging.rs builds the Debian package with `cargo deb`; pinned so a new release
# cannot change CI's result on its own.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "tests/run.sh: installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked --version 3.8.0
fi

cargo test --locked "$@"
