#!/usr/bin/env bash
# abbild-api under Apache httpd + mod_wsgi on loopback, for tests: mod_wsgi from PyPI
# built against this interpreter (mod_wsgi-express), the machine's Apache, and a
# throwaway config dir (SQLite + a filesystem store) in $ABBILD_APACHE_DIR.
#
# Idempotent: installs what is missing (apache2, apache2-dev, mod_wsgi), and if this
# Apache already runs and answers, leaves it alone. Stop it with tools/apache-down.sh.
#
#   ABBILD_APACHE_DIR   scratch folder (default /tmp/abbild-apache)
#   ABBILD_APACHE_PORT  loopback port (default 9480)
#   PYTHON              the interpreter abbild is installed in (default python3)
#
# Prints ABBILD_APACHE_URL=... and ABBILD_APACHE_DIR=... on success.
set -euo pipefail

DIR=${ABBILD_APACHE_DIR:-/tmp/abbild-apache}
PORT=${ABBILD_APACHE_PORT:-9480}
PYTHON=${PYTHON:-python3}
URL=http://127.0.0.1:$PORT
RUN_AS=www-data  # Apache refuses to serve as root

healthy() { curl -fsS -m 2 "$URL/healthcheck" >/dev/null 2>&1; }

if [ -f "$DIR/server/httpd.pid" ] && kill -0 "$(cat "$DIR/server/httpd.pid")" 2>/dev/null && healthy; then
    echo "ABBILD_APACHE_URL=$URL"; echo "ABBILD_APACHE_DIR=$DIR"; exit 0
fi

# -- install ------------------------------------------------------------------------------
if [ ! -x /usr/sbin/apache2 ] || ! command -v apxs >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends apache2 apache2-dev curl >/dev/null
fi
BIN_DIR=$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')
EXPRESS=$BIN_DIR/mod_wsgi-express
if [ ! -x "$EXPRESS" ]; then
    "$PYTHON" -m pip install -q --disable-pip-version-check mod_wsgi  # compiles against apache2-dev
fi

# -- let the Apache user read the interpreter and the code ----------------------------------
# mod_wsgi's daemon processes run as www-data, which must reach the interpreter (pyenv
# lives in root's 0700 home) and abbild's sources (editable installs point into the
# repo). Only the search (x) bit is added, on folders lacking it, and it stays: taking it
# back would break any other Apache still running from this interpreter.
mkdir -p "$DIR"
# -I: a folder named like a package in the current directory must not shadow it.
paths=$("$PYTHON" -I -c 'import sys, abbild.config, abbild_api; print(sys.prefix, sys.base_prefix, abbild.config.__file__, abbild_api.__file__)')
for path in $paths; do
    dir=$(dirname "$path")
    while [ "$dir" != / ] && [ "$dir" != . ]; do
        if [ "$(stat -c %A "$dir" | cut -c10)" != x ]; then
            chmod o+x "$dir" && echo "apache-up: chmod o+x $dir (for $RUN_AS)" >&2
        fi
        dir=$(dirname "$dir")
    done
done

# -- the config dir: what /etc/abbild holds on a real host ---------------------------------
"$DIR/server/apachectl" stop >/dev/null 2>&1 || true  # a half-started leftover
rm -rf "$DIR/etc" "$DIR/data" "$DIR/server"
mkdir -p "$DIR/etc" "$DIR/data/images" "$DIR/data/cache" "$DIR/data/staging"
cat >"$DIR/etc/abbild-api.conf" <<EOF
[DEFAULT]
enabled_backends = local:filesystem
default_backend = local
# where stage and import keep data on its way to the stores: the server's user writes there
node_staging_uri = file://$DIR/data/staging

[database]
connection = sqlite:///$DIR/data/abbild.sqlite

[paste_deploy]
flavor = noauth

[local]
description = Images in $DIR/data/images
datadir = $DIR/data/images
EOF
# The shipped pipelines; the healthcheck's drain file follows ABBILD_CONFIG_DIR (below).
cp "$("$PYTHON" -I -c 'import abbild_paste.pipeline as p; print(p.SHIPPED_INI)')" "$DIR/etc/abbild-api-paste.ini"
cat >"$DIR/envvars" <<EOF
export ABBILD_CONFIG_DIR=$DIR/etc
export XDG_CACHE_HOME=$DIR/data/cache
export LANG=C.UTF-8 LC_ALL=C.UTF-8
EOF
# Migrate before starting, as an operator would: otherwise every daemon process runs the
# migrations at once, and SQLite answers all but one with "database is locked".
"$PYTHON" -I -m abbild_cmd.cli db sync --config-file "$DIR/etc/abbild-api.conf" >/dev/null
chown -R "$RUN_AS:$RUN_AS" "$DIR/data"
chmod o+x "$DIR"

# -- Apache: the same mod_wsgi settings as etc/apache2/abbild-api.conf ---------------------
# --chunked-request: WSGIChunkedRequest On (uploads of unknown size come chunked);
# --limit-request-body 0: no cap on image size here (abbild enforces image_size_cap);
# --enable-sendfile: downloads through wsgi.file_wrapper go out with sendfile().
"$EXPRESS" setup-server abbild_cmd.wsgi --application-type module \
    --server-root "$DIR/server" --host 127.0.0.1 --port "$PORT" \
    --user "$RUN_AS" --group "$RUN_AS" --processes 2 --threads 8 \
    --chunked-request --limit-request-body 0 --enable-sendfile \
    --request-timeout 600 --socket-timeout 600 --locale C.UTF-8 \
    --envvars-script "$DIR/envvars" --access-log \
    --access-log-format '%h "%r" %>s %B %Dus %{x-openstack-request-id}o' >/dev/null
"$DIR/server/apachectl" start

for _ in $(seq 100); do
    if healthy; then
        echo "ABBILD_APACHE_URL=$URL"; echo "ABBILD_APACHE_DIR=$DIR"; exit 0
    fi
    sleep 0.2
done
echo "apache-up: abbild-api did not answer on $URL within 20 s; $DIR/server/error_log says:" >&2
tail -n 40 "$DIR/server/error_log" >&2 || true
"$DIR/server/apachectl" stop >/dev/null 2>&1 || true
exit 1
