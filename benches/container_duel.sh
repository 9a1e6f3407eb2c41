#!/usr/bin/env bash
# Two shoal builds' container start against each other: `shoal run --rootfs R -- /bin/true`
# on one busybox rootfs, alternating build by build, ROUNDS rounds of N runs each (the order
# flips every round). Prints each build's round medians and B/A per round with its median.
# Needs root.
#
#   benches/container_duel.sh /path/to/shoal-A /path/to/shoal-B
#   ROUNDS=15 N=40 benches/container_duel.sh A B
set -euo pipefail

if [ $# -ne 2 ] || [ ! -x "$1" ] || [ ! -x "$2" ]; then
  echo "usage: benches/container_duel.sh SHOAL_A SHOAL_B (two executable shoal binaries)" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "container_duel.sh needs root (namespaces, cgroups)" >&2; exit 1
fi
if [ ! -x /bin/busybox ]; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2
fi

WORK=$(mktemp -d /tmp/shoal-duel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,etc,proc,sys,dev,tmp}
cp /bin/busybox "$ROOTFS/bin/busybox"
ln -s busybox "$ROOTFS/bin/true"

python3 - "$ROOTFS" "${ROUNDS:-11}" "${N:-50}" "$1" "$2" <<'PY'
import statistics, subprocess, sys, time

rootfs, rounds, n, builds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}

def run(build):
    subprocess.run([build, "run", "--rootfs", rootfs, "--", "/bin/true"], **quiet)

for build in builds:
    run(build)  # warm-up: page cache, the state directory
medians = {build: [] for build in builds}
for r in range(rounds):
    for build in builds if r % 2 == 0 else builds[::-1]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            run(build)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        medians[build].append(statistics.median(times))
for name, build in zip("AB", builds):
    rounds_ms = " ".join(f"{m:.2f}" for m in medians[build])
    print(f"{name} {build}: median {statistics.median(medians[build]):.2f} ms (rounds {rounds_ms})")
ratios = [b / a for a, b in zip(*medians.values())]
faster = sum(r < 1 for r in ratios)
print(f"B/A per round: {' '.join(f'{r:.3f}' for r in ratios)}")
print(f"B/A median {statistics.median(ratios):.3f}; B faster in {faster} of {rounds} rounds")
PY
