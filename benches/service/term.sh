#!/bin/bash
# Usage: term.sh NODE_BINARY PORT [node flags...]: two 120 s tasks, SIGTERM, time to exit;
# then a second run with SIGTERM + SIGINT. Build first:
#   cargo build --release --features "service cli" --example node --bin weft
# and run e.g. `bash benches/service/term.sh target/release/examples/node 18123`.
bin=$1; port=$2; shift 2
W=${WEFT_CLI:-target/release/weft}
$bin --ephemeral --tcp 127.0.0.1:$port "$@" >/dev/null & pid=$!
until $W --url http://127.0.0.1:$port health >/dev/null 2>&1; do sleep 0.1; done
$W --url http://127.0.0.1:$port submit sleep_ms --args '[120000]' >/dev/null
$W --url http://127.0.0.1:$port submit sleep_ms --args '[120000]' >/dev/null
sleep 1
t0=$(date +%s.%N); kill -TERM $pid
sleep 2; echo "during drain: healthz -> $($W --url http://127.0.0.1:$port health 2>&1)"
wait $pid; rc=$?; t1=$(date +%s.%N)
echo "$bin $*: SIGTERM -> exit $rc after $(echo "$t1 - $t0" | bc) s"
$bin --ephemeral --tcp 127.0.0.1:$port "$@" >/dev/null & pid=$!
until $W --url http://127.0.0.1:$port health >/dev/null 2>&1; do sleep 0.1; done
$W --url http://127.0.0.1:$port submit sleep_ms --args '[120000]' >/dev/null
sleep 1
t0=$(date +%s.%N); kill -TERM $pid; sleep 1; kill -INT $pid
wait $pid; rc=$?; t1=$(date +%s.%N)
echo "$bin $*: SIGTERM, SIGINT 1 s later -> exit $rc after $(echo "$t1 - $t0" | bc) s"
