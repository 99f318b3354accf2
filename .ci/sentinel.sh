#!/usr/bin/env bash
# A private Redis Sentinel set for weft's Sentinel tests (tests/celery_sentinel.rs), on
# loopback: a master, one replica (`replicaof`), three sentinels watching the master
# under one name with quorum 2, a short `down-after-milliseconds` (1000) and
# `failover-timeout` (3000), so that a dead master is replaced within seconds.
#
#   .ci/sentinel.sh start [DIR]   start the set with its files under DIR (default
#                                 target/sentinel); waits until every sentinel sees the
#                                 replica and the two other sentinels; prints the kombu URL
#                                 (sentinel://127.0.0.1:S1;sentinel://127.0.0.1:S2;...)
#   .ci/sentinel.sh stop [DIR]    stop every process of the set started with the same DIR
#                                 (a Redis the tests restarted included) and remove DIR
#   .ci/sentinel.sh name          print the master name (WEFT_SENTINEL_MASTER, default
#                                 weft-master)
#
# Ports: WEFT_SENTINEL_PORT_BASE=P uses P (master), P+1 (replica), P+2..P+4 (sentinels);
# without it the kernel picks free ones. Every process runs daemonized from a config file
# in DIR (sentinels rewrite theirs, and the Redis instances theirs at a failover), with a
# pid file and a log there. Diagnostics go to stderr.
set -euo pipefail

cmd=${1:-}
dir=${2:-target/sentinel}
NAME=${WEFT_SENTINEL_MASTER:-weft-master}
START_TIMEOUT=${WEFT_SENTINEL_START_TIMEOUT:-60}

log() { echo "sentinel.sh: $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Redis (or a sentinel) at port $1 starting from the config file $2 written here.
launch() {
    local port=$1 conf=$2 mode=${3:-}
    redis-server "$conf" $mode >&2
    local deadline=$((SECONDS + START_TIMEOUT))
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then log "port $port did not answer; see $dir"; exit 1; fi
        sleep 0.1
    done
}

start() {
    if [[ -e $dir ]]; then log "$dir exists: stop it first"; exit 1; fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local ports=()
    if [[ -n ${WEFT_SENTINEL_PORT_BASE:-} ]]; then
        for i in 0 1 2 3 4; do ports+=($((WEFT_SENTINEL_PORT_BASE + i))); done
    else
        for _ in 0 1 2 3 4; do ports+=("$(free_port)"); done
    fi
    local master=${ports[0]} replica=${ports[1]}
    for port in "$master" "$replica"; do
        cat >"$dir/redis-$port.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/redis-$port.pid
logfile $dir/redis-$port.log
dir $dir
dbfilename dump-$port.rdb
save ""
appendonly no
EOF
    done
    echo "replicaof 127.0.0.1 $master" >>"$dir/redis-$replica.conf"
    launch "$master" "$dir/redis-$master.conf"
    launch "$replica" "$dir/redis-$replica.conf"
    local url=""
    for port in "${ports[@]:2}"; do
        cat >"$dir/sentinel-$port.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/sentinel-$port.pid
logfile $dir/sentinel-$port.log
dir $dir
sentinel monitor $NAME 127.0.0.1 $master 2
sentinel down-after-milliseconds $NAME 1000
sentinel failover-timeout $NAME 3000
sentinel parallel-syncs $NAME 1
EOF
        launch "$port" "$dir/sentinel-$port.conf" --sentinel
        url+="${url:+;}sentinel://127.0.0.1:$port"
    done
    # Ready once every sentinel knows the replica and the two other sentinels (found by
    # their hello messages, every 2 s) and the replica is in sync.
    local deadline=$((SECONDS + START_TIMEOUT))
    for port in "${ports[@]:2}"; do
        until [[ $(redis-cli -p "$port" sentinel master "$NAME" | paste -sd' ' -) =~ num-slaves\ 1\ .*num-other-sentinels\ 2 ]] &&
            redis-cli -p "$replica" info replication | grep -q 'master_link_status:up'; do
            if ((SECONDS > deadline)); then log "sentinel $port not ready; see $dir"; exit 1; fi
            sleep 0.2
        done
    done
    echo "$url" >"$dir/url"
    echo "$url"
}

stop() {
    [[ -d $dir ]] || return 0
    local pids=()
    for f in "$dir"/sentinel-*.pid "$dir"/redis-*.pid; do
        [[ -f $f ]] || continue
        local pid
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null && pids+=("$pid")
    done
    local deadline=$((SECONDS + 20))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS > deadline)); then kill -KILL "$pid" 2>/dev/null || true; break; fi
            sleep 0.1
        done
    done
    rm -rf "$dir"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    name) echo "$NAME" ;;
    *) echo "usage: $0 start|stop [DIR] | name" >&2; exit 2 ;;
esac
