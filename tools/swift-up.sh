#!/usr/bin/env bash
# Start an OpenStack Swift all-in-one on loopback for the swift store tests, and print
# the `export` lines that reach it:
#
#     eval "$(bash tools/swift-up.sh)"     # or: . "$SWIFT_DIR/env.sh" afterwards
#
# One replica, one device directory, and the account (6212), container (6211), object
# (6210) and proxy (8090) servers, each a single process (workers = 0) logging to
# $SWIFT_DIR/log/. Authentication:
#   * tempauth, always: user test:tester, key testing (.admin), at
#     http://127.0.0.1:8090/auth/v1.0, accounts AUTH_<account>; it keeps tokens in a
#     memcached of our own on 127.0.0.1:$SWIFT_MEMCACHED_PORT.
#   * Keystone v3 as well, when Keystone is available (see SWIFT_KEYSTONE): authtoken +
#     keystoneauth in the proxy (operator roles admin and member, accounts
#     KEY_<project id>), the object-store service in Keystone's catalog, and a project
#     with two users for the tests (one member, one reader who may not write).
#
# Installs what is missing: memcached (apt) and, in its own venv ($SWIFT_DIR/venv,
# pinned), swift, python-swiftclient and keystonemiddleware. Idempotent: when all of it
# is already up with these settings, this only prints the exports. Progress goes to
# stderr, exports to stdout (and $SWIFT_DIR/env.sh). Stop it with tools/swift-down.sh.
#
# Settings (environment):
#   SWIFT_DIR              scratch folder: venv, config, rings, data, logs  (/tmp/abbild-swift)
#   SWIFT_PYTHON           the Python to build the venv with                (python3)
#   SWIFT_PROXY_PORT       proxy port on 127.0.0.1                          (8090)
#   SWIFT_MEMCACHED_PORT   our memcached's port on 127.0.0.1                (11212)
#   SWIFT_KEYSTONE         auto: use Keystone if $KEYSTONE_DIR/env.sh names one that
#                          answers; 1: start it with tools/keystone-up.sh first (and fail
#                          if that fails); 0: tempauth only                  (auto)
#   KEYSTONE_DIR           where keystone-up.sh keeps its env.sh            (/tmp/abbild-keystone)
#   SWIFT_START_TIMEOUT    seconds to wait for the proxy's /healthcheck     (60)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SWIFT_DIR=${SWIFT_DIR:-/tmp/abbild-swift}
SWIFT_PYTHON=${SWIFT_PYTHON:-python3}
PROXY_PORT=${SWIFT_PROXY_PORT:-8090}
MEMCACHED_PORT=${SWIFT_MEMCACHED_PORT:-11212}
WANT_KEYSTONE=${SWIFT_KEYSTONE:-auto}
KEYSTONE_DIR=${KEYSTONE_DIR:-/tmp/abbild-keystone}
TIMEOUT=${SWIFT_START_TIMEOUT:-60}
OBJECT_PORT=6210 CONTAINER_PORT=6211 ACCOUNT_PORT=6212

VENV=$SWIFT_DIR/venv
ETC=$SWIFT_DIR/etc
RUN=$SWIFT_DIR/run
LOGDIR=$SWIFT_DIR/log
DEVICES=$SWIFT_DIR/srv
ENV_SH=$SWIFT_DIR/env.sh
SETUP_LOG=$LOGDIR/setup.log
PROXY_URL=http://127.0.0.1:$PROXY_PORT
SERVERS="account container object proxy"

# Who the tests are in Keystone. Throwaway credentials for a loopback-only Keystone.
KS_PROJECT=abbild-swift
KS_USER=abbild-swift
KS_PASSWORD=abbild-swift-secret
KS_READER=abbild-swift-reader
KS_READER_PASSWORD=abbild-swift-reader-secret
KS_SERVICE_USER=swift
KS_SERVICE_PASSWORD=abbild-swift-service-secret
KS_RESELLER_PREFIX=KEY_

# The venv: the three we need, and every dependency pinned to the set resolved and tested
# with them on CPython 3.11, so that no new upstream release can break the tests.
REQUIREMENTS="swift==2.38.3 python-swiftclient==4.11.0 keystonemiddleware==13.0.1"
UV="uv==0.13.9"
CONSTRAINTS='certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
cryptography==50.0.2
debtcollector==3.1.0
decorator==5.3.1
dnspython==2.9.2
dogpile.cache==1.5.0
eventlet==0.41.3
greenlet==3.5.6
idna==3.20
iso8601==2.1.0
keystoneauth1==5.18.1
keystonemiddleware==13.0.1
lxml==6.1.3
msgpack==1.2.4
netaddr==1.3.0
os-service-types==1.9.0
oslo.cache==4.3.0
oslo.config==10.7.0
oslo.context==6.5.0
oslo.i18n==6.9.0
oslo.log==8.3.2
oslo.serialization==5.11.0
oslo.utils==10.2.0
packaging==26.4
PasteDeploy==3.1.0
pbr==7.1.3
psutil==7.2.2
pycadf==4.1.0
pycparser==3.12
pyeclib==1.8.0
PyJWT==2.15.1
pyparsing==3.3.3
python-dateutil==4.0.0
python-keystoneclient==6.0.0
python-swiftclient==4.11.0
PyYAML==6.0.4
requests==2.34.2
rfc3986==2.0.0
stevedore==5.10.0
swift==2.38.3
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
WebOb==1.8.11
wrapt==2.5.2
xattr==1.3.0'

START=$(date +%s.%N)
elapsed() { awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }'; }
log() { printf 'swift-up [%ss]: %s\n' "$(elapsed)" "$*" >&2; }

die() {
    printf 'swift-up: ERROR: %s\n' "$*" >&2
    for f in "$SETUP_LOG" "$LOGDIR"/*-server.log; do
        if [ -s "$f" ]; then
            printf -- '--- last lines of %s ---\n' "$f" >&2
            tail -n 8 "$f" | cut -c1-400 >&2
        fi
    done
    exit 1
}
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

# The pid in run/NAME.pid, if that process is alive and runs the program we started.
running_pid() {
    local name=$1 program=$2 pid
    pid=$(cat "$RUN/$name.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$program" || return 1
    echo "$pid"
}

server_program() { echo "$VENV/bin/swift-$1-server"; }

all_running() {
    local s
    for s in $SERVERS; do running_pid "$s" "$(server_program "$s")" >/dev/null || return 1; done
    running_pid memcached memcached >/dev/null
}

healthy() { curl -fsS -m 2 "$PROXY_URL/healthcheck" 2>/dev/null | grep -qx OK; }

# A tempauth login followed by an account HEAD: proves the whole chain (proxy, memcached,
# account server, rings).
tempauth_works() {
    local headers token url
    headers=$(curl -fsS -m 5 -o /dev/null -D - -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
        "$PROXY_URL/auth/v1.0" 2>/dev/null | tr -d '\r') || return 1
    token=$(sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p' <<<"$headers")
    url=$(sed -n 's/^[Xx]-[Ss]torage-[Uu]rl: //p' <<<"$headers")
    [ -n "$token" ] && [ -n "$url" ] && curl -fsS -m 5 -o /dev/null -I -H "X-Auth-Token: $token" "$url"
}

# Stop what run/NAME.pid names (TERM, then KILL after 5 s).
stop() {
    local name=$1 program=$2 pid
    pid=$(running_pid "$name" "$program") || { rm -f "$RUN/$name.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$RUN/$name.pid"
}

stop_all() {
    local s
    for s in $SERVERS; do stop "$s" "$(server_program "$s")"; done
    stop memcached memcached
}

# Run COMMAND... in the background, detached: its own session, no descriptor but 0-2
# (not our lock on fd 9, which would block every later swift-up.sh, nor a caller's pipe,
# which would keep `$(...)` waiting), output appended to LOGFILE; its pid to run/NAME.pid.
spawn() {
    local name=$1 logfile=$2
    shift 2
    (
        for fd in "/proc/$BASHPID/fd/"*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        exec setsid "$@"
    ) >>"$logfile" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- Keystone: which one, if any -----------------------------------------------------------
KS_AUTH_URL=
KS_ADMIN_PASSWORD=
keystone_env() {
    # keystone-up.sh's env.sh holds plain `export NAME=value` lines.
    sed -n "s/^export $1=//p" "$KEYSTONE_DIR/env.sh" 2>/dev/null | head -n1
}
find_keystone() {
    case "$WANT_KEYSTONE" in
        0 | no | false) return 0 ;;
        1 | yes | true)
            log "SWIFT_KEYSTONE=$WANT_KEYSTONE: starting Keystone with tools/keystone-up.sh"
            KEYSTONE_DIR=$KEYSTONE_DIR bash "$HERE/keystone-up.sh" >/dev/null \
                || die "tools/keystone-up.sh failed (SWIFT_KEYSTONE=$WANT_KEYSTONE asks for Keystone)"
            ;;
        auto) ;;
        *) die "SWIFT_KEYSTONE must be auto, 1 or 0, not '$WANT_KEYSTONE'" ;;
    esac
    local url
    url=$(keystone_env OS_AUTH_URL)
    if [ -n "$url" ] && curl -fsS -m 3 -o /dev/null "$url"; then
        KS_AUTH_URL=$url
        KS_ADMIN_PASSWORD=$(keystone_env OS_PASSWORD)
    elif [ "$WANT_KEYSTONE" != auto ]; then
        die "Keystone does not answer at '${url:-<no OS_AUTH_URL in $KEYSTONE_DIR/env.sh>}'"
    fi
}

write_env() {
    local tmp=$ENV_SH.tmp
    {
        printf 'export %s=%q\n' \
            SWIFT_DIR "$SWIFT_DIR" \
            SWIFT_PROXY_URL "$PROXY_URL" \
            ST_AUTH "$PROXY_URL/auth/v1.0" \
            ST_USER test:tester \
            ST_KEY testing
        if [ -n "$KS_AUTH_URL" ]; then
            printf 'export %s=%q\n' \
                SWIFT_KEYSTONE_AUTH_URL "$KS_AUTH_URL" \
                SWIFT_KEYSTONE_PROJECT "$KS_PROJECT" \
                SWIFT_KEYSTONE_USER "$KS_USER" \
                SWIFT_KEYSTONE_PASSWORD "$KS_PASSWORD" \
                SWIFT_KEYSTONE_READER "$KS_READER" \
                SWIFT_KEYSTONE_READER_PASSWORD "$KS_READER_PASSWORD" \
                SWIFT_KEYSTONE_RESELLER_PREFIX "$KS_RESELLER_PREFIX"
        fi
    } >"$tmp"
    mv "$tmp" "$ENV_SH"
}

# Make Keystone know Swift: the service user the proxy validates tokens with (roles admin
# and service on project `service`), the object-store endpoints (swiftclient finds its
# storage URL in the catalog), and the test project with a member and a reader. Only
# creates what is missing, so it is cheap to run on every start.
keystone_setup() {
    "$VENV/bin/python" - <<EOF >>"$SETUP_LOG" 2>&1 || die "could not set up Swift's users and endpoints in Keystone at $KS_AUTH_URL (see $SETUP_LOG)"
from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client

auth = v3.Password(auth_url="$KS_AUTH_URL", username="admin", password="$KS_ADMIN_PASSWORD",
                   project_name="admin", user_domain_id="default", project_domain_id="default")
ks = client.Client(session=session.Session(auth=auth), interface="public")

def one(manager, name, create, **filters):
    found = [x for x in manager.list(name=name, **filters) if x.name == name]
    return found[0] if found else create()

def role(name):
    return one(ks.roles, name, lambda: ks.roles.create(name))

def project(name):
    return one(ks.projects, name, lambda: ks.projects.create(name, "default"), domain="default")

def user(name, password, project_, roles):
    u = one(ks.users, name, lambda: ks.users.create(name, domain="default", password=password,
                                                   default_project=project_), domain="default")
    ks.users.update(u, password=password, enabled=True) if not password_works(name, password) else None
    for r in roles:
        ks.roles.grant(role(r), user=u, project=project_)

def password_works(name, password):
    try:
        v3.Password(auth_url="$KS_AUTH_URL", username=name, password=password, user_domain_id="default",
                    unscoped=True).get_auth_ref(session.Session())
        return True
    except Exception:
        return False

user("$KS_SERVICE_USER", "$KS_SERVICE_PASSWORD", project("service"), ["admin", "service"])
tests = project("$KS_PROJECT")
user("$KS_USER", "$KS_PASSWORD", tests, ["member"])
user("$KS_READER", "$KS_READER_PASSWORD", tests, ["reader"])

service = one(ks.services, "swift", lambda: ks.services.create("swift", type="object-store",
                                                               description="abbild test Swift"))
url = "$PROXY_URL/v1/${KS_RESELLER_PREFIX}%(project_id)s"
have = {e.interface: e for e in ks.endpoints.list(service=service)}
for interface in ("public", "internal", "admin"):
    if interface in have and have[interface].url != url:
        ks.endpoints.delete(have.pop(interface))
    if interface not in have:
        ks.endpoints.create(service, url, interface=interface, region="RegionOne")
print("keystone: swift service user, endpoints and test users in place")
EOF
}

# The test user gets a token for the test project, with Swift in its catalog.
keystone_user_works() {
    curl -fsS -m 5 -H 'Content-Type: application/json' "$KS_AUTH_URL/auth/tokens" -d @- <<EOF 2>/dev/null \
        | grep -qF "$PROXY_URL/v1/$KS_RESELLER_PREFIX"
{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "$KS_USER",
  "domain": {"id": "default"}, "password": "$KS_PASSWORD"}}},
 "scope": {"project": {"name": "$KS_PROJECT", "domain": {"id": "default"}}}}}
EOF
}

# What the running Swift was started with: this script and the settings, and whether it
# validates Keystone tokens. A Swift started otherwise is restarted, not reused.
fingerprint() {
    { cat "${BASH_SOURCE[0]}"; echo "$PROXY_PORT $MEMCACHED_PORT ${KS_AUTH_URL:-no-keystone}"; } \
        | sha256sum | cut -d' ' -f1
}

mkdir -p "$SWIFT_DIR" "$RUN" "$LOGDIR"
# One setup at a time (two `make test` at once, say).
exec 9>"$SWIFT_DIR/.lock"
flock -w 600 9 || die "another swift-up.sh holds $SWIFT_DIR/.lock"

command -v curl >/dev/null || die "curl is needed: apt-get install -y curl"
find_keystone

# --- Fast path: already up -------------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && all_running && healthy && tempauth_works \
    && [ "$(cat "$RUN/fingerprint" 2>/dev/null)" = "$(fingerprint)" ]; then
    # Keystone may have been rebuilt meanwhile, without our users and endpoints.
    if [ -n "$KS_AUTH_URL" ] && ! keystone_user_works; then keystone_setup; fi
    write_env
    cat "$ENV_SH"
    log "already up at $PROXY_URL${KS_AUTH_URL:+ (with Keystone at $KS_AUTH_URL)}"
    exit 0
fi

# --- 1. Stop what is left of an earlier start -------------------------------------------------
stop_all
rm -f "$RUN/fingerprint"
: >"$SETUP_LOG"

# --- 2. Install ------------------------------------------------------------------------------
if ! command -v memcached >/dev/null; then
    log "installing memcached (apt)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends memcached >>"$SETUP_LOG" 2>&1; then
        apt-get update >>"$SETUP_LOG" 2>&1 || true
        apt-get install -y --no-install-recommends memcached >>"$SETUP_LOG" 2>&1 \
            || die "apt-get install memcached failed"
    fi
fi

STAMP=$VENV/.abbild-requirements
WANT="$REQUIREMENTS
$CONSTRAINTS"
if ! [ -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    log "creating $VENV with $REQUIREMENTS"
    rm -rf "$VENV"
    "$SWIFT_PYTHON" -m venv "$VENV" >>"$SETUP_LOG" 2>&1 || die "$SWIFT_PYTHON -m venv failed"
    printf '%s\n' "$CONSTRAINTS" >"$SWIFT_DIR/constraints.txt"
    # uv downloads in parallel (pip alone takes about a minute); should uv fail, pip does
    # the same job.
    PIP_ARGS=(--disable-pip-version-check --no-input -q)
    # shellcheck disable=SC2086
    if ! { "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" "$UV" \
        && "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" \
            -c "$SWIFT_DIR/constraints.txt" $REQUIREMENTS; } >>"$SETUP_LOG" 2>&1; then
        log "uv did not manage (see $SETUP_LOG); installing with pip instead (about a minute)"
        "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" \
            -c "$SWIFT_DIR/constraints.txt" $REQUIREMENTS >>"$SETUP_LOG" 2>&1 \
            || die "pip install of $REQUIREMENTS failed"
    fi
    printf '%s' "$WANT" >"$STAMP"
    log "venv ready"
fi

# --- 3. Refuse ports someone else holds ---------------------------------------------------------
for port in "$PROXY_PORT" "$OBJECT_PORT" "$CONTAINER_PORT" "$ACCOUNT_PORT" "$MEMCACHED_PORT"; do
    if port_taken "$port"; then
        die "127.0.0.1:$port is taken by a process this script did not start; stop it (tools/swift-down.sh stops ours)"
    fi
done

# --- 4. Configuration and rings --------------------------------------------------------------------
mkdir -p "$ETC" "$DEVICES/d1"
# Swift of this version reads swift.conf from swift_dir, so nothing goes to /etc/swift.
cat >"$ETC/swift.conf" <<EOF
[swift-hash]
swift_hash_path_prefix = abbild-test-prefix
swift_hash_path_suffix = abbild-test-suffix

[storage-policy:0]
name = Policy-0
default = yes
EOF

# workers = 0: a forked worker dies silently here (its error goes to a syslog that does
# not exist); one process per server is plenty for the tests. log_name + -v below send
# the log to stdout, hence to log/<server>.log.
common() {
    cat <<EOF
[DEFAULT]
swift_dir = $ETC
devices = $DEVICES
mount_check = false
bind_ip = 127.0.0.1
bind_port = $1
workers = 0
log_level = INFO
EOF
}
for kind in account container object; do
    port_var=${kind^^}_PORT
    {
        common "${!port_var}"
        cat <<EOF

[pipeline:main]
pipeline = $kind-server

[app:$kind-server]
use = egg:swift#$kind
EOF
        if [ "$kind" = object ]; then
            echo "allowed_headers = Content-Disposition, Content-Encoding, X-Delete-At, X-Object-Manifest, X-Static-Large-Object"
        fi
    } >"$ETC/$kind-server.conf"
done

if [ -n "$KS_AUTH_URL" ]; then
    AUTH_FILTERS="authtoken keystoneauth tempauth"
else
    AUTH_FILTERS="tempauth"
fi
{
    common "$PROXY_PORT"
    cat <<EOF

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats $AUTH_FILTERS copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT

EOF
    # The filters that need no settings.
    for filter in catch_errors gatekeeper healthcheck listing_formats copy slo dlo; do
        printf '[filter:%s]\nuse = egg:swift#%s\n\n' "$filter" "$filter"
    done
    cat <<EOF
# Accounts AUTH_<name>; tokens AUTH_tk..., which Keystone never issues, so both auth
# systems live side by side.
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
EOF
    if [ -n "$KS_AUTH_URL" ]; then
        cat <<EOF

# delay_auth_decision: a token Keystone does not know (a tempauth one) passes on, marked
# invalid, for tempauth to judge.
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = $KS_AUTH_URL
auth_url = $KS_AUTH_URL
auth_type = password
username = $KS_SERVICE_USER
password = $KS_SERVICE_PASSWORD
project_name = service
user_domain_id = default
project_domain_id = default
delay_auth_decision = true
# Swift's own memcache client (the cache filter's), shared with tempauth.
cache = swift.cache

# Its own account prefix, so that it never claims a tempauth account.
[filter:keystoneauth]
use = egg:swift#keystoneauth
reseller_prefix = $KS_RESELLER_PREFIX
operator_roles = admin, member
EOF
    fi
} >"$ETC/proxy-server.conf"

# Rings: part power 10, one replica, one device each; rebuilt on every start. One Python
# process for all three: swift-ring-builder costs 1-2 s per call.
"$VENV/bin/python" - "$ETC" "$ACCOUNT_PORT" "$CONTAINER_PORT" "$OBJECT_PORT" <<'EOF' >>"$SETUP_LOG" 2>&1 \
    || die "building the rings failed"
import os, sys
from swift.common.ring import RingBuilder
etc, ports = sys.argv[1], dict(zip(("account", "container", "object"), map(int, sys.argv[2:])))
for kind, port in ports.items():
    builder = RingBuilder(10, 1, 1)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": port, "replication_ip": "127.0.0.1",
                     "replication_port": port, "device": "d1", "weight": 1, "meta": ""})
    builder.rebalance()
    builder.get_ring().save(os.path.join(etc, f"{kind}.ring.gz"))
    builder.save(os.path.join(etc, f"{kind}.builder"))
    print(f"{kind} ring: 127.0.0.1:{port}/d1")
EOF

if [ -n "$KS_AUTH_URL" ]; then
    log "registering Swift in Keystone at $KS_AUTH_URL"
    keystone_setup
fi

# --- 5. Start ---------------------------------------------------------------------------------------
log "starting memcached and the swift servers"
spawn memcached "$LOGDIR/memcached.log" memcached -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 64 -u "$(id -un)"
for s in $SERVERS; do
    spawn "$s" "$LOGDIR/$s-server.log" "$(server_program "$s")" "$ETC/$s-server.conf" -v
done

deadline=$((SECONDS + TIMEOUT))
until healthy && tempauth_works; do
    for s in $SERVERS; do
        running_pid "$s" "$(server_program "$s")" >/dev/null || { stop_all; die "swift-$s-server exited during start-up"; }
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
        stop_all
        die "Swift did not answer $PROXY_URL/healthcheck and a tempauth login within ${TIMEOUT}s"
    fi
    sleep 0.2
done

fingerprint >"$RUN/fingerprint"
write_env
cat "$ENV_SH"
log "up at $PROXY_URL${KS_AUTH_URL:+ (with Keystone at $KS_AUTH_URL)}; env in $ENV_SH, logs in $LOGDIR"
