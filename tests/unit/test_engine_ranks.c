/* The engine over several ranks (engine/ranks.h; engine_params
 * tensor_parallel_size, expert_parallel_size), on the CPU fake of the
 * collectives: the same requests through engine_create/engine_submit on one
 * rank and on W ranks give the same tokens and logprobs, bit for bit, and
 * the golden prompt's greedy tokens are transformers' (golden.json). The
 * workload makes every feature the ranks must mirror happen: chunked prefill
 * (5-token chunks), a KV cache of 10 blocks for 12 concurrent requests
 * (preemption by recompute), prompts sharing their starts and one prompt run
 * twice alone (prefix-cache hits), a cancelled request, greedy rows with and
 * without biases and seeded sampled rows; with sampling on the backend too
 * (sample_argmax and sample over rank 0's logits). Models: llama3 (2 and 4
 * ranks), Qwen3-MoE (experts over 2 ranks, over the tensor-parallel group,
 * and over 4 ranks beside 2-way tensor parallelism), DeepSeek-V4 (output
 * groups and experts) and qwen3_engram (its text and Engram gates). Also the
 * sizes a model refuses, through engine_create. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "base/buf.h"
#include "base/util.h"

#define N_REQ 12
#define N_OUT 10
#define GOLDEN_OUT 24
#define MAX_PROMPT 64

/* A fixture's golden.json: transformers' prompt and greedy tokens. */
typedef struct {
    int32_t prompt[MAX_PROMPT], greedy[GOLDEN_OUT];
    int n_prompt;
} golden;

static void fixture_dir(const char *name, char *dir, size_t n) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(dir, n, "%s/tests/fixtures/models/%s", src ? src : ".", name);
}

static golden load_golden(const char *name) {
    char dir[512], path[600];
    fixture_dir(name, dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/golden.json", dir);
    size_t len;
    char err[256];
    char *text = util_read_file(path, 1 << 20, &len, err, sizeof(err));
    ck_assert_msg(text, "%s", err);
    cJSON *j = cJSON_Parse(text);
    free(text);
    golden g = {0};
    const cJSON *p = cJSON_GetObjectItem(j, "prompt_ids"), *o = cJSON_GetObjectItem(j, "greedy_ids");
    ck_assert(cJSON_GetArraySize(p) <= MAX_PROMPT && cJSON_GetArraySize(o) == GOLDEN_OUT);
    g.n_prompt = cJSON_GetArraySize(p);
    for (int i = 0; i < g.n_prompt; i++) g.prompt[i] = (int32_t)cJSON_GetArrayItem(p, i)->valueint;
    for (int i = 0; i < GOLDEN_OUT; i++) g.greedy[i] = (int32_t)cJSON_GetArrayItem(o, i)->valueint;
    cJSON_Delete(j);
    return g;
}

static engine *make(const char *name, int tp, int ep, int sample_on_backend, char *err, size_t errlen, int *rc) {
    char dir[512];
    fixture_dir(name, dir, sizeof(dir));
    engine_params p = engine_default_params();
    p.model_dir = dir;
    p.device = "cpu";
    p.threads = 2;
    p.prefill_chunk = 5;
    p.max_num_batched_tokens = 24;
    p.max_num_seqs = 8;
    p.kv_cache_tokens = 80; /* 10 blocks: 12 requests of up to 54 positions must take turns */
    p.kv_block_size = 8;
    p.sample_on_backend = sample_on_backend;
    p.tensor_parallel_size = tp;
    p.expert_parallel_size = ep;
    engine *e = NULL;
    *rc = engine_create(&p, &e, err, errlen);
    return e;
}

/* What a request gave: its ids and logprobs (with logprobs asked for), its text, its finish. */
typedef struct {
    engine_logprob lp[GOLDEN_OUT];
    int n;
    char *text;
    engine_finish fin;
} outcome;

static outcome wait_end(engine_request *r) {
    outcome o = {0};
    strbuf t = {0};
    for (;;) {
        engine_output out;
        if (!engine_request_read(r, &out, NULL, NULL)) {
            nanosleep(&(struct timespec){0, 200000}, NULL);
            continue;
        }
        if (out.len) ck_assert_int_eq(strbuf_add(&t, out.text, out.len), 0);
        free(out.text);
        if (out.finish == ENGINE_FINISH_NONE) continue;
        o.fin = out.finish;
        o.n = out.n_generated;
        break;
    }
    const engine_logprob *lp = engine_request_logprobs(r);
    if (lp) memcpy(o.lp, lp, (size_t)o.n * sizeof(*lp));
    o.text = t.s ? strbuf_take(&t) : strdup("");
    return o;
}

/* Request i: a prefix of the golden prompt repeated (so prompts share their
 * starts), 5..44 tokens; greedy (i % 3 == 0), greedy with a bias (1), or
 * sampled with seed i (2). With logprobs unless `text` (the ids are then
 * the text's, on a model with a tokenizer). */
static engine_request_params request(const golden *g, int i, int32_t *ids, bool text) {
    int n = 5 + (7 * i) % 40;
    for (int k = 0; k < n; k++) ids[k] = g->prompt[k % g->n_prompt];
    static const int32_t bias_id[1] = {7};
    static const float bias_val[1] = {2.5f};
    engine_request_params p = {.prompt = ids, .n_prompt = n, .max_tokens = N_OUT, .ignore_eos = true};
    p.sampling = sampler_default_params();
    p.sampling.temperature = i % 3 == 2 ? 0.9f : 0;
    p.sampling.seed = (uint64_t)i;
    if (i % 3 == 1) p.bias_ids = bias_id, p.bias_vals = bias_val, p.n_bias = 1;
    p.logprobs = !text;
    p.top_logprobs = text ? 0 : 2;
    return p;
}

/* The golden prompt alone, greedy, with logprobs. */
static outcome run_golden(engine *e, const golden *g) {
    engine_request_params p = {.prompt = g->prompt, .n_prompt = g->n_prompt, .max_tokens = GOLDEN_OUT,
                               .ignore_eos = true, .logprobs = true, .top_logprobs = 2};
    p.sampling = sampler_default_params();
    p.sampling.temperature = 0;
    engine_request *r;
    ck_assert_int_eq(engine_submit(e, &p, &r), ENGINE_OK);
    outcome o = wait_end(r);
    engine_request_release(r);
    return o;
}

/* The workload on e: the golden prompt, N_REQ requests at once and one
 * cancelled among them, then the golden prompt again (its blocks cached). */
static void workload(engine *e, const golden *g, bool text, outcome out[N_REQ + 2]) {
    out[0] = run_golden(e, g);
    int32_t ids[N_REQ + 1][48];
    engine_request *r[N_REQ + 1];
    for (int i = 0; i <= N_REQ; i++) {
        engine_request_params p = request(g, i, ids[i], text);
        if (i == N_REQ) p.max_tokens = 40; /* the cancelled one */
        ck_assert_int_eq(engine_submit(e, &p, &r[i]), ENGINE_OK);
    }
    engine_cancel(r[N_REQ]);
    for (int i = 0; i < N_REQ; i++) {
        out[i + 1] = wait_end(r[i]);
        engine_request_release(r[i]);
    }
    outcome c = wait_end(r[N_REQ]);
    ck_assert_int_eq(c.fin, ENGINE_FINISH_CANCEL);
    free(c.text);
    engine_request_release(r[N_REQ]);
    out[N_REQ + 1] = run_golden(e, g);
}

static void free_outcomes(outcome *o, int n) {
    for (int i = 0; i < n; i++) free(o[i].text);
}

/* Whether two outcomes are the same tokens, logprobs (bits) and text. */
static bool same(const outcome *a, const outcome *b) {
    if (a->n != b->n || a->fin != b->fin || strcmp(a->text, b->text)) return false;
    for (int k = 0; k < a->n; k++) {
        const engine_logprob *x = &a->lp[k], *y = &b->lp[k];
        if (x->id != y->id || memcmp(&x->logprob, &y->logprob, sizeof(float)) || x->n_top != y->n_top ||
            memcmp(x->top_ids, y->top_ids, (size_t)x->n_top * sizeof(int32_t)) ||
            memcmp(x->top_logprobs, y->top_logprobs, (size_t)x->n_top * sizeof(float)))
            return false;
    }
    return true;
}

/* name on tp x ep ranks against one rank: every request the same, bit for
 * bit; the golden prompt's greedy tokens transformers'; and the ranks did
 * preempt and hit the prefix cache (when the model allows it). */
static void check_ranks(const char *name, int tp, int ep, int sample_on_backend, bool text) {
    char err[512];
    int rc;
    golden g = load_golden(name);
    static outcome one[N_REQ + 2], many[N_REQ + 2];
    engine *e1 = make(name, 1, 1, sample_on_backend, err, sizeof(err), &rc);
    ck_assert_msg(rc == ENGINE_OK, "%s: %s", name, err);
    workload(e1, &g, text, one);
    engine_destroy(e1);
    engine *ew = make(name, tp, ep, sample_on_backend, err, sizeof(err), &rc);
    ck_assert_msg(rc == ENGINE_OK, "%s on %d x %d: %s", name, tp, ep, err);
    workload(ew, &g, text, many);
    engine_stats st;
    engine_get_stats(ew, &st);
    engine_destroy(ew);
    for (int i = 0; i < N_REQ + 2; i++)
        ck_assert_msg(same(&one[i], &many[i]), "%s, tensor parallel %d, expert parallel %d: request %d differs from "
                                               "one rank's", name, tp, ep, i);
    for (int k = 0; k < GOLDEN_OUT; k++)
        ck_assert_msg(many[0].lp[k].id == g.greedy[k] && many[N_REQ + 1].lp[k].id == g.greedy[k],
                      "%s: greedy token %d is not transformers'", name, k);
    ck_assert_msg(st.preemptions > 0, "%s: the workload preempted nothing", name);
    if (strncmp(name, "deepseek", 8)) /* DeepSeek-V4's state is not only KV blocks: no prefix caching */
        ck_assert_msg(st.prefix_hits_tokens > 0, "%s: the workload hit no cached prefix", name);
    free_outcomes(one, N_REQ + 2);
    free_outcomes(many, N_REQ + 2);
}

START_TEST(dense_tensor_parallel) {
    check_ranks("llama3", 2, 1, -1, false);
    check_ranks("llama3", 4, 1, -1, false); /* 2 KV heads: each on 2 ranks */
}
END_TEST

START_TEST(moe_expert_parallel) {
    check_ranks("qwen3_moe", 1, 2, -1, false); /* the attention whole on each rank */
    check_ranks("qwen3_moe", 2, 2, -1, false); /* the experts over the tensor-parallel group */
    check_ranks("qwen3_moe", 2, 4, -1, false); /* 4 ranks: 2 tensor-parallel groups, the experts over all */
}
END_TEST

START_TEST(deepseek_v4_groups_and_experts) {
    check_ranks("deepseek_v4", 2, 1, -1, false);
    check_ranks("deepseek_v4", 2, 2, -1, false);
}
END_TEST

/* Text (no logprobs: plain greedy rows take the forward pass's argmax),
 * then sampling on the backend: sample_argmax for the biased greedy rows,
 * sample for the sampled ones, over rank 0's logits. */
START_TEST(engram_text_and_backend_sampling) {
    check_ranks("qwen3_engram", 2, 1, -1, true);
    check_ranks("qwen3_engram", 2, 1, 1, true);
}
END_TEST

/* The Engram gates a request asks for are rank 0's, and one rank's. */
START_TEST(engram_gates) {
    char err[512];
    int rc;
    golden g = load_golden("qwen3_engram");
    const float *gates[2];
    const int32_t *ids[2];
    int n_tok[2], n_layers[2];
    engine *e[2];
    engine_request *r[2];
    for (int k = 0; k < 2; k++) {
        e[k] = make("qwen3_engram", k ? 2 : 1, 1, -1, err, sizeof(err), &rc);
        ck_assert_msg(rc == ENGINE_OK, "%s", err);
        engine_request_params p = {.prompt = g.prompt, .n_prompt = g.n_prompt, .max_tokens = 6, .ignore_eos = true,
                                   .want_gates = true};
        p.sampling = sampler_default_params();
        p.sampling.temperature = 0;
        ck_assert_int_eq(engine_submit(e[k], &p, &r[k]), ENGINE_OK);
        outcome o = wait_end(r[k]);
        free(o.text);
        ck_assert(engine_request_gates(r[k], &ids[k], &n_tok[k], &gates[k], &n_layers[k]));
    }
    ck_assert_int_eq(n_tok[0], n_tok[1]);
    ck_assert_int_eq(n_layers[0], n_layers[1]);
    ck_assert(!memcmp(ids[0], ids[1], (size_t)n_tok[0] * sizeof(int32_t)));
    ck_assert_msg(!memcmp(gates[0], gates[1], (size_t)n_tok[0] * n_layers[0] * sizeof(float)),
                  "the gates on 2 ranks differ from one rank's");
    for (int k = 0; k < 2; k++) {
        engine_request_release(r[k]);
        engine_destroy(e[k]);
    }
}
END_TEST

/* Sizes the model cannot split, or that do not compose, fail engine_create
 * with ENGINE_ERR_INVALID and the refusal. */
static void refused(const char *name, int tp, int ep, const char *want) {
    char err[512] = "";
    int rc;
    engine *e = make(name, tp, ep, -1, err, sizeof(err), &rc);
    ck_assert_ptr_null(e);
    ck_assert_int_eq(rc, ENGINE_ERR_INVALID);
    ck_assert_msg(strstr(err, want), "%s %d x %d: '%s' lacks '%s'", name, tp, ep, err, want);
}

START_TEST(refusals) {
    refused("llama3", 3, 1, "3 ranks do not divide the model's 4 attention heads");
    refused("llama3", 8, 1, "8 ranks do not divide the model's 4 attention heads");
    refused("llama3", 1, 2, "expert parallelism: the model has no experts");
    refused("qwen3_moe", 2, 3, "the smaller must divide the larger");
    refused("qwen3_moe", 1, 16, "expert parallelism: 16 ranks for 8 experts");
    refused("qwen3_moe", -1, 1, "each must be at least 1");
}
END_TEST

int main(void) {
    Suite *s = suite_create("engine_ranks");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, dense_tensor_parallel);
    tcase_add_test(tc, moe_expert_parallel);
    tcase_add_test(tc, deepseek_v4_groups_and_experts);
    tcase_add_test(tc, engram_text_and_backend_sampling);
    tcase_add_test(tc, engram_gates);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
