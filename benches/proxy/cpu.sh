#!/usr/bin/env bash
# Where each proxy's CPU goes, per request: user and system time and syscalls, so that a gap
# in the timed runs can be put on the proxy's own code or on the kernel before anyone
# profiles. Each target runs alone behind the proxy benchmark's backend, pinned as in
# bench.sh, under its client for DURATION seconds (5, after one unmeasured run); its process
# group's user and system ticks are read from /proc before and after, and `perf stat`
# counts its syscalls. The same ticks of the backend, and of the client (from `times`), give
# the CPU a request through each proxy costs the other core, which the client and the backend
# share (with PIN=split): when that core is the one at its limit, as in the HTTP/2 timed runs,
# it sets the rate. That core's softirq time is counted too: the loopback's receive work for
# what the client and the backend send runs there, in nobody's user or system time. And the
# TCP segments the host sent per request (all over loopback). ROUNDS (3) rounds, the targets
# in turn in each; prints the medians.
# PROTO http1 (default: wrk -t2 -c50, as bench.sh) or h2 (h2load -t2 -c10 -m5, as h2.sh);
# THREADS (1) worker threads each; TARGETS (shoal haproxy nginx; haproxy-fwd and nginx-fwd
# as in bench.sh). Not part of `benches/run`.
#
#   OUT=/tmp/x benches/proxy/cpu.sh                      # needs perf (Debian package linux-perf)
#   OUT=/tmp/x PROTO=h2 THREADS=2 benches/proxy/cpu.sh
#
# Writes one line per target and round to $OUT/cpu.tsv and the medians to $OUT/cpu.txt.
# The whole script is one { } block so that bash parses it completely before running it.
{
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROTO="${PROTO:-http1}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
THREADS="${THREADS:-1}"
TARGETS="${TARGETS:-shoal haproxy nginx}"
# shellcheck source=benches/proxy/lib.sh
. "$HERE/lib.sh"

case "$PROTO" in
  http1) client=wrk haproxy_template=haproxy.cfg nginx_template=proxy.nginx.conf check=http client_args=(-t2 -c50) ;;
  h2) client=h2load haproxy_template=h2.haproxy.cfg nginx_template=h2.nginx.conf check=h2c client_args=(-t2 -c10 -m5) ;;
  *) log "unknown PROTO $PROTO (http1 or h2)"; exit 1 ;;
esac
for tool in "$client" nginx perf taskset; do
  command -v "$tool" >/dev/null || { log "$tool is missing (apt-get install linux-perf wrk nghttp2-client nginx haproxy)"; exit 1; }
done
check_ports "$BACKEND_PORT" "$SHOAL_PORT" "$SHOAL_ADMIN_PORT" "$HAPROXY_PORT" "$NGINX_PORT"
start_backend

# user and system ticks of every process in process group $1 (group_ticks adds them up)
group_user_system() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v g="$1" '{ sub(/^.*\) /, ""); if ($3 == g) { u += $12; s += $13 } } END { print u + 0, s + 0 }'
}

# TCP segments sent on this host so far (all of them go over loopback here: each is also received)
tcp_segments() { awk '$1 == "Tcp:" && $2 ~ /^[0-9]+$/ { print $12 }' /proc/net/snmp; }
# softirq ticks of CPU $1 so far: the loopback's receive work runs as softirq on the sender's
# CPU and is nobody's user or system time
softirq_ticks() { awk -v c="cpu$1" '$1 == c { print $8 }' /proc/stat; }

TSV="$OUT/cpu.tsv"
printf 'target\tround\trequests\tsyscalls_per_request\tuser_us_per_request\tsystem_us_per_request\tbackend_us_per_request\tclient_us_per_request\tsegments_per_request\tother_softirq_us_per_request\n' >"$TSV"
for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do
    case "$target" in
      shoal) template=shoal.yaml port=$SHOAL_PORT ;;
      haproxy | haproxy-fwd) template=$haproxy_template port=$HAPROXY_PORT ;;
      nginx | nginx-fwd) template=$nginx_template port=$NGINX_PORT ;;
      *) log "unknown target $target (shoal, haproxy, nginx, haproxy-fwd or nginx-fwd)"; exit 1 ;;
    esac
    FORWARD_HEADERS="$(forward_headers_of "$target")" start_proxy "$target" "$template" "$THREADS" "$port" "$check" ||
      { log "$target: $START_ERROR"; exit 1; }
    client_load "$DURATION" "$port" /dev/null "${client_args[@]}" >/dev/null
    read -r user0 system0 < <(group_user_system "$TARGET_PID")
    backend0=$(group_ticks "$BACKEND_PID")
    children_ticks >"$WORK/c0"
    segments0=$(tcp_segments)
    softirq0=$(softirq_ticks "${CPU_SIDE:-1}")
    perf stat -e raw_syscalls:sys_enter -x, -o "$WORK/perf.txt" -p "$(pgrep -g "$TARGET_PID" | paste -sd,)" &
    perf_pid=$!
    requests=$(client_load "$DURATION" "$port" "$WORK/$client.txt" "${client_args[@]}")
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    read -r user1 system1 < <(group_user_system "$TARGET_PID")
    backend1=$(group_ticks "$BACKEND_PID")
    children_ticks >"$WORK/c1"
    segments1=$(tcp_segments)
    softirq1=$(softirq_ticks "${CPU_SIDE:-1}")
    stop_target
    [ "${requests:-0}" -gt 0 ] || { log "no requests answered by $target ($WORK/$client.txt)"; exit 1; }
    syscalls=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 }' "$WORK/perf.txt")
    awk -v t="$target" -v r="$round" -v n="$requests" -v c="${syscalls:-0}" -v tck="$CLK_TCK" \
      -v u=$((user1 - user0)) -v s=$((system1 - system0)) -v b=$((backend1 - backend0)) \
      -v w=$(($(cat "$WORK/c1") - $(cat "$WORK/c0"))) -v g=$((segments1 - segments0)) -v q=$((softirq1 - softirq0)) \
      'BEGIN { printf "%s\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\n", t, r, n, c / n, u * 1e6 / tck / n, s * 1e6 / tck / n, b * 1e6 / tck / n, w * 1e6 / tck / n, g / n, q * 1e6 / tck / n }' >>"$TSV"
    log "$target round $round: $(tail -n 1 "$TSV" | cut -f3-)"
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
: >"$OUT/cpu.txt"
for target in $TARGETS; do
  column() { awk -F'\t' -v t="$target" -v c="$1" '$1 == t { print $c }' "$TSV" | median; }
  rps=$(awk -v n="$(column 3)" -v d="$DURATION" 'BEGIN { printf "%.0f", n / d }')
  echo "$target ($PROTO, $THREADS thread(s), median of $ROUNDS): $rps requests/s, $(column 4) syscalls, user $(column 5) µs, system $(column 6) µs per request; on the other core, backend $(column 7) µs, client $(column 8) µs, softirq $(column 10) µs; $(column 9) TCP segments per request" |
    tee -a "$OUT/cpu.txt"
done
exit 0
}
