#!/usr/bin/env bash
# The proxy memory benchmark: shoal (and, for comparison, HAProxy and nginx) configured with
# MEM_SERVICES (10) HTTP listeners, each in front of its own service (upstream group) on the
# proxy part's nginx backend. Resident memory idle (after one request through every
# listener) and under the proxy part's load (wrk, 50 connections, on the first listener),
# at 1 and 2 worker threads. Run by benches/run; can be run alone:
#
#   OUT=/tmp/x benches/proxy/memory.sh        # SHOAL_BIN=the release build by default
#
# Environment (besides lib.sh's ROUNDS, DURATION, WARMUP, BENCH_PORT, PIN, NICE): THREADS
# ("1 2"), MEM_TARGETS ("shoal haproxy nginx"), MEM_SERVICES (10), CONNECTIONS (50),
# WRK_THREADS (2). The listeners take the ports BENCH_PORT+5 and up.
# Writes $OUT/rounds.tsv, $OUT/memory.md (the report section) and $OUT/history.txt (its History line).
# The whole script is one { } block so that bash parses it completely before running it.
{
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
THREADS="${THREADS:-1 2}"
TARGETS="${MEM_TARGETS:-shoal haproxy nginx}"
SERVICES="${MEM_SERVICES:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
WRK_THREADS="${WRK_THREADS:-2}"
# shellcheck source=benches/proxy/lib.sh
. "$HERE/lib.sh"

FIRST_PORT=$((BENCH_PORT + 5))
PORTS=()
for ((i = 0; i < SERVICES; i++)); do PORTS+=($((FIRST_PORT + i))); done
check_ports "$BACKEND_PORT" "$SHOAL_ADMIN_PORT" "${PORTS[@]}"
start_backend

# --- configs: the proxy part's, with SERVICES listeners and services ----------------------
{
  cat <<'EOF'
# shoal with one listener per service (@THREADS@ worker threads); every service has the
# proxy part's backend as its static upstream.
workers: @THREADS@
admin: { listen: "127.0.0.1:@ADMIN_PORT@" }
runtime: { state_dir: "@DIR@/shoal-state" }
listeners:
EOF
  for i in "${!PORTS[@]}"; do echo "  - { name: web$i, bind: \"127.0.0.1:${PORTS[$i]}\", service: web$i }"; done
  echo "services:"
  for i in "${!PORTS[@]}"; do
    printf '  web%s:\n    upstreams: { static: ["127.0.0.1:@BACKEND_PORT@"] }\n    balance: round_robin\n    drain_timeout: 1s\n' "$i"
  done
} >"$WORK/memory.shoal.yaml"
{
  sed -n '/^global/,/^    timeout http-keep-alive/p' "$HERE/haproxy.cfg"
  for i in "${!PORTS[@]}"; do
    printf 'frontend fe%s\n    bind 127.0.0.1:%s\n    default_backend be%s\nbackend be%s\n    server backend 127.0.0.1:@BACKEND_PORT@\n' "$i" "${PORTS[$i]}" "$i" "$i"
  done
} >"$WORK/memory.haproxy.cfg"
{
  sed -n '/^worker_processes/,/^    @TEMP_PATHS@/p' "$HERE/proxy.nginx.conf"
  for i in "${!PORTS[@]}"; do
    printf '    upstream backend%s {\n        server 127.0.0.1:@BACKEND_PORT@;\n        keepalive 128;\n        keepalive_requests 10000000;\n    }\n' "$i"
    printf '    server {\n        listen 127.0.0.1:%s backlog=4096;\n        location / {\n            proxy_pass http://backend%s;\n            proxy_http_version 1.1;\n            proxy_set_header Connection "";\n        }\n    }\n' "${PORTS[$i]}" "$i"
  done
  echo "}"
} >"$WORK/memory.nginx.conf"
template_of() { case "$1" in shoal) echo "$WORK/memory.shoal.yaml" ;; haproxy) echo "$WORK/memory.haproxy.cfg" ;; nginx) echo "$WORK/memory.nginx.conf" ;; esac; }

TSV="$OUT/rounds.tsv"
printf 'threads\ttarget\tround\tstatus\trss_idle_kb\trps\tprocesses\trss_peak_kb\tnote\n' >"$TSV"

# measure TARGET THREADS ROUND
measure() {
  local target="$1" t="$2" round="$3" port idle procs url rc=0 status=ok note=""
  if ! start_proxy "$target" "$(template_of "$target")" "$t" "$FIRST_PORT" http; then
    log "  $target (threads $t, round $round): FAILED to start: $START_ERROR"
    tsv_row "$TSV" "$t" "$target" "$round" failed "" "" "" "" "start: $START_ERROR"
    return 0
  fi
  # one request through every listener, so that every service has been used once
  for port in "${PORTS[@]}"; do
    if ! wait_ready "$port" "$TARGET_PID" 5; then status=failed; note="no 200 \"ok\" through 127.0.0.1:$port"; break; fi
  done
  sleep 1
  idle=$(group_kb "$TARGET_PID" VmRSS)
  procs=$(ps -o pid= -g "$TARGET_PID" | wc -l)
  rss_sampler_start "$TARGET_PID"
  url="http://127.0.0.1:$FIRST_PORT/"
  pinned "$CPU_SIDE" timeout $((WARMUP + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >"$WORK/warmup.out" 2>&1 || true
  pinned "$CPU_SIDE" timeout $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$WORK/wrk.out" 2>&1 || rc=$?
  rss_sampler_stop
  local alive=1
  kill -0 "$TARGET_PID" 2>/dev/null || alive=0
  stop_target
  cp "$WORK/wrk.out" "$OUT/wrk-t$t-$target-r$round.txt"
  [ -s "$WORK/$target.log" ] && cp "$WORK/$target.log" "$OUT/log-t$t-$target-r$round.txt"
  wrk_result "$WORK/wrk.out" "$rc"
  if [ "$WRK_STATUS" != ok ]; then status=failed; note="${note:+$note; }$WRK_NOTE"; fi
  if [ "$alive" = 0 ]; then status=failed; note="${note:+$note; }$target died during the run"; fi
  tsv_row "$TSV" "$t" "$target" "$round" "$status" "$idle" "$WRK_RPS" "$procs" "$RSS_PEAK" "$note"
  log "  $target (threads $t, round $round): $status rss idle ${idle} kB, peak ${RSS_PEAK} kB, ${procs} process(es), rps=${WRK_RPS:-?}${note:+ ($note)}"
}

run_rounds "memory, "

# --- the report --------------------------------------------------------------------------
SUMMARY="$(summarize "$TSV")"
# summary columns: 1 threads 2 target 3 status 4 ok 5 total 6 idle 7 rps 8 processes
# 9 peak(median) 10 peak(max) 11 why
mib() { awk -v k="$1" 'BEGIN { if (k == "" || k == "-") print "-"; else printf "%.1f MiB", k / 1024 }'; }
goal() { # kB limit-MiB -> met / not met
  awk -v k="$1" -v l="$2" 'BEGIN { if (k == "" || k == "-") print "-"; else if (k / 1024 <= l) print "met"; else print "**not met**" }'
}
{
  cat <<EOF
## Proxy memory: $SERVICES services
${BENCH_LABEL:+
Measured $BENCH_LABEL.
}
Each proxy is configured with $SERVICES HTTP listeners (ports $FIRST_PORT–${PORTS[-1]}),
each in front of its own service (an upstream group: shoal \`services\`, HAProxy
\`backend\`, nginx \`upstream\` with a keep-alive pool) on the proxy part's nginx backend, and
held to 1 and then 2 worker threads. **Idle** is the resident set (\`VmRSS\` in
\`/proc/PID/status\`) 1 s after one request went through every listener; **under load** is
its peak (sampled every 200 ms, and \`VmHWM\` at the end) during the proxy part's load on
the first listener: \`wrk -t$WRK_THREADS -c$CONNECTIONS\`, ${WARMUP} s warm-up then ${DURATION} s. For
HAProxy (one process) and nginx (a master and its workers) the figure is summed over the
processes, so nginx's shared pages count once per process. $ROUNDS rounds, targets in
rotating order; **medians over the rounds** (and the largest peak). A round whose wrk
reported any error fails its target. $(pinning_note)

Goals (issue 6): shoal ≤ 20 MiB idle with $SERVICES services, ≤ 40 MiB under the 50-connection load.

Run took ${ELAPSED} s; load average before ${LOAD_BEFORE}, after ${LOAD_AFTER}.

| threads | target | processes | idle RSS | peak RSS under load (median) | largest peak | RPS during it | ok rounds | goal idle ≤ 20 MiB | goal load ≤ 40 MiB |
|---|---|---:|---:|---:|---:|---:|---:|---|---|
EOF
  while IFS=$'\t' read -r th target status okn total idle rps procs peak peakmax why; do
    g1=""
    g2=""
    if [ "$target" = shoal ]; then g1=$(goal "$idle" 20); g2=$(goal "$peakmax" 40); fi
    if [ "$status" = ok ]; then
      echo "| $th | $target | $(fmt "$procs" 0) | $(mib "$idle") | $(mib "$peak") | $(mib "$peakmax") | $(fmt "$rps" 0) | $okn/$total | $g1 | $g2 |"
    else
      echo "| $th | $target | — | **FAILED** | — | — | — | $okn/$total | | |"
      echo "| | | | _${why//|//}_ | | | | | | |"
    fi
  done <<<"$SUMMARY"
  cat <<'EOF'

<details><summary>every round</summary>

| threads | target | round | status | idle RSS (kB) | RPS | processes | peak RSS (kB) | note |
|---|---|---:|---|---:|---:|---:|---:|---|
EOF
  rounds_table "$TSV"
  echo
  echo "</details>"
  T=N render "$WORK/memory.shoal.yaml" >"$WORK/show.shoal.yaml"
  cat <<EOF

<details><summary>shoal's config (HAProxy's and nginx's are the proxy part's, with one frontend/backend or server/upstream pair per service)</summary>

\`\`\`yaml
$(strip "$WORK/show.shoal.yaml")
\`\`\`
</details>
EOF
} >"$OUT/memory.md"
awk -F'\t' -v n="$SERVICES" '$2 == "shoal" { printf "%s%s threads: idle %s, peak %s", (c++ ? "; " : "memory (shoal, " n " services): "), $1,
  ($6 == "-" ? "FAILED" : sprintf("%.1f MiB", $6 / 1024)), ($10 == "-" ? "-" : sprintf("%.1f MiB", $10 / 1024)) } END { print "" }' <<<"$SUMMARY" >"$OUT/history.txt"
log "memory benchmark done in ${ELAPSED}s"
exit
}
