/* Checkpoint loading: config.json -> model_config, safetensors -> weights.
 * Everything read from disk is untrusted: every key is checked for type and
 * range, every tensor for presence, dtype and exact shape, and each failure
 * is one line naming the file and the key or tensor. */
#include "engine/model/model.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/model/model_internal.h"
#include "engine/model/dtype.h"
#include "base/util.h"

const char *model_status_str(int status) {
    switch (status) {
    case MODEL_OK: return "ok";
    case MODEL_ERR_IO: return "checkpoint file missing or unreadable";
    case MODEL_ERR_CONFIG: return "bad or unsupported config.json";
    case MODEL_ERR_WEIGHTS: return "bad or missing tensor";
    case MODEL_ERR_NOMEM: return "out of memory";
    }
    return "unknown status";
}

/* ---- config.json ---- */

#define CFG_FAIL(...)                                                                              \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        rc = MODEL_ERR_CONFIG;                                                                     \
        goto done;                                                                                 \
    } while (0)

static const struct {
    const char *arch, *model_type;
    model_arch id;
} known_archs[] = {
    {"LlamaForCausalLM", "llama", ARCH_LLAMA},
    {"Qwen2ForCausalLM", "qwen2", ARCH_QWEN2},
    {"Qwen3ForCausalLM", "qwen3", ARCH_QWEN3},
    {"MistralForCausalLM", "mistral", ARCH_MISTRAL},
    {"Qwen3MoeForCausalLM", "qwen3_moe", ARCH_QWEN3_MOE},
    {"DeepseekV4ForCausalLM", "deepseek_v4", ARCH_DEEPSEEK_V4},
};

/* Rope settings from either transformers-5 rope_parameters or the classic
 * rope_theta + rope_scaling keys. */
static int parse_rope(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rp && !cJSON_IsNull(rp) && !cJSON_IsObject(rp)) {
        snprintf(err, errlen, "%s: key rope_parameters must be an object", label);
        return -1;
    }
    if (sc && !cJSON_IsNull(sc) && !cJSON_IsObject(sc)) {
        snprintf(err, errlen, "%s: key rope_scaling must be an object or null", label);
        return -1;
    }
    const cJSON *params = cJSON_IsObject(rp) ? rp : (cJSON_IsObject(sc) ? sc : NULL);
    double theta;
    if (model__get_num(root, "rope_theta", 10000.0, 1e-3, 1e12, &theta, label, err, errlen)) return -1;
    if (cJSON_IsObject(rp) &&
        model__get_num(rp, "rope_theta", theta, 1e-3, 1e12, &theta, label, err, errlen))
        return -1;
    c->rope_theta = theta;
    c->rope = ROPE_DEFAULT;
    if (!params) return 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(params, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(params, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "default";
    if (t && !cJSON_IsString(t)) {
        snprintf(err, errlen, "%s: rope_type must be a string", label);
        return -1;
    }
    if (strcmp(type, "default") == 0) return 0;
    if (model__get_num(params, "factor", 1.0, 1e-6, 1e6, &c->rope_factor, label, err, errlen)) return -1;
    if (strcmp(type, "linear") == 0) {
        c->rope = ROPE_LINEAR;
        return 0;
    }
    if (strcmp(type, "llama3") == 0) {
        c->rope = ROPE_LLAMA3;
        int omp = 0;
        if (model__get_num(params, "low_freq_factor", 1.0, 1e-6, 1e6, &c->rope_low_freq_factor, label, err, errlen) ||
            model__get_num(params, "high_freq_factor", 4.0, 1e-6, 1e6, &c->rope_high_freq_factor, label, err, errlen) ||
            model__get_int(params, "original_max_position_embeddings", INT32_MIN, 1, 1 << 26, &omp, label, err, errlen))
            return -1;
        if (c->rope_high_freq_factor <= c->rope_low_freq_factor) {
            snprintf(err, errlen, "%s: llama3 rope needs high_freq_factor > low_freq_factor", label);
            return -1;
        }
        c->rope_original_max_pos = omp;
        return 0;
    }
    snprintf(err, errlen, "%s: rope_type %s is not supported (default, linear, llama3)", label, type);
    return -1;
}

/* eos_token_id: an id or a list of ids, each in the vocabulary (vocab_size
 * already read). One outside it would never stop a generation: refused,
 * never dropped. Returns 0, or MODEL_ERR_CONFIG with a message in err. */
static int parse_eos(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    int rc = MODEL_OK;
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (!eos || cJSON_IsNull(eos)) return MODEL_OK;
    bool list = cJSON_IsArray(eos);
    if (!list && !cJSON_IsNumber(eos)) CFG_FAIL("%s: key eos_token_id must be a token id or a list of them", label);
    if (list && cJSON_GetArraySize(eos) > MODEL_MAX_EOS)
        CFG_FAIL("%s: key eos_token_id lists %d ids, more than the %d supported", label, cJSON_GetArraySize(eos),
                 MODEL_MAX_EOS);
    for (const cJSON *e = list ? eos->child : eos; e; e = list ? e->next : NULL) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!cJSON_IsNumber(e) || v != floor(v)) CFG_FAIL("%s: key eos_token_id must hold integer token ids", label);
        if (v < 0 || v >= c->vocab_size)
            CFG_FAIL("%s: eos_token_id %.0f is outside the vocabulary (vocab_size %d)", label, v, c->vocab_size);
        c->eos_token_ids[c->n_eos++] = (int)v;
    }
done:
    return rc;
}

int model_config_parse(const char *json, size_t len, const char *label, model_config *c, char *err,
                       size_t errlen) {
    int rc = MODEL_OK;
    memset(c, 0, sizeof(*c));
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) CFG_FAIL("%s: not a JSON object", label);
    if (model__parse_quant_config(root, c, label, err, errlen)) {
        rc = MODEL_ERR_CONFIG;
        goto done;
    }

    /* Architecture: architectures[0], else model_type. */
    const char *arch = NULL, *mtype = NULL;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (cJSON_IsArray(archs) && cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
        arch = cJSON_GetArrayItem(archs, 0)->valuestring;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (cJSON_IsString(mt)) mtype = mt->valuestring;
    int found = -1;
    for (size_t i = 0; i < sizeof(known_archs) / sizeof(known_archs[0]); i++)
        if ((arch && strcmp(arch, known_archs[i].arch) == 0) ||
            (!arch && mtype && strcmp(mtype, known_archs[i].model_type) == 0))
            found = (int)i;
    if (found < 0)
        CFG_FAIL("%s: unsupported architecture %s (supported: LlamaForCausalLM, Qwen2ForCausalLM, "
                 "Qwen3ForCausalLM, MistralForCausalLM, Qwen3MoeForCausalLM, DeepseekV4ForCausalLM)",
                 label, arch ? arch : mtype ? mtype : "(none: no architectures or model_type)");
    c->arch = known_archs[found].id;
    if (c->arch == ARCH_DEEPSEEK_V4) { /* its own keys (model_dsv4.c), then the shared token ids */
        if (model__parse_dsv4_config(root, c, label, err, errlen)) {
            rc = MODEL_ERR_CONFIG;
            goto done;
        }
        goto token_ids;
    }

    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !(cJSON_IsString(act) && (strcmp(act->valuestring, "silu") == 0 ||
                                         strcmp(act->valuestring, "swish") == 0)))
        CFG_FAIL("%s: key hidden_act must be \"silu\"", label);

    const int R = INT32_MIN; /* required */
    if (model__get_int(root, "vocab_size", R, 1, 1 << 24, &c->vocab_size, label, err, errlen) ||
        model__get_int(root, "hidden_size", R, 1, 1 << 16, &c->hidden_size, label, err, errlen) ||
        model__get_int(root, "intermediate_size", R, 1, 1 << 20, &c->intermediate_size, label, err, errlen) ||
        model__get_int(root, "num_hidden_layers", R, 1, 1024, &c->n_layers, label, err, errlen) ||
        model__get_int(root, "num_attention_heads", R, 1, 1024, &c->n_heads, label, err, errlen) ||
        model__get_int(root, "num_key_value_heads", c->n_heads, 1, 1024, &c->n_kv_heads, label, err, errlen) ||
        model__get_int(root, "max_position_embeddings", 4096, 1, 1 << 26, &c->max_position_embeddings, label, err, errlen)) {
        rc = MODEL_ERR_CONFIG;
        goto done;
    }
    if (c->n_heads % c->n_kv_heads != 0)
        CFG_FAIL("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", label,
                 c->n_heads, c->n_kv_heads);
    int hd_default = c->hidden_size % c->n_heads == 0 ? c->hidden_size / c->n_heads : R;
    if (model__get_int(root, "head_dim", hd_default, 2, 1024, &c->head_dim, label, err, errlen)) {
        rc = MODEL_ERR_CONFIG;
        goto done;
    }
    if (c->head_dim % 2) CFG_FAIL("%s: key head_dim must be even for rope", label);
    double eps, prf;
    if (model__get_num(root, "rms_norm_eps", 1e-6, 1e-30, 1.0, &eps, label, err, errlen) ||
        model__get_num(root, "partial_rotary_factor", 1.0, 0.0, 1.0, &prf, label, err, errlen)) {
        rc = MODEL_ERR_CONFIG;
        goto done;
    }
    if (prf != 1.0) CFG_FAIL("%s: partial_rotary_factor != 1 is not supported", label);
    c->rms_norm_eps = (float)eps;
    if (parse_rope(root, c, label, err, errlen)) {
        rc = MODEL_ERR_CONFIG;
        goto done;
    }

    bool attn_bias, mlp_bias, use_sw;
    if (model__get_bool(root, "attention_bias", false, &attn_bias, label, err, errlen) ||
        model__get_bool(root, "mlp_bias", false, &mlp_bias, label, err, errlen) ||
        model__get_bool(root, "tie_word_embeddings", false, &c->tie_word_embeddings, label, err, errlen) ||
        model__get_bool(root, "use_sliding_window", false, &use_sw, label, err, errlen)) {
        rc = MODEL_ERR_CONFIG;
        goto done;
    }
    c->qkv_bias = attn_bias || c->arch == ARCH_QWEN2; /* Qwen2 always has q/k/v biases */
    c->o_bias = attn_bias && c->arch != ARCH_QWEN2;
    c->mlp_bias = mlp_bias && c->arch == ARCH_LLAMA;
    c->qk_norm = c->arch == ARCH_QWEN3 || c->arch == ARCH_QWEN3_MOE;
    if (c->arch == ARCH_MISTRAL) {
        if (model__get_int(root, "sliding_window", 0, 1, 1 << 26, &c->sliding_window, label, err, errlen)) {
            rc = MODEL_ERR_CONFIG;
            goto done;
        }
    } else if (use_sw) {
        CFG_FAIL("%s: use_sliding_window is not supported for this architecture", label);
    }

token_ids:
    c->bos_token_id = -1;
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    if (cJSON_IsNumber(bos) && bos->valuedouble >= 0 && bos->valuedouble < c->vocab_size)
        c->bos_token_id = (int)bos->valuedouble;
    if (parse_eos(root, c, label, err, errlen)) {
        rc = MODEL_ERR_CONFIG;
        goto done;
    }
    if (c->arch != ARCH_DEEPSEEK_V4 && (model__parse_moe_config(root, c, label, err, errlen) ||
                                        model__parse_engram_config(root, c, label, err, errlen)))
        rc = MODEL_ERR_CONFIG;
done:
    cJSON_Delete(root);
    return rc;
}

/* ---- weights: the checkpoint's files, the layers, the load ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Appends a copy of name to the growing array *names (*n used, *cap allocated). */
static int push_name(char ***names, int *n, int *cap, const char *name) {
    if (*n == *cap) {
        int c = *cap ? 2 * *cap : 16;
        char **p = realloc(*names, (size_t)c * sizeof(char *));
        if (!p) return MODEL_ERR_NOMEM;
        *names = p;
        *cap = c;
    }
    if (!((*names)[*n] = strdup(name))) return MODEL_ERR_NOMEM;
    (*n)++;
    return MODEL_OK;
}

/* Lists the safetensors files to open: those of the index, else every
 * *.safetensors in the directory, sorted. */
static int list_files(const char *dir, char ***names, int *n, char *err, size_t errlen) {
    char path[4096];
    *names = NULL;
    *n = 0;
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    size_t len;
    char *text = util_read_file(path, 64u << 20, &len, err, errlen);
    int cap = 0, rc = MODEL_OK;
    if (text) {
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        if (!cJSON_IsObject(wm)) {
            snprintf(err, errlen, "%s: no weight_map object", path);
            cJSON_Delete(root);
            return MODEL_ERR_CONFIG;
        }
        for (const cJSON *e = wm->child; e; e = e->next) {
            if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || e->valuestring[0] == '.') {
                snprintf(err, errlen, "%s: weight_map entry %s is not a file name in the directory", path,
                         e->string ? e->string : "?");
                rc = MODEL_ERR_CONFIG;
                break;
            }
            bool seen = false;
            for (int i = 0; i < *n && !seen; i++) seen = strcmp((*names)[i], e->valuestring) == 0;
            if (seen) continue;
            if ((rc = push_name(names, n, &cap, e->valuestring))) break;
        }
        cJSON_Delete(root);
    } else {
        DIR *d = opendir(dir);
        if (!d) {
            snprintf(err, errlen, "%s: cannot open the checkpoint directory", dir);
            return MODEL_ERR_IO;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
            size_t l = strlen(de->d_name);
            if (l <= 12 || strcmp(de->d_name + l - 12, ".safetensors") != 0) continue;
            if ((rc = push_name(names, n, &cap, de->d_name))) break;
        }
        closedir(d);
        if (rc == MODEL_OK && *n == 0) {
            snprintf(err, errlen, "%s: no *.safetensors files", dir);
            rc = MODEL_ERR_IO;
        }
    }
    if (rc == MODEL_ERR_NOMEM) snprintf(err, errlen, "out of memory");
    if (*n > 1) qsort(*names, (size_t)*n, sizeof(char *), cmp_str);
    return rc;
}

static int load_layer(model *m, int i, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    layer_weights *L = &m->layers[i];
    int d = c->hidden_size, hd = c->head_dim, q = c->n_heads * hd, kv = c->n_kv_heads * hd;
    int ff = c->intermediate_size;
    char n[256];
    int rc;
#define P(suffix) (snprintf(n, sizeof(n), "model.layers.%d.%s", i, suffix), n)
    if ((rc = model__load_vector(m, P("input_layernorm.weight"), d, &L->attn_norm, err, errlen)) ||
        (rc = model__load_matrix(m, P("self_attn.q_proj.weight"), q, d, &L->wq, err, errlen)) ||
        (rc = model__load_matrix(m, P("self_attn.k_proj.weight"), kv, d, &L->wk, err, errlen)) ||
        (rc = model__load_matrix(m, P("self_attn.v_proj.weight"), kv, d, &L->wv, err, errlen)) ||
        (rc = model__load_matrix(m, P("self_attn.o_proj.weight"), d, q, &L->wo, err, errlen)) ||
        (rc = model__load_vector(m, P("post_attention_layernorm.weight"), d, &L->ffn_norm, err, errlen)))
        return rc;
    if (c->moe.layer_moe[i]) {
        if ((rc = model__load_moe_layer(m, i, err, errlen))) return rc;
    } else if ((rc = model__load_matrix(m, P("mlp.gate_proj.weight"), ff, d, &L->w_gate, err, errlen)) ||
        (rc = model__load_matrix(m, P("mlp.up_proj.weight"), ff, d, &L->w_up, err, errlen)) ||
        (rc = model__load_matrix(m, P("mlp.down_proj.weight"), d, ff, &L->w_down, err, errlen)))
        return rc;
    if (c->qkv_bias &&
        ((rc = model__load_vector(m, P("self_attn.q_proj.bias"), q, &L->bq, err, errlen)) ||
         (rc = model__load_vector(m, P("self_attn.k_proj.bias"), kv, &L->bk, err, errlen)) ||
         (rc = model__load_vector(m, P("self_attn.v_proj.bias"), kv, &L->bv, err, errlen))))
        return rc;
    if (c->o_bias && (rc = model__load_vector(m, P("self_attn.o_proj.bias"), d, &L->bo, err, errlen)))
        return rc;
    if (c->qk_norm &&
        ((rc = model__load_vector(m, P("self_attn.q_norm.weight"), hd, &L->q_norm, err, errlen)) ||
         (rc = model__load_vector(m, P("self_attn.k_norm.weight"), hd, &L->k_norm, err, errlen))))
        return rc;
    if (c->mlp_bias &&
        ((rc = model__load_vector(m, P("mlp.gate_proj.bias"), ff, &L->b_gate, err, errlen)) ||
         (rc = model__load_vector(m, P("mlp.up_proj.bias"), ff, &L->b_up, err, errlen)) ||
         (rc = model__load_vector(m, P("mlp.down_proj.bias"), d, &L->b_down, err, errlen))))
        return rc;
#undef P
    return MODEL_OK;
}

int model_load(const char *dir, model **out, char *err, size_t errlen) {
    return model_load_ex(dir, 0, out, err, errlen);
}

int model_load_ex(const char *dir, size_t weight_align, model **out, char *err, size_t errlen) {
    *out = NULL;
    model *m = calloc(1, sizeof(*m));
    if (!m || !(m->dir = strdup(dir))) {
        free(m);
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    char path[4096];
    char **names = NULL;
    int n_names = 0, rc;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    size_t len;
    char *text = util_read_file(path, 16u << 20, &len, err, errlen);
    if (!text) {
        rc = MODEL_ERR_IO;
        goto fail;
    }
    rc = model_config_parse(text, len, path, &m->cfg, err, errlen);
    free(text);
    if (rc) goto fail;

    if ((rc = list_files(dir, &names, &n_names, err, errlen))) goto fail;
    m->files = calloc((size_t)n_names, sizeof(safetensors *));
    if (!m->files) {
        rc = MODEL_ERR_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n_names; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        int st = safetensors_open_ex(path, weight_align, &m->files[m->n_files], err, errlen);
        if (st != ST_OK) {
            rc = st == ST_ERR_IO ? MODEL_ERR_IO : st == ST_ERR_NOMEM ? MODEL_ERR_NOMEM : MODEL_ERR_WEIGHTS;
            goto fail;
        }
        m->n_files++;
    }

    const model_config *c = &m->cfg;
    m->layers = calloc((size_t)c->n_layers, sizeof(layer_weights));
    if (!m->layers) {
        rc = MODEL_ERR_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (c->arch == ARCH_DEEPSEEK_V4) { /* its own names and tensors (model_dsv4.c) */
        if ((rc = model__load_dsv4(m, err, errlen))) goto fail;
        goto loaded;
    }
    if ((rc = model__load_matrix(m, "model.embed_tokens.weight", c->vocab_size, c->hidden_size, &m->embed, err, errlen)) ||
        (rc = model__load_vector(m, "model.norm.weight", c->hidden_size, &m->final_norm, err, errlen)))
        goto fail;
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    else if ((rc = model__load_matrix(m, "lm_head.weight", c->vocab_size, c->hidden_size, &m->lm_head, err, errlen)))
        goto fail;
    if (c->moe.n_experts && !(m->moe = calloc((size_t)c->n_layers, sizeof(moe_weights)))) {
        rc = MODEL_ERR_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->n_layers; i++)
        if ((rc = load_layer(m, i, err, errlen))) goto fail;
    if (c->engram.present && (rc = model__load_engram(m, err, errlen))) goto fail;
loaded:

    for (int i = 0; i < n_names; i++) free(names[i]);
    free(names);
    *out = m;
    return MODEL_OK;
fail:
    for (int i = 0; i < n_names; i++) free(names[i]);
    free(names);
    model_destroy(m);
    return rc;
}

void model_destroy(model *m) {
    if (!m) return;
    if (m->parent) { /* a tensor-parallel slice (model_tp.c): the rest is its parent's */
        for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
        free(m->owned);
        free(m->layers);
        model__destroy_dsv4(m); /* its own, or NULL */
        free(m);
        return;
    }
    for (int i = 0; i < m->n_files; i++) safetensors_destroy(m->files[i]);
    free(m->files);
    model__destroy_engram(m->engram);
    model__destroy_moe(m);
    model__destroy_dsv4(m);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->dir);
    if (m->synth) munmap(m->synth, m->synth_bytes);
    free(m);
}

int model_sampling_vocab(const model *m) {
    int v = m->cfg.vocab_size;
    if (m->engram && m->engram->lookup_n < v) v = (int)m->engram->lookup_n;
    return v;
}

static size_t wbytes(const weight *w) { return model_weight_bytes(w); } /* as stored: FP4 half a byte */

size_t model_weight_bytes_per_token(const model *m) {
    if (m->cfg.arch == ARCH_DEEPSEEK_V4) return model__dsv4_bytes_per_token(m);
    size_t b = wbytes(&m->lm_head);
    for (int i = 0; i < m->cfg.n_layers; i++) {
        const layer_weights *L = &m->layers[i];
        b += wbytes(&L->wq) + wbytes(&L->wk) + wbytes(&L->wv) + wbytes(&L->wo);
        if (L->moe) /* the router and the top_k experts a token uses (all of one size) */
            b += wbytes(&L->moe->router) +
                 (size_t)L->moe->top_k * (wbytes(&L->moe->gate[0]) + wbytes(&L->moe->up[0]) + wbytes(&L->moe->down[0]));
        else
            b += wbytes(&L->w_gate) + wbytes(&L->w_up) + wbytes(&L->w_down);
    }
    return b;
}

int64_t model_config_param_count(const model_config *c) {
    if (c->arch == ARCH_DEEPSEEK_V4) return model__dsv4_param_count(c);
    int64_t d = c->hidden_size, hd = c->head_dim, q = (int64_t)c->n_heads * hd, kv = (int64_t)c->n_kv_heads * hd;
    int64_t ff = c->intermediate_size;
    int64_t layer = d * q + 2 * d * kv + q * d + 2 * d; /* q k v o, two norms */
    if (c->qkv_bias) layer += q + 2 * kv;
    if (c->o_bias) layer += d;
    if (c->qk_norm) layer += 2 * hd;
    int64_t n_moe = 0, E = c->moe.n_experts;
    for (int i = 0; i < c->n_layers; i++) n_moe += c->moe.layer_moe[i];
    int64_t mlp = (3 * d * ff + (c->mlp_bias ? 2 * ff + d : 0)) * (c->n_layers - n_moe);
    int64_t experts = (E * d + E * 3 * d * (int64_t)c->moe.inter) * n_moe; /* router, gate up down each */
    int64_t emb = (int64_t)c->vocab_size * d;
    return emb * (c->tie_word_embeddings ? 1 : 2) + layer * c->n_layers + mlp + experts + d;
}

static int64_t welems(const weight *w) { return (int64_t)w->rows * w->cols; }

int64_t model_param_count(const model *m) {
    if (m->cfg.arch == ARCH_DEEPSEEK_V4) return model__dsv4_model_param_count(m);
    const model_config *c = &m->cfg;
    int64_t d = c->hidden_size, hd = c->head_dim, ff = c->intermediate_size;
    int64_t n = welems(&m->embed) + (m->lm_head.data == m->embed.data ? 0 : welems(&m->lm_head)) + d;
    for (int i = 0; i < c->n_layers; i++) {
        const layer_weights *L = &m->layers[i];
        n += welems(&L->wq) + welems(&L->wk) + welems(&L->wv) + welems(&L->wo) + 2 * d;
        if (L->moe) {
            n += welems(&L->moe->router);
            for (int e = 0; e < L->moe->n_experts; e++)
                n += welems(&L->moe->gate[e]) + welems(&L->moe->up[e]) + welems(&L->moe->down[e]);
        } else {
            n += welems(&L->w_gate) + welems(&L->w_up) + welems(&L->w_down);
        }
        if (L->bq) n += L->wq.rows + L->wk.rows + L->wv.rows;
        if (L->bo) n += d;
        if (L->b_gate) n += 2 * ff + d;
        if (L->q_norm) n += 2 * hd;
    }
    return n;
}
