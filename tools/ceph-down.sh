#!/usr/bin/env bash
# Stop the Ceph cluster tools/ceph-up.sh started in $CEPH_DIR and remove that folder.
#
# Only the daemons named by $CEPH_DIR/run/*.pid are signalled, and only if that PID still
# runs a Ceph daemon: SIGTERM, then SIGKILL after 10 s (radosgw and the mgr take a few
# seconds to exit). Safe to run when nothing is up.
#
# Settings (environment):
#   CEPH_DIR   the cluster's scratch folder (/tmp/abbild-ceph)
set -euo pipefail

CEPH_DIR=${CEPH_DIR:-/tmp/abbild-ceph}
GRACE=10

log() { echo "ceph-down: $*" >&2; }

is_ceph_daemon() {
    local comm
    comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
    [[ $comm =~ ^(ceph-mon|ceph-osd|ceph-mgr|radosgw)$ ]]
}

# A killed daemon may linger as a zombie until PID 1 reaps it; it holds nothing then.
is_running() {
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

pids=()
for pidfile in "$CEPH_DIR"/run/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && is_ceph_daemon "$pid"; then
        log "stopping $(basename "$pidfile" .pid) (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
    fi
done

deadline=$((SECONDS + GRACE))
for pid in "${pids[@]}"; do
    while is_running "$pid" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if is_running "$pid"; then
        log "pid $pid ignored SIGTERM for ${GRACE}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
done

rm -rf "$CEPH_DIR"
log "removed $CEPH_DIR"
