/* Offline throughput through the engine API, the workload of the Engram
 * paper's Table 4 (nano-vLLM, 512 sequences, prompt and output lengths drawn
 * from Uniform(100, 1024)): N requests of random prompt token ids, greedy,
 * ignore_eos, each generating exactly its drawn output length, all submitted
 * at once; then wall time, output and total tokens per second, TTFT
 * percentiles and the mean tokens per scheduler step.
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
 *   build/bench-throughput (--synthetic SPEC | --model DIR) [-n 512]
 *       [--len 100:1024 | --prompt-len LO:HI --output-len LO:HI] [--seed 0]
 *       [--device cpu] [--max-num-seqs N] [--max-num-batched-tokens N]
 *       [--kv-cache-tokens N] [--threads N] ...
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
#include "base/util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench-throughput (--synthetic SPEC | --model DIR) [options]\n"
            "  -n N                        sequences (default 512)\n"
            "  --len LO:HI                 prompt and output lengths ~ Uniform(LO, HI) (default 100:1024)\n"
            "  --prompt-len LO:HI          prompt lengths alone\n"
            "  --output-len LO:HI          output lengths alone\n"
            "  --seed S                    lengths and prompt ids (default 0)\n"
            "  --prompts-from FILE         prompts are slices of this token file (see the file's header)\n"
            "  --force-output              with --prompts-from: outputs are the slices' continuations\n"
            "  --synthetic SPEC            random weights of a real shape (see engram-run --help)\n"
            "  --synthetic-seed N          (default 0)\n"
            "  --synthetic-table-dir DIR   its Engram table file, made or reused\n"
            "  --model DIR                 a checkpoint instead\n"
            "  --engram-tables DIR         with --model: Engram table files\n"
            "  --engram-tier dram|nvme|auto  --engram-io uring|pread   --engram-queue-depth N\n"
            "  --engram-lookahead N        prompt tokens read ahead on the nvme tier (default 2048, 0: off)\n"
            "  --engram-dram-budget SIZE   --engram-hbm-cache SIZE    (see engram-run --help)\n"
            "  --device cpu|cuda           (default cpu)\n"
            "  --threads N                 engine CPU threads (default: all cores)\n"
            "  --max-num-seqs N            --max-num-batched-tokens N   --prefill-chunk N\n"
            "  --kv-cache-tokens N         --kv-block-size N            (engine defaults otherwise)\n"
            "  --gpu-memory-utilization F  (default 0.9: the KV cache takes what it leaves on a GPU)\n");
}

/* What the Engram tables cost, when they are read through a host store:
 * the store's tiers, then per Engram layer what reached the backend and how
 * long the compute waited for it (the first layer is the hard case). */
static void print_engram(engine *e) {
    const model *m = engine_model(e);
    engram_store_stats ss;
    model_engram_store_stats(m, &ss);
    if (ss.lookups)
        printf("engram store: %llu lookups, DRAM hits %llu (%.2f%%), NVMe rows %llu, NVMe reads %llu (%.1f MB), "
               "prefetched %llu\n",
               (unsigned long long)ss.lookups, (unsigned long long)ss.dram_hits, 100.0 * ss.dram_hits / ss.lookups,
               (unsigned long long)ss.nvme_hits, (unsigned long long)ss.nvme_reads, ss.nvme_bytes / 1e6,
               (unsigned long long)ss.prefetch_reads);
    for (int li = 0; m->engram && li < m->engram->n_layers; li++) {
        engram_fetch_stats f;
        engine_fetch_stats(e, li, &f);
        if (!f.steps) continue;
        printf("engram fetch, layer %d: %llu steps, %llu lookups, %llu distinct, HBM hits %llu (%.2f%% of distinct), "
               "%llu rows copied (%.2f MB), host gather %.1f us/step, the issuing thread waited for it %.1f us/step, "
               "compute waited for rows mean %.1f us, max %.1f us over %llu steps\n",
               (int)m->engram->layers[li].layer_id, (unsigned long long)f.steps, (unsigned long long)f.lookups,
               (unsigned long long)f.unique, (unsigned long long)f.cache_hits,
               f.unique ? 100.0 * f.cache_hits / f.unique : 0.0, (unsigned long long)f.copied_rows,
               f.copied_bytes / 1e6, 1e6 * f.gather_seconds / f.steps, 1e6 * f.host_wait_seconds / f.steps, f.stalls ? 1e6 * f.stall_seconds / f.stalls : 0.0,
               1e6 * f.stall_max, (unsigned long long)f.stalls);
        printf("engram fetch, layer %d: compute wait histogram (steps per bucket, le seconds):", (int)m->engram->layers[li].layer_id);
        for (int b = 0; b <= ENGRAM_STORE_HIST_BUCKETS; b++) {
            if (b < ENGRAM_STORE_HIST_BUCKETS) printf(" %g:%llu", engram_store_hist_le[b], (unsigned long long)f.stall_hist[b]);
            else printf(" +Inf:%llu", (unsigned long long)f.stall_hist[b]);
        }
        printf("\n");
    }
}

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* "LO:HI" with 1 <= LO <= HI. */
static int parse_range(const char *s, int r[2]) {
    const char *colon = strchr(s, ':');
    char lo[32];
    long a, b;
    if (!colon || colon - s >= (long)sizeof(lo)) return -1;
    memcpy(lo, s, (size_t)(colon - s));
    lo[colon - s] = 0;
    if (parse_long(lo, 1, 1 << 24, &a) || parse_long(colon + 1, 1, 1 << 24, &b) || a > b) return -1;
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

/* Reads a token file (format above) into *ids (n ids, malloc'd). Returns 0,
 * or -1 with a message in err. */
static int load_tokens(const char *path, int32_t **ids, size_t *n, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    uint8_t h[24];
    *ids = NULL;
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    uint32_t version;
    uint64_t count;
    if (fread(h, 1, sizeof(h), f) != sizeof(h) || memcmp(h, "ENGRTOK\0", 8)) {
        snprintf(err, errlen, "%s: not a token file (magic \"ENGRTOK\")", path);
        goto fail;
    }
    memcpy(&version, h + 8, 4); /* the format is little-endian, like every host this builds on */
    memcpy(&count, h + 16, 8);
    if (version != 1 || count == 0 || count > ((uint64_t)1 << 31)) {
        snprintf(err, errlen, "%s: version %u, %llu tokens: unsupported", path, version, (unsigned long long)count);
        goto fail;
    }
    if (!(*ids = malloc(count * sizeof(int32_t))) || fread(*ids, sizeof(int32_t), count, f) != count) {
        snprintf(err, errlen, "%s: cannot read %llu tokens", path, (unsigned long long)count);
        goto fail;
    }
    fclose(f);
    *n = (size_t)count;
    return 0;
fail:
    free(*ids);
    *ids = NULL;
    fclose(f);
    return -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double pct(const double *sorted, int n, double p) { /* nearest rank */
    int k = (int)ceil(p / 100.0 * n);
    return sorted[k < 1 ? 0 : k - 1];
}

int main(int argc, char **argv) {
    engine_params ep = engine_default_params();
    long n = 512, lv;
    int plen[2] = {100, 1024}, olen[2] = {100, 1024};
    uint64_t seed = 0;
    const char *text_path = NULL;
    bool force = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--force-output")) {
            force = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench-throughput: unknown option or missing value: %s\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "-n")) bad = parse_long(v, 1, 1 << 20, &n);
        else if (!strcmp(a, "--len")) bad = parse_range(v, plen) || parse_range(v, olen);
        else if (!strcmp(a, "--prompt-len")) bad = parse_range(v, plen);
        else if (!strcmp(a, "--output-len")) bad = parse_range(v, olen);
        else if (!strcmp(a, "--seed")) bad = parse_long(v, 0, LONG_MAX, &lv), seed = (uint64_t)lv;
        else if (!strcmp(a, "--prompts-from")) text_path = v;
        else if (!strcmp(a, "--synthetic")) ep.synthetic = v;
        else if (!strcmp(a, "--synthetic-seed")) bad = parse_long(v, 0, LONG_MAX, &lv), ep.synthetic_seed = (uint64_t)lv;
        else if (!strcmp(a, "--synthetic-table-dir")) ep.synthetic_table_dir = v;
        else if (!strcmp(a, "--model")) ep.model_dir = v;
        else if (!strcmp(a, "--engram-tables")) ep.engram_tables = v;
        else if (!strcmp(a, "--engram-tier")) {
            bad = strcmp(v, "dram") && strcmp(v, "nvme");
            ep.engram_store.tier = strcmp(v, "nvme") ? ENGRAM_STORE_DRAM : ENGRAM_STORE_NVME;
        } else if (!strcmp(a, "--engram-io")) {
            bad = strcmp(v, "uring") && strcmp(v, "pread");
            ep.engram_store.use_pread = !strcmp(v, "pread");
        } else if (!strcmp(a, "--engram-dram-budget")) bad = util_parse_size(v, &ep.engram_store.dram_budget);
        else if (!strcmp(a, "--engram-hbm-cache")) bad = util_parse_size(v, &ep.engram_store.hbm_cache);
        else if (!strcmp(a, "--engram-queue-depth")) bad = parse_long(v, 1, 4096, &lv), ep.engram_store.queue_depth = (int)lv;
        else if (!strcmp(a, "--engram-lookahead")) bad = parse_long(v, 0, 1 << 24, &lv), ep.engram_lookahead = (int)lv;
        else if (!strcmp(a, "--device")) ep.device = v;
        else if (!strcmp(a, "--threads")) bad = parse_long(v, 1, 4096, &lv), ep.threads = (int)lv;
        else if (!strcmp(a, "--max-num-seqs")) bad = parse_long(v, 1, 1 << 20, &lv), ep.max_num_seqs = (int)lv;
        else if (!strcmp(a, "--max-num-batched-tokens")) bad = parse_long(v, 1, 1 << 24, &lv), ep.max_num_batched_tokens = (int)lv;
        else if (!strcmp(a, "--prefill-chunk")) bad = parse_long(v, 1, 1 << 24, &lv), ep.prefill_chunk = (int)lv;
        else if (!strcmp(a, "--gpu-memory-utilization")) {
            char *end;
            ep.gpu_memory_utilization = strtod(v, &end);
            bad = end == v || *end || !(ep.gpu_memory_utilization > 0 && ep.gpu_memory_utilization <= 1);
        } else if (!strcmp(a, "--kv-cache-tokens")) bad = parse_long(v, 0, INT_MAX, &lv), ep.kv_cache_tokens = (int)lv;
        else if (!strcmp(a, "--kv-block-size")) bad = parse_long(v, 1, 4096, &lv), ep.kv_block_size = (int)lv;
        else {
            fprintf(stderr, "bench-throughput: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "bench-throughput: bad value for %s: %s\n", a, v);
            return 2;
        }
    }
    if (!ep.synthetic == !ep.model_dir) {
        fprintf(stderr, "bench-throughput: need exactly one of --synthetic SPEC, --model DIR\n");
        usage(stderr);
        return 2;
    }
    if (force && !text_path) {
        fprintf(stderr, "bench-throughput: --force-output needs --prompts-from FILE\n");
        return 2;
    }
    ep.max_queued = (int)n; /* every request is submitted at once */
    char err[1024];
    int32_t *text = NULL;
    size_t n_text = 0;
    if (text_path && load_tokens(text_path, &text, &n_text, err, sizeof(err))) {
        fprintf(stderr, "bench-throughput: %s\n", err);
        return 2;
    }

    engine *e = NULL;
    double t_load = util_now();
    int rc = engine_create(&ep, &e, err, sizeof(err));
    if (rc != ENGINE_OK) {
        fprintf(stderr, "bench-throughput: %s\n", err);
        free(text);
        return rc == ENGINE_ERR_DEVICE ? 2 : 1;
    }
    t_load = util_now() - t_load;
    int ctx = engine_context_length(e), vocab = engine_vocab_size(e);

    /* The workload: lengths, then prompt ids (or text offsets), from one seeded stream. */
    rng = seed;
    int *np = malloc((size_t)n * sizeof(int)), *no = malloc((size_t)n * sizeof(int));
    int32_t **prompts = calloc((size_t)n, sizeof(int32_t *));
    engine_request **req = calloc((size_t)n, sizeof(engine_request *));
    engine_output *fin = calloc((size_t)n, sizeof(engine_output));
    double *ttft = malloc((size_t)n * sizeof(double));
    const int32_t **forced = calloc((size_t)n, sizeof(int32_t *));
    rc = 1;
    if (!np || !no || !prompts || !req || !fin || !ttft || !forced) {
        fprintf(stderr, "bench-throughput: out of memory\n");
        goto done;
    }
    for (size_t k = 0; k < n_text; k++)
        if (text[k] < 0 || text[k] >= vocab) {
            fprintf(stderr, "bench-throughput: %s: token %zu is id %d, outside the model's vocab of %d\n", text_path,
                    k, text[k], vocab);
            goto done;
        }
    long long sum_prompt = 0, sum_output = 0;
    for (long i = 0; i < n; i++) {
        np[i] = uniform(plen[0], plen[1]);
        no[i] = uniform(olen[0], olen[1]);
        sum_prompt += np[i];
        sum_output += no[i];
        if (np[i] + no[i] > ctx) {
            fprintf(stderr, "bench-throughput: request %ld needs %d tokens but the context is %d (lower --len or "
                            "raise --kv-cache-tokens)\n", i, np[i] + no[i], ctx);
            goto done;
        }
        if (!(prompts[i] = malloc((size_t)np[i] * sizeof(int32_t)))) {
            fprintf(stderr, "bench-throughput: out of memory\n");
            goto done;
        }
        if (!text) {
            for (int t = 0; t < np[i]; t++) prompts[i][t] = (int32_t)(next64() % (uint64_t)vocab);
            continue;
        }
        size_t need = (size_t)np[i] + (force ? (size_t)no[i] : 0);
        if (need > n_text) {
            fprintf(stderr, "bench-throughput: request %ld needs %zu tokens of text but %s has %zu\n", i, need,
                    text_path, n_text);
            goto done;
        }
        size_t off = (size_t)(next64() % (uint64_t)(n_text - need + 1));
        memcpy(prompts[i], text + off, (size_t)np[i] * sizeof(int32_t));
        if (force) forced[i] = text + off + np[i];
    }
    const model *m = engine_model(e);
    printf("bench-throughput: %s, device %s, %ld sequences, prompt %d..%d, output %d..%d, seed %llu\n", m->dir,
           ep.device ? ep.device : "cpu", n, plen[0], plen[1], olen[0], olen[1], (unsigned long long)seed);
    if (text)
        printf("text: prompts are slices of %s (%zu tokens)%s\n", text_path, n_text,
               force ? ", outputs forced to their continuations" : "");
    engine_stats kv_now; /* the KV cache the engine made (sized from GPU memory when not given) */
    engine_get_stats(e, &kv_now);
    printf("engine: max_num_seqs %d, max_num_batched_tokens %d, prefill_chunk %d, kv_cache_tokens %d (context %d), "
           "threads %d; loaded in %.2fs\n", ep.max_num_seqs, ep.max_num_batched_tokens, ep.prefill_chunk,
           kv_now.kv_capacity, ctx, ep.threads, t_load);
    fflush(stdout);

    double t0 = util_now();
    for (long i = 0; i < n; i++) {
        engine_request_params rp = {0};
        rp.prompt = prompts[i];
        rp.n_prompt = np[i];
        rp.max_tokens = no[i];
        rp.sampling = sampler_default_params();
        rp.sampling.temperature = 0; /* greedy */
        rp.ignore_eos = true;
        rp.notify = on_output;
        rp.forced = forced[i];
        int src = engine_submit(e, &rp, &req[i]);
        if (src != ENGINE_OK) {
            fprintf(stderr, "bench-throughput: submit %ld: %s\n", i, engine_status_str(src));
            goto done;
        }
    }
    long left = n;
    while (left > 0) {
        pthread_mutex_lock(&ev_mu);
        unsigned long seen = events;
        pthread_mutex_unlock(&ev_mu);
        for (long i = 0; i < n; i++) {
            if (fin[i].finish != ENGINE_FINISH_NONE) continue;
            engine_output o;
            while (engine_request_read(req[i], &o, NULL, NULL)) { /* arms notify when nothing is new */
                free(o.text);
                if (o.finish != ENGINE_FINISH_NONE) {
                    fin[i] = o;
                    left--;
                    break;
                }
            }
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
    double t_end = t0;
    long long got_output = 0, failed = 0;
    for (long i = 0; i < n; i++) {
        const engine_output *o = &fin[i];
        if (o->finish != ENGINE_FINISH_LENGTH || o->n_generated != no[i]) {
            if (failed++ < 5)
                fprintf(stderr, "bench-throughput: request %ld ended with finish %d (error %s) after %d of %d tokens\n",
                        i, (int)o->finish, engine_status_str(o->error), o->n_generated, no[i]);
        }
        got_output += o->n_generated;
        if (o->t_end > t_end) t_end = o->t_end;
        ttft[i] = o->t_first_token > 0 ? o->t_first_token - o->t_submit : INFINITY;
    }
    double wall = t_end - t0;
    qsort(ttft, (size_t)n, sizeof(double), cmp_double);
    /* A request's finish is published inside its last step, the step's
     * stats just after it: wait for them (the running set empties). */
    engine_stats st;
    for (int tries = 0;; tries++) {
        engine_get_stats(e, &st);
        if ((st.running == 0 && st.queued == 0) || tries == 2000) break;
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    double mean_step = st.steps ? (double)st.step_tokens_total / (double)st.steps : 0;
    printf("requests %ld (%lld failed), prompt tokens %lld, output tokens %lld (asked %lld)\n", n, failed, sum_prompt,
           got_output, sum_output);
    printf("wall %.3f s, output %.2f tok/s, total %.2f tok/s\n", wall, got_output / wall,
           (sum_prompt + got_output) / wall);
    printf("TTFT p50 %.3f s, p99 %.3f s\n", pct(ttft, (int)n, 50), pct(ttft, (int)n, 99));
    printf("scheduler: %lld steps, mean step tokens %.1f, preemptions %lld\n", st.steps, mean_step, st.preemptions);
    print_engram(e);
    printf("{\"model\": \"%s\", \"device\": \"%s\", \"n\": %ld, \"prompt_len\": [%d, %d], \"output_len\": [%d, %d], "
           "\"seed\": %llu, \"max_num_seqs\": %d, \"max_num_batched_tokens\": %d, \"kv_cache_tokens\": %d, "
           "\"threads\": %d, \"load_s\": %.3f, \"prompt_tokens\": %lld, \"output_tokens\": %lld, \"failed\": %lld, "
           "\"wall_s\": %.4f, \"output_tok_s\": %.3f, \"total_tok_s\": %.3f, \"ttft_p50_s\": %.4f, "
           "\"ttft_p99_s\": %.4f, \"steps\": %lld, \"mean_step_tokens\": %.2f, \"preemptions\": %lld, "
           "\"prompts_from\": %s%s%s, \"force_output\": %s}\n",
           m->dir, ep.device ? ep.device : "cpu", n, plen[0], plen[1], olen[0], olen[1], (unsigned long long)seed,
           ep.max_num_seqs, ep.max_num_batched_tokens, ep.kv_cache_tokens, ep.threads, t_load, sum_prompt,
           got_output, failed, wall, got_output / wall, (sum_prompt + got_output) / wall, pct(ttft, (int)n, 50),
           pct(ttft, (int)n, 99), st.steps, mean_step, st.preemptions, text ? "\"" : "",
           text ? text_path : "null", text ? "\"" : "", force ? "true" : "false");
    rc = failed ? 1 : 0;
done:
    for (long i = 0; req && i < n; i++) engine_request_release(req[i]);
    engine_destroy(e);
    for (long i = 0; prompts && i < n; i++) free(prompts[i]);
    free(prompts);
    free(req);
    free(fin);
    free(np);
    free(no);
    free(ttft);
    free(forced);
    free(text);
    return rc;
}
