#!/usr/bin/env bash
# Stop the Apache that tools/apache-up.sh started. Idempotent; keeps the scratch folder
# (its logs) for a look afterwards.
set -uo pipefail

DIR=${ABBILD_APACHE_DIR:-/tmp/abbild-apache}

if [ -x "$DIR/server/apachectl" ] && [ -f "$DIR/server/httpd.pid" ]; then
    pid=$(cat "$DIR/server/httpd.pid")
    "$DIR/server/apachectl" stop >/dev/null 2>&1
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
fi
exit 0
