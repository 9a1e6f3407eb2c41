#!/usr/bin/env bash
# Turns the results of benches/proxy/bench.sh ($1/rounds.tsv, $1/meta.env, configs) into the
# markdown "Proxy" section of BENCHMARKS.md, on stdout.
# The whole script is one { } block so that bash parses it completely before running it:
# editing the file while it runs cannot derail a run in progress.
{
set -euo pipefail
OUT="$1"
# shellcheck disable=SC1091
. "$OUT/meta.env"
TSV="$OUT/rounds.tsv"
# shellcheck source=benches/proxy/ratios.sh
. "$(dirname "$0")/ratios.sh"

# Medians per (threads, target) over the rounds; a cell with any failed round shows no numbers.
summary() {
  awk -F'\t' -v want="$1" '
    function median(list,   a, n, i, j, x) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > x + 0; j--) a[j + 1] = a[j]; a[j + 1] = x }
      if (n == 0) return ""
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function fmt(x, d) { return (x == "" || x == "-") ? "-" : sprintf("%." d "f", x) }
    NR == 1 { next }
    {
      k = $1 SUBSEP $2
      if (!(k in seen)) { seen[k] = 1; keys[++nk] = k }
      total[k]++
      if ($4 == "ok") { ok[k]++; rps[k] = rps[k] " " $5; p50[k] = p50[k] " " $6; p99[k] = p99[k] " " $7; if ($11 != "-") cpu[k] = cpu[k] " " $11 }
      else { failed[k]++; if (!(k in why)) why[k] = $14 }
      n2[k] += $9; se[k] += $10
      if ($12 != "-") idle[k] = idle[k] " " $12
      if ($13 != "-" && $13 + 0 > peak[k] + 0) peak[k] = $13
      if ($15 != "-" && $15 != "") oth[k] = oth[k] " " $15
    }
    END {
      for (i = 1; i <= nk; i++) {
        k = keys[i]; split(k, kk, SUBSEP)
        if (failed[k] > 0) { mr = "-"; m50 = "-"; m99 = "-"; mc = "-" }
        else { mr = median(rps[k]); m50 = median(p50[k]); m99 = median(p99[k]); mc = median(cpu[k]) }
        # threads target status ok total rps p50 p99 cpu non2xx sockerr idle peak why
        printf "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", kk[1], kk[2], (failed[k] > 0 ? "failed" : "ok"),
          ok[k], total[k], fmt(mr, 0), fmt(m50, 3), fmt(m99, 3), fmt(mc, 2), n2[k], se[k], (idle[k] == "" ? "-" : median(idle[k])), (peak[k] == "" ? "-" : peak[k]), (why[k] == "" ? "-" : why[k]), (oth[k] == "" ? "-" : fmt(median(oth[k]), 2))
      }
    }' "$TSV" | { if [ -n "$1" ]; then awk -F'\t' -v w="$1" '$1 == w'; else cat; fi; }
}

SUMMARY="$(summary "")"
get() { # threads target column(1-based, of the summary)
  awk -F'\t' -v t="$1" -v g="$2" -v c="$3" '$1 == t && $2 == g { print $c }' <<<"$SUMMARY"
}
mib() { awk -v k="$1" 'BEGIN { if (k == "" || k == "-") print "n/a"; else printf "%.1f MiB", k / 1024 }'; }

cat <<EOF
## Proxy: throughput and latency
${BENCH_LABEL:+
Measured $BENCH_LABEL.
}
wrk (\`-t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency\`, HTTP/1.1 keep-alive) against
\`GET /\` of an nginx backend that answers \`200 "ok"\`: **direct** to the backend, and through
**shoal**, **HAProxy** and **nginx** as a reverse proxy, each held to 1 and then 2 worker
threads (HAProxy \`nbthread\`, nginx \`worker_processes\`, shoal \`workers\`). **haproxy** and
**nginx** forward requests as they are; **haproxy-fwd** and **nginx-fwd** also do the header
work SPEC asks of shoal on every request: \`X-Forwarded-For\`, \`-Proto\` and \`-Host\` set, an
\`x-request-id\` made when absent (a UUID in HAProxy, 32 hex digits in nginx) and sent to the
backend and back to the client, \`Host\` passed on (configs at the end). $ROUNDS rounds;
in each round every target is started fresh, warmed up for ${WARMUP} s, measured, stopped;
the order of targets rotates by one every round. Numbers are **medians over the rounds**.
A cell whose target failed to start, died, or for which wrk reported any non-2xx/3xx
response or socket error in any round shows **FAILED** instead of numbers.

"proxy CPU" is the CPU time the proxy's processes used during the measured run divided by
its length (1.00 = one core busy); "RPS/core" is RPS divided by it. "background CPU" is what
everything else on the machine (not the client, backend or proxy) used meanwhile, in cores,
from \`/proc/stat\`: the noise level of that measurement (median over the rounds).

Run took ${ELAPSED} s; load average before ${LOAD_BEFORE}, after ${LOAD_AFTER} (other
builds may share the machine: compare ratios, not absolute numbers).

### Pinning

EOF
if [ "$PIN" = split ]; then
  cat <<EOF
\`PIN=split\` (default): with 2 cores, the client (wrk) and the backend nginx are pinned to
CPU $CPU_SIDE with \`taskset\`; a 1-thread proxy is pinned to CPU 0 alone, a 2-thread proxy may
use CPUs 0-1 (so it then competes with the client and backend for CPU $CPU_SIDE, as it would on
any 2-core host). Every proxy gets exactly the same CPU, and "direct" (wrk and backend on
CPU $CPU_SIDE, CPU 0 idle) is the ceiling the client side can drive: a 1-thread proxy that is
as cheap as it can be approaches the direct figure. Without pinning, the scheduler spreads a
1-thread proxy, wrk's 2 threads and the backend over both cores differently from run to run
and between proxies, which made rounds noisier. \`PIN=none\` turns pinning off.
EOF
else
  cat <<EOF
\`PIN=none\`: nothing is pinned; client, backend and proxy share all $(nproc) cores as the
scheduler decides.
EOF
fi

if [ "${NICE:-0}" != 0 ]; then
  cat <<EOF

All benchmark processes (client, backend, proxies) run at nice $NICE so that builds running
on the same machine at the same time take less from them (\`NICE=0\` to not).
EOF
fi

for t in $THREADS; do
  cat <<EOF

### $t thread$([ "$t" = 1 ] || echo s) per proxy

| target | RPS | p50 (ms) | p99 (ms) | RPS vs direct | proxy CPU | RPS/core | ok rounds | non-2xx | socket errors | background CPU |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
  direct_rps=$(get "$t" direct 6)
  while IFS=$'\t' read -r th target status okn total rps p50 p99 cpu n2 se idle peak why oth; do
    [ -n "$th" ] || continue
    if [ "$status" = ok ]; then
      per_core=$(awk -v r="$rps" -v c="$cpu" 'BEGIN { if (c == "" || c == "-" || c + 0 == 0) print "—"; else printf "%.0f", r / c }')
      vs=$( [ "$target" = direct ] && echo 1.00 || ratio "$rps" "$direct_rps")
      [ "$cpu" = - ] && cpu="—"
      echo "| $target | $rps | $p50 | $p99 | $vs | $cpu | $per_core | $okn/$total | $n2 | $se | $oth |"
    else
      why=${why//|/\/}
      echo "| $target | **FAILED** | — | — | — | — | — | $okn/$total | $n2 | $se | $oth |"
      echo "|  | _${why:0:160}_ | | | | | | | | | |"
    fi
  done < <(summary "$t")
done

cat <<EOF

### Ratios (shoal ÷ peer, of the medians)

RPS: above 1 means shoal serves more. p99: above 1 means shoal's tail is slower. The last
four columns take the ratio within each round instead (shoal and the peer run at most a few
minutes apart there, so the machine's drift over the run falls out): its median over the
rounds with the lowest and highest, and in how many rounds shoal was ahead.

| threads | peer | RPS shoal/peer | p99 shoal/peer | RPS, per round | shoal more RPS | p99, per round | shoal shorter p99 |
|---|---|---:|---:|---:|---:|---:|---:|
EOF
for t in $THREADS; do
  s_r=$(get "$t" shoal 6)
  s_p=$(get "$t" shoal 8)
  for peer in $TARGETS; do
    [ "$peer" != shoal ] || continue
    echo "| $t | $peer | $(ratio "$s_r" "$(get "$t" "$peer" 6)") | $(ratio "$s_p" "$(get "$t" "$peer" 8)") | $(paired_cells "$TSV" "$t" "$peer") |"
  done
done

cat <<EOF

### shoal memory

Resident set size of the \`shoal up\` process (\`VmRSS\` in \`/proc/PID/status\`): idle is read
after it answers its first request and before the warm-up; peak is \`VmHWM\` (the kernel's
high-water mark) at the end of the measured run (median of idle over the rounds, maximum
of peak).

| threads | idle RSS | peak RSS under load |
|---|---:|---:|
EOF
for t in $THREADS; do
  echo "| $t | $(mib "$(get "$t" shoal 12)") | $(mib "$(get "$t" shoal 13)") |"
done

cat <<'EOF'

### Every round

<details><summary>one line per measured run</summary>

| threads | target | round | status | RPS | p50 (ms) | p99 (ms) | requests | non-2xx | socket errors | proxy CPU | background CPU | RSS idle→peak (kB) | note |
|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|
EOF
tail -n +2 "$TSV" | while IFS=$'\t' read -r th target round status rps p50 p99 reqs n2 se cpu idle peak note oth; do
  note=${note//|/\/}
  [ "$note" = - ] && note=""
  [ "$cpu" = - ] && cpu=""
  for v in rps p50 p99 reqs n2 se oth; do [ "${!v}" = - ] && printf -v "$v" '%s' ""; done
  mem=""
  [ "$idle$peak" != -- ] && mem="$idle→$peak"
  echo "| $th | $target | $round | $status | $rps | $p50 | $p99 | $reqs | $n2 | $se | $cpu | $oth | $mem | ${note:0:200} |"
done
echo
echo "</details>"

strip() { sed -e "s|$WORK|\$TMP|g" "$1"; }
cat <<EOF

### Exact commands and configs

Ports (loopback only): backend $BACKEND_PORT, shoal $SHOAL_PORT, HAProxy $HAPROXY_PORT, nginx proxy $NGINX_PORT.
\`\$TMP\` is a fresh \`mktemp -d\` directory (all pids, logs, temp files of nginx live there;
\`/etc/nginx\` and system services are not touched). \`N\` is the thread count.

\`\`\`sh
$( [ "$PIN" = split ] && echo "taskset -c $CPU_SIDE nginx -e \$TMP/backend.error.log -p \$TMP -c \$TMP/backend.conf          # backend" || echo "nginx -e \$TMP/backend.error.log -p \$TMP -c \$TMP/backend.conf          # backend")
$( [ "$PIN" = split ] && echo "taskset -c 0|0-1 shoal up -c \$TMP/shoal.yaml                       # proxy (1|2 threads)" || echo "shoal up -c \$TMP/shoal.yaml")
$( [ "$PIN" = split ] && echo "taskset -c 0|0-1 haproxy -db -f \$TMP/haproxy.cfg" || echo "haproxy -db -f \$TMP/haproxy.cfg")
$( [ "$PIN" = split ] && echo "taskset -c 0|0-1 nginx -e \$TMP/nginx.error.log -p \$TMP -c \$TMP/nginx.conf" || echo "nginx -e \$TMP/nginx.error.log -p \$TMP -c \$TMP/nginx.conf")
$( [ "$PIN" = split ] && echo "taskset -c $CPU_SIDE " || true)wrk -t$WRK_THREADS -c$CONNECTIONS -d${WARMUP}s http://127.0.0.1:PORT/                      # warm-up, discarded
$( [ "$PIN" = split ] && echo "taskset -c $CPU_SIDE " || true)wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency http://127.0.0.1:PORT/           # measured
\`\`\`

<details><summary>backend nginx</summary>

\`\`\`nginx
$(strip "$OUT/backend.nginx.conf")
\`\`\`
</details>

<details><summary>shoal</summary>

\`\`\`yaml
$(strip "$OUT/shoal.yaml")
\`\`\`
</details>

<details><summary>HAProxy</summary>

\`\`\`
$(strip "$OUT/haproxy.cfg")
\`\`\`
</details>

<details><summary>nginx as proxy</summary>

\`\`\`nginx
$(strip "$OUT/proxy.nginx.conf")
\`\`\`
</details>

<details><summary>haproxy-fwd: HAProxy's config with this at @FORWARD_HEADERS@</summary>

\`\`\`
$(cat "$OUT/haproxy.forward.cfg")
\`\`\`
</details>

<details><summary>nginx-fwd: nginx's config with this at @FORWARD_HEADERS@</summary>

\`\`\`nginx
$(cat "$OUT/nginx.forward.conf")
\`\`\`
</details>
EOF
exit
}
