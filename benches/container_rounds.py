"""Alternating timed rounds of commands, for the container start benchmarks.

    container_rounds.py OUT TAG ROUNDS BLOCK NAME=COMMAND...

After one unmeasured warm-up of each command (page cache, binaries), ROUNDS rounds each run
every command BLOCK times in a row, the order of the commands reversed every other round; each
round's median in milliseconds goes to OUT/NAME.TAG.txt, one per line. The clock is read right
around the command's own spawn and wait: reading it through `date`, as container_start.sh once
did, added two process starts (~2.5 ms here) to every figure and pulled every ratio towards 1.
"""
import shlex
import statistics
import subprocess
import sys
import time

out, tag, rounds, block = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cmds = [(name, shlex.split(cmd)) for name, cmd in (a.split("=", 1) for a in sys.argv[5:])]
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
for _, argv in cmds:
    subprocess.run(argv, **quiet)
medians = {name: [] for name, _ in cmds}
for i in range(rounds):
    print(f"{tag}: round {i + 1}/{rounds}", file=sys.stderr)
    for name, argv in cmds if i % 2 == 0 else cmds[::-1]:
        times = []
        for _ in range(block):
            t0 = time.perf_counter_ns()
            subprocess.run(argv, **quiet)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        medians[name].append(statistics.median(times))
for name, values in medians.items():
    with open(f"{out}/{name}.{tag}.txt", "w") as f:
        f.writelines(f"{v:.2f}\n" for v in values)
