#!/usr/bin/env bash
# Container start latency: `shoal run` against `runc run` (and `crun run` where it works) on
# the same busybox rootfs, plus create-to-listening time of busybox httpd in isolated mode.
# Needs root. Prints a markdown section on stdout; progress goes to stderr.
#
#   benches/container_start.sh                # builds the release binary if needed
#   SHOAL=/path/to/shoal ROUNDS=11 BLOCK=20 benches/container_start.sh
#
# Two ways, both alternating the runtimes round by round so that the machine's drift falls
# on both: in blocks (each round runs one runtime BLOCK times in a row, then the other; a
# round's figure is its median), which is the headline, and one run at a time (SINGLE_ROUNDS
# rounds), where each run starts right after the other runtime's, in the caches it left and
# beside the kernel work it left (such as its network namespace's teardown, which a kernel
# worker does after the exit). A block's median is steadier than one run; both are reported.
# With HISTORY=FILE it also writes its figures there as one line (benches/run's History).
set -euo pipefail

# runc's time varies by a quarter from round to round here; 11 rounds of 20 take ~15 s.
ROUNDS=${ROUNDS:-11}
BLOCK=${BLOCK:-20}
SINGLE_ROUNDS=${SINGLE_ROUNDS:-21}
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHOAL=${SHOAL:-$("$REPO/benches/shoal-path")}

log() { echo "$@" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "container_start.sh needs root (namespaces, cgroups)"; exit 1
fi
if ! command -v runc >/dev/null || [ ! -x /bin/busybox ]; then
  log "installing runc and busybox-static"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc busybox-static >&2
fi
if [ ! -x "$SHOAL" ]; then
  log "building shoal (release)"
  if [ "${PGO:-1}" = 0 ]; then
    (cd "$REPO" && cargo build --release -p shoal >&2)
  else
    "$REPO/scripts/build-pgo" >/dev/null
  fi
fi

WORK=$(mktemp -d /tmp/shoal-bench.XXXXXX)
HTTPD_PID=
cleanup() {
  [ -n "$HTTPD_PID" ] && kill "$HTTPD_PID" 2>/dev/null || true
  runc delete -f shoal-bench >/dev/null 2>&1 || true
  crun delete -f shoal-bench >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# One busybox rootfs shared by all runtimes.
BUNDLE=$WORK/bundle
ROOTFS=$BUNDLE/rootfs
mkdir -p "$ROOTFS/bin" "$ROOTFS"/{etc,proc,sys,dev,tmp,www}
cp /bin/busybox "$ROOTFS/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$ROOTFS/bin/$applet"
done
TOKEN=shoal-bench-$$
echo "$TOKEN" > "$ROOTFS/www/index.html"
(cd "$BUNDLE" && runc spec)
sed -i -e 's/"terminal": true/"terminal": false/' -e 's/"sh"$/"\/bin\/true"/' "$BUNDLE/config.json"

now_ns() { date +%s%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", (b - a) / 1e6 }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# `time_rounds TAG ROUNDS BLOCK NAME=COMMAND...`: see container_rounds.py; each round's
# median goes to $WORK/NAME.TAG.txt.
time_rounds() {
  python3 "$REPO/benches/container_rounds.py" "$WORK" "$@"
}

CRUN=
if command -v crun >/dev/null && crun run --bundle "$BUNDLE" shoal-bench >/dev/null 2>&1; then
  CRUN=crun
else
  log "crun does not run on this host (hybrid cgroups); leaving it out"
fi

RUNS=("shoal=$(printf '%q ' "$SHOAL" run --rootfs "$ROOTFS" -- /bin/true)"
      "runc=$(printf '%q ' runc run --bundle "$BUNDLE" shoal-bench)")
[ -n "$CRUN" ] && RUNS+=("crun=$(printf '%q ' crun run --bundle "$BUNDLE" shoal-bench)")
time_rounds blocks "$ROUNDS" "$BLOCK" "${RUNS[@]}"
time_rounds single "$SINGLE_ROUNDS" 1 "${RUNS[@]}"
SHOAL_MED=$(median < "$WORK/shoal.blocks.txt")
RUNC_MED=$(median < "$WORK/runc.blocks.txt")
SINGLE_SHOAL=$(median < "$WORK/shoal.single.txt")
SINGLE_RUNC=$(median < "$WORK/runc.single.txt")
SINGLE_RATIO=$(awk -v a="$SINGLE_SHOAL" -v b="$SINGLE_RUNC" 'BEGIN { printf "%.2f", a / b }')

# Create-to-listening: from launching `shoal run --net isolated` until httpd answers an
# HTTP request at the container's address.
STATE_DIR=/run/shoal
: > "$WORK/httpd.txt"
for i in $(seq 5); do
  name=bench-httpd-$$-$i
  t0=$(now_ns)
  "$SHOAL" run --rootfs "$ROOTFS" --net isolated --name "$name" -- httpd -f -p 8080 -h /www &
  HTTPD_PID=$!
  addr=
  for _ in $(seq 2000); do
    # The address is in the state file from create on, but the host has no route to it
    # until the network is set up: probing before "running" would send the request out of
    # the default route, to whatever owns that address elsewhere.
    if [ -z "$addr" ] && grep -qs '"running"' "$STATE_DIR/containers/$name/state.json"; then
      addr=$(sed -n 's/.*"address": "\([0-9.]*\):.*/\1/p' "$STATE_DIR/containers/$name/state.json")
    fi
    # The token proves the answer comes from this container, not another owner of the address.
    if [ -n "$addr" ] && timeout 0.1 /bin/busybox wget -q -O - "http://$addr:8080/" 2>/dev/null | grep -q "$TOKEN"; then
      t1=$(now_ns); ms "$t0" "$t1" >> "$WORK/httpd.txt"; break
    fi
    sleep 0.002
  done
  kill -TERM "$HTTPD_PID"; wait "$HTTPD_PID" 2>/dev/null || true
  HTTPD_PID=
done
HTTPD_MED=$(median < "$WORK/httpd.txt")
RATIO=$(awk -v a="$SHOAL_MED" -v b="$RUNC_MED" 'BEGIN { printf "%.2f", a / b }')
if [ -n "${HISTORY:-}" ]; then
  echo "container: shoal run $SHOAL_MED ms, runc run $RUNC_MED ms, ratio $RATIO (one run at a time: $SINGLE_SHOAL ms, $SINGLE_RUNC ms, $SINGLE_RATIO); isolated httpd create-to-listening $HTTPD_MED ms" >"$HISTORY"
fi

cat <<MD
## Container start: shoal vs runc

\`/bin/true\` in a busybox-static rootfs, start to exit (\`benches/container_start.sh\`;
$(nproc) cores, $(uname -r), $(runc --version | head -1)), $ROUNDS rounds after one warm-up
each; each round runs one runtime $BLOCK times in a row, then the other (the order reversed
every other round), and its figure is that block's median.
shoal: \`shoal run --rootfs R -- /bin/true\` (new mount/pid/uts/ipc/cgroup/net namespaces,
cgroup with pids limit, pivot_root, stdio attached, removed on exit). runc: \`runc run\` with
the bundle from \`runc spec\` (args /bin/true, no terminal).

| runtime | median (ms) | each round's median (ms) |
|---|---:|---|
| shoal run | $SHOAL_MED | $(paste -sd' ' "$WORK/shoal.blocks.txt") |
| runc run | $RUNC_MED | $(paste -sd' ' "$WORK/runc.blocks.txt") |
MD
if [ -n "$CRUN" ]; then
  echo "| crun run | $(median < "$WORK/crun.blocks.txt") | $(paste -sd' ' "$WORK/crun.blocks.txt") |"
else
  echo "| crun run | n/a | refuses this host's hybrid cgroup layout |"
fi
cat <<MD

shoal / runc median ratio: **$RATIO**

One run at a time instead, $SINGLE_ROUNDS rounds (each run right after the other runtime's,
in the caches and beside the kernel work that one left): shoal $SINGLE_SHOAL ms, runc
$SINGLE_RUNC ms, ratio $SINGLE_RATIO (shoal: $(paste -sd' ' "$WORK/shoal.single.txt");
runc: $(paste -sd' ' "$WORK/runc.single.txt")).

Create-to-listening, busybox httpd, \`--net isolated\` (veth + /30 address), 5 runs:
median **$HTTPD_MED ms** (all: $(paste -sd' ' "$WORK/httpd.txt") ms).
MD
