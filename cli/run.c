/* engram-run: load a checkpoint (or make a synthetic model of a real
 * shape), run a prompt through the CPU reference engine, generate, and print
 * the result. The harness of the golden tests.
 *
 *   engram-run --model DIR (--prompt-ids 1,2,3 | --prompt TEXT) [options]
 *   engram-run --synthetic SPEC --prompt-ids 1,2,3 [options]
 */
#include <errno.h>
#include <limits.h>
#include <omp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/backend/backend.h"
#include "engine/engine.h"
#include "chat/chat_template.h"
#include "engine/forward.h"
#include "engine/model/model.h"
#include "engine/ranks.h"
#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"
#include "base/util.h"

/* What main does next: go on (RUN_GO_ON) or return this exit status. */
enum { RUN_GO_ON = -1 };

static void usage(FILE *f) {
    fprintf(f,
            "usage: engram-run --model DIR (--prompt-ids 1,2,3 | --prompt TEXT) [options]\n"
            "       engram-run --synthetic SPEC --prompt-ids 1,2,3 [options]\n"
            "  --synthetic SPEC       random weights of a real shape instead of --model: qwen3-0.6b,\n"
            "                         qwen3-1.7b, qwen3-4b, qwen3-8b, llama3-1b, llama3-8b, qwen3-30b-a3b\n"
            "                         (bf16), deepseek-v4-flash, deepseek-v4.1-flash (FP8/FP4); options\n"
            "                         +engram:ROWS (Engram at layer 1), +layers:N (first N layers only),\n"
            "                         +experts:N (first N experts), +engram-rows:SCALE (V4.1's tables)\n"
            "  --synthetic-seed N     seed of the synthetic weights (default 0)\n"
            "  --synthetic-table-dir DIR  where a synthetic Engram table is written, or reused\n"
            "  --chat                 wrap --prompt as one user message in the model's chat template\n"
            "  --max-tokens N         tokens to generate (default 32)\n"
            "  --temperature T        0 is greedy (default 1)\n"
            "  --top-p P  --top-k K  --min-p P\n"
            "  --repetition-penalty R  --presence-penalty P  --frequency-penalty F\n"
            "  --seed S               sampler seed (default 0)\n"
            "  --ignore-eos           do not stop at the model's eos_token_id\n"
            "  --warmup               run the prompt and a few decode steps once, untimed, before the\n"
            "                         timed run (one-time GPU setup stays out of the timings)\n"
            "  --device cpu|cuda|auto backend (default auto: CUDA when a GPU is usable)\n"
            "  --cuda-graphs 0|1     record decode steps as CUDA graphs (default 1)\n"
            "  --cuda-profile 0|ops|graphs  time every CUDA op (graphs off) or every replay; printed at exit\n"
            "  --cpu-isa auto|avx512|avx2|generic|avx512bf16  the CPU backend's matrix-product path (default auto;\n"
            "                         avx512bf16: opt-in, activations rounded to bf16 for bf16 weights)\n"
            "  --threads N            CPU threads (default: all cores; shared by the ranks)\n"
            "  --tensor-parallel-size N  ranks the attention heads and dense MLP are split over (default 1)\n"
            "  --expert-parallel-size N  ranks the routed experts are split over (default 1); the ranks are\n"
            "                         the larger of the two, one thread each, rank k on CUDA device k\n"
            "  --prefill-chunk N      prompt tokens per forward pass (default 256; 1 = token by token)\n"
            "  --print-ids            print the generated ids as one JSON array on the last stdout line\n"
            "  --print-gates          print Engram gates per token and Engram layer as one JSON line\n"
            "  --print-rows           print the Engram table rows per token and layer as one JSON line\n"
            "  --dump-logits FILE     write the last prompt position's logits as raw little-endian f32\n"
            "  --engram-table-dir DIR read Engram tables from DIR/engram_layer_<id>.tbl instead of the checkpoint\n"
            "                         tensor; missing files are written there from the checkpoint first\n"
            "  --engram-tables DIR    alias of --engram-table-dir\n"
            "  --engram-dram-budget SIZE  DRAM for the tables (K/M/G/T, 1K = 1024); below their size they stay\n"
            "                         on NVMe behind a row cache of SIZE (default: all of them when they fit in\n"
            "                         MemAvailable, else half of MemAvailable)\n"
            "  --engram-hbm-cache SIZE  backend memory for hot rows (GPU HBM; host memory on the CPU)\n"
            "  --engram-tiers exclusive|inclusive  exclusive (default): the nvme tier's DRAM row cache and the\n"
            "                         hot-row cache hold no row in common (DRAM takes what HBM evicts);\n"
            "                         inclusive: each keeps what it reads\n"
            "  --engram-tier auto|dram|nvme  auto (default): as the budget decides; dram: whole tables mmap'd\n"
            "                         (MAP_SHARED); nvme: always from the file, cached only within the budget\n"
            "  --engram-mlock         dram: lock the tables in RAM (failure is an error)\n"
            "  --engram-hugepages     dram: madvise(MADV_HUGEPAGE) on the mapping\n"
            "  --engram-io uring|pread  nvme: io_uring (default) or synchronous pread\n"
            "  --engram-queue-depth N nvme: reads in flight, 1..4096 (default 64)\n"
            "  --engram-buffered      nvme: no O_DIRECT (reads go through the page cache)\n");
}

/* Parses a float in [lo, hi] (the whole string); returns 0, or -1 on junk. */
static int parse_float(const char *s, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

/* "1,2,3" -> ids; returns the count, -1 for a bad list, -2 out of memory. */
static int parse_ids(const char *s, int32_t **out) {
    int cap = 16, n = 0;
    int32_t *ids = malloc((size_t)cap * sizeof(int32_t));
    if (!ids) return -2;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            free(ids);
            return -1;
        }
        if (n == cap) {
            int32_t *q = realloc(ids, (size_t)(cap *= 2) * sizeof(int32_t));
            if (!q) {
                free(ids);
                return -2;
            }
            ids = q;
        }
        ids[n++] = (int32_t)v;
        p = *end ? end + 1 : end;
        if (*end == ',' && !*p) { /* trailing comma */
            free(ids);
            return -1;
        }
    }
    *out = ids;
    return n;
}

/* Prints {"layers": [...], "rows": [token][layer][head]} for the prompt and
 * then n_out output tokens, hashed as one sequence from its start. */
static int print_engram_rows(const model *m, const int32_t *prompt, int n_prompt, const int32_t *out,
                             int n_out) {
    const model_engram *e = m->engram;
    size_t n = (size_t)n_prompt + (size_t)n_out, H = (size_t)e->n_heads, L = (size_t)e->n_layers;
    int64_t *ids = malloc(n * sizeof(int64_t)), *cids = malloc(n * sizeof(int64_t));
    int64_t *rows = malloc(L * n * H * sizeof(int64_t));
    if (!ids || !cids || !rows) {
        free(ids), free(cids), free(rows);
        fprintf(stderr, "engram-run: out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < n; i++) ids[i] = i < (size_t)n_prompt ? prompt[i] : out[i - n_prompt];
    ngram_hash_compress_ids(e->lookup, e->lookup_n, ids, n, cids);
    ngram_hash_history hist;
    ngram_hash_history_init(e->hash, &hist);
    ngram_hash_rows(e->hash, &hist, cids, n, rows); /* (L, n, H) */
    printf("{\"layers\": [");
    for (size_t l = 0; l < L; l++) printf("%s%d", l ? ", " : "", e->layers[l].layer_id);
    printf("], \"rows\": [");
    for (size_t t = 0; t < n; t++) {
        printf("%s[", t ? ", " : "");
        for (size_t l = 0; l < L; l++) {
            printf("%s[", l ? ", " : "");
            for (size_t h = 0; h < H; h++) printf("%s%lld", h ? ", " : "", (long long)rows[(l * n + t) * H + h]);
            printf("]");
        }
        printf("]");
    }
    printf("]}\n");
    free(ids), free(cids), free(rows);
    return 0;
}

/* ---- options ---- */

/* Everything the command line sets; run_options_default() gives the defaults. */
typedef struct {
    const char *model_dir, *synthetic, *synth_dir; /* exactly one of model_dir, synthetic */
    const char *prompt_ids, *prompt_text;           /* exactly one */
    const char *dump_logits, *device, *engram_tables;
    long max_tokens, prefill_chunk, threads; /* threads 0: all cores */
    int tp, ep; /* tensor- and expert-parallel sizes (engine/ranks.h) */
    uint64_t synth_seed;
    bool print_ids, print_gates, print_rows, ignore_eos, warmup, chat;
    sampler_params sp;
    engram_store_params esp;
    backend_params bp; /* --cuda-graphs, --cuda-profile, --cpu-isa */
    bool store_flag; /* a store option was given, which needs a table directory */
} run_options;

static void run_options_default(run_options *o) {
    memset(o, 0, sizeof(*o));
    o->device = "auto";
    o->max_tokens = 32;
    o->prefill_chunk = 256;
    o->sp = sampler_default_params();
    o->esp = engram_store_default_params();
    o->esp.tier = ENGRAM_STORE_AUTO;
    o->bp = backend_default_params();
    o->tp = o->ep = 1;
}

/* How an option's value is read into its field. */
typedef enum {
    OPT_TRUE,  /* no value: the bool field becomes true */
    OPT_STR,   /* const char *, borrowed from argv */
    OPT_LONG,  /* long in [lo, hi] */
    OPT_INT,   /* int in [lo, hi] */
    OPT_U64,   /* uint64_t in [lo, hi] */
    OPT_FLOAT, /* float in [flo, fhi] */
    OPT_SIZE,  /* uint64_t bytes, util_parse_size */
    OPT_FUNC,  /* the option's own handler */
} opt_kind;

/* A handler's answer: the value is taken, is bad, or was refused with its own message. */
enum { OPT_OK = 0, OPT_BAD = 1, OPT_REFUSED = 2 };

typedef struct {
    const char *name;
    opt_kind kind;
    size_t off;      /* offsetof(run_options, the field) */
    long lo, hi;     /* OPT_LONG, OPT_INT, OPT_U64 */
    float flo, fhi;  /* OPT_FLOAT */
    int (*set)(run_options *o, const char *name, const char *v); /* OPT_FUNC */
    bool store;      /* an Engram store option: needs a table directory */
} run_option;

static int set_table_dir(run_options *o, const char *a, const char *v) {
    if (o->engram_tables && strcmp(o->engram_tables, v)) {
        fprintf(stderr, "engram-run: %s %s contradicts the table directory %s given before\n", a, v,
                o->engram_tables);
        return OPT_REFUSED;
    }
    o->engram_tables = v;
    return OPT_OK;
}

static int set_tier(run_options *o, const char *a, const char *v) {
    if (!strcmp(v, "auto"))
        o->esp.tier = ENGRAM_STORE_AUTO;
    else if (!strcmp(v, "dram"))
        o->esp.tier = ENGRAM_STORE_DRAM;
    else if (!strcmp(v, "nvme"))
        o->esp.tier = ENGRAM_STORE_NVME;
    else
        return OPT_BAD;
    return OPT_OK;
}

static int set_tiers(run_options *o, const char *a, const char *v) {
    if (strcmp(v, "exclusive") && strcmp(v, "inclusive")) return OPT_BAD;
    o->esp.tiers = strcmp(v, "inclusive") ? ENGRAM_STORE_EXCLUSIVE : ENGRAM_STORE_INCLUSIVE;
    return OPT_OK;
}

static int set_io(run_options *o, const char *a, const char *v) {
    if (strcmp(v, "uring") && strcmp(v, "pread")) return OPT_BAD;
    o->esp.use_pread = !strcmp(v, "pread");
    return OPT_OK;
}

static int set_cuda_profile(run_options *o, const char *a, const char *v) {
    return (o->bp.cuda_profile = engine_cuda_profile_mode(v)) < 0 ? OPT_BAD : OPT_OK;
}

static int set_cpu_isa(run_options *o, const char *a, const char *v) {
    int isa = backend_cpu_isa_parse(v);
    if (isa < 0) return OPT_BAD;
    o->bp.cpu_isa = isa;
    return OPT_OK;
}

#define AT(field) .off = offsetof(run_options, field)
/* Every option but --help, in the order of usage(). A new option is one line
 * here (and one in usage()); a cross-option rule goes in run_options_check. */
static const run_option RUN_OPTIONS[] = {
    {"--model", OPT_STR, AT(model_dir)},
    {"--synthetic", OPT_STR, AT(synthetic)},
    {"--synthetic-seed", OPT_U64, AT(synth_seed), .lo = 0, .hi = LONG_MAX},
    {"--synthetic-table-dir", OPT_STR, AT(synth_dir)},
    {"--prompt-ids", OPT_STR, AT(prompt_ids)},
    {"--prompt", OPT_STR, AT(prompt_text)},
    {"--chat", OPT_TRUE, AT(chat)},
    {"--max-tokens", OPT_LONG, AT(max_tokens), .lo = 0, .hi = 1 << 24},
    {"--temperature", OPT_FLOAT, AT(sp.temperature), .flo = 0.0f, .fhi = 100.0f},
    {"--top-p", OPT_FLOAT, AT(sp.top_p), .flo = 1e-6f, .fhi = 1.0f},
    {"--top-k", OPT_INT, AT(sp.top_k), .lo = 0, .hi = INT32_MAX},
    {"--min-p", OPT_FLOAT, AT(sp.min_p), .flo = 0.0f, .fhi = 1.0f},
    {"--repetition-penalty", OPT_FLOAT, AT(sp.repetition_penalty), .flo = 1e-3f, .fhi = 100.0f},
    {"--presence-penalty", OPT_FLOAT, AT(sp.presence_penalty), .flo = -2.0f, .fhi = 2.0f},
    {"--frequency-penalty", OPT_FLOAT, AT(sp.frequency_penalty), .flo = -2.0f, .fhi = 2.0f},
    {"--seed", OPT_U64, AT(sp.seed), .lo = 0, .hi = LONG_MAX},
    {"--ignore-eos", OPT_TRUE, AT(ignore_eos)},
    {"--warmup", OPT_TRUE, AT(warmup)},
    {"--device", OPT_STR, AT(device)},
    {"--cuda-graphs", OPT_INT, AT(bp.cuda_graphs), .lo = 0, .hi = 1},
    {"--cuda-profile", OPT_FUNC, .set = set_cuda_profile},
    {"--cpu-isa", OPT_FUNC, .set = set_cpu_isa},
    {"--threads", OPT_LONG, AT(threads), .lo = 1, .hi = 4096},
    {"--tensor-parallel-size", OPT_INT, AT(tp), .lo = 1, .hi = 1024},
    {"--expert-parallel-size", OPT_INT, AT(ep), .lo = 1, .hi = 1024},
    {"--prefill-chunk", OPT_LONG, AT(prefill_chunk), .lo = 1, .hi = 1 << 20},
    {"--print-ids", OPT_TRUE, AT(print_ids)},
    {"--print-gates", OPT_TRUE, AT(print_gates)},
    {"--print-rows", OPT_TRUE, AT(print_rows)},
    {"--dump-logits", OPT_STR, AT(dump_logits)},
    {"--engram-table-dir", OPT_FUNC, .set = set_table_dir},
    {"--engram-tables", OPT_FUNC, .set = set_table_dir},
    {"--engram-dram-budget", OPT_SIZE, AT(esp.dram_budget), .store = true},
    {"--engram-hbm-cache", OPT_SIZE, AT(esp.hbm_cache)},
    {"--engram-tiers", OPT_FUNC, .set = set_tiers},
    {"--engram-tier", OPT_FUNC, .set = set_tier, .store = true},
    {"--engram-mlock", OPT_TRUE, AT(esp.mlock), .store = true},
    {"--engram-hugepages", OPT_TRUE, AT(esp.hugepages), .store = true},
    {"--engram-io", OPT_FUNC, .set = set_io, .store = true},
    {"--engram-queue-depth", OPT_INT, AT(esp.queue_depth), .lo = 1, .hi = 4096, .store = true},
    {"--engram-buffered", OPT_TRUE, AT(esp.no_direct), .store = true},
};
#undef AT

/* Reads v into opt's field of o; returns OPT_OK, OPT_BAD or OPT_REFUSED. */
static int run_option_set(const run_option *opt, run_options *o, const char *a, const char *v) {
    char *field = (char *)o + opt->off;
    long lv;
    o->store_flag |= opt->store;
    switch (opt->kind) {
    case OPT_TRUE: *(bool *)field = true; return OPT_OK;
    case OPT_STR: *(const char **)field = v; return OPT_OK;
    case OPT_FLOAT: return parse_float(v, opt->flo, opt->fhi, (float *)field) ? OPT_BAD : OPT_OK;
    case OPT_SIZE: return util_parse_size(v, (uint64_t *)field) ? OPT_BAD : OPT_OK;
    case OPT_FUNC: return opt->set(o, a, v);
    case OPT_LONG: case OPT_INT: case OPT_U64: break;
    }
    if (util_parse_long(v, opt->lo, opt->hi, &lv)) return OPT_BAD;
    if (opt->kind == OPT_LONG) *(long *)field = lv;
    else if (opt->kind == OPT_INT) *(int *)field = (int)lv;
    else *(uint64_t *)field = (uint64_t)lv;
    return OPT_OK;
}

/* Fills o from argv over the defaults; the last of a repeated option wins.
 * Returns RUN_GO_ON, or the exit status for main: 0 after --help, 2 for an
 * unknown option, a missing or bad value (the message on stderr). */
static int run_options_parse(int argc, char **argv, run_options *o) {
    run_options_default(o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        const run_option *opt = NULL;
        for (size_t k = 0; k < sizeof(RUN_OPTIONS) / sizeof(RUN_OPTIONS[0]) && !opt; k++)
            if (!strcmp(a, RUN_OPTIONS[k].name)) opt = &RUN_OPTIONS[k];
        if (!opt) {
            fprintf(stderr, "engram-run: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (opt->kind != OPT_TRUE) {
            if (!v) {
                fprintf(stderr, "engram-run: %s needs a value\n", a);
                return 2;
            }
            i++;
        }
        int set = run_option_set(opt, o, a, v);
        if (set == OPT_REFUSED) return 2;
        if (set == OPT_BAD) {
            fprintf(stderr, "engram-run: bad value for %s: %s%s\n", a, v,
                    opt->kind == OPT_SIZE ? " (a positive size in bytes, optionally with K, M, G or T: 1K = 1024)"
                                          : "");
            return 2;
        }
    }
    return RUN_GO_ON;
}

/* The rules between options. Returns RUN_GO_ON, or 2 with the message on stderr. */
static int run_options_check(const run_options *o) {
    /* util_parse_size refuses 0, the default: a budget not 0 was given */
    bool tier_dram = o->esp.tier == ENGRAM_STORE_DRAM, budget_given = o->esp.dram_budget != 0;
    if (!o->model_dir == !o->synthetic || (!o->prompt_ids == !o->prompt_text)) {
        fprintf(stderr, "engram-run: need one of --model, --synthetic and exactly one of --prompt-ids, --prompt\n");
        usage(stderr);
        return 2;
    }
    const char *why = NULL;
    if (o->synthetic && (o->prompt_text || o->chat))
        why = "a synthetic model has no tokenizer: give the prompt with --prompt-ids";
    else if (o->synthetic && o->engram_tables)
        why = "a synthetic model makes its own tables: use --synthetic-table-dir, not --engram-tables";
    else if ((o->synth_dir || o->synth_seed) && !o->synthetic)
        why = "--synthetic-seed and --synthetic-table-dir need --synthetic";
    else if (o->store_flag && !o->engram_tables && !o->synth_dir)
        why = "--engram-dram-budget/-tier/-io/-queue-depth/-mlock/-hugepages/-buffered need "
              "--engram-table-dir (alias --engram-tables) or --synthetic-table-dir";
    else if (tier_dram && budget_given)
        why = "--engram-dram-budget does not apply to --engram-tier dram (whole tables "
              "mapped); use --engram-tier auto or nvme";
    else if (o->chat && !o->prompt_text)
        why = "--chat needs --prompt";
    if (why) {
        fprintf(stderr, "engram-run: %s\n", why);
        return 2;
    }
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda") && strcmp(o->device, "auto")) {
        fprintf(stderr, "engram-run: device %s is unknown (expected cpu, cuda or auto)\n", o->device);
        return 2;
    }
    return RUN_GO_ON;
}

/* ---- the run ---- */

/* One run's objects, all owned here and freed by run_free (which takes a
 * zeroed run_ctx too). */
typedef struct {
    const run_options *o;  /* borrowed */
    tokenizer *tok;        /* the checkpoint's; NULL when it has none or the model is synthetic */
    tokenizer_stream *ts;  /* streams the output text to stdout when tok is set */
    int32_t *prompt;       /* (n_prompt) */
    int n_prompt;
    model *m;
    backend *be;
    engine_ranks *rk;      /* the ranks the model runs on (one unless split) */
    forward_ctx *fc;       /* rank 0's */
    forward_state *st;     /* rank 0's state of the sequence */
    int slot;              /* its slot among the ranks' states */
    sampler *smp;
    float *logits;   /* (vocab_size) the last position's */
    float *gates;    /* (need, nl) with --print-gates */
    int32_t *out;    /* (max_tokens + 1) generated ids */
    int n_out;
    int nl;          /* Engram layers, 0 without */
    long need;       /* positions: n_prompt + max_tokens */
} run_ctx;

static void run_free(run_ctx *r) {
    free(r->prompt);
    free(r->logits);
    free(r->gates);
    free(r->out);
    sampler_destroy(r->smp);
    tokenizer_stream_destroy(r->ts);
    tokenizer_destroy(r->tok);
    ranks_destroy(r->rk); /* every rank's state, KV cache and context */
    backend_destroy(r->be);
    model_destroy(r->m);
}

/* --chat: --prompt as one user message through the checkpoint's chat
 * template, as apply_chat_template(tokenize=True) renders it. Returns the
 * text (the caller frees it), or NULL with a message in err. */
static char *run_chat_render(const char *model_dir, const char *prompt_text, char *err, size_t errlen) {
    chat_template *tpl = NULL;
    char *rendered = NULL;
    cJSON *msgs = cJSON_CreateArray(), *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "role", "user");
    cJSON_AddStringToObject(msg, "content", prompt_text);
    cJSON_AddItemToArray(msgs, msg);
    int crc = chat_template_load_dir(model_dir, &tpl, err, errlen);
    if (crc == CHAT_TEMPLATE_OK) crc = chat_template_render(tpl, msgs, NULL, true, &rendered, err, errlen);
    chat_template_destroy(tpl);
    cJSON_Delete(msgs);
    return crc == CHAT_TEMPLATE_OK ? rendered : NULL;
}

/* The tokenizer (required for --prompt, used for printing text when
 * present) and the prompt's ids. Returns RUN_GO_ON, or the exit status
 * with the message on stderr. */
static int run_prompt_load(run_ctx *r) {
    const run_options *o = r->o;
    const char *prompt_text = o->prompt_text;
    char err[1024];
    if (o->synthetic || tokenizer_load(o->model_dir, &r->tok, err, sizeof(err)) != TOKENIZER_OK) {
        r->tok = NULL;
        if (prompt_text) {
            fprintf(stderr, "engram-run: --prompt needs the checkpoint's tokenizer: %s\n", err);
            return 1;
        }
    }
    char *rendered = NULL;
    if (o->chat) { /* render, then encode without special tokens */
        if (!(rendered = run_chat_render(o->model_dir, prompt_text, err, sizeof(err)))) {
            fprintf(stderr, "engram-run: chat template: %s\n", err);
            return 1;
        }
        prompt_text = rendered;
    }
    if (prompt_text) {
        size_t n = 0;
        int trc = tokenizer_encode(r->tok, prompt_text, strlen(prompt_text), !o->chat, &r->prompt, &n);
        free(rendered);
        if (trc != TOKENIZER_OK || n == 0 || n > INT32_MAX) {
            fprintf(stderr, "engram-run: cannot tokenize --prompt: %s\n",
                    trc ? tokenizer_status_str(trc) : "it encodes to no tokens");
            return 1;
        }
        r->n_prompt = (int)n;
    } else if ((r->n_prompt = parse_ids(o->prompt_ids, &r->prompt)) <= 0) {
        if (r->n_prompt == -2) {
            fprintf(stderr, "engram-run: out of memory\n");
            return 1;
        }
        fprintf(stderr, "engram-run: --prompt-ids must be a comma-separated list of token ids\n");
        return 2;
    }
    if (r->tok && tokenizer_stream_create(r->tok, true, &r->ts) != TOKENIZER_OK) {
        fprintf(stderr, "engram-run: out of memory\n");
        return 1;
    }
    return RUN_GO_ON;
}

/* The ranks the command line asks for (engine/ranks.h). */
static ranks_params run_ranks_params(const run_options *o) {
    return (ranks_params){.tp = o->tp, .ep = o->ep, .bp = o->bp, .max_tokens = (int)o->prefill_chunk, .max_seqs = 1,
                          .engram_store = o->engram_tables != NULL};
}

/* The model: synthetic or loaded, its Engram tables from files when asked
 * (after the ranks' check: no file is written for a layout refused). Returns
 * 0, or -1 with the message on stderr. */
static int run_model_open(run_ctx *r) {
    const run_options *o = r->o;
    char err[1024];
    if (!(r->be = backend_select(o->device, &o->bp, err, sizeof(err)))) { /* first: the weights' alignment is its */
        fprintf(stderr, "engram-run: %s\n", err);
        return -1;
    }
    if (o->synthetic) {
        model_synthetic_params msp = model_synthetic_default_params();
        msp.table_dir = o->synth_dir;
        msp.store = o->esp;
        if (model_synthetic_ex(o->synthetic, o->synth_seed, &msp, &r->m, err, sizeof(err)) != MODEL_OK) {
            fprintf(stderr, "engram-run: %s\n", err);
            return -1;
        }
        fprintf(stderr, "engram-run: synthetic %s (seed %llu): %lld backbone parameters, %.2f GB of weights\n",
                o->synthetic, (unsigned long long)o->synth_seed, (long long)model_param_count(r->m),
                r->m->synth_bytes / 1e9);
    } else if (model_load_ex(o->model_dir, backend_weight_align(r->be), &r->m, err, sizeof(err)) != MODEL_OK) {
        fprintf(stderr, "engram-run: %s\n", err);
        return -1;
    }
    ranks_params rp = run_ranks_params(o);
    if (ranks_check(r->m, &rp, err, sizeof(err))) {
        fprintf(stderr, "engram-run: %s\n", err);
        return -1;
    }
    if (o->engram_tables && model_engram_use_tables(r->m, o->engram_tables, &o->esp, err, sizeof(err)) != MODEL_OK) {
        fprintf(stderr, "engram-run: %s\n", err);
        return -1;
    }
    return 0;
}

/* Checks the prompt against the model, then the buffers, the sampler, the
 * backend and the forward context and state. Returns 0, or -1 with the
 * message on stderr. */
static int run_setup(run_ctx *r) {
    const run_options *o = r->o;
    const model_config *c = &r->m->cfg;
    char err[1024];
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] >= model_sampling_vocab(r->m)) {
            fprintf(stderr, "engram-run: prompt token %d is outside the vocabulary (%d ids)\n", r->prompt[i],
                    model_sampling_vocab(r->m));
            return -1;
        }
    r->need = r->n_prompt + o->max_tokens;
    if (r->need > c->max_position_embeddings) {
        fprintf(stderr, "engram-run: prompt (%d) + max tokens (%ld) exceed the context of %d\n", r->n_prompt,
                o->max_tokens, c->max_position_embeddings);
        return -1;
    }
    r->logits = malloc((size_t)c->vocab_size * sizeof(float));
    r->out = malloc((size_t)(o->max_tokens + 1) * sizeof(int32_t));
    r->smp = sampler_create(model_sampling_vocab(r->m), o->sp);
    if (o->esp.hbm_cache && strcmp(backend_name(r->be), "cuda"))
        fprintf(stderr, "engram-run: %s\n", "note: --engram-hbm-cache on the CPU backend keeps the hot rows in host memory (the CUDA path, for tests; no gain)");
    ranks_params rp = run_ranks_params(o);
    kv_cache *kv; /* rank 0's, the ranks' own */
    if (ranks_create(r->m, r->be, &rp, &r->rk, err, sizeof(err)) ||
        ranks_kv_create(r->rk, (int)r->need, 0, -1, (int)r->need, &kv, err, sizeof(err))) {
        fprintf(stderr, "engram-run: %s\n", err);
        return -1;
    }
    r->fc = ranks_ctx(r->rk);
    if (ranks_count(r->rk) > 1) {
        ranks_describe(r->rk, err, sizeof(err));
        fprintf(stderr, "engram-run: %s\n", err);
    }
    if (!r->logits || !r->out || !r->smp || (r->slot = ranks_state_take(r->rk, &r->st)) < 0) {
        fprintf(stderr, "engram-run: out of memory\n");
        return -1;
    }
    r->nl = r->m->engram ? r->m->engram->n_layers : 0;
    if ((o->print_gates || o->print_rows) && !r->nl) {
        fprintf(stderr, "engram-run: --print-gates/--print-rows: this model has no Engram layers\n");
        return -1;
    }
    if (o->print_gates && !(r->gates = malloc((size_t)r->need * r->nl * sizeof(float)))) {
        fprintf(stderr, "engram-run: out of memory\n");
        return -1;
    }
    return 0;
}

/* --warmup: the same prompt and up to 8 decode steps, then back to position
 * 0. Returns 0, or -1 with the message on stderr. */
static int run_warmup(run_ctx *r) {
    int wrc = ranks_forward_run(r->rk, r->slot, r->prompt, r->n_prompt, r->logits, NULL);
    for (long i = 0; wrc == FORWARD_OK && i < 8 && i + 1 < r->o->max_tokens; i++)
        wrc = ranks_forward_run(r->rk, r->slot, &r->prompt[r->n_prompt - 1], 1, r->logits, NULL);
    if (wrc != FORWARD_OK) {
        fprintf(stderr, "engram-run: warmup: %s\n", forward_status_str(wrc));
        return -1;
    }
    ranks_state_release(r->rk, r->slot); /* position 0 again: the same slot comes back */
    r->slot = ranks_state_take(r->rk, &r->st);
    return 0;
}

/* --dump-logits: the last prompt position's logits as raw f32. Returns 0 or -1. */
static int run_dump_logits(const run_ctx *r) {
    const char *path = r->o->dump_logits;
    size_t n = (size_t)r->m->cfg.vocab_size;
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(r->logits, sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "engram-run: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Samples up to max_tokens ids from the prompt's logits on, streaming the
 * text when there is a tokenizer; stops at eos unless --ignore-eos. Returns
 * 0, or -1 with the message on stderr. */
static int run_decode(run_ctx *r) {
    const run_options *o = r->o;
    const model_config *c = &r->m->cfg;
    while (r->n_out < o->max_tokens) {
        int32_t next = sampler_sample(r->smp, r->logits, r->prompt, r->n_prompt, r->out, r->n_out);
        r->out[r->n_out++] = next;
        if (r->ts) { /* stream the text as it comes, whole characters only */
            char *piece = NULL;
            size_t plen = 0;
            if (tokenizer_stream_step(r->ts, next, &piece, &plen) == TOKENIZER_OK) fwrite(piece, 1, plen, stdout);
            fflush(stdout);
            free(piece);
        }
        bool eos = false;
        for (int e = 0; e < c->n_eos && !o->ignore_eos; e++) eos |= next == c->eos_token_ids[e];
        if (eos || r->n_out == o->max_tokens) break;
        float *g = r->gates ? r->gates + (size_t)(r->n_prompt + r->n_out - 1) * r->nl : NULL;
        int frc = ranks_forward_run(r->rk, r->slot, &next, 1, r->logits, g);
        if (frc != FORWARD_OK) {
            fprintf(stderr, "engram-run: %s\n", forward_status_str(frc));
            return -1;
        }
    }
    return 0;
}

/* The timing lines on stderr: t0 start, tw after the load (before the
 * warmup, which runs the whole prompt once more: apart, so that a long
 * prompt's warmup is not read as load time), t1 after the warmup, t2 after
 * the prefill, t3 after the decode; then the Engram share and store. */
static void run_print_timings(const run_ctx *r, double t0, double tw, double t1, double t2, double t3) {
    int n_out = r->n_out, n_prompt = r->n_prompt;
    fprintf(stderr,
            "engram-run: load %.2fs, warmup %.2fs, prefill %d tokens in %.3fs (%.1f tok/s), decode %d tokens in "
            "%.3fs (%.2f tok/s), %.1f MB of weights read per token\n",
            tw - t0, t1 - tw, n_prompt, t2 - t1, n_prompt / (t2 - t1), n_out > 1 ? n_out - 1 : 0, t3 - t2,
            n_out > 1 ? (n_out - 1) / (t3 - t2) : 0.0, model_weight_bytes_per_token(r->m) / 1e6);
    if (r->nl)
        fprintf(stderr, "engram-run: Engram (hashing, gather, module) took %.1f%% of forward time\n",
                100.0 * forward_ctx_engram_seconds(r->fc) / (t3 - t1));
    if (r->o->engram_tables) {
        engram_store_stats es;
        model_engram_store_stats(r->m, &es);
        fprintf(stderr,
                "engram-run: Engram store: %llu lookups, %llu DRAM hits, %llu NVMe rows, %llu NVMe reads "
                "(%.1f KiB), %llu rows handed ahead, %llu rows prefetched, %llu evictions, %.6f s stalled\n",
                (unsigned long long)es.lookups, (unsigned long long)es.dram_hits, (unsigned long long)es.nvme_hits,
                (unsigned long long)es.nvme_reads, es.nvme_bytes / 1024.0, (unsigned long long)es.prefetch_rows, (unsigned long long)es.prefetch_reads,
                (unsigned long long)es.evictions, es.stall_seconds);
        engram_fetch_stats fs = {0};
        for (int li = 0; li < r->nl; li++) {
            engram_fetch_stats x;
            if (forward_ctx_fetch_stats(r->fc, li, &x) == 0) engram_fetch_stats_add(&fs, &x);
        }
        if (fs.cache_capacity) /* the hot-row cache and the store's DRAM cache, as tiers */
            fprintf(stderr,
                    "engram-run: Engram tiers: %s, %llu HBM hits, %llu rows moved up, %llu copied back, "
                    "%llu demoted to DRAM, %zu rows in both caches\n",
                    r->o->esp.tiers == ENGRAM_STORE_EXCLUSIVE ? "exclusive" : "inclusive",
                    (unsigned long long)fs.cache_hits, (unsigned long long)es.promotions,
                    (unsigned long long)fs.copied_back_rows, (unsigned long long)es.demotions,
                    forward_ctx_engram_tier_overlap(r->fc));
    }
}

/* --print-gates: every token that went through the model (the prompt, then
 * all but the last output) and its gates per Engram layer, one JSON line. */
static void run_print_gates(const run_ctx *r) {
    int n_fed = r->n_prompt + r->n_out - 1, nl = r->nl;
    printf("{\"layers\": [");
    for (int i = 0; i < nl; i++) printf("%s%d", i ? ", " : "", r->m->engram->layers[i].layer_id);
    printf("], \"tokens\": [");
    for (int t = 0; t < n_fed; t++)
        printf("%s%d", t ? ", " : "", t < r->n_prompt ? r->prompt[t] : r->out[t - r->n_prompt]);
    printf("], \"gates\": [");
    for (int t = 0; t < n_fed; t++) {
        printf("%s[", t ? ", " : "");
        for (int i = 0; i < nl; i++) printf("%s%.9g", i ? ", " : "", r->gates[(size_t)t * nl + i]);
        printf("]");
    }
    printf("]}\n");
}

/* stdout after the run: the rest of the streamed text, the gates, the rows,
 * the ids. Returns 0, or -1 with the message on stderr. */
static int run_print_outputs(const run_ctx *r) {
    const run_options *o = r->o;
    if (r->ts) {
        char *piece = NULL;
        size_t plen = 0;
        if (tokenizer_stream_flush(r->ts, &piece, &plen) == TOKENIZER_OK) fwrite(piece, 1, plen, stdout);
        free(piece);
        printf("\n");
    }
    if (o->print_gates) run_print_gates(r);
    if (o->print_rows && print_engram_rows(r->m, r->prompt, r->n_prompt, r->out, r->n_out - 1) != 0) return -1;
    if (o->print_ids) {
        printf("[");
        for (int i = 0; i < r->n_out; i++) printf("%s%d", i ? ", " : "", r->out[i]);
        printf("]\n");
    } else if (!r->ts) {
        printf("generated ids:");
        for (int i = 0; i < r->n_out; i++) printf(" %d", r->out[i]);
        printf("\n");
    }
    return 0;
}

/* Load, prefill, decode, print. Returns the exit status: 0, or 1 with the
 * message on stderr. */
static int run_generate(run_ctx *r) {
    double t0 = util_now();
    if (run_model_open(r) || run_setup(r)) return 1;
    double tw = util_now();
    if (r->o->warmup && run_warmup(r)) return 1;
    double t1 = util_now();
    int frc = ranks_forward_run(r->rk, r->slot, r->prompt, r->n_prompt, r->logits, r->gates);
    if (frc != FORWARD_OK) {
        fprintf(stderr, "engram-run: %s\n", forward_status_str(frc));
        return 1;
    }
    double t2 = util_now();
    if ((r->o->dump_logits && run_dump_logits(r)) || run_decode(r)) return 1;
    double t3 = util_now();
    run_print_timings(r, t0, tw, t1, t2, t3);
    return run_print_outputs(r) ? 1 : 0;
}

int main(int argc, char **argv) {
    run_options o;
    int rc = run_options_parse(argc, argv, &o);
    if (rc == RUN_GO_ON) rc = run_options_check(&o);
    if (rc != RUN_GO_ON) return rc;
    if (o.threads > 0) omp_set_num_threads((int)o.threads); /* OpenMP's threads, where loading uses them */
    o.bp.cpu_threads = ranks_cpu_threads((int)o.threads, o.tp, o.ep); /* the backend's pool: each rank's */
    run_ctx r = {.o = &o};
    rc = run_prompt_load(&r);
    if (rc == RUN_GO_ON) rc = run_generate(&r);
    run_free(&r);
    return rc;
}
