#!/usr/bin/env bash
# Make sure the RabbitMQ broker the notification tests publish to runs on loopback
# (127.0.0.1:5672, guest/guest). Machines of this project's kind come with it installed
# and started; this starts it again if it stopped, and installs it on a bare Debian host,
# set up as those machines are: on loopback only.
set -euo pipefail

answers() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

if ! [ -x /usr/sbin/rabbitmq-server ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    mkdir -p /etc/rabbitmq
    [ -s /etc/rabbitmq/rabbitmq.conf ] || echo "listeners.tcp.local = 127.0.0.1:5672" >/etc/rabbitmq/rabbitmq.conf
    grep -q '^NODENAME=' /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null || cat >>/etc/rabbitmq/rabbitmq-env.conf <<'EOF'
NODENAME=rabbit@localhost
ERL_EPMD_ADDRESS=127.0.0.1
EOF
fi

if ! answers; then
    rabbitmq-server -detached
fi

for _ in $(seq 90); do
    answers && rabbitmq-diagnostics -q ping >/dev/null 2>&1 && exit 0
    sleep 1
done
echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2
exit 1
