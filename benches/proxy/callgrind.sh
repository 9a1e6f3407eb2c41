#!/usr/bin/env bash
# User-space instructions per HTTP/1.1 request under callgrind, shoal and HAProxy: a figure
# the machine's noise does not move, for judging a change to the request path before the
# timed benchmarks. Each proxy runs with one worker thread under valgrind behind the proxy
# benchmark's nginx backend; wrk -t1 -c10 warms it up, then the counters are zeroed and
# DURATION seconds (15) of wrk are counted. Not part of `benches/run`.
#
#   OUT=/tmp/x benches/proxy/callgrind.sh     # needs valgrind (Debian package `valgrind`)
#
# Prints one line per target and writes them to $OUT/callgrind.txt.
# The whole script is one { } block so that bash parses it completely before running it.
{
set -euo pipefail
# shellcheck disable=SC2034  # ROOT and T are read by lib.sh

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGETS="${TARGETS:-shoal haproxy}"
DURATION="${DURATION:-15}"
# shellcheck source=benches/proxy/lib.sh
. "$HERE/lib.sh"

for tool in valgrind callgrind_control callgrind_annotate wrk nginx; do
  command -v "$tool" >/dev/null || { log "$tool is missing (apt-get install valgrind wrk nginx haproxy)"; exit 1; }
done
check_ports "$BACKEND_PORT" "$SHOAL_PORT" "$SHOAL_ADMIN_PORT" "$HAPROXY_PORT"
start_backend
: >"$OUT/callgrind.txt"

for target in $TARGETS; do
  T=1
  case "$target" in
    shoal) port=$SHOAL_PORT template=shoal.yaml ;;
    haproxy) port=$HAPROXY_PORT template=haproxy.cfg ;;
    *) log "unknown target $target (shoal or haproxy)"; exit 1 ;;
  esac
  conf="$WORK/$target.${template##*.}"
  PROXY_PORT=$port render "$template" >"$conf"
  mkdir -p "$WORK/shoal-state"
  case "$target" in
    shoal) command=("$SHOAL_BIN" up -c "$conf") ;;
    haproxy) command=(haproxy -db -f "$conf") ;;
  esac
  profile="$WORK/callgrind.$target"
  start "$target" "$(cpus_for_proxy 1)" valgrind --tool=callgrind --dump-instr=no \
    --callgrind-out-file="$profile" "${command[@]}"
  pid=$STARTED_PID
  if ! wait_ready "$port" "$pid" 120; then
    log "$target did not come up under valgrind:"
    tail -n 5 "$WORK/$target.log" >&2
    exit 1
  fi
  pinned "$CPU_SIDE" wrk -t1 -c10 -d3s "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  pinned "$CPU_SIDE" wrk -t1 -c10 -d"${DURATION}s" "http://127.0.0.1:$port/" >"$WORK/wrk.$target"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill_group "$pid" 10
  forget_group "$pid"
  requests=$(awk '/requests in/ { print $1 }' "$WORK/wrk.$target")
  # the dump requested above is $profile.1; $profile itself is written at exit
  dump="$profile.1"
  [ -s "$dump" ] || { log "no callgrind dump for $target"; exit 1; }
  instructions=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  line="$target: $requests requests, $instructions instructions, $((instructions / requests)) per request"
  echo "$line" | tee -a "$OUT/callgrind.txt"
done
exit 0
}
