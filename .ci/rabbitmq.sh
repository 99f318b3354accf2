#!/usr/bin/env bash
# A private RabbitMQ broker for weft's AMQP tests, on free loopback ports.
#
#   .ci/rabbitmq.sh start [DIR]   start a broker with its state under DIR (default
#                                 target/rabbitmq); prints its AMQP URL on stdout
#                                 (amqp://guest:guest@127.0.0.1:PORT/%2f)
#   .ci/rabbitmq.sh stop [DIR]    stop the broker started with the same DIR
#   .ci/rabbitmq.sh url [DIR]     print the URL of the running broker
#   .ci/rabbitmq.sh ctl DIR ARGS  run rabbitmqctl ARGS against that broker (tests use it
#                                 to close a worker's connection)
#
# Each start makes a fresh node (`weft-ci-<pid>@localhost`) with its own mnesia, log,
# cookie (HOME=DIR/home) and config, no plugins (no management), AMQP listening on
# 127.0.0.1 only, and the Erlang distribution port picked free as well. The broker runs as
# the calling user (root included: the Debian wrapper in /usr/sbin that switches to the
# `rabbitmq` user is bypassed). Installs rabbitmq-server with apt-get when it is missing.
# Diagnostics go to stderr; DIR/log holds the broker's logs, DIR/stdout its console.
set -euo pipefail

cmd=${1:-}
dir=${2:-target/rabbitmq}
START_TIMEOUT=${WEFT_RABBITMQ_START_TIMEOUT:-120}

log() { echo "rabbitmq.sh: $*" >&2; }

bin_dir() {
    # The real scripts, not the Debian su-wrappers in /usr/sbin.
    local d
    for d in /usr/lib/rabbitmq/bin /usr/local/lib/rabbitmq/bin; do
        [[ -x $d/rabbitmq-server ]] && { echo "$d"; return; }
    done
    return 1
}

ensure_installed() {
    if ! bin_dir >/dev/null; then
        log "rabbitmq-server missing: installing with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y rabbitmq-server >&2 || { apt-get update >&2 && apt-get install -y rabbitmq-server >&2; }
        # The package starts a system broker on 5672; ours does not need it.
        (service rabbitmq-server stop || true) >/dev/null 2>&1
    fi
}

# A TCP port that nobody listens on now (the kernel picks it).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Is something accepting on 127.0.0.1:$1?
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

env_for() {
    # The environment of the broker and of rabbitmqctl for the node in $dir.
    local d=$1
    export HOME="$d/home"
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(cat "$d/nodename")
    export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
}

start() {
    ensure_installed
    local bin; bin=$(bin_dir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        log "a broker from $dir is still running (pid $(cat "$dir/pid")): stopping it first"
        stop
    fi
    rm -rf "$dir/mnesia" "$dir/log" "$dir/home" "$dir/url" "$dir/pid"
    mkdir -p "$dir/mnesia" "$dir/log" "$dir/home"
    # Our own cookie: never touch the user's ~/.erlang.cookie.
    head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie"
    chmod 400 "$dir/home/.erlang.cookie"

    local port dist node
    port=$(free_port)
    dist=$(free_port)
    while [[ $dist == "$port" ]]; do dist=$(free_port); done
    node="weft-ci-$$@localhost"
    echo "$node" >"$dir/nodename"
    echo '[].' >"$dir/enabled_plugins"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users.guest = true
log.console = false
log.file.level = info
EOF
    # Empty env file: /etc/rabbitmq/rabbitmq-env.conf must not override ours.
    : >"$dir/rabbitmq-env.conf"
    export RABBITMQ_NODENAME=$node
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$port
    export RABBITMQ_DIST_PORT=$dist
    export RABBITMQ_MNESIA_BASE=$dir/mnesia
    export RABBITMQ_LOG_BASE=$dir/log
    export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
    export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
    export RABBITMQ_ENABLED_PLUGINS=""
    export RABBITMQ_PLUGINS_EXPAND_DIR=$dir/plugins-expand
    export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
    export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
    export RABBITMQ_PID_FILE=$dir/rabbit.pid
    export HOME=$dir/home
    local t0=$SECONDS
    (cd "$dir" && exec setsid "$bin/rabbitmq-server" </dev/null >"$dir/stdout" 2>&1) &
    local pid=$!
    echo "$pid" >"$dir/pid"
    # Ready when the AMQP port accepts and the node says so.
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the broker exited during start; its output:"
            tail -n 40 "$dir/stdout" >&2 || true
            exit 1
        fi
        if port_open "$port" && "$bin/rabbitmq-diagnostics" -q -n "$node" check_port_connectivity >/dev/null 2>&1; then
            break
        fi
        if ((SECONDS - t0 > START_TIMEOUT)); then
            log "no answer on port $port after ${START_TIMEOUT}s; its output:"
            tail -n 40 "$dir/stdout" >&2 || true
            stop
            exit 1
        fi
        sleep 0.5
    done
    local url="amqp://guest:guest@127.0.0.1:$port/%2f"
    echo "$url" >"$dir/url"
    log "node $node up on port $port (dist $dist) in $((SECONDS - t0))s"
    echo "$url"
}

stop() {
    [[ -d $dir ]] || { log "no $dir"; return 0; }
    dir=$(cd "$dir" && pwd)
    [[ -f $dir/nodename ]] || { log "no broker in $dir"; return 0; }
    local bin; bin=$(bin_dir)
    local pid=""
    [[ -f $dir/pid ]] && pid=$(cat "$dir/pid")
    (
        env_for "$dir"
        "$bin/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" shutdown >/dev/null 2>&1 ||
            "$bin/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true
    )
    if [[ -n $pid ]]; then
        local i
        for ((i = 0; i < 60; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "broker pid $pid still alive: killing its process group"
            kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        fi
    fi
    # The Erlang VM itself (beam), in case the wrapper went first.
    if [[ -f $dir/rabbit.pid ]]; then
        local beam; beam=$(cat "$dir/rabbit.pid")
        if [[ -n $beam ]] && kill -0 "$beam" 2>/dev/null; then kill "$beam" 2>/dev/null || true; fi
    fi
    rm -f "$dir/pid" "$dir/url" "$dir/rabbit.pid"
    log "stopped"
}

ctl() {
    # rabbitmqctl against the node in $dir, with the remaining arguments.
    dir=$(cd "$dir" && pwd)
    local bin; bin=$(bin_dir)
    env_for "$dir"
    "$bin/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" "$@"
}

case $cmd in
start) start ;;
stop) stop ;;
url) cat "$dir/url" ;;
ctl) shift 2; ctl "$@" ;;
*)
    echo "usage: $0 start|stop|url [DIR] | ctl DIR ARGS..." >&2
    exit 2
    ;;
esac
