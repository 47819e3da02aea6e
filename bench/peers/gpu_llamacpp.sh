#!/usr/bin/env bash
# Our CUDA engine against llama.cpp's on the same GPU, the Llama-3.1-8B shape in
# bf16 (random weights on both sides), runs interleaved, then a ratio table
# (medians) with llama.cpp's version and flags: issue 21's peer table.
#
# The GPU machine has no network, so this comes in two halves:
#   bench/peers/gpu_llamacpp.sh --pack DIR
#       here: the llama-cpp-python sdist (bench/peers/common.sh: fetched once
#       into ~/.cache/engram-peers) trimmed to what the CUDA build of
#       llama-bench and llama-batched-bench needs, plus gguf-py for
#       make_gguf.py, as DIR/llama.cpp.tar.gz (DIR inside the repository and
#       git-ignored, e.g. .gpu-peers, so that the device tool carries it)
#   bench/peers/gpu_llamacpp.sh --run DIR [--build-only] [--rounds N]
#       on the GPU machine, from the repository root, with our binaries in
#       PACK (default .gpu-pack, scripts/gpu-pack): builds llama.cpp with CUDA
#       for sm_90 in WORK (default /tmp/engram-peers; -j16; kept, so a second
#       call skips it), writes a random-weight bf16 GGUF of our synthetic
#       llama3-8b's shape (bench/peers/make_gguf.py, numpy only), then per
#       round: single-stream decode (llama-bench tg128 -fa 1 / engram-run
#       --synthetic llama3-8b), prefill of 512 and 8192 tokens (llama-bench
#       pp, the better of -ub 512 and 2048 / engram-run with the prompt as one
#       chunk), and 512 prompt + 256 output tokens per sequence at 1, 16, 64
#       and 256 in parallel (llama-batched-bench total t/s / bench-throughput
#       total tok/s). --build-only stops after the build and the GGUF (the
#       build takes minutes: one device call for it, one for the runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/peers/common.sh
mode= dir= rounds=2 build_only=0
while [ $# -gt 0 ]; do
  case $1 in
    --pack) mode=pack dir=$2; shift ;;
    --run) mode=run dir=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --build-only) build_only=1 ;;
    *) mode= ; break ;;
  esac
  shift
done
[ -n "$mode" ] && [ -n "$dir" ] || { echo "usage: $0 --pack DIR | --run DIR [--build-only] [--rounds N]" >&2; exit 2; }
tarball=$dir/llama.cpp.tar.gz

if [ $mode = pack ]; then
  peers_fetch
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  t=$stage/llama.cpp
  mkdir -p "$t/ggml/src" "$t/tools" "$t/gguf-py"
  # the library, common/ and its vendored headers; ggml with its CPU and CUDA backends only
  (cd "$peers_src" && cp -r CMakeLists.txt LICENSE licenses cmake include src common vendor "$t/")
  (cd "$peers_src/ggml" && cp -r CMakeLists.txt cmake include "$t/ggml/")
  (cd "$peers_src/ggml/src" && cp -r $(ls -p | grep -v / ) ggml-cpu ggml-cuda "$t/ggml/src/")
  (cd "$peers_src/tools" && cp -r llama-bench batched-bench "$t/tools/")
  cp -r "$peers_src/gguf-py/gguf" "$t/gguf-py/"
  rm -rf "$t/vendor/miniaudio" "$t/vendor/stb" # mtmd's, not built
  sed -i '/miniaudio\|stb)/d' "$t/vendor/CMakeLists.txt"
  cat >"$t/tools/CMakeLists.txt" <<'EOF'
# trimmed by engram's bench/peers/gpu_llamacpp.sh: the two benchmarks only
llama_add_compile_flags()
add_subdirectory(batched-bench)
add_subdirectory(llama-bench)
EOF
  mkdir -p "$dir"
  tar -czf "$tarball" -C "$stage" llama.cpp
  echo "gpu_llamacpp: $tarball: $(du -h "$tarball" | cut -f1) ($(du -sh "$t" | cut -f1) unpacked), llama.cpp $peers_commit from llama-cpp-python $peers_version"
  exit 0
fi

pack=${PACK:-.gpu-pack} work=${WORK:-/tmp/engram-peers}
gguf=$work/llama3-8b-bf16.gguf
bin=$work/build/bin
flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON
       -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
       -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_COMMIT=$peers_commit)
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
echo "== llama.cpp $peers_commit (llama-cpp-python $peers_version), cmake ${flags[*]}"
mkdir -p "$work"
if [ ! -x "$bin/llama-bench" ] || [ ! -x "$bin/llama-batched-bench" ]; then
  t0=$(date +%s)
  rm -rf "$work/llama.cpp" && tar -xzf "$tarball" -C "$work"
  export PATH=$PATH:/usr/local/cuda/bin
  cmake -S "$work/llama.cpp" -B "$work/build" "${flags[@]}" >"$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log"; exit 1; }
  cmake --build "$work/build" --target llama-bench llama-batched-bench -j 16 >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log"; exit 1; }
  echo "== built in $(( $(date +%s) - t0 )) s"
fi
if [ ! -f "$gguf" ]; then
  t0=$(date +%s)
  PYTHONPATH=$work/llama.cpp/gguf-py python3 bench/peers/make_gguf.py llama3-8b "$gguf.tmp" && mv "$gguf.tmp" "$gguf"
  echo "== $gguf: $(du -h "$gguf" | cut -f1) in $(( $(date +%s) - t0 )) s"
fi
[ $build_only = 1 ] && exit 0

set +e # a failed run leaves its row "missing" in the table; the rest go on
ids() { seq -s, 1 "$1"; }
log=$work/run.log
: >"$log"
lb=(-m "$gguf" -ngl 99 -fa 1 -r 3 -o jsonl)
bb=(-m "$gguf" -ngl 99 -fa on -c 200000 -b 2048 -ub 512 -npp 512 -ntg 256 -npl 1,16,64,256)
echo "== llama-bench ${lb[*]} -p 0 -n 128 | -p 512,8192 -n 0 -b 8192 -ub 512,2048"
echo "== llama-batched-bench ${bb[*]}"
for r in $(seq "$rounds"); do
  echo "-- round $r"
  "$bin/llama-bench" "${lb[@]}" -p 0 -n 128 2>>"$work/llama.err" | sed 's/^/llama-bench: /' | tee -a "$log"
  "$pack/run" engram-run --synthetic llama3-8b --device cuda --prompt-ids "$(ids 16)" --max-tokens 129 \
    --temperature 0 --ignore-eos --warmup 2>&1 | grep '^engram-run: load' | sed 's/^/ours decode: /' | tee -a "$log"
  "$bin/llama-bench" "${lb[@]}" -p 512,8192 -n 0 -b 8192 -ub 512,2048 2>>"$work/llama.err" | sed 's/^/llama-bench: /' |
    tee -a "$log"
  for n in 512 8192; do
    "$pack/run" engram-run --synthetic llama3-8b --device cuda --prompt-ids "$(ids $n)" --prefill-chunk $n \
      --max-tokens 1 --temperature 0 --ignore-eos --warmup 2>&1 | grep '^engram-run: load' |
      sed "s/^/ours prefill $n: /" | tee -a "$log"
  done
  "$bin/llama-batched-bench" "${bb[@]}" 2>&1 | grep -E '^\|' | sed 's/^/batched: /' | tee -a "$log"
  for p in 1 16 64 256; do
    "$pack/run" bench-throughput --synthetic llama3-8b --device cuda -n $p --prompt-len 512:512 --output-len 256:256 \
      --max-num-seqs $p --max-num-batched-tokens 16384 --prefill-chunk 16384 --kv-cache-tokens 200000 |
      grep '^wall' | sed "s/^/ours batched $p: /" | tee -a "$log"
  done
done
python3 - "$log" <<'EOF'
import json, re, statistics as st, sys
llama, ours = {}, {}
for line in open(sys.argv[1]):
    tag, _, rest = line.partition(": ")
    if tag == "llama-bench":
        j = json.loads(rest)
        key = "decode" if j["n_gen"] else "prefill %d" % j["n_prompt"]
        llama.setdefault(key, {}).setdefault(j.get("n_ubatch"), []).append(j["avg_ts"])
    elif tag == "batched":
        c = [x.strip() for x in rest.strip().strip("|").split("|")]
        if c[0].isdigit():
            llama.setdefault("batched %s" % c[2], {}).setdefault(None, []).append(float(c[9]))
    elif tag == "ours decode":
        ours.setdefault("decode", []).append(float(re.search(r"decode .*\(([\d.]+) tok/s\)", rest).group(1)))
    elif tag.startswith("ours prefill"):
        ours.setdefault("prefill " + tag.split()[-1], []).append(float(re.search(r"prefill .*?\(([\d.]+) tok/s\)", rest).group(1)))
    elif tag.startswith("ours batched"):
        ours.setdefault("batched " + tag.split()[-1], []).append(float(re.search(r"total ([\d.]+) tok/s", rest).group(1)))
print("| | llama.cpp tok/s (median) | ours tok/s (median) | ours / llama.cpp |")
print("|---|---|---|---|")
for k in ["decode", "prefill 512", "prefill 8192"] + ["batched %d" % p for p in (1, 16, 64, 256)]:
    if k not in llama or k not in ours:
        print("| %s | missing | missing | |" % k)
        continue
    best = max(llama[k].items(), key=lambda kv: st.median(kv[1]))  # llama.cpp's better -ub
    a, b = st.median(best[1]), st.median(ours[k])
    ub = " (-ub %s)" % best[0] if len(llama[k]) > 1 else ""
    print("| %s | %.1f%s | %.1f | %.2fx |" % (k, a, ub, b, b / a))
print("(batched: total tokens, prompt and generated, over the run's time: llama-batched-bench's S t/s, "
      "bench-throughput's total tok/s)")
EOF
