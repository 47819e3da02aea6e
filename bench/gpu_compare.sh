#!/bin/bash
# Two builds of the server side by side on the GPU machine: each SECTION of
# bench/gpu.sh run ROUNDS times (default 2) alternating pack A and pack B, so
# that drift of the machine falls on both (a before/after comparison within
# one device call). From the repository root:
#   bench/gpu_compare.sh PACK_A PACK_B OUTDIR SECTION...
# Everything goes to stdout and to OUTDIR/compare.log (one file: the device
# tool brings back few files).
set -uo pipefail
a=$1; b=$2; outdir=$3; shift 3
mkdir -p "$outdir/tmp"
for r in $(seq "${ROUNDS:-2}"); do
  for s in "$@"; do
    for p in A B; do
      pack=$a; [ $p = B ] && pack=$b
      echo "=== round $r, $s, pack $p ($pack)"
      "$pack/gpu.sh" "$pack" "$outdir/tmp" "$s"
    done
  done
done 2>&1 | tee "$outdir/compare.log"
rm -rf "$outdir/tmp"
