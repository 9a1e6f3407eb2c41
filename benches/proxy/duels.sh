#!/usr/bin/env bash
# The duel part of benches/run: shoal against each peer with benches/proxy/duel.sh (both on
# one core at once, each under its own client), over HTTP/1.1 and HTTP/2 and with HTTP/1.1
# uploads (100 kB POSTs, which stream through shoal), and shoal against itself as the
# measure of the method's own error. Run by benches/run; can be run alone:
#
#   OUT=/tmp/x benches/proxy/duels.sh        # SHOAL_BIN=the release build by default
#
# Environment (besides lib.sh's BENCH_PORT, NICE): PEERS ("shoal haproxy haproxy-fwd nginx
# nginx-fwd"), PROTOS ("http1 h2 upload"), ROUNDS (5), DURATION (5 s a round), BURN (2).
# Writes $OUT/duels.md (the report section) and $OUT/history.txt (its History line).
# The whole script is one { } block so that bash parses it completely before running it.
{
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PEERS="${PEERS:-shoal haproxy haproxy-fwd nginx nginx-fwd}"
PROTOS="${PROTOS:-http1 h2 upload}"
# The request body of an upload, in bytes: over the 64 KiB shoal reads whole first.
UPLOAD=100000
export ROUNDS="${ROUNDS:-5}" DURATION="${DURATION:-5}" BURN="${BURN:-2}"
OUT="${OUT:?OUT must name a directory for the results}"
mkdir -p "$OUT"
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

started=$(date +%s)
TSV="$OUT/duels.tsv"
printf 'proto\tpeer\tmedian\tlowest\thighest\trounds\n' >"$TSV"
for proto in $PROTOS; do
  for peer in $PEERS; do
    dir="$OUT/$proto-$peer"
    mkdir -p "$dir"
    log "duel ($proto): $peer against shoal"
    case "$proto" in
      upload) wire=http1 body=$UPLOAD ;;
      *) wire=$proto body=0 ;;
    esac
    # A is the peer, B is shoal: B ÷ A is shoal's rate over the peer's, as the other tables
    if ! PROTO=$wire BODY=$body OUT="$dir" "$HERE/duel.sh" "$peer" shoal >"$dir/log" 2>&1; then
      tail -n 3 "$dir/log" >&2
      printf '%s\t%s\tFAILED\t\t\t\n' "$proto" "$peer" >>"$TSV"
      continue
    fi
    printf '%s\t%s\t%s\n' "$proto" "$peer" "$(cat "$dir/summary.tsv")" >>"$TSV"
  done
done

cell() { # proto peer: "median (lowest–highest)" or FAILED
  awk -F'\t' -v p="$1" -v q="$2" '$1 == p && $2 == q {
      if ($3 == "FAILED") print "FAILED"; else printf "%.2f (%.2f–%.2f)", $3, $4, $5 }' "$TSV"
}
{
  cat <<EOF
## Equal CPU: shoal and each peer on one core at once

${BENCH_LABEL:+Measured $BENCH_LABEL.
}
\`benches/proxy/duel.sh PEER shoal\`: the peer and shoal, 1 worker thread each, pinned to
CPU 0 together with $BURN busy loops, each proxy under its own client pinned to CPU 1 with the
nginx backend of the proxy part (HTTP/1.1: \`wrk -t1 -c25\` each; HTTP/2: \`h2load -t1 -c5 -m5\`
each, cleartext with prior knowledge; uploads: \`wrk -t1 -c25\` each, every request a POST of
$UPLOAD bytes with a Content-Length, which shoal streams and nginx as a proxy first writes to a
temporary file, its default for bodies over 16 KiB). The kernel gives the two proxies equal shares of CPU 0,
and the busy loops keep CPU 0, not CPU 1, the limit; so shoal's rate over the peer's is the
peer's cost per request over shoal's, and what else the machine does slows both alike.
Above 1: shoal serves more with the same CPU. $ROUNDS rounds of $DURATION s after a 2 s
warm-up, both proxies started once; the cell is the median of the rounds' ratios with the
lowest and highest. The **shoal** row is shoal against itself: how far from 1 the method
strays. It is a cost comparison at saturation, not the single-proxy throughput of the
proxy and h2 parts, where each proxy has a core of its own and its event loop's rhythm
(how many events each wake-up finds) also counts.

| peer | HTTP/1.1, shoal ÷ peer | HTTP/2, shoal ÷ peer | uploads, shoal ÷ peer |
|---|---:|---:|---:|
EOF
  for peer in $PEERS; do
    printf '| %s | %s | %s | %s |\n' "$peer" "$(cell http1 "$peer")" "$(cell h2 "$peer")" "$(cell upload "$peer")"
  done
} >"$OUT/duels.md"
for proto in $PROTOS; do
  printf '%s:' "$proto"
  sep=" "
  for peer in $PEERS; do
    printf '%sshoal/%s %s' "$sep" "$peer" "$(awk -F'\t' -v p="$proto" -v q="$peer" '$1 == p && $2 == q { print $3 }' "$TSV")"
    sep=", "
  done
  echo
done | paste -sd';' | sed "s/;/; /g; s/^/duels (equal CPU): /" >"$OUT/history.txt"
log "duels done in $(($(date +%s) - started))s"
exit 0
}
