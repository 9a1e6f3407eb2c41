#!/usr/bin/env bash
# User-space instructions per request under callgrind, shoal and HAProxy: a figure the
# machine's noise does not move, for judging a change to the request path before the timed
# benchmarks. Each proxy runs with one worker thread under valgrind behind the proxy
# benchmark's nginx backend; the client warms it up for 3 seconds, then the counters are
# zeroed and DURATION seconds (15) of load are counted. PROTO picks the client side: http1
# (default; wrk -t1 -c10, the proxy part's configs) or h2 (h2load -t1 -c10 -m5, cleartext
# HTTP/2 with prior knowledge, the HTTP/2 part's configs). CACHE=1 also simulates the caches
# (`--cache-sim=yes`) and adds the L1 misses per request: instructions alone miss that shoal
# needs fewer of them than HAProxy for HTTP/1.1 and is not faster for it. Not part of
# `benches/run`.
#
#   OUT=/tmp/x benches/proxy/callgrind.sh            # needs valgrind (Debian package `valgrind`)
#   OUT=/tmp/x PROTO=h2 benches/proxy/callgrind.sh   # and h2load (`nghttp2-client`)
#   OUT=/tmp/x CACHE=1 benches/proxy/callgrind.sh    # slower still under valgrind
#
# Prints one line per target and writes them to $OUT/callgrind.txt; keeps each profile as
# $OUT/callgrind.TARGET.PROTO for `callgrind_annotate --inclusive=yes`.
# The whole script is one { } block so that bash parses it completely before running it.
{
set -euo pipefail
# shellcheck disable=SC2034  # ROOT and T are read by lib.sh

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGETS="${TARGETS:-shoal haproxy}"
DURATION="${DURATION:-15}"
PROTO="${PROTO:-http1}"
CACHE="${CACHE:-0}"
# shellcheck source=benches/proxy/lib.sh
. "$HERE/lib.sh"

case "$PROTO" in
  http1) client=wrk haproxy_template=haproxy.cfg ready=() client_args=(-t1 -c10) ;;
  h2) client=h2load haproxy_template=h2.haproxy.cfg ready=(--http2-prior-knowledge) client_args=(-t1 -c10 -m5) ;;
  *) log "unknown PROTO $PROTO (http1 or h2)"; exit 1 ;;
esac
for tool in valgrind callgrind_control callgrind_annotate "$client" nginx; do
  command -v "$tool" >/dev/null || { log "$tool is missing (apt-get install valgrind wrk nghttp2-client nginx haproxy)"; exit 1; }
done

check_ports "$BACKEND_PORT" "$SHOAL_PORT" "$SHOAL_ADMIN_PORT" "$HAPROXY_PORT"
start_backend
: >"$OUT/callgrind.txt"

for target in $TARGETS; do
  T=1
  case "$target" in
    shoal) port=$SHOAL_PORT template=shoal.yaml ;;
    haproxy) port=$HAPROXY_PORT template=$haproxy_template ;;
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
    --cache-sim="$([ "$CACHE" = 1 ] && echo yes || echo no)" \
    --callgrind-out-file="$profile" "${command[@]}"
  pid=$STARTED_PID
  if ! wait_ready "$port" "$pid" 120 "${ready[@]}"; then
    log "$target did not come up under valgrind:"
    tail -n 5 "$WORK/$target.log" >&2
    exit 1
  fi
  client_load 3 "$port" /dev/null "${client_args[@]}" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  requests=$(client_load "$DURATION" "$port" "$WORK/$client.$target" "${client_args[@]}")
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill_group "$pid" 10
  forget_group "$pid"
  [ "${requests:-0}" -gt 0 ] || { log "no requests answered by $target ($WORK/$client.$target)"; exit 1; }
  # the dump requested above is $profile.1; $profile itself is written at exit
  dump="$profile.1"
  [ -s "$dump" ] || { log "no callgrind dump for $target"; exit 1; }
  cp "$dump" "$OUT/callgrind.$target.$PROTO"
  # PROGRAM TOTALS: Ir, then with the cache simulated Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw,
  # each count but a zero followed by its percentage
  read -r -a totals < <(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(/,|\([^)]*\)|PROGRAM TOTALS/, ""); print }')
  instructions=${totals[0]}
  line="$target ($PROTO): $requests requests, $instructions instructions, $((instructions / requests)) per request"
  if [ "$CACHE" = 1 ]; then
    line="$line; L1 misses per request: instructions $((totals[3] / requests)), data read $((totals[4] / requests)), data write $((totals[5] / requests))"
  fi
  echo "$line" | tee -a "$OUT/callgrind.txt"
done
exit 0
}
