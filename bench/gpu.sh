#!/bin/bash
# The GPU benchmarks of bench/RESULTS.md, run from a folder made by
# scripts/gpu-pack (its bin/ and lib/), from the repository root:
#   bench/gpu.sh PACK OUTDIR [SECTION...]   (scripts/gpu-pack copies it to PACK/gpu.sh)
# Sections (default: peak decode single ttft tput):
#   check   the four parity checks (PACK/check)
#   peak    bench-gpu_peak llama3-8b llama3-1b: device copy rate, cuBLAS bf16
#           8192^3, cuBLASLt FP8 8192^3 (per-tensor and DeepSeek's block
#           scales), one layer's products through the backend at T = 1..8192
#   decode  engram-run single-stream greedy decode, synthetic llama3-1b,
#           llama3-8b, qwen3-8b (16-token prompt, 256 tokens, --warmup)
#   single  bench-throughput -n 1 (16 prompt tokens, 1024 output tokens): one
#           greedy stream through the engine (device argmax), same models
#   ttft    engram-run prefill of 1024 and 8192 prompt tokens, llama3-8b
#           (--prefill-chunk = the prompt, --warmup, 1 output token)
#   tput    bench-throughput, the paper's workload (512 sequences, lengths
#           Uniform(100, 1024)), synthetic qwen3-4b and qwen3-8b
#   tput4b, tput8b   one of the two
#   engram4b, engram8b   the same workload with an Engram layer at block 1
#           whose table (ENGRAM_ROWS rows of 64 bf16, default 781.25M: 50B
#           parameters, 100 GB) is made in host DRAM: issue 8's Table 4
#   nvme4b  the workload on qwen3-4b with real text (PACK/text.tok from
#           tools/make_text_tokens.py: prompts are slices, outputs forced to
#           the continuation) and an Engram table file of NVME_ROWS rows
#           (default 200M, 25.6 GB) in TBL_DIR (default .gpu-tbl): the
#           backbone alone, the table mapped whole, then a DRAM budget of a
#           quarter of the table over NVMe (O_DIRECT, io_uring); NVME_CFGS
#           picks among "base dram nvme", NVME_FLAGS adds flags to nvme
#   steady4b  the nvme4b workload and table as a server lives them (issue 22):
#           the disk's random-read ceiling (bench-store --ceiling, a 4 GiB
#           file in TBL_DIR), the table mapped whole (the reference), then
#           for each STEADY_HBM (default "0 4G": without, then with the HBM
#           cache) the nvme tier cold for two passes (pass 1 the cold start,
#           pass 2 new prompts of the same text: the steady state), its
#           hot-row file written as the engine stops, and a restart on it
#           (new prompts again: the warm restart); --timeline STEADY_TL
#           (default 5) seconds of output tok/s and hit ratios per run;
#           STEADY_PASSES (default 2) passes of the cold run, STEADY_RESTART=0
#           skips the restart, STEADY_BASE=0 the ceiling and the mapped table
#   profile4b  the same table and workload started warm from the offline
#           profile (issue 22): engram-tables profile of PACK/text.tok (the
#           corpus the prompts are drawn from: the best case of a profile made
#           from past traffic) writes the hot-row file, then one nvme run with
#           --engram-warm-start wait (the rows read before the first request)
#   dsv4    DeepSeek-V4-Flash's layers (issue 18 (b), (c)): synthetic
#           deepseek-v4-flash+layers:L for each L of DSV4_LAYERS (default "2 4";
#           FP4 experts kept packed, ~3.4 GB a layer; ~13 GB with
#           ENGRAM_FP4_EXPERTS=bf16, which expands them on upload), decode
#           at batch 1, 64 and 256 (16-token prompts, 256 output tokens each)
#           through bench-throughput: a layer's step time is the difference of
#           two L's steps over their difference in layers; then --cuda-profile
#           ops (graphs off) at the first L, batch 1 and 64: each op's time,
#           the hyper-connections' (hc_*) among them; DSV4_BATCHES (default
#           "1 64 256", empty for the profile alone) picks the timed batches,
#           DSV4_PROFILE (default "1 64", empty for none) the profiled ones
#   hits    the nvme tier's DRAM-cache hit path against the mapped table on
#           this host's CPU (issue 22): bench-store --hits over a 4 GiB table
#           of 128-byte rows in TBL_DIR, HITS_ROWS (default 16M) rows all in
#           the row cache, gathers of 8,800 rows (profile4b's step) 3 ms apart
#   moe30b  synthetic qwen3-30b-a3b (bf16, 61 GB): engram-run single-stream
#           greedy decode (16-token prompt, 256 tokens, --warmup), then the
#           paper's workload through bench-throughput (MOE_KV KV tokens,
#           default 100000)
#   prefix  prefix caching (issue 20), synthetic qwen3-4b: the multi-turn chat
#           workload (bench-throughput --multiturn 64:8, a shared system
#           prompt of 1000 ids, user turns of 50..150, replies of 100..300;
#           PREFIX_MT, PREFIX_PLEN, PREFIX_OLEN resize it)
#           with caching on, then off; then the paper's workload (no reuse)
#           on, off, PREFIX_PAIRS times (default 2), interleaved
#   structured  structured output's cost (issue 19), the default model
#           (models/engram-lexicon): 64 sequences at once (prompts 100..200,
#           512 output tokens), plain then every request constrained by
#           bench/schemas/words.json, twice, interleaved
#   pairs4b, pairs8b   PAIRS (default 3) interleaved tput/engram pairs
#   ab      A/B of environment switches in one call: for AB_ROUNDS rounds
#           (default 2), each model of AB_MODELS (default "llama3-1b llama3-8b
#           qwen3-8b") decoded as `decode` does, or with AB_WHAT=tput4b the
#           paper's workload on qwen3-4b, under each set of AB_SETS
#           (';'-separated, each a space-separated list of VAR=value, "-" for
#           none; default "-;ENGRAM_DEC_MIN_SPLIT=512;ENGRAM_L2_PREFETCH=24
#           ENGRAM_DEC_MIN_SPLIT=512"), one line a run
#   pending stop 25's defaults in one call (bench/RESULTS.md "Stop 25"): gpu-backend-parity
#           and gpu-model-parity (logs in OUTDIR, every failure printed), `ab` of
#           ENGRAM_FP8_PACKED=0 against the packed default on deepseek-v4-flash+layers:2, the
#           MoE decode of qwen3-30b-a3b (moe30b's engram-run line)
#   pfab    issue 22's prefetch rounds: steady4b (STEADY_HBM=0 STEADY_RESTART=0) at each
#           ENGRAM_PF_BATCH of PF_BATCHES (default "128 1024"), its ceiling and DRAM run
#           (STEADY_BASE) the first time only; PF_DRAM=0 skips them
#   stall   per-step GPU wait for the first Engram layer's rows at batch 1, 64
#           and 256 (qwen3-4b, STALL_ROWS rows, default 781.25M; 256 prompt
#           and 256 output tokens per sequence)
#   itl     decode stalls against throughput through the server (issue 21):
#           the paper's workload (ITL_N = 512 requests at once, prompt and
#           output lengths Uniform(100, 1024), --max-num-batched-tokens and
#           --prefill-chunk 16384) through bench-throughput, then sent by
#           tools/loadgen.py (python3, standard library only: random token-id
#           prompts, streamed) to engram-server at each
#           --max-prefill-tokens-decoding of ITL_CAPS (default 0 4096 2048
#           1024 512): output tok/s, TTFT and ITL p50/p99, the prefill beside
#           each decode step, and a table against bench-throughput. Needs
#           bin/engram-server and its libraries in the pack. ITL_MODEL,
#           ITL_DEVICE, ITL_N, ITL_LEN, ITL_BATCH, ITL_KV, ITL_VOCAB resize it;
#           a CPU check of the section in seconds, from a pack of the CPU
#           build's engram-server and bench-throughput (DIR/bin, DIR/run):
#             ITL_MODEL=qwen3-0.6b+layers:1 ITL_DEVICE=cpu ITL_N=8 ITL_LEN=16:48
#             ITL_BATCH=64 ITL_KV=4096 ITL_CAPS="0 16" bench/gpu.sh DIR OUT itl
#   stall41 the same for DeepSeek-V4.1 (issue 17): synthetic
#           deepseek-v4.1-flash+layers:V41_LAYERS (default 2: Engram layer 1
#           alone; 15 takes layer 14 too) +experts:V41_EXPERTS (default 384, all;
#           FP4 experts: about 24 GB a layer expanded to bf16, as before the
#           CUDA backend kept routed FP4 experts packed; README, ENGRAM_FP4_EXPERTS)
#           +engram-rows:V41_SCALE (default 0.1: the prime search from 1.6M,
#           38.4M rows of 264 B a layer, a 10.1 GB file at the store's dense
#           264-byte row stride; the release's 384M rows need 101 GB a layer,
#           within the machine's DRAM but more than its disk), at batch sizes V41_BATCHES (default
#           "1 64 256"; 256 prompt and 256 output tokens each), for each of
#           V41_TIERS (default "hbm dram nvme hbmcache base"): hbm the tables as
#           tensors uploaded to the GPU (FP8 rows on the device), dram a table
#           file in V41_TBL_DIR (default .gpu-tbl41) mapped whole, nvme the file
#           behind a DRAM budget of a quarter of it (O_DIRECT, io_uring),
#           hbmcache the file with --engram-hbm-cache V41_HBM (default 16G);
#           base +layers:1, the backbone before Engram layer 1 without it
#           (embedding, layer 0, head). hbm keeps the FP8 tables on the
#           device; the other tiers' packed FP8 rows are decoded on the GPU.
#           The shape has V4-Flash's compress ratios (4, 128). Each model
#           start fills and uploads the weights (~24 GB a layer with all 384
#           experts; V41_EXPERTS=64 runs the 15 starts in under 5 minutes)
# Each section's output goes to OUTDIR/SECTION.log as well as stdout.
set -uo pipefail
pack=$(cd "$1" && pwd); outdir=$2; shift 2
mkdir -p "$outdir"
secs=("$@"); [ ${#secs[@]} -gt 0 ] || secs=(peak decode single ttft tput)
ids() { seq -s, 1 "$1"; } # prompt ids 1..N
# engram-run's single-stream greedy decode of synthetic model $1 (16-token prompt, 256 tokens)
decode_run() {
  timeout 200 "$pack/run" engram-run --synthetic $1 --device cuda --prompt-ids "$(ids 16)" --max-tokens 256 \
    --temperature 0 --ignore-eos --warmup 2>&1
}
http_get() { python3 -c 'import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }
# KV cache tokens for the throughput runs on an 80 GB H100: both models keep
# 147,456 bytes per token (36 layers, 8 KV heads of 128, K and V bf16); what
# is left after weights (8.0 / 16.4 GB) and step scratch (~3 GB).
kv_for() { case $1 in qwen3-4b) echo ${TPUT_KV:-420000} ;; *) echo ${TPUT_KV:-380000} ;; esac; }
echo "== $(date -u '+%F %T UTC') $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader)"
run_sec() {
  case $1 in
  check) "$pack/check" ;;
  peak) timeout 300 "$pack/run" bench-gpu_peak llama3-8b llama3-1b ;;
  decode)
    for m in llama3-1b llama3-8b qwen3-8b; do
      echo "-- $m: --prompt-ids 1..16 --max-tokens 256"
      decode_run $m | grep -E '^engram-run'
    done ;;
  single)
    for m in llama3-1b llama3-8b qwen3-8b; do
      timeout 200 "$pack/run" bench-throughput --synthetic $m --device cuda -n 1 --prompt-len 16:16 \
        --output-len 1024:1024 --kv-cache-tokens 2048 | grep -vE '^\{|^warn'
    done ;;
  ttft)
    for n in 1024 8192; do
      echo "-- llama3-8b: --prompt-ids 1..$n --prefill-chunk $n --max-tokens 1"
      timeout 200 "$pack/run" engram-run --synthetic llama3-8b --device cuda --prompt-ids "$(ids $n)" --prefill-chunk $n \
        --max-tokens 1 --temperature 0 --ignore-eos --warmup 2>&1 | grep -E '^engram-run'
    done ;;
  dsv4)
    local L B
    for L in ${DSV4_LAYERS:-2 4}; do
      for B in ${DSV4_BATCHES-1 64 256}; do
        local f=(--synthetic deepseek-v4-flash+layers:$L --device cuda -n $B --prompt-len 16:16 --output-len 256:256
                 --max-num-seqs $B --kv-cache-tokens $((B * 300 + 1024)))
        echo "-- bench-throughput ${f[*]}"
        timeout 300 "$pack/run" bench-throughput "${f[@]}" | grep -E '^(wall|scheduler|requests)'
      done
    done
    L=${DSV4_LAYERS:-2}; L=${L%% *}
    for B in ${DSV4_PROFILE-1 64}; do
      local f=(--synthetic deepseek-v4-flash+layers:$L --device cuda -n $B --prompt-len 16:16 --output-len 64:64
               --max-num-seqs $B --kv-cache-tokens $((B * 100 + 1024)) --cuda-profile ops)
      echo "-- bench-throughput ${f[*]}"
      timeout 300 "$pack/run" bench-throughput "${f[@]}" 2>&1 | grep -E '^(wall|cuda profile)'
    done ;;
  moe30b)
    echo "-- qwen3-30b-a3b: --prompt-ids 1..16 --max-tokens 256"
    timeout 300 "$pack/run" engram-run --synthetic qwen3-30b-a3b --device cuda --prompt-ids "$(ids 16)" --max-tokens 256 \
      --temperature 0 --ignore-eos --warmup 2>&1 | grep -E '^engram-run'
    local f=(--synthetic qwen3-30b-a3b --device cuda -n 512 --len 100:1024 --max-num-seqs 512
             --max-num-batched-tokens ${TPUT_BATCH:-16384} --prefill-chunk ${TPUT_CHUNK:-16384}
             --kv-cache-tokens ${MOE_KV:-100000})
    echo "-- bench-throughput ${f[*]}"
    timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${f[@]}" ;;
  prefix)
    local mt=(--synthetic qwen3-4b --device cuda --multiturn ${PREFIX_MT:-64:8} --system-len 1000 --prompt-len ${PREFIX_PLEN:-50:150}
              --output-len ${PREFIX_OLEN:-100:300} --max-num-seqs 512 --max-num-batched-tokens 16384 --prefill-chunk 16384
              --kv-cache-tokens $(kv_for qwen3-4b))
    for pc in 1 0; do
      echo "-- bench-throughput ${mt[*]} --enable-prefix-caching $pc"
      timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${mt[@]}" --enable-prefix-caching $pc | grep -vE '^warn'
    done
    local f=(--synthetic qwen3-4b --device cuda -n 512 --len 100:1024 --max-num-seqs 512
             --max-num-batched-tokens 16384 --prefill-chunk 16384 --kv-cache-tokens $(kv_for qwen3-4b))
    local pcs=(); for i in $(seq ${PREFIX_PAIRS:-2}); do pcs+=(1 0); done
    for pc in "${pcs[@]}"; do
      echo "-- bench-throughput ${f[*]} --enable-prefix-caching $pc"
      timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${f[@]}" --enable-prefix-caching $pc | grep -E '^(wall|TTFT|prefix)'
    done ;;
  structured)
    local f=(--model models/engram-lexicon --device cuda -n 64 --prompt-len 100:200 --output-len 512:512
             --max-num-seqs 64)
    for sch in "" --json-schema "" --json-schema; do
      local x=(); [ -n "$sch" ] && x=(--json-schema bench/schemas/words.json)
      echo "-- bench-throughput ${f[*]} ${x[*]}"
      timeout 120 "$pack/run" bench-throughput "${f[@]}" "${x[@]}" | grep -E '^(requests|wall|structured)'
    done ;;
  tput4b|tput8b|tput)
    local ms=(qwen3-4b qwen3-8b)
    [ "$1" = tput4b ] && ms=(qwen3-4b)
    [ "$1" = tput8b ] && ms=(qwen3-8b)
    for m in "${ms[@]}"; do
      for seqs in ${TPUT_SEQS:-512}; do
        local f=(--synthetic $m --device cuda -n 512 --len 100:1024 --max-num-seqs $seqs
                 --max-num-batched-tokens ${TPUT_BATCH:-16384} --prefill-chunk ${TPUT_CHUNK:-16384}
                 --kv-cache-tokens $(kv_for $m))
        echo "-- bench-throughput ${f[*]}"
        timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${f[@]}"
      done
    done ;;
  engram4b|engram8b)
    local m=qwen3-4b; [ "$1" = engram8b ] && m=qwen3-8b
    local f=(--synthetic $m+engram:${ENGRAM_ROWS:-781.25M} --device cuda -n 512 --len 100:1024 --max-num-seqs 512
             --max-num-batched-tokens ${TPUT_BATCH:-16384} --prefill-chunk ${TPUT_CHUNK:-16384}
             --kv-cache-tokens $(kv_for $m) ${ENGRAM_FLAGS:-})
    echo "-- bench-throughput ${f[*]}"
    timeout ${TPUT_TIMEOUT:-400} "$pack/run" bench-throughput "${f[@]}" ;;
  nvme4b)
    local rows=${NVME_ROWS:-200M} tok=(--prompts-from "$pack/text.tok" --force-output)
    local w=(--device cuda -n ${NVME_N:-512} --len 100:1024 --max-num-seqs 512 --max-num-batched-tokens 16384
             --prefill-chunk 16384 --kv-cache-tokens 420000 "${tok[@]}")
    local e=(--synthetic qwen3-4b+engram:$rows --synthetic-table-dir ${TBL_DIR:-.gpu-tbl})
    df -h ${TBL_DIR:-.} | tail -1
    for cfg in ${NVME_CFGS:-base dram nvme}; do
      local f
      case $cfg in
        base) f=(--synthetic qwen3-4b "${w[@]}") ;;
        dram) f=("${e[@]}" "${w[@]}" --engram-tier dram) ;;
        nvme) f=("${e[@]}" "${w[@]}" --engram-tier nvme --engram-dram-budget ${NVME_BUDGET:-6103M} ${NVME_FLAGS:-}) ;;
      esac
      echo "-- bench-throughput ${f[*]}"
      timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${f[@]}" | grep -vE '^\{'
    done ;;
  steady4b)
    local rows=${NVME_ROWS:-200M} tdir=${TBL_DIR:-.gpu-tbl}
    local w=(--device cuda -n ${NVME_N:-512} --len 100:1024 --max-num-seqs 512 --max-num-batched-tokens 16384
             --prefill-chunk 16384 --kv-cache-tokens 420000 --prompts-from "$pack/text.tok" --force-output
             --timeline ${STEADY_TL:-5})
    local e=(--synthetic qwen3-4b+engram:$rows --synthetic-table-dir $tdir)
    local nv=(--engram-tier nvme --engram-dram-budget ${NVME_BUDGET:-6103M} --engram-warm-start background ${NVME_FLAGS:-})
    mkdir -p $tdir; df -h $tdir | tail -1
    local f
    if [ "${STEADY_BASE:-1}" = 1 ]; then # the disk's ceiling and the table in DRAM
      echo "-- bench-store --ceiling --gib 4 --file $tdir/ceiling.tbl"
      rm -f $tdir/ceiling.tbl
      timeout 120 "$pack/run" bench-store --ceiling --gib 4 --seconds 1.5 --file $tdir/ceiling.tbl
      f=("${e[@]}" "${w[@]}" --engram-tier dram)
      echo "-- bench-throughput ${f[*]}"
      timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${f[@]}" | grep -vE '^\{'
    fi
    local hbm
    for hbm in ${STEADY_HBM:-0 4G}; do
      local h=(); [ "$hbm" = 0 ] || h=(--engram-hbm-cache $hbm)
      rm -f $tdir/*.hot # cold
      f=("${e[@]}" "${w[@]}" "${nv[@]}" "${h[@]}" --passes ${STEADY_PASSES:-2})
      echo "-- bench-throughput ${f[*]}"
      timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${f[@]}" | grep -vE '^\{'
      ls -la $tdir/*.hot
      [ "${STEADY_RESTART:-1}" = 1 ] || continue
      f=("${e[@]}" "${w[@]}" "${nv[@]}" "${h[@]}" --seed 2)
      echo "-- (restart) bench-throughput ${f[*]}"
      timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${f[@]}" | grep -vE '^\{'
    done ;;
  pfab) # steady4b at each ENGRAM_PF_BATCH of PF_BATCHES: the ceiling and the DRAM run the first time only
    local pb base=${PF_DRAM:-1}
    for pb in ${PF_BATCHES:-128 1024}; do
      echo "-- ENGRAM_PF_BATCH=$pb"
      ENGRAM_PF_BATCH=$pb STEADY_BASE=$base STEADY_HBM=0 STEADY_RESTART=0 run_sec steady4b
      base=0
    done ;;
  profile4b)
    local rows=${NVME_ROWS:-200M} tdir=${TBL_DIR:-.gpu-tbl}
    mkdir -p $tdir; rm -f $tdir/*.hot
    echo "-- engram-tables profile --synthetic qwen3-4b+engram:$rows --tokens $pack/text.tok --tables $tdir"
    time "$pack/run" engram-tables profile --synthetic qwen3-4b+engram:$rows --tokens "$pack/text.tok" --tables $tdir
    local f=(--synthetic qwen3-4b+engram:$rows --synthetic-table-dir $tdir --device cuda -n ${NVME_N:-512} --len 100:1024
             --max-num-seqs 512 --max-num-batched-tokens 16384 --prefill-chunk 16384 --kv-cache-tokens 420000
             --prompts-from "$pack/text.tok" --force-output --timeline ${STEADY_TL:-5} --engram-tier nvme
             --engram-dram-budget ${NVME_BUDGET:-6103M} --engram-warm-start wait ${NVME_FLAGS:-})
    echo "-- bench-throughput ${f[*]}"
    timeout ${TPUT_TIMEOUT:-280} "$pack/run" bench-throughput "${f[@]}" | grep -vE '^\{' ;;
  hits)
    local tdir=${TBL_DIR:-.gpu-tbl}
    mkdir -p $tdir; rm -f $tdir/hits.tbl
    local f=(--hits ${HITS_ROWS:-16000000} --gib 4 --cols 64 --batch 8800 --compute-us 3000 --seconds 0.5 --rounds 3
             --file $tdir/hits.tbl)
    echo "-- bench-store ${f[*]}"
    timeout 300 "$pack/run" bench-store "${f[@]}" ;;
  ab)
    local sets r m set
    IFS=';' read -ra sets <<<"${AB_SETS:--;ENGRAM_DEC_MIN_SPLIT=512;ENGRAM_L2_PREFETCH=24 ENGRAM_DEC_MIN_SPLIT=512}"
    for r in $(seq ${AB_ROUNDS:-2}); do
      for m in ${AB_MODELS:-llama3-1b llama3-8b qwen3-8b}; do
        [ "${AB_WHAT:-decode}" = tput4b ] && m=qwen3-4b
        for set in "${sets[@]}"; do
          local envs=(); [ "$set" = - ] || read -ra envs <<<"$set"
          if [ "${AB_WHAT:-decode}" = tput4b ]; then
            echo "-- round $r $m [$set] $( ((${#envs[@]})) && export "${envs[@]}"; run_sec tput4b 2>&1 | grep -E '^(wall|engine host)' | tr '\n' ' ')"
          else
            echo "-- round $r $m [$set] $( ((${#envs[@]})) && export "${envs[@]}"; decode_run $m | grep -oE 'decode 255 tokens in [0-9.]+s \([0-9.]+ tok/s\)')"
          fi
        done
        if [ "${AB_WHAT:-decode}" = tput4b ]; then break; fi
      done
    done ;;
  pending) # stop 25's defaults, one call (~4 minutes on an H100): parity first, then the timings
    parity_log() { # PROGRAM NAME [VAR=value...]: its log into OUTDIR/pending-NAME.log; failures shown
      local prog=$1 log="$outdir/pending-$2.log"; shift 2
      env "$@" timeout 200 "$pack/run" $prog >"$log" 2>&1
      echo "== $prog $*: rc=$?"
      grep -E "FAIL|DIFFER|^ok:|FP8 matrices|^timing (matmul fp8|moe_experts bf16 .* T=[12] )" "$log"
    }
    parity_log gpu-backend-parity backend
    parity_log gpu-model-parity model
    AB_ROUNDS=2 AB_MODELS="deepseek-v4-flash+layers:2" AB_SETS="-;ENGRAM_FP8_PACKED=0" run_sec ab
    echo "-- qwen3-30b-a3b: --prompt-ids 1..16 --max-tokens 256"
    timeout 300 "$pack/run" engram-run --synthetic qwen3-30b-a3b --device cuda --prompt-ids "$(ids 16)" --max-tokens 256 \
      --temperature 0 --ignore-eos --warmup 2>&1 | grep -E '^engram-run' ;;
  pairs4b|pairs8b) # PAIRS times the backbone then the Engram model, interleaved (run-to-run noise)
    local x=${1#pairs}
    for i in $(seq ${PAIRS:-3}); do echo "-- pair $i"; run_sec tput$x; run_sec engram$x; done ;;
  stall)
    for b in 1 64 256; do
      local f=(--synthetic qwen3-4b+engram:${STALL_ROWS:-781.25M} --device cuda -n $b --prompt-len 256:256
               --output-len 256:256 --max-num-seqs $b --kv-cache-tokens 200000 ${ENGRAM_FLAGS:-})
      echo "-- bench-throughput ${f[*]}"
      timeout 300 "$pack/run" bench-throughput "${f[@]}" | grep -vE '^\{'
    done ;;
  itl)
    local m=${ITL_MODEL:-qwen3-4b} n=${ITL_N:-512} len=${ITL_LEN:-100:1024} b=${ITL_BATCH:-16384}
    local e=(--synthetic $m --device ${ITL_DEVICE:-cuda} --max-num-seqs $n --max-num-batched-tokens $b
             --prefill-chunk $b --kv-cache-tokens ${ITL_KV:-$(kv_for qwen3-4b)})
    echo "-- bench-throughput ${e[*]} -n $n --len $len"
    timeout ${ITL_TIMEOUT:-240} "$pack/run" bench-throughput "${e[@]}" -n $n --len $len | tee "$outdir/itl-bench.txt" |
      grep -vE '^\{|^warn'
    local missing; missing=$(LD_LIBRARY_PATH=$pack/lib:${LD_LIBRARY_PATH:-} ldd "$pack/bin/engram-server" 2>&1 | grep -E 'not found|No such')
    if [ -n "$missing" ]; then echo "itl: the pack's engram-server cannot run: $missing"; return 1; fi
    local port=${ITL_PORT:-18181} cap
    for cap in ${ITL_CAPS:-0 4096 2048 1024 512}; do
      local s=("${e[@]}" --max-prefill-tokens-decoding $cap --port $port --max-queued-requests $((2 * n))
               --http-threads ${ITL_HTTP_THREADS:-8})
      local l=(--client http --base-url http://127.0.0.1:$port/v1 --token-ids ${ITL_VOCAB:-151936} --concurrency $n
               --requests $n --prompt-tokens $len --max-tokens $len --ignore-eos --json "$outdir/itl-$cap.json")
      echo "-- engram-server ${s[*]}"
      echo "-- python3 tools/loadgen.py ${l[*]}"
      "$pack/run" engram-server "${s[@]}" >"$outdir/itl-server-$cap.log" 2>&1 &
      local spid=$! i
      for i in $(seq 600); do http_get http://127.0.0.1:$port/health >/dev/null 2>&1 && break; sleep 0.5; done
      time timeout ${ITL_TIMEOUT:-240} python3 tools/loadgen.py "${l[@]}" # user + sys near real: the client was the limit
      echo "loadgen rc=$?"
      http_get http://127.0.0.1:$port/metrics | awk '
        /^engram_scheduler_decode_step_prompt_tokens_bucket/ { split($1, a, "\""); if ($2 != last) printf " le=%s:%s", a[2], $2; last = $2 }
        /^engram_scheduler_decode_step_prompt_tokens_(sum|count)|^engram_scheduler_steps_total|^engram_num_preemptions_total/ { v[$1] = $2 }
        END { printf "\nsteps %s, decode steps %s, prompt tokens beside decodes %s (mean %.1f), preemptions %s\n",
              v["engram_scheduler_steps_total"], v["engram_scheduler_decode_step_prompt_tokens_count"],
              v["engram_scheduler_decode_step_prompt_tokens_sum"],
              v["engram_scheduler_decode_step_prompt_tokens_count"] ? v["engram_scheduler_decode_step_prompt_tokens_sum"] / v["engram_scheduler_decode_step_prompt_tokens_count"] : 0,
              v["engram_num_preemptions_total"] }' | sed 's/^ le/decode steps by prompt tokens (cumulative): le/'
      kill $spid; wait $spid 2>/dev/null
      grep -E 'error|fatal' "$outdir/itl-server-$cap.log" | head -5
    done
    python3 - "$outdir" ${ITL_CAPS:-0 4096 2048 1024 512} <<'PY'
import json, sys
out, caps = sys.argv[1], sys.argv[2:]
bench = [json.loads(l) for l in open(f"{out}/itl-bench.txt") if l.startswith("{")]
ref = bench[0]["output_tok_s"] if bench else None
print("max_prefill_tokens_decoding  out_tok/s  vs_bench  ttft_p50_s  ttft_p99_s  itl_p50_ms  itl_p99_ms  failed")
if ref:
    print(f"{'bench-throughput':>27}  {ref:9.1f}  {1:8.3f}  {bench[0]['ttft_p50_s']:10.3f}  {bench[0]['ttft_p99_s']:10.3f}")
for c in caps:
    try:
        lv = json.load(open(f"{out}/itl-{c}.json"))["levels"][0]
    except (OSError, ValueError, IndexError) as ex:
        print(f"{c:>27}  (no result: {ex})")
        continue
    t, ms = lv["output_tok_per_s"] or 0, lambda x: 1e3 * x if x is not None else float("nan")
    print(f"{c:>27}  {t:9.1f}  {t / ref if ref else float('nan'):8.3f}  {lv['ttft_s']['p50'] or 0:10.3f}  "
          f"{lv['ttft_s']['p99'] or 0:10.3f}  {ms(lv['itl_s']['p50']):10.1f}  {ms(lv['itl_s']['p99']):10.1f}  "
          f"{lv['failed']:6d}")
PY
    ;;
  stall41)
    local scale=${V41_SCALE:-0.1} spec="deepseek-v4.1-flash+layers:${V41_LAYERS:-2}+experts:${V41_EXPERTS:-384}"
    # (a quarter of the table file at its dense 264-byte stride; runs before issue 17 took a quarter of 512 a row)
    local budget; budget=$(awk -v s="$scale" 'BEGIN { printf "%dM", 384006168 * s * 264 / 4 / 1048576 }')
    spec+="+engram-rows:$scale"
    df -h ${V41_TBL_DIR:-.} | tail -1
    for tier in ${V41_TIERS:-hbm dram nvme hbmcache base}; do
      local t=(--synthetic-table-dir ${V41_TBL_DIR:-.gpu-tbl41})
      case $tier in
        hbm) t=(--synthetic $spec) ;;
        dram) t=(--synthetic $spec "${t[@]}" --engram-tier dram) ;;
        nvme) t=(--synthetic $spec "${t[@]}" --engram-tier nvme --engram-dram-budget $budget) ;;
        hbmcache) t=(--synthetic $spec "${t[@]}" --engram-tier dram --engram-hbm-cache ${V41_HBM:-16G}) ;;
        base) t=(--synthetic deepseek-v4.1-flash+layers:1+experts:${V41_EXPERTS:-384}) ;;
      esac
      for b in ${V41_BATCHES:-1 64 256}; do
        local f=("${t[@]}" --device cuda -n $b --prompt-len 256:256 --output-len 256:256 --max-num-seqs $b
                 --kv-cache-tokens 200000 ${ENGRAM_FLAGS:-})
        echo "-- $tier: bench-throughput ${f[*]}"
        timeout ${V41_TIMEOUT:-400} "$pack/run" bench-throughput "${f[@]}" | grep -vE '^\{'
      done
    done ;;
  *) echo "gpu.sh: unknown section $1" ;;
  esac
}
for s in "${secs[@]}"; do
  echo "== $s"
  t0=$(date +%s)
  run_sec "$s" 2>&1 | tee "$outdir/$s.log"
  echo "== $s: rc=${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s"
done
