#!/usr/bin/env bash
# Make sure the MariaDB and PostgreSQL servers the registry tests use are running on
# loopback. Machines of this project's kind come with both installed and started;
# this starts them again if they stopped, and installs them on a bare Debian host.
set -euo pipefail

if ! command -v mariadbd >/dev/null 2>&1 && ! [ -x /usr/sbin/mariadbd ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
fi
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

if ! mariadb-admin -uroot --connect-timeout=2 ping >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
fi
if ! pg_isready -h 127.0.0.1 -q; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi

for _ in $(seq 60); do
    mariadb-admin -uroot --connect-timeout=2 ping >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -q && exit 0
    sleep 1
done
echo "MariaDB or PostgreSQL did not come up on 127.0.0.1" >&2
exit 1
