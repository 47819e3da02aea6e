/* engram-server's options: one table of flags, each also an ENGRAM_<NAME>
 * environment variable and a key of the JSON config file (flags win over env
 * over file), parsed and validated into the engine's and the server's
 * params, and the usage text made from the same table. Reports problems on
 * stderr and returns a status: main decides what exits. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "base/util.h"
#include "chat/reasoning.h"
#include "server/server.h"

typedef enum { OPT_STR, OPT_INT, OPT_REAL } opt_type; /* OPT_REAL: a number, checked where it is used */

static const struct {
    const char *flag; /* --flag; env ENGRAM_<FLAG upper, '-' -> '_'>; file key with '_' */
    opt_type type;
    long lo, hi;
    const char *def; /* default, or NULL */
    const char *help;
} opts[] = {
    {"model", OPT_STR, 0, 0, NULL, "checkpoint directory (this or --synthetic is required)"},
    {"host", OPT_STR, 0, 0, "127.0.0.1", "address to listen on"},
    {"port", OPT_INT, 1, 65535, "8080", "TCP port"},
    {"served-model-name", OPT_STR, 0, 0, NULL, "model id in the API (default: the model directory's name)"},
    {"api-key", OPT_STR, 0, 0, NULL, "require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize"},
    {"device", OPT_STR, 0, 0, "auto", "backend: cpu, cuda, or auto (CUDA when a GPU is usable, else the CPU)"},
    {"max-queued-requests", OPT_INT, 0, 1000000, "64", "requests waiting for a batch slot; more get 503"},
    {"max-body-bytes", OPT_INT, 1, 1L << 30, "1048576", "largest request body; larger get 413"},
    {"threads", OPT_INT, 0, 4096, "0", "CPU threads of the engine (0: all cores)"},
    {"http-threads", OPT_INT, 1, 256, "4", "HTTP worker threads"},
    {"reasoning-parser", OPT_STR, 0, 0, "none",
     "none, qwen3 (<think>...</think> at the start of the output) or deepseek_r1 (the output starts inside it): "
     "chat responses return the reasoning as reasoning_content"},
    {"cors-allow-origin", OPT_STR, 0, 0, NULL,
     "send Access-Control-Allow-Origin with this value (e.g. * or https://app.example) and answer CORS preflights; off by default"},
    {"access-log", OPT_STR, 0, 0, NULL,
     "one JSON line per request (time, request_id, client, method, route, status, bytes, duration_ms, end) appended "
     "to this file, or - for stderr; off by default"},
    {"log-level", OPT_STR, 0, 0, "info",
     "diagnostics shown: error, warning (libmicrohttpd's messages), info or debug (clients leaving mid-response)"},
    {"connection-timeout", OPT_INT, 1, 86400, "300",
     "seconds an idle connection is kept: a kept-alive one must start its next request within them"},
    {"request-timeout", OPT_INT, 1, 86400, "60",
     "seconds for a request's head to arrive (from the connection's start, or within --connection-timeout on a "
     "kept-alive one), and then its body: counted from the start, so a trickle of bytes cannot extend them"},
    {"max-connections", OPT_INT, 0, 1 << 20, "0",
     "open connections at most; when full the longest idle one is closed for a newcomer, which is refused (503) "
     "only when none is idle (0: the descriptor limit, raised to its hard limit up to 65536, less 256)"},
    {"max-connections-per-ip", OPT_INT, 0, 1 << 20, "0",
     "open connections per client address, the same way (0: half of --max-connections)"},
    {"prefill-chunk", OPT_INT, 1, 1 << 20, "256", "prompt tokens per forward pass (streams get a keep-alive after each)"},
    {"shutdown-timeout", OPT_INT, 0, 86400, "0",
     "on SIGTERM/SIGINT, seconds to let accepted requests finish (new ones get 503) before aborting the rest"},
    {"warmup", OPT_INT, 0, 1, "1",
     "1: before it is ready (/health 503 meanwhile), run one short prefill and two decode steps of its own, so the "
     "first request does not pay a first pass's one-time costs; leaves no trace in outputs, metrics or the prefix "
     "cache (0: off)"},
    {"engram-table-dir", OPT_STR, 0, 0, NULL,
     "directory of Engram table files; missing ones are written from the checkpoint at start; default: the checkpoint's tensors"},
    {"engram-tables", OPT_STR, 0, 0, NULL, "alias of --engram-table-dir"},
    {"engram-dram-budget", OPT_STR, 0, 0, NULL,
     "DRAM for the Engram tables (K/M/G/T, 1K = 1024); below their size they stay on NVMe behind a row cache of this size; "
     "default: all of them when they fit in MemAvailable, else half of MemAvailable"},
    {"engram-hbm-cache", OPT_STR, 0, 0, NULL, "backend memory for hot Engram rows (GPU HBM; host memory on the CPU backend)"},
    {"engram-tiers", OPT_STR, 0, 0, "exclusive",
     "exclusive (the nvme tier's DRAM row cache and the --engram-hbm-cache hold no row in common: DRAM takes what "
     "HBM evicts) or inclusive (each keeps what it reads)"},
    {"engram-tier", OPT_STR, 0, 0, "auto",
     "auto (as the budget decides), dram (whole tables mmap'd MAP_SHARED) or nvme (always from the file, cached within the budget)"},
    {"engram-io", OPT_STR, 0, 0, "uring", "nvme reads: uring (io_uring) or pread"},
    {"engram-queue-depth", OPT_INT, 1, 4096, "64", "nvme reads in flight"},
    {"engram-lookahead", OPT_INT, 0, 1 << 24, "2048",
     "prompt tokens beyond each step whose Engram rows the nvme tier reads ahead (0: off)"},
    {"engram-cache-admission", OPT_STR, 0, 0, "all",
     "which misses the nvme tier's DRAM row cache keeps: all (every miss, admit on first touch) or tinylfu "
     "(those a frequency sketch has seen more often lately than the row they would evict)"},
    {"engram-warm-start", OPT_STR, 0, 0, "background",
     "hot-row files beside the Engram tables (<table>.hot, written every --engram-hot-save-interval and at "
     "shutdown): background (read back while serving; /health says warming), wait (read back before ready), "
     "off (neither read nor written)"},
    {"engram-hot-save-interval", OPT_INT, 0, 86400 * 365, "0",
     "seconds between writes of the hot-row files (0: only at shutdown; a write pauses the engine's steps)"},
    {"max-num-seqs", OPT_INT, 1, 4096, "16", "sequences batched together in one scheduler step"},
    {"max-num-batched-tokens", OPT_INT, 1, 1 << 20, "512",
     "tokens per scheduler step (prompt chunks and decode tokens together)"},
    {"max-prefill-tokens-decoding", OPT_INT, 0, 1 << 20, "0",
     "while any sequence decodes, prompt tokens per step at most: decode tokens first, then prompt chunks cut "
     "to fit (bounds how long a decode waits for prefill; 0: off, prompts share --max-num-batched-tokens)"},
    {"kv-cache-tokens", OPT_INT, 0, 1 << 30, "0",
     "KV cache positions shared by all sequences (0: on a GPU what --gpu-memory-utilization leaves, on the CPU the "
     "model's context length)"},
    {"kv-block-size", OPT_INT, 1, 4096, "16", "positions per KV cache block"},
    {"enable-prefix-caching", OPT_INT, 0, 1, "1",
     "keep full KV blocks (and their Engram state) cached after a request and reuse them for prompts that start "
     "the same (1 on, 0 off)"},
    {"prefix-cache-max-blocks", OPT_INT, 0, 1 << 30, "0",
     "most idle cached KV blocks kept, the least recently used evicted first (0: as many as the cache has free)"},
    {"synthetic", OPT_STR, 0, 0, NULL,
     "instead of --model: random weights of a real shape (qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, llama3-1b, "
     "llama3-8b, qwen3-30b-a3b in bf16; deepseek-v4-flash, deepseek-v4.1-flash in the release's FP8/FP4 formats; "
     "+layers:N, +experts:N, +engram:ROWS, +engram-rows:SCALE); "
     "no tokenizer, so prompts are token-id arrays on /v1/completions"},
    {"synthetic-seed", OPT_INT, 0, LONG_MAX, "0", "seed of the synthetic weights"},
    {"synthetic-table-dir", OPT_STR, 0, 0, NULL, "where a synthetic Engram table is written, or reused"},
    {"gpu-memory-utilization", OPT_REAL, 0, 0, "0.9",
     "share of the GPU's memory the server may hold; with --kv-cache-tokens 0 the KV cache takes what the "
     "weights and scratch leave of it"},
    {"sample-on-backend", OPT_STR, 0, 0, "auto",
     "sample where the logits are: auto (sampled rows on a GPU in steps of 6 or more of them; greedy rows with a "
     "grammar, biases or penalties on every backend), 1 (every row, the CPU too), 0 (never)"},
    {"cuda-graphs", OPT_INT, 0, 1, "1", "record decode steps as CUDA graphs and replay them (0: off)"},
    {"cuda-profile", OPT_STR, 0, 0, "0",
     "time every CUDA op: 0 off, ops (graphs off), graphs (each replay as one op); totals on stderr at exit"},
    {"cpu-isa", OPT_STR, 0, 0, "auto",
     "the CPU backend's matrix-product path: auto (the best this CPU runs), avx512, avx2, generic (portable C), or "
     "avx512bf16 (opt-in: activations rounded to bf16 for bf16 weights, faster and less exact)"},
    {"tensor-parallel-size", OPT_INT, 1, 1024, "1",
     "ranks the attention heads and dense MLP are split over; the ranks are the larger of this and "
     "--expert-parallel-size (the smaller must divide it), one thread each: rank k on CUDA device k, or all on the "
     "CPU (exact, not faster)"},
    {"expert-parallel-size", OPT_INT, 1, 1024, "1", "ranks the routed experts are split over (see --tensor-parallel-size)"},
};
#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

/* The table's rows by name, in its order. */
enum { O_MODEL, O_HOST, O_PORT, O_NAME, O_KEY, O_DEVICE, O_QUEUE, O_BODY, O_THREADS, O_HTTP_THREADS, O_REASONING,
       O_CORS, O_ACCESS_LOG, O_LOG_LEVEL,
       O_CONN_TIMEOUT, O_REQ_TIMEOUT, O_MAX_CONNS, O_MAX_CONNS_IP, O_PREFILL_CHUNK, O_SHUTDOWN, O_WARMUP, O_ENGRAM_TABLE_DIR, O_ENGRAM_TABLES, O_ENGRAM_BUDGET,
       O_ENGRAM_HBM, O_ENGRAM_TIERS, O_ENGRAM_TIER, O_ENGRAM_IO, O_ENGRAM_QD, O_ENGRAM_AHEAD, O_ENGRAM_ADMISSION, O_ENGRAM_WARM,
       O_ENGRAM_HOT_SAVE,
       O_MAX_SEQS, O_MAX_BATCHED, O_MAX_PREFILL_DECODING, O_KV_TOKENS, O_KV_BLOCK, O_PREFIX_CACHING, O_PREFIX_MAX, O_SYNTHETIC, O_SYNTH_SEED, O_SYNTH_DIR,
       O_GPU_UTIL, O_SAMPLE_ON_BACKEND, O_CUDA_GRAPHS, O_CUDA_PROFILE, O_CPU_ISA, O_TP, O_EP, O_COUNT };
_Static_assert(O_COUNT == N_OPTS, "the O_ names follow the opts table");
_Static_assert(N_OPTS <= SERVER_OPTIONS_MAX, "server_options.owned holds a value per option");

static void env_name(const char *flag, char *out, size_t n) {
    snprintf(out, n, "ENGRAM_");
    size_t l = strlen(out);
    for (const char *p = flag; *p && l + 1 < n; p++, l++) out[l] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    out[l] = 0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: engram-server --model DIR [options]\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char env[64];
        env_name(opts[i].flag, env, sizeof(env));
        fprintf(f, "  --%-22s %s%s%s (env %s)\n", opts[i].flag, opts[i].help, opts[i].def ? "; default " : "",
                opts[i].def ? opts[i].def : "", env);
    }
    fprintf(f, "  --%-22s JSON config file whose keys are the flag names with '_' (env ENGRAM_CONFIG)\n", "config FILE");
    fprintf(f, "Flags win over environment variables, which win over the config file.\n");
    fprintf(f, "-h, --help: this text; -V, --version: the version.\n");
}

static void key_name(const char *flag, char *out, size_t n) {
    size_t l = 0;
    for (const char *p = flag; *p && l + 1 < n; p++, l++) out[l] = *p == '-' ? '_' : *p;
    out[l] = 0;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* Reads the config file into vals (heap strings) for the keys it names.
 * Returns 0, or -1 with a message on stderr. */
static int load_config(const char *path, char **vals) {
    char err[512];
    size_t len;
    char *text = util_read_file(path, 1 << 20, &len, err, sizeof(err));
    if (!text) {
        fprintf(stderr, "engram-server: --config: %s\n", err);
        return -1;
    }
    /* cJSON would cut a string at \u0000 (an api_key would lose its tail
     * silently), and no option can hold a NUL: refuse the escape */
    for (size_t i = 0; i + 5 < len; i++) {
        size_t k = 0;
        while (k < i && text[i - 1 - k] == '\\') k++;
        if (text[i] == '\\' && k % 2 == 0 && !memcmp(text + i + 1, "u0000", 5)) {
            fprintf(stderr, "engram-server: --config %s: a value holds \\u0000 (NUL), which no option can hold\n", path);
            free(text);
            return -1;
        }
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "engram-server: --config %s: not a JSON object\n", path);
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        int found = -1;
        for (size_t i = 0; i < N_OPTS; i++) {
            char key[64];
            key_name(opts[i].flag, key, sizeof(key));
            if (!strcmp(key, item->string)) found = (int)i;
        }
        if (found < 0) {
            fprintf(stderr, "engram-server: --config %s: unknown key \"%s\"\n", path, item->string);
            cJSON_Delete(root);
            return -1;
        }
        char buf[64];
        const char *v = NULL; /* a number for a numeric option, a string for the others: "8080" is no port */
        if (cJSON_IsString(item) && opts[found].type == OPT_STR) v = item->valuestring;
        else if (cJSON_IsNumber(item) && opts[found].type != OPT_STR) {
            snprintf(buf, sizeof(buf), "%.17g", item->valuedouble);
            v = buf;
        }
        if (!v) {
            fprintf(stderr, "engram-server: --config %s: key \"%s\" must be a %s\n", path, item->string,
                    opts[found].type != OPT_STR ? "number" : "string");
            cJSON_Delete(root);
            return -1;
        }
        free(vals[found]);
        if (!(vals[found] = strdup(v))) {
            cJSON_Delete(root);
            return -1;
        }
    }
    cJSON_Delete(root);
    return 0;
}


/* The flags of argv into flag_vals (borrowed from argv) and --config into
 * *config. */
static server_options_status read_flags(int argc, char **argv, const char **flag_vals, const char **config) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return SERVER_OPTIONS_HELP;
        }
        if (!strcmp(a, "--version") || !strcmp(a, "-V")) {
            printf("engram-server %s (libmicrohttpd %s, cJSON %s)\n", SERVER_VERSION, MHD_get_version(), cJSON_Version());
            return SERVER_OPTIONS_HELP;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "engram-server: unexpected argument %s\n", a);
            usage(stderr);
            return SERVER_OPTIONS_ERR;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
        if (!v) {
            fprintf(stderr, "engram-server: %s needs a value\n", a);
            return SERVER_OPTIONS_ERR;
        }
        if (!eq) i++;
        if (nl == 6 && !strncmp(name, "config", 6)) {
            *config = v;
            continue;
        }
        int found = -1;
        for (size_t k = 0; k < N_OPTS; k++)
            if (strlen(opts[k].flag) == nl && !strncmp(opts[k].flag, name, nl)) found = (int)k;
        if (found < 0) {
            fprintf(stderr, "engram-server: unknown option --%.*s\n", (int)nl, name);
            usage(stderr);
            return SERVER_OPTIONS_ERR;
        }
        flag_vals[found] = v;
    }
    return SERVER_OPTIONS_OK;
}

/* Each option's value (file < env < flags, else the default; NULL when none)
 * into val, and the integers' into num, checked against their range. */
static server_options_status resolve(const char **flag_vals, char **file_vals, const char **val, long *num) {
    for (size_t i = 0; i < N_OPTS; i++) {
        char env[64];
        env_name(opts[i].flag, env, sizeof(env));
        const char *e = getenv(env);
        if (e && !e[0]) { /* set but empty: a missing secret must not turn authentication off */
            fprintf(stderr, "engram-server: %s is set but empty: give it a value or unset it\n", env);
            return SERVER_OPTIONS_ERR;
        }
        if (i == O_KEY && flag_vals[i] && !flag_vals[i][0]) { /* "--api-key $KEY" with KEY unset */
            fprintf(stderr, "engram-server: --api-key is empty: give the key, or leave the flag out for no authentication\n");
            return SERVER_OPTIONS_ERR;
        }
        val[i] = flag_vals[i] ? flag_vals[i] : e ? e : file_vals[i] ? file_vals[i] : opts[i].def;
        if (val[i] && opts[i].type == OPT_INT && parse_int(val[i], opts[i].lo, opts[i].hi, &num[i])) {
            fprintf(stderr, "engram-server: bad value for --%s: %s (an integer in [%ld, %ld])\n", opts[i].flag, val[i],
                    opts[i].lo, opts[i].hi);
            return SERVER_OPTIONS_ERR;
        }
    }
    return SERVER_OPTIONS_OK;
}

/* The model to serve (exactly one of --model and --synthetic) and its name
 * in the API (default: the directory's last component, or the spec). */
static server_options_status read_source(const char **val, server_options *o) {
    bool have_model = val[O_MODEL] && val[O_MODEL][0];
    o->synthetic = val[O_SYNTHETIC] && val[O_SYNTHETIC][0];
    if (have_model == o->synthetic) {
        fprintf(stderr, "engram-server: exactly one of --model DIR and --synthetic SPEC is required\n");
        usage(stderr);
        return SERVER_OPTIONS_ERR;
    }
    if (o->synthetic && val[O_ENGRAM_TABLES] && val[O_ENGRAM_TABLES][0]) {
        fprintf(stderr, "engram-server: a synthetic model makes its own tables: use --synthetic-table-dir, not "
                        "--engram-tables\n");
        return SERVER_OPTIONS_ERR;
    }
    o->source = o->synthetic ? val[O_SYNTHETIC] : val[O_MODEL];
    const char *served = val[O_NAME];
    if ((!served || !served[0]) && o->synthetic) {
        served = val[O_SYNTHETIC];
    } else if (!served || !served[0]) { /* the directory's last component */
        snprintf(o->name_buf, sizeof(o->name_buf), "%s", val[O_MODEL]);
        size_t l = strlen(o->name_buf);
        while (l > 1 && o->name_buf[l - 1] == '/') o->name_buf[--l] = 0;
        const char *slash = strrchr(o->name_buf, '/');
        served = slash && slash[1] ? slash + 1 : o->name_buf;
    }
    o->server.served_model_name = served;
    return SERVER_OPTIONS_OK;
}

/* The engine's params but the Engram store's. */
static server_options_status engine_options(const char **val, const long *num, engine_params *ep, bool synthetic) {
    ep->model_dir = synthetic ? NULL : val[O_MODEL];
    ep->synthetic = synthetic ? val[O_SYNTHETIC] : NULL;
    ep->synthetic_seed = (uint64_t)num[O_SYNTH_SEED];
    if (val[O_SYNTH_DIR] && val[O_SYNTH_DIR][0]) ep->synthetic_table_dir = val[O_SYNTH_DIR];
    ep->device = val[O_DEVICE];
    ep->max_queued = (int)num[O_QUEUE];
    ep->threads = (int)num[O_THREADS];
    ep->prefill_chunk = (int)num[O_PREFILL_CHUNK];
    ep->max_num_seqs = (int)num[O_MAX_SEQS];
    ep->max_num_batched_tokens = (int)num[O_MAX_BATCHED];
    ep->max_prefill_tokens_decoding = (int)num[O_MAX_PREFILL_DECODING];
    ep->kv_cache_tokens = (int)num[O_KV_TOKENS];
    ep->kv_block_size = (int)num[O_KV_BLOCK];
    ep->enable_prefix_caching = (int)num[O_PREFIX_CACHING];
    ep->prefix_cache_max_blocks = (int)num[O_PREFIX_MAX];
    char *end;
    double u = strtod(val[O_GPU_UTIL], &end);
    if (end == val[O_GPU_UTIL] || *end || !(u > 0 && u <= 1)) {
        fprintf(stderr, "engram-server: bad value for --gpu-memory-utilization: %s (a number in (0, 1])\n",
                val[O_GPU_UTIL]);
        return SERVER_OPTIONS_ERR;
    }
    ep->gpu_memory_utilization = u;
    const char *sob = val[O_SAMPLE_ON_BACKEND], *prof = val[O_CUDA_PROFILE];
    ep->sample_on_backend = !strcmp(sob, "auto") ? -1 : !strcmp(sob, "1") ? 1 : !strcmp(sob, "0") ? 0 : -2;
    ep->cuda_graphs = (int)num[O_CUDA_GRAPHS];
    ep->cuda_profile = engine_cuda_profile_mode(prof);
    ep->cpu_isa = val[O_CPU_ISA]; /* checked by engine_create */
    ep->tensor_parallel_size = (int)num[O_TP]; /* what the model can split: engine_create */
    ep->expert_parallel_size = (int)num[O_EP];
    if (ep->sample_on_backend == -2 || ep->cuda_profile < 0) {
        fprintf(stderr, "engram-server: bad value for --%s: %s\n", ep->cuda_profile < 0 ? "cuda-profile" : "sample-on-backend",
                ep->cuda_profile < 0 ? prof : sob);
        return SERVER_OPTIONS_ERR;
    }
    return SERVER_OPTIONS_OK;
}

/* The Engram tables (--engram-tables is an alias of --engram-table-dir; ""
 * is unset, as from the config file) and the store's sizes. */
static server_options_status engram_tables_options(const char **val, engine_params *ep) {
    const char *tdir = val[O_ENGRAM_TABLE_DIR] && val[O_ENGRAM_TABLE_DIR][0] ? val[O_ENGRAM_TABLE_DIR] : NULL;
    const char *talias = val[O_ENGRAM_TABLES] && val[O_ENGRAM_TABLES][0] ? val[O_ENGRAM_TABLES] : NULL;
    if (tdir && talias && strcmp(tdir, talias)) {
        fprintf(stderr, "engram-server: --engram-table-dir %s and its alias --engram-tables %s disagree\n", tdir, talias);
        return SERVER_OPTIONS_ERR;
    }
    ep->engram_tables = tdir ? tdir : talias;
    const int size_opts[2] = {O_ENGRAM_BUDGET, O_ENGRAM_HBM};
    uint64_t *sizes[2] = {&ep->engram_store.dram_budget, &ep->engram_store.hbm_cache};
    for (int k = 0; k < 2; k++) {
        const char *v = val[size_opts[k]];
        *sizes[k] = 0;
        if (v && v[0] && util_parse_size(v, sizes[k])) {
            fprintf(stderr, "engram-server: bad value for --%s: %s (a positive size in bytes, optionally with K, M, G "
                            "or T: 1K = 1024)\n", opts[size_opts[k]].flag, v);
            return SERVER_OPTIONS_ERR;
        }
    }
    return SERVER_OPTIONS_OK;
}

/* Whether v is one of the NULL-terminated names. */
static bool one_of(const char *v, const char *const *names) {
    for (; *names; names++)
        if (!strcmp(v, *names)) return true;
    return false;
}

/* The options that take one of a few names. */
static server_options_status check_names(const char **val) {
    if (!one_of(val[O_REASONING], (const char *const[]){"none", "qwen3", "deepseek_r1", NULL})) {
        fprintf(stderr, "engram-server: bad value for --reasoning-parser: %s (none, qwen3 or deepseek_r1)\n",
                val[O_REASONING]);
        return SERVER_OPTIONS_ERR;
    }
    server_log_level level;
    if (server_log_level_parse(val[O_LOG_LEVEL], &level)) {
        fprintf(stderr, "engram-server: bad value for --log-level: %s (error, warning, info or debug)\n", val[O_LOG_LEVEL]);
        return SERVER_OPTIONS_ERR;
    }
    if (!one_of(val[O_ENGRAM_TIER], (const char *const[]){"auto", "dram", "nvme", NULL})) {
        fprintf(stderr, "engram-server: bad value for --engram-tier: %s (auto, dram or nvme)\n", val[O_ENGRAM_TIER]);
        return SERVER_OPTIONS_ERR;
    }
    if (!one_of(val[O_ENGRAM_TIERS], (const char *const[]){"exclusive", "inclusive", NULL})) {
        fprintf(stderr, "engram-server: bad value for --engram-tiers: %s (exclusive or inclusive)\n",
                val[O_ENGRAM_TIERS]);
        return SERVER_OPTIONS_ERR;
    }
    if (!one_of(val[O_ENGRAM_IO], (const char *const[]){"uring", "pread", NULL})) {
        fprintf(stderr, "engram-server: bad value for --engram-io: %s (uring or pread)\n", val[O_ENGRAM_IO]);
        return SERVER_OPTIONS_ERR;
    }
    if (!one_of(val[O_ENGRAM_ADMISSION], (const char *const[]){"all", "tinylfu", NULL})) {
        fprintf(stderr, "engram-server: bad value for --engram-cache-admission: %s (all or tinylfu)\n",
                val[O_ENGRAM_ADMISSION]);
        return SERVER_OPTIONS_ERR;
    }
    if (!one_of(val[O_ENGRAM_WARM], (const char *const[]){"background", "wait", "off", NULL})) {
        fprintf(stderr, "engram-server: bad value for --engram-warm-start: %s (background, wait or off)\n",
                val[O_ENGRAM_WARM]);
        return SERVER_OPTIONS_ERR;
    }
    return SERVER_OPTIONS_OK;
}

/* The Engram store: where the DRAM budget applies, the tier, the reads. */
static server_options_status engram_store_options(const char **val, const long *num, engine_params *ep) {
    engram_store_params *es = &ep->engram_store;
    if (es->dram_budget && !ep->engram_tables && !ep->synthetic_table_dir) {
        fprintf(stderr, "engram-server: --engram-dram-budget needs --engram-table-dir (or, with --synthetic, "
                        "--synthetic-table-dir): the tables must be files to stay on NVMe\n");
        return SERVER_OPTIONS_ERR;
    }
    if (es->dram_budget && !strcmp(val[O_ENGRAM_TIER], "dram")) {
        fprintf(stderr, "engram-server: --engram-dram-budget does not apply to --engram-tier dram (whole tables "
                        "mapped); use --engram-tier auto or nvme\n");
        return SERVER_OPTIONS_ERR;
    }
    if (es->hbm_cache) { /* the backend the engine will pick (auto: CUDA when usable) */
        char berr[256];
        const char *dev = engine_device_name(val[O_DEVICE], berr, sizeof(berr));
        if (dev && strcmp(dev, "cuda"))
            fprintf(stderr, "engram-server: %s\n", "note: --engram-hbm-cache on the CPU backend keeps the hot rows in host memory (the CUDA path, for tests; no gain)");
    }
    es->tier = !strcmp(val[O_ENGRAM_TIER], "dram")   ? ENGRAM_STORE_DRAM
               : !strcmp(val[O_ENGRAM_TIER], "nvme") ? ENGRAM_STORE_NVME
                                                      : ENGRAM_STORE_AUTO;
    es->use_pread = !strcmp(val[O_ENGRAM_IO], "pread");
    es->tiers = !strcmp(val[O_ENGRAM_TIERS], "inclusive") ? ENGRAM_STORE_INCLUSIVE : ENGRAM_STORE_EXCLUSIVE;
    es->queue_depth = (int)num[O_ENGRAM_QD];
    ep->engram_lookahead = (int)num[O_ENGRAM_AHEAD];
    es->admission = !strcmp(val[O_ENGRAM_ADMISSION], "all") ? ENGRAM_STORE_ADMIT_ALL : ENGRAM_STORE_ADMIT_TINYLFU;
    es->warm_start = !strcmp(val[O_ENGRAM_WARM], "wait")  ? ENGRAM_STORE_WARM_WAIT
                     : !strcmp(val[O_ENGRAM_WARM], "off") ? ENGRAM_STORE_WARM_OFF
                                                          : ENGRAM_STORE_WARM_BACKGROUND;
    ep->engram_hot_save_interval = (int)num[O_ENGRAM_HOT_SAVE];
    return SERVER_OPTIONS_OK;
}

/* The HTTP server's params but the served model name. */
static void http_options(const char **val, const long *num, server_params *sp, const char *model_dir) {
    sp->host = val[O_HOST];
    sp->port = (int)num[O_PORT];
    sp->model_dir = model_dir; /* NULL for a synthetic model: no chat template */
    sp->api_key = val[O_KEY];
    sp->max_body_bytes = (size_t)num[O_BODY];
    sp->http_threads = (int)num[O_HTTP_THREADS];
    sp->cors_origin = val[O_CORS];
    sp->access_log = val[O_ACCESS_LOG];
    sp->reasoning = !strcmp(val[O_REASONING], "qwen3") ? REASONING_QWEN3 : !strcmp(val[O_REASONING], "deepseek_r1")
                                                                              ? REASONING_DEEPSEEK_R1 : REASONING_NONE;
    sp->connection_timeout = (int)num[O_CONN_TIMEOUT];
    sp->request_timeout = (int)num[O_REQ_TIMEOUT];
    sp->max_connections = (int)num[O_MAX_CONNS];
    sp->max_connections_per_ip = (int)num[O_MAX_CONNS_IP];
}

server_options_status server_options_parse(int argc, char **argv, server_options *o) {
    memset(o, 0, sizeof(*o));
    const char *flag_vals[N_OPTS] = {0}, *val[N_OPTS];
    long num[N_OPTS] = {0};
    const char *config = getenv("ENGRAM_CONFIG");
    server_options_status st = read_flags(argc, argv, flag_vals, &config);
    if (st != SERVER_OPTIONS_OK) return st;
    if (config && !config[0]) {
        fprintf(stderr, "engram-server: %s is empty: give a config file or unset it\n",
                getenv("ENGRAM_CONFIG") == config ? "ENGRAM_CONFIG" : "--config");
        return SERVER_OPTIONS_ERR;
    }
    if (config && config[0] && load_config(config, o->owned)) return SERVER_OPTIONS_ERR;
    o->engine = engine_default_params();
    /* in this order, so that the first problem is the one reported */
    if ((st = resolve(flag_vals, o->owned, val, num)) || (st = read_source(val, o)) ||
        (st = engine_options(val, num, &o->engine, o->synthetic)) || (st = engram_tables_options(val, &o->engine)) ||
        (st = check_names(val)) || (st = engram_store_options(val, num, &o->engine)))
        return st;
    http_options(val, num, &o->server, o->engine.model_dir);
    server_log_level_parse(val[O_LOG_LEVEL], &o->log_level); /* checked by check_names */
    o->shutdown_timeout = num[O_SHUTDOWN];
    o->warmup = num[O_WARMUP] != 0;
    return SERVER_OPTIONS_OK;
}

void server_options_free(server_options *o) {
    for (size_t i = 0; i < N_OPTS; i++) free(o->owned[i]);
    memset(o->owned, 0, sizeof(o->owned));
}
