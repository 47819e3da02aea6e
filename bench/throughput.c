/* Offline throughput through the engine API, the workload of the Engram
 * paper's Table 4 (nano-vLLM, 512 sequences, prompt and output lengths drawn
 * from Uniform(100, 1024)): N requests of random prompt token ids, greedy,
 * ignore_eos, each generating exactly its drawn output length, all submitted
 * at once; then wall time, output and total tokens per second, TTFT
 * percentiles, the mean tokens per scheduler step and the engine thread's
 * host time between two forward passes (what a GPU waits for).
 *
 * Real text instead of random ids (the Engram tiers' hit ratios depend on
 * which N-grams come): --prompts-from FILE takes each prompt as a slice of
 * the token file at a random offset (lengths still from --prompt-len), and
 * --force-output makes each request output the slice's continuation in the
 * file (engine_request_params.forced) instead of what the model samples, so
 * that decode steps too look up the N-grams of real text. Token file (made by
 * tools/make_text_tokens.py), little-endian:
 *   offset 0  8 bytes  magic "ENGRTOK\0"
 *          8  uint32   version (1)
 *         12  uint32   vocab size of the tokenizer that made it (0: unknown)
 *         16  uint64   n, the token count
 *         24  int32    n token ids
 * Every id must be below the model's vocab.
 *
 * Multi-turn chat (issue 20's prefix-caching workload): --multiturn C:T runs
 * C conversations of T turns, all C at once, each turn submitted when the
 * conversation's previous turn finishes. Every conversation starts with the
 * same system prompt (--system-len ids, default 1000); turn t's prompt is the
 * conversation so far (system prompt, earlier user turns and replies) plus
 * a new user turn of --prompt-len ids; its reply (--output-len tokens) is
 * forced to random ids drawn beforehand, so the next turn's prompt is known
 * and every engine, cached or not, computes the same tokens. TTFT counts from
 * each turn's submission; the prefix cache's hit rate is reported.
 *
 * Steady state and warm restarts (issue 22): --passes N runs the workload N
 * times on one engine, pass p with the prompts of seed + p (new slices of the
 * same text), each pass reported alone (its store and fetch counters are the
 * pass's own): the first pass of a cold store, then its steady state.
 * --engram-warm-start background|wait writes the hot-row files when the
 * engine stops and reads them back at the next start; --timeline S prints
 * output tokens/s and the DRAM hit ratio every S seconds, so a restart's
 * way back to steady state can be read off.
 *
 * Structured output (issue 19's cost): --json-schema FILE constrains every
 * request by that schema (compiled once, as the server caches it); a request
 * the grammar ends early finishes "stop" and counts what it generated. Needs
 * --model (a tokenizer); not with forced outputs.
 *
 *   build/bench-throughput (--synthetic SPEC | --model DIR) [-n 512]
 *       [--len 100:1024 | --prompt-len LO:HI --output-len LO:HI] [--seed 0]
 *       [--device cpu] [--max-num-seqs N] [--max-num-batched-tokens N]
 *       [--max-prefill-tokens-decoding N]
 *       [--kv-cache-tokens N] [--threads N] [--tensor-parallel-size N] [--expert-parallel-size N] ...
 * Human-readable lines, then one JSON line with every number. Exit 1 when a
 * request fails or ends with another token count than it asked for. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/model/model.h"
#include "base/util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench-throughput (--synthetic SPEC | --model DIR) [options]\n"
            "  -n N                        sequences (default 512)\n"
            "  --len LO:HI                 prompt and output lengths ~ Uniform(LO, HI) (default 100:1024)\n"
            "  --prompt-len LO:HI          prompt lengths alone\n"
            "  --output-len LO:HI          output lengths alone\n"
            "  --seed S                    lengths and prompt ids (default 0)\n"
            "  --passes N                  the workload N times on one engine, pass p with seed + p (default 1)\n"
            "  --timeline S                output tok/s, the Engram hit ratios and NVMe reads/s every S seconds\n"
            "  --prompts-from FILE         prompts are slices of this token file (see the file's header)\n"
            "  --force-output              with --prompts-from: outputs are the slices' continuations\n"
            "  --multiturn C:T             C conversations of T turns sharing a system prompt (-n is C T)\n"
            "  --system-len N              with --multiturn: the shared system prompt's ids (default 1000)\n"
            "  --json-schema FILE          every request constrained by this JSON schema (needs --model)\n"
            "  --synthetic SPEC            random weights of a real shape (see engram-run --help)\n"
            "  --synthetic-seed N          (default 0)\n"
            "  --synthetic-table-dir DIR   its Engram table file, made or reused\n"
            "  --model DIR                 a checkpoint instead\n"
            "  --engram-tables DIR         with --model: Engram table files\n"
            "  --engram-tier dram|nvme|auto  --engram-io uring|pread   --engram-queue-depth N\n"
            "  --engram-lookahead N        prompt tokens read ahead on the nvme tier (default 2048, 0: off)\n"
            "  --engram-dram-budget SIZE   --engram-hbm-cache SIZE    (see engram-run --help)\n"
            "  --engram-tiers exclusive|inclusive  the DRAM row cache and the HBM cache (default exclusive)\n"
            "  --engram-cache-admission all|tinylfu  the nvme tier's DRAM row cache admission (default all)\n"
            "  --engram-warm-start off|background|wait  hot-row files read at start, written at the end (default off)\n"
            "  --device cpu|cuda           (default cpu)\n"
            "  --cuda-graphs 0|1, --cuda-profile 0|ops|graphs   as engram-run's\n"
            "  --threads N                 engine CPU threads (default: all cores; shared by the ranks)\n"
            "  --tensor-parallel-size N    --expert-parallel-size N     ranks, as engram-server's (default 1)\n"
            "  --max-num-seqs N            --max-num-batched-tokens N   --prefill-chunk N\n"
            "  --max-prefill-tokens-decoding N  prompt tokens per step while sequences decode (0: off)\n"
            "  --kv-cache-tokens N         --kv-block-size N            (engine defaults otherwise)\n"
            "  --enable-prefix-caching 0/1 (engine default: 1)\n"
            "  --sample-on-backend 0|1|auto  as engram-server's (1 on the CPU: the GPU's host path, masks on a worker)\n"
            "  --gpu-memory-utilization F  (default 0.9: the KV cache takes what it leaves on a GPU)\n");
}

/* The counters at the start of a pass: each pass reports its own. */
typedef struct {
    engine_stats st;
    engram_store_stats ss;
    engram_fetch_stats *f; /* per Engram layer */
    int n_f;
} bench_snap;

static int n_engram_layers(engine *e) {
    const model *m = engine_model(e);
    return m->engram ? m->engram->n_layers : 0;
}

/* Takes the counters now. Returns 0, or -1 when out of memory. */
static int snap_take(engine *e, bench_snap *s) {
    engine_get_stats(e, &s->st);
    model_engram_store_stats(engine_model(e), &s->ss);
    s->n_f = n_engram_layers(e);
    if (!s->f && s->n_f && !(s->f = calloc((size_t)s->n_f, sizeof(*s->f)))) return -1;
    for (int li = 0; li < s->n_f; li++) engine_fetch_stats(e, li, &s->f[li]);
    return 0;
}

/* a -= b for the store's counters (its gauges and the warm start's fields stay). */
static void store_stats_sub(engram_store_stats *a, const engram_store_stats *b) {
    a->lookups -= b->lookups, a->dram_hits -= b->dram_hits, a->nvme_hits -= b->nvme_hits;
    a->prefetch_reads -= b->prefetch_reads, a->promotions -= b->promotions, a->demotions -= b->demotions;
    a->nvme_reads -= b->nvme_reads, a->nvme_bytes -= b->nvme_bytes;
}

/* a -= b for a layer's fetch counters (stall_max stays the run's). */
static void fetch_stats_sub(engram_fetch_stats *a, const engram_fetch_stats *b) {
    a->steps -= b->steps, a->lookups -= b->lookups, a->unique -= b->unique, a->cache_hits -= b->cache_hits;
    a->copied_rows -= b->copied_rows, a->copied_back_rows -= b->copied_back_rows;
    a->copied_bytes -= b->copied_bytes, a->gather_seconds -= b->gather_seconds, a->hash_seconds -= b->hash_seconds;
    a->host_wait_seconds -= b->host_wait_seconds, a->stalls -= b->stalls, a->stall_seconds -= b->stall_seconds;
    for (int k = 0; k <= ENGRAM_STORE_HIST_BUCKETS; k++) a->stall_hist[k] -= b->stall_hist[k];
}

/* What the Engram tables cost in this pass (since s0), when they are read
 * through a host store: the store's tiers, then per Engram layer what
 * reached the backend and how long the compute waited for it (the first
 * layer is the hard case). */
static void print_engram(engine *e, const bench_snap *s0, double wall) {
    const model *m = engine_model(e);
    engram_store_stats ss;
    model_engram_store_stats(m, &ss);
    store_stats_sub(&ss, &s0->ss);
    if (ss.warm_target || ss.warm_ignored)
        printf("engram warm start: %llu of %llu rows read back%s (%.2f s), %llu hot-row files ignored\n",
               (unsigned long long)ss.warm_rows, (unsigned long long)ss.warm_target,
               ss.warming ? ", still reading" : "", ss.warm_seconds, (unsigned long long)ss.warm_ignored);
    if (ss.nvme_reads)
        printf("engram nvme: %.0f reads/s, %.1f MB/s over the pass\n", ss.nvme_reads / wall, ss.nvme_bytes / 1e6 / wall);
    if (ss.lookups)
        printf("engram store: %llu lookups, DRAM hits %llu (%.2f%%), NVMe rows %llu, NVMe reads %llu (%.1f MB), "
               "prefetched %llu, moved up to the HBM cache %llu, demoted from it %llu\n",
               (unsigned long long)ss.lookups, (unsigned long long)ss.dram_hits, 100.0 * ss.dram_hits / ss.lookups,
               (unsigned long long)ss.nvme_hits, (unsigned long long)ss.nvme_reads, ss.nvme_bytes / 1e6,
               (unsigned long long)ss.prefetch_reads, (unsigned long long)ss.promotions,
               (unsigned long long)ss.demotions);
    for (int li = 0; m->engram && li < m->engram->n_layers; li++) {
        engram_fetch_stats f;
        engine_fetch_stats(e, li, &f);
        if (li < s0->n_f) fetch_stats_sub(&f, &s0->f[li]);
        if (!f.steps) continue;
        printf("engram fetch, layer %d: %llu steps, %llu lookups, %llu distinct, HBM hits %llu (%.2f%% of distinct), "
               "%llu rows copied (%.2f MB), %llu copied back, hashed %.1f us/step and host gather %.1f us/step (fetch thread), the issuing thread waited for it %.1f us/step, "
               "compute waited for rows mean %.1f us, max %.1f us over %llu steps\n",
               (int)m->engram->layers[li].layer_id, (unsigned long long)f.steps, (unsigned long long)f.lookups,
               (unsigned long long)f.unique, (unsigned long long)f.cache_hits,
               f.unique ? 100.0 * f.cache_hits / f.unique : 0.0, (unsigned long long)f.copied_rows,
               f.copied_bytes / 1e6, (unsigned long long)f.copied_back_rows, 1e6 * f.hash_seconds / f.steps, 1e6 * f.gather_seconds / f.steps, 1e6 * f.host_wait_seconds / f.steps, f.stalls ? 1e6 * f.stall_seconds / f.stalls : 0.0,
               1e6 * f.stall_max, (unsigned long long)f.stalls);
        printf("engram fetch, layer %d: compute wait histogram (steps per bucket, le seconds):", (int)m->engram->layers[li].layer_id);
        for (int b = 0; b <= ENGRAM_STORE_HIST_BUCKETS; b++) {
            if (b < ENGRAM_STORE_HIST_BUCKETS) printf(" %g:%llu", engram_store_hist_le[b], (unsigned long long)f.stall_hist[b]);
            else printf(" +Inf:%llu", (unsigned long long)f.stall_hist[b]);
        }
        printf("\n");
    }
}

/* "LO:HI" with 1 <= LO <= HI. */
static int parse_range(const char *s, int r[2]) {
    const char *colon = strchr(s, ':');
    char lo[32];
    long a, b;
    if (!colon || colon - s >= (long)sizeof(lo)) return -1;
    memcpy(lo, s, (size_t)(colon - s));
    lo[colon - s] = 0;
    if (util_parse_long(lo, 1, 1 << 24, &a) || util_parse_long(colon + 1, 1, 1 << 24, &b) || a > b) return -1;
    r[0] = (int)a;
    r[1] = (int)b;
    return 0;
}

static uint64_t rng;
static uint64_t next64(void) { /* splitmix64 */
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static int uniform(int lo, int hi) { return lo + (int)(next64() % (uint64_t)(hi - lo + 1)); }

/* Output wake-ups from the engine thread: a counter under a lock, so a
 * notification between a read and the wait is never lost. */
static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cv = PTHREAD_COND_INITIALIZER;
static unsigned long events;
static void on_output(void *ctx) {
    (void)ctx;
    pthread_mutex_lock(&ev_mu);
    events++;
    pthread_cond_signal(&ev_cv);
    pthread_mutex_unlock(&ev_mu);
}

static double pct(const double *sorted, int n, double p) { /* nearest rank */
    int k = (int)ceil(p / 100.0 * n);
    return sorted[k < 1 ? 0 : k - 1];
}

/* ---- options ---- */

/* Everything the command line sets; defaults from bench_options_default. */
typedef struct {
    engine_params ep;
    long n;                /* sequences */
    int plen[2], olen[2];  /* prompt and output lengths ~ Uniform(LO, HI) */
    uint64_t seed;
    const char *text_path; /* --prompts-from */
    bool force;            /* --force-output */
    int conv, turns;       /* --multiturn C:T, or 0 */
    int system_len;        /* --system-len */
    const char *schema_path; /* --json-schema */
    int passes;            /* --passes */
    double timeline;       /* --timeline seconds, or 0 */
} bench_options;

/* util_parse_long into an int or a uint64_t: 0, or -1 with *out untouched. */
static int parse_int(const char *v, long lo, long hi, int *out) {
    long lv;
    if (util_parse_long(v, lo, hi, &lv)) return -1;
    *out = (int)lv;
    return 0;
}
static int parse_u64(const char *v, long lo, long hi, uint64_t *out) {
    long lv;
    if (util_parse_long(v, lo, hi, &lv)) return -1;
    *out = (uint64_t)lv;
    return 0;
}

/* Sets the option a (which takes a value) from v. Returns 0, 1 for a bad
 * value, -1 for an unknown option. */
static int bench_option_set(bench_options *o, const char *a, const char *v) {
    engine_params *ep = &o->ep;
    int bad = 0;
    if (!strcmp(a, "-n")) bad = util_parse_long(v, 1, 1 << 20, &o->n);
    else if (!strcmp(a, "--len")) bad = parse_range(v, o->plen) || parse_range(v, o->olen);
    else if (!strcmp(a, "--prompt-len")) bad = parse_range(v, o->plen);
    else if (!strcmp(a, "--output-len")) bad = parse_range(v, o->olen);
    else if (!strcmp(a, "--seed")) bad = parse_u64(v, 0, LONG_MAX, &o->seed);
    else if (!strcmp(a, "--passes")) bad = parse_int(v, 1, 1000, &o->passes);
    else if (!strcmp(a, "--timeline")) {
        char *end;
        o->timeline = strtod(v, &end);
        bad = end == v || *end || !(o->timeline >= 0.1 && o->timeline <= 3600);
    }
    else if (!strcmp(a, "--prompts-from")) o->text_path = v;
    else if (!strcmp(a, "--multiturn")) {
        char *end;
        long c = strtol(v, &end, 10), t = *end == ':' ? strtol(end + 1, &end, 10) : 0;
        bad = *end || c < 1 || t < 1 || c > 65536 || t > 4096;
        o->conv = (int)c, o->turns = (int)t;
    } else if (!strcmp(a, "--system-len")) bad = parse_int(v, 0, 1 << 24, &o->system_len);
    else if (!strcmp(a, "--json-schema")) o->schema_path = v;
    else if (!strcmp(a, "--synthetic")) ep->synthetic = v;
    else if (!strcmp(a, "--synthetic-seed")) bad = parse_u64(v, 0, LONG_MAX, &ep->synthetic_seed);
    else if (!strcmp(a, "--synthetic-table-dir")) ep->synthetic_table_dir = v;
    else if (!strcmp(a, "--model")) ep->model_dir = v;
    else if (!strcmp(a, "--engram-tables")) ep->engram_tables = v;
    else if (!strcmp(a, "--engram-tier")) {
        bad = strcmp(v, "dram") && strcmp(v, "nvme");
        ep->engram_store.tier = strcmp(v, "nvme") ? ENGRAM_STORE_DRAM : ENGRAM_STORE_NVME;
    } else if (!strcmp(a, "--engram-io")) {
        bad = strcmp(v, "uring") && strcmp(v, "pread");
        ep->engram_store.use_pread = !strcmp(v, "pread");
    } else if (!strcmp(a, "--engram-dram-budget")) bad = util_parse_size(v, &ep->engram_store.dram_budget);
    else if (!strcmp(a, "--engram-hbm-cache")) bad = util_parse_size(v, &ep->engram_store.hbm_cache);
    else if (!strcmp(a, "--engram-tiers")) {
        bad = strcmp(v, "exclusive") && strcmp(v, "inclusive");
        ep->engram_store.tiers = strcmp(v, "inclusive") ? ENGRAM_STORE_EXCLUSIVE : ENGRAM_STORE_INCLUSIVE;
    }
    else if (!strcmp(a, "--engram-cache-admission")) {
        bad = strcmp(v, "all") && strcmp(v, "tinylfu");
        ep->engram_store.admission = strcmp(v, "all") ? ENGRAM_STORE_ADMIT_TINYLFU : ENGRAM_STORE_ADMIT_ALL;
    } else if (!strcmp(a, "--engram-warm-start")) {
        bad = strcmp(v, "off") && strcmp(v, "background") && strcmp(v, "wait");
        ep->engram_store.warm_start = !strcmp(v, "wait")         ? ENGRAM_STORE_WARM_WAIT
                                      : !strcmp(v, "background") ? ENGRAM_STORE_WARM_BACKGROUND
                                                                 : ENGRAM_STORE_WARM_OFF;
    }
    else if (!strcmp(a, "--engram-queue-depth")) bad = parse_int(v, 1, 4096, &ep->engram_store.queue_depth);
    else if (!strcmp(a, "--engram-lookahead")) bad = parse_int(v, 0, 1 << 24, &ep->engram_lookahead);
    else if (!strcmp(a, "--device")) ep->device = v;
    else if (!strcmp(a, "--cuda-graphs")) bad = parse_int(v, 0, 1, &ep->cuda_graphs);
    else if (!strcmp(a, "--cuda-profile")) bad = (ep->cuda_profile = engine_cuda_profile_mode(v)) < 0;
    else if (!strcmp(a, "--threads")) bad = parse_int(v, 1, 4096, &ep->threads);
    else if (!strcmp(a, "--tensor-parallel-size")) bad = parse_int(v, 1, 1024, &ep->tensor_parallel_size);
    else if (!strcmp(a, "--expert-parallel-size")) bad = parse_int(v, 1, 1024, &ep->expert_parallel_size);
    else if (!strcmp(a, "--max-num-seqs")) bad = parse_int(v, 1, 1 << 20, &ep->max_num_seqs);
    else if (!strcmp(a, "--max-num-batched-tokens")) bad = parse_int(v, 1, 1 << 24, &ep->max_num_batched_tokens);
    else if (!strcmp(a, "--prefill-chunk")) bad = parse_int(v, 1, 1 << 24, &ep->prefill_chunk);
    else if (!strcmp(a, "--max-prefill-tokens-decoding"))
        bad = parse_int(v, 0, 1 << 24, &ep->max_prefill_tokens_decoding);
    else if (!strcmp(a, "--gpu-memory-utilization")) {
        char *end;
        ep->gpu_memory_utilization = strtod(v, &end);
        bad = end == v || *end || !(ep->gpu_memory_utilization > 0 && ep->gpu_memory_utilization <= 1);
    } else if (!strcmp(a, "--kv-cache-tokens")) bad = parse_int(v, 0, INT_MAX, &ep->kv_cache_tokens);
    else if (!strcmp(a, "--kv-block-size")) bad = parse_int(v, 1, 4096, &ep->kv_block_size);
    else if (!strcmp(a, "--enable-prefix-caching")) bad = parse_int(v, 0, 1, &ep->enable_prefix_caching);
    else if (!strcmp(a, "--sample-on-backend")) {
        ep->sample_on_backend = !strcmp(v, "auto") ? -1 : !strcmp(v, "1") ? 1 : !strcmp(v, "0") ? 0 : -2;
        bad = ep->sample_on_backend == -2;
    }
    else return -1;
    return bad ? 1 : 0;
}

/* Fills o from argv. Returns -1 to go on, or the exit status for main: 0
 * after --help, 2 for a usage error (the message on stderr). */
static int bench_options_parse(int argc, char **argv, bench_options *o) {
    *o = (bench_options){.ep = engine_default_params(), .n = 512, .plen = {100, 1024}, .olen = {100, 1024},
                         .system_len = 1000, .passes = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--force-output")) {
            o->force = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench-throughput: unknown option or missing value: %s\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        int set = bench_option_set(o, a, v);
        if (set < 0) {
            fprintf(stderr, "bench-throughput: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (set) {
            fprintf(stderr, "bench-throughput: bad value for %s: %s\n", a, v);
            return 2;
        }
    }
    if (!o->ep.synthetic == !o->ep.model_dir) {
        fprintf(stderr, "bench-throughput: need exactly one of --synthetic SPEC, --model DIR\n");
        usage(stderr);
        return 2;
    }
    if (o->force && !o->text_path) {
        fprintf(stderr, "bench-throughput: --force-output needs --prompts-from FILE\n");
        return 2;
    }
    if (o->conv && o->text_path) {
        fprintf(stderr, "bench-throughput: --multiturn makes its own prompts (no --prompts-from)\n");
        return 2;
    }
    if (o->conv) o->n = (long)o->conv * o->turns;
    if (o->schema_path && (o->force || o->conv || !o->ep.model_dir)) {
        fprintf(stderr, "bench-throughput: --json-schema needs --model (a tokenizer) and no forced outputs\n");
        return 2;
    }
    o->ep.max_queued = (int)o->n; /* every request is submitted at once */
    return -1;
}

/* ---- the workload ---- */

/* The n requests and what came back; all owned here. main releases the
 * requests before the engine goes, work_free the rest after (it takes a
 * zeroed bench_work too). */
typedef struct {
    long n;
    const int32_t *text;    /* (n_text) the --prompts-from token file (main's), or NULL */
    size_t n_text;
    int *np, *no;           /* (n) prompt and output lengths */
    int32_t **prompts;      /* (n) each (np[i]) prompt ids */
    const int32_t **forced; /* (n) --force-output: into text, each (no[i]); else NULL */
    int32_t **own_forced;   /* (n) --multiturn: the replies drawn beforehand (forced points at them) */
    int turns;              /* --multiturn: request i is turn i % turns of conversation i / turns; else 0 */
    grammar *grammar;       /* --json-schema, compiled; else NULL */
    engine_request **req;   /* (n) */
    engine_output *fin;     /* (n) each request's final output */
    double *ttft;           /* (n) seconds to the first token, sorted after the run */
    int *gen;               /* (n) tokens read so far (--timeline) */
    long long sum_prompt, sum_output;
} bench_work;

/* The per-request arrays for n requests. Returns 0, or -1 when out of memory. */
static int work_alloc(bench_work *w, long n) {
    w->n = n;
    w->np = malloc((size_t)n * sizeof(int));
    w->no = malloc((size_t)n * sizeof(int));
    w->prompts = calloc((size_t)n, sizeof(int32_t *));
    w->req = calloc((size_t)n, sizeof(engine_request *));
    w->fin = calloc((size_t)n, sizeof(engine_output));
    w->ttft = malloc((size_t)n * sizeof(double));
    w->forced = calloc((size_t)n, sizeof(int32_t *));
    w->own_forced = calloc((size_t)n, sizeof(int32_t *));
    w->gen = calloc((size_t)n, sizeof(int));
    return w->np && w->no && w->prompts && w->req && w->fin && w->ttft && w->forced && w->own_forced && w->gen ? 0
                                                                                                             : -1;
}

static void work_free(bench_work *w) {
    for (long i = 0; w->prompts && i < w->n; i++) free(w->prompts[i]);
    for (long i = 0; w->own_forced && i < w->n; i++) free(w->own_forced[i]);
    free(w->prompts);
    free(w->own_forced);
    free(w->req);
    free(w->fin);
    free(w->np);
    free(w->no);
    free(w->ttft);
    free(w->forced);
    free(w->gen);
}

/* --multiturn: each conversation's turns, its history growing by a user
 * turn and the forced reply of each. Returns 0, or -1 with the message on
 * stderr. */
static int work_make_multiturn(bench_work *w, const bench_options *o, int ctx, int vocab) {
    int S = o->system_len, most = S + o->turns * (o->plen[1] + o->olen[1]);
    int32_t *sys = malloc(((size_t)S + 1) * sizeof(int32_t)), *hist = malloc((size_t)most * sizeof(int32_t));
    int rc = -1;
    w->turns = o->turns;
    if (!sys || !hist) goto oom;
    for (int t = 0; t < S; t++) sys[t] = (int32_t)(next64() % (uint64_t)vocab);
    for (int c = 0; c < o->conv; c++) {
        int len = S;
        memcpy(hist, sys, (size_t)S * sizeof(int32_t));
        for (int t = 0; t < o->turns; t++) {
            long i = (long)c * o->turns + t;
            int nu = uniform(o->plen[0], o->plen[1]), no = w->no[i] = uniform(o->olen[0], o->olen[1]);
            for (int k = 0; k < nu; k++) hist[len++] = (int32_t)(next64() % (uint64_t)vocab);
            w->np[i] = len;
            if (len + no > ctx) {
                fprintf(stderr, "bench-throughput: turn %d of conversation %d needs %d tokens but the context is %d "
                                "(fewer turns, shorter turns, or raise --kv-cache-tokens)\n", t, c, len + no, ctx);
                goto done;
            }
            if (!(w->prompts[i] = malloc((size_t)len * sizeof(int32_t))) ||
                !(w->own_forced[i] = malloc((size_t)no * sizeof(int32_t))))
                goto oom;
            memcpy(w->prompts[i], hist, (size_t)len * sizeof(int32_t));
            for (int k = 0; k < no; k++) w->own_forced[i][k] = hist[len++] = (int32_t)(next64() % (uint64_t)vocab);
            w->forced[i] = w->own_forced[i];
            w->sum_prompt += w->np[i];
            w->sum_output += no;
        }
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "bench-throughput: out of memory\n");
done:
    free(sys);
    free(hist);
    return rc;
}

/* The workload: lengths, then prompt ids (or text offsets), from one seeded
 * stream. Returns 0, or -1 with the message on stderr. */
static int work_make(bench_work *w, const bench_options *o, int ctx, int vocab) {
    rng = o->seed;
    if (o->conv) return work_make_multiturn(w, o, ctx, vocab);
    for (size_t k = 0; k < w->n_text; k++)
        if (w->text[k] < 0 || w->text[k] >= vocab) {
            fprintf(stderr, "bench-throughput: %s: token %zu is id %d, outside the model's vocab of %d\n",
                    o->text_path, k, w->text[k], vocab);
            return -1;
        }
    for (long i = 0; i < w->n; i++) {
        int np = w->np[i] = uniform(o->plen[0], o->plen[1]), no = w->no[i] = uniform(o->olen[0], o->olen[1]);
        w->sum_prompt += np;
        w->sum_output += no;
        if (np + no > ctx) {
            fprintf(stderr, "bench-throughput: request %ld needs %d tokens but the context is %d (lower --len or "
                            "raise --kv-cache-tokens)\n", i, np + no, ctx);
            return -1;
        }
        if (!(w->prompts[i] = malloc((size_t)np * sizeof(int32_t)))) {
            fprintf(stderr, "bench-throughput: out of memory\n");
            return -1;
        }
        if (!w->text) {
            for (int t = 0; t < np; t++) w->prompts[i][t] = (int32_t)(next64() % (uint64_t)vocab);
            continue;
        }
        size_t need = (size_t)np + (o->force ? (size_t)no : 0);
        if (need > w->n_text) {
            fprintf(stderr, "bench-throughput: request %ld needs %zu tokens of text but %s has %zu\n", i, need,
                    o->text_path, w->n_text);
            return -1;
        }
        size_t off = (size_t)(next64() % (uint64_t)(w->n_text - need + 1));
        memcpy(w->prompts[i], w->text + off, (size_t)np * sizeof(int32_t));
        if (o->force) w->forced[i] = w->text + off + np;
    }
    return 0;
}

/* Submits request i: greedy, ignore_eos, exactly no[i] tokens. Returns 0,
 * or -1 with the message on stderr. */
static int work_submit_one(bench_work *w, engine *e, long i) {
    engine_request_params rp = {0};
    rp.prompt = w->prompts[i];
    rp.n_prompt = w->np[i];
    rp.max_tokens = w->no[i];
    rp.sampling = sampler_default_params();
    rp.sampling.temperature = 0; /* greedy */
    rp.ignore_eos = true;
    rp.notify = on_output;
    rp.forced = w->forced[i];
    rp.grammar = w->grammar;
    int src = engine_submit(e, &rp, &w->req[i]);
    if (src != ENGINE_OK) {
        fprintf(stderr, "bench-throughput: submit %ld: %s\n", i, engine_status_str(src));
        return -1;
    }
    return 0;
}

/* Submits every request at once (with --multiturn, every first turn). */
static int work_submit(bench_work *w, engine *e) {
    for (long i = 0; i < w->n; i += w->turns ? w->turns : 1)
        if (work_submit_one(w, e, i)) return -1;
    return 0;
}

/* --timeline: the interval's output tokens/s and the Engram hit ratios (the
 * store's DRAM, the backend's hot-row cache) since the last line. */
typedef struct {
    double every, next, t_last;
    long long tokens, tokens_last;
    uint64_t lookups, dram_hits, unique, cache_hits, nvme_reads;
} timeline;

static void timeline_line(timeline *tl, engine *e, double t0, double now, bool print) {
    engram_store_stats ss;
    model_engram_store_stats(engine_model(e), &ss);
    uint64_t unique = 0, hits = 0;
    for (int li = 0; li < n_engram_layers(e); li++) {
        engram_fetch_stats f;
        engine_fetch_stats(e, li, &f);
        unique += f.unique, hits += f.cache_hits;
    }
    double dt = now - tl->t_last;
    uint64_t dl = ss.lookups - tl->lookups, du = unique - tl->unique;
    if (print) {
        printf("timeline: t %7.1f s  output %9.1f tok/s", now - t0, (tl->tokens - tl->tokens_last) / dt);
        if (dl) printf("  DRAM hits %6.2f%%", 100.0 * (double)(ss.dram_hits - tl->dram_hits) / (double)dl);
        if (du && hits) printf("  HBM cache hits %6.2f%%", 100.0 * (double)(hits - tl->cache_hits) / (double)du);
        if (ss.nvme_reads) printf("  NVMe %7.0f reads/s", (double)(ss.nvme_reads - tl->nvme_reads) / dt);
        if (ss.warming)
            printf("  (warm start reading: %llu of %llu rows)", (unsigned long long)ss.warm_rows,
                   (unsigned long long)ss.warm_target);
        printf("\n");
        fflush(stdout);
    }
    tl->t_last = now, tl->tokens_last = tl->tokens;
    tl->lookups = ss.lookups, tl->dram_hits = ss.dram_hits, tl->unique = unique, tl->cache_hits = hits;
    tl->nvme_reads = ss.nvme_reads;
}

/* Reads every request's outputs until all have finished, sleeping on the
 * output wake-ups (at most 100 ms at a time) when nothing is new; with
 * --multiturn a finished turn submits the conversation's next one; with
 * --timeline a line every that many seconds. Returns 0, or -1 when a
 * submission failed. */
static int work_wait(bench_work *w, engine *e, double timeline_every, double t0) {
    long left = w->n;
    timeline tl = {.every = timeline_every, .next = t0 + timeline_every, .t_last = t0};
    if (timeline_every > 0) timeline_line(&tl, e, t0, t0, false); /* the counters as the pass starts */
    while (left > 0) {
        pthread_mutex_lock(&ev_mu);
        unsigned long seen = events;
        pthread_mutex_unlock(&ev_mu);
        for (long i = 0; i < w->n; i++) {
            if (!w->req[i] || w->fin[i].finish != ENGINE_FINISH_NONE) continue;
            engine_output o;
            while (engine_request_read(w->req[i], &o, NULL, NULL)) { /* arms notify when nothing is new */
                free(o.text);
                tl.tokens += o.n_generated - w->gen[i];
                w->gen[i] = o.n_generated;
                if (o.finish != ENGINE_FINISH_NONE) {
                    w->fin[i] = o;
                    left--;
                    if (w->turns && (i + 1) % w->turns && work_submit_one(w, e, i + 1)) return -1;
                    break;
                }
            }
        }
        if (tl.every > 0 && util_now() >= tl.next) {
            timeline_line(&tl, e, t0, util_now(), true);
            tl.next += tl.every;
        }
        pthread_mutex_lock(&ev_mu);
        if (left > 0 && events == seen) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&ev_cv, &ev_mu, &ts);
        }
        pthread_mutex_unlock(&ev_mu);
    }
    return 0;
}

/* ---- the report ---- */

/* What one run measured, for the summary lines and the JSON line. */
typedef struct {
    double t_load, wall;
    long long got_output, failed;
    engine_stats st; /* after the last step */
    double mean_step;
} bench_result;

/* Counts the tokens and failures (the first 5 on stderr), the wall time
 * from t0 to the last finish and the sorted TTFTs, then waits for the last
 * step's stats. */
static void work_measure(bench_work *w, engine *e, double t0, const bench_snap *s0, bench_result *r) {
    double t_end = t0;
    for (long i = 0; i < w->n; i++) {
        const engine_output *o = &w->fin[i];
        bool ended = w->grammar && o->finish == ENGINE_FINISH_STOP && o->n_generated <= w->no[i]; /* the grammar's end */
        if (!ended && (o->finish != ENGINE_FINISH_LENGTH || o->n_generated != w->no[i])) {
            if (r->failed++ < 5)
                fprintf(stderr, "bench-throughput: request %ld ended with finish %d (error %s) after %d of %d tokens\n",
                        i, (int)o->finish, engine_status_str(o->error), o->n_generated, w->no[i]);
        }
        r->got_output += o->n_generated;
        if (o->t_end > t_end) t_end = o->t_end;
        w->ttft[i] = o->t_first_token > 0 ? o->t_first_token - o->t_submit : INFINITY;
    }
    r->wall = t_end - t0;
    util_sort_doubles(w->ttft, (size_t)w->n);
    /* A request's finish is published inside its last step, the step's
     * stats just after it: wait for them (the running set empties). */
    for (int tries = 0;; tries++) {
        engine_get_stats(e, &r->st);
        if ((r->st.running == 0 && r->st.queued == 0) || tries == 2000) break;
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* this pass's own counts (decode_step_prompt_max stays the run's) */
    const engine_stats *b = &s0->st;
    r->st.steps -= b->steps, r->st.step_tokens_total -= b->step_tokens_total, r->st.preemptions -= b->preemptions;
    r->st.decode_steps -= b->decode_steps, r->st.decode_step_prompt_tokens -= b->decode_step_prompt_tokens;
    r->st.grammar_masks -= b->grammar_masks, r->st.grammar_mask_seconds -= b->grammar_mask_seconds;
    r->st.prefix_queries_tokens -= b->prefix_queries_tokens, r->st.prefix_hits_tokens -= b->prefix_hits_tokens;
    r->st.prefix_evictions -= b->prefix_evictions;
    r->st.host_gap_seconds -= b->host_gap_seconds, r->st.host_gap_steps -= b->host_gap_steps;
    r->mean_step = r->st.steps ? (double)r->st.step_tokens_total / (double)r->st.steps : 0;
}

/* The lines before the run: the workload and the engine as made. */
static void print_setup(const bench_options *o, const bench_work *w, engine *e, double t_load) {
    const engine_params *ep = &o->ep;
    printf("bench-throughput: %s, device %s, %ld sequences, prompt %d..%d, output %d..%d, seed %llu\n",
           engine_model(e)->dir, ep->device ? ep->device : "cpu", o->n, o->plen[0], o->plen[1], o->olen[0],
           o->olen[1], (unsigned long long)o->seed);
    if (w->text)
        printf("text: prompts are slices of %s (%zu tokens)%s\n", o->text_path, w->n_text,
               o->force ? ", outputs forced to their continuations" : "");
    engine_stats kv_now; /* the KV cache the engine made (sized from GPU memory when not given) */
    engine_get_stats(e, &kv_now);
    printf("engine: max_num_seqs %d, max_num_batched_tokens %d, max_prefill_tokens_decoding %d, prefill_chunk %d, "
           "kv_cache_tokens %d (context %d), threads %d, tensor parallel %d, expert parallel %d; loaded in %.2fs\n",
           ep->max_num_seqs, ep->max_num_batched_tokens, ep->max_prefill_tokens_decoding, ep->prefill_chunk,
           kv_now.kv_capacity, engine_context_length(e), ep->threads, ep->tensor_parallel_size,
           ep->expert_parallel_size, t_load);
    fflush(stdout);
}

/* The human-readable result lines, the Engram lines, then the JSON line. */
static void print_result(const bench_options *o, const bench_work *w, engine *e, const bench_snap *s0, int pass,
                         const bench_result *r) {
    const engine_params *ep = &o->ep;
    long n = o->n;
    long long sp = w->sum_prompt, got = r->got_output;
    double p50 = pct(w->ttft, (int)n, 50), p99 = pct(w->ttft, (int)n, 99);
    printf("requests %ld (%lld failed), prompt tokens %lld, output tokens %lld (asked %lld)\n", n, r->failed, sp,
           got, w->sum_output);
    printf("wall %.3f s, output %.2f tok/s, total %.2f tok/s\n", r->wall, got / r->wall, (sp + got) / r->wall);
    printf("TTFT p50 %.3f s, p99 %.3f s\n", p50, p99);
    printf("scheduler: %lld steps, mean step tokens %.1f, preemptions %lld\n", r->st.steps, r->mean_step,
           r->st.preemptions);
    double gap_us = r->st.host_gap_steps ? 1e6 * r->st.host_gap_seconds / (double)r->st.host_gap_steps : 0;
    printf("engine host time between passes: %.1f us a step, mean over %lld back-to-back steps\n", gap_us,
           r->st.host_gap_steps);
    double dmean = r->st.decode_steps ? (double)r->st.decode_step_prompt_tokens / r->st.decode_steps : 0;
    printf("decode steps: %lld, prompt tokens beside their decodes mean %.1f, max %d\n", r->st.decode_steps, dmean,
           r->st.decode_step_prompt_max);
    double hit = r->st.prefix_queries_tokens ? (double)r->st.prefix_hits_tokens / r->st.prefix_queries_tokens : 0;
    printf("prefix cache: %lld of %lld prompt tokens hit (%.2f%%), %lld evictions\n", r->st.prefix_hits_tokens,
           r->st.prefix_queries_tokens, 100 * hit, r->st.prefix_evictions);
    print_engram(e, s0, r->wall);
    if (w->grammar) {
        int n_tab;
        size_t tab_bytes;
        double tab_s;
        grammar_tables_stats(w->grammar, &n_tab, &tab_bytes, &tab_s);
        printf("structured: %s, %lld masks, %.3f s computing them (%.2f us each), of which %.3f s making %d token "
               "tables on first use\n", o->schema_path, r->st.grammar_masks, r->st.grammar_mask_seconds,
               r->st.grammar_masks ? 1e6 * r->st.grammar_mask_seconds / r->st.grammar_masks : 0.0, tab_s, n_tab);
    }
    printf("{\"model\": \"%s\", \"device\": \"%s\", \"n\": %ld, \"prompt_len\": [%d, %d], \"output_len\": [%d, %d], "
           "\"seed\": %llu, \"max_num_seqs\": %d, \"max_num_batched_tokens\": %d, "
           "\"max_prefill_tokens_decoding\": %d, \"kv_cache_tokens\": %d, "
           "\"threads\": %d, \"tensor_parallel_size\": %d, \"expert_parallel_size\": %d, \"load_s\": %.3f, \"prompt_tokens\": %lld, \"output_tokens\": %lld, \"failed\": %lld, "
           "\"wall_s\": %.4f, \"output_tok_s\": %.3f, \"total_tok_s\": %.3f, \"ttft_p50_s\": %.4f, "
           "\"ttft_p99_s\": %.4f, \"steps\": %lld, \"mean_step_tokens\": %.2f, \"preemptions\": %lld, "
           "\"host_gap_us\": %.2f, \"decode_steps\": %lld, \"decode_step_prompt_mean\": %.2f, \"decode_step_prompt_max\": %d, "
           "\"prompts_from\": %s%s%s, \"force_output\": %s, \"multiturn\": [%d, %d], \"system_len\": %d, "
           "\"prefix_caching\": %d, \"prefix_hit_rate\": %.4f, \"pass\": %d}\n",
           engine_model(e)->dir, ep->device ? ep->device : "cpu", n, o->plen[0], o->plen[1], o->olen[0], o->olen[1],
           (unsigned long long)o->seed, ep->max_num_seqs, ep->max_num_batched_tokens, ep->max_prefill_tokens_decoding,
           ep->kv_cache_tokens,
           ep->threads, ep->tensor_parallel_size, ep->expert_parallel_size, r->t_load, sp, got, r->failed, r->wall, got / r->wall, (sp + got) / r->wall, p50, p99,
           r->st.steps, r->mean_step, r->st.preemptions, gap_us, r->st.decode_steps, dmean, r->st.decode_step_prompt_max, w->text ? "\"" : "", w->text ? o->text_path : "null",
           w->text ? "\"" : "", o->force ? "true" : "false", o->conv, o->turns, o->conv ? o->system_len : 0,
           ep->enable_prefix_caching, hit, pass + 1);
}

int main(int argc, char **argv) {
    bench_options o;
    int rc = bench_options_parse(argc, argv, &o);
    if (rc >= 0) return rc;
    char err[1024];
    int32_t *text = NULL;
    size_t n_text = 0;
    if (o.text_path && util_read_token_file(o.text_path, &text, &n_text, NULL, err, sizeof(err))) {
        fprintf(stderr, "bench-throughput: %s\n", err);
        return 2;
    }
    /* one workload per pass, all kept until the engine stops (it may read prompts until then) */
    bench_work *ws = calloc((size_t)o.passes, sizeof(bench_work));
    bench_snap s0 = {0};
    grammar *g = NULL;
    engine *e = NULL;
    double t_load = util_now();
    if (!ws) {
        fprintf(stderr, "bench-throughput: out of memory\n");
        free(text);
        return 1;
    }
    rc = engine_create(&o.ep, &e, err, sizeof(err));
    if (rc != ENGINE_OK) {
        fprintf(stderr, "bench-throughput: %s\n", err);
        free(text);
        free(ws);
        return rc == ENGINE_ERR_DEVICE ? 2 : 1;
    }
    t_load = util_now() - t_load;
    rc = 1;
    if (o.schema_path) {
        size_t len;
        char *schema = util_read_file(o.schema_path, 1 << 20, &len, err, sizeof(err));
        if (!schema) {
            fprintf(stderr, "bench-throughput: %s\n", err);
            goto done;
        }
        int grc = grammar_compile_json_schema(schema, len, &g, err, sizeof(err));
        free(schema);
        if (grc) {
            fprintf(stderr, "bench-throughput: %s: %s\n", o.schema_path, err);
            goto done;
        }
    }
    long long failed = 0;
    for (int pass = 0; pass < o.passes; pass++) {
        bench_work *w = &ws[pass];
        bench_options po = o;
        po.seed = o.seed + (uint64_t)pass; /* new prompts (and lengths) each pass */
        w->text = text, w->n_text = n_text, w->grammar = g;
        if (work_alloc(w, o.n) || snap_take(e, &s0)) {
            fprintf(stderr, "bench-throughput: out of memory\n");
            goto done;
        }
        if (work_make(w, &po, engine_context_length(e), engine_vocab_size(e))) goto done;
        if (pass == 0) print_setup(&o, w, e, t_load);
        if (o.passes > 1) printf("pass %d of %d (seed %llu)\n", pass + 1, o.passes, (unsigned long long)po.seed);
        bench_result r = {.t_load = t_load};
        double t0 = util_now();
        if (work_submit(w, e) || work_wait(w, e, o.timeline, t0)) goto done;
        work_measure(w, e, t0, &s0, &r);
        print_result(&po, w, e, &s0, pass, &r);
        fflush(stdout);
        failed += r.failed;
    }
    rc = failed ? 1 : 0;
done:
    /* the requests go before the engine, the prompts after it (the engine may read them until it stops) */
    for (int p = 0; p < o.passes; p++)
        for (long i = 0; ws[p].req && i < ws[p].n; i++) engine_request_release(ws[p].req[i]);
    engine_destroy(e);
    grammar_release(g);
    for (int p = 0; p < o.passes; p++) work_free(&ws[p]);
    free(ws);
    free(s0.f);
    free(text);
    return rc;
}
