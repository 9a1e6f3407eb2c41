# Ratios for the benchmark reports (report.sh, h2.sh through lib.sh); sourced, not run.
# shellcheck shell=bash

# ratio A B: A/B with 2 decimals, or n/a
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}

# paired TSV THREADS PEER COLUMN: shoal ÷ PEER of a rounds.tsv column (5 RPS, 7 p99) round
# by round, each round's two runs minutes apart at most: "median (min–max)" and how many rounds
# shoal was ahead (more RPS, or a shorter p99), "n/a" without a round where both ran.
# The machine's speed drifts over a run; a ratio taken within one round leaves that drift out.
paired() {
  awk -F'\t' -v t="$2" -v peer="$3" -v c="$4" '
    NR == 1 || $1 != t || $4 != "ok" { next }
    $2 == "shoal" { s[$3] = $c } $2 == peer { p[$3] = $c }
    END {
      for (r in s) if ((r in p) && p[r] + 0 > 0) {
        x = s[r] / p[r]; v[++n] = x
        if ((c == 5 && x > 1) || (c != 5 && x < 1)) ahead++
      }
      if (n == 0) { print "n/a\tn/a"; exit }
      for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
      m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
      printf "%.2f (%.2f–%.2f)\t%d/%d\n", m, v[1], v[n], ahead, n
    }' "$1"
}

# paired_cells TSV THREADS PEER: the four per-round cells of a ratio-table row, RPS then p99
# ("median (min–max) | ahead | median (min–max) | ahead")
paired_cells() {
  local rps rps_ahead p99 p99_ahead
  IFS=$'\t' read -r rps rps_ahead < <(paired "$1" "$2" "$3" 5)
  IFS=$'\t' read -r p99 p99_ahead < <(paired "$1" "$2" "$3" 7)
  echo "$rps | $rps_ahead | $p99 | $p99_ahead"
}
