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

ROUNDS=${ROUNDS:-11}
python3 "$(dirname "$0")/container_rounds.py" "$WORK" duel "$ROUNDS" "${N:-50}" \
  "A=$(printf '%q ' "$1" run --rootfs "$ROOTFS" -- /bin/true)" \
  "B=$(printf '%q ' "$2" run --rootfs "$ROOTFS" -- /bin/true)"

python3 - "$WORK" "$1" "$2" <<'PY'
import statistics, sys

work, builds = sys.argv[1], dict(zip("AB", sys.argv[2:]))
medians = {}
for name, build in builds.items():
    with open(f"{work}/{name}.duel.txt") as f:
        medians[name] = [float(line) for line in f]
    rounds_ms = " ".join(f"{m:.2f}" for m in medians[name])
    print(f"{name} {build}: median {statistics.median(medians[name]):.2f} ms (rounds {rounds_ms})")
ratios = [b / a for a, b in zip(medians["A"], medians["B"])]
faster = sum(r < 1 for r in ratios)
print(f"B/A per round: {' '.join(f'{r:.3f}' for r in ratios)}")
print(f"B/A median {statistics.median(ratios):.3f}; B faster in {faster} of {len(ratios)} rounds")
PY
