# Helpers shared by the proxy benchmarks (bench.sh, h2.sh, memory.sh, tcp.sh); sourced, not run.
# The sourcing script sets HERE (this directory) and OUT (its results directory) first.
# Sourcing it: raises the priority (NICE), lifts the descriptor limit, creates $WORK (a fresh
# temporary directory, removed on exit) and installs an EXIT trap that kills every process
# group started with `start`, even on failure.
# shellcheck shell=bash disable=SC2034,SC2016  # (variables are for the sourcing scripts; backquotes are markdown)

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
BENCH_PORT="${BENCH_PORT:-17300}"     # backend; the proxies take the next ports
PIN="${PIN:-split}"                   # split | none (see BENCHMARKS.md, "Pinning")
SHOAL_BIN="${SHOAL_BIN-$("$ROOT/benches/shoal-path")}"
SHOAL_BUILD_ERROR="${SHOAL_BUILD_ERROR:-}"
OUT="${OUT:?OUT must name a directory for the results}"
mkdir -p "$OUT"

BACKEND_PORT=$BENCH_PORT
SHOAL_PORT=$((BENCH_PORT + 1))
SHOAL_ADMIN_PORT=$((BENCH_PORT + 2))
HAPROXY_PORT=$((BENCH_PORT + 3))
NGINX_PORT=$((BENCH_PORT + 4))

# Other work on the machine (builds) should disturb the measurement as little as possible:
# when root, the script and everything it starts run at a raised priority (NICE=0 to not).
NICE="${NICE:-$([ "$(id -u)" = 0 ] && echo -10 || echo 0)}"
if [ "$NICE" != 0 ]; then renice -n "$NICE" -p $$ >/dev/null 2>&1 || NICE=0; fi

# the proxies want a few thousand descriptors; take what the hard limit allows
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=benches/proxy/ratios.sh
. "$HERE/ratios.sh"

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

# check_ports PORT...: exit with a message when one is already listened on
check_ports() {
  local p
  for p in "$@"; do
    if port_busy "$p"; then
      log "port 127.0.0.1:$p is in use; set BENCH_PORT to a free range"
      exit 1
    fi
  done
}

# wait_ready PORT PID SECONDS [curl options...]: until GET / answers 200 "ok" through PORT
wait_ready() {
  local port="$1" pid="$2" secs="$3" i code body
  shift 3
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    code=$(curl -s "$@" -o "$WORK/probe.body" -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null) || code=000
    body=$(cat "$WORK/probe.body" 2>/dev/null || true)
    if [ "$code" = 200 ] && [ "$body" = ok ]; then return 0; fi
    sleep 0.1
  done
  return 1
}

# wait_listening PORT PID SECONDS: until something listens on PORT (for non-HTTP servers)
wait_listening() {
  local port="$1" pid="$2" secs="$3" i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    port_busy "$port" && return 0
    sleep 0.1
  done
  return 1
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

render() { # template (a path, or a name in $HERE) -> stdout, placeholders filled in
  local f="$1"
  [ "${f#/}" != "$f" ] || f="$HERE/$f"
  sed -e "s|@DIR@|$WORK|g" -e "s|@THREADS@|${T:-1}|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" \
    -e "s|@PROXY_PORT@|${PROXY_PORT:-0}|g" -e "s|@ADMIN_PORT@|$SHOAL_ADMIN_PORT|g" \
    -e "s|@TEMP_PATHS@|$NGINX_TEMP_PATHS|g" -e "s|@STREAM_MODULE@|${STREAM_MODULE:-}|g" \
    -e "s|@HAPROXY_OPTIONS@|${HAPROXY_OPTIONS:-}|g" \
    -e "/^ *@FORWARD_HEADERS@$/{r ${FORWARD_HEADERS:-/dev/null}" -e "d}" "$f"
}

# forward_headers_of TARGET: the config lines render splices in at a FORWARD_HEADERS line.
# haproxy-fwd and nginx-fwd are HAProxy and nginx doing the header work SPEC asks of shoal on
# every request (X-Forwarded-For/-Proto/-Host, an x-request-id made when absent and sent
# both ways, Host passed on): the like-for-like peers. The plain targets do none of it.
forward_headers_of() {
  case "$1" in
    haproxy-fwd) echo "$HERE/haproxy.forward.cfg" ;;
    nginx-fwd) echo "$HERE/nginx.forward.conf" ;;
  esac
}

# check_forwarding TARGET PORT [CURL_OPTIONS]: shoal and the -fwd peers must really do the
# header work, so their answer carries an x-request-id; otherwise stops the target and
# returns non-zero with START_ERROR set.
check_forwarding() {
  local target="$1" port="$2"
  shift 2
  case "$target" in shoal | *-fwd) ;; *) return 0 ;; esac
  if ! curl -s "$@" -D - -o /dev/null "http://127.0.0.1:$port/" | grep -qi '^x-request-id: [0-9a-f]'; then
    START_ERROR="its answer has no x-request-id"
    stop_target
    return 1
  fi
}

# start_backend: the nginx backend of benches/proxy/backend.nginx.conf on BACKEND_PORT,
# pinned with the client; sets BACKEND_PID, exits when it does not come up.
start_backend() {
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
}

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
# CPU ticks of the finished children of this shell (the client, through timeout), from `times`
# (`times` must run in this shell, not in a $(...) subshell, whose children are its own)
children_ticks() {
  times >"$WORK/times"
  awk -v hz="$CLK_TCK" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, p, "m"); sub(/s$/, "", p[2]); t += p[1] * 60 + p[2] }
    printf "%.0f", t * hz }' "$WORK/times"
}

vm_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# group_kb PGID FIELD: FIELD (VmRSS, VmHWM) summed over the processes of a process group
group_kb() {
  local pid sum=0 v
  for pid in $(ps -o pid= -g "$1" 2>/dev/null); do
    v=$(vm_kb "$pid" "$2")
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# Measuring one client run: cpu_begin before it, cpu_end after it (in this shell, so that
# `times` sees the client as a finished child); cpu_end sets PROXY_CPU (cores used by the
# proxy's process group $TARGET_PID, empty without one) and OTHER_CPU (cores used by
# everything else on the machine but proxy, backend and client) over SECONDS.
cpu_begin() {
  CPU_T0=0
  [ -n "${TARGET_PID:-}" ] && CPU_T0=$(group_ticks "$TARGET_PID")
  CPU_M0=$(machine_ticks)
  CPU_B0=$(group_ticks "$BACKEND_PID")
  children_ticks >"$WORK/w0"
}
cpu_end() { # seconds
  local d="$1" t1=0 m1 b1 w0 w1
  m1=$(machine_ticks)
  b1=$(group_ticks "$BACKEND_PID")
  children_ticks >"$WORK/w1"
  w0=$(cat "$WORK/w0")
  w1=$(cat "$WORK/w1")
  PROXY_CPU=""
  if [ -n "${TARGET_PID:-}" ]; then
    t1=$(group_ticks "$TARGET_PID")
    PROXY_CPU=$(awk -v a="$CPU_T0" -v b="$t1" -v hz="$CLK_TCK" -v d="$d" 'BEGIN { printf "%.2f", (b - a) / hz / d }')
  else
    CPU_T0=0
  fi
  OTHER_CPU=$(awk -v m="$((m1 - CPU_M0))" -v o="$((t1 - CPU_T0 + b1 - CPU_B0 + w1 - w0))" -v hz="$CLK_TCK" -v d="$d" \
    'BEGIN { x = (m - o) / hz / d; if (x < 0) x = 0; printf "%.2f", x }')
}

# rotated ROUND ITEM...: the items rotated left by ROUND-1, one per line (so that no
# target always runs first or right after another)
rotated() {
  local round="$1" n i
  shift
  n=$#
  local items=("$@")
  for ((i = 0; i < n; i++)); do echo "${items[$(((i + round - 1) % n))]}"; done
}

# tsv_row FILE FIELD...: append one tab-separated line; "-" marks an empty field (bash's
# read would merge consecutive tabs)
tsv_row() {
  local file="$1" out="" f
  shift
  for f in "$@"; do out="$out${out:+$'\t'}${f:--}"; done
  printf '%s\n' "$out" >>"$file"
}

# summarize FILE: medians over the rounds of a rounds.tsv whose columns are
# `threads target round status VALUE... note`; one line per (threads, target) in the order
# first seen: threads target status ok total VALUE-median... max-of-last-value note-of-first-failure.
# A (threads, target) with any failed round gets status "failed" and "-" for its values.
summarize() {
  awk -F'\t' '
    function median(list,   a, n, i, j, x) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > x + 0; j--) a[j + 1] = a[j]; a[j + 1] = x }
      if (n == 0) return "-"
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR == 1 { nv = NF - 5; next }
    {
      k = $1 "\t" $2
      if (!(k in seen)) { seen[k] = 1; keys[++nk] = k }
      total[k]++
      if ($4 == "ok") ok[k]++; else { failed[k]++; if (!(k in why)) why[k] = $NF }
      for (c = 1; c <= nv; c++) if ($(c + 4) != "-") {
        v[k, c] = v[k, c] " " $(c + 4)
        if (!((k, c) in mx) || $(c + 4) + 0 > mx[k, c] + 0) mx[k, c] = $(c + 4)
      }
    }
    END {
      for (i = 1; i <= nk; i++) {
        k = keys[i]
        line = k "\t" (failed[k] > 0 ? "failed" : "ok") "\t" (ok[k] + 0) "\t" total[k]
        for (c = 1; c <= nv; c++) line = line "\t" (failed[k] > 0 ? "-" : median(v[k, c]))
        line = line "\t" ((k, nv) in mx ? mx[k, nv] : "-") "\t" (k in why ? why[k] : "-")
        print line
      }
    }' "$1"
}

# fmt VALUE DECIMALS: "-" stays "-"
fmt() { awk -v x="$1" -v d="$2" 'BEGIN { if (x == "" || x == "-") print "-"; else printf "%." d "f", x }'; }

# pinning_note: the paragraph on pinning and priority for a report
pinning_note() {
  if [ "$PIN" = split ]; then
    printf 'Pinned as in the proxy part (`PIN=split`): client and backend on CPU %s, a 1-thread proxy on CPU 0, a 2-thread proxy on CPUs 0-1.' "$CPU_SIDE"
  else
    printf '`PIN=none`: nothing is pinned.'
  fi
  if [ "${NICE:-0}" != 0 ]; then printf ' Every benchmark process runs at nice %s.' "$NICE"; fi
  echo
}

# strip FILE: the file with $WORK shown as $TMP
strip() { sed -e "s|$WORK|\$TMP|g" "$1"; }

# start_proxy TARGET TEMPLATE THREADS PORT CHECK: start shoal, haproxy or nginx (TARGET) with
# the config TEMPLATE (in $HERE) rendered for THREADS worker threads and PORT, pinned to
# the proxy's CPUs; waits until CHECK passes: http (GET / answers 200 "ok"), h2c (the same
# over cleartext HTTP/2 with prior knowledge) or tcp (PORT listens). Sets TARGET_PID, or
# returns non-zero with START_ERROR set (and nothing left running).
start_proxy() {
  local target="$1" template="$2" port="$4" check="$5" cpus conf ready=0
  T="$3"
  # a target named KIND-VARIANT (haproxy-splice) is started as KIND
  cpus=$(cpus_for_proxy "$T")
  TARGET_PID=""
  START_ERROR=""
  conf="$WORK/$target.${template##*.}"
  PROXY_PORT=$port render "$template" >"$conf"
  case "${target%%-*}" in
    shoal)
      if [ -n "$SHOAL_BUILD_ERROR" ]; then START_ERROR="$SHOAL_BUILD_ERROR"; return 1; fi
      if [ ! -x "$SHOAL_BIN" ]; then START_ERROR="no binary at $SHOAL_BIN"; return 1; fi
      mkdir -p "$WORK/shoal-state"
      RUST_LOG="${SHOAL_RUST_LOG:-warn}" start "$target" "$cpus" "$SHOAL_BIN" up -c "$conf"
      ;;
    haproxy) start "$target" "$cpus" haproxy -db -f "$conf" ;;
    nginx) start "$target" "$cpus" nginx -e "$WORK/nginx.error.log" -p "$WORK" -c "$conf" ;;
    *) START_ERROR="unknown target $target"; return 1 ;;
  esac
  TARGET_PID=$STARTED_PID
  case "$check" in
    http) wait_ready "$port" "$TARGET_PID" 20 && ready=1 ;;
    h2c) wait_ready "$port" "$TARGET_PID" 20 --http2-prior-knowledge && ready=1 ;;
    tcp) wait_listening "$port" "$TARGET_PID" 20 && ready=1 ;;
  esac
  if [ "$ready" = 0 ]; then
    if kill -0 "$TARGET_PID" 2>/dev/null; then
      START_ERROR="not ready ($check) within 20 s"
    else
      START_ERROR="exited at start: $(cat "$WORK/$target.log" "$WORK/nginx.error.log" 2>/dev/null | tail -n 3 | tr '\n|' '  ' | cut -c1-200)"
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

# client_load SECONDS PORT OUTPUT ARGS...: PROTO's client (wrk for http1, h2load for h2)
# with ARGS (its threads, connections, streams) on the client's CPUs against the proxy on
# PORT for SECONDS, its report in OUTPUT; prints the number of requests answered
client_load() {
  local seconds="$1" url="http://127.0.0.1:$2/" out="$3"
  shift 3
  case "$PROTO" in
    http1)
      pinned "$CPU_SIDE" wrk "$@" -d"${seconds}s" "$url" >"$out"
      awk '/requests in/ { print $1 }' "$out"
      ;;
    h2)
      pinned "$CPU_SIDE" h2load "$@" -D "$seconds" "$url" >"$out"
      awk '/^requests:/ { gsub(",", ""); print $8 }' "$out"
      ;;
  esac
}

# to_ms VALUE: wrk latency ("812.00us", "1.23ms", "2.01s") in milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# wrk_result FILE RC: reads the output of `wrk --latency` (and its exit code) into WRK_RPS,
# WRK_P50, WRK_P99 (ms), WRK_REQS, WRK_NON2XX, WRK_SOCKERR, WRK_STATUS (ok|failed) and
# WRK_NOTE (why it failed): any non-2xx/3xx response or socket error fails the run.
wrk_result() {
  local out="$1" rc="$2"
  WRK_RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  WRK_P50=$(awk '$1 == "50%" { print $2 }' "$out")
  WRK_P99=$(awk '$1 == "99%" { print $2 }' "$out")
  WRK_REQS=$(awk '/requests in/ { print $1 }' "$out")
  WRK_NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  WRK_SOCKERR=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$out")
  WRK_REQS=${WRK_REQS:-0}
  WRK_NON2XX=${WRK_NON2XX:-0}
  WRK_SOCKERR=${WRK_SOCKERR:-0}
  [ -n "$WRK_P50" ] && WRK_P50=$(to_ms "$WRK_P50")
  [ -n "$WRK_P99" ] && WRK_P99=$(to_ms "$WRK_P99")
  WRK_STATUS=ok
  WRK_NOTE=""
  if [ "$rc" -ne 0 ]; then WRK_STATUS=failed; WRK_NOTE="wrk exit $rc: $(head -c 160 "$out" | tr '\n\t' '  ')"; fi
  if [ -z "$WRK_RPS" ] || [ -z "$WRK_P50" ] || [ -z "$WRK_P99" ] || [ "$WRK_REQS" = 0 ]; then
    WRK_STATUS=failed
    WRK_NOTE="${WRK_NOTE:-no requests completed}"
  fi
  if [ "$WRK_NON2XX" != 0 ]; then WRK_STATUS=failed; WRK_NOTE="$WRK_NON2XX non-2xx/3xx responses"; fi
  if [ "$WRK_SOCKERR" != 0 ]; then
    WRK_STATUS=failed
    WRK_NOTE="${WRK_NOTE:+$WRK_NOTE; }socket errors: $(awk '/Socket errors:/ { sub(/^ *Socket errors: */, ""); print }' "$out")"
  fi
}

# rss_sampler_start PGID: samples the RSS of the process group (VmRSS summed over its
# processes) every 200 ms in the background; rss_sampler_stop sets RSS_PEAK (kB) to the
# larger of the samples and the summed VmHWM (the sampler can miss a short spike; VmHWM cannot)
rss_sampler_start() {
  RSS_PGID="$1"
  rm -f "$WORK/rss.peak"
  (
    peak=0
    while kill -0 "$RSS_PGID" 2>/dev/null; do
      r=$(group_kb "$RSS_PGID" VmRSS)
      if [ -n "$r" ] && [ "$r" -gt "$peak" ]; then peak=$r; echo "$peak" >"$WORK/rss.peak"; fi
      sleep 0.2
    done
  ) &
  RSS_SAMPLER=$!
  # The sampler forks pgrep and awk five times a second; on the client's side it costs
  # latency figures (which memory.sh does not report), on the proxy's it would cost RPS.
  if [ -n "$CPU_SIDE" ]; then taskset -pc "$CPU_SIDE" "$RSS_SAMPLER" >/dev/null; fi
}
rss_sampler_stop() {
  local hwm
  hwm=$(group_kb "$RSS_PGID" VmHWM)
  kill "$RSS_SAMPLER" 2>/dev/null || true
  wait "$RSS_SAMPLER" 2>/dev/null || true
  RSS_PEAK=$(cat "$WORK/rss.peak" 2>/dev/null || true)
  if [ -n "$hwm" ] && { [ -z "$RSS_PEAK" ] || [ "$hwm" -gt "$RSS_PEAK" ]; }; then RSS_PEAK=$hwm; fi
}

# run_rounds NAME: for each thread count in THREADS and each of ROUNDS rounds, calls
# `measure TARGET THREADS ROUND` for every target in TARGETS, in an order that rotates by one
# every round; sets LOAD_BEFORE, LOAD_AFTER (load averages) and ELAPSED (seconds)
run_rounds() {
  local name="$1" t round target targets order
  read -r -a targets <<<"$TARGETS"
  LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  local start_ts
  start_ts=$(date +%s)
  for t in $THREADS; do
    for ((round = 1; round <= ROUNDS; round++)); do
      mapfile -t order < <(rotated "$round" "${targets[@]}")
      log "${name}threads $t, round $round/$ROUNDS: ${order[*]}"
      for target in "${order[@]}"; do measure "$target" "$t" "$round"; done
    done
  done
  LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
  ELAPSED=$(($(date +%s) - start_ts))
}

# rounds_table TSV: the rows of a rounds.tsv as markdown table rows ("-" shown empty)
rounds_table() {
  local f v line
  tail -n +2 "$1" | while IFS=$'\t' read -r -a f; do
    line="|"
    for v in "${f[@]}"; do [ "$v" = - ] && v=""; line="$line ${v//|//} |"; done
    echo "$line"
  done
}
