#!/usr/bin/env bash
# The proxy benchmark: one nginx backend, wrk as the client, and for each thread count and
# round the targets direct / shoal / haproxy / nginx (as a proxy), in an order that rotates
# every round. Run by benches/run; can be run alone:
#
#   OUT=/tmp/x benches/proxy/bench.sh        # SHOAL_BIN=target/release/shoal by default
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

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
THREADS="${THREADS:-1 2}"
TARGETS="${TARGETS:-direct shoal haproxy nginx}"
CONNECTIONS="${CONNECTIONS:-50}"
WRK_THREADS="${WRK_THREADS:-2}"
BENCH_PORT="${BENCH_PORT:-17300}"     # backend; the proxies take the next ports
PIN="${PIN:-split}"                   # split | none (see BENCHMARKS.md, "Pinning")
SHOAL_BIN="${SHOAL_BIN-$ROOT/target/release/shoal}"
SHOAL_BUILD_ERROR="${SHOAL_BUILD_ERROR:-}"
OUT="${OUT:?OUT must name a directory for the results}"
mkdir -p "$OUT"

BACKEND_PORT=$BENCH_PORT
SHOAL_PORT=$((BENCH_PORT + 1))
SHOAL_ADMIN_PORT=$((BENCH_PORT + 2))
HAPROXY_PORT=$((BENCH_PORT + 3))
NGINX_PORT=$((BENCH_PORT + 4))

# Other work on the machine (builds) should disturb the measurement as little as possible:
# when root, this script and everything it starts run at a raised priority (NICE=0 to not).
NICE="${NICE:-$([ "$(id -u)" = 0 ] && echo -10 || echo 0)}"
if [ "$NICE" != 0 ]; then renice -n "$NICE" -p $$ >/dev/null 2>&1 || NICE=0; fi

# the proxies want a few thousand descriptors; take what the hard limit allows
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

WORK="$(mktemp -d /tmp/shoal-bench.XXXXXX)"
chmod 0755 "$WORK" # nginx workers drop to `nobody` when run as root
PGIDS=()           # process groups we started (each leader's pid)

kill_group() { # pid [grace-seconds]
  local pid="$1" grace="${2:-5}" i
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PGIDS[@]}"; do kill_group "$pid" 3; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_group() { # pid: drop it from PGIDS once stopped
  local pid="$1" kept=() p
  for p in "${PGIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  PGIDS=("${kept[@]}")
}

# --- CPU pinning -------------------------------------------------------------------------
NCPU=$(nproc)
if [ "$PIN" = split ] && [ "$NCPU" -ge 2 ]; then
  # The proxy owns CPU 0 when it has one thread; with two it may use both. The client and
  # the backend share CPU 1, so "direct" is the ceiling that side can reach.
  CPU_SIDE=1
  cpus_for_proxy() { if [ "$1" -le 1 ]; then echo 0; else echo "0-$(($1 - 1 < NCPU - 1 ? $1 - 1 : NCPU - 1))"; fi; }
else
  PIN=none
  CPU_SIDE=""
  cpus_for_proxy() { echo ""; }
fi
pinned() { # cpus cmd...: run cmd pinned to cpus (or unpinned when cpus is empty)
  local cpus="$1"
  shift
  if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# start NAME CPUS CMD...: start CMD in its own process group, logs to $WORK/NAME.log;
# sets STARTED_PID.
start() {
  local name="$1" cpus="$2"
  shift 2
  if [ -n "$cpus" ]; then
    setsid taskset -c "$cpus" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  else
    setsid "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  fi
  STARTED_PID=$!
  PGIDS+=("$STARTED_PID")
}

port_busy() { [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }

# wait_ready PORT PID SECONDS: until GET / answers 200 "ok" through PORT
wait_ready() {
  local port="$1" pid="$2" secs="$3" i code body
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    code=$(curl -s -o "$WORK/probe.body" -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null) || code=000
    body=$(cat "$WORK/probe.body" 2>/dev/null || true)
    if [ "$code" = 200 ] && [ "$body" = ok ]; then return 0; fi
    sleep 0.1
  done
  return 1
}

render() { # template -> stdout, placeholders filled in
  sed -e "s|@DIR@|$WORK|g" -e "s|@THREADS@|${T:-1}|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" \
    -e "s|@PROXY_PORT@|${PROXY_PORT:-0}|g" -e "s|@ADMIN_PORT@|$SHOAL_ADMIN_PORT|g" \
    -e "s|@TEMP_PATHS@|$NGINX_TEMP_PATHS|g" "$HERE/$1"
}

# nginx creates its temp directories at start; keep them in $WORK, not /var/lib/nginx.
NGINX_TEMP_PATHS="client_body_temp_path @DIR@/tmp/body; proxy_temp_path @DIR@/tmp/proxy;"
for m in fastcgi uwsgi scgi; do
  if ! nginx -V 2>&1 | grep -q -- "--without-http_${m}_module"; then
    NGINX_TEMP_PATHS="$NGINX_TEMP_PATHS ${m}_temp_path @DIR@/tmp/$m;"
  fi
done
NGINX_TEMP_PATHS="${NGINX_TEMP_PATHS//@DIR@/$WORK}"
mkdir -p "$WORK/tmp"

# CPU ticks (user+system, own and of reaped children, so that a worker that exits and is
# replaced still counts) of every process in process group $1
group_ticks() {
  # (cat, not awk, opens the files: a process may exit between the glob and the read)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v g="$1" '{ sub(/^.*\) /, ""); if ($3 == g) t += $12 + $13 + $14 + $15 } END { print t + 0 }'
}
CLK_TCK=$(getconf CLK_TCK)

# busy CPU ticks (user+nice+system) of the whole machine
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4; exit }' /proc/stat; }
# CPU ticks of the finished children of this shell (wrk, through timeout), from `times`
# (`times` must run in this shell, not in a $(...) subshell, whose children are its own)
children_ticks() {
  times >"$WORK/times"
  awk -v hz="$CLK_TCK" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, p, "m"); sub(/s$/, "", p[2]); t += p[1] * 60 + p[2] }
    printf "%.0f", t * hz }' "$WORK/times"
}

vm_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# --- the backend -------------------------------------------------------------------------
for p in "$BACKEND_PORT" "$SHOAL_PORT" "$SHOAL_ADMIN_PORT" "$HAPROXY_PORT" "$NGINX_PORT"; do
  if port_busy "$p"; then
    log "port 127.0.0.1:$p is in use; set BENCH_PORT to a free range (5 ports from it)"
    exit 1
  fi
done

render backend.nginx.conf >"$WORK/backend.conf"
cp "$WORK/backend.conf" "$OUT/backend.nginx.conf"
start backend "$CPU_SIDE" nginx -e "$WORK/backend.error.log" -p "$WORK" -c "$WORK/backend.conf"
BACKEND_PID=$STARTED_PID
if ! wait_ready "$BACKEND_PORT" "$BACKEND_PID" 10; then
  log "the nginx backend did not start:"
  cat "$WORK/backend.log" "$WORK/backend.error.log" >&2 2>/dev/null || true
  exit 1
fi
log "backend nginx up on 127.0.0.1:$BACKEND_PORT (pid $BACKEND_PID, cpus ${CPU_SIDE:-any})"

# --- one target --------------------------------------------------------------------------
# start_target TARGET THREADS: sets TARGET_PID (empty for direct), TARGET_PORT, or returns
# non-zero with START_ERROR set.
start_target() {
  local target="$1" cpus
  T="$2"
  cpus=$(cpus_for_proxy "$T")
  TARGET_PID=""
  START_ERROR=""
  case "$target" in
    direct)
      TARGET_PORT=$BACKEND_PORT
      return 0
      ;;
    shoal)
      TARGET_PORT=$SHOAL_PORT
      if [ -n "$SHOAL_BUILD_ERROR" ]; then START_ERROR="$SHOAL_BUILD_ERROR"; return 1; fi
      if [ ! -x "$SHOAL_BIN" ]; then START_ERROR="no binary at $SHOAL_BIN"; return 1; fi
      PROXY_PORT=$SHOAL_PORT render shoal.yaml >"$WORK/shoal.yaml"
      mkdir -p "$WORK/shoal-state"
      RUST_LOG="${SHOAL_RUST_LOG:-warn}" start shoal "$cpus" "$SHOAL_BIN" up -c "$WORK/shoal.yaml"
      ;;
    haproxy)
      TARGET_PORT=$HAPROXY_PORT
      PROXY_PORT=$HAPROXY_PORT render haproxy.cfg >"$WORK/haproxy.cfg"
      start haproxy "$cpus" haproxy -db -f "$WORK/haproxy.cfg"
      ;;
    nginx)
      TARGET_PORT=$NGINX_PORT
      PROXY_PORT=$NGINX_PORT render proxy.nginx.conf >"$WORK/nginx-proxy.conf"
      start nginx "$cpus" nginx -e "$WORK/nginx-proxy.error.log" -p "$WORK" -c "$WORK/nginx-proxy.conf"
      ;;
  esac
  TARGET_PID=$STARTED_PID
  if ! wait_ready "$TARGET_PORT" "$TARGET_PID" 20; then
    if kill -0 "$TARGET_PID" 2>/dev/null; then
      START_ERROR="no 200 \"ok\" through it within 20 s"
    else
      START_ERROR="exited at start: $(tail -n 3 "$WORK/$target.log" 2>/dev/null | tr '\n|' '  ' | cut -c1-200)"
    fi
    stop_target
    return 1
  fi
}

stop_target() {
  if [ -n "${TARGET_PID:-}" ]; then
    kill_group "$TARGET_PID" 5
    forget_group "$TARGET_PID"
    TARGET_PID=""
  fi
}

# to_ms VALUE: wrk latency ("812.00us", "1.23ms", "2.01s") in milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

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
  local target="$1" t="$2" round="$3" url out rc rss_idle="" rss_peak="" sampler="" t0 t1 cpu="" note=""
  if ! start_target "$target" "$t"; then
    log "  $target (threads $t, round $round): FAILED to start: $START_ERROR"
    row "$t" "$target" "$round" failed "" "" "" "" "" "" "" "" "" "start: $START_ERROR" ""
    return 0
  fi
  url="http://127.0.0.1:$TARGET_PORT/"
  if [ "$target" = shoal ]; then
    rss_idle=$(vm_kb "$TARGET_PID" VmRSS)
    (
      peak=0
      while kill -0 "$TARGET_PID" 2>/dev/null; do
        r=$(vm_kb "$TARGET_PID" VmRSS)
        if [ -n "$r" ] && [ "$r" -gt "$peak" ]; then peak=$r; echo "$peak" >"$WORK/rss.peak"; fi
        sleep 0.2
      done
    ) &
    sampler=$!
  fi
  # warm-up (discarded), then the measured run
  pinned "$CPU_SIDE" timeout $((WARMUP + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >"$WORK/warmup.out" 2>&1 || true
  [ -n "$TARGET_PID" ] && t0=$(group_ticks "$TARGET_PID")
  local m0 b0 w0 m1 b1 w1 others
  m0=$(machine_ticks)
  b0=$(group_ticks "$BACKEND_PID")
  children_ticks >"$WORK/w0"
  w0=$(cat "$WORK/w0")
  rc=0
  pinned "$CPU_SIDE" timeout $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$WORK/wrk.out" 2>&1 || rc=$?
  m1=$(machine_ticks)
  b1=$(group_ticks "$BACKEND_PID")
  children_ticks >"$WORK/w1"
  w1=$(cat "$WORK/w1")
  t1=0
  t0=${t0:-0}
  if [ -n "$TARGET_PID" ]; then
    t1=$(group_ticks "$TARGET_PID")
    cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v d="$DURATION" 'BEGIN { printf "%.2f", (b - a) / hz / d }')
  fi
  # CPU used by everything else on the machine during the run (builds, other sessions), in cores
  others=$(awk -v m="$((m1 - m0))" -v o="$((t1 - t0 + b1 - b0 + w1 - w0))" -v hz="$CLK_TCK" -v d="$DURATION" \
    'BEGIN { x = (m - o) / hz / d; if (x < 0) x = 0; printf "%.2f", x }')
  if [ -n "$sampler" ]; then
    local hwm
    hwm=$(vm_kb "$TARGET_PID" VmHWM)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    rss_peak=$(cat "$WORK/rss.peak" 2>/dev/null || true)
    rm -f "$WORK/rss.peak"
    # the sampler can miss a short spike; VmHWM cannot
    if [ -n "$hwm" ] && { [ -z "$rss_peak" ] || [ "$hwm" -gt "$rss_peak" ]; }; then rss_peak=$hwm; fi
  fi
  local alive=1
  if [ -n "$TARGET_PID" ] && ! kill -0 "$TARGET_PID" 2>/dev/null; then alive=0; fi
  cp "$WORK/wrk.out" "$OUT/wrk-t$t-$target-r$round.txt"
  stop_target
  # keep what the proxy said (its log is overwritten by the next start)
  [ -s "$WORK/$target.log" ] && cp "$WORK/$target.log" "$OUT/log-t$t-$target-r$round.txt"

  local rps p50 p99 reqs non2xx sockerr
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk.out")
  p50=$(awk '$1 == "50%" { print $2 }' "$WORK/wrk.out")
  p99=$(awk '$1 == "99%" { print $2 }' "$WORK/wrk.out")
  reqs=$(awk '/requests in/ { print $1 }' "$WORK/wrk.out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$WORK/wrk.out")
  sockerr=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$WORK/wrk.out")
  non2xx=${non2xx:-0}
  sockerr=${sockerr:-0}
  [ -n "$p50" ] && p50=$(to_ms "$p50")
  [ -n "$p99" ] && p99=$(to_ms "$p99")

  local status=ok
  if [ "$rc" -ne 0 ]; then status=failed; note="wrk exit $rc: $(head -c 160 "$WORK/wrk.out" | tr '\n\t' '  ')"; fi
  if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ] || [ "${reqs:-0}" = 0 ]; then status=failed; note="${note:-no requests completed}"; fi
  if [ "$non2xx" != 0 ]; then status=failed; note="$non2xx non-2xx/3xx responses"; fi
  if [ "$sockerr" != 0 ]; then
    status=failed
    note="${note:+$note; }socket errors: $(awk '/Socket errors:/ { sub(/^ *Socket errors: */, ""); print }' "$WORK/wrk.out")"
  fi
  if [ "$alive" = 0 ]; then status=failed; note="${note:+$note; }$target died during the run"; fi
  row "$t" "$target" "$round" "$status" "$rps" "$p50" "$p99" "${reqs:-0}" "$non2xx" "$sockerr" "$cpu" "$rss_idle" "$rss_peak" "$note" "$others"
  log "  $target (threads $t, round $round): $status rps=${rps:-?} p50=${p50:-?}ms p99=${p99:-?}ms cpu=${cpu:-n/a} others=${others}${rss_peak:+ rss ${rss_idle}->${rss_peak} kB}${note:+ ($note)}"
}

read -r -a targets <<<"$TARGETS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START_TS=$(date +%s)
for t in $THREADS; do
  for ((round = 1; round <= ROUNDS; round++)); do
    # rotate the order each round so no target always runs first or right after another
    n=${#targets[@]}
    order=()
    for ((i = 0; i < n; i++)); do order+=("${targets[$(((i + round - 1) % n))]}"); done
    log "threads $t, round $round/$ROUNDS: ${order[*]}"
    for target in "${order[@]}"; do measure "$target" "$t" "$round"; done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - START_TS))

# configs as run (threads placeholder left as N)
T=N PROXY_PORT=$HAPROXY_PORT render haproxy.cfg >"$OUT/haproxy.cfg"
T=N PROXY_PORT=$NGINX_PORT render proxy.nginx.conf >"$OUT/proxy.nginx.conf"
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
