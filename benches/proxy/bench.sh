#!/usr/bin/env bash
# The proxy benchmark: one nginx backend, wrk as the client, and for each thread count and
# round the targets direct / shoal / haproxy / nginx (as a proxy) / haproxy-fwd / nginx-fwd
# (the two peers doing shoal's header work too), in an order that rotates every round. Run by benches/run; can be run alone:
#
#   OUT=/tmp/x benches/proxy/bench.sh        # SHOAL_BIN=the release build by default
#
# Writes $OUT/rounds.tsv (one line per measured run) and $OUT/proxy.md (the report section).
# Every process it starts runs in its own process group and is killed on exit, even on
# failure; its temporary directory is removed.
# The whole script is one { } block so that bash parses it completely before running it:
# editing the file while it runs cannot derail a run in progress.
{
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

THREADS="${THREADS:-1 2}"
TARGETS="${TARGETS:-direct shoal haproxy nginx haproxy-fwd nginx-fwd}"
CONNECTIONS="${CONNECTIONS:-50}"
WRK_THREADS="${WRK_THREADS:-2}"
# shellcheck source=benches/proxy/lib.sh
. "$HERE/lib.sh"

# --- the backend -------------------------------------------------------------------------
check_ports "$BACKEND_PORT" "$SHOAL_PORT" "$SHOAL_ADMIN_PORT" "$HAPROXY_PORT" "$NGINX_PORT"
start_backend

# --- one target --------------------------------------------------------------------------
# start_target TARGET THREADS: sets TARGET_PID (empty for direct), TARGET_PORT, or returns
# non-zero with START_ERROR set.
start_target() {
  local target="$1"
  T="$2"
  TARGET_PID=""
  START_ERROR=""
  case "$target" in
    direct)
      TARGET_PORT=$BACKEND_PORT
      return 0
      ;;
    shoal) TARGET_PORT=$SHOAL_PORT ;;
    haproxy*) TARGET_PORT=$HAPROXY_PORT ;;
    nginx*) TARGET_PORT=$NGINX_PORT ;;
  esac
  FORWARD_HEADERS="$(forward_headers_of "$target")" \
    start_proxy "$target" "$(template_of "$target")" "$T" "$TARGET_PORT" http || return 1
  check_forwarding "$target" "$TARGET_PORT"
}
template_of() { case "$1" in shoal) echo shoal.yaml ;; haproxy*) echo haproxy.cfg ;; nginx*) echo proxy.nginx.conf ;; esac; }

# run_wrk TARGET THREADS ROUND: one measured run, appends a line to rounds.tsv
ROUNDS_TSV="$OUT/rounds.tsv"
printf 'threads\ttarget\tround\tstatus\trps\tp50_ms\tp99_ms\trequests\tnon2xx\tsocket_errors\tproxy_cpu\trss_idle_kb\trss_peak_kb\tnote\tother_cpu\n' >"$ROUNDS_TSV"

row() { # threads target round status rps p50 p99 requests non2xx sockerr cpu idle peak note
  # "-" marks an empty field (bash's read would merge consecutive tabs)
  local out="" f
  for f in "$@"; do out="$out${out:+$'\t'}${f:--}"; done
  printf '%s\n' "$out" >>"$ROUNDS_TSV"
}

measure() {
  local target="$1" t="$2" round="$3" url rc rss_idle="" rss_peak="" cpu="" note="" others
  if ! start_target "$target" "$t"; then
    log "  $target (threads $t, round $round): FAILED to start: $START_ERROR"
    row "$t" "$target" "$round" failed "" "" "" "" "" "" "" "" "" "start: $START_ERROR" ""
    return 0
  fi
  url="http://127.0.0.1:$TARGET_PORT/"
  # shoal's peak RSS is the kernel's high-water mark after the run: a sampler polling it
  # during the run forked pgrep and awk five times a second, which lengthened the tail
  # latency wrk saw (p99 ~3 ms instead of ~1.3 for any target, and it ran for shoal only).
  if [ "$target" = shoal ]; then rss_idle=$(vm_kb "$TARGET_PID" VmRSS); fi
  # warm-up (discarded), then the measured run
  pinned "$CPU_SIDE" timeout $((WARMUP + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >"$WORK/warmup.out" 2>&1 || true
  cpu_begin
  rc=0
  pinned "$CPU_SIDE" timeout $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$WORK/wrk.out" 2>&1 || rc=$?
  cpu_end "$DURATION"
  cpu=$PROXY_CPU
  others=$OTHER_CPU
  if [ "$target" = shoal ]; then rss_peak=$(vm_kb "$TARGET_PID" VmHWM); fi
  local alive=1
  if [ -n "$TARGET_PID" ] && ! kill -0 "$TARGET_PID" 2>/dev/null; then alive=0; fi
  cp "$WORK/wrk.out" "$OUT/wrk-t$t-$target-r$round.txt"
  stop_target
  # keep what the proxy said (its log is overwritten by the next start)
  [ -s "$WORK/$target.log" ] && cp "$WORK/$target.log" "$OUT/log-t$t-$target-r$round.txt"

  wrk_result "$WORK/wrk.out" "$rc"
  local rps=$WRK_RPS p50=$WRK_P50 p99=$WRK_P99 reqs=$WRK_REQS non2xx=$WRK_NON2XX sockerr=$WRK_SOCKERR status=$WRK_STATUS
  note=$WRK_NOTE
  if [ "$alive" = 0 ]; then status=failed; note="${note:+$note; }$target died during the run"; fi
  row "$t" "$target" "$round" "$status" "$rps" "$p50" "$p99" "${reqs:-0}" "$non2xx" "$sockerr" "$cpu" "$rss_idle" "$rss_peak" "$note" "$others"
  log "  $target (threads $t, round $round): $status rps=${rps:-?} p50=${p50:-?}ms p99=${p99:-?}ms cpu=${cpu:-n/a} others=${others}${rss_peak:+ rss ${rss_idle}->${rss_peak} kB}${note:+ ($note)}"
}

run_rounds ""

# configs as run (threads placeholder left as N)
T=N PROXY_PORT=$HAPROXY_PORT render haproxy.cfg >"$OUT/haproxy.cfg"
T=N PROXY_PORT=$NGINX_PORT render proxy.nginx.conf >"$OUT/proxy.nginx.conf"
cp "$HERE/haproxy.forward.cfg" "$HERE/nginx.forward.conf" "$OUT/"
T=N PROXY_PORT=$SHOAL_PORT render shoal.yaml >"$OUT/shoal.yaml"

cat >"$OUT/meta.env" <<EOF
ROUNDS=$ROUNDS
DURATION=$DURATION
WARMUP=$WARMUP
THREADS="$THREADS"
TARGETS="$TARGETS"
CONNECTIONS=$CONNECTIONS
WRK_THREADS=$WRK_THREADS
PIN=$PIN
NICE=$NICE
CPU_SIDE=$CPU_SIDE
LOAD_BEFORE="$LOAD_BEFORE"
LOAD_AFTER="$LOAD_AFTER"
ELAPSED=$ELAPSED
WORK=$WORK
BACKEND_PORT=$BACKEND_PORT
SHOAL_PORT=$SHOAL_PORT
HAPROXY_PORT=$HAPROXY_PORT
NGINX_PORT=$NGINX_PORT
EOF
"$HERE/report.sh" "$OUT" >"$OUT/proxy.md"
log "proxy benchmark done in ${ELAPSED}s"
exit
}
