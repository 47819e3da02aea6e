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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/backend/backend.h"
#include "chat/chat_template.h"
#include "engine/forward.h"
#include "engine/model/model.h"
#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"
#include "base/util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: engram-run --model DIR (--prompt-ids 1,2,3 | --prompt TEXT) [options]\n"
            "       engram-run --synthetic SPEC --prompt-ids 1,2,3 [options]\n"
            "  --synthetic SPEC       random bf16 weights of a real shape instead of --model: qwen3-0.6b,\n"
            "                         qwen3-1.7b, qwen3-4b, qwen3-8b, llama3-1b, llama3-8b; options\n"
            "                         +engram:ROWS (Engram at layer 1), +layers:N (first N layers only)\n"
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
            "  --threads N            CPU threads (default: all cores)\n"
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
            "  --engram-tier auto|dram|nvme  auto (default): as the budget decides; dram: whole tables mmap'd\n"
            "                         (MAP_SHARED); nvme: always from the file, cached only within the budget\n"
            "  --engram-mlock         dram: lock the tables in RAM (failure is an error)\n"
            "  --engram-hugepages     dram: madvise(MADV_HUGEPAGE) on the mapping\n"
            "  --engram-io uring|pread  nvme: io_uring (default) or synchronous pread\n"
            "  --engram-queue-depth N nvme: reads in flight, 1..4096 (default 64)\n"
            "  --engram-buffered      nvme: no O_DIRECT (reads go through the page cache)\n");
}

/* Parses a decimal integer in [lo, hi]; returns -1 on junk. */
static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

/* "1,2,3" -> ids; returns the count or -1. */
static int parse_ids(const char *s, int32_t **out) {
    int cap = 16, n = 0;
    int32_t *ids = malloc((size_t)cap * sizeof(int32_t));
    if (!ids) return -1;
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
                return -1;
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

int main(int argc, char **argv) {
    const char *model_dir = NULL, *prompt_ids = NULL, *prompt_text = NULL, *dump_logits = NULL;
    const char *device = "auto";
    long max_tokens = 32, prefill_chunk = 256, threads = 0;
    bool print_ids = false, ignore_eos = false, warmup = false, print_gates = false, print_rows = false, chat = false;
    sampler_params sp = sampler_default_params();
    const char *engram_tables = NULL, *synthetic = NULL, *synth_dir = NULL;
    uint64_t synth_seed = 0;
    engram_store_params esp = engram_store_default_params();
    esp.tier = ENGRAM_STORE_AUTO;
    bool engram_store_flag = false; /* a store option, which needs --engram-table-dir */
    bool tier_dram = false, budget_given = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long lv;
        int bad = 0;
#define NEED_VALUE                                                                                 \
    if (!v) {                                                                                      \
        fprintf(stderr, "engram-run: %s needs a value\n", a);                                      \
        return 2;                                                                                  \
    }                                                                                              \
    i++;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--print-ids")) {
            print_ids = true;
        } else if (!strcmp(a, "--chat")) {
            chat = true;
        } else if (!strcmp(a, "--print-rows")) {
            print_rows = true;
        } else if (!strcmp(a, "--print-gates")) {
            print_gates = true;
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = true;
        } else if (!strcmp(a, "--warmup")) {
            warmup = true;
        } else if (!strcmp(a, "--model")) {
            NEED_VALUE model_dir = v;
        } else if (!strcmp(a, "--synthetic")) {
            NEED_VALUE synthetic = v;
        } else if (!strcmp(a, "--synthetic-table-dir")) {
            NEED_VALUE synth_dir = v;
        } else if (!strcmp(a, "--synthetic-seed")) {
            NEED_VALUE bad = parse_long(v, 0, LONG_MAX, &lv);
            synth_seed = (uint64_t)lv;
        } else if (!strcmp(a, "--prompt-ids")) {
            NEED_VALUE prompt_ids = v;
        } else if (!strcmp(a, "--prompt")) {
            NEED_VALUE prompt_text = v;
        } else if (!strcmp(a, "--dump-logits")) {
            NEED_VALUE dump_logits = v;
        } else if (!strcmp(a, "--engram-table-dir") || !strcmp(a, "--engram-tables")) {
            NEED_VALUE if (engram_tables && strcmp(engram_tables, v)) {
                fprintf(stderr, "engram-run: %s %s contradicts the table directory %s given before\n", a, v,
                        engram_tables);
                return 2;
            }
            engram_tables = v;
        } else if (!strcmp(a, "--engram-dram-budget")) {
            NEED_VALUE engram_store_flag = budget_given = true;
            bad = util_parse_size(v, &esp.dram_budget);
        } else if (!strcmp(a, "--engram-hbm-cache")) {
            NEED_VALUE bad = util_parse_size(v, &esp.hbm_cache);
        } else if (!strcmp(a, "--engram-tier")) {
            NEED_VALUE engram_store_flag = true;
            tier_dram = !strcmp(v, "dram");
            if (!strcmp(v, "auto"))
                esp.tier = ENGRAM_STORE_AUTO;
            else if (!strcmp(v, "dram"))
                esp.tier = ENGRAM_STORE_DRAM;
            else if (!strcmp(v, "nvme"))
                esp.tier = ENGRAM_STORE_NVME;
            else
                bad = 1;
        } else if (!strcmp(a, "--engram-io")) {
            NEED_VALUE engram_store_flag = true;
            if (!strcmp(v, "uring"))
                esp.use_pread = false;
            else if (!strcmp(v, "pread"))
                esp.use_pread = true;
            else
                bad = 1;
        } else if (!strcmp(a, "--engram-queue-depth")) {
            NEED_VALUE engram_store_flag = true;
            bad = parse_long(v, 1, 4096, &lv);
            esp.queue_depth = (int)lv;
        } else if (!strcmp(a, "--engram-mlock")) {
            engram_store_flag = esp.mlock = true;
        } else if (!strcmp(a, "--engram-hugepages")) {
            engram_store_flag = esp.hugepages = true;
        } else if (!strcmp(a, "--engram-buffered")) {
            engram_store_flag = esp.no_direct = true;
        } else if (!strcmp(a, "--device")) {
            NEED_VALUE device = v;
        } else if (!strcmp(a, "--max-tokens")) {
            NEED_VALUE bad = parse_long(v, 0, 1 << 24, &max_tokens);
        } else if (!strcmp(a, "--prefill-chunk")) {
            NEED_VALUE bad = parse_long(v, 1, 1 << 20, &prefill_chunk);
        } else if (!strcmp(a, "--threads")) {
            NEED_VALUE bad = parse_long(v, 1, 4096, &threads);
        } else if (!strcmp(a, "--seed")) {
            NEED_VALUE bad = parse_long(v, 0, LONG_MAX, &lv);
            sp.seed = (uint64_t)lv;
        } else if (!strcmp(a, "--top-k")) {
            NEED_VALUE bad = parse_long(v, 0, INT32_MAX, &lv);
            sp.top_k = (int)lv;
        } else if (!strcmp(a, "--temperature")) {
            NEED_VALUE bad = parse_float(v, 0.0f, 100.0f, &sp.temperature);
        } else if (!strcmp(a, "--top-p")) {
            NEED_VALUE bad = parse_float(v, 1e-6f, 1.0f, &sp.top_p);
        } else if (!strcmp(a, "--min-p")) {
            NEED_VALUE bad = parse_float(v, 0.0f, 1.0f, &sp.min_p);
        } else if (!strcmp(a, "--repetition-penalty")) {
            NEED_VALUE bad = parse_float(v, 1e-3f, 100.0f, &sp.repetition_penalty);
        } else if (!strcmp(a, "--presence-penalty")) {
            NEED_VALUE bad = parse_float(v, -2.0f, 2.0f, &sp.presence_penalty);
        } else if (!strcmp(a, "--frequency-penalty")) {
            NEED_VALUE bad = parse_float(v, -2.0f, 2.0f, &sp.frequency_penalty);
        } else {
            fprintf(stderr, "engram-run: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "engram-run: bad value for %s: %s%s\n", a, v,
                    !strcmp(a, "--engram-dram-budget") || !strcmp(a, "--engram-hbm-cache")
                        ? " (a positive size in bytes, optionally with K, M, G or T: 1K = 1024)"
                        : "");
            return 2;
        }
#undef NEED_VALUE
    }
    if (!model_dir == !synthetic || (!prompt_ids == !prompt_text)) {
        fprintf(stderr, "engram-run: need one of --model, --synthetic and exactly one of --prompt-ids, --prompt\n");
        usage(stderr);
        return 2;
    }
    if (synthetic && (prompt_text || chat)) {
        fprintf(stderr, "engram-run: a synthetic model has no tokenizer: give the prompt with --prompt-ids\n");
        return 2;
    }
    if (synthetic && engram_tables) {
        fprintf(stderr, "engram-run: a synthetic model makes its own tables: use --synthetic-table-dir, not --engram-tables\n");
        return 2;
    }
    if ((synth_dir || synth_seed) && !synthetic) {
        fprintf(stderr, "engram-run: --synthetic-seed and --synthetic-table-dir need --synthetic\n");
        return 2;
    }
    if (engram_store_flag && !engram_tables && !synth_dir) {
        fprintf(stderr, "engram-run: --engram-dram-budget/-tier/-io/-queue-depth/-mlock/-hugepages/-buffered need "
                        "--engram-table-dir (alias --engram-tables) or --synthetic-table-dir\n");
        return 2;
    }
    if (tier_dram && budget_given) {
        fprintf(stderr, "engram-run: --engram-dram-budget does not apply to --engram-tier dram (whole tables "
                        "mapped); use --engram-tier auto or nvme\n");
        return 2;
    }

    if (chat && !prompt_text) {
        fprintf(stderr, "engram-run: --chat needs --prompt\n");
        return 2;
    }
    if (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "auto")) {
        fprintf(stderr, "engram-run: device %s is unknown (expected cpu, cuda or auto)\n", device);
        return 2;
    }
    if (threads > 0) omp_set_num_threads((int)threads);

    int rc = 1;
    char err[1024];
    int32_t *prompt = NULL;
    int n_prompt = 0;
    /* The checkpoint's tokenizer: required for --prompt, used for printing text when present. */
    tokenizer *tok = NULL;
    tokenizer_stream *ts = NULL;
    if (synthetic || tokenizer_load(model_dir, &tok, err, sizeof(err)) != TOKENIZER_OK) {
        tok = NULL;
        if (prompt_text) {
            fprintf(stderr, "engram-run: --prompt needs the checkpoint's tokenizer: %s\n", err);
            return 1;
        }
    }
    char *rendered = NULL;
    if (chat) { /* as apply_chat_template(tokenize=True): render, then encode without special tokens */
        chat_template *tpl = NULL;
        cJSON *msgs = cJSON_CreateArray(), *msg = cJSON_CreateObject();
        cJSON_AddStringToObject(msg, "role", "user");
        cJSON_AddStringToObject(msg, "content", prompt_text);
        cJSON_AddItemToArray(msgs, msg);
        int crc = chat_template_load_dir(model_dir, &tpl, err, sizeof(err));
        if (crc == CHAT_TEMPLATE_OK) crc = chat_template_render(tpl, msgs, NULL, true, &rendered, err, sizeof(err));
        chat_template_destroy(tpl);
        cJSON_Delete(msgs);
        if (crc != CHAT_TEMPLATE_OK) {
            fprintf(stderr, "engram-run: chat template: %s\n", err);
            tokenizer_destroy(tok);
            return 1;
        }
        prompt_text = rendered;
    }
    if (prompt_text) {
        size_t n = 0;
        int trc = tokenizer_encode(tok, prompt_text, strlen(prompt_text), !chat, &prompt, &n);
        free(rendered);
        if (trc != TOKENIZER_OK || n == 0 || n > INT32_MAX) {
            fprintf(stderr, "engram-run: cannot tokenize --prompt: %s\n",
                    trc ? tokenizer_status_str(trc) : "it encodes to no tokens");
            free(prompt);
            tokenizer_destroy(tok);
            return 1;
        }
        n_prompt = (int)n;
    } else if ((n_prompt = parse_ids(prompt_ids, &prompt)) <= 0) {
        fprintf(stderr, "engram-run: --prompt-ids must be a comma-separated list of token ids\n");
        tokenizer_destroy(tok);
        return 2;
    }
    if (tok && tokenizer_stream_create(tok, true, &ts) != TOKENIZER_OK) {
        fprintf(stderr, "engram-run: out of memory\n");
        free(prompt);
        tokenizer_destroy(tok);
        return 1;
    }

    model *m = NULL;
    forward_ctx *fc = NULL;
    forward_state *st = NULL;
    sampler *smp = NULL;
    float *logits = NULL, *gates = NULL;
    int32_t *out = NULL;
    double t0 = util_now();
    if (synthetic) {
        model_synthetic_params msp = model_synthetic_default_params();
        msp.table_dir = synth_dir;
        msp.store = esp;
        if (model_synthetic_ex(synthetic, synth_seed, &msp, &m, err, sizeof(err)) != MODEL_OK) {
            fprintf(stderr, "engram-run: %s\n", err);
            goto done;
        }
        fprintf(stderr, "engram-run: synthetic %s (seed %llu): %lld backbone parameters, %.2f GB of bf16 weights\n",
                synthetic, (unsigned long long)synth_seed, (long long)model_param_count(m), m->synth_bytes / 1e9);
    } else if (model_load(model_dir, &m, err, sizeof(err)) != MODEL_OK) {
        fprintf(stderr, "engram-run: %s\n", err);
        goto done;
    }
    if (engram_tables && model_engram_use_tables(m, engram_tables, &esp, err, sizeof(err)) != MODEL_OK) {
        fprintf(stderr, "engram-run: %s\n", err);
        goto done;
    }
    const model_config *c = &m->cfg;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] >= model_sampling_vocab(m)) {
            fprintf(stderr, "engram-run: prompt token %d is outside the vocabulary (%d ids)\n",
                    prompt[i], model_sampling_vocab(m));
            goto done;
        }
    long need = n_prompt + max_tokens;
    if (need > c->max_position_embeddings) {
        fprintf(stderr, "engram-run: prompt (%d) + max tokens (%ld) exceed the context of %d\n",
                n_prompt, max_tokens, c->max_position_embeddings);
        goto done;
    }
    logits = malloc((size_t)c->vocab_size * sizeof(float));
    out = malloc((size_t)(max_tokens + 1) * sizeof(int32_t));
    smp = sampler_create(model_sampling_vocab(m), sp);
    const backend_ops *ops = backend_select(device, err, sizeof(err));
    if (!ops) {
        fprintf(stderr, "engram-run: %s\n", err);
        goto done;
    }
    if (esp.hbm_cache && strcmp(ops->name, "cuda"))
        fprintf(stderr, "engram-run: %s\n", "note: --engram-hbm-cache on the CPU backend keeps the hot rows in host memory (the CUDA path, for tests; no gain)");
    if (forward_ctx_create(m, ops, (int)prefill_chunk, 1, &fc, err, sizeof(err)) != FORWARD_OK) {
        fprintf(stderr, "engram-run: %s\n", err);
        goto done;
    }
    if (!logits || !out || !smp || forward_state_create(fc, NULL, (int)need, &st)) {
        fprintf(stderr, "engram-run: out of memory\n");
        goto done;
    }
    int nl = m->engram ? m->engram->n_layers : 0;
    if ((print_gates || print_rows) && !nl) {
        fprintf(stderr, "engram-run: --print-gates/--print-rows: this model has no Engram layers\n");
        goto done;
    }
    if (print_gates && !(gates = malloc((size_t)need * nl * sizeof(float)))) {
        fprintf(stderr, "engram-run: out of memory\n");
        goto done;
    }
    if (warmup) { /* the same prompt and up to 8 decode steps, then back to position 0 */
        int wrc = forward_run(fc, st, prompt, n_prompt, logits, NULL);
        for (long i = 0; wrc == FORWARD_OK && i < 8 && i + 1 < max_tokens; i++)
            wrc = forward_run(fc, st, &prompt[n_prompt - 1], 1, logits, NULL);
        if (wrc != FORWARD_OK) {
            fprintf(stderr, "engram-run: warmup: %s\n", forward_status_str(wrc));
            goto done;
        }
        forward_state_reset(st);
    }
    double t1 = util_now();
    int frc = forward_run(fc, st, prompt, n_prompt, logits, gates);
    if (frc != FORWARD_OK) {
        fprintf(stderr, "engram-run: %s\n", forward_status_str(frc));
        goto done;
    }
    double t2 = util_now();
    if (dump_logits) {
        FILE *f = fopen(dump_logits, "wb");
        if (!f || fwrite(logits, sizeof(float), (size_t)c->vocab_size, f) != (size_t)c->vocab_size ||
            fclose(f) != 0) {
            fprintf(stderr, "engram-run: cannot write %s: %s\n", dump_logits, strerror(errno));
            goto done;
        }
    }
    int n_out = 0;
    while (n_out < max_tokens) {
        int32_t next = sampler_sample(smp, logits, prompt, n_prompt, out, n_out);
        out[n_out++] = next;
        if (ts) { /* stream the text as it comes, whole characters only */
            char *piece = NULL;
            size_t plen = 0;
            if (tokenizer_stream_step(ts, next, &piece, &plen) == TOKENIZER_OK) fwrite(piece, 1, plen, stdout);
            fflush(stdout);
            free(piece);
        }
        bool eos = false;
        for (int e = 0; e < c->n_eos && !ignore_eos; e++) eos |= next == c->eos_token_ids[e];
        if (eos || n_out == max_tokens) break;
        float *g = gates ? gates + (size_t)(n_prompt + n_out - 1) * nl : NULL;
        if ((frc = forward_run(fc, st, &next, 1, logits, g)) != FORWARD_OK) {
            fprintf(stderr, "engram-run: %s\n", forward_status_str(frc));
            goto done;
        }
    }
    double t3 = util_now();
    fprintf(stderr,
            "engram-run: load %.2fs, prefill %d tokens in %.3fs (%.1f tok/s), decode %d tokens in "
            "%.3fs (%.2f tok/s), %.1f MB of weights read per token\n",
            t1 - t0, n_prompt, t2 - t1, n_prompt / (t2 - t1), n_out > 1 ? n_out - 1 : 0, t3 - t2,
            n_out > 1 ? (n_out - 1) / (t3 - t2) : 0.0, model_weight_bytes_per_token(m) / 1e6);
    if (nl)
        fprintf(stderr, "engram-run: Engram (hashing, gather, module) took %.1f%% of forward time\n",
                100.0 * forward_ctx_engram_seconds(fc) / (t3 - t1));
    if (engram_tables) {
        engram_store_stats es;
        model_engram_store_stats(m, &es);
        fprintf(stderr,
                "engram-run: Engram store: %llu lookups, %llu DRAM hits, %llu NVMe rows, %llu NVMe reads "
                "(%.1f KiB), %llu rows handed ahead, %llu rows prefetched, %llu evictions, %.6f s stalled\n",
                (unsigned long long)es.lookups, (unsigned long long)es.dram_hits, (unsigned long long)es.nvme_hits,
                (unsigned long long)es.nvme_reads, es.nvme_bytes / 1024.0, (unsigned long long)es.prefetch_rows, (unsigned long long)es.prefetch_reads,
                (unsigned long long)es.evictions, es.stall_seconds);
    }
    if (ts) {
        char *piece = NULL;
        size_t plen = 0;
        if (tokenizer_stream_flush(ts, &piece, &plen) == TOKENIZER_OK) fwrite(piece, 1, plen, stdout);
        free(piece);
        printf("\n");
    }
    if (print_gates) { /* every token that went through the model: the prompt, then all but the last output */
        int n_fed = n_prompt + n_out - 1;
        printf("{\"layers\": [");
        for (int i = 0; i < nl; i++) printf("%s%d", i ? ", " : "", m->engram->layers[i].layer_id);
        printf("], \"tokens\": [");
        for (int t = 0; t < n_fed; t++) printf("%s%d", t ? ", " : "", t < n_prompt ? prompt[t] : out[t - n_prompt]);
        printf("], \"gates\": [");
        for (int t = 0; t < n_fed; t++) {
            printf("%s[", t ? ", " : "");
            for (int i = 0; i < nl; i++) printf("%s%.9g", i ? ", " : "", gates[(size_t)t * nl + i]);
            printf("]");
        }
        printf("]}\n");
    }
    if (print_rows && print_engram_rows(m, prompt, n_prompt, out, n_out - 1) != 0) goto done;
    if (print_ids) {
        printf("[");
        for (int i = 0; i < n_out; i++) printf("%s%d", i ? ", " : "", out[i]);
        printf("]\n");
    } else if (!ts) {
        printf("generated ids:");
        for (int i = 0; i < n_out; i++) printf(" %d", out[i]);
        printf("\n");
    }
    rc = 0;
done:
    free(prompt);
    free(logits);
    free(gates);
    free(out);
    sampler_destroy(smp);
    tokenizer_stream_destroy(ts);
    tokenizer_destroy(tok);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
    model_destroy(m);
    return rc;
}
