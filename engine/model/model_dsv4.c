/* DeepseekV4ForCausalLM (model_type "deepseek_v4"): config.json in both styles
 * (layer_types + compress_rates, or the release's compress_ratios; mlp_layer_types
 * or num_hash_layers; nested or flat rope keys, YaRN on the compress rope) and
 * the weights in the release naming and in transformers' save_pretrained mix
 * (DEEPSEEK_V4.md sections 1 and 4), V4.1's ratio-1/2 layers and their kv / index sources
 * (5.8). Called by model.c; calls model_read.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/dtype.h"
#include "engine/model/model_internal.h"

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)

/* ---- config.json ---- */

/* A layer kind from its transformers name; -1 when unknown. */
static int kind_of(const char *s) {
    if (strcmp(s, "sliding_attention") == 0) return DSV4_SLIDING;
    if (strcmp(s, "compressed_sparse_attention") == 0) return DSV4_CSA;
    if (strcmp(s, "heavily_compressed_attention") == 0) return DSV4_HCA;
    return -1;
}

/* The attention kind and rate of every layer: layer_types (+ compress_rates,
 * overridden by compress_rate_csa / compress_rate_hca), else the release's
 * literal compress_ratios (0, 4, 128; V4.1 adds 1 and 2, DSV4_LOW), else transformers' default schedule. */
static int parse_layer_kinds(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    dsv4_config *v = &c->dsv4;
    int csa = 4, hca = 128;
    const cJSON *cr = cJSON_GetObjectItemCaseSensitive(root, "compress_rates");
    if (cr && !cJSON_IsNull(cr)) {
        if (!cJSON_IsObject(cr)) FAIL("%s: key compress_rates must be an object", label);
        for (const cJSON *e = cr->child; e; e = e->next)
            if (kind_of(e->string) <= 0) FAIL("%s: compress_rates has an unknown layer type %s", label, e->string);
        if (model__get_int(cr, "compressed_sparse_attention", 4, 1, 128, &csa, label, err, errlen) ||
            model__get_int(cr, "heavily_compressed_attention", 128, 1, 128, &hca, label, err, errlen))
            return -1;
    }
    if (model__get_int(root, "compress_rate_csa", csa, 1, 128, &csa, label, err, errlen) ||
        model__get_int(root, "compress_rate_hca", hca, 1, 128, &hca, label, err, errlen))
        return -1;
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    const cJSON *ratios = cJSON_GetObjectItemCaseSensitive(root, "compress_ratios");
    int n = c->n_layers;
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) < n)
            FAIL("%s: key layer_types must list at least num_hidden_layers (%d) layer types", label, n);
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(lt, i);
            int k = cJSON_IsString(e) ? kind_of(e->valuestring) : -1;
            if (k < 0)
                FAIL("%s: layer_types[%d] is %s, not sliding_attention, compressed_sparse_attention or "
                     "heavily_compressed_attention", label, i, cJSON_IsString(e) ? e->valuestring : "not a string");
            v->attn[i] = (dsv4_attn_kind)k;
        }
    } else if (ratios && !cJSON_IsNull(ratios)) {
        if (!cJSON_IsArray(ratios) || cJSON_GetArraySize(ratios) < n)
            FAIL("%s: key compress_ratios must list at least num_hidden_layers (%d) integers", label, n);
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(ratios, i);
            double r = cJSON_IsNumber(e) ? e->valuedouble : -1;
            if (r == 0) v->attn[i] = DSV4_SLIDING;
            else if (r == 4) v->attn[i] = DSV4_CSA, csa = 4;
            else if (r == 128) v->attn[i] = DSV4_HCA, hca = 128;
            else if (r == 1 || r == 2) v->attn[i] = DSV4_LOW, v->rate[i] = (int)r; /* V4.1 (5.8) */
            else FAIL("%s: compress_ratios[%d] must be 0, 1, 2, 4 or 128", label, i);
        }
    } else { /* transformers' default: HCA, HCA, then CSA when (i - 2) is odd */
        for (int i = 0; i < n; i++) v->attn[i] = i < 2 || (i - 2) % 2 == 0 ? DSV4_HCA : DSV4_CSA;
    }
    for (int i = 0; i < n; i++)
        if (v->attn[i] != DSV4_LOW) v->rate[i] = v->attn[i] == DSV4_CSA ? csa : v->attn[i] == DSV4_HCA ? hca : 0;
    return 0;
}

/* A list of layer ids (absent or null: empty) into a per-layer flag; ids past the layers are an error. */
static int parse_layer_set(const cJSON *root, const char *key, int n, bool *in, const char *label, char *err,
                           size_t errlen) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key);
    memset(in, 0, (size_t)n * sizeof(bool));
    if (!a || cJSON_IsNull(a)) return 0;
    if (!cJSON_IsArray(a)) FAIL("%s: key %s must be a list of layer ids", label, key);
    for (const cJSON *e = a->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble != (int)e->valuedouble || e->valuedouble < 0 || e->valuedouble >= n)
            FAIL("%s: key %s must hold layer ids in [0, %d)", label, key, n);
        in[(int)e->valuedouble] = true;
    }
    return 0;
}

/* V4.1's two-level candidate top-k (DEEPSEEK_V4.md 5.8; dsv41_sparse.py DeepseekV41Indexer:
 * is_candidate_source = layer == candidate_source_layer_id, uses_candidates = 0 <= it < layer). SGLang
 * keeps one published block list per step and hands it to every later indexer whatever its ratio,
 * which its backends read in the source's compressed positions (the DeepGEMM sparse table) or in
 * the consumer's own (the torch path): a consumer of another ratio than the source has no single
 * meaning there, so it is refused, as is a source that publishes nothing (no index source) and an
 * empty candidate set. */
static int parse_candidates(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    dsv4_config *v = &c->dsv4;
    int src, nb, bs;
    if (model__get_int(root, "candidate_source_layer_id", -1, -1, MODEL_MAX_LAYERS - 1, &src, label, err, errlen) ||
        model__get_int(root, "candidate_topk_blocks", 0, 0, 1 << 20, &nb, label, err, errlen) ||
        model__get_int(root, "candidate_block_size", 0, 0, 1 << 20, &bs, label, err, errlen))
        return -1;
    v->cand_src = -1, v->cand_blocks = v->cand_block = 0;
    if (src < 0) return 0; /* SGLang reads the other two only through a candidate source */
    if (src >= c->n_layers || v->attn[src] != DSV4_LOW || !v->idx_src[src])
        FAIL("%s: candidate_source_layer_id %d is no index source of compress ratio 1 or 2 (index_source_layer_ids), "
             "so it would publish no candidates", label, src);
    if (nb < 1 || bs < 1)
        FAIL("%s: candidate_topk_blocks (%d) and candidate_block_size (%d) must be at least 1 with a candidate source",
             label, nb, bs);
    for (int i = src + 1; i < c->n_layers; i++)
        if (v->attn[i] == DSV4_LOW && v->idx_src[i] && v->rate[i] != v->rate[src])
            FAIL("%s: index source layer %d (compress ratio %d) would take its top-k among the candidate blocks of "
                 "layer %d (compress ratio %d): candidates across ratios are not supported", label, i, v->rate[i], src,
                 v->rate[src]);
    v->cand_src = src, v->cand_blocks = nb, v->cand_block = bs;
    return 0;
}

/* V4.1's sharing among ratio-1/2 layers, as SGLang resolves it (DEEPSEEK_V4.md 5.8;
 * deepseek_v4_memory_pool.py source_layer_of; the backend's per-ratio top-k): a layer reads the
 * compressed entries and index keys of the nearest kv source of its ratio at or before it, and
 * the top-k of the last index source of its ratio at or before it. Ids of other layers are ignored,
 * as SGLang ignores them. Layouts SGLang would run on unwritten storage are refused. */
static int parse_low_sources(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    dsv4_config *v = &c->dsv4;
    bool kv[MODEL_MAX_LAYERS], ix[MODEL_MAX_LAYERS];
    int n = c->n_layers;
    if (parse_layer_set(root, "kv_source_layer_ids", n, kv, label, err, errlen) ||
        parse_layer_set(root, "index_source_layer_ids", n, ix, label, err, errlen))
        return -1;
    int last_kv[3] = {-1, -1, -1}, last_ix[3] = {-1, -1, -1};
    for (int i = 0; i < n; i++) {
        v->kv_src[i] = -1;
        v->idx_src[i] = false;
        if (v->attn[i] != DSV4_LOW) continue;
        int r = v->rate[i];
        if (kv[i]) last_kv[r] = i;
        if (ix[i]) last_ix[r] = i;
        if (last_kv[r] < 0)
            FAIL("%s: layer %d has compress ratio %d but no kv_source_layer_ids entry of that ratio at or before it",
                 label, i, r);
        if (last_ix[r] < 0)
            FAIL("%s: layer %d has compress ratio %d but no index_source_layer_ids entry of that ratio at or before it",
                 label, i, r);
        v->kv_src[i] = last_kv[r];
        v->idx_src[i] = ix[i];
        if (ix[i] && !ix[v->kv_src[i]])
            FAIL("%s: index source layer %d reads the index keys of kv source layer %d, which is no index source "
                 "and so never writes them", label, i, v->kv_src[i]);
    }
    return parse_candidates(root, c, label, err, errlen);
}

/* Which layers route by token id: mlp_layer_types, else the first
 * num_hash_layers (n_hash_layers; 3 when absent). */
static int parse_mlp_kinds(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "mlp_layer_types");
    int n = c->n_layers;
    if (mt && !cJSON_IsNull(mt)) {
        if (!cJSON_IsArray(mt) || cJSON_GetArraySize(mt) < n)
            FAIL("%s: key mlp_layer_types must list at least num_hidden_layers (%d) entries", label, n);
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(mt, i);
            if (cJSON_IsString(e) && strcmp(e->valuestring, "hash_moe") == 0) c->dsv4.hash_moe[i] = true;
            else if (!(cJSON_IsString(e) && strcmp(e->valuestring, "moe") == 0))
                FAIL("%s: mlp_layer_types[%d] must be \"moe\" or \"hash_moe\"", label, i);
        }
        return 0;
    }
    int nh;
    const char *key = cJSON_GetObjectItemCaseSensitive(root, "n_hash_layers") ? "n_hash_layers" : "num_hash_layers";
    if (model__get_int(root, key, 3, 0, MODEL_MAX_LAYERS, &nh, label, err, errlen)) return -1;
    for (int i = 0; i < n; i++) c->dsv4.hash_moe[i] = i < nh;
    return 0;
}

/* One rope entry: default, or YaRN (only where allowed). theta defaults to *theta. */
static int parse_rope_entry(const cJSON *o, const char *what, bool yarn_ok, double *theta, dsv4_config *v,
                            int max_pos, const char *label, char *err, size_t errlen) {
    if (!cJSON_IsObject(o)) FAIL("%s: rope parameters \"%s\" must be an object", label, what);
    if (model__get_num(o, "rope_theta", *theta, 1e-3, 1e12, theta, label, err, errlen)) return -1;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(o, "type");
    if (t && !cJSON_IsString(t)) FAIL("%s: rope_type of \"%s\" must be a string", label, what);
    const char *type = t ? t->valuestring : "default";
    if (strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "yarn") != 0 || !yarn_ok)
        FAIL("%s: rope_type %s of \"%s\" is not supported (%s)", label, type, what, yarn_ok ? "default, yarn" : "default");
    v->comp_yarn = true;
    if (model__get_int(o, "original_max_position_embeddings", INT32_MIN, 1, 1 << 26, &v->yarn_original_max_pos,
                       label, err, errlen) ||
        model__get_num(o, "factor", (double)max_pos / v->yarn_original_max_pos, 1e-6, 1e6, &v->yarn_factor, label,
                       err, errlen) ||
        model__get_num(o, "beta_fast", 32.0, -1e6, 1e6, &v->yarn_beta_fast, label, err, errlen) ||
        model__get_num(o, "beta_slow", 1.0, -1e6, 1e6, &v->yarn_beta_slow, label, err, errlen))
        return -1;
    return 0; /* attention_factor is ignored: V4 forces it to 1 */
}

/* rope_parameters {main, compress}, or rope_theta, compress_rope_theta and rope_scaling. */
static int parse_ropes(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    dsv4_config *v = &c->dsv4;
    if (model__get_num(root, "rope_theta", 10000.0, 1e-3, 1e12, &v->main_theta, label, err, errlen) ||
        model__get_num(root, "compress_rope_theta", 160000.0, 1e-3, 1e12, &v->comp_theta, label, err, errlen))
        return -1;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (rp && !cJSON_IsNull(rp)) {
        if (!cJSON_IsObject(rp)) FAIL("%s: key rope_parameters must be an object", label);
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(rp, "main"), *cp = cJSON_GetObjectItemCaseSensitive(rp, "compress");
        if (mn || cp) {
            if (!mn || !cp) FAIL("%s: rope_parameters needs both \"main\" and \"compress\"", label);
            return parse_rope_entry(mn, "main", false, &v->main_theta, v, c->max_position_embeddings, label, err,
                                    errlen) ||
                           parse_rope_entry(cp, "compress", true, &v->comp_theta, v, c->max_position_embeddings,
                                            label, err, errlen)
                       ? -1
                       : 0;
        }
        /* a flat object: the main theta, and the scaling that compress takes */
        if (model__get_num(rp, "rope_theta", v->main_theta, 1e-3, 1e12, &v->main_theta, label, err, errlen)) return -1;
        double t = v->comp_theta;
        cJSON *copy = cJSON_Duplicate(rp, 1);
        if (!copy) FAIL("out of memory");
        cJSON_DeleteItemFromObjectCaseSensitive(copy, "rope_theta");
        int rc = parse_rope_entry(copy, "compress", true, &t, v, c->max_position_embeddings, label, err, errlen);
        cJSON_Delete(copy);
        return rc;
    }
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (sc && !cJSON_IsNull(sc)) {
        double t = v->comp_theta;
        return parse_rope_entry(sc, "rope_scaling", true, &t, v, c->max_position_embeddings, label, err, errlen);
    }
    return 0;
}

int model__parse_dsv4_config(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    dsv4_config *v = &c->dsv4;
    const int R = INT32_MIN;
    double eps, prf, hc_eps, scaling, limit;
    int nh_experts, r_key;
    bool mlp_bias;
    if (model__get_int(root, "vocab_size", R, 1, 1 << 24, &c->vocab_size, label, err, errlen) ||
        model__get_int(root, "hidden_size", R, 1, 1 << 16, &c->hidden_size, label, err, errlen) ||
        model__get_int(root, "num_hidden_layers", R, 1, MODEL_MAX_LAYERS, &c->n_layers, label, err, errlen) ||
        model__get_int(root, "num_attention_heads", R, 1, 1024, &c->n_heads, label, err, errlen) ||
        model__get_int(root, "head_dim", 512, 2, 4096, &c->head_dim, label, err, errlen) ||
        model__get_int(root, "max_position_embeddings", 1048576, 1, 1 << 26, &c->max_position_embeddings, label, err,
                       errlen) ||
        model__get_num(root, "rms_norm_eps", 1e-6, 1e-30, 1.0, &eps, label, err, errlen) ||
        model__get_num(root, "partial_rotary_factor", 64.0 / 512.0, 0.0, 1.0, &prf, label, err, errlen) ||
        model__get_int(root, "q_lora_rank", 1024, 1, 1 << 20, &v->q_lora_rank, label, err, errlen) ||
        model__get_int(root, "o_groups", 8, 1, 1024, &v->o_groups, label, err, errlen) ||
        model__get_int(root, "o_lora_rank", 1024, 1, 1 << 20, &v->o_lora_rank, label, err, errlen) ||
        model__get_int(root, "sliding_window", 128, 1, 1 << 20, &c->sliding_window, label, err, errlen) ||
        model__get_int(root, "index_n_heads", 64, 1, 1024, &v->index_n_heads, label, err, errlen) ||
        model__get_int(root, "index_head_dim", 128, 2, 4096, &v->index_head_dim, label, err, errlen) ||
        model__get_int(root, "index_topk", 512, 1, 1 << 20, &v->index_topk, label, err, errlen) ||
        model__get_int(root, "hc_mult", 4, 1, 16, &v->hc_mult, label, err, errlen) ||
        model__get_int(root, "hc_sinkhorn_iters", 20, 1, 1000, &v->hc_iters, label, err, errlen) ||
        model__get_num(root, "hc_eps", 1e-6, 0.0, 1.0, &hc_eps, label, err, errlen) ||
        model__get_num(root, "routed_scaling_factor", 1.5, 0.0, 1e6, &scaling, label, err, errlen) ||
        model__get_num(root, "swiglu_limit", 10.0, 0.0, 1e9, &limit, label, err, errlen) ||
        model__get_int(root, "num_experts_per_tok", 6, 1, MODEL_MAX_EXPERTS, &c->moe.top_k, label, err, errlen) ||
        model__get_int(root, "moe_intermediate_size", 2048, 1, 1 << 20, &c->moe.inter, label, err, errlen) ||
        model__get_bool(root, "mlp_bias", false, &mlp_bias, label, err, errlen) ||
        model__get_bool(root, "tie_word_embeddings", false, &c->tie_word_embeddings, label, err, errlen) ||
        model__get_bool(root, "hc_pre_from_prev_sublayer", false, &v->hc_pre_from_prev, label, err, errlen) ||
        model__get_bool(root, "q_head_norm", true, &v->q_head_norm, label, err, errlen))
        return -1;
    const char *ekey = cJSON_GetObjectItemCaseSensitive(root, "n_routed_experts") ? "n_routed_experts" : "num_local_experts";
    if (model__get_int(root, ekey, 256, 1, MODEL_MAX_EXPERTS, &c->moe.n_experts, label, err, errlen)) return -1;
    if (cJSON_GetObjectItemCaseSensitive(root, "n_routed_experts") &&
        cJSON_GetObjectItemCaseSensitive(root, "num_local_experts") &&
        (model__get_int(root, "num_local_experts", 0, 1, MODEL_MAX_EXPERTS, &nh_experts, label, err, errlen) ||
         nh_experts != c->moe.n_experts))
        FAIL("%s: n_routed_experts and num_local_experts disagree", label);
    if (c->moe.top_k > c->moe.n_experts)
        FAIL("%s: num_experts_per_tok %d exceeds n_routed_experts %d", label, c->moe.top_k, c->moe.n_experts);
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(root, "scoring_func");
    if (sf && !(cJSON_IsString(sf) && strcmp(sf->valuestring, "sqrtsoftplus") == 0))
        FAIL("%s: scoring_func must be \"sqrtsoftplus\" (the only DeepSeek-V4 router supported)", label);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0))
        FAIL("%s: key hidden_act must be \"silu\"", label);
    if (mlp_bias) FAIL("%s: mlp_bias true is not supported for DeepSeek-V4", label);
    int D = c->head_dim;
    /* even, as every family's (the fuzz target's invariant): a head is split
     * into halves and pairs in places, and V4-Flash's is 512 */
    if (D % 2) FAIL("%s: key head_dim must be even (got %d)", label, D);
    v->rope_dim = (int)(D * prf);
    if (model__get_int(root, "qk_rope_head_dim", v->rope_dim, 0, D, &r_key, label, err, errlen)) return -1;
    if (r_key != v->rope_dim)
        FAIL("%s: qk_rope_head_dim %d disagrees with head_dim * partial_rotary_factor = %d", label, r_key, v->rope_dim);
    if (v->rope_dim % 2 || v->rope_dim > v->index_head_dim)
        FAIL("%s: rotary dims %d must be even and at most index_head_dim %d", label, v->rope_dim, v->index_head_dim);
    if (c->n_heads % v->o_groups)
        FAIL("%s: num_attention_heads %d is not a multiple of o_groups %d", label, c->n_heads, v->o_groups);
    c->rms_norm_eps = (float)eps;
    v->hc_eps = (float)hc_eps;
    v->routed_scaling = (float)scaling;
    v->swiglu_limit = (float)limit;
    c->n_kv_heads = 1; /* one shared K=V head whatever num_key_value_heads says */
    c->intermediate_size = c->moe.inter;
    c->moe.norm_topk_prob = true; /* both V4 routers always renormalise */
    for (int i = 0; i < c->n_layers; i++) c->moe.layer_moe[i] = true;
    if (parse_layer_kinds(root, c, label, err, errlen) || parse_low_sources(root, c, label, err, errlen) ||
        parse_mlp_kinds(root, c, label, err, errlen) || parse_ropes(root, c, label, err, errlen))
        return -1;
    for (int i = 0; i < c->n_layers; i++) /* SGLang's fake quantisations work in blocks of 16 and 32 */
        if (v->attn[i] == DSV4_LOW && (D % 16 || v->index_head_dim % 32))
            FAIL("%s: compress ratio %d needs head_dim a multiple of 16 (got %d) and index_head_dim a multiple of "
                 "32 (got %d)", label, v->rate[i], D, v->index_head_dim);
    if (cJSON_GetObjectItemCaseSensitive(root, "engram"))
        FAIL("%s: the demo Engram module (key engram) on a DeepSeek-V4 backbone is not supported; "
             "DeepSeek-V4.1's Engram takes the engram_* keys", label);
    return model__parse_dsv4_engram(root, c, label, err, errlen); /* V4.1's Engram, model_dsv4_engram.c */
}

/* ---- weights ---- */

/* The first of the candidate names (release style, without the optional
 * "model." prefix) that the checkpoint holds, with or without the prefix, in
 * buf; when none is there, the first with the prefix (so the error names it). */
static const char *find_name(const model *m, char *buf, size_t n, const char *const *cands, int nc) {
    const char *file;
    for (int i = 0; i < nc; i++) {
        snprintf(buf, n, "model.%s", cands[i]);
        if (model__find_tensor(m, buf, &file)) return buf;
        snprintf(buf, n, "%s", cands[i]);
        if (model__find_tensor(m, buf, &file)) return buf;
    }
    snprintf(buf, n, "model.%s", cands[0]);
    return buf;
}

/* The one place DeepSeek-V4 matrices are read: NAME.weight may be FP8 or FP4
 * with its scale sibling (model__load_qmatrix); other names (hc_*_fn) are plain. */
static int load_mat(model *m, const char *name, int rows, int cols, weight *w, char *err, size_t errlen) {
    size_t n = strlen(name);
    if (n > 7 && !strcmp(name + n - 7, ".weight")) {
        char base[300];
        snprintf(base, sizeof(base), "%.*s", (int)(n - 7), name);
        return model__load_qmatrix(m, base, rows, cols, w, err, errlen);
    }
    return model__load_matrix(m, name, rows, cols, w, err, errlen);
}

/* A matrix or vector of layer i under `a` (or its alternative `b`, may be NULL). */
#define NAMES(...) (const char *const[]){__VA_ARGS__}, (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *))
static const char *layer_name(const model *m, int i, const char *a, const char *b) {
    static _Thread_local char buf[300]; /* used at once by the caller */
    char ca[256], cb[256];
    snprintf(ca, sizeof(ca), "layers.%d.%s", i, a);
    snprintf(cb, sizeof(cb), "layers.%d.%s", i, b ? b : a);
    return find_name(m, buf, sizeof(buf), NAMES(ca, cb));
}
static int layer_mat(model *m, int i, const char *a, const char *b, int rows, int cols, weight *w, char *err,
                     size_t errlen) {
    return load_mat(m, layer_name(m, i, a, b), rows, cols, w, err, errlen);
}
static int layer_vec(model *m, int i, const char *a, const char *b, int n, const float **out, char *err,
                     size_t errlen) {
    return model__load_vector(m, layer_name(m, i, a, b), n, out, err, errlen);
}

/* An f32 copy of a small 2-D tensor read by load_mat (position biases). */
static int own_f32(model *m, const weight *w, const float **out, char *err, size_t errlen) {
    float *buf = model__own(m, (size_t)w->rows * w->cols);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    dtype_to_f32(buf, w->data, w->dt, (size_t)w->rows * w->cols);
    *out = buf;
    return MODEL_OK;
}

/* A compressor under prefix p ("attn.compressor" or "attn.indexer.compressor"):
 * projections (cw, d), ape (rate, cw), norm (D). */
static int load_compressor(model *m, int i, const char *p, int D, int cw, int rate, dsv4_compressor *k, char *err,
                           size_t errlen) {
    int d = m->cfg.hidden_size, rc;
    char a[128], b[128], c[128], n[128];
    weight ape;
    snprintf(a, sizeof(a), "%s.wkv.weight", p);
    snprintf(b, sizeof(b), "%s.wgate.weight", p);
    snprintf(c, sizeof(c), "%s.ape", p);
    snprintf(n, sizeof(n), "%s.norm.weight", p);
    if ((rc = layer_mat(m, i, a, NULL, cw, d, &k->wkv, err, errlen)) ||
        (rc = layer_mat(m, i, b, NULL, cw, d, &k->wgate, err, errlen)) ||
        (rc = model__load_matrix(m, layer_name(m, i, c, NULL), rate, cw, &ape, err, errlen)) ||
        (rc = own_f32(m, &ape, &k->ape, err, errlen)) || (rc = layer_vec(m, i, n, NULL, D, &k->norm, err, errlen)))
        return rc;
    return MODEL_OK;
}

/* tid2eid (vocab, top_k) as I64 or I32, every entry an expert id, into an
 * owned int32 copy. */
static int load_tid2eid(model *m, int i, moe_weights *w, char *err, size_t errlen) {
    const char *name = layer_name(m, i, "ffn.gate.tid2eid", "mlp.gate.tid2eid"), *file = NULL;
    const st_tensor *t = model__find_tensor(m, name, &file);
    int V = m->cfg.vocab_size, k = w->top_k;
    if (!t) {
        snprintf(err, errlen, "%s: missing tensor %s", m->dir, name);
        return MODEL_ERR_WEIGHTS;
    }
    if ((t->dt != DTYPE_I64 && t->dt != DTYPE_I32) || t->ndim != 2 || t->shape[0] != V || t->shape[1] != k) {
        snprintf(err, errlen, "%s: tensor %s must be I64 or I32 of shape [%d, %d]", file, name, V, k);
        return MODEL_ERR_WEIGHTS;
    }
    int32_t *ids = (int32_t *)model__own(m, (size_t)V * k); /* an f32 buffer holds int32 as well */
    if (!ids) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    for (size_t j = 0; j < (size_t)V * k; j++) {
        int64_t e;
        if (t->dt == DTYPE_I64) memcpy(&e, (const char *)t->data + j * 8, 8);
        else { int32_t e32; memcpy(&e32, (const char *)t->data + j * 4, 4); e = e32; }
        if (e < 0 || e >= w->n_experts) {
            snprintf(err, errlen, "%s: tensor %s holds expert %lld, outside [0, %d)", file, name, (long long)e,
                     w->n_experts);
            return MODEL_ERR_WEIGHTS;
        }
        ids[j] = (int32_t)e;
    }
    w->tid2eid = ids;
    w->tid_rows = V;
    return MODEL_OK;
}

/* Routed experts, per expert (w1 gate, w3 up, w2 down) or stacked
 * (experts.gate_up_proj [E, 2I, d], experts.down_proj [E, d, I]). */
static int load_experts(model *m, int i, moe_weights *w, char *err, size_t errlen) {
    int d = m->cfg.hidden_size, I = w->inter, E = w->n_experts, rc = MODEL_OK;
    const char *file;
    char a[128], b[128];
    const char *gu = layer_name(m, i, "ffn.experts.gate_up_proj", "mlp.experts.gate_up_proj");
    if (model__find_tensor(m, gu, &file)) {
        char gun[300], dn[300];
        snprintf(gun, sizeof(gun), "%s", gu);
        snprintf(dn, sizeof(dn), "%s", layer_name(m, i, "ffn.experts.down_proj", "mlp.experts.down_proj"));
        for (int e = 0; e < E && !rc; e++)
            if ((rc = model__load_qslice(m, gun, E, e, 2 * I, d, 0, I, &w->gate[e], err, errlen)) ||
                (rc = model__load_qslice(m, gun, E, e, 2 * I, d, I, I, &w->up[e], err, errlen)) ||
                (rc = model__load_qslice(m, dn, E, e, d, I, 0, d, &w->down[e], err, errlen))) {}
        return rc;
    }
    for (int e = 0; e < E && !rc; e++) {
#define X(part, alt) (snprintf(a, sizeof(a), "ffn.experts.%d.%s.weight", e, part), \
                      snprintf(b, sizeof(b), "mlp.experts.%d.%s.weight", e, alt), a), b
        if ((rc = layer_mat(m, i, X("w1", "gate_proj"), I, d, &w->gate[e], err, errlen)) ||
            (rc = layer_mat(m, i, X("w3", "up_proj"), I, d, &w->up[e], err, errlen)) ||
            (rc = layer_mat(m, i, X("w2", "down_proj"), d, I, &w->down[e], err, errlen))) {}
#undef X
    }
    if (rc) return rc;
    snprintf(a, sizeof(a), "ffn.experts.%d.w1.weight", E);
    snprintf(b, sizeof(b), "mlp.experts.%d.gate_proj.weight", E);
    const char *extra = layer_name(m, i, a, b);
    if (model__find_tensor(m, extra, &file)) {
        snprintf(err, errlen, "%s: tensor %s exists but n_routed_experts is %d", file, extra, E);
        return MODEL_ERR_WEIGHTS;
    }
    return MODEL_OK;
}

/* Layer i's router (learned with bias, or hash with tid2eid), experts and
 * shared expert into m->moe[i] (set up by model__dsv4_alloc). */
static int load_moe(model *m, int i, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    moe_weights *w = &m->moe[i];
    int d = c->hidden_size, I = c->moe.inter, rc;
    if ((rc = layer_mat(m, i, "ffn.gate.weight", "mlp.gate.weight", w->n_experts, d, &w->router, err, errlen)) ||
        (rc = w->scoring == MOE_HASH
                  ? load_tid2eid(m, i, w, err, errlen)
                  : layer_vec(m, i, "ffn.gate.bias", "mlp.gate.e_score_correction_bias", w->n_experts, &w->bias, err,
                              errlen)) ||
        (rc = load_experts(m, i, w, err, errlen)) ||
        (rc = layer_mat(m, i, "ffn.shared_experts.w1.weight", "mlp.shared_experts.gate_proj.weight", I, d,
                        &w->sh_gate, err, errlen)) ||
        (rc = layer_mat(m, i, "ffn.shared_experts.w3.weight", "mlp.shared_experts.up_proj.weight", I, d, &w->sh_up,
                        err, errlen)) ||
        (rc = layer_mat(m, i, "ffn.shared_experts.w2.weight", "mlp.shared_experts.down_proj.weight", d, I,
                        &w->sh_down, err, errlen)))
        return rc;
    return MODEL_OK;
}

/* One hyper-connection's fn ((2+N)N, N d), base ((2+N)N), scale (3): release
 * names hc_attn_fn, or transformers' attn_hc.fn. */
static int load_hc(model *m, int i, const char *which, weight *fn, const float **base, const float **scale,
                   char *err, size_t errlen) {
    int N = m->cfg.dsv4.hc_mult, d = m->cfg.hidden_size, n = (2 + N) * N, rc;
    char a[64], b[64];
#define X(part) (snprintf(a, sizeof(a), "hc_%s_%s", which, part), snprintf(b, sizeof(b), "%s_hc.%s", which, part), a), b
    if ((rc = layer_mat(m, i, X("fn"), n, N * d, fn, err, errlen)) ||
        (rc = layer_vec(m, i, X("base"), n, base, err, errlen)) || (rc = layer_vec(m, i, X("scale"), 3, scale, err, errlen)))
        return rc;
#undef X
    return MODEL_OK;
}

/* A V4.1 ratio-1/2 layer's own tensors (dsv41_sparse.py): a kv source's compressor (wkv, wgate at
 * ratio 2, norm; no ape), an index source's wq_b and weights_proj, and where it owns the index keys,
 * wk and k_norm. Other ratio-1/2 layers hold none of them. */
static int load_low(model *m, int i, char *err, size_t errlen) {
    const dsv4_config *v = &m->cfg.dsv4;
    dsv4_layer *Y = &m->dsv4->layers[i];
    int d = m->cfg.hidden_size, D = m->cfg.head_dim, nI = v->index_n_heads, dI = v->index_head_dim, rc;
    bool kv = v->kv_src[i] == i;
    if (kv && ((rc = layer_mat(m, i, "attn.compressor.wkv.weight", NULL, D, d, &Y->comp.wkv, err, errlen)) ||
               (v->rate[i] == 2 &&
                (rc = layer_mat(m, i, "attn.compressor.wgate.weight", NULL, D, d, &Y->comp.wgate, err, errlen))) ||
               (rc = layer_vec(m, i, "attn.compressor.norm.weight", NULL, D, &Y->comp.norm, err, errlen))))
        return rc;
    if (v->idx_src[i] &&
        ((rc = layer_mat(m, i, "attn.indexer.wq_b.weight", NULL, nI * dI, v->q_lora_rank, &Y->iwq_b, err, errlen)) ||
         (rc = layer_mat(m, i, "attn.indexer.weights_proj.weight", NULL, nI, d, &Y->iweights, err, errlen))))
        return rc;
    if (kv && v->idx_src[i] &&
        ((rc = layer_mat(m, i, "attn.indexer.wk.weight", NULL, dI, D, &Y->iwk, err, errlen)) ||
         (rc = layer_vec(m, i, "attn.indexer.k_norm.weight", NULL, dI, &Y->ik_norm, err, errlen))))
        return rc;
    return MODEL_OK;
}

/* V4.1's ratio-1/2 products whose outputs SGLang's fake quantisations or the indexer's top-k read:
 * the compressor's kv and score (pooled, normed, fq_kv'd entries; latents into wk), the index keys'
 * wk and the queries' wq_b (fq4), the head weights (scores ranked). They keep f32 activations
 * everywhere (weight.f32_activations): a bf16 rounding of their input would move quantised values
 * and top-k choices, which no later rounding bound covers. */
void model__dsv4_mark_f32_products(model *m) {
    const dsv4_config *v = &m->cfg.dsv4;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        dsv4_layer *Y = &m->dsv4->layers[i];
        if (v->attn[i] != DSV4_LOW) continue;
        weight *ws[] = {&Y->comp.wkv, &Y->comp.wgate, &Y->iwk, &Y->iwq_b, &Y->iweights};
        for (size_t k = 0; k < sizeof(ws) / sizeof(ws[0]); k++) ws[k]->f32_activations = true;
    }
}

static int load_layer(model *m, int i, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    const dsv4_config *v = &c->dsv4;
    layer_weights *L = &m->layers[i];
    dsv4_layer *Y = &m->dsv4->layers[i];
    int d = c->hidden_size, D = c->head_dim, nh = c->n_heads, Q = v->q_lora_rank, G = v->o_groups;
    int R = v->o_lora_rank, nI = v->index_n_heads, dI = v->index_head_dim, m_rate = v->rate[i], rc;
    if ((rc = layer_vec(m, i, "attn_norm.weight", "input_layernorm.weight", d, &L->attn_norm, err, errlen)) ||
        (rc = layer_vec(m, i, "ffn_norm.weight", "post_attention_layernorm.weight", d, &L->ffn_norm, err, errlen)) ||
        (rc = load_hc(m, i, "attn", &Y->hc_attn_fn, &Y->hc_attn_base, &Y->hc_attn_scale, err, errlen)) ||
        (rc = load_hc(m, i, "ffn", &Y->hc_ffn_fn, &Y->hc_ffn_base, &Y->hc_ffn_scale, err, errlen)) ||
        (rc = layer_mat(m, i, "attn.wq_a.weight", "self_attn.q_a_proj.weight", Q, d, &Y->wq_a, err, errlen)) ||
        (rc = layer_vec(m, i, "attn.q_norm.weight", "self_attn.q_a_norm.weight", Q, &Y->q_norm, err, errlen)) ||
        (rc = layer_mat(m, i, "attn.wq_b.weight", "self_attn.q_b_proj.weight", nh * D, Q, &Y->wq_b, err, errlen)) ||
        (rc = layer_mat(m, i, "attn.wkv.weight", "self_attn.kv_proj.weight", D, d, &Y->wkv, err, errlen)) ||
        (rc = layer_vec(m, i, "attn.kv_norm.weight", "attn.norm.weight", D, &Y->kv_norm, err, errlen)) ||
        (rc = layer_mat(m, i, "attn.wo_a.weight", "self_attn.o_a_proj.weight", G * R, nh * D / G, &Y->wo_a, err,
                        errlen)) ||
        (rc = layer_mat(m, i, "attn.wo_b.weight", "self_attn.o_b_proj.weight", d, G * R, &Y->wo_b, err, errlen)) ||
        (rc = layer_vec(m, i, "attn.attn_sink", "self_attn.sinks", nh, &Y->sinks, err, errlen)))
        return rc;
    if (v->attn[i] == DSV4_HCA && (rc = load_compressor(m, i, "attn.compressor", D, D, m_rate, &Y->comp, err, errlen)))
        return rc;
    if (v->attn[i] == DSV4_CSA &&
        ((rc = load_compressor(m, i, "attn.compressor", D, 2 * D, m_rate, &Y->comp, err, errlen)) ||
         (rc = load_compressor(m, i, "attn.indexer.compressor", dI, 2 * dI, m_rate, &Y->icomp, err, errlen)) ||
         (rc = layer_mat(m, i, "attn.indexer.wq_b.weight", NULL, nI * dI, Q, &Y->iwq_b, err, errlen)) ||
         (rc = layer_mat(m, i, "attn.indexer.weights_proj.weight", NULL, nI, d, &Y->iweights, err, errlen))))
        return rc;
    if (v->attn[i] == DSV4_LOW && (rc = load_low(m, i, err, errlen))) return rc;
    return load_moe(m, i, err, errlen);
}

int model__load_dsv4(model *m, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    int d = c->hidden_size, N = c->dsv4.hc_mult, V = c->vocab_size, rc;
    char buf[300];
    if ((rc = model__dsv4_alloc(m))) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    dsv4_weights *w = m->dsv4;
    if ((rc = load_mat(m, find_name(m, buf, sizeof(buf), NAMES("embed.weight", "embed_tokens.weight")), V, d,
                       &m->embed, err, errlen)) ||
        (rc = model__load_vector(m, find_name(m, buf, sizeof(buf), NAMES("norm.weight")), d, &m->final_norm, err,
                                 errlen)))
        return rc;
    /* V4.1's head collapses with the last hyper-connection's pre: SGLang makes no hc_head then */
    if (!c->dsv4.hc_pre_from_prev &&
        ((rc = load_mat(m, find_name(m, buf, sizeof(buf), NAMES("hc_head_fn", "hc_head.hc_fn")), N, N * d,
                        &w->hc_head_fn, err, errlen)) ||
         (rc = model__load_vector(m, find_name(m, buf, sizeof(buf), NAMES("hc_head_base", "hc_head.hc_base")), N,
                                  &w->hc_head_base, err, errlen)) ||
         (rc = model__load_vector(m, find_name(m, buf, sizeof(buf), NAMES("hc_head_scale", "hc_head.hc_scale")), 1,
                                  &w->hc_head_scale, err, errlen))))
        return rc;
    /* the head is "head.weight" in both namings ("lm_head.weight" in memory), never under model. */
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    else if ((rc = load_mat(m, find_name(m, buf, sizeof(buf), NAMES("head.weight", "lm_head.weight")), V, d,
                            &m->lm_head, err, errlen)))
        return rc;
    for (int i = 0; i < c->n_layers; i++)
        if ((rc = load_layer(m, i, err, errlen))) return rc;
    model__dsv4_mark_f32_products(m);
    return c->engram_v41.n_layers ? model__load_dsv4_engram(m, err, errlen) : MODEL_OK;
}

void model__destroy_dsv4(model *m) {
    if (!m->dsv4) return;
    free(m->dsv4->layers);
    free(m->dsv4);
}

/* ---- the tensor list (synthetic models, parameter and byte counts) ---- */

int model__dsv4_alloc(model *m) {
    const model_config *c = &m->cfg;
    int n = c->n_layers, E = c->moe.n_experts;
    if (!(m->dsv4 = calloc(1, sizeof(*m->dsv4))) || !(m->dsv4->layers = calloc((size_t)n, sizeof(dsv4_layer))) ||
        !(m->moe = calloc((size_t)n, sizeof(moe_weights))))
        return MODEL_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        moe_weights *w = &m->moe[i];
        *w = (moe_weights){.scoring = c->dsv4.hash_moe[i] ? MOE_HASH : MOE_SQRTSOFTPLUS, .n_experts = E,
                           .top_k = c->moe.top_k, .inter = c->moe.inter, .norm_topk = true,
                           .routed_scaling = c->dsv4.routed_scaling, .swiglu_limit = c->dsv4.swiglu_limit,
                           .shared = true};
        if (!(w->gate = calloc((size_t)E * 3, sizeof(weight)))) return MODEL_ERR_NOMEM;
        w->up = w->gate + E;
        w->down = w->up + E;
        m->layers[i].moe = w;
    }
    return MODEL_OK;
}

typedef struct {
    model *m;
    dsv4_visit_fn fn;
    void *ctx;
} walk;

/* The address of a field of p, or NULL when p is (a walk over a config alone). */
#define SLOT(p, field) ((p) ? &(p)->field : NULL)

static void mat(const walk *k, dsv4_store how, int rows, int cols, weight *w, bool per_token, int expert) {
    dsv4_tensor t = {.kind = DSV4_MATRIX, .how = how, .rows = rows, .cols = cols, .w = w, .per_token = per_token,
                     .expert = expert};
    k->fn(k->ctx, &t);
}

/* init: a synthetic model's value for every element, or NAN for random ones. */
static void vec(const walk *k, int rows, int cols, const float **v, float init) {
    dsv4_tensor t = {.kind = DSV4_VECTOR, .how = DSV4_F32, .rows = rows, .cols = cols, .v = v, .init = init,
                     .expert = -1};
    k->fn(k->ctx, &t);
}

/* A hyper-connection: fn ((2+N)N, N d) fp32, base random, scale 1 as initialised. */
static void walk_hc(const walk *k, weight *fn, const float **base, const float **scale) {
    int N = k->m->cfg.dsv4.hc_mult, d = k->m->cfg.hidden_size;
    mat(k, DSV4_F32, (2 + N) * N, N * d, fn, true, -1);
    vec(k, 1, (2 + N) * N, base, NAN);
    vec(k, 1, 3, scale, 1.0f);
}

/* A compressor of width cw over entries of D (CSA: cw = 2 D, ape (m, cw)). */
static void walk_compressor(const walk *k, dsv4_compressor *p, int D, int cw, int rate) {
    int d = k->m->cfg.hidden_size;
    mat(k, DSV4_BF16, cw, d, SLOT(p, wkv), true, -1);
    mat(k, DSV4_BF16, cw, d, SLOT(p, wgate), true, -1);
    vec(k, rate, cw, SLOT(p, ape), NAN);
    vec(k, 1, D, SLOT(p, norm), 1.0f);
}

static void walk_layer(const walk *k, int i) {
    model *m = k->m;
    const model_config *c = &m->cfg;
    const dsv4_config *v = &c->dsv4;
    layer_weights *L = m->layers ? &m->layers[i] : NULL;
    dsv4_layer *Y = m->dsv4 ? &m->dsv4->layers[i] : NULL;
    moe_weights *w = m->moe ? &m->moe[i] : NULL;
    int d = c->hidden_size, D = c->head_dim, nh = c->n_heads, Q = v->q_lora_rank, G = v->o_groups;
    int R = v->o_lora_rank, nI = v->index_n_heads, dI = v->index_head_dim, E = c->moe.n_experts, I = c->moe.inter;
    vec(k, 1, d, SLOT(L, attn_norm), 1.0f);
    vec(k, 1, d, SLOT(L, ffn_norm), 1.0f);
    walk_hc(k, SLOT(Y, hc_attn_fn), SLOT(Y, hc_attn_base), SLOT(Y, hc_attn_scale));
    walk_hc(k, SLOT(Y, hc_ffn_fn), SLOT(Y, hc_ffn_base), SLOT(Y, hc_ffn_scale));
    mat(k, DSV4_FP8, Q, d, SLOT(Y, wq_a), true, -1);
    vec(k, 1, Q, SLOT(Y, q_norm), 1.0f);
    mat(k, DSV4_FP8, nh * D, Q, SLOT(Y, wq_b), true, -1);
    mat(k, DSV4_FP8, D, d, SLOT(Y, wkv), true, -1);
    vec(k, 1, D, SLOT(Y, kv_norm), 1.0f);
    mat(k, DSV4_FP8, G * R, nh * D / G, SLOT(Y, wo_a), true, -1);
    mat(k, DSV4_FP8, d, G * R, SLOT(Y, wo_b), true, -1);
    vec(k, 1, nh, SLOT(Y, sinks), NAN);
    if (v->attn[i] == DSV4_LOW) { /* load_low's tensors */
        bool kv = v->kv_src[i] == i;
        if (kv) {
            mat(k, DSV4_BF16, D, d, SLOT(Y, comp.wkv), true, -1);
            if (v->rate[i] == 2) mat(k, DSV4_BF16, D, d, SLOT(Y, comp.wgate), true, -1);
            vec(k, 1, D, SLOT(Y, comp.norm), 1.0f);
        }
        if (v->idx_src[i]) {
            mat(k, DSV4_FP8, nI * dI, Q, SLOT(Y, iwq_b), true, -1);
            mat(k, DSV4_BF16, nI, d, SLOT(Y, iweights), true, -1);
        }
        if (kv && v->idx_src[i]) {
            mat(k, DSV4_BF16, dI, D, SLOT(Y, iwk), true, -1);
            vec(k, 1, dI, SLOT(Y, ik_norm), 1.0f);
        }
    } else if (v->attn[i] != DSV4_SLIDING) {
        bool csa = v->attn[i] == DSV4_CSA;
        walk_compressor(k, SLOT(Y, comp), D, csa ? 2 * D : D, v->rate[i]);
        if (csa) {
            walk_compressor(k, SLOT(Y, icomp), dI, 2 * dI, v->rate[i]);
            mat(k, DSV4_FP8, nI * dI, Q, SLOT(Y, iwq_b), true, -1);
            mat(k, DSV4_BF16, nI, d, SLOT(Y, iweights), true, -1);
        }
    }
    mat(k, DSV4_BF16, E, d, SLOT(w, router), true, -1);
    if (v->hash_moe[i]) {
        dsv4_tensor t = {.kind = DSV4_IDS, .how = DSV4_I32, .rows = c->vocab_size, .cols = c->moe.top_k,
                         .ids = SLOT(w, tid2eid), .tid_rows = SLOT(w, tid_rows), .expert = -1};
        k->fn(k->ctx, &t);
    } else {
        vec(k, 1, E, SLOT(w, bias), NAN);
    }
    for (int e = 0; e < E; e++) {
        bool on = w && w->gate;
        mat(k, DSV4_FP4, I, d, on ? &w->gate[e] : NULL, false, e);
        mat(k, DSV4_FP4, I, d, on ? &w->up[e] : NULL, false, e);
        mat(k, DSV4_FP4, d, I, on ? &w->down[e] : NULL, false, e);
    }
    mat(k, DSV4_FP8, I, d, SLOT(w, sh_gate), true, -1);
    mat(k, DSV4_FP8, I, d, SLOT(w, sh_up), true, -1);
    mat(k, DSV4_FP8, d, I, SLOT(w, sh_down), true, -1);
}

void model__dsv4_walk(model *m, dsv4_visit_fn fn, void *ctx) {
    const model_config *c = &m->cfg;
    int d = c->hidden_size, N = c->dsv4.hc_mult, V = c->vocab_size;
    dsv4_weights *w = m->dsv4;
    walk k = {m, fn, ctx};
    mat(&k, DSV4_BF16, V, d, &m->embed, false, -1); /* a token reads one row */
    if (!c->tie_word_embeddings) mat(&k, DSV4_BF16, V, d, &m->lm_head, true, -1);
    vec(&k, 1, d, &m->final_norm, 1.0f);
    if (!c->dsv4.hc_pre_from_prev) {
        mat(&k, DSV4_F32, N, N * d, SLOT(w, hc_head_fn), true, -1);
        vec(&k, 1, N, SLOT(w, hc_head_base), NAN);
        vec(&k, 1, 1, SLOT(w, hc_head_scale), 1.0f);
    }
    for (int i = 0; i < c->n_layers; i++) walk_layer(&k, i);
}

/* Counting visitors: over the config (every tensor's stated shape), or over
 * the weights in place (a matrix that was never set counts 0). */
typedef struct {
    int64_t n;
    bool placed;
} param_sum;

static void count_param(void *ctx, const dsv4_tensor *t) {
    param_sum *s = ctx;
    if (t->kind == DSV4_IDS) return; /* tid2eid is a frozen table, not a parameter */
    if (!s->placed) s->n += (int64_t)t->rows * t->cols;
    else if (t->kind == DSV4_MATRIX) s->n += (int64_t)t->w->rows * t->w->cols;
    else s->n += *t->v ? (int64_t)t->rows * t->cols : 0;
}

int64_t model__dsv4_param_count(const model_config *c) {
    model m = {.cfg = *c}; /* no tensors: the walk hands out no slots, only shapes */
    param_sum s = {0, false};
    model__dsv4_walk(&m, count_param, &s);
    return s.n;
}

int64_t model__dsv4_model_param_count(const model *m) {
    param_sum s = {0, true};
    model__dsv4_walk((model *)m, count_param, &s); /* the visitor only reads */
    return s.n;
}

typedef struct {
    size_t bytes;
    int top_k;
} byte_sum;

/* As stored (FP4 half a byte, plus scales): the matrices every token reads,
 * and top_k experts of each layer (all of one size: expert 0's, k times). */
static void count_bytes(void *ctx, const dsv4_tensor *t) {
    byte_sum *s = ctx;
    if (t->kind != DSV4_MATRIX) return; /* vectors: a few KB per layer */
    if (t->per_token) s->bytes += model_weight_bytes(t->w);
    else if (t->expert == 0) s->bytes += (size_t)s->top_k * model_weight_bytes(t->w);
}

size_t model__dsv4_bytes_per_token(const model *m) {
    byte_sum s = {0, m->cfg.moe.top_k};
    model__dsv4_walk((model *)m, count_bytes, &s); /* the visitor only reads */
    return s.bytes;
}
