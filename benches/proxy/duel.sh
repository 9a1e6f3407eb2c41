#!/usr/bin/env bash
# Two proxies on one core at the same time, each under its own client: the kernel shares the
# core between them, so the ratio of their request rates is the ratio of their costs per
# request, and whatever else the machine is doing slows both alike. On this shared 2-core
# machine, alternating rounds (bench.sh, h2.sh) scatter by ±15% from one run to the next,
# even between two runs of the same binary; a duel of a binary against itself comes out
# within 0.5% of 1. It is the tool for judging a change (shoal against shoal) and a second
# view of the peers (shoal against HAProxy or nginx at equal CPU). Not part of `benches/run`.
#
#   OUT=/tmp/x benches/proxy/duel.sh A B
#
# A and B: shoal (the release build), shoal=PATH (another build), haproxy, haproxy-fwd,
# nginx, nginx-fwd (as in bench.sh; all with 1 worker thread).
# Environment (besides lib.sh's BENCH_PORT, NICE): PROTO http1 (default: wrk -t1 -c25 on each)
# or h2 (h2load -t1 -c5 -m5 on each, cleartext with prior knowledge); BODY (http1 only: each
# request a POST of this many bytes with a Content-Length; 0, the default, a GET); ROUNDS (5); DURATION
# (10 s a round, after one warm-up round); BURN (2) busy loops on the proxies' core, so that
# the proxies' core, not the clients' and backend's, limits the rates.
# Prints one line a round and the median of B ÷ A; writes them to $OUT/duel.txt, and the
# median, lowest and highest ratio and the number of rounds to $OUT/summary.tsv.
# The whole script is one { } block so that bash parses it completely before running it.
{
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROTO="${PROTO:-http1}"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10}"
BURN="${BURN:-2}"
[ $# = 2 ] || { echo "usage: OUT=DIR $0 A B (shoal, shoal=PATH, haproxy[-fwd], nginx[-fwd])" >&2; exit 2; }
# shellcheck source=benches/proxy/lib.sh
. "$HERE/lib.sh"

BODY="${BODY:-0}"
case "$BODY" in
  *[!0-9]* | '') echo "BODY is a number of bytes" >&2; exit 2 ;;
esac
case "$PROTO" in
  http1) client=wrk haproxy_template=haproxy.cfg nginx_template=proxy.nginx.conf ;;
  h2) client=h2load haproxy_template=h2.haproxy.cfg nginx_template=h2.nginx.conf ;;
  *) log "unknown PROTO $PROTO (http1 or h2)"; exit 1 ;;
esac
for tool in "$client" nginx taskset; do
  command -v "$tool" >/dev/null || { log "$tool is missing (apt-get install wrk nghttp2-client nginx haproxy)"; exit 1; }
done
# The two sides take BENCH_PORT+11.. (proxy, admin) so that a bench.sh run's ports stay free.
PORTS=($((BENCH_PORT + 11)) $((BENCH_PORT + 13)))
# The duel needs the split: proxies on CPU 0, clients and backend on CPU 1.
CPU_PROXY=0
CPU_SIDE=1
check_ports "$BACKEND_PORT" "${PORTS[@]}" $((BENCH_PORT + 12)) $((BENCH_PORT + 14))
start_backend

# start_side SIDE SPEC PORT: one proxy with 1 worker thread on the proxies' core
start_side() {
  local side="$1" spec="$2" port="$3" conf command
  case "$spec" in
    shoal | shoal=*)
      local bin="${spec#shoal=}"
      [ "$bin" != shoal ] || bin="$SHOAL_BIN"
      [ -x "$bin" ] || { log "no shoal binary at $bin (scripts/build-pgo, or PGO=0 and cargo build --release)"; exit 1; }
      conf="$WORK/$side.yaml"
      mkdir -p "$WORK/state-$side"
      SHOAL_ADMIN_PORT=$((port + 1)) PROXY_PORT=$port T=1 render shoal.yaml |
        sed -e "s|$WORK/shoal-state|$WORK/state-$side|" >"$conf"
      command=("$bin" up -c "$conf")
      ;;
    haproxy | haproxy-fwd)
      conf="$WORK/$side.cfg"
      FORWARD_HEADERS="$(forward_headers_of "$spec")" PROXY_PORT=$port T=1 render "$haproxy_template" >"$conf"
      sed -i -e "s|$WORK/haproxy.pid|$WORK/$side.pid|" "$conf"
      command=(haproxy -db -f "$conf")
      ;;
    nginx | nginx-fwd)
      conf="$WORK/$side.conf"
      FORWARD_HEADERS="$(forward_headers_of "$spec")" PROXY_PORT=$port T=1 render "$nginx_template" |
        sed -e "s|$WORK/nginx-proxy|$WORK/$side|" >"$conf"
      command=(nginx -e "$WORK/$side.error.log" -p "$WORK" -c "$conf")
      ;;
    *) log "unknown proxy $spec"; exit 2 ;;
  esac
  RUST_LOG=warn start "$side" "$CPU_PROXY" "${command[@]}"
  local ready=(--max-time 1)
  [ "$PROTO" = h2 ] && ready+=(--http2-prior-knowledge)
  if ! wait_ready "$port" "$STARTED_PID" 20 "${ready[@]}"; then
    log "$spec did not come up:"
    tail -n 5 "$WORK/$side.log" >&2 || true
    exit 1
  fi
  log "$side: $spec on 127.0.0.1:$port (pid $STARTED_PID)"
}

wrk_args=()
if [ "$BODY" -gt 0 ]; then
  [ "$PROTO" = http1 ] || { log "BODY is for PROTO=http1"; exit 2; }
  printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\n' "$BODY" >"$WORK/post.lua"
  wrk_args=(-s "$WORK/post.lua")
fi

# load PORT SECONDS OUTPUT: the client's load on one side, on the clients' core
load() {
  case "$PROTO" in
    http1) pinned "$CPU_SIDE" wrk -t1 -c25 -d"$2s" "${wrk_args[@]}" "http://127.0.0.1:$1/" >"$3" 2>&1 ;;
    h2) pinned "$CPU_SIDE" h2load -t1 -c5 -m5 -D "$2" "http://127.0.0.1:$1/" >"$3" 2>&1 ;;
  esac
}
# rate OUTPUT: requests a second, or nothing when a request failed
rate() {
  case "$PROTO" in
    http1) awk '/Non-2xx|Socket errors/ { bad = 1 } /^Requests\/sec/ { r = $2 } END { if (!bad) print r }' "$1" ;;
    h2) awk '/^requests:/ { gsub(",", ""); if ($10 + $12 + $14 > 0) bad = 1 } /^status codes:/ { gsub(",", ""); if ($5 + $7 + $9 > 0) bad = 1 }
             /^finished in/ { gsub(",", ""); r = $4 } END { if (!bad) print r }' "$1" ;;
  esac
}

start_side a "$1" "${PORTS[0]}"
start_side b "$2" "${PORTS[1]}"
for ((i = 0; i < BURN; i++)); do start "burn$i" "$CPU_PROXY" sh -c 'while :; do :; done'; done

: >"$OUT/duel.txt"
ratios=()
for ((round = 0; round <= ROUNDS; round++)); do
  seconds=$DURATION
  [ "$round" -gt 0 ] || seconds=2
  load "${PORTS[0]}" "$seconds" "$WORK/a.out" &
  a_pid=$!
  load "${PORTS[1]}" "$seconds" "$WORK/b.out" &
  b_pid=$!
  wait "$a_pid" "$b_pid" || true
  a=$(rate "$WORK/a.out")
  b=$(rate "$WORK/b.out")
  if [ -z "$a" ] || [ -z "$b" ]; then
    log "round $round: a request failed (see $OUT/a.out, $OUT/b.out)"
    cp "$WORK/a.out" "$WORK/b.out" "$OUT/"
    exit 1
  fi
  [ "$round" -gt 0 ] || continue
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
  ratios+=("$ratio")
  echo "round $round: A ($1) $a/s, B ($2) $b/s, B/A $ratio" | tee -a "$OUT/duel.txt"
done
# median, lowest, highest, rounds: also in $OUT/summary.tsv, for benches/proxy/duels.sh
printf '%s\n' "${ratios[@]}" | sort -n |
  awk '{ v[NR] = $1 } END { printf "%.3f\t%s\t%s\t%d\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR], NR }' \
    >"$OUT/summary.tsv"
read -r median lowest highest _ <"$OUT/summary.tsv"
echo "$PROTO: B ($2) ÷ A ($1) = $median (median of $ROUNDS rounds, $lowest–$highest: ${ratios[*]})" | tee -a "$OUT/duel.txt"
exit 0
}
