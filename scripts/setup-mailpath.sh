#!/usr/bin/env bash
# System packages for the mail-path integrations (issue 7): Postfix for the milter's end-to-end test and
# libmilter-dev so pip can compile pymilter. Idempotent; called from scripts/setup.sh.
# Postfix is installed unconfigured and its system-wide instance is left stopped: the tests (and a
# developer) run their own instance with a private config_directory, never the machine's mail system.
set -euo pipefail

APT_PACKAGES=(postfix libmilter-dev gcc libc6-dev)
need=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  $SUDO systemctl disable --now postfix >/dev/null 2>&1 || $SUDO service postfix stop >/dev/null 2>&1 || true
fi
