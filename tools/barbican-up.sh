#!/usr/bin/env bash
# Start a real Barbican (OpenStack Key Manager) on loopback for the signed-image tests
# that keep their certificates in it, authenticating against the Keystone of
# tools/keystone-up.sh (start that first), and print the `export` lines that reach it:
#
#     eval "$(bash tools/barbican-up.sh)"     # or: . "$BARBICAN_DIR/env.sh" afterwards
#
# Barbican gets its own venv under $BARBICAN_DIR (its pins are not ours), an SQLite
# database, the simple_crypto plugin (secrets encrypted with a key in its config), a
# Keystone service user (abbild-barbican, role service on project service) for
# keystonemiddleware, and is served by gunicorn in the background ($BARBICAN_DIR/barbican.pid,
# $BARBICAN_DIR/barbican.log). Idempotent: when it is already up this only prints the
# exports. Progress goes to stderr, exports to stdout (and $BARBICAN_DIR/env.sh). Stop it
# with tools/barbican-down.sh [--purge].
#
# Settings (environment):
#   BARBICAN_DIR            scratch folder: venv, config, database, logs  (/tmp/abbild-barbican)
#   BARBICAN_PORT           port on 127.0.0.1                              (9311)
#   BARBICAN_PYTHON         a Python >= 3.10 to build the venv with        (python3)
#   KEYSTONE_DIR            where keystone-up.sh wrote env.sh               (/tmp/abbild-keystone)
#   BARBICAN_START_TIMEOUT  seconds to wait for GET /                       (60)
set -euo pipefail

BARBICAN_DIR=${BARBICAN_DIR:-/tmp/abbild-barbican}
BARBICAN_PORT=${BARBICAN_PORT:-9311}
BARBICAN_PYTHON=${BARBICAN_PYTHON:-python3}
KEYSTONE_DIR=${KEYSTONE_DIR:-/tmp/abbild-keystone}
BARBICAN_START_TIMEOUT=${BARBICAN_START_TIMEOUT:-60}
URL="http://127.0.0.1:${BARBICAN_PORT}"
SERVICE_USER=abbild-barbican
SERVICE_PASSWORD=abbild-barbican-pw

VENV=$BARBICAN_DIR/venv
ETC=$BARBICAN_DIR/etc
# oslo.config finds barbican.conf in ~/.barbican/: gunicorn runs with HOME=$BARBICAN_DIR
# (barbican parses its configuration on import, without a command line of its own).
CONF=$BARBICAN_DIR/.barbican/barbican.conf
PIDFILE=$BARBICAN_DIR/barbican.pid
LOG=$BARBICAN_DIR/barbican.log
SETUP_LOG=$BARBICAN_DIR/setup.log
ENV_SH=$BARBICAN_DIR/env.sh

# What goes into the venv, all pinned (resolved for barbican 23.0.0 on CPython 3.11), so
# a new upstream release cannot break the tests.
REQUIREMENTS="barbican==23.0.0 gunicorn==27.0.1"
CONSTRAINTS='alembic==1.20.1
amqp==5.4.2
attrs==26.1.0
autopage==0.6.0
bcrypt==5.0.0
cachetools==8.0.2
castellan==5.8.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
cliff==4.17.0
cmd2==4.3.1
cotyledon==2.2.0
cryptography==50.0.2
debtcollector==3.1.0
decorator==5.3.1
dnspython==2.9.2
dogpile.cache==1.5.0
eventlet==0.41.3
fasteners==0.20
futurist==3.5.0
greenlet==3.5.6
idna==3.20
iso8601==2.1.0
Jinja2==3.1.6
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
keystoneauth1==5.18.1
keystonemiddleware==13.0.1
kombu==5.7.0
Mako==1.4.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
microversion_parse==2.1.0
msgpack==1.2.4
netaddr==1.3.0
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
oslo.reports==3.9.0
oslo.serialization==5.11.0
oslo.service==4.8.0
oslo.upgradecheck==2.8.0
oslo.utils==10.2.0
oslo.versionedobjects==3.12.0
packaging==26.4
Paste==3.10.1
PasteDeploy==3.1.0
pbr==7.1.3
pecan==1.8.0
prettytable==3.19.0
prometheus_client==0.26.0
prompt_toolkit==3.0.53
psutil==7.2.2
pycadf==4.1.0
pycparser==3.12
Pygments==2.21.0
PyJWT==2.15.1
pyparsing==3.3.3
pyperclip==1.11.0
python-barbicanclient==7.6.0
python-dateutil==4.0.0
python-keystoneclient==6.0.0
PyYAML==6.0.4
referencing==0.37.0
repoze-lru==0.8
requests==2.34.2
rfc3986==2.0.0
rich==15.0.0
rich-argparse==1.8.0
Routes==2.5.1
rpds-py==2026.9.1
setproctitle==1.3.8
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
wrapt==2.5.2
yappi==1.7.6'

START=$(date +%s.%N)
elapsed() { awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }'; }
log() { printf 'barbican-up [%ss]: %s\n' "$(elapsed)" "$*" >&2; }

die() {
    printf 'barbican-up: ERROR: %s\n' "$*" >&2
    for f in "$SETUP_LOG" "$LOG"; do
        if [ -s "$f" ]; then
            printf -- '--- last 40 lines of %s ---\n' "$f" >&2
            tail -n 40 "$f" >&2
        fi
    done
    exit 1
}
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

# The pid in the pid file, if that process is alive and is our gunicorn (by its working
# directory: setproctitle, in Barbican's venv, renames gunicorn's processes).
running_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$ETC" ] || return 1
    echo "$pid"
}

# GET / answers with Barbican's version document.
answers() {
    "$VENV/bin/python" - "$URL" <<'EOF' 2>/dev/null
import json, sys, urllib.error, urllib.request
try:
    resp = urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError as exc:  # 300 Multiple Choices: the versions
    resp = exc
sys.exit(0 if "versions" in json.load(resp) else 1)
EOF
}

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
    "$VENV/bin/python" - "$BARBICAN_PORT" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

write_env() {
    printf 'export %s=%q\n' BARBICAN_URL "$URL" BARBICAN_DIR "$BARBICAN_DIR" >"$ENV_SH.tmp"
    mv "$ENV_SH.tmp" "$ENV_SH"
}

[ -s "$KEYSTONE_DIR/env.sh" ] || die "no $KEYSTONE_DIR/env.sh: run tools/keystone-up.sh first"
# shellcheck disable=SC1091
. "$KEYSTONE_DIR/env.sh"

FINGERPRINT=$({ cat "${BASH_SOURCE[0]}"; echo "$BARBICAN_PORT $OS_AUTH_URL"; } | sha256sum | cut -d' ' -f1)

mkdir -p "$BARBICAN_DIR"
exec 9>"$BARBICAN_DIR/.lock"
flock -w 600 9 || die "another barbican-up.sh holds $BARBICAN_DIR/.lock"

# --- Fast path: already up ------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && pid=$(running_pid) && answers \
    && [ "$(cat "$BARBICAN_DIR/barbican.fingerprint" 2>/dev/null)" = "$FINGERPRINT" ]; then
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
rm -f "$PIDFILE" "$BARBICAN_DIR/barbican.fingerprint"

# --- 2. The venv ------------------------------------------------------------------------
: >"$SETUP_LOG"
STAMP=$VENV/.abbild-requirements
WANT="$REQUIREMENTS
$CONSTRAINTS"
if ! [ -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    log "creating $VENV with $REQUIREMENTS (about a minute)"
    rm -rf "$VENV"
    "$BARBICAN_PYTHON" -m venv "$VENV" >>"$SETUP_LOG" 2>&1
    printf '%s\n' "$CONSTRAINTS" >"$BARBICAN_DIR/constraints.txt"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -c "$BARBICAN_DIR/constraints.txt" $REQUIREMENTS >>"$SETUP_LOG" 2>&1 \
        || die "pip install of $REQUIREMENTS failed"
    printf '%s' "$WANT" >"$STAMP"
    log "venv ready"
fi

if port_taken; then
    die "127.0.0.1:$BARBICAN_PORT is taken by another process (not $PIDFILE); stop it or set BARBICAN_PORT"
fi

# --- 3. Keystone: the service user keystonemiddleware validates tokens with -------------
log "ensuring the Keystone user $SERVICE_USER"
"$VENV/bin/python" - "$SERVICE_USER" "$SERVICE_PASSWORD" >>"$SETUP_LOG" 2>&1 <<'EOF' || die "cannot create the Keystone user $SERVICE_USER (is Keystone up?)"
import os, sys
from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client

name, password = sys.argv[1:3]
auth = v3.Password(auth_url=os.environ["OS_AUTH_URL"], username=os.environ["OS_USERNAME"],
                   password=os.environ["OS_PASSWORD"], project_name=os.environ["OS_PROJECT_NAME"],
                   user_domain_name="Default", project_domain_name="Default")
ks = client.Client(session=session.Session(auth=auth), interface="public")

def one(manager, name, create, **filters):
    found = [x for x in manager.list(name=name, **filters) if x.name == name]
    return found[0] if found else create()

project = one(ks.projects, "service", lambda: ks.projects.create("service", "default"), domain="default")
role = one(ks.roles, "service", lambda: ks.roles.create("service"))
user = one(ks.users, name, lambda: ks.users.create(name, domain="default", password=password,
                                                   default_project=project), domain="default")
ks.users.update(user, password=password, enabled=True)
ks.roles.grant(role, user=user, project=project)
EOF

# --- 4. Configuration -------------------------------------------------------------------
mkdir -p "$ETC" "$(dirname "$CONF")"
KEK_FILE=$BARBICAN_DIR/kek
[ -s "$KEK_FILE" ] || "$VENV/bin/python" -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' >"$KEK_FILE"
cat >"$CONF.tmp" <<EOF
# Written by tools/barbican-up.sh: a throwaway Barbican for abbild's tests.
[DEFAULT]
db_auto_create = true
host_href = $URL
use_stderr = true

[database]
connection = sqlite:///$BARBICAN_DIR/barbican.sqlite

[secretstore]
enabled_secretstore_plugins = store_crypto

[crypto]
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = $(cat "$KEK_FILE")

[keystone_authtoken]
www_authenticate_uri = $OS_AUTH_URL
auth_url = $OS_AUTH_URL
auth_type = password
username = $SERVICE_USER
password = $SERVICE_PASSWORD
project_name = service
user_domain_id = default
project_domain_id = default

[oslo_policy]
enforce_new_defaults = true
enforce_scope = true
EOF
mv "$CONF.tmp" "$CONF"
# The shipped pipeline, with its files in $ETC instead of /etc/barbican.
sed "s#/etc/barbican/#$ETC/#g" "$VENV/etc/barbican/barbican-api-paste.ini" >"$ETC/barbican-api-paste.ini"
cat >"$ETC/wsgi.py" <<EOF
# Written by tools/barbican-up.sh: barbican.wsgi.api, with the paste file in $ETC.
from paste import deploy

application = deploy.loadapp("config:$ETC/barbican-api-paste.ini")
EOF
cat >"$ETC/gunicorn.conf.py" <<EOF
# Written by tools/barbican-up.sh.
wsgi_app = "wsgi:application"
bind = ["127.0.0.1:$BARBICAN_PORT"]
workers = 1
worker_class = "gthread"
threads = 4
keepalive = 0
timeout = 120
graceful_timeout = 10
pidfile = "$PIDFILE"
control_socket_disable = True
accesslog = "-"
errorlog = "-"
EOF

# --- 5. Serve -------------------------------------------------------------------------------
log "starting gunicorn on 127.0.0.1:$BARBICAN_PORT"
printf '\n=== %s barbican-up.sh starting gunicorn ===\n' "$(date -Is)" >>"$LOG"
(
    # The daemon keeps no descriptor but 0-2 (not our lock, not a caller's pipe).
    for fd in "/proc/$BASHPID/fd/"*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    cd "$ETC" && HOME=$BARBICAN_DIR exec setsid "$VENV/bin/gunicorn"
) >>"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PIDFILE"

deadline=$((SECONDS + BARBICAN_START_TIMEOUT))
until answers; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; die "gunicorn (pid $pid) exited during start-up"; }
    if [ "$SECONDS" -ge "$deadline" ]; then
        stop_running "$pid"
        die "Barbican did not answer GET $URL within ${BARBICAN_START_TIMEOUT}s"
    fi
    sleep 0.25
done

printf '%s\n' "$FINGERPRINT" >"$BARBICAN_DIR/barbican.fingerprint"
write_env
cat "$ENV_SH"
log "up (pid $pid) at $URL; env in $ENV_SH, log in $LOG"
