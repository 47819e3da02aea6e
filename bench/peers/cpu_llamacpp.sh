#!/usr/bin/env bash
# Our CPU engine against llama.cpp on this machine, same shape, threads, prompt
# and output lengths, runs interleaved, then a ratio table (medians, ranges).
#
# llama.cpp is built from the source the llama-cpp-python sdist on PyPI vendors
# (pinned in bench/peers/common.sh), CPU only, outside the repository (no
# llama.cpp code here): everything lives in $ENGRAM_PEERS_CACHE (default
# ~/.cache/engram-peers): the sdist, a venv with the `gguf` package, the build,
# the random-weight GGUFs (bench/peers/make_gguf.py). The first run downloads
# and builds (minutes). bench/peers/gpu_llamacpp.sh is the GPU variant.
#
#   bench/peers/cpu_llamacpp.sh [--shape llama3-1b|lexicon] [--rounds N] [--threads N]
#                               [--prompt N] [--gen N] [--depth N] [--build native|avx2] [--isa ISA]
#
#   --shape   llama3-1b (default): engram-run --synthetic llama3-1b (bf16);
#             lexicon: the default model models/engram-lexicon (bf16, with its Engram
#             layers) against a GGUF of its Qwen3 backbone (llama.cpp has no Engram)
#   --rounds  rounds of (llama-bench, engram-run), alternated (default 5)
#   --threads threads of both (default: all cores)
#   --prompt  prompt tokens, llama-bench pp (default 64)
#   --gen     generated tokens, llama-bench tg (default 32; ours decodes as many
#             steps after the prefill's token). Ours decodes after the prompt, so
#             llama-bench's tg runs at depth --prompt too (-d): at depth 0 its
#             attention reads an empty cache, and on the default model's shape
#             (256 + 256) that alone made its decode 25-35% faster than the same
#             work after the prompt (bench/RESULTS.md, "the default model's shape")
#   --depth   context already in the cache when decoding: llama-bench -d N, ours a
#             prompt of N tokens (prefill is then not compared; default 0)
#   --build   native (default: llama.cpp's GGML_NATIVE, AVX-512 here) or avx2 (no
#             native flags: AVX2 + FMA + F16C)
#   --isa     ours with --cpu-isa ISA (default auto; avx512bf16 rounds activations
#             to bf16 as llama.cpp's bf16 path does)
# Runs build/engram-run from the repository's build/ (scripts/build first).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/peers/common.sh
shape=llama3-1b rounds=5 threads=$(nproc) prompt=64 gen=32 depth=0 flavour=native isa=auto
while [ $# -gt 0 ]; do
  case $1 in
    --shape) shape=$2 ;;
    --rounds) rounds=$2 ;;
    --threads) threads=$2 ;;
    --prompt) prompt=$2 ;;
    --gen) gen=$2 ;;
    --depth) depth=$2 ;;
    --build) flavour=$2 ;;
    --isa) isa=$2 ;;
    *) echo "usage: $0 [--shape llama3-1b|lexicon] [--rounds N] [--threads N] [--prompt N] [--gen N] [--depth N] [--build native|avx2] [--isa ISA]" >&2; exit 2 ;;
  esac
  shift 2
done
case $shape in
  llama3-1b) ours=(--synthetic llama3-1b) ;;
  lexicon) ours=(--model models/engram-lexicon) ;;
  *) echo "$0: unknown shape $shape" >&2; exit 2 ;;
esac
case $flavour in
  native) flags=(-DGGML_NATIVE=ON) ;;
  avx2) flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON) ;;
  *) echo "$0: --build native|avx2" >&2; exit 2 ;;
esac
[ -x build/engram-run ] || { echo "$0: build/engram-run missing: run scripts/build first" >&2; exit 1; }

cache=$peers_cache src=$peers_src
bin=$cache/build-$flavour/bin/llama-bench
gguf=$cache/$shape-bf16.gguf
peers_fetch
if [ ! -x "$bin" ]; then
  cmake -S "$src" -B "$cache/build-$flavour" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF "${flags[@]}" >/dev/null
  cmake --build "$cache/build-$flavour" --target llama-bench -j "$(nproc)" >/dev/null
fi
[ -f "$gguf" ] || "$cache/venv/bin/python" bench/peers/make_gguf.py "$shape" "$gguf"

n_ids=$prompt
[ "$depth" = 0 ] || n_ids=$depth
ids=$(python3 -c "print(','.join(str(i % 8000 + 1) for i in range(1, $n_ids + 1)))")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== $(date -u '+%F %H:%M UTC') $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== shape $shape, $threads threads, prompt $prompt, gen $gen, depth $depth, llama.cpp $flavour build, ours --cpu-isa $isa"
for r in $(seq "$rounds"); do
  if [ "$depth" = 0 ]; then
    "$bin" -m "$gguf" -t "$threads" -p "$prompt" -n 0 -r 1 -o jsonl 2>/dev/null | sed 's/^/llama: /' | tee -a "$log"
    "$bin" -m "$gguf" -t "$threads" -p 0 -n "$gen" -d "$prompt" -r 1 -o jsonl 2>/dev/null | sed 's/^/llama: /' | tee -a "$log"
  else
    "$bin" -m "$gguf" -t "$threads" -p 0 -n "$gen" -d "$depth" -r 1 -o jsonl 2>/dev/null | sed 's/^/llama: /' | tee -a "$log"
  fi
  build/engram-run "${ours[@]}" --device cpu --cpu-isa "$isa" --threads "$threads" --warmup --prompt-ids "$ids" \
    --max-tokens $((gen + 1)) --temperature 0 --ignore-eos 2>&1 >/dev/null | grep 'prefill' | sed 's/^/ours: /' | tee -a "$log"
done
python3 - "$log" "$depth" <<'EOF'
import json, re, statistics, sys
llama = {"prefill": [], "decode": []}
ours = {"prefill": [], "decode": []}
for line in open(sys.argv[1]):
    if line.startswith("llama: "):
        j = json.loads(line[7:])
        llama["prefill" if j["n_prompt"] and not j["n_gen"] else "decode"].append(j["avg_ts"])
    elif line.startswith("ours: "):
        m = re.search(r"\(([\d.]+) tok/s\), decode .* \(([\d.]+) tok/s\)", line)
        ours["prefill"].append(float(m.group(1)))
        ours["decode"].append(float(m.group(2)))
print("| | llama.cpp tok/s | ours tok/s | ratio (medians) |")
print("|---|---|---|---|")
for k in ("prefill", "decode") if sys.argv[2] == "0" else ("decode",):
    a, b = llama[k], ours[k]
    if a and b:
        print("| %s | %.1f-%.1f | %.1f-%.1f | %.2fx |" % (k, min(a), max(a), min(b), max(b),
                                                       statistics.median(b) / statistics.median(a)))
EOF
