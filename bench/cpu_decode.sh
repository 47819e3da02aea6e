#!/usr/bin/env bash
# CPU decode speed against the memory-bandwidth bound, on this machine.
# Generates (once) a ~100M-parameter bf16 Llama-shape checkpoint and an Engram
# variant of it, measures read bandwidth with bench-membw, then runs engram-run
# three times each (greedy, 128 new tokens after a 16-token prompt) and prints
# decode tokens/s next to the bound = bandwidth / weight bytes per token.
# Run on a quiet machine (nothing else busy): decode reads memory at the
# machine's rate only when no other process shares it.
#   bench/cpu_decode.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
py=.venv/bin/python
base=build/models/bench-100m
eng=build/models/bench-100m-engram
shape=(--hidden 768 --layers 12 --heads 12 --kv-heads 4 --ffn 2048 --dtype bf16)
[ -f $base/config.json ] || $py tools/gen_checkpoint.py $base "${shape[@]}" --vocab 32000
[ -f $eng/config.json ] || $py tools/gen_checkpoint.py $eng "${shape[@]}" --vocab 1647 \
  --engram --tokenizer tests/fixtures/tokenizers/trained --engram-layers 1,6 \
  --engram-vocab 200000 --engram-embed 512 --engram-heads 8
echo "== $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $threads threads"
OMP_NUM_THREADS=$threads build/bench-membw 1024
ids=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
for m in $base $eng; do
  for i in 1 2 3; do
    OMP_NUM_THREADS=$threads build/engram-run --model $m --prompt-ids $ids --max-tokens 128 \
      --temperature 0 --ignore-eos --threads "$threads" 2>&1 >/dev/null | sed "s|^|$(basename $m): |"
  done
done
