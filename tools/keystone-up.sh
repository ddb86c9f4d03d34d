#!/usr/bin/env bash
# Start a real Keystone (OpenStack Identity v3) on loopback for the tests that need real
# tokens, and print the `export` lines that reach it:
#
#     eval "$(bash tools/keystone-up.sh)"     # or: . "$KEYSTONE_DIR/env.sh" afterwards
#
# Keystone gets its own venv under $KEYSTONE_DIR (its pins are not ours), its database
# on the machine's MariaDB, fernet tokens, and is served by gunicorn in the background
# ($KEYSTONE_DIR/keystone.pid, $KEYSTONE_DIR/keystone.log). Idempotent: when it is
# already up this only prints the exports. Progress goes to stderr, exports to stdout
# (and $KEYSTONE_DIR/env.sh). Stop it with tools/keystone-down.sh [--purge].
#
# Settings (environment):
#   KEYSTONE_DIR             scratch folder: venv, config, keys, logs  (/tmp/abbild-keystone)
#   KEYSTONE_PORT            port on 127.0.0.1                          (5000)
#   KEYSTONE_PYTHON          a Python >= 3.11 to build the venv with    (python3)
#   KEYSTONE_DB_URL          SQLAlchemy URL of its database; created if missing
#                            (mysql+pymysql://root@127.0.0.1:3306/abbild_keystone?charset=utf8)
#   KEYSTONE_ADMIN_PASSWORD  the bootstrap admin's password             (abbild-admin)
#   KEYSTONE_START_TIMEOUT   seconds to wait for GET /v3                (60)
set -euo pipefail

KEYSTONE_DIR=${KEYSTONE_DIR:-/tmp/abbild-keystone}
KEYSTONE_PORT=${KEYSTONE_PORT:-5000}
KEYSTONE_PYTHON=${KEYSTONE_PYTHON:-python3}
KEYSTONE_DB_URL=${KEYSTONE_DB_URL:-mysql+pymysql://root@127.0.0.1:3306/abbild_keystone?charset=utf8}
KEYSTONE_ADMIN_PASSWORD=${KEYSTONE_ADMIN_PASSWORD:-abbild-admin}
KEYSTONE_START_TIMEOUT=${KEYSTONE_START_TIMEOUT:-60}
REGION=RegionOne
URL="http://127.0.0.1:${KEYSTONE_PORT}/v3"

VENV=$KEYSTONE_DIR/venv
ETC=$KEYSTONE_DIR/etc
CONF=$ETC/keystone.conf
PIDFILE=$KEYSTONE_DIR/keystone.pid
LOG=$KEYSTONE_DIR/keystone.log
SETUP_LOG=$KEYSTONE_DIR/setup.log
ENV_SH=$KEYSTONE_DIR/env.sh

# What goes into the venv. Everything is pinned (this set was resolved for keystone 30.0.0
# on CPython 3.11 and tested), so a new upstream release cannot break the tests; all of it
# comes as manylinux wheels, so nothing is compiled.
REQUIREMENTS="keystone==30.0.0 gunicorn==27.0.1 PyMySQL==1.2.4"
UV="uv==0.13.9"
CONSTRAINTS='alembic==1.20.1
amqp==5.4.2
aniso8601==10.0.1
attrs==26.1.0
bcrypt==5.0.0
blinker==1.9.0
cachetools==8.0.2
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
cryptography==50.0.2
debtcollector==3.1.0
decorator==5.3.1
defusedxml==0.7.1
dnspython==2.9.2
dogpile.cache==1.5.0
elementpath==4.8.0
eventlet==0.41.3
fasteners==0.20
Flask==3.1.3
Flask-RESTful==0.3.10
futurist==3.5.0
greenlet==3.5.6
gunicorn==27.0.1
idna==3.20
iso8601==2.1.0
itsdangerous==2.2.0
Jinja2==3.1.6
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
keystone==30.0.0
keystoneauth1==5.18.1
keystonemiddleware==13.0.1
kombu==5.7.0
Mako==1.4.3
MarkupSafe==3.0.4
msgpack==1.2.4
netaddr==1.3.0
oauthlib==4.0.1
os-service-types==1.9.0
oslo.cache==4.3.0
oslo.concurrency==7.6.1
oslo.config==10.7.0
oslo.context==6.5.0
oslo.db==18.1.1
oslo.i18n==6.9.0
oslo.log==8.3.2
oslo.messaging==18.3.1
oslo.metrics==0.17.0
oslo.middleware==8.2.0
oslo.policy==6.0.1
oslo.serialization==5.11.0
oslo.service==4.8.0
oslo.upgradecheck==2.8.0
oslo.utils==10.2.0
osprofiler==4.4.0
packaging==26.4
Paste==3.10.1
PasteDeploy==3.1.0
pbr==7.1.3
prettytable==3.18.0
prometheus_client==0.26.0
psutil==7.2.2
pycadf==4.1.0
pycparser==3.12
PyJWT==2.15.1
PyMySQL==1.2.4
pyOpenSSL==26.4.0
pyparsing==3.3.3
pysaml2==7.5.5
python-dateutil==4.0.0
python-keystoneclient==6.0.0
pytz==2026.6
PyYAML==6.0.4
referencing==0.37.0
repoze-lru==0.8
requests==2.34.2
rfc3986==2.0.0
Routes==2.5.1
rpds-py==2026.9.1
six==1.17.0
SQLAlchemy==2.1.9
statsd==4.0.1
stevedore==5.10.0
testresources==2.1.2
testscenarios==0.7.0
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
vine==5.1.0
wcwidth==0.9.4
WebOb==1.8.11
Werkzeug==3.1.9
wrapt==2.5.2
xmlschema==2.5.1
yappi==1.7.6'

START=$(date +%s.%N)
elapsed() { awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }'; }
log() { printf 'keystone-up [%ss]: %s\n' "$(elapsed)" "$*" >&2; }

die() {
    printf 'keystone-up: ERROR: %s\n' "$*" >&2
    for f in "$SETUP_LOG" "$LOG"; do
        if [ -s "$f" ]; then
            printf -- '--- last 40 lines of %s ---\n' "$f" >&2
            tail -n 40 "$f" >&2
        fi
    done
    exit 1
}
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

# The pid in the pid file, if that process is alive and is our gunicorn.
running_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$VENV/bin/gunicorn" || return 1
    echo "$pid"
}

# GET /v3 answers 200 with a version document.
answers() {
    "$VENV/bin/python" - "$URL" <<'EOF' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as resp:
    sys.exit(0 if resp.status == 200 and "version" in json.load(resp) else 1)
EOF
}

# Stop our gunicorn (TERM, then KILL its whole session after 10 s).
stop_running() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

port_taken() {
    "$VENV/bin/python" - "$KEYSTONE_PORT" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

write_env() {
    local tmp=$ENV_SH.tmp
    {
        printf 'export %s=%q\n' \
            OS_AUTH_URL "$URL" \
            OS_AUTH_TYPE password \
            OS_IDENTITY_API_VERSION 3 \
            OS_USERNAME admin \
            OS_PASSWORD "$KEYSTONE_ADMIN_PASSWORD" \
            OS_PROJECT_NAME admin \
            OS_USER_DOMAIN_NAME Default \
            OS_PROJECT_DOMAIN_NAME Default \
            OS_REGION_NAME "$REGION" \
            KEYSTONE_DIR "$KEYSTONE_DIR"
    } >"$tmp"
    mv "$tmp" "$ENV_SH"
}

# What the running Keystone was started with: this script (its pins and config templates)
# and the settings. A Keystone started otherwise is restarted, not reused.
FINGERPRINT=$({ cat "${BASH_SOURCE[0]}"; echo "$KEYSTONE_PORT $KEYSTONE_DB_URL $KEYSTONE_ADMIN_PASSWORD"; } | sha256sum | cut -d' ' -f1)

mkdir -p "$KEYSTONE_DIR"
# One setup at a time (two `make test` at once, say).
exec 9>"$KEYSTONE_DIR/.lock"
flock -w 600 9 || die "another keystone-up.sh holds $KEYSTONE_DIR/.lock"

# --- Fast path: already up ------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && pid=$(running_pid) && answers \
    && [ "$(cat "$KEYSTONE_DIR/keystone.fingerprint" 2>/dev/null)" = "$FINGERPRINT" ]; then
    write_env
    cat "$ENV_SH"
    log "already up (pid $pid) at $URL"
    exit 0
fi

# --- 1. Stop one that does not answer, or was started with other settings --------------
if pid=$(running_pid); then
    log "pid $pid is running but does not answer at $URL, or was started with other settings; stopping it"
    stop_running "$pid"
fi
rm -f "$PIDFILE" "$KEYSTONE_DIR/keystone.fingerprint"

# --- 2. The venv ------------------------------------------------------------------------
: >"$SETUP_LOG"
STAMP=$VENV/.abbild-requirements
WANT="$REQUIREMENTS
$CONSTRAINTS"
if ! [ -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    "$KEYSTONE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "keystone 30 needs Python >= 3.11; set KEYSTONE_PYTHON (now: $KEYSTONE_PYTHON)"
    log "creating $VENV with $REQUIREMENTS"
    rm -rf "$VENV"
    "$KEYSTONE_PYTHON" -m venv "$VENV" >>"$SETUP_LOG" 2>&1
    printf '%s\n' "$CONSTRAINTS" >"$KEYSTONE_DIR/constraints.txt"
    # uv downloads in parallel: about 15 s from cold caches, against 45-55 s for pip. Should
    # uv fail, pip does the same job.
    PIP_ARGS=(--disable-pip-version-check --no-input -q)
    # shellcheck disable=SC2086
    if "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" "$UV" >>"$SETUP_LOG" 2>&1 \
        && "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" \
            -c "$KEYSTONE_DIR/constraints.txt" $REQUIREMENTS >>"$SETUP_LOG" 2>&1; then
        :
    else
        log "uv did not manage (see $SETUP_LOG); installing with pip instead (about 50 s)"
        # shellcheck disable=SC2086
        "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" \
            -c "$KEYSTONE_DIR/constraints.txt" $REQUIREMENTS >>"$SETUP_LOG" 2>&1 \
            || die "pip install of $REQUIREMENTS failed"
    fi
    printf '%s' "$WANT" >"$STAMP"
    log "venv ready"
fi

# --- 3. Refuse a port someone else holds -----------------------------------------------
if port_taken; then
    die "127.0.0.1:$KEYSTONE_PORT is taken by another process (not $PIDFILE); stop it or set KEYSTONE_PORT"
fi

# --- 4. Configuration -------------------------------------------------------------------
mkdir -p "$ETC"
cat >"$CONF.tmp" <<EOF
# Written by tools/keystone-up.sh: a throwaway Keystone for abbild's tests.
[DEFAULT]
debug = false
use_stderr = true

[database]
connection = $KEYSTONE_DB_URL

[token]
provider = fernet

[fernet_tokens]
key_repository = $KEYSTONE_DIR/fernet-keys

[fernet_receipts]
key_repository = $KEYSTONE_DIR/fernet-keys

[credential]
key_repository = $KEYSTONE_DIR/credential-keys

[cache]
# Without a cache every authenticated request costs about 200 SQL queries (0.5 s); with
# it, a few ms. The in-memory cache is only coherent within one process (invalidations,
# revocations), hence one gunicorn worker below.
enabled = true
backend = dogpile.cache.memory

[identity]
# bcrypt's lowest cost: tests create many users.
password_hash_rounds = 4

[oslo_policy]
enforce_new_defaults = true
enforce_scope = true
EOF
mv "$CONF.tmp" "$CONF"

# --- 5. Database, keys, bootstrap -----------------------------------------------------------
log "creating the database if missing"
"$VENV/bin/python" - "$KEYSTONE_DB_URL" >>"$SETUP_LOG" 2>&1 <<'EOF' || die "cannot create the database of $KEYSTONE_DB_URL (is MariaDB up? tools/start-sql-servers.sh)"
import sys
import pymysql
from sqlalchemy.engine import make_url
url = make_url(sys.argv[1])
if url.get_backend_name() != "mysql":
    raise SystemExit(f"only MySQL/MariaDB URLs are supported here, not {url.drivername}")
conn = pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                       user=url.username or "root", password=url.password or "", connect_timeout=5)
with conn.cursor() as cur:
    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8")
conn.close()
EOF

manage() { "$VENV/bin/keystone-manage" --config-file "$CONF" "$@" >>"$SETUP_LOG" 2>&1; }

log "keystone-manage db_sync"
manage db_sync || die "keystone-manage db_sync failed"
if ! [ -d "$KEYSTONE_DIR/fernet-keys" ]; then
    manage fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)" \
        || die "keystone-manage fernet_setup failed"
fi
if ! [ -d "$KEYSTONE_DIR/credential-keys" ]; then
    manage credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)" \
        || die "keystone-manage credential_setup failed"
fi
log "keystone-manage bootstrap"
manage bootstrap \
    --bootstrap-username admin \
    --bootstrap-password "$KEYSTONE_ADMIN_PASSWORD" \
    --bootstrap-project-name admin \
    --bootstrap-role-name admin \
    --bootstrap-service-name keystone \
    --bootstrap-region-id "$REGION" \
    --bootstrap-admin-url "$URL" \
    --bootstrap-internal-url "$URL" \
    --bootstrap-public-url "$URL" \
    || die "keystone-manage bootstrap failed"

# --- 6. Serve -------------------------------------------------------------------------------
# gunicorn takes all its settings from gunicorn.conf.py in its working directory, so that
# its command line is bare: keystone hands sys.argv to oslo.config, which rejects any
# gunicorn option. One worker process (see [cache]) with 8 threads. Keep-alive off: every
# response says "Connection: close", so no client reuses a socket the server is about
# to drop.
cat >"$ETC/gunicorn.conf.py" <<EOF
# Written by tools/keystone-up.sh.
wsgi_app = "keystone.wsgi.api:application"
bind = ["127.0.0.1:$KEYSTONE_PORT"]
workers = 1
worker_class = "gthread"
threads = 8
keepalive = 0
timeout = 120
graceful_timeout = 10
pidfile = "$PIDFILE"
control_socket_disable = True
accesslog = "-"
errorlog = "-"
raw_env = ["OS_KEYSTONE_CONFIG_DIR=$ETC"]


def post_worker_init(worker):
    """Serve a request of each kind in-process before any client may: keystone sets up its
    policy enforcer on first use without a lock, and concurrent first requests then get
    403s and 500s (AttributeError: _warning_emitted). Best effort: a failure is logged."""
    import os
    from werkzeug.test import Client

    client = Client(worker.wsgi)
    user = {"name": "admin", "domain": {"id": "default"}, "password": os.environ.get("KEYSTONE_WARMUP_PASSWORD", "")}
    scope = {"project": {"name": "admin", "domain": {"id": "default"}}}
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": user}}, "scope": scope}}
    try:
        resp = client.post("/v3/auth/tokens", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"POST /v3/auth/tokens: {resp.status_code}")
        token = resp.headers["X-Subject-Token"]
        for path in ("/v3/roles?name=admin", "/v3/users?name=admin", "/v3/projects?name=admin", "/v3/auth/tokens"):
            resp = client.get(path, headers={"X-Auth-Token": token, "X-Subject-Token": token})
            if resp.status_code != 200:
                raise RuntimeError(f"GET {path}: {resp.status_code}")
        worker.log.info("keystone warmed up")
    except Exception as exc:  # noqa: BLE001
        worker.log.warning("keystone warm-up failed (first concurrent requests may fail): %s", exc)
EOF
log "starting gunicorn on 127.0.0.1:$KEYSTONE_PORT"
printf '\n=== %s keystone-up.sh starting gunicorn ===\n' "$(date -Is)" >>"$LOG"
(
    # The daemon keeps no descriptor but 0-2: not our lock (fd 9), which would block every
    # later keystone-up.sh, nor a caller's pipe, which would keep `$(...)` waiting.
    for fd in "/proc/$BASHPID/fd/"*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    cd "$ETC" && OS_KEYSTONE_CONFIG_DIR=$ETC KEYSTONE_WARMUP_PASSWORD=$KEYSTONE_ADMIN_PASSWORD \
        exec setsid "$VENV/bin/gunicorn"
) >>"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PIDFILE"

deadline=$((SECONDS + KEYSTONE_START_TIMEOUT))
until answers; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; die "gunicorn (pid $pid) exited during start-up"; }
    if [ "$SECONDS" -ge "$deadline" ]; then
        stop_running "$pid"
        die "Keystone did not answer GET $URL within ${KEYSTONE_START_TIMEOUT}s"
    fi
    sleep 0.25
done

printf '%s\n' "$FINGERPRINT" >"$KEYSTONE_DIR/keystone.fingerprint"
write_env
cat "$ENV_SH"
log "up (pid $pid) at $URL; env in $ENV_SH, log in $LOG"
