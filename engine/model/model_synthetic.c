/* Synthetic models (see model.h): the exact shapes of released checkpoints
 * with random weights made in memory (bf16; DeepSeek-V4 in its release's FP8 /
 * FP4 / bf16 / f32 mix), so benchmarks can run real model sizes without
 * storing checkpoints. An optional Engram module at layer 1 (the paper's demo
 * layout), or DeepSeek-V4.1-Flash's own two, reads tables made
 * deterministically row by row: as an engram/store table file written once
 * (tables may be larger than RAM), or in memory (the demo's as a store,
 * V4.1's as the checkpoint tensors the loader would map). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "engine/model/model_internal.h"
#include "base/numeric.h"
#include "base/util.h"

/* Shapes, copied from each release's config.json on the Hugging Face Hub:
 *   Qwen/Qwen3-0.6B   hidden 1024, intermediate 3072, 28 layers, 16 heads, 8 kv heads,
 *                     head_dim 128, vocab 151936, rope_theta 1e6, no rope_scaling,
 *                     max_position_embeddings 40960, rms_norm_eps 1e-6, tied, q/k norm
 *   Qwen/Qwen3-1.7B   hidden 2048, intermediate 6144, 28 layers, 16/8 heads, head_dim 128, tied
 *   Qwen/Qwen3-4B     hidden 2560, intermediate 9728, 36 layers, 32/8 heads, head_dim 128, tied
 *   Qwen/Qwen3-8B     hidden 4096, intermediate 12288, 36 layers, 32/8 heads, head_dim 128,
 *                     untied (the other Qwen3 keys as for 0.6B; bos 151643, eos 151645)
 *   meta-llama/Llama-3.2-1B  hidden 2048, intermediate 8192, 16 layers, 32/8 heads,
 *                     head_dim 64, vocab 128256, rope_theta 500000, rope_scaling llama3
 *                     (factor 32, low_freq_factor 1, high_freq_factor 4,
 *                     original_max_position_embeddings 8192), max_position_embeddings
 *                     131072, rms_norm_eps 1e-5, tied, bos 128000, eos 128001
 *   meta-llama/Llama-3.1-8B  hidden 4096, intermediate 14336, 32 layers, 32/8 heads,
 *                     head_dim 128, rope_scaling llama3 factor 8, untied (else as 3.2-1B)
 *   Qwen/Qwen3-30B-A3B  hidden 2048, intermediate 6144 (unused: every layer is sparse),
 *                     48 layers, 32/4 heads, head_dim 128, 128 experts of moe_intermediate_size
 *                     768, 8 per token, norm_topk_prob, decoder_sparse_step 1, no
 *                     mlp_only_layers, untied (the other Qwen3 keys as for 0.6B)
 *   deepseek-ai/DeepSeek-V4-Flash  DEEPSEEK_V4.md 1.1 defaults and the release's compress_ratios
 *                     (dsv4_flash_config below, read by the loader's own parser)
 *   DeepSeek-V4.1-Flash  no public config.json: what DEEPSEEK_V4.md 5.8 and ENGRAM.md 7 state,
 *                     the rest assumed from V4-Flash (dsv41_flash_config below)
 * None has attention or MLP biases. Published sizes (model cards): Qwen3 0.6B / 1.7B /
 * 4.0B / 8.2B total and 0.44B / 1.4B / 3.6B / 6.95B without embeddings; Llama-3.2-1B
 * 1.23B, Llama-3.1-8B 8.03B, Qwen3-30B-A3B 30.5B total, 29.9B without embeddings,
 * DeepSeek-V4-Flash 284B total, 13B activated (tests/unit/test_model_synthetic.c checks them). */
typedef struct {
    const char *name, *hub;
    model_arch arch;
    int vocab, hidden, ff, layers, heads, kv_heads, head_dim, max_pos;
    double eps, theta;
    bool tie;
    double llama3_factor; /* 0: no rope scaling; else llama3 with low 1, high 4, original 8192 */
    int bos, eos;
    int experts, topk, moe_inter; /* mixture of experts in every layer; 0: dense */
    /* DeepSeek shapes: their config.json text through the loader's parser (only name, arch and
     * layers above are read) */
    int (*config)(model_config *c, char *err, size_t errlen);
} synth_shape;

static int dsv4_flash_config(model_config *c, char *err, size_t errlen);
static int dsv41_flash_config(model_config *c, char *err, size_t errlen);

static const synth_shape shapes[] = {
    {"qwen3-0.6b", "Qwen/Qwen3-0.6B", ARCH_QWEN3, 151936, 1024, 3072, 28, 16, 8, 128, 40960, 1e-6, 1e6, true, 0, 151643, 151645, 0, 0, 0, NULL},
    {"qwen3-1.7b", "Qwen/Qwen3-1.7B", ARCH_QWEN3, 151936, 2048, 6144, 28, 16, 8, 128, 40960, 1e-6, 1e6, true, 0, 151643, 151645, 0, 0, 0, NULL},
    {"qwen3-4b", "Qwen/Qwen3-4B", ARCH_QWEN3, 151936, 2560, 9728, 36, 32, 8, 128, 40960, 1e-6, 1e6, true, 0, 151643, 151645, 0, 0, 0, NULL},
    {"qwen3-8b", "Qwen/Qwen3-8B", ARCH_QWEN3, 151936, 4096, 12288, 36, 32, 8, 128, 40960, 1e-6, 1e6, false, 0, 151643, 151645, 0, 0, 0, NULL},
    {"llama3-1b", "meta-llama/Llama-3.2-1B", ARCH_LLAMA, 128256, 2048, 8192, 16, 32, 8, 64, 131072, 1e-5, 500000.0, true, 32.0, 128000, 128001, 0, 0, 0, NULL},
    {"llama3-8b", "meta-llama/Llama-3.1-8B", ARCH_LLAMA, 128256, 4096, 14336, 32, 32, 8, 128, 131072, 1e-5, 500000.0, false, 8.0, 128000, 128001, 0, 0, 0, NULL},
    {"qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", ARCH_QWEN3_MOE, 151936, 2048, 6144, 48, 32, 4, 128, 40960, 1e-6, 1e6, false, 0, 151643, 151645, 128, 8, 768, NULL},
    {.name = "deepseek-v4-flash", .hub = "deepseek-ai/DeepSeek-V4-Flash", .arch = ARCH_DEEPSEEK_V4, .layers = 43,
     .config = dsv4_flash_config},
    {.name = "deepseek-v4.1-flash", .hub = "(no public config)", .arch = ARCH_DEEPSEEK_V4, .layers = 40,
     .config = dsv41_flash_config},
};
#define N_SHAPES (sizeof(shapes) / sizeof(shapes[0]))

/* The Engram layout of DeepSeek's demo (../shared/ENGRAM.md section 2) with one
 * module at the second block, as in the paper's throughput test (Table 4). */
#define SYN_ENGRAM_LAYER 1
#define SYN_MAX_NGRAM 3     /* orders 2 and 3 */
#define SYN_HEADS 8         /* per order: 16 heads */
#define SYN_EMBED 512       /* per order: head dim 512 / 8 = 64 */
#define SYN_KERNEL 4
#define SYN_PAD_ID 2
#define SYN_MIN_ROWS 1000
#define SYN_MAX_ROWS 2000000000LL /* table rows must stay below 2^31 (weight.rows is an int) */

#define SYN_OPTIONS "+layers:N, +experts:N, +engram:ROWS, +engram-rows:SCALE"
#define SYN_V41_MIN_SCALE 1e-5 /* engram_vocab_size 160: 24 primes from 163, some 6,000 rows a layer */

#define SYN_STD 0.02f /* matrices: uniform with this standard deviation */
#define SYN_TABLE_VERSION 1 /* bump when the table generator changes */

model_synthetic_params model_synthetic_default_params(void) {
    model_synthetic_params p = {0};
    p.store = engram_store_default_params();
    return p;
}

/* ---- spec ---- */

/* "1000", "250M", "1.5B" -> rows; -1 on junk. */
static long long parse_count(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) return -1;
    double mult = 1;
    if (*end == 'k' || *end == 'K') mult = 1e3, end++;
    else if (*end == 'm' || *end == 'M') mult = 1e6, end++;
    else if (*end == 'b' || *end == 'B' || *end == 'g' || *end == 'G') mult = 1e9, end++;
    if (*end) return -1;
    v *= mult;
    if (v != floor(v) || v > 9e15) return -1;
    return (long long)v;
}

static int spec_fail(char *err, size_t errlen, const char *spec, const char *msg) {
    snprintf(err, errlen, "synthetic spec \"%s\": %s", spec, msg);
    return MODEL_ERR_CONFIG;
}

/* Rows of the Engram table c->engram implies with an identity lookup, or -1. */
static int64_t synth_table_rows(const model_config *c) {
    const engram_config *ec = &c->engram;
    ngram_hash_config hc = model_engram_hash_config(ec, c->vocab_size, ec->pad_id); /* identity lookup */
    ngram_hash *h = NULL;
    if (ngram_hash_create(&hc, &h, NULL, 0) != NGRAM_HASH_OK) return -1;
    int64_t rows = ngram_hash_table_rows(h, 0);
    ngram_hash_destroy(h);
    return rows;
}

/* DeepSeek-V4.1's Engram cut to the spec: the Engram layers below +layers:N (the others go; the
 * kept ones' primes are unchanged, as the search runs in engram_layer_ids order), and with
 * +engram-rows:SCALE the prime search started from SCALE x engram_vocab_size, each layer's rows
 * then derived as the V4.1 config's are (engram_num_embeddings: the sum of its heads' primes).
 * At SCALE 1 the stated rows stay, and the model's build checks them against the derivation. */
static int v41_fit(model_config *c, double scale) {
    engram_v41_config *v = &c->engram_v41;
    int n = 0;
    for (int i = 0; i < v->n_layers; i++)
        if (v->layer_ids[i] < c->n_layers) v->layer_ids[n] = v->layer_ids[i], v->num_embeddings[n++] = v->num_embeddings[i];
    v->n_layers = n;
    if (!n || scale == 1) return MODEL_OK;
    v->vocab_size = llround(scale * (double)v->vocab_size);
    for (int i = 0; i < v->max_ngram_size - 1; i++) v->vocab_starts[i] = v->vocab_size;
    ngram_hash_config hc = engram_v41_hash_config(v, v->compressed_vocab_size, v->pad_token_id); /* identity lookup */
    ngram_hash *h = NULL;
    if (ngram_hash_create(&hc, &h, NULL, 0) != NGRAM_HASH_OK) return MODEL_ERR_CONFIG;
    for (int li = 0; li < n; li++) v->num_embeddings[li] = ngram_hash_table_rows(h, li);
    ngram_hash_destroy(h);
    return MODEL_OK;
}

/* A DeepSeek-V4 config.json in the release's own keys, read by the loader's parser, so a
 * synthetic model is configured exactly as a checkpoint of that config would load: DEEPSEEK_V4.md
 * 1.1's V4-Flash values (stated rather than left to defaults; 1.5 quantization_config), layers
 * 0-1 sliding, then CSA m 4 on even and HCA m 128 on odd layers, with the given hidden size,
 * layers, q_lora_rank, routed experts, rms_norm_eps and further keys (`extra`, text that ends in
 * ", " or is empty). */
static int dsv4_json_config(model_config *c, const char *label, int hidden, int layers, int q_lora_rank, int experts,
                            const char *eps, const char *extra, char *err, size_t errlen) {
    char json[8192];
    size_t n = (size_t)snprintf(json, sizeof(json),
        "{%s\"architectures\": [\"DeepseekV4ForCausalLM\"], \"model_type\": \"deepseek_v4\", \"vocab_size\": 129280, "
        "\"hidden_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": 64, \"num_key_value_heads\": 1, "
        "\"head_dim\": 512, \"qk_rope_head_dim\": 64, \"q_lora_rank\": %d, \"o_groups\": 8, \"o_lora_rank\": 1024, "
        "\"sliding_window\": 128, \"index_n_heads\": 64, \"index_head_dim\": 128, \"index_topk\": 512, "
        "\"hc_mult\": 4, \"hc_sinkhorn_iters\": 20, \"hc_eps\": 1e-6, \"rms_norm_eps\": %s, "
        "\"n_routed_experts\": %d, \"n_shared_experts\": 1, \"num_experts_per_tok\": 6, "
        "\"moe_intermediate_size\": 2048, \"num_hash_layers\": 3, \"scoring_func\": \"sqrtsoftplus\", "
        "\"routed_scaling_factor\": 1.5, \"swiglu_limit\": 10.0, \"hidden_act\": \"silu\", \"rope_theta\": 10000, "
        "\"compress_rope_theta\": 160000, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 16, "
        "\"original_max_position_embeddings\": 65536, \"beta_fast\": 32, \"beta_slow\": 1}, "
        "\"max_position_embeddings\": 1048576, \"tie_word_embeddings\": false, \"bos_token_id\": 0, "
        "\"eos_token_id\": 1, \"quantization_config\": {\"quant_method\": \"fp8\", \"activation_scheme\": "
        "\"dynamic\", \"weight_block_size\": [128, 128], \"scale_fmt\": \"ue8m0\", \"expert_dtype\": \"fp4\"}, "
        "\"compress_ratios\": [", extra, hidden, layers, q_lora_rank, eps, experts);
    for (int i = 0; i < layers && n < sizeof(json); i++)
        n += (size_t)snprintf(json + n, sizeof(json) - n, "%s%d", i ? ", " : "", i < 2 ? 0 : i % 2 ? 128 : 4);
    if (n < sizeof(json)) n += (size_t)snprintf(json + n, sizeof(json) - n, "]}");
    if (n >= sizeof(json)) { /* a programmer error: the buffer is sized for this text */
        snprintf(err, errlen, "%s: config text too long", label);
        return MODEL_ERR_CONFIG;
    }
    return model_config_parse(json, n, label, c, err, errlen);
}

static int dsv4_flash_config(model_config *c, char *err, size_t errlen) {
    return dsv4_json_config(c, "synthetic deepseek-v4-flash config", 4096, 43, 1024, 256, "1e-6", "", err, errlen);
}

/* DeepSeek-V4.1-Flash, whose config.json is not public. Stated (DEEPSEEK_V4.md 5.8, from a
 * third-party repackaged config, and SGLang's kernels specialised for hidden 5120 and hc_fn
 * [24, 20480], i.e. hc_mult 4): hidden 5120, 40 layers, q_lora_rank 1280, 384 routed experts,
 * rms_norm_eps 1e-20; V4.1's backbone keys (5.8: hc_pre_from_prev_sublayer true, so no hc_head,
 * and q_head_norm false); the Engram (ENGRAM.md 7, DEEPSEEK_V4.md 5.1): layers 1 and 14 with
 * 384,006,168 and 384,016,682 rows, orders 2..4 of 8 heads, prime search from 16,000,000, rows of
 * 256 FP8 e4m3 values + 8 ue8m0 bytes, pad id 2, fused wkv, one gate per stream, no short conv.
 * Assumed from V4-Flash (dsv4_json_config): the vocabulary, head counts and sizes, o_groups and
 * o_lora_rank, window, indexer, hc iterations and eps, 6 experts of 2048 per token + 1 shared,
 * 3 hash layers, router, ropes, the FP8 / FP4-expert formats, and compress_ratios (4 and 128 as
 * V4-Flash; V4.1's ratios 1 and 2 appear in no stated config, so there are no kv or index source
 * layers and no candidate top-k). engram_compressed_vocab_size is the vocabulary, not the release's
 * 99,092: a synthetic model has no tokenizer, its compressed lookup is the identity. The keys sit
 * at the top level, as SGLang's normalize_deepseek_v41_config flattens them (the loader refuses a
 * nested text_config). */
static int dsv41_flash_config(model_config *c, char *err, size_t errlen) {
    return dsv4_json_config(c, "synthetic deepseek-v4.1-flash config", 5120, 40, 1280, 384, "1e-20",
        "\"hc_pre_from_prev_sublayer\": true, \"q_head_norm\": false, \"engram_layer_ids\": [1, 14], "
        "\"engram_num_embeddings\": [384006168, 384016682], \"engram_max_ngram_size\": 4, "
        "\"engram_vocab_size\": 16000000, \"engram_n_heads\": 8, \"engram_head_dim\": 256, "
        "\"engram_pad_token_id\": 2, \"engram_compressed_vocab_size\": 129280, ", err, errlen);
}

int model_synthetic_config(const char *spec, model_config *c, char *err, size_t errlen) {
    memset(c, 0, sizeof(*c));
    if (!spec || !spec[0]) return spec_fail(err, errlen, "", "empty");
    char buf[256];
    if (strlen(spec) >= sizeof(buf)) return spec_fail(err, errlen, "...", "too long");
    strcpy(buf, spec);
    char *save = NULL, *name = strtok_r(buf, "+", &save);
    const synth_shape *sh = NULL;
    for (size_t i = 0; name && i < N_SHAPES; i++)
        if (!strcasecmp(name, shapes[i].name)) sh = &shapes[i];
    if (!sh) {
        char msg[256] = "unknown model (known:";
        for (size_t i = 0; i < N_SHAPES; i++)
            snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg), "%s %s", i ? "," : "", shapes[i].name);
        snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg), ")");
        return spec_fail(err, errlen, spec, msg);
    }
    if (sh->config) {
        if (sh->config(c, err, errlen)) return MODEL_ERR_CONFIG;
        goto options;
    }
    c->arch = sh->arch;
    c->vocab_size = sh->vocab;
    c->hidden_size = sh->hidden;
    c->intermediate_size = sh->ff;
    c->n_layers = sh->layers;
    c->n_heads = sh->heads;
    c->n_kv_heads = sh->kv_heads;
    c->head_dim = sh->head_dim;
    c->max_position_embeddings = sh->max_pos;
    c->rms_norm_eps = (float)sh->eps;
    c->rope_theta = sh->theta;
    c->rope = ROPE_DEFAULT;
    if (sh->llama3_factor > 0) {
        c->rope = ROPE_LLAMA3;
        c->rope_factor = sh->llama3_factor;
        c->rope_low_freq_factor = 1.0;
        c->rope_high_freq_factor = 4.0;
        c->rope_original_max_pos = 8192;
    }
    c->qk_norm = sh->arch == ARCH_QWEN3 || sh->arch == ARCH_QWEN3_MOE;
    c->tie_word_embeddings = sh->tie;
    if (sh->experts) {
        c->moe.n_experts = sh->experts;
        c->moe.top_k = sh->topk;
        c->moe.inter = sh->moe_inter;
        c->moe.norm_topk_prob = true;
        for (int i = 0; i < sh->layers; i++) c->moe.layer_moe[i] = true;
    }
    c->bos_token_id = sh->bos;
    c->eos_token_ids[0] = sh->eos;
    c->n_eos = 1;

options:;
    long long engram_rows = 0;
    double v41_scale = 1;
    for (char *opt; (opt = strtok_r(NULL, "+", &save));) {
        char *colon = strchr(opt, ':');
        if (!colon) return spec_fail(err, errlen, spec, "an option must be " SYN_OPTIONS);
        *colon = 0;
        const char *val = colon + 1;
        char msg[160];
        if (!strcmp(opt, "engram")) {
            if (c->engram_v41.n_layers)
                return spec_fail(err, errlen, spec, "this shape has DeepSeek-V4.1's own Engram layers: scale their "
                                                    "tables with +engram-rows:SCALE");
            engram_rows = parse_count(val);
            if (engram_rows < SYN_MIN_ROWS || engram_rows > SYN_MAX_ROWS)
                return spec_fail(err, errlen, spec,
                                 "+engram:ROWS needs a row count from 1000 to 2e9 (suffix k, M or B allowed)");
        } else if (!strcmp(opt, "engram-rows")) {
            if (!c->engram_v41.n_layers)
                return spec_fail(err, errlen, spec, "+engram-rows:SCALE is for shapes with DeepSeek-V4.1's Engram "
                                                    "(deepseek-v4.1-flash); others take +engram:ROWS");
            char *end;
            v41_scale = strtod(val, &end);
            if (end == val || *end || !(v41_scale >= SYN_V41_MIN_SCALE && v41_scale <= 1))
                return spec_fail(err, errlen, spec, "+engram-rows:SCALE needs a fraction of the release's rows from "
                                                    "1e-5 to 1 (e.g. 0.01)");
        } else if (!strcmp(opt, "experts")) {
            long long n = parse_count(val);
            if (!c->moe.n_experts)
                return spec_fail(err, errlen, spec, "+experts:N needs a mixture-of-experts shape");
            if (n < c->moe.top_k || n > c->moe.n_experts) {
                snprintf(msg, sizeof(msg), "+experts:N needs N from %d (experts per token) to %d", c->moe.top_k,
                         c->moe.n_experts);
                return spec_fail(err, errlen, spec, msg);
            }
            c->moe.n_experts = (int)n;
        } else if (!strcmp(opt, "layers")) {
            long long n = parse_count(val);
            if (n < 1 || n > sh->layers) {
                snprintf(msg, sizeof(msg), "+layers:N needs N from 1 to %d", sh->layers);
                return spec_fail(err, errlen, spec, msg);
            }
            c->n_layers = (int)n;
        } else {
            return spec_fail(err, errlen, spec, "unknown option (known: " SYN_OPTIONS ")");
        }
    }
    if (engram_rows && c->arch == ARCH_DEEPSEEK_V4)
        return spec_fail(err, errlen, spec, "+engram is not supported on a DeepSeek-V4 backbone yet");
    if (c->engram_v41.n_layers && v41_fit(c, v41_scale) != MODEL_OK)
        return spec_fail(err, errlen, spec, "+engram-rows: the hash tables cannot be built");
    if (engram_rows) {
        if (c->n_layers <= SYN_ENGRAM_LAYER)
            return spec_fail(err, errlen, spec, "+engram needs at least 2 layers (the module sits at layer 1)");
        engram_config *e = &c->engram;
        e->present = true;
        e->max_ngram_size = SYN_MAX_NGRAM;
        e->n_head_per_ngram = SYN_HEADS;
        e->n_embed_per_ngram = SYN_EMBED;
        e->layer_ids[0] = SYN_ENGRAM_LAYER;
        e->n_layers = 1;
        e->pad_id = SYN_PAD_ID;
        e->seed = 0;
        e->kernel_size = SYN_KERNEL;
        e->hc_mult = 1;
        e->compressed_vocab_size = c->vocab_size; /* identity lookup */
        /* Both orders start their prime search at the same value, as in the
         * demo, so the 16 heads get 16 consecutive primes above it: a start
         * of rows/16, nudged down by the primes' spread, gives about `rows`. */
        int n_total_heads = (SYN_MAX_NGRAM - 1) * SYN_HEADS;
        int64_t start = engram_rows / n_total_heads;
        for (int iter = 0; iter < 4; iter++) {
            for (int i = 0; i < SYN_MAX_NGRAM - 1; i++) e->vocab_size[i] = start;
            int64_t got = synth_table_rows(c);
            if (got < 0) return spec_fail(err, errlen, spec, "+engram: the hash tables cannot be built");
            int64_t step = (got - engram_rows) / n_total_heads;
            if (step == 0 || start - step < 2) break;
            start -= step;
        }
    }
    return MODEL_OK;
}

/* ---- random fill ---- */

static inline uint64_t mix64(uint64_t z) { /* splitmix64's finalizer */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A generator's start for stream `idx` of `seed`: independent of threads. */
static inline uint64_t stream_start(uint64_t seed, uint64_t salt, uint64_t idx) {
    return mix64(mix64(seed ^ salt) + idx * 0x9e3779b97f4a7c15ull);
}

/* dst[0..n) = bf16 uniform in [-a, a), a = sqrt(3) * SYN_STD, from splitmix64 at state s. */
static void fill_bf16(uint16_t *dst, size_t n, uint64_t s) {
    const float scale = 1.7320508f * SYN_STD / 32768.0f;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint64_t r = mix64(s += 0x9e3779b97f4a7c15ull);
        for (int k = 0; k < 4; k++) dst[i + k] = f32_to_bf16((float)(int16_t)(uint16_t)(r >> (16 * k)) * scale);
    }
    uint64_t r = mix64(s += 0x9e3779b97f4a7c15ull);
    for (int k = 0; i < n; i++, k++) dst[i] = f32_to_bf16((float)(int16_t)(uint16_t)(r >> (16 * k)) * scale);
}

/* ---- layout: every matrix in one anonymous mapping ---- */

typedef struct {
    char *base;   /* NULL while counting */
    size_t used;  /* bytes placed so far */
} arena;

/* `bytes` of the mapping (NULL while counting), page-aligned: every matrix
 * (and every scale grid) starts on its own page. */
static char *take(arena *a, size_t bytes) {
    char *p = a->base ? a->base + a->used : NULL;
    a->used += (bytes + 4095) & ~(size_t)4095;
    return p;
}

static void place(arena *a, weight *w, int rows, int cols) {
    *w = (weight){.dt = DTYPE_BF16, .rows = rows, .cols = cols};
    w->data = take(a, (size_t)rows * (size_t)cols * 2);
}

static void layout(model *m, arena *a) {
    const model_config *c = &m->cfg;
    int d = c->hidden_size, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim, ff = c->intermediate_size;
    place(a, &m->embed, c->vocab_size, d);
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    else
        place(a, &m->lm_head, c->vocab_size, d);
    for (int i = 0; i < c->n_layers; i++) {
        layer_weights *L = &m->layers[i];
        place(a, &L->wq, q, d);
        place(a, &L->wk, kv, d);
        place(a, &L->wv, kv, d);
        place(a, &L->wo, d, q);
        if (c->moe.layer_moe[i]) {
            moe_weights *w = &m->moe[i];
            place(a, &w->router, w->n_experts, d);
            for (int e = 0; e < w->n_experts; e++) {
                place(a, &w->gate[e], w->inter, d);
                place(a, &w->up[e], w->inter, d);
                place(a, &w->down[e], d, w->inter);
            }
            L->moe = w;
            continue;
        }
        place(a, &L->w_gate, ff, d);
        place(a, &L->w_up, ff, d);
        place(a, &L->w_down, d, ff);
    }
    if (m->engram) {
        engram_weights *w = &m->engram->layers[0];
        place(a, &w->w_value, d, m->engram->embed_dim);
        place(a, &w->w_key[0], d, m->engram->embed_dim);
    }
}

/* Fills the mapping in 1 MiB pieces, each from its own stream. */
static void fill_arena(const arena *a, uint64_t seed) {
    const size_t piece = 1u << 20;
    long long n = (long long)((a->used + piece - 1) / piece);
#pragma omp parallel for schedule(dynamic, 16)
    for (long long i = 0; i < n; i++) {
        size_t off = (size_t)i * piece, len = a->used - off < piece ? a->used - off : piece;
        fill_bf16((uint16_t *)(a->base + off), len / 2, stream_start(seed, 0x5717u, (uint64_t)i));
    }
}

/* The experts' tables of weight views (filled by layout). */
static int make_moe(model *m) {
    const moe_config *mc = &m->cfg.moe;
    if (!(m->moe = calloc((size_t)m->cfg.n_layers, sizeof(moe_weights)))) return MODEL_ERR_NOMEM;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        moe_weights *w = &m->moe[i];
        *w = (moe_weights){.scoring = MOE_SOFTMAX, .n_experts = mc->n_experts, .top_k = mc->top_k,
                           .inter = mc->inter, .norm_topk = mc->norm_topk_prob};
        if (!mc->layer_moe[i]) continue;
        if (!(w->gate = calloc((size_t)mc->n_experts * 3, sizeof(weight)))) return MODEL_ERR_NOMEM;
        w->up = w->gate + mc->n_experts;
        w->down = w->up + mc->n_experts;
    }
    return MODEL_OK;
}

/* ---- DeepSeek-V4: the release's formats ---- */

/* Quantized matrices hold random codes under one ue8m0 scale per block, the
 * power of two DeepSeek's quantizer gives a block whose largest value is
 * a = sqrt(3) * SYN_STD (the bf16 matrices' bound): 2^ceil(log2(a / qmax)).
 * FP8 (qmax 448): 2^-13; the codes are the bf16 fill's uniform values over
 * 2^-13 (|x| <= 284) rounded to e4m3, so values stay uniform with standard
 * deviation 0.02 at e4m3's 3-bit precision and no code is NaN (0x7f, 0xff
 * need |x| > 464). FP4 (qmax 6): 2^-7; every e2m1 code is a number, so the
 * nibbles are uniform random bits: values {0, .5, 1, 1.5, 2, 3, 4, 6} x 2^-7
 * with random signs, standard deviation 2.93 x 2^-7 = 0.023. */
#define SYN_FP8_SCALE_EXP (-13)
#define SYN_FP4_SCALE_EXP (-7)

typedef enum { FILL_BF16, FILL_F32, FILL_FP8, FILL_BITS, FILL_BYTE } fill_kind;

typedef struct {
    size_t off, bytes; /* in the mapping */
    fill_kind kind;
    uint8_t byte;      /* FILL_BYTE: every byte (a scale grid) */
} region;

typedef struct {
    model *m;
    arena a;
    uint64_t seed;
    region *regions; /* (n_regions) recorded while placing */
    int n_regions, cap_regions;
    int n_vectors;   /* f32 vectors made so far: each its own stream */
    int rc;
} dsv4_synth;

static void add_region(dsv4_synth *s, const void *p, size_t bytes, fill_kind kind, uint8_t byte) {
    if (!s->a.base || s->rc) return;
    if (s->n_regions == s->cap_regions) {
        int cap = s->cap_regions ? 2 * s->cap_regions : 1024;
        region *r = realloc(s->regions, (size_t)cap * sizeof(region));
        if (!r) {
            s->rc = MODEL_ERR_NOMEM;
            return;
        }
        s->regions = r, s->cap_regions = cap;
    }
    s->regions[s->n_regions++] = (region){(size_t)((const char *)p - s->a.base), bytes, kind, byte};
}

/* A quantized matrix: codes, then its scale grid of one exponent byte (F8_E8M0). */
static void place_quant(dsv4_synth *s, const dsv4_tensor *t) {
    bool fp8 = t->how == DSV4_FP8;
    int br = fp8 ? 128 : 1, bc = fp8 ? 128 : 32; /* weight_block_size; FP4: per 32 of a row */
    int gr = (t->rows + br - 1) / br, gc = (t->cols + bc - 1) / bc;
    size_t n = (size_t)t->rows * (size_t)t->cols, code_bytes = fp8 ? n : n / 2, scale_bytes = (size_t)gr * gc;
    weight *w = t->w;
    *w = (weight){.dt = fp8 ? DTYPE_F8_E4M3 : DTYPE_I8, .rows = t->rows, .cols = t->cols,
                  .fmt = fp8 ? WEIGHT_FP8 : WEIGHT_FP4, .scale_dt = DTYPE_F8_E8M0, .scale_rows = gr,
                  .scale_cols = gc, .block_rows = br, .block_cols = bc};
    w->data = take(&s->a, code_bytes);
    w->scale = take(&s->a, scale_bytes);
    add_region(s, w->data, code_bytes, fp8 ? FILL_FP8 : FILL_BITS, 0);
    add_region(s, w->scale, scale_bytes, FILL_BYTE, (uint8_t)(127 + (fp8 ? SYN_FP8_SCALE_EXP : SYN_FP4_SCALE_EXP)));
}

/* dst[0..n) = f32 uniform in [-a, a), a = sqrt(3) * SYN_STD. */
static void fill_f32(float *dst, size_t n, uint64_t s) {
    const float scale = 1.7320508f * SYN_STD / 2147483648.0f;
    for (size_t i = 0; i < n; i += 2) {
        uint64_t r = mix64(s += 0x9e3779b97f4a7c15ull);
        dst[i] = (float)(int32_t)(uint32_t)r * scale;
        if (i + 1 < n) dst[i + 1] = (float)(int32_t)(uint32_t)(r >> 32) * scale;
    }
}

/* tid2eid: top_k distinct random experts for every token id, each token its own stream. */
static int32_t *make_tid2eid(dsv4_synth *s, int rows, int k) {
    int E = s->m->cfg.moe.n_experts;
    int32_t *ids = (int32_t *)model__own(s->m, (size_t)rows * k); /* an f32 buffer holds int32 as well */
    if (!ids) return NULL;
    for (int t = 0; t < rows; t++) {
        uint64_t st = stream_start(s->seed, 0x71d2e1du, (uint64_t)t);
        int32_t *row = ids + (size_t)t * k;
        for (int j = 0; j < k;) {
            row[j] = (int32_t)(mix64(st += 0x9e3779b97f4a7c15ull) % (uint64_t)E);
            bool seen = false;
            for (int i = 0; i < j; i++) seen |= row[i] == row[j];
            j += !seen;
        }
    }
    return ids;
}

/* The walk's visitor, twice: sizes (no mapping yet), then slots, fill regions, vectors. */
static void dsv4_place(void *ctx, const dsv4_tensor *t) {
    dsv4_synth *s = ctx;
    if (t->kind == DSV4_MATRIX) {
        if (t->how == DSV4_FP8 || t->how == DSV4_FP4) return place_quant(s, t);
        bool f32 = t->how == DSV4_F32;
        size_t bytes = (size_t)t->rows * (size_t)t->cols * (f32 ? 4 : 2);
        *t->w = (weight){.dt = f32 ? DTYPE_F32 : DTYPE_BF16, .rows = t->rows, .cols = t->cols};
        t->w->data = take(&s->a, bytes);
        add_region(s, t->w->data, bytes, f32 ? FILL_F32 : FILL_BF16, 0);
        return;
    }
    if (!s->a.base || s->rc) return; /* vectors and tables live outside the mapping */
    if (t->kind == DSV4_IDS) {
        if (!(*t->ids = make_tid2eid(s, t->rows, t->cols))) s->rc = MODEL_ERR_NOMEM;
        *t->tid_rows = t->rows;
        return;
    }
    size_t n = (size_t)t->rows * (size_t)t->cols;
    float *v = model__own(s->m, n);
    if (!v) {
        s->rc = MODEL_ERR_NOMEM;
        return;
    }
    if (isnan(t->init)) fill_f32(v, n, stream_start(s->seed, 0xf32u, (uint64_t)s->n_vectors++));
    else for (size_t i = 0; i < n; i++) v[i] = t->init;
    *t->v = v;
}

/* One piece (up to 1 MiB) of a region, from the stream of its first page. */
static void fill_piece(const char *base, const region *r, size_t off, size_t len, uint64_t seed,
                       const uint8_t *e4m3) {
    char *p = (char *)base + r->off + off;
    uint64_t st = stream_start(seed, 0xd5f4u + (uint64_t)r->kind, (r->off + off) / 4096);
    if (r->kind == FILL_BF16) return fill_bf16((uint16_t *)p, len / 2, st);
    if (r->kind == FILL_F32) return fill_f32((float *)p, len / 4, st);
    if (r->kind == FILL_BYTE) return (void)memset(p, r->byte, len);
    if (r->kind == FILL_FP8) { /* the bf16 fill's 16-bit uniform values, through the rounding table */
        for (size_t i = 0; i < len; i += 4) {
            uint64_t x = mix64(st += 0x9e3779b97f4a7c15ull);
            for (size_t k = 0; k < 4 && i + k < len; k++) p[i + k] = (char)e4m3[(x >> (16 * k)) & 0xffff];
        }
        return;
    }
    size_t i = 0; /* FILL_BITS: FP4 nibbles, all numbers */
    for (; i + 8 <= len; i += 8) {
        uint64_t x = mix64(st += 0x9e3779b97f4a7c15ull);
        memcpy(p + i, &x, 8);
    }
    uint64_t x = mix64(st += 0x9e3779b97f4a7c15ull);
    memcpy(p + i, &x, len - i);
}

/* The e4m3 code of each of fill_bf16's 16-bit uniform values over the FP8 scale 2^-13 (65536
 * bytes, the caller frees), or NULL. */
static uint8_t *make_e4m3_table(void) {
    uint8_t *e4m3 = malloc(65536);
    const float k = 1.7320508f * SYN_STD / 32768.0f * 0x1p13f;
    for (int u = 0; e4m3 && u < 65536; u++) e4m3[u] = f32_to_fp8_e4m3((float)(int16_t)(uint16_t)u * k);
    return e4m3;
}

/* Fills every region in 1 MiB pieces, all threads; each piece's stream comes
 * from its page, so the bits do not depend on the thread count. */
static int fill_regions(const dsv4_synth *s, const uint8_t *e4m3) {
    const size_t piece = 1u << 20;
    size_t n = 0;
    for (int i = 0; i < s->n_regions; i++) n += (s->regions[i].bytes + piece - 1) / piece;
    struct { int r; size_t off; } *pieces = malloc(n * sizeof(*pieces));
    if (!pieces) return MODEL_ERR_NOMEM;
    n = 0;
    for (int i = 0; i < s->n_regions; i++)
        for (size_t off = 0; off < s->regions[i].bytes; off += piece) pieces[n].r = i, pieces[n++].off = off;
#pragma omp parallel for schedule(dynamic, 16)
    for (long long i = 0; i < (long long)n; i++) {
        const region *r = &s->regions[pieces[i].r];
        size_t len = r->bytes - pieces[i].off < piece ? r->bytes - pieces[i].off : piece;
        fill_piece(s->a.base, r, pieces[i].off, len, s->seed, e4m3);
    }
    free(pieces);
    return MODEL_OK;
}

/* ---- DeepSeek-V4.1's Engram (DEEPSEEK_V4.md 5.3, 5.6, 5.9) ---- */

/* Row `row` of a V4.1 table of seed `seed` (one per layer): cols e4m3 codes to values, then
 * cols/32 ue8m0 bytes to scales. The codes are the FP8 matrices' (fill_bf16's uniform values over
 * 2^-13, through the e4m3 table); each block of 32 takes the scale 2^-14, 2^-13 or 2^-12 at random
 * (values of standard deviation 0.01 to 0.04), so that a block read with another block's scale
 * would show. Its own stream: any thread makes any row, into the tensors or a table file (packed:
 * scales = values + cols), with the same bits. */
static void v41_row(uint64_t seed, uint32_t cols, uint64_t row, const uint8_t *e4m3, uint8_t *values,
                    uint8_t *scales) {
    uint64_t st = stream_start(seed, 0xf8e4u, row), x = 0;
    for (uint32_t i = 0; i < cols; i += 4) {
        x = mix64(st += 0x9e3779b97f4a7c15ull);
        for (int k = 0; k < 4; k++) values[i + k] = e4m3[(x >> (16 * k)) & 0xffff];
    }
    for (uint32_t b = 0; b < cols / 32; b++) {
        if (b % 8 == 0) x = mix64(st += 0x9e3779b97f4a7c15ull);
        scales[b] = (uint8_t)(127 + SYN_FP8_SCALE_EXP - 1 + ((x >> (8 * (b % 8))) & 0xff) % 3);
    }
}

/* The generator's seed of Engram layer `layer_id`'s table (the demo's and V4.1's alike). */
static uint64_t table_seed(uint64_t seed, int layer_id) { return seed ^ ((uint64_t)layer_id << 32); }

/* Each Engram layer's tensors beside the backbone's, in the same two passes: wkv FP8 with
 * 128 x 128 ue8m0 blocks as the release stores it (5.6), q_weight * k_weight as initialised (ones),
 * and with `tables` the table (5.9: values (rows, D) e4m3, scales (rows, D/32) ue8m0, rows
 * contiguous) in the mapping; without, the table is a file read through a store. */
static void v41_place(dsv4_synth *s, bool tables) {
    model_engram *e = s->m->engram;
    int d = s->m->cfg.hidden_size;
    for (int li = 0; e && li < e->n_layers; li++) {
        engram_weights *w = &e->layers[li];
        dsv4_place(s, &(dsv4_tensor){.kind = DSV4_MATRIX, .how = DSV4_FP8, .rows = (e->hc_mult + 1) * d,
                                     .cols = e->embed_dim, .w = &w->w_kv, .per_token = true, .expert = -1});
        dsv4_place(s, &(dsv4_tensor){.kind = DSV4_VECTOR, .how = DSV4_F32, .rows = e->hc_mult, .cols = d,
                                     .v = &w->qk, .init = 1.0f, .expert = -1});
        if (!tables) continue;
        size_t rows = (size_t)w->table.rows, D = (size_t)w->table.cols;
        w->table.data = take(&s->a, rows * D);
        w->table.scale = take(&s->a, rows * D / 32);
    }
}

/* The tables v41_place put in the mapping, row by row, all threads. */
static void fill_v41_tables(const model *m, uint64_t seed, const uint8_t *e4m3) {
    const model_engram *e = m->engram;
    for (int li = 0; e && li < e->n_layers; li++) {
        const engram_weights *w = &e->layers[li];
        if (!w->table.data) continue;
        uint8_t *values = (uint8_t *)w->table.data, *scales = (uint8_t *)w->table.scale;
        uint32_t D = (uint32_t)w->table.cols;
        uint64_t ls = table_seed(seed, w->layer_id);
#pragma omp parallel for schedule(static, 4096)
        for (long long r = 0; r < (long long)w->table.rows; r++)
            v41_row(ls, D, (uint64_t)r, e4m3, values + (size_t)r * D, scales + (size_t)r * (D / 32));
    }
}

/* Every DeepSeek-V4 tensor (model__dsv4_walk): matrices in one mapping as the
 * release stores them, f32 vectors (norms 1, hc scales 1, the rest random)
 * and tid2eid owned by the model; then V4.1's Engram tensors, with the tables
 * when `tables` (v41_place). */
static int make_dsv4(model *m, uint64_t seed, bool tables, char *err, size_t errlen) {
    if (model__dsv4_alloc(m)) return MODEL_ERR_NOMEM;
    dsv4_synth s = {.m = m, .seed = seed};
    model__dsv4_walk(m, dsv4_place, &s); /* sizes */
    v41_place(&s, tables);
    void *base = mmap(NULL, s.a.used, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        snprintf(err, errlen, "%s: out of memory for %.2f GB of weights%s", m->dir, s.a.used / 1e9,
                 tables ? " and Engram tables (smaller with +engram-rows:SCALE, or in files with "
                          "--synthetic-table-dir)" : "");
        return MODEL_ERR_NOMEM;
    }
    m->synth = base;
    m->synth_bytes = s.a.used;
    madvise(base, s.a.used, MADV_HUGEPAGE);
    s.a = (arena){.base = base};
    model__dsv4_walk(m, dsv4_place, &s); /* slots, regions, vectors */
    v41_place(&s, tables);
    uint8_t *e4m3 = make_e4m3_table();
    int rc = s.rc ? s.rc : !e4m3 ? MODEL_ERR_NOMEM : fill_regions(&s, e4m3);
    if (!rc) fill_v41_tables(m, seed, e4m3);
    model__dsv4_mark_f32_products(m);
    free(e4m3);
    free(s.regions);
    return rc;
}

/* ---- Engram ---- */

/* m->engram with the identity compressed lookup: a synthetic model has no
 * tokenizer, so compressed id = token id and Vc = vocab_size. */
static int identity_engram(model *m) {
    model_engram *e = calloc(1, sizeof(*e));
    if (!e) return MODEL_ERR_NOMEM;
    m->engram = e;
    int64_t V = m->cfg.vocab_size;
    if (!(e->lookup = malloc((size_t)V * sizeof(int64_t)))) return MODEL_ERR_NOMEM;
    for (int64_t i = 0; i < V; i++) e->lookup[i] = i;
    e->lookup_n = V;
    e->vc = V;
    return MODEL_OK;
}

/* The demo module and the hashing tables; the table itself comes from a file or
 * host memory (table_row). */
static int make_engram(model *m, char *err, size_t errlen) {
    const engram_config *ec = &m->cfg.engram;
    int rc = identity_engram(m);
    if (rc) return rc;
    model_engram *e = m->engram;
    ngram_hash_config hc = model_engram_hash_config(ec, e->vc, ec->pad_id); /* identity lookup */
    char herr[256];
    if (ngram_hash_create(&hc, &e->hash, herr, sizeof(herr)) != NGRAM_HASH_OK) {
        snprintf(err, errlen, "%s: engram: %s", m->dir, herr);
        return MODEL_ERR_CONFIG;
    }
    e->n_layers = 1;
    e->hc_mult = 1;
    e->kernel_size = ec->kernel_size;
    e->dilation = ec->max_ngram_size;
    e->n_heads = ngram_hash_n_heads(e->hash);
    e->head_dim = (int)ngram_hash_head_dim(e->hash);
    e->embed_dim = (int)ngram_hash_embed_dim(e->hash);
    if (!(e->layers = calloc(1, sizeof(engram_weights)))) return MODEL_ERR_NOMEM;
    engram_weights *w = &e->layers[0];
    w->li = 0;
    w->layer_id = (int)ec->layer_ids[0];
    int64_t rows = ngram_hash_table_rows(e->hash, 0);
    if (rows > INT32_MAX) {
        snprintf(err, errlen, "%s: Engram table of %lld rows is too large for this build", m->dir, (long long)rows);
        return MODEL_ERR_CONFIG;
    }
    w->table = (weight){.data = NULL, .dt = DTYPE_BF16, .rows = (int)rows, .cols = e->head_dim};
    return MODEL_OK;
}

/* The small f32 tensors: norms 1, biases 0, conv kernel random. */
static int make_vectors(model *m, uint64_t seed) {
    const model_config *c = &m->cfg;
    int d = c->hidden_size, n = d > c->head_dim ? d : c->head_dim;
    float *ones = model__own(m, (size_t)n), *zeros = model__own(m, (size_t)n);
    if (!ones || !zeros) return MODEL_ERR_NOMEM;
    for (int i = 0; i < n; i++) ones[i] = 1.0f, zeros[i] = 0.0f;
    m->final_norm = ones; /* read-only: every norm shares one vector */
    for (int i = 0; i < c->n_layers; i++) {
        layer_weights *L = &m->layers[i];
        L->attn_norm = L->ffn_norm = ones;
        if (c->qk_norm) L->q_norm = L->k_norm = ones;
    }
    if (!m->engram) return MODEL_OK;
    model_engram *e = m->engram;
    engram_weights *w = &e->layers[0];
    size_t nc = (size_t)d * e->kernel_size;
    float *conv = model__own(m, nc);
    uint16_t *tmp = malloc(nc * sizeof(uint16_t));
    if (!conv || !tmp) {
        free(tmp);
        return MODEL_ERR_NOMEM;
    }
    fill_bf16(tmp, nc, stream_start(seed, 0xc0deu, 0));
    for (size_t i = 0; i < nc; i++) {
        uint32_t u = (uint32_t)tmp[i] << 16;
        memcpy(&conv[i], &u, 4);
    }
    free(tmp);
    w->conv_w = conv;
    w->b_value = w->b_key[0] = zeros;
    w->norm1[0] = w->norm2[0] = w->conv_norm[0] = ones;
    m->layers[w->layer_id].engram = w;
    return MODEL_OK;
}

/* Row `row` of the demo's synthetic table of `seed`: its own generator stream, so
 * any thread makes any row, in a file (table_fill) or in memory (mem_fill),
 * with the same bits. */
static void table_row(uint64_t seed, uint32_t cols, uint64_t row, void *dst) {
    fill_bf16(dst, cols, stream_start(seed, 0x7ab1eu, row));
}

/* A layer's table rows as its file stores them: bf16 (the demo's) or packed FP8 + ue8m0 (V4.1's). */
typedef struct {
    uint64_t seed, rows;  /* table_seed of the layer */
    uint32_t cols, rb;
    int dtype;            /* ENGRAM_STORE_BF16 or ENGRAM_STORE_FP8_UE8M0 */
    const uint8_t *e4m3;  /* FP8: make_e4m3_table's (borrowed) */
    uint8_t *buf;   /* (batch, rb) rows [b0, b1) */
    uint64_t b0, b1, batch;
    const char *path;
    bool quiet;
    double t0, last;
} table_gen;

static void gen_row(const table_gen *g, uint64_t row, uint8_t *dst) {
    if (g->dtype == ENGRAM_STORE_FP8_UE8M0) v41_row(g->seed, g->cols, row, g->e4m3, dst, dst + g->cols);
    else table_row(g->seed, g->cols, row, dst);
}

/* The store's writer asks for rows one at a time; this makes them in
 * parallel batches and hands them out. */
static int table_fill(void *ctx, uint64_t row, void *dst) {
    table_gen *g = ctx;
    if (row < g->b0 || row >= g->b1) {
        g->b0 = row;
        g->b1 = row + g->batch < g->rows ? row + g->batch : g->rows;
        long long n = (long long)(g->b1 - g->b0);
#pragma omp parallel for schedule(static)
        for (long long i = 0; i < n; i++) gen_row(g, g->b0 + (uint64_t)i, g->buf + (size_t)i * g->rb);
        double now = util_now();
        if (!g->quiet && now - g->last >= 5.0) {
            g->last = now;
            double done = (double)row / (double)g->rows;
            fprintf(stderr, "synthetic table %s: %.1f%% of %.2f GB, %.0f MB/s\n", g->path, 100.0 * done,
                    (double)g->rows * g->rb / 1e9, (double)row * g->rb / 1e6 / (now - g->t0));
        }
    }
    memcpy(dst, g->buf + (row - g->b0) * g->rb, g->rb);
    return 0;
}

/* Makes (or reuses) dir/engram_layer_<id>.tbl for Engram layer li.
 * A file is reused when its stamp (path.synthetic) says the same generator,
 * seed and shape made it; a stale synthetic file is replaced; any other file
 * of that name is refused, never overwritten. */
static int make_table(model *m, int li, const char *dir, uint64_t seed, bool quiet, char *err, size_t errlen) {
    const engram_weights *w = &m->engram->layers[li];
    int dt = w->table.dt == DTYPE_F8_E4M3 ? ENGRAM_STORE_FP8_UE8M0 : ENGRAM_STORE_BF16;
    const char *dn = engram_store_dtype_name(dt);
    char path[4096], stamp_path[4200], stamp[256];
    snprintf(path, sizeof(path), MODEL_ENGRAM_TABLE_FMT, dir, w->layer_id);
    snprintf(stamp_path, sizeof(stamp_path), "%s.synthetic", path);
    snprintf(stamp, sizeof(stamp), "engram synthetic table v%d seed %llu layer %d rows %d cols %d %s\n",
             SYN_TABLE_VERSION, (unsigned long long)seed, w->layer_id, w->table.rows, w->table.cols, dn);
    if (mkdir(dir, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create the table directory: %s", dir, strerror(errno));
        return MODEL_ERR_IO;
    }
    struct stat stt;
    bool exists = stat(path, &stt) == 0;
    char ferr[256];
    size_t len = 0;
    char *old = util_read_file(stamp_path, 4096, &len, ferr, sizeof(ferr));
    if (exists && old && !strcmp(old, stamp)) {
        free(old);
        if (!quiet) fprintf(stderr, "synthetic table %s: reusing it (same seed and shape)\n", path);
        return MODEL_OK;
    }
    if (exists && !old) {
        snprintf(err, errlen, "%s exists and was not made by a synthetic model (no %s); remove it or choose another "
                 "table directory", path, stamp_path);
        return MODEL_ERR_IO;
    }
    if (old) { /* a synthetic table of another seed or shape: replace it */
        if (!quiet) fprintf(stderr, "synthetic table %s: made for another seed or shape, replacing it\n", path);
        unlink(path);
        unlink(stamp_path);
        free(old);
    }
    uint32_t rb = engram_store_row_bytes(dt, (uint32_t)w->table.cols);
    uint64_t bytes = ENGRAM_STORE_BLOCK + (uint64_t)w->table.rows * engram_store_row_stride(rb);
    struct statvfs vfs;
    if (statvfs(dir, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < bytes + (64u << 20)) {
        snprintf(err, errlen, "%s: the synthetic Engram table needs %.2f GB but the filesystem has %.2f GB free", dir,
                 bytes / 1e9, (double)vfs.f_bavail * vfs.f_frsize / 1e9);
        return MODEL_ERR_IO;
    }
    table_gen g = {.seed = table_seed(seed, w->layer_id), .rows = (uint64_t)w->table.rows,
                   .cols = (uint32_t)w->table.cols, .rb = rb, .dtype = dt, .batch = (32u << 20) / rb + 1, .path = path,
                   .quiet = quiet};
    uint8_t *e4m3 = dt == ENGRAM_STORE_FP8_UE8M0 ? make_e4m3_table() : NULL;
    g.e4m3 = e4m3;
    if (!(g.buf = malloc((size_t)g.batch * rb)) || (dt == ENGRAM_STORE_FP8_UE8M0 && !e4m3)) {
        free(g.buf), free(e4m3);
        return MODEL_ERR_NOMEM;
    }
    g.t0 = g.last = util_now();
    if (!quiet)
        fprintf(stderr, "synthetic table %s: writing %d rows x %d %s (%.2f GB)\n", path, w->table.rows,
                w->table.cols, dn, bytes / 1e9);
    char serr[512];
    int src = engram_store_write(path, dt, g.rows, g.cols, 0, table_fill, &g, serr, sizeof(serr));
    free(g.buf);
    free(e4m3);
    if (src) {
        snprintf(err, errlen, "%s", serr);
        return src == ENGRAM_STORE_ENOMEM ? MODEL_ERR_NOMEM : MODEL_ERR_IO;
    }
    char tmp[4300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", stamp_path);
    FILE *f = fopen(tmp, "w");
    if (!f || fputs(stamp, f) < 0 || fclose(f) || rename(tmp, stamp_path)) {
        snprintf(err, errlen, "%s: cannot write: %s", stamp_path, strerror(errno));
        return MODEL_ERR_IO;
    }
    if (!quiet) fprintf(stderr, "synthetic table %s: written in %.1fs\n", path, util_now() - g.t0);
    return MODEL_OK;
}

/* make_table for every Engram layer. */
static int make_tables(model *m, const char *dir, uint64_t seed, bool quiet, char *err, size_t errlen) {
    int rc = MODEL_OK;
    for (int li = 0; li < m->engram->n_layers && rc == MODEL_OK; li++) rc = make_table(m, li, dir, seed, quiet, err, errlen);
    return rc;
}

/* The same rows in host memory, for tables larger than the disk. */
static int mem_fill(void *ctx, uint64_t row, void *dst) {
    gen_row(ctx, row, dst);
    return 0;
}

static int make_memory_table(model *m, uint64_t seed, const engram_store_params *sp, bool quiet, char *err,
                             size_t errlen) {
    engram_weights *w = &m->engram->layers[0];
    table_gen g = {.seed = table_seed(seed, w->layer_id), .cols = (uint32_t)w->table.cols, .dtype = ENGRAM_STORE_BF16};
    uint32_t rb = engram_store_row_bytes(ENGRAM_STORE_BF16, g.cols);
    double gb = (double)w->table.rows * engram_store_row_stride(rb) / 1e9, t0 = util_now();
    if (!quiet)
        fprintf(stderr, "synthetic table: making %d rows x %d bf16 (%.2f GB) in host memory\n", w->table.rows,
                w->table.cols, gb);
    char serr[512];
    int rc = engram_store_create_memory(ENGRAM_STORE_BF16, (uint64_t)w->table.rows, g.cols, mem_fill, &g, sp,
                                        &w->store, serr, sizeof(serr));
    if (rc) {
        snprintf(err, errlen, "%s: %s", m->dir, serr);
        return rc == ENGRAM_STORE_ENOMEM ? MODEL_ERR_NOMEM : MODEL_ERR_IO;
    }
    if (!quiet) fprintf(stderr, "synthetic table: made in %.1fs\n", util_now() - t0);
    return MODEL_OK;
}

/* ---- the model ---- */

int model_synthetic_ex(const char *spec, uint64_t seed, const model_synthetic_params *params, model **out,
                       char *err, size_t errlen) {
    *out = NULL;
    if (errlen) err[0] = 0;
    model_synthetic_params p = params ? *params : model_synthetic_default_params();
    model_config cfg;
    int rc = model_synthetic_config(spec, &cfg, err, errlen);
    if (rc) return rc;
    model *m = calloc(1, sizeof(*m));
    size_t dl = strlen(spec) + 16;
    if (!m || !(m->dir = malloc(dl))) {
        free(m);
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    snprintf(m->dir, dl, "synthetic:%s", spec);
    m->cfg = cfg;
    if (!(m->layers = calloc((size_t)cfg.n_layers, sizeof(layer_weights))) ||
        (cfg.arch != ARCH_DEEPSEEK_V4 && cfg.moe.n_experts && (rc = make_moe(m)))) {
        rc = MODEL_ERR_NOMEM;
        goto fail;
    }
    if (cfg.arch == ARCH_DEEPSEEK_V4) {
        /* V4.1's Engram: its shape (the loader's, with the identity lookup), the table files
         * first (a refusal or a full disk costs no weight filling), else the tables as tensors */
        if (cfg.engram_v41.n_layers &&
            ((rc = identity_engram(m)) || (rc = model__dsv4_engram_init(m, err, errlen)) ||
             (p.table_dir && (rc = make_tables(m, p.table_dir, seed, p.quiet, err, errlen)))))
            goto fail;
        if ((rc = make_dsv4(m, seed, !p.table_dir, err, errlen))) goto fail;
        if (m->engram && p.table_dir && (rc = model_engram_use_tables(m, p.table_dir, &p.store, err, errlen))) goto fail;
        *out = m;
        return MODEL_OK;
    }
    if (cfg.engram.present && (rc = make_engram(m, err, errlen))) goto fail;
    /* the table file first: a refusal or a full disk costs no weight filling */
    if (m->engram && p.table_dir && (rc = make_tables(m, p.table_dir, seed, p.quiet, err, errlen))) goto fail;

    arena a = {0};
    layout(m, &a);
    void *base = mmap(NULL, a.used, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        snprintf(err, errlen, "%s: out of memory for %.2f GB of weights", m->dir, a.used / 1e9);
        rc = MODEL_ERR_NOMEM;
        goto fail;
    }
    m->synth = base;
    m->synth_bytes = a.used;
    madvise(base, a.used, MADV_HUGEPAGE); /* fewer faults while filling; a refusal changes nothing */
    a = (arena){.base = base};
    layout(m, &a);
    fill_arena(&a, seed);
    if ((rc = make_vectors(m, seed))) goto fail;
    if (m->engram && p.table_dir && (rc = model_engram_use_tables(m, p.table_dir, &p.store, err, errlen))) goto fail;
    if (m->engram && !p.table_dir && (rc = make_memory_table(m, seed, &p.store, p.quiet, err, errlen))) goto fail;
    *out = m;
    return MODEL_OK;
fail:
    if (rc == MODEL_ERR_NOMEM && errlen && !err[0]) snprintf(err, errlen, "out of memory");
    model_destroy(m);
    return rc;
}

int model_synthetic(const char *spec, uint64_t seed, model **out, char *err, size_t errlen) {
    return model_synthetic_ex(spec, seed, NULL, out, err, errlen);
}
