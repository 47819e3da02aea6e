/* engram-server: the OpenAI-compatible HTTP server. Reads its options from
 * flags, ENGRAM_<NAME> environment variables and a JSON config file (flags
 * win over env over file), loads the model into the engine, serves until
 * SIGINT or SIGTERM, then drains (new requests 503, accepted ones finish, up
 * to --shutdown-timeout seconds; a second signal cuts it short) and stops
 * cleanly. The only place that exits.
 *
 *   engram-server --model DIR [--host 127.0.0.1] [--port 8080] [options]
 *   engram-server --synthetic SPEC [options]   random weights of a real shape, token-id prompts
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "chat/reasoning.h"
#include "server/server.h"
#include "base/util.h"

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
    {"connection-timeout", OPT_INT, 1, 86400, "300", "seconds an idle connection is kept"},
    {"prefill-chunk", OPT_INT, 1, 1 << 20, "256", "prompt tokens per forward pass (streams get a keep-alive after each)"},
    {"shutdown-timeout", OPT_INT, 0, 86400, "0",
     "on SIGTERM/SIGINT, seconds to let accepted requests finish (new ones get 503) before aborting the rest"},
    {"engram-table-dir", OPT_STR, 0, 0, NULL,
     "directory of Engram table files; missing ones are written from the checkpoint at start; default: the checkpoint's tensors"},
    {"engram-tables", OPT_STR, 0, 0, NULL, "alias of --engram-table-dir"},
    {"engram-dram-budget", OPT_STR, 0, 0, NULL,
     "DRAM for the Engram tables (K/M/G/T, 1K = 1024); below their size they stay on NVMe behind a row cache of this size; "
     "default: all of them when they fit in MemAvailable, else half of MemAvailable"},
    {"engram-hbm-cache", OPT_STR, 0, 0, NULL, "backend memory for hot Engram rows (GPU HBM; host memory on the CPU backend)"},
    {"engram-tier", OPT_STR, 0, 0, "auto",
     "auto (as the budget decides), dram (whole tables mmap'd MAP_SHARED) or nvme (always from the file, cached within the budget)"},
    {"engram-io", OPT_STR, 0, 0, "uring", "nvme reads: uring (io_uring) or pread"},
    {"engram-queue-depth", OPT_INT, 1, 4096, "64", "nvme reads in flight"},
    {"engram-lookahead", OPT_INT, 0, 1 << 24, "2048",
     "prompt tokens beyond each step whose Engram rows the nvme tier reads ahead (0: off)"},
    {"max-num-seqs", OPT_INT, 1, 4096, "16", "sequences batched together in one scheduler step"},
    {"max-num-batched-tokens", OPT_INT, 1, 1 << 20, "512",
     "tokens per scheduler step (prompt chunks and decode tokens together)"},
    {"kv-cache-tokens", OPT_INT, 0, 1 << 30, "0",
     "KV cache positions shared by all sequences (0: on a GPU what --gpu-memory-utilization leaves, on the CPU the "
     "model's context length)"},
    {"kv-block-size", OPT_INT, 1, 4096, "16", "positions per KV cache block"},
    {"synthetic", OPT_STR, 0, 0, NULL,
     "instead of --model: random bf16 weights of a real shape (qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, llama3-1b, "
     "llama3-8b; +engram:ROWS, +layers:N); no tokenizer, so prompts are token-id arrays on /v1/completions"},
    {"synthetic-seed", OPT_INT, 0, LONG_MAX, "0", "seed of the synthetic weights"},
    {"synthetic-table-dir", OPT_STR, 0, 0, NULL, "where a synthetic Engram table is written, or reused"},
    {"gpu-memory-utilization", OPT_REAL, 0, 0, "0.9",
     "share of the GPU's memory the server may hold; with --kv-cache-tokens 0 the KV cache takes what the "
     "weights and scratch leave of it"},
};
#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

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
        const char *v = NULL;
        if (cJSON_IsString(item)) v = item->valuestring;
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

int main(int argc, char **argv) {
    const char *flag_vals[N_OPTS] = {0};
    const char *config = getenv("ENGRAM_CONFIG");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "engram-server: unexpected argument %s\n", a);
            usage(stderr);
            return 2;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
        if (!v) {
            fprintf(stderr, "engram-server: %s needs a value\n", a);
            return 2;
        }
        if (!eq) i++;
        if (nl == 6 && !strncmp(name, "config", 6)) {
            config = v;
            continue;
        }
        int found = -1;
        for (size_t k = 0; k < N_OPTS; k++)
            if (strlen(opts[k].flag) == nl && !strncmp(opts[k].flag, name, nl)) found = (int)k;
        if (found < 0) {
            fprintf(stderr, "engram-server: unknown option --%.*s\n", (int)nl, name);
            usage(stderr);
            return 2;
        }
        flag_vals[found] = v;
    }

    /* file < env < flags */
    char *file_vals[N_OPTS] = {0};
    if (config && config[0] && load_config(config, file_vals)) {
        for (size_t i = 0; i < N_OPTS; i++) free(file_vals[i]);
        return 2;
    }
    const char *val[N_OPTS];
    long num[N_OPTS] = {0};
    for (size_t i = 0; i < N_OPTS; i++) {
        char env[64];
        env_name(opts[i].flag, env, sizeof(env));
        const char *e = getenv(env);
        val[i] = flag_vals[i] ? flag_vals[i] : (e && e[0]) ? e : file_vals[i] ? file_vals[i] : opts[i].def;
        if (val[i] && opts[i].type == OPT_INT && parse_int(val[i], opts[i].lo, opts[i].hi, &num[i])) {
            fprintf(stderr, "engram-server: bad value for --%s: %s (an integer in [%ld, %ld])\n", opts[i].flag, val[i],
                    opts[i].lo, opts[i].hi);
            for (size_t k = 0; k < N_OPTS; k++) free(file_vals[k]);
            return 2;
        }
    }
    enum { O_MODEL, O_HOST, O_PORT, O_NAME, O_KEY, O_DEVICE, O_QUEUE, O_BODY, O_THREADS, O_HTTP_THREADS, O_REASONING,
           O_CORS,
           O_CONN_TIMEOUT, O_PREFILL_CHUNK, O_SHUTDOWN, O_ENGRAM_TABLE_DIR, O_ENGRAM_TABLES, O_ENGRAM_BUDGET,
           O_ENGRAM_HBM, O_ENGRAM_TIER, O_ENGRAM_IO, O_ENGRAM_QD, O_ENGRAM_AHEAD,
           O_MAX_SEQS, O_MAX_BATCHED, O_KV_TOKENS, O_KV_BLOCK, O_SYNTHETIC, O_SYNTH_SEED, O_SYNTH_DIR,
           O_GPU_UTIL };
    int rc = 1;
    bool have_model = val[O_MODEL] && val[O_MODEL][0], synthetic = val[O_SYNTHETIC] && val[O_SYNTHETIC][0];
    if (have_model == synthetic) {
        fprintf(stderr, "engram-server: exactly one of --model DIR and --synthetic SPEC is required\n");
        usage(stderr);
        rc = 2;
        goto free_vals;
    }
    if (synthetic && val[O_ENGRAM_TABLES] && val[O_ENGRAM_TABLES][0]) {
        fprintf(stderr, "engram-server: a synthetic model makes its own tables: use --synthetic-table-dir, not "
                        "--engram-tables\n");
        rc = 2;
        goto free_vals;
    }
    char name_buf[256];
    const char *served = val[O_NAME];
    if ((!served || !served[0]) && synthetic) {
        served = val[O_SYNTHETIC];
    } else if (!served || !served[0]) { /* the directory's last component */
        snprintf(name_buf, sizeof(name_buf), "%s", val[O_MODEL]);
        size_t l = strlen(name_buf);
        while (l > 1 && name_buf[l - 1] == '/') name_buf[--l] = 0;
        const char *slash = strrchr(name_buf, '/');
        served = slash && slash[1] ? slash + 1 : name_buf;
    }

    /* Signals are taken by sigwait in this thread only: block them before any thread starts. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[1024];
    engine_params ep = engine_default_params();
    ep.model_dir = have_model ? val[O_MODEL] : NULL;
    ep.synthetic = synthetic ? val[O_SYNTHETIC] : NULL;
    ep.synthetic_seed = (uint64_t)num[O_SYNTH_SEED];
    if (val[O_SYNTH_DIR] && val[O_SYNTH_DIR][0]) ep.synthetic_table_dir = val[O_SYNTH_DIR];
    ep.device = val[O_DEVICE];
    ep.max_queued = (int)num[O_QUEUE];
    ep.threads = (int)num[O_THREADS];
    ep.prefill_chunk = (int)num[O_PREFILL_CHUNK];
    ep.max_num_seqs = (int)num[O_MAX_SEQS];
    ep.max_num_batched_tokens = (int)num[O_MAX_BATCHED];
    ep.kv_cache_tokens = (int)num[O_KV_TOKENS];
    ep.kv_block_size = (int)num[O_KV_BLOCK];
    {
        char *end;
        double u = strtod(val[O_GPU_UTIL], &end);
        if (end == val[O_GPU_UTIL] || *end || !(u > 0 && u <= 1)) {
            fprintf(stderr, "engram-server: bad value for --gpu-memory-utilization: %s (a number in (0, 1])\n",
                    val[O_GPU_UTIL]);
            rc = 2;
            goto free_vals;
        }
        ep.gpu_memory_utilization = u;
    }
    /* Engram store: --engram-tables is an alias of --engram-table-dir; "" is unset (config file) */
    const char *tdir = val[O_ENGRAM_TABLE_DIR] && val[O_ENGRAM_TABLE_DIR][0] ? val[O_ENGRAM_TABLE_DIR] : NULL;
    const char *talias = val[O_ENGRAM_TABLES] && val[O_ENGRAM_TABLES][0] ? val[O_ENGRAM_TABLES] : NULL;
    if (tdir && talias && strcmp(tdir, talias)) {
        fprintf(stderr, "engram-server: --engram-table-dir %s and its alias --engram-tables %s disagree\n", tdir, talias);
        rc = 2;
        goto free_vals;
    }
    ep.engram_tables = tdir ? tdir : talias;
    const int size_opts[2] = {O_ENGRAM_BUDGET, O_ENGRAM_HBM};
    uint64_t sizes[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        const char *v = val[size_opts[k]];
        if (v && v[0] && util_parse_size(v, &sizes[k])) {
            fprintf(stderr, "engram-server: bad value for --%s: %s (a positive size in bytes, optionally with K, M, G "
                            "or T: 1K = 1024)\n", opts[size_opts[k]].flag, v);
            rc = 2;
            goto free_vals;
        }
    }
    if (strcmp(val[O_REASONING], "none") && strcmp(val[O_REASONING], "qwen3") && strcmp(val[O_REASONING], "deepseek_r1")) {
        fprintf(stderr, "engram-server: bad value for --reasoning-parser: %s (none, qwen3 or deepseek_r1)\n",
                val[O_REASONING]);
        rc = 2;
        goto free_vals;
    }
    if (strcmp(val[O_ENGRAM_TIER], "auto") && strcmp(val[O_ENGRAM_TIER], "dram") && strcmp(val[O_ENGRAM_TIER], "nvme")) {
        fprintf(stderr, "engram-server: bad value for --engram-tier: %s (auto, dram or nvme)\n", val[O_ENGRAM_TIER]);
        rc = 2;
        goto free_vals;
    }
    if (strcmp(val[O_ENGRAM_IO], "uring") && strcmp(val[O_ENGRAM_IO], "pread")) {
        fprintf(stderr, "engram-server: bad value for --engram-io: %s (uring or pread)\n", val[O_ENGRAM_IO]);
        rc = 2;
        goto free_vals;
    }
    if (sizes[0] && !ep.engram_tables && !ep.synthetic_table_dir) {
        fprintf(stderr, "engram-server: --engram-dram-budget needs --engram-table-dir (or, with --synthetic, "
                        "--synthetic-table-dir): the tables must be files to stay on NVMe\n");
        rc = 2;
        goto free_vals;
    }
    if (sizes[0] && !strcmp(val[O_ENGRAM_TIER], "dram")) {
        fprintf(stderr, "engram-server: --engram-dram-budget does not apply to --engram-tier dram (whole tables "
                        "mapped); use --engram-tier auto or nvme\n");
        rc = 2;
        goto free_vals;
    }
    if (sizes[1]) { /* the backend the engine will pick (auto: CUDA when usable) */
        char berr[256];
        backend *bo = backend_select(val[O_DEVICE], NULL, berr, sizeof(berr));
        if (bo && strcmp(backend_name(bo), "cuda"))
            fprintf(stderr, "engram-server: %s\n", "note: --engram-hbm-cache on the CPU backend keeps the hot rows in host memory (the CUDA path, for tests; no gain)");
        backend_destroy(bo);
    }
    ep.engram_store.dram_budget = sizes[0];
    ep.engram_store.hbm_cache = sizes[1];
    ep.engram_store.tier = !strcmp(val[O_ENGRAM_TIER], "dram")   ? ENGRAM_STORE_DRAM
                           : !strcmp(val[O_ENGRAM_TIER], "nvme") ? ENGRAM_STORE_NVME
                                                                  : ENGRAM_STORE_AUTO;
    ep.engram_store.use_pread = !strcmp(val[O_ENGRAM_IO], "pread");
    ep.engram_store.queue_depth = (int)num[O_ENGRAM_QD];
    ep.engram_lookahead = (int)num[O_ENGRAM_AHEAD];
    engine *e = NULL;
    metrics *mx = NULL;
    server *srv = NULL;
    double t0 = util_now();
    if (!(mx = metrics_create())) {
        fprintf(stderr, "engram-server: out of memory\n");
        goto free_vals;
    }
    /* Listen first: while the model loads, /health answers 503 "loading". */
    server_params sp = {0};
    sp.host = val[O_HOST];
    sp.port = (int)num[O_PORT];
    sp.served_model_name = served;
    sp.model_dir = ep.model_dir; /* NULL for a synthetic model: no chat template */
    sp.api_key = val[O_KEY];
    sp.max_body_bytes = (size_t)num[O_BODY];
    sp.http_threads = (int)num[O_HTTP_THREADS];
    sp.cors_origin = val[O_CORS];
    sp.reasoning = !strcmp(val[O_REASONING], "qwen3") ? REASONING_QWEN3 : !strcmp(val[O_REASONING], "deepseek_r1")
                                                                             ? REASONING_DEEPSEEK_R1 : REASONING_NONE;
    sp.connection_timeout = (int)num[O_CONN_TIMEOUT];
    if (server_start(&sp, mx, &srv, err, sizeof(err)) != 0) {
        fprintf(stderr, "engram-server: %s\n", err);
        goto done;
    }
    int erc = engine_create(&ep, &e, err, sizeof(err));
    if (erc != ENGINE_OK) {
        fprintf(stderr, "engram-server: %s\n", err);
        rc = erc == ENGINE_ERR_DEVICE ? 2 : 1;
        goto done;
    }
    if (!engine_tokenizer(e) && !synthetic) {
        fprintf(stderr, "engram-server: %s has no usable tokenizer.json: the server needs one\n", val[O_MODEL]);
        goto done;
    }
    server_set_engine(srv, e);
    engine_stats kv_now;
    engine_get_stats(e, &kv_now);
    fprintf(stderr, "engram-server: serving %s%s as \"%s\" on http://%s:%d (loaded in %.2fs; KV cache %d tokens)\n",
            synthetic ? "synthetic " : "", synthetic ? val[O_SYNTHETIC] : val[O_MODEL], served, sp.host, sp.port,
            util_now() - t0, kv_now.kv_capacity);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "engram-server: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    server_drain(srv);
    if (num[O_SHUTDOWN] > 0) { /* let what was accepted finish */
        fprintf(stderr, "engram-server: draining for up to %lds\n", num[O_SHUTDOWN]);
        double deadline = util_now() + (double)num[O_SHUTDOWN];
        for (;;) {
            /* wait first: a request that passed the draining check is submitted within this tick */
            struct timespec ts = {0, 20 * 1000 * 1000};
            if (sigtimedwait(&sigs, NULL, &ts) >= 0) {
                fprintf(stderr, "engram-server: second signal, aborting the drain\n");
                break;
            }
            engine_stats st;
            engine_get_stats(e, &st);
            if (st.running + st.queued == 0 && server_active(srv) == 0) break;
            if (util_now() >= deadline) {
                fprintf(stderr, "engram-server: --shutdown-timeout reached, aborting %d request(s)\n",
                        st.running + st.queued);
                break;
            }
        }
    }
    engine_stop(e); /* running and queued requests end; their connections resume */
    rc = 0;
done:
    server_stop(srv);
    engine_destroy(e);
    metrics_destroy(mx);
free_vals:
    for (size_t i = 0; i < N_OPTS; i++) free(file_vals[i]);
    return rc;
}
