#!/usr/bin/env bash
# Start a single-node Ceph cluster on loopback for the rbd and s3 store tests:
# one mon, one mgr, one OSD (memstore: data in RAM, nothing on disk), and a radosgw
# speaking S3, with a pool `images` and an S3 user with fixed keys.
#
#     eval "$(bash tools/ceph-up.sh)"     # or: . "$CEPH_DIR/env.sh" afterwards
#
# Installs the Debian packages when missing, and makes `import rados, rbd` work in
# $PYTHON (default python3) by linking Debian's compiled modules into its
# site-packages. Idempotent: when the cluster in $CEPH_DIR already answers, this only
# prints the exports (well under a second); otherwise it builds a fresh cluster (about
# 20 s). Progress goes to stderr, exports to stdout (and $CEPH_DIR/env.sh). Stop it with
# tools/ceph-down.sh.
#
# Settings (environment):
#   CEPH_DIR             scratch folder: config, keyrings, daemon data, logs (/tmp/abbild-ceph)
#   CEPH_MON_PORT        mon messenger v1 port on 127.0.0.1                  (6789)
#   CEPH_MON_PORT2       mon messenger v2 port on 127.0.0.1                  (3300)
#   CEPH_RGW_PORT        radosgw HTTP port on 127.0.0.1                      (7480)
#   CEPH_OSD_STORE       memstore | bluestore (a sparse file in CEPH_DIR)     (memstore)
#   CEPH_MEMSTORE_BYTES  memstore capacity; RAM is only used as data arrives (4 GiB)
#   CEPH_BLUESTORE_BYTES bluestore block file size; sparse, disk used as data arrives (10 GiB)
#   CEPH_WITH_MGR        start a mgr (without one, `ceph -s` warns)           (1)
#   CEPH_WITH_RGW        start radosgw and create the S3 user                 (1)
#   CEPH_S3_ACCESS_KEY / CEPH_S3_SECRET_KEY  the S3 user's keys               (fixed test keys)
#   CEPH_START_TIMEOUT   seconds to wait for each step, and for HEALTH_OK     (120)
#   PYTHON               the interpreter that must `import rados, rbd`        (python3)
set -euo pipefail

# Both override the keyring lines of ceph.conf even for the daemons; a sourced env file
# that set CEPH_KEYRING once made the OSD's --mkkey overwrite the admin key.
unset CEPH_KEYRING CEPH_ARGS

CEPH_DIR=${CEPH_DIR:-/tmp/abbild-ceph}
MON_PORT=${CEPH_MON_PORT:-6789}
MON_PORT2=${CEPH_MON_PORT2:-3300}
RGW_PORT=${CEPH_RGW_PORT:-7480}
OSD_STORE=${CEPH_OSD_STORE:-memstore}
MEM_BYTES=${CEPH_MEMSTORE_BYTES:-4294967296}
BLUESTORE_BYTES=${CEPH_BLUESTORE_BYTES:-10737418240}
WITH_MGR=${CEPH_WITH_MGR:-1}
WITH_RGW=${CEPH_WITH_RGW:-1}
S3_ACCESS_KEY=${CEPH_S3_ACCESS_KEY:-ABBILDTESTACCESSKEY1}
S3_SECRET_KEY=${CEPH_S3_SECRET_KEY:-abbildtestsecretkey0000000000000000000001}
TIMEOUT=${CEPH_START_TIMEOUT:-120}
PYTHON=${PYTHON:-python3}
POOL=images
RGW_UID=abbild
PACKAGES="ceph-mon ceph-osd ceph-mgr radosgw ceph-common python3-rados python3-rbd"

CONF=$CEPH_DIR/ceph.conf
ADMIN_KEYRING=$CEPH_DIR/ceph.client.admin.keyring
ENV_SH=$CEPH_DIR/env.sh
RGW_ENDPOINT=http://127.0.0.1:$RGW_PORT

log() { echo "ceph-up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
ceph_() { ceph -c "$CONF" --connect-timeout 10 "$@"; }

# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 0.25 s until it succeeds.
wait_for() {
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not happen within ${seconds}s; see the logs in $CEPH_DIR/log"
        sleep 0.25
    done
}

install_packages() {
    local missing=()
    for pkg in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return
    log "installing ${missing[*]} (about 40 s)"
    [[ $(id -u) == 0 ]] || die "the packages ${missing[*]} are missing; run this as root or apt-get install them"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Debian ships rados and rbd only as compiled modules for its own python3 (3.11). Another
# CPython 3.11 (pyenv's) loads them fine: same EXT_SUFFIX, stable ABI within 3.11, and the
# .so files link only to system libraries. Link just the two files: putting all of
# dist-packages on the path would shadow pip's newer packages with Debian's older ones.
link_python_bindings() {
    "$PYTHON" -c 'import rados, rbd' 2>/dev/null && return
    local suffix site
    suffix=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
    for module in rados rbd; do
        local so=/usr/lib/python3/dist-packages/$module$suffix
        [[ -e $so ]] || die "$PYTHON wants $module$suffix, but Debian's python3-$module provides only" \
            "$(ls /usr/lib/python3/dist-packages/$module.* 2>/dev/null || echo nothing); use a Python" \
            "of the same minor version as /usr/bin/python3"
        ln -sf "$so" "$site/"
    done
    "$PYTHON" -c 'import rados, rbd' || die "linked rados and rbd into $site, but $PYTHON still cannot import them"
    log "linked rados and rbd into $site"
}

print_env() {
    local fsid
    fsid=$(sed -n 's/^fsid = //p' "$CONF")
    cat >"$ENV_SH.tmp" <<EOF
export CEPH_DIR=$CEPH_DIR
export CEPH_CONF=$CONF
export CEPH_ADMIN_KEYRING=$ADMIN_KEYRING
export CEPH_USER=admin
export CEPH_FSID=$fsid
export CEPH_RBD_POOL=$POOL
EOF
    if [[ $WITH_RGW == 1 ]]; then
        cat >>"$ENV_SH.tmp" <<EOF
export CEPH_RGW_ENDPOINT=$RGW_ENDPOINT
export CEPH_S3_ACCESS_KEY=$S3_ACCESS_KEY
export CEPH_S3_SECRET_KEY=$S3_SECRET_KEY
EOF
    fi
    mv "$ENV_SH.tmp" "$ENV_SH"
    cat "$ENV_SH"
}

# Up means: $PYTHON imports rados and rbd, the mon answers, the OSD is up, pool images
# exists, and radosgw answers. Deliberately not "HEALTH_OK": a passing warning must not
# make a re-run wipe a cluster that others are using. One Python process through librados
# checks it all: the ceph CLI would be a second Python start-up on this 0.5 s path.
cluster_is_up() {
    [[ -f $CONF && -f $ADMIN_KEYRING ]] || return 1
    "$PYTHON" - "$CONF" "$ADMIN_KEYRING" "$POOL" 2>/dev/null <<'EOF' || return 1
import json, sys
import rados, rbd  # noqa: F401 (the tests need both)
conffile, keyring, pool = sys.argv[1:]
# connect() ignores its timeout argument; client_mount_timeout is what bounds it.
cluster = rados.Rados(conffile=conffile, rados_id="admin", conf={"keyring": keyring, "client_mount_timeout": "3"})
cluster.connect()
ret, out, _ = cluster.mon_command(json.dumps({"prefix": "osd dump", "format": "json"}), b"", timeout=3)
cluster.shutdown()
dump = json.loads(out)
up = ret == 0 and pool in {p["pool_name"] for p in dump["pools"]} and any(o["up"] for o in dump["osds"])
sys.exit(0 if up else 1)
EOF
    [[ $WITH_RGW != 1 ]] || rgw_answers
}

rgw_answers() { curl -sf -o /dev/null --max-time 3 "$RGW_ENDPOINT/"; }

osd_is_up() { ceph_ osd stat | grep -q " 1 up"; }

# Fresh RGW pools report HEALTH_OK while their PGs are still being created.
cluster_is_settled() {
    [[ $(ceph_ health) == HEALTH_OK ]] || return 1
    ! ceph_ pg stat | grep -Eq "unknown|peering|creating|activating"
}

# start NAME COMMAND...: run a daemon (it forks into the background itself). Its stdio
# goes to a log file: a daemon holding our stdout would hang `$(ceph-up.sh)` forever;
# and it must not inherit the lock (fd 9), or the next run would wait for it forever.
start() {
    local name=$1
    shift
    "$@" </dev/null >>"$CEPH_DIR/log/$name.out" 2>&1 9>&- ||
        die "$name failed to start; see $CEPH_DIR/log/$name.out"
}

write_conf() {
    cat >"$CONF" <<EOF
[global]
fsid = $1
mon initial members = a
mon host = [v2:127.0.0.1:$MON_PORT2,v1:127.0.0.1:$MON_PORT]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $ADMIN_KEYRING
run dir = $CEPH_DIR/run
admin socket = $CEPH_DIR/run/\$name.asok
pid file = $CEPH_DIR/run/\$name.pid
log file = $CEPH_DIR/log/\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $CEPH_DIR/log/cluster.log
crash dir = $CEPH_DIR/crash
# One OSD: one replica, no failure domain above the OSD, no autoscaler.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
# Quiet the warnings a throw-away cluster always has, so HEALTH_OK means healthy.
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
auth allow insecure global id reclaim = false
mon data avail warn = 2
mon data avail crit = 1
# iostat only: the default modules (dashboard, restful, ...) cost memory and start time.
mgr initial modules = iostat

[mon]
mon data = $CEPH_DIR/mon/ceph-\$id
keyring = $CEPH_DIR/mon/ceph-\$id/keyring
# Every RBD snapshot create or remove waits for a new OSD map, which the mon proposes
# once per interval: 1 s by default, 0.05 s here (tests create hundreds of snapshots).
paxos propose interval = 0.05

[osd]
osd data = $CEPH_DIR/osd/ceph-\$id
keyring = $CEPH_DIR/osd/ceph-\$id/keyring
osd objectstore = $OSD_STORE
memstore device bytes = $MEM_BYTES
# Not inside osd data: bluestore puts its own "block" symlink there.
bluestore block path = $CEPH_DIR/osd/block.\$id
bluestore block create = true
bluestore block size = $BLUESTORE_BYTES
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 1073741824
osd max object name len = 256
osd max object namespace len = 64
osd op num shards = 2
osd op num threads per shard = 1

[mgr]
mgr data = $CEPH_DIR/mgr/ceph-\$id
keyring = $CEPH_DIR/mgr/ceph-\$id/keyring

[client.rgw.a]
keyring = $CEPH_DIR/rgw/keyring
rgw data = $CEPH_DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw dns name = 127.0.0.1
# The data of deleted objects waits for radosgw's garbage collector, 2 h by default;
# memstore would hold it in RAM all that time, and fill up after a few test runs.
rgw gc obj min wait = 0
rgw gc processor period = 30
log file = $CEPH_DIR/log/rgw.a.log
EOF
}

start_mon() {
    local fsid=$1
    mkdir -p "$CEPH_DIR/mon/ceph-a"
    ceph-authtool --create-keyring "$CEPH_DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >&2
    ceph-authtool --create-keyring "$ADMIN_KEYRING" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >&2
    ceph-authtool "$CEPH_DIR/mon.keyring" --import-keyring "$ADMIN_KEYRING" >&2
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT2,v1:127.0.0.1:$MON_PORT]" \
        "$CEPH_DIR/monmap" >&2
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/mon.keyring" >&2
    start mon.a ceph-mon -c "$CONF" -i a
    wait_for "$TIMEOUT" "the mon answering" ceph_ mon stat
}

start_osd() {
    local uuid id
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(ceph_ osd new "$uuid")
    mkdir -p "$CEPH_DIR/osd/ceph-$id"
    # --no-mon-config: the OSD has no key yet to fetch its config from the mon with.
    ceph-osd -c "$CONF" -i "$id" --mkfs --mkkey --no-mon-config --osd-uuid "$uuid" >>"$CEPH_DIR/log/osd.out" 2>&1 ||
        die "ceph-osd --mkfs failed; see $CEPH_DIR/log/osd.out"
    ceph_ auth add "osd.$id" osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
        -i "$CEPH_DIR/osd/ceph-$id/keyring" >&2
    start "osd.$id" ceph-osd -c "$CONF" -i "$id"
    wait_for "$TIMEOUT" "the OSD coming up" osd_is_up
}

start_mgr() {
    mkdir -p "$CEPH_DIR/mgr/ceph-x"
    ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
        -o "$CEPH_DIR/mgr/ceph-x/keyring"
    start mgr.x ceph-mgr -c "$CONF" -i x
}

create_pool() {
    ceph_ osd pool create "$POOL" 8 8 >&2
    rbd -c "$CONF" pool init "$POOL"
}

start_rgw() {
    mkdir -p "$CEPH_DIR/rgw"
    ceph_ auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' mgr 'allow rw' -o "$CEPH_DIR/rgw/keyring"
    start rgw.a radosgw -c "$CONF" -n client.rgw.a
    # It creates its own four pools before it listens: about 10 s.
    wait_for "$TIMEOUT" "radosgw answering on $RGW_ENDPOINT" rgw_answers
    radosgw-admin -c "$CONF" user create --uid="$RGW_UID" --display-name="abbild tests" \
        --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
}

build_cluster() {
    local fsid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mkdir -p "$CEPH_DIR"/{run,log,crash}
    write_conf "$fsid"
    log "starting mon"
    start_mon "$fsid"
    log "starting osd ($OSD_STORE)"
    start_osd
    if [[ $WITH_MGR == 1 ]]; then
        log "starting mgr"
        start_mgr
    fi
    log "creating pool $POOL"
    create_pool
    if [[ $WITH_RGW == 1 ]]; then
        log "starting radosgw on $RGW_ENDPOINT"
        start_rgw
    fi
    log "waiting for HEALTH_OK and all PGs active+clean"
    wait_for "$TIMEOUT" "HEALTH_OK with all PGs active+clean (ceph -c $CONF -s)" cluster_is_settled
    log "$(ceph_ pg stat)"
}

main() {
    mkdir -p "$(dirname "$CEPH_DIR")"
    # Several test runs may call this at once; the lock lives outside CEPH_DIR because
    # ceph-down removes that.
    exec 9>"$CEPH_DIR.lock"
    flock -w 600 9 || die "another ceph-up.sh has held $CEPH_DIR.lock for 10 minutes"
    if cluster_is_up; then
        log "already up in $CEPH_DIR"
    else
        install_packages
        link_python_bindings
        local started=$SECONDS
        if [[ -e $CEPH_DIR ]]; then
            log "$CEPH_DIR holds no working cluster; removing it"
            CEPH_DIR=$CEPH_DIR bash "$(dirname "$0")/ceph-down.sh"
        fi
        build_cluster
        log "up in $((SECONDS - started)) s"
    fi
    print_env
}

main
