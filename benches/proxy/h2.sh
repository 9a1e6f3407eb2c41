#!/usr/bin/env bash
# The HTTP/2 benchmark: h2load (cleartext HTTP/2, prior knowledge) through shoal, HAProxy and
# nginx, each an h2c front end to the same HTTP/1.1 nginx backend as the proxy part, held to
# 1 and then 2 worker threads; the order of targets rotates every round. Run by benches/run;
# can be run alone:
#
#   OUT=/tmp/x benches/proxy/h2.sh        # SHOAL_BIN=the release build by default
#
# Environment (besides lib.sh's ROUNDS, DURATION, WARMUP, BENCH_PORT, PIN, NICE): THREADS
# ("1 2"), H2_TARGETS ("shoal haproxy nginx haproxy-fwd nginx-fwd"; the -fwd peers as in
# bench.sh), H2_CLIENTS (10) × H2_STREAMS (5) = the
# concurrent streams, H2_CLIENT_THREADS (2).
# Writes $OUT/rounds.tsv, $OUT/h2.md (the report section) and $OUT/history.txt (its History line).
# The whole script is one { } block so that bash parses it completely before running it.
{
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
THREADS="${THREADS:-1 2}"
TARGETS="${H2_TARGETS:-shoal haproxy nginx haproxy-fwd nginx-fwd}"
H2_CLIENTS="${H2_CLIENTS:-10}"
H2_STREAMS="${H2_STREAMS:-5}"
H2_CLIENT_THREADS="${H2_CLIENT_THREADS:-2}"
# shellcheck source=benches/proxy/lib.sh
. "$HERE/lib.sh"

command -v h2load >/dev/null || { log "h2load is missing (Debian package nghttp2-client)"; exit 1; }
check_ports "$BACKEND_PORT" "$SHOAL_PORT" "$SHOAL_ADMIN_PORT" "$HAPROXY_PORT" "$NGINX_PORT"
start_backend

template_of() { case "$1" in shoal) echo shoal.yaml ;; haproxy*) echo h2.haproxy.cfg ;; nginx*) echo h2.nginx.conf ;; esac; }
port_of() { case "$1" in shoal) echo "$SHOAL_PORT" ;; haproxy*) echo "$HAPROXY_PORT" ;; nginx*) echo "$NGINX_PORT" ;; esac; }
H2LOAD=(h2load -t "$H2_CLIENT_THREADS" -c "$H2_CLIENTS" -m "$H2_STREAMS")

TSV="$OUT/rounds.tsv"
printf 'threads\ttarget\tround\tstatus\trps\tp50_ms\tp99_ms\trequests\tproxy_cpu\tother_cpu\trss_peak_kb\tnote\n' >"$TSV"

# measure TARGET THREADS ROUND: one warm-up (discarded) and one measured h2load run
measure() {
  local target="$1" t="$2" round="$3" port url rc=0 note="" status=ok peak=""
  port=$(port_of "$target")
  if ! FORWARD_HEADERS="$(forward_headers_of "$target")" start_proxy "$target" "$(template_of "$target")" "$t" "$port" h2c ||
    ! check_forwarding "$target" "$port" --http2-prior-knowledge; then
    log "  $target (threads $t, round $round): FAILED to start: $START_ERROR"
    tsv_row "$TSV" "$t" "$target" "$round" failed "" "" "" "" "" "" "" "start: $START_ERROR"
    return 0
  fi
  url="http://127.0.0.1:$port/"
  pinned "$CPU_SIDE" timeout $((WARMUP + 30)) "${H2LOAD[@]}" -D "$WARMUP" "$url" >"$WORK/warmup.out" 2>&1 || true
  rm -f "$WORK/h2.log"
  cpu_begin
  pinned "$CPU_SIDE" timeout $((DURATION + 30)) "${H2LOAD[@]}" -D "$DURATION" --log-file="$WORK/h2.log" "$url" >"$WORK/h2load.out" 2>&1 || rc=$?
  cpu_end "$DURATION"
  peak=$(group_kb "$TARGET_PID" VmHWM)
  local alive=1
  kill -0 "$TARGET_PID" 2>/dev/null || alive=0
  stop_target
  cp "$WORK/h2load.out" "$OUT/h2load-t$t-$target-r$round.txt"
  [ -s "$WORK/$target.log" ] && cp "$WORK/$target.log" "$OUT/log-t$t-$target-r$round.txt"

  # "finished in 10.00s, 12345.67 req/s, ..." / "requests: N total, N started, N done,
  # N succeeded, N failed, N errored, N timeout" / "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
  local rps done_n bad non2xx p50="" p99=""
  rps=$(awk '/^finished in/ { gsub(",", ""); print $4 }' "$WORK/h2load.out")
  done_n=$(awk '/^requests:/ { gsub(",", ""); print $6 }' "$WORK/h2load.out")
  bad=$(awk '/^requests:/ { gsub(",", ""); if ($10 + $12 + $14 > 0) printf "%s failed, %s errored, %s timed out", $10, $12, $14 }' "$WORK/h2load.out")
  non2xx=$(awk '/^status codes:/ { gsub(",", ""); print $5 + $7 + $9 }' "$WORK/h2load.out")
  # per-request durations (µs, third column of the log) -> p50 and p99 in ms
  if [ -s "$WORK/h2.log" ]; then
    read -r p50 p99 < <(cut -f3 "$WORK/h2.log" | sort -n | awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "- -"; exit }
      i = int(NR * 0.5); if (i < 1) i = 1; j = int(NR * 0.99); if (j < 1) j = 1
      printf "%.3f %.3f\n", v[i] / 1000, v[j] / 1000 }')
  fi
  if [ "$rc" -ne 0 ]; then status=failed; note="h2load exit $rc: $(grep -m2 -iE 'error|fail' "$WORK/h2load.out" | tr '\n\t' '  ' | cut -c1-160)"; fi
  if [ -z "$rps" ] || [ "${done_n:-0}" = 0 ]; then status=failed; note="${note:-no requests completed}"; fi
  if [ -n "$bad" ]; then status=failed; note="${note:+$note; }requests: $bad"; fi
  if [ "${non2xx:-0}" != 0 ]; then status=failed; note="${note:+$note; }$non2xx non-2xx responses"; fi
  if [ "$alive" = 0 ]; then status=failed; note="${note:+$note; }$target died during the run"; fi
  tsv_row "$TSV" "$t" "$target" "$round" "$status" "$rps" "$p50" "$p99" "${done_n:-0}" "$PROXY_CPU" "$OTHER_CPU" "$peak" "$note"
  log "  $target (threads $t, round $round): $status rps=${rps:-?} p50=${p50:-?}ms p99=${p99:-?}ms cpu=$PROXY_CPU others=$OTHER_CPU peak=${peak}kB${note:+ ($note)}"
}

run_rounds "h2, "

# --- the report --------------------------------------------------------------------------
SUMMARY="$(summarize "$TSV")"
# summary columns: 1 threads 2 target 3 status 4 ok 5 total 6 rps 7 p50 8 p99 9 requests
# 10 cpu 11 other 12 peak(median) 13 peak(max) 14 why
get() { awk -F'\t' -v t="$1" -v g="$2" -v c="$3" '$1 == t && $2 == g { print $c }' <<<"$SUMMARY"; }
{
  cat <<EOF
## HTTP/2 clients (h2c): throughput and latency
${BENCH_LABEL:+
Measured $BENCH_LABEL.
}
h2load (\`${H2LOAD[*]} -D $DURATION\`: $H2_CLIENTS connections × $H2_STREAMS concurrent
streams each = $((H2_CLIENTS * H2_STREAMS)) streams in flight, cleartext HTTP/2 with prior knowledge) against \`GET /\`
through **shoal**, **HAProxy** and **nginx**, each an h2c front end to the same HTTP/1.1
nginx backend as the proxy part (keep-alive to it), held to 1 and then 2 worker threads
(HAProxy \`nbthread\`, nginx \`worker_processes\`, shoal \`workers\`). **haproxy-fwd** and
**nginx-fwd** add the header work shoal does, as in the proxy part. shoal's HTTP listener
detects the HTTP/2 preface itself (no config); HAProxy needs \`bind ... proto h2\`, nginx
\`listen ... http2\`. $ROUNDS rounds; in each round every target is started fresh, warmed
up for ${WARMUP} s (a discarded h2load run), measured, stopped; the order rotates by one
every round. Numbers are **medians over the rounds**; p50/p99 are computed from h2load's
per-request log (\`--log-file\`). A target for which h2load reported any failed, errored or
timed-out request or any non-2xx response in any round shows **FAILED**.
$(pinning_note) "proxy CPU" is in cores, as in the proxy part; "peak RSS" is \`VmHWM\` summed
over the proxy's processes at the end of the run (median over the rounds).

Run took ${ELAPSED} s; load average before ${LOAD_BEFORE}, after ${LOAD_AFTER}.

| threads | target | RPS | p50 (ms) | p99 (ms) | proxy CPU | RPS/core | peak RSS | ok rounds | background CPU |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
  while IFS=$'\t' read -r th target status okn total rps p50 p99 _reqs cpu oth peak _peakmax why; do
    if [ "$status" = ok ]; then
      per_core=$(awk -v r="$rps" -v c="$cpu" 'BEGIN { if (c == "-" || c + 0 == 0) print "—"; else printf "%.0f", r / c }')
      echo "| $th | $target | $(fmt "$rps" 0) | $(fmt "$p50" 3) | $(fmt "$p99" 3) | $(fmt "$cpu" 2) | $per_core | $(awk -v k="$peak" 'BEGIN { printf "%.1f MiB", k / 1024 }') | $okn/$total | $(fmt "$oth" 2) |"
    else
      echo "| $th | $target | **FAILED** | — | — | — | — | — | $okn/$total | |"
      echo "| | | _${why//|//}_ | | | | | | | |"
    fi
  done <<<"$SUMMARY"
  cat <<EOF

Ratios (shoal ÷ peer, of the medians; RPS above 1 means shoal serves more, p99 above 1
means shoal's tail is slower). Goal: shoal's RPS ≥ HAProxy's and nginx's. The last four
columns take the ratio within each round, as in the proxy part.

| threads | peer | RPS shoal/peer | p99 shoal/peer | RPS, per round | shoal more RPS | p99, per round | shoal shorter p99 |
|---|---|---:|---:|---:|---:|---:|---:|
EOF
  for t in $THREADS; do
    for peer in $TARGETS; do
      [ "$peer" != shoal ] || continue
      echo "| $t | $peer | $(ratio "$(get "$t" shoal 6)" "$(get "$t" "$peer" 6)") | $(ratio "$(get "$t" shoal 8)" "$(get "$t" "$peer" 8)") | $(paired_cells "$TSV" "$t" "$peer") |"
    done
  done
  cat <<'EOF'

<details><summary>every round</summary>

| threads | target | round | status | RPS | p50 (ms) | p99 (ms) | requests | proxy CPU | background CPU | peak RSS (kB) | note |
|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|
EOF
  rounds_table "$TSV"
  echo
  echo "</details>"
  T=N PROXY_PORT=$HAPROXY_PORT render h2.haproxy.cfg >"$WORK/show.haproxy.cfg"
  T=N PROXY_PORT=$NGINX_PORT render h2.nginx.conf >"$WORK/show.nginx.conf"
  cat <<EOF

<details><summary>commands and configs (\`\$TMP\` is the run's temporary directory, \`N\` the thread count)</summary>

\`\`\`sh
${CPU_SIDE:+taskset -c $CPU_SIDE }nginx -p \$TMP -c \$TMP/backend.conf      # the proxy part's backend, port $BACKEND_PORT
${CPU_SIDE:+taskset -c 0|0-1 }shoal up -c \$TMP/shoal.yaml                  # port $SHOAL_PORT
${CPU_SIDE:+taskset -c 0|0-1 }haproxy -db -f \$TMP/haproxy.cfg              # port $HAPROXY_PORT
${CPU_SIDE:+taskset -c 0|0-1 }nginx -p \$TMP -c \$TMP/nginx.conf            # port $NGINX_PORT
${CPU_SIDE:+taskset -c $CPU_SIDE }${H2LOAD[*]} -D $WARMUP http://127.0.0.1:PORT/                          # warm-up, discarded
${CPU_SIDE:+taskset -c $CPU_SIDE }${H2LOAD[*]} -D $DURATION --log-file=\$TMP/h2.log http://127.0.0.1:PORT/  # measured
\`\`\`

shoal: the proxy part's \`benches/proxy/shoal.yaml\` as it is. HAProxy:

\`\`\`
$(strip "$WORK/show.haproxy.cfg")
\`\`\`

nginx:

\`\`\`nginx
$(strip "$WORK/show.nginx.conf")
\`\`\`

haproxy-fwd and nginx-fwd: the same with \`benches/proxy/haproxy.forward.cfg\` and
\`benches/proxy/nginx.forward.conf\` (shown in the proxy part) at the FORWARD_HEADERS line.
</details>
EOF
} >"$OUT/h2.md"
for t in $THREADS; do
  printf '%s threads: RPS' "$t"
  sep=" "
  for peer in $TARGETS; do
    [ "$peer" != shoal ] || continue
    printf '%sshoal/%s %s' "$sep" "$peer" "$(ratio "$(get "$t" shoal 6)" "$(get "$t" "$peer" 6)")"
    sep=", "
  done
  echo
done | paste -sd';' | sed "s/;/; /g; s/^/h2 (h2load, $((H2_CLIENTS * H2_STREAMS)) streams): /" >"$OUT/history.txt"
log "h2 benchmark done in ${ELAPSED}s"
exit
}
