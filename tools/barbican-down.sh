#!/usr/bin/env bash
# Stop the Barbican that tools/barbican-up.sh started (the pid in $BARBICAN_DIR/barbican.pid).
#
#     bash tools/barbican-down.sh            # stop it; venv and database stay (next up: a few s)
#     bash tools/barbican-down.sh --purge    # also remove $BARBICAN_DIR
#
# Settings (environment): BARBICAN_DIR (/tmp/abbild-barbican), as for barbican-up.sh.
set -euo pipefail

BARBICAN_DIR=${BARBICAN_DIR:-/tmp/abbild-barbican}
PIDFILE=$BARBICAN_DIR/barbican.pid

purge=false
case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { printf 'barbican-down: %s\n' "$*" >&2; }

pid=$(cat "$PIDFILE" 2>/dev/null || true)
# Ours: gunicorn runs in $BARBICAN_DIR/etc (its processes are renamed by setproctitle).
if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
    && [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$BARBICAN_DIR/etc" ]; then
    kill -TERM "$pid"
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped pid $pid"
else
    log "not running (no live barbican pid in $PIDFILE)"
fi
rm -f "$PIDFILE" "$BARBICAN_DIR/barbican.fingerprint"
if $purge; then
    rm -rf "$BARBICAN_DIR"
    log "removed $BARBICAN_DIR"
fi
