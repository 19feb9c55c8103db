#!/usr/bin/env bash
# Installs what building and testing this project needs on a fresh Debian
# machine with Rust: libclang + a C++ compiler for RocksDB's bindings and
# build; the real peers the integration tests start on loopback (Prometheus,
# Alertmanager, node_exporter, ClickHouse, ZooKeeper with a headless JRE,
# VictoriaMetrics) and Chromium with its WebDriver for the console's browser
# tests; ripgrep, the baseline of the collector's search benchmark.
# Idempotent; installs only what is missing; starts nothing.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in libclang-dev clang g++ make pkg-config prometheus prometheus-alertmanager prometheus-node-exporter \
  clickhouse-server clickhouse-client zookeeper default-jre-headless victoria-metrics chromium chromium-driver ripgrep; do
  have_pkg "$pkg" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's packages start nothing here (no systemd), and the tests start
# their own instances on free loopback ports; nothing to enable.
for c in cargo rustc; do
  command -v "$c" >/dev/null || { echo "setup: $c not found; install Rust (rustup) first" >&2; exit 1; }
done
