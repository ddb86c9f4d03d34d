#!/usr/bin/env bash
# Stop the Swift that tools/swift-up.sh started: the servers and the memcached whose pids
# are in $SWIFT_DIR/run/. Keystone is left alone (tools/keystone-down.sh stops it).
#
#     bash tools/swift-down.sh            # stop; venv, config and data stay (next up: a few s)
#     bash tools/swift-down.sh --purge    # also remove $SWIFT_DIR (venv included)
#
# Settings (environment): SWIFT_DIR (/tmp/abbild-swift), as for swift-up.sh.
set -euo pipefail

SWIFT_DIR=${SWIFT_DIR:-/tmp/abbild-swift}
VENV=$SWIFT_DIR/venv
RUN=$SWIFT_DIR/run

purge=false
case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { printf 'swift-down: %s\n' "$*" >&2; }

# stop NAME PROGRAM: TERM the pid in run/NAME.pid if it still runs PROGRAM (a recycled
# pid is left alone), KILL after 5 s.
stop() {
    local name=$1 program=$2 pid
    pid=$(cat "$RUN/$name.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$program"; then
        kill -TERM "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored TERM for 5 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$RUN/$name.pid"
}

for server in proxy object container account; do
    stop "$server" "$VENV/bin/swift-$server-server"
done
stop memcached memcached
rm -f "$RUN/fingerprint"

if $purge; then
    rm -rf "$SWIFT_DIR"
    log "removed $SWIFT_DIR"
fi
