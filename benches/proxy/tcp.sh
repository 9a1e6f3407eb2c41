#!/usr/bin/env bash
# The TCP bulk benchmark: iperf3 (one stream, client -> server) direct to an iperf3 server and
# through a relay: shoal's `protocol: tcp` listener, HAProxy `mode tcp` (as configured by
# default, and with `option splice-auto`), nginx `stream` (when the stream module is there);
# the order of targets rotates every round. Run by benches/run; can be run alone:
#
#   OUT=/tmp/x benches/proxy/tcp.sh        # SHOAL_BIN=the release build by default
#
# Environment (besides lib.sh's ROUNDS, DURATION, WARMUP, BENCH_PORT, PIN, NICE):
# TCP_THREADS ("1": one connection is relayed by one thread whatever the count),
# TCP_TARGETS ("direct shoal haproxy haproxy-splice nginx"), TCP_REVERSE=1 to measure the
# other direction (iperf3 -R: the server sends).
# Writes $OUT/rounds.tsv, $OUT/tcp.md (the report section) and $OUT/history.txt (its History line).
# The whole script is one { } block so that bash parses it completely before running it.
{
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
THREADS="${TCP_THREADS:-1}"
TARGETS="${TCP_TARGETS:-direct shoal haproxy haproxy-splice nginx}"
TCP_REVERSE="${TCP_REVERSE:-0}"
# shellcheck source=benches/proxy/lib.sh
. "$HERE/lib.sh"

command -v iperf3 >/dev/null || { log "iperf3 is missing (Debian package iperf3)"; exit 1; }
check_ports "$BACKEND_PORT" "$SHOAL_PORT" "$SHOAL_ADMIN_PORT" "$HAPROXY_PORT" "$NGINX_PORT"

# nginx's stream module: built in, or a dynamic module (Debian: libnginx-mod-stream)
NGINX_STREAM=""
if nginx -V 2>&1 | grep -q -- '--with-stream\( \|$\)'; then
  NGINX_STREAM="built in"
elif nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
  modules=$(nginx -V 2>&1 | tr ' ' '\n' | sed -n 's/^--modules-path=//p')
  if [ -f "${modules:-/usr/lib/nginx/modules}/ngx_stream_module.so" ]; then
    STREAM_MODULE="load_module ${modules:-/usr/lib/nginx/modules}/ngx_stream_module.so;"
    NGINX_STREAM="a dynamic module, loaded with \`load_module\`"
  fi
fi
if [ -z "$NGINX_STREAM" ]; then
  log "this nginx has no stream module (Debian: libnginx-mod-stream): nginx is left out"
  TARGETS="${TARGETS//nginx/}"
fi

# the backend: an iperf3 server on the client's CPU
start backend "$CPU_SIDE" iperf3 -s -B 127.0.0.1 -p "$BACKEND_PORT"
BACKEND_PID=$STARTED_PID
if ! wait_listening "$BACKEND_PORT" "$BACKEND_PID" 10; then
  log "the iperf3 server did not start:"
  cat "$WORK/backend.log" >&2 || true
  exit 1
fi
log "backend iperf3 -s up on 127.0.0.1:$BACKEND_PORT (pid $BACKEND_PID, cpus ${CPU_SIDE:-any})"

template_of() { case "$1" in shoal) echo tcp.shoal.yaml ;; haproxy*) echo tcp.haproxy.cfg ;; nginx) echo tcp.nginx.conf ;; esac; }
port_of() { case "$1" in direct) echo "$BACKEND_PORT" ;; shoal) echo "$SHOAL_PORT" ;; haproxy*) echo "$HAPROXY_PORT" ;; nginx) echo "$NGINX_PORT" ;; esac; }
haproxy_options() { if [ "$1" = haproxy-splice ]; then echo "option splice-auto"; else echo "# no kernel splicing (HAProxy's default)"; fi; }
IPERF=(iperf3 -c 127.0.0.1)
[ "$TCP_REVERSE" = 1 ] && IPERF+=(-R)

TSV="$OUT/rounds.tsv"
printf 'threads\ttarget\tround\tstatus\tmb_s\tproxy_cpu\tcpu_s_per_gb\tretransmits\tother_cpu\tgib\tnote\n' >"$TSV"

# iperf3 -J output -> "MB/s GiB retransmits error" (MB = 10^6 bytes, as received)
iperf_figures() {
  python3 - "$1" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("- - - unreadable iperf3 output: %s" % str(e)[:80]); sys.exit()
end = d.get("end", {})
rcv, snd = end.get("sum_received", {}), end.get("sum_sent", {})
err = (d.get("error") or "").replace("\t", " ").replace("\n", " ")[:120]
if not rcv.get("seconds"):
    print("- - - %s" % (err or "no transfer")); sys.exit()
print("%.1f %.2f %s %s" % (rcv["bytes"] / rcv["seconds"] / 1e6, rcv["bytes"] / 2**30, snd.get("retransmits", 0), err or "-"))
PY
}

# measure TARGET THREADS ROUND: one warm-up (discarded) and one measured iperf3 run
measure() {
  local target="$1" t="$2" round="$3" port rc=0 note="" status=ok mbs gib retr err per_gb=""
  port=$(port_of "$target")
  TARGET_PID=""
  if [ "$target" != direct ]; then
    if ! HAPROXY_OPTIONS="$(haproxy_options "$target")" start_proxy "$target" "$(template_of "$target")" "$t" "$port" tcp; then
      log "  $target (threads $t, round $round): FAILED to start: $START_ERROR"
      tsv_row "$TSV" "$t" "$target" "$round" failed "" "" "" "" "" "" "start: $START_ERROR"
      return 0
    fi
  fi
  if [ "$WARMUP" -gt 0 ]; then pinned "$CPU_SIDE" timeout $((WARMUP + 30)) "${IPERF[@]}" -p "$port" -t "$WARMUP" >"$WORK/warmup.out" 2>&1 || true; fi
  cpu_begin
  pinned "$CPU_SIDE" timeout $((DURATION + 30)) "${IPERF[@]}" -p "$port" -t "$DURATION" -J >"$WORK/iperf.json" 2>"$WORK/iperf.err" || rc=$?
  cpu_end "$DURATION"
  local alive=1
  if [ -n "$TARGET_PID" ] && ! kill -0 "$TARGET_PID" 2>/dev/null; then alive=0; fi
  stop_target
  cp "$WORK/iperf.json" "$OUT/iperf-t$t-$target-r$round.json"
  [ -s "$WORK/$target.log" ] && cp "$WORK/$target.log" "$OUT/log-t$t-$target-r$round.txt"
  read -r mbs gib retr err < <(iperf_figures "$WORK/iperf.json")
  [ "$err" = - ] && err=""
  if [ "$rc" -ne 0 ]; then status=failed; note="iperf3 exit $rc${err:+: $err}"; elif [ -n "$err" ]; then status=failed; note="iperf3: $err"; fi
  if [ "$mbs" = - ]; then status=failed; note="${note:-no transfer}"; fi
  if [ "$alive" = 0 ]; then status=failed; note="${note:+$note; }$target died during the run"; fi
  if [ -n "$PROXY_CPU" ] && [ "$gib" != - ]; then
    per_gb=$(awk -v c="$PROXY_CPU" -v d="$DURATION" -v g="$gib" 'BEGIN { if (g > 0) printf "%.3f", c * d / (g * 1.073741824) }')
  fi
  tsv_row "$TSV" "$t" "$target" "$round" "$status" "$mbs" "$PROXY_CPU" "$per_gb" "$retr" "$OTHER_CPU" "$gib" "$note"
  log "  $target (threads $t, round $round): $status ${mbs} MB/s cpu=${PROXY_CPU:-n/a} (${per_gb:-n/a} s/GB) others=$OTHER_CPU${note:+ ($note)}"
}

run_rounds "tcp, "

# --- the report --------------------------------------------------------------------------
SUMMARY="$(summarize "$TSV")"
# summary columns: 1 threads 2 target 3 status 4 ok 5 total 6 MB/s 7 cpu 8 s/GB 9 retransmits
# 10 other 11 GiB 12 GiB(max) 13 why
get() { awk -F'\t' -v t="$1" -v g="$2" -v c="$3" '$1 == t && $2 == g { print $c }' <<<"$SUMMARY"; }
direction="client → server (the proxy reads from the client and writes to the server)"
[ "$TCP_REVERSE" = 1 ] && direction="server → client (\`-R\`: the proxy reads from the server and writes to the client)"
{
  cat <<EOF
## TCP bulk throughput
${BENCH_LABEL:+
Measured $BENCH_LABEL.
}
One iperf3 stream (\`${IPERF[*]} -p PORT -t $DURATION -J\`; default 128 KiB writes over
loopback), $direction, to an \`iperf3 -s\` server: **direct**, and relayed by
**shoal** (a \`protocol: tcp\` listener; plain connections are relayed with splice(2)),
**HAProxy** (\`mode tcp\`, as configured by default: no kernel splicing), **haproxy-splice**
(the same with \`option splice-auto\`) and **nginx** (\`stream\` module, ${NGINX_STREAM:-not available: left out}).
iperf3's control connection and its data connection both go through the relay. Each proxy
is held to $THREADS worker thread(s) (HAProxy \`nbthread\`, nginx \`worker_processes\`,
shoal \`workers\`). $ROUNDS rounds; in each round every target is started fresh, warmed up
for ${WARMUP} s (a discarded iperf3 run), measured, stopped; the order rotates by one every
round. Numbers are **medians over the rounds**; MB/s is 10^6 bytes per second as received.
A target for which iperf3 failed or reported an error in any round shows **FAILED**.
$(pinning_note) "proxy CPU" is the relay's CPU time over the run's length in cores; "CPU s/GB"
is the relay's CPU seconds per 10^9 bytes relayed (lower is cheaper).

Run took ${ELAPSED} s; load average before ${LOAD_BEFORE}, after ${LOAD_AFTER}.

| threads | target | MB/s | vs direct | proxy CPU | CPU s/GB | retransmits | ok rounds | background CPU |
|---|---|---:|---:|---:|---:|---:|---:|---:|
EOF
  while IFS=$'\t' read -r th target status okn total mbs cpu pergb retr oth _gib _gibmax why; do
    if [ "$status" = ok ]; then
      echo "| $th | $target | $(fmt "$mbs" 0) | $(ratio "$mbs" "$(get "$th" direct 6)") | $(fmt "$cpu" 2) | $(fmt "$pergb" 3) | $(fmt "$retr" 0) | $okn/$total | $(fmt "$oth" 2) |"
    else
      echo "| $th | $target | **FAILED** | — | — | — | — | $okn/$total | |"
      echo "| | | _${why//|//}_ | | | | | | |"
    fi
  done <<<"$SUMMARY"
  cat <<EOF

Ratios (shoal ÷ peer, of the medians). Goal: shoal's MB/s ≥ HAProxy's.

| threads | MB/s shoal/haproxy | MB/s shoal/haproxy-splice | MB/s shoal/nginx | CPU s/GB shoal/haproxy | CPU s/GB shoal/haproxy-splice | CPU s/GB shoal/nginx |
|---|---:|---:|---:|---:|---:|---:|
EOF
  for t in $THREADS; do
    row="| $t |"
    for c in 6 8; do
      for peer in haproxy haproxy-splice nginx; do row="$row $(ratio "$(get "$t" shoal $c)" "$(get "$t" "$peer" $c)") |"; done
    done
    echo "$row"
  done
  cat <<'EOF'

<details><summary>every round</summary>

| threads | target | round | status | MB/s | proxy CPU | CPU s/GB | retransmits | background CPU | GiB | note |
|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|
EOF
  rounds_table "$TSV"
  echo
  echo "</details>"
  T=N PROXY_PORT=$SHOAL_PORT render tcp.shoal.yaml >"$WORK/show.shoal.yaml"
  T=N PROXY_PORT=$HAPROXY_PORT HAPROXY_OPTIONS="# haproxy-splice: option splice-auto" render tcp.haproxy.cfg >"$WORK/show.haproxy.cfg"
  T=N PROXY_PORT=$NGINX_PORT render tcp.nginx.conf >"$WORK/show.nginx.conf"
  cat <<EOF

<details><summary>commands and configs (\`\$TMP\` is the run's temporary directory, \`N\` the thread count)</summary>

\`\`\`sh
${CPU_SIDE:+taskset -c $CPU_SIDE }iperf3 -s -B 127.0.0.1 -p $BACKEND_PORT        # the backend
${CPU_SIDE:+taskset -c 0|0-1 }shoal up -c \$TMP/shoal.yaml                  # port $SHOAL_PORT
${CPU_SIDE:+taskset -c 0|0-1 }haproxy -db -f \$TMP/haproxy.cfg              # port $HAPROXY_PORT
${CPU_SIDE:+taskset -c 0|0-1 }nginx -p \$TMP -c \$TMP/nginx.conf            # port $NGINX_PORT
${CPU_SIDE:+taskset -c $CPU_SIDE }${IPERF[*]} -p PORT -t $WARMUP             # warm-up, discarded
${CPU_SIDE:+taskset -c $CPU_SIDE }${IPERF[*]} -p PORT -t $DURATION -J        # measured
\`\`\`

\`\`\`yaml
$(strip "$WORK/show.shoal.yaml")
\`\`\`

\`\`\`
$(strip "$WORK/show.haproxy.cfg")
\`\`\`

\`\`\`nginx
$(strip "$WORK/show.nginx.conf")
\`\`\`
</details>
EOF
} >"$OUT/tcp.md"
for t in $THREADS; do
  printf '%s threads: MB/s shoal %s, shoal/haproxy %s, shoal/haproxy-splice %s, shoal/nginx %s\n' "$t" "$(fmt "$(get "$t" shoal 6)" 0)" \
    "$(ratio "$(get "$t" shoal 6)" "$(get "$t" haproxy 6)")" "$(ratio "$(get "$t" shoal 6)" "$(get "$t" haproxy-splice 6)")" "$(ratio "$(get "$t" shoal 6)" "$(get "$t" nginx 6)")"
done | paste -sd';' | sed 's/;/; /g; s/^/tcp (iperf3): /' >"$OUT/history.txt"
log "tcp benchmark done in ${ELAPSED}s"
exit
}
