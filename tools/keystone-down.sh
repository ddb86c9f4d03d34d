#!/usr/bin/env bash
# Stop the Keystone that tools/keystone-up.sh started (the pid in $KEYSTONE_DIR/keystone.pid).
#
#     bash tools/keystone-down.sh            # stop it; venv, keys, database stay (next up: a few s)
#     bash tools/keystone-down.sh --purge    # also drop its database and remove $KEYSTONE_DIR
#
# Settings (environment): KEYSTONE_DIR (/tmp/abbild-keystone), as for keystone-up.sh.
set -euo pipefail

KEYSTONE_DIR=${KEYSTONE_DIR:-/tmp/abbild-keystone}
VENV=$KEYSTONE_DIR/venv
PIDFILE=$KEYSTONE_DIR/keystone.pid
CONF=$KEYSTONE_DIR/etc/keystone.conf

purge=false
case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { printf 'keystone-down: %s\n' "$*" >&2; }

pid=$(cat "$PIDFILE" 2>/dev/null || true)
if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$VENV/bin/gunicorn"; then
    # gunicorn's master stops its workers on TERM; it runs in its own session (setsid),
    # so whatever is left of the group afterwards gets KILL.
    kill -TERM "$pid"
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored TERM for 15 s; killing its process group"
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped pid $pid"
else
    log "not running (no live keystone pid in $PIDFILE)"
fi
rm -f "$PIDFILE"

if $purge; then
    url=$(sed -n 's/^connection = //p' "$CONF" 2>/dev/null || true)
    if [ -n "$url" ] && [ -x "$VENV/bin/python" ]; then
        "$VENV/bin/python" - "$url" <<'EOF'
import sys
import pymysql
from sqlalchemy.engine import make_url
url = make_url(sys.argv[1])
conn = pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                       user=url.username or "root", password=url.password or "", connect_timeout=5)
with conn.cursor() as cur:
    cur.execute(f"DROP DATABASE IF EXISTS `{url.database}`")
conn.close()
print(f"keystone-down: dropped database {url.database}", file=sys.stderr)
EOF
    else
        log "no $CONF or venv: no database to drop"
    fi
    rm -rf "$KEYSTONE_DIR"
    log "removed $KEYSTONE_DIR"
fi
