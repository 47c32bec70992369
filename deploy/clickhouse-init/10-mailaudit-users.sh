#!/bin/bash
# First start of the compose ClickHouse (the image runs /docker-entrypoint-initdb.d/*.sh once, on an
# empty data volume): create one user per mailaudit service with only its rights. The SQL is
# `mailaudit migrate --print-grants`'s (mailaudit-users.sql.in, kept identical by tests/test_security_deploy.py);
# each placeholder becomes the sha256 of that user's password secret, so no password is in any file here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
secrets="${MAILAUDIT_SECRETS_DIR:-/run/secrets}"
sql="$(cat "$here/mailaudit-users.sql.in")"
for role in admin ingest detect dashboard; do
  file="$secrets/clickhouse_${role}_password"
  [ -s "$file" ] || { echo "mailaudit-users: $file is missing or empty" >&2; exit 1; }
  hash="$(tr -d '\r\n' < "$file" | sha256sum | cut -d' ' -f1)"
  sql="$(printf '%s\n' "$sql" | sed "/USER IF NOT EXISTS mailaudit_${role} /s/REPLACE_WITH_SHA256_HEX_OF_PASSWORD/${hash}/")"
done
if printf '%s\n' "$sql" | grep -q REPLACE_WITH_SHA256_HEX_OF_PASSWORD; then
  echo "mailaudit-users: a user was left without a password" >&2; exit 1
fi
printf '%s\n' "$sql" | ${MAILAUDIT_CH_CLIENT:-clickhouse-client --host 127.0.0.1 -u "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery}
