/* Unit tests for engine/engine: requests through the engine thread on the
 * qwen3_engram fixture (greedy output equals a direct forward + sampler run,
 * determinism, stop strings held back and cut, EOS, parameter checks, the
 * notify hook, cancellation, stop with queued requests, forced output ids,
 * the prompt cap while sequences decode, a warm-up that leaves no trace). */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/backend/backend.h"
#include "engine/engine.h"
#include "engine/forward.h"

static char model_dir[1024];
static engine *E;

static void setup(void) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(model_dir, sizeof(model_dir), "%s/tests/fixtures/models/qwen3_engram", src ? src : ".");
    engine_params p = engine_default_params();
    p.model_dir = model_dir;
    p.threads = 1;
    char err[512];
    int rc = engine_create(&p, &E, err, sizeof(err));
    ck_assert_msg(rc == ENGINE_OK, "engine_create: %s", err);
}

static void teardown(void) {
    engine_destroy(E);
    E = NULL;
}

typedef struct {
    char *text;
    size_t len;
    engine_output fin;
} result;

/* Polls a request to its end (busy-waits politely). */
static result run_to_end(engine_request *r) {
    result res = {0};
    for (;;) {
        engine_output o;
        if (engine_request_read(r, &o, NULL, NULL)) {
            if (o.len) {
                res.text = realloc(res.text, res.len + o.len + 1);
                memcpy(res.text + res.len, o.text, o.len);
                res.len += o.len;
                res.text[res.len] = 0;
            }
            free(o.text);
            if (o.finish != ENGINE_FINISH_NONE) {
                res.fin = o;
                break;
            }
        } else {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
    if (!res.text) res.text = calloc(1, 1);
    return res;
}

static engine_request_params greedy(const int32_t *ids, int n, int max_tokens) {
    engine_request_params p = {0};
    p.prompt = ids;
    p.n_prompt = n;
    p.max_tokens = max_tokens;
    p.sampling = sampler_default_params();
    p.sampling.temperature = 0;
    p.ignore_eos = true;
    return p;
}

static const int32_t PROMPT[] = {5, 17, 300, 42, 9, 1000};
#define NP ((int)(sizeof(PROMPT) / sizeof(PROMPT[0])))

static result submit_run(engine_request_params p) {
    engine_request *r = NULL;
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_OK);
    result res = run_to_end(r);
    engine_request_release(r);
    return res;
}

START_TEST(test_greedy_matches_direct_run) {
    backend *be = backend_cpu_create();
    result res = submit_run(greedy(PROMPT, NP, 20));
    ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_LENGTH);
    ck_assert_int_eq(res.fin.n_generated, 20);
    ck_assert_int_eq(res.fin.n_prompt, NP);
    ck_assert(res.fin.t_submit > 0 && res.fin.t_first_token >= res.fin.t_submit && res.fin.t_end >= res.fin.t_first_token);

    /* the same tokens by hand, decoded at once */
    model *m = (model *)engine_model(E); /* read-only here: the CPU view is the model itself */
    char err[256];
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 256, 1, &fc, err, sizeof(err)), FORWARD_OK);
    forward_state *st = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 64, &st), FORWARD_OK);
    float *logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    sampler_params sp = sampler_default_params();
    sp.temperature = 0;
    sampler *smp = sampler_create(model_sampling_vocab(m), sp);
    int32_t out[20];
    ck_assert_int_eq(forward_run(fc, st, PROMPT, NP, logits, NULL), FORWARD_OK);
    for (int i = 0; i < 20; i++) {
        out[i] = sampler_sample(smp, logits, PROMPT, NP, out, i);
        if (i < 19) ck_assert_int_eq(forward_run(fc, st, &out[i], 1, logits, NULL), FORWARD_OK);
    }
    char *want = NULL;
    size_t wlen = 0;
    ck_assert_int_eq(tokenizer_decode(engine_tokenizer(E), out, 20, true, &want, &wlen), TOKENIZER_OK);
    ck_assert_str_eq(res.text, want);
    free(want);
    free(logits);
    sampler_destroy(smp);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);

    result again = submit_run(greedy(PROMPT, NP, 20));
    ck_assert_str_eq(again.text, res.text);
    free(again.text);
    free(res.text);
    backend_destroy(be);
}
END_TEST

START_TEST(test_stop_strings) {
    result full = submit_run(greedy(PROMPT, NP, 30));
    ck_assert_uint_ge(full.len, 8);
    /* every window of the text as a stop string: the output is the text before its first occurrence */
    for (size_t at = 1; at + 3 <= full.len; at += 2) {
        if ((full.text[at] & 0xC0) == 0x80) continue; /* start on a character */
        size_t sl = 3;
        while (at + sl < full.len && (full.text[at + sl] & 0xC0) == 0x80) sl++;
        char stop[16];
        if (sl >= sizeof(stop)) continue;
        memcpy(stop, full.text + at, sl);
        stop[sl] = 0;
        engine_request_params p = greedy(PROMPT, NP, 30);
        p.stop[0] = "\x01never";
        p.stop[1] = stop;
        p.n_stop = 2;
        result res = submit_run(p);
        size_t first = (size_t)(strstr(full.text, stop) - full.text);
        ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_STOP);
        ck_assert_uint_eq(res.len, first);
        ck_assert(memcmp(res.text, full.text, first) == 0);
        free(res.text);
    }
    free(full.text);
}
END_TEST

START_TEST(test_eos_stops) {
    /* logit_bias pushes the EOS id to the top: one token, finish "stop" */
    engine_request_params p = greedy(PROMPT, NP, 10);
    p.ignore_eos = false;
    int32_t eos = engine_model(E)->cfg.eos_token_ids[0];
    float big = 1000;
    p.bias_ids = &eos;
    p.bias_vals = &big;
    p.n_bias = 1;
    result res = submit_run(p);
    ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_STOP);
    ck_assert_int_eq(res.fin.n_generated, 1);
    ck_assert_uint_eq(res.len, 0);
    free(res.text);
    p.ignore_eos = true;
    res = submit_run(p);
    ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_LENGTH);
    ck_assert_int_eq(res.fin.n_generated, 10);
    free(res.text);
}
END_TEST

START_TEST(test_invalid_params) {
    engine_request *r = (engine_request *)1;
    int32_t bad[] = {5, 1 << 20};
    int32_t neg[] = {-1};
    engine_request_params p = greedy(PROMPT, NP, 5);
    p.n_prompt = 0;
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_ERR_INVALID);
    ck_assert_ptr_null(r);
    p = greedy(bad, 2, 5);
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_ERR_INVALID);
    p = greedy(neg, 1, 5);
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_ERR_INVALID);
    p = greedy(PROMPT, NP, engine_context_length(E)); /* prompt + max_tokens over the context */
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_ERR_INVALID);
    p = greedy(PROMPT, NP, 0);
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_ERR_INVALID);
    p = greedy(PROMPT, NP, 5);
    p.stop[0] = "";
    p.n_stop = 1;
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_ERR_INVALID);
    p = greedy(PROMPT, NP, engine_context_length(E) - NP); /* exactly fits */
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_OK);
    result res = run_to_end(r);
    ck_assert_int_eq(res.fin.n_generated, engine_context_length(E) - NP);
    free(res.text);
    engine_request_release(r);
}
END_TEST

/* engine_request_params.forced: the output is the forced ids (their text),
 * and each one is fed back: the ids that went through the model are the
 * prompt, then the forced ids but the last. Out-of-range forced ids are
 * refused. */
START_TEST(test_forced_tokens) {
    static const int32_t FORCED[] = {7, 300, 42, 5, 17, 9, 1000, 11};
    enum { NF = (int)(sizeof(FORCED) / sizeof(FORCED[0])) };
    result free_run = submit_run(greedy(PROMPT, NP, NF));
    engine_request_params p = greedy(PROMPT, NP, NF);
    p.forced = FORCED;
    p.want_gates = true;
    engine_request *r = NULL;
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_OK);
    result res = run_to_end(r);
    ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_LENGTH);
    ck_assert_int_eq(res.fin.n_generated, NF);
    char *want = NULL;
    size_t wlen = 0;
    ck_assert_int_eq(tokenizer_decode(engine_tokenizer(E), FORCED, NF, true, &want, &wlen), TOKENIZER_OK);
    ck_assert_str_eq(res.text, want);
    ck_assert_str_ne(res.text, free_run.text); /* the model alone says something else */
    const int32_t *ids;
    const float *gates;
    int n_tok, n_layers;
    ck_assert(engine_request_gates(r, &ids, &n_tok, &gates, &n_layers));
    ck_assert_int_eq(n_tok, NP + NF - 1);
    for (int i = 0; i < NP; i++) ck_assert_int_eq(ids[i], PROMPT[i]);
    for (int i = 0; i + 1 < NF; i++) ck_assert_int_eq(ids[NP + i], FORCED[i]);
    engine_request_release(r);
    free(want);
    free(res.text);
    free(free_run.text);

    int32_t bad[NF];
    memcpy(bad, FORCED, sizeof(bad));
    bad[NF - 1] = engine_vocab_size(E);
    p.forced = bad;
    r = (engine_request *)1;
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_ERR_INVALID);
    ck_assert_ptr_null(r);
}
END_TEST

typedef struct {
    pthread_mutex_t mu;
    int fired;
} notify_state;

static void on_notify(void *ctx) {
    notify_state *s = ctx;
    pthread_mutex_lock(&s->mu);
    s->fired++;
    pthread_mutex_unlock(&s->mu);
}

START_TEST(test_notify_and_cancel) {
    notify_state ns = {PTHREAD_MUTEX_INITIALIZER, 0};
    engine_request_params p = greedy(PROMPT, NP, 200);
    p.notify = on_notify;
    p.notify_ctx = &ns;
    engine_request *r = NULL;
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_OK);
    engine_cancel(r);
    engine_cancel(r); /* idempotent */
    result res = run_to_end(r);
    ck_assert(res.fin.finish == ENGINE_FINISH_CANCEL || res.fin.finish == ENGINE_FINISH_LENGTH);
    if (res.fin.finish == ENGINE_FINISH_CANCEL) ck_assert_int_lt(res.fin.n_generated, 200);
    engine_output o;
    ck_assert(!engine_request_read(r, &o, NULL, NULL)); /* the finish is reported once */
    engine_cancel(r); /* after the end: harmless */
    engine_request_detach(r); /* ns dies with this frame: no late notify from the waker may reach it */
    engine_request_release(r);
    free(res.text);

    /* an armed read gets exactly one notify when output appears */
    p.max_tokens = 3;
    pthread_mutex_lock(&ns.mu);
    ns.fired = 0;
    pthread_mutex_unlock(&ns.mu);
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_OK);
    bool armed = !engine_request_read(r, &o, NULL, NULL);
    while (armed && !engine_request_read(r, &o, NULL, NULL)) {
    }
    free(o.text);
    if (o.finish == ENGINE_FINISH_NONE) {
        res = run_to_end(r);
        free(res.text);
    }
    /* The notify comes from the waker thread after the step that published, so the loop above can
     * read the output first: wait for it (bounded) before letting the request go. */
    for (int i = 0; armed && i < 10000; i++) {
        pthread_mutex_lock(&ns.mu);
        int fired = ns.fired;
        pthread_mutex_unlock(&ns.mu);
        if (fired) break;
        usleep(1000);
    }
    engine_request_detach(r);
    engine_request_release(r);
    pthread_mutex_lock(&ns.mu);
    if (armed) ck_assert_int_ge(ns.fired, 1); /* the first read found nothing: it armed the notify */
    pthread_mutex_unlock(&ns.mu);
}
END_TEST

START_TEST(test_stop_aborts_queued) {
    engine_request *r[6];
    engine_request_params p = greedy(PROMPT, NP, 200);
    for (int i = 0; i < 6; i++) ck_assert_int_eq(engine_submit(E, &p, &r[i]), ENGINE_OK);
    engine_stop(E);
    engine_stop(E); /* idempotent */
    int aborted = 0;
    for (int i = 0; i < 6; i++) {
        result res = run_to_end(r[i]);
        ck_assert(res.fin.finish == ENGINE_FINISH_ABORT || res.fin.finish == ENGINE_FINISH_LENGTH);
        aborted += res.fin.finish == ENGINE_FINISH_ABORT;
        free(res.text);
        engine_request_release(r[i]);
    }
    ck_assert_int_ge(aborted, 1);
    engine_request *x = (engine_request *)1;
    ck_assert_int_eq(engine_submit(E, &p, &x), ENGINE_ERR_STOPPED);
    ck_assert_ptr_null(x);
    engine_stats st;
    engine_get_stats(E, &st);
    ck_assert_int_eq(st.queued, 0);
    ck_assert_int_eq(st.running, 0);
    ck_assert_int_eq(st.kv_tokens, 0);
    ck_assert_int_eq(st.kv_capacity, engine_context_length(E));
}
END_TEST

START_TEST(test_detach) {
    notify_state ns = {PTHREAD_MUTEX_INITIALIZER, 0};
    engine_request_params p = greedy(PROMPT, NP, 50);
    p.notify = on_notify;
    p.notify_ctx = &ns;
    engine_request *r = NULL;
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_OK);
    engine_output o;
    if (!engine_request_read(r, &o, NULL, NULL)) { /* armed: detach disarms */
        engine_request_detach(r);
        pthread_mutex_lock(&ns.mu);
        int before = ns.fired;
        pthread_mutex_unlock(&ns.mu);
        result res = run_to_end(r); /* these reads cannot arm a callback that is gone */
        free(res.text);
        pthread_mutex_lock(&ns.mu);
        ck_assert_int_eq(ns.fired, before);
        pthread_mutex_unlock(&ns.mu);
    } else {
        free(o.text);
        engine_request_detach(r);
    }
    engine_request_release(r);
    engine_request_detach(NULL);
}
END_TEST

/* Sampled requests through backend_ops.sample (forced on for the CPU), and
 * greedy ones with biases and penalties through sample_argmax, give the same
 * text as the host sampler (an engine with it off), request by request and
 * with several running together. */
START_TEST(test_sampled_on_backend_matches_host) {
    engine_params ep = engine_default_params();
    ep.model_dir = model_dir;
    ep.threads = 1;
    engine *D = NULL, *H = NULL;
    char err[512];
    ep.sample_on_backend = 0;
    int rc = engine_create(&ep, &H, err, sizeof(err));
    ck_assert_msg(rc == ENGINE_OK, "engine_create: %s", err);
    ep.sample_on_backend = 1;
    rc = engine_create(&ep, &D, err, sizeof(err));
    ck_assert_msg(rc == ENGINE_OK, "engine_create: %s", err);
    enum { N = 8 };
    engine_request_params p[N];
    int32_t bias_ids[2] = {7, 7};
    float bias_vals[2] = {2.5f, 1.0f};
    for (int i = 0; i < N; i++) {
        p[i] = greedy(PROMPT, NP, 24);
        p[i].sampling.temperature = i == 0 ? 0.0f : 0.4f + 0.2f * (float)i;
        p[i].sampling.seed = 1000u + (unsigned)i;
        if (i % 4 == 1) p[i].sampling.top_k = 40;
        if (i % 3 == 1) p[i].sampling.top_p = 0.9f;
        if (i % 4 == 3) p[i].sampling.min_p = 0.05f;
        if (i % 2 == 0) p[i].sampling.repetition_penalty = 1.2f, p[i].sampling.frequency_penalty = 0.3f;
        if (i % 3 == 0) p[i].bias_ids = bias_ids, p[i].bias_vals = bias_vals, p[i].n_bias = 2;
    }
    engine_request *rh[N], *rd[N];
    for (int i = 0; i < N; i++) { /* all at once: batched steps on both engines */
        ck_assert_int_eq(engine_submit(H, &p[i], &rh[i]), ENGINE_OK);
        ck_assert_int_eq(engine_submit(D, &p[i], &rd[i]), ENGINE_OK);
    }
    for (int i = 0; i < N; i++) {
        result a = run_to_end(rh[i]), b = run_to_end(rd[i]);
        ck_assert_int_eq(a.fin.n_generated, b.fin.n_generated);
        ck_assert_msg(a.len == b.len && !memcmp(a.text, b.text, a.len), "request %d differs", i);
        free(a.text);
        free(b.text);
        engine_request_release(rh[i]);
        engine_request_release(rd[i]);
    }
    engine_destroy(D);
    engine_destroy(H);
}
END_TEST

/* --max-queued-requests bounds the requests that wait for a batch slot, not
 * those a free slot takes at the next step: with 2 slots and no queue, two
 * requests run and the third is refused; with a queue of 1, the fourth. */
START_TEST(test_queue_counts_only_waiting) {
    for (int max_queued = 0; max_queued <= 1; max_queued++) {
        engine_params ep = engine_default_params();
        ep.model_dir = model_dir;
        ep.threads = 1;
        ep.max_num_seqs = 2;
        ep.max_queued = max_queued;
        engine *Q = NULL;
        char err[512];
        ck_assert_msg(engine_create(&ep, &Q, err, sizeof(err)) == ENGINE_OK, "engine_create: %s", err);
        engine_request_params p = greedy(PROMPT, NP, 200);
        engine_request *r[3] = {0}, *x = (engine_request *)1;
        int n = 2 + max_queued;
        for (int i = 0; i < n; i++) ck_assert_int_eq(engine_submit(Q, &p, &r[i]), ENGINE_OK);
        ck_assert_int_eq(engine_submit(Q, &p, &x), ENGINE_ERR_QUEUE_FULL);
        ck_assert_ptr_null(x);
        for (int i = 0; i < n; i++) engine_cancel(r[i]);
        for (int i = 0; i < n; i++) {
            result res = run_to_end(r[i]);
            free(res.text);
            engine_request_release(r[i]);
        }
        /* once the slots are free again (published after the engine's next step), a request is taken */
        int rc;
        for (int tries = 0; (rc = engine_submit(Q, &p, &x)) == ENGINE_ERR_QUEUE_FULL && tries < 20000; tries++) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
        ck_assert_int_eq(rc, ENGINE_OK);
        engine_cancel(x);
        result res = run_to_end(x);
        free(res.text);
        engine_request_release(x);
        engine_destroy(Q);
    }
}
END_TEST

/* Lookahead (engine_params.engram_lookahead) with tables on the NVMe tier:
 * the rows of the rest of a prompt in prefill and the whole prompt of a
 * queued request go to the stores' prefetch threads, once each, and nothing
 * else. Outputs equal those with lookahead off. */
START_TEST(test_lookahead_hands_prompts_ahead) {
    char dir[] = "/tmp/engram-test-ahead-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    static const int32_t P1[20] = {5, 17, 300, 42, 9, 1000, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    static const int32_t P2[12] = {900, 800, 700, 600, 500, 400, 300, 200, 100, 50, 40, 30};
    char *text[2][2] = {{0}};
    for (int ahead = 0; ahead <= 1; ahead++) {
        engine_params ep = engine_default_params();
        ep.model_dir = model_dir;
        ep.threads = 1;
        ep.max_num_seqs = 1;
        ep.prefill_chunk = 4;
        ep.engram_tables = dir;
        ep.engram_store.tier = ENGRAM_STORE_NVME;
        ep.engram_store.dram_budget = 64 * 1024;
        ep.engram_lookahead = ahead ? 2048 : 0;
        engine *L = NULL;
        char err[512];
        ck_assert_msg(engine_create(&ep, &L, err, sizeof(err)) == ENGINE_OK, "engine_create: %s", err);
        engine_request_params p1 = greedy(P1, 20, 30), p2 = greedy(P2, 12, 2);
        engine_request *r1, *r2;
        ck_assert_int_eq(engine_submit(L, &p1, &r1), ENGINE_OK);
        ck_assert_int_eq(engine_submit(L, &p2, &r2), ENGINE_OK); /* queued while r1 runs its 30 steps */
        result a = run_to_end(r1), b = run_to_end(r2);
        ck_assert_int_eq(a.fin.n_generated, 30);
        ck_assert_int_eq(b.fin.n_generated, 2);
        text[ahead][0] = a.text, text[ahead][1] = b.text;
        engine_request_release(r1);
        engine_request_release(r2);
        engram_fetch_stats fs;
        engine_fetch_stats(L, -1, &fs);
        engram_store_stats es;
        model_engram_store_stats(engine_model(L), &es);
        uint64_t run = (20 + 30 - 1) + (12 + 2 - 1); /* tokens fed: the last sampled one never is */
        ck_assert(fs.lookups > 0 && fs.lookups % run == 0);
        uint64_t per_token = fs.lookups / run, extra = ahead ? ((20 - 4) + 12) * per_token : 0;
        ck_assert_uint_eq(es.prefetch_rows, extra);
        engine_destroy(L);
    }
    for (int k = 0; k < 2; k++) {
        ck_assert_str_eq(text[0][k], text[1][k]);
        free(text[0][k]), free(text[1][k]);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* Lookahead skips rows the hot-row cache (engram_params hbm_cache; host
 * memory on the CPU backend) holds: the same prompt a second time hands over
 * nothing. */
START_TEST(test_lookahead_skips_cached_rows) {
    char dir[] = "/tmp/engram-test-ahead-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    static const int32_t P[20] = {5, 17, 300, 42, 9, 1000, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    engine_params ep = engine_default_params();
    ep.model_dir = model_dir;
    ep.threads = 1;
    ep.prefill_chunk = 4;
    ep.engram_tables = dir;
    ep.engram_store.tier = ENGRAM_STORE_NVME;
    ep.engram_store.dram_budget = 64 * 1024;
    ep.engram_store.hbm_cache = 1 << 20; /* every row of both requests */
    ep.enable_prefix_caching = 0;        /* the second request computes its whole prompt again */
    engine *L = NULL;
    char err[512];
    ck_assert_msg(engine_create(&ep, &L, err, sizeof(err)) == ENGINE_OK, "engine_create: %s", err);
    uint64_t handed[2];
    char *text[2];
    for (int k = 0; k < 2; k++) {
        engine_request_params p = greedy(P, 20, 3);
        engine_request *r;
        ck_assert_int_eq(engine_submit(L, &p, &r), ENGINE_OK);
        result res = run_to_end(r);
        text[k] = res.text;
        engine_request_release(r);
        engram_store_stats es;
        model_engram_store_stats(engine_model(L), &es);
        handed[k] = es.prefetch_rows;
    }
    engram_fetch_stats fs;
    engine_fetch_stats(L, -1, &fs);
    uint64_t per_token = fs.lookups / (2 * (20 + 3 - 1));
    ck_assert_uint_eq(fs.lookups, 2 * (20 + 3 - 1) * per_token);
    ck_assert_uint_eq(handed[0], (20 - 4) * per_token); /* an empty cache: the rest of the prompt */
    ck_assert_uint_eq(handed[1], handed[0]);            /* all of it cached by the first run */
    ck_assert_str_eq(text[0], text[1]);
    free(text[0]), free(text[1]);
    engine_destroy(L);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* An engine on the fixture with small steps (16-token chunks, 32 tokens a
 * step) and cap as its --max-prefill-tokens-decoding. */
static engine *small_step_engine(int cap) {
    engine_params ep = engine_default_params();
    ep.model_dir = model_dir;
    ep.threads = 1;
    ep.max_num_seqs = 8;
    ep.prefill_chunk = 16;
    ep.max_num_batched_tokens = 32;
    ep.max_prefill_tokens_decoding = cap;
    ep.enable_prefix_caching = 0; /* every prompt computed whole, alone or together */
    engine *x = NULL;
    char err[512];
    ck_assert_msg(engine_create(&ep, &x, err, sizeof(err)) == ENGINE_OK, "engine_create: %s", err);
    return x;
}

/* Waits for the last step's stats (published just after its finishes) and returns them. */
static engine_stats idle_stats(engine *x) {
    engine_stats st;
    for (int tries = 0;; tries++) {
        engine_get_stats(x, &st);
        if ((st.running == 0 && st.queued == 0) || tries == 20000) break;
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return st;
}

/* engine_stats.host_gap_*: a request alone runs a step per chunk or token,
 * and each step after its first follows the pass of the step before; its
 * first follows a wait for work (not counted). Two requests one after the
 * other: all steps but two. */
START_TEST(test_host_gap_counts_back_to_back_steps) {
    engine_request_params p = greedy(PROMPT, NP, 12);
    engine_stats st;
    for (int k = 0; k < 2; k++) {
        engine_request *r = NULL;
        ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_OK);
        result res = run_to_end(r);
        ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_LENGTH);
        free(res.text);
        engine_request_release(r);
        st = idle_stats(E);
        ck_assert_int_ge(st.steps, 12 * (k + 1));
        ck_assert_int_eq(st.host_gap_steps, st.steps - (k + 1));
    }
    ck_assert(st.host_gap_seconds > 0);
}
END_TEST

/* A request's generated ids (through forced-free greedy or seeded sampling)
 * and their logprobs' bits, on engine x. */
typedef struct {
    engine_logprob lp[8];
    int n_cached, n_generated;
} wu_out;

static wu_out wu_run(engine *x, const int32_t *ids, int n, bool sampled) {
    engine_request_params p = greedy(ids, n, 8);
    p.logprobs = true;
    p.top_logprobs = 2;
    if (sampled) {
        p.sampling.temperature = 1.0f;
        p.sampling.seed = 1234;
    }
    engine_request *r = NULL;
    ck_assert_int_eq(engine_submit(x, &p, &r), ENGINE_OK);
    result res = run_to_end(r);
    ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_LENGTH);
    wu_out o;
    memset(&o, 0, sizeof(o));
    memcpy(o.lp, engine_request_logprobs(r), sizeof(o.lp));
    for (int i = 0; i < 8; i++) /* past n_top the entries are not written */
        for (int k = o.lp[i].n_top; k < ENGINE_MAX_TOP_LOGPROBS; k++) o.lp[i].top_ids[k] = 0, o.lp[i].top_logprobs[k] = 0;
    o.n_cached = res.fin.n_cached;
    o.n_generated = res.fin.n_generated;
    free(res.text);
    engine_request_release(r);
    return o;
}

/* engine_warmup leaves no trace: every engine_stats field as on a fresh
 * engine, no prefix-cache block (a prompt that starts with the warm-up's
 * own ids finds nothing cached), and greedy and seeded outputs (ids and
 * logprob bits) equal to an engine that never warmed up. It refuses a busy
 * engine. */
START_TEST(test_warmup_leaves_no_trace) {
    engine_stats before, after;
    memset(&before, 0, sizeof(before));
    memset(&after, 0, sizeof(after));
    engine_get_stats(E, &before);
    engine_warmup_info wi;
    ck_assert_int_eq(engine_warmup(E, 32, 2, &wi), ENGINE_OK);
    ck_assert_int_eq(wi.n_prompt, 32);
    ck_assert_int_eq(wi.n_decode, 2);
    ck_assert(wi.seconds > 0);
    engine_get_stats(E, &after); /* engine_warmup returns once the last step has published */
    ck_assert_int_eq(after.steps, before.steps);
    ck_assert_int_eq(after.step_tokens, before.step_tokens);
    ck_assert_int_eq(after.step_tokens_total, before.step_tokens_total);
    ck_assert_int_eq(after.decode_steps, before.decode_steps);
    ck_assert_int_eq(after.decode_step_prompt_tokens, before.decode_step_prompt_tokens);
    ck_assert_int_eq(after.decode_step_prompt_max, before.decode_step_prompt_max);
    ck_assert(!memcmp(after.decode_step_prompt_hist, before.decode_step_prompt_hist, sizeof(after.decode_step_prompt_hist)));
    ck_assert(after.host_gap_seconds == before.host_gap_seconds);
    ck_assert_int_eq(after.host_gap_steps, before.host_gap_steps);
    ck_assert_int_eq(after.prefix_queries_tokens, before.prefix_queries_tokens);
    ck_assert_int_eq(after.prefix_hits_tokens, before.prefix_hits_tokens);
    ck_assert_int_eq(after.prefix_cached_blocks, 0);
    ck_assert_int_eq(after.kv_blocks_used, 0);
    ck_assert_int_eq(after.running + after.queued, 0);
    ck_assert_int_eq(after.preemptions, 0);

    engine_params ep = engine_default_params(); /* the same engine as setup's, never warmed */
    ep.model_dir = model_dir;
    ep.threads = 1;
    engine *cold = NULL;
    char err[512];
    ck_assert_msg(engine_create(&ep, &cold, err, sizeof(err)) == ENGINE_OK, "engine_create: %s", err);
    int32_t ids[40]; /* the warm-up's 32 ids (engine.c), then more: two whole blocks of 16 if it had cached them */
    for (int i = 0; i < 40; i++) ids[i] = (int32_t)((1 + (uint64_t)(i < 32 ? i : 3 * i) * 7919) % (uint64_t)engine_vocab_size(E));
    for (int sampled = 0; sampled < 2; sampled++) {
        wu_out w = wu_run(E, ids, 40, sampled), c = wu_run(cold, ids, 40, sampled);
        ck_assert_int_eq(w.n_cached, sampled ? 32 : 0); /* sampled: the greedy run's blocks before it, on both */
        ck_assert_int_eq(c.n_cached, w.n_cached);
        ck_assert_int_eq(w.n_generated, 8);
        ck_assert(!memcmp(&w, &c, sizeof(w)));
    }
    /* refused while a request holds the engine */
    engine_request_params p = greedy(PROMPT, NP, 200);
    engine_request *r = NULL;
    ck_assert_int_eq(engine_submit(E, &p, &r), ENGINE_OK);
    ck_assert_int_eq(engine_warmup(E, 32, 2, &wi), ENGINE_ERR_INVALID);
    engine_cancel(r);
    free(run_to_end(r).text);
    engine_request_release(r);
    engine_destroy(cold);
}
END_TEST

enum { CAP_REQS = 8, CAP_OUT = 16, CAP = 4 };

/* Request i of the cap tests: a short prompt first (it decodes while the
 * others are still in prefill), then longer ones of up to 69 tokens. */
static int cap_prompt(int i, int32_t *ids) {
    int n = i == 0 ? 3 : 10 + 8 * i;
    for (int k = 0; k < n; k++) ids[k] = (int32_t)((37 * i + 11 * k + 5) % 1600);
    return n;
}

/* Submits the CAP_REQS requests to x (all at once when together, else each
 * alone) and keeps each one's generated ids and logprobs. */
static void cap_run(engine *x, bool together, engine_logprob out[CAP_REQS][CAP_OUT]) {
    int32_t ids[CAP_REQS][80];
    engine_request *r[CAP_REQS];
    for (int i = 0; i < CAP_REQS; i++) {
        engine_request_params p = greedy(ids[i], cap_prompt(i, ids[i]), CAP_OUT);
        p.logprobs = true; /* the ids and their logprobs' bits: the logits themselves */
        ck_assert_int_eq(engine_submit(x, &p, &r[i]), ENGINE_OK);
        if (together && i + 1 < CAP_REQS) continue;
        for (int j = together ? 0 : i; j <= i; j++) {
            result res = run_to_end(r[j]);
            ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_LENGTH);
            memcpy(out[j], engine_request_logprobs(r[j]), sizeof(out[j]));
            free(res.text);
            engine_request_release(r[j]);
        }
    }
}

/* --max-prefill-tokens-decoding: with the cap, no step that runs a decode
 * token carries more than CAP prompt tokens (and some carry prompt tokens:
 * prompts go on beside the decodes); without it, steps do (the same
 * requests, so the check can fail). The outputs are bit for bit those of
 * each request alone, with the cap or without. */
START_TEST(test_prefill_cap_while_decoding) {
    engine *off = small_step_engine(0), *on = small_step_engine(CAP);
    static engine_logprob alone[CAP_REQS][CAP_OUT], off_lp[CAP_REQS][CAP_OUT], on_lp[CAP_REQS][CAP_OUT];
    cap_run(off, false, alone);
    engine_stats before = idle_stats(off);
    cap_run(off, true, off_lp);
    cap_run(on, true, on_lp);
    engine_stats st_off = idle_stats(off), st_on = idle_stats(on);
    for (int i = 0; i < CAP_REQS; i++)
        for (int t = 0; t < CAP_OUT; t++) {
            ck_assert_msg(off_lp[i][t].id == alone[i][t].id && on_lp[i][t].id == alone[i][t].id,
                          "request %d token %d: alone %d, together %d, capped %d", i, t, alone[i][t].id,
                          off_lp[i][t].id, on_lp[i][t].id);
            ck_assert(!memcmp(&off_lp[i][t].logprob, &alone[i][t].logprob, sizeof(float)));
            ck_assert(!memcmp(&on_lp[i][t].logprob, &alone[i][t].logprob, sizeof(float)));
        }
    ck_assert_int_gt(st_off.decode_step_prompt_max, CAP);
    ck_assert_int_gt(st_off.decode_steps, before.decode_steps);
    ck_assert_int_le(st_on.decode_step_prompt_max, CAP);
    ck_assert_int_gt(st_on.decode_step_prompt_tokens, 0);
    long long sum = 0; /* the histogram holds every decode step, none above CAP's bucket */
    for (int k = 0; k < ENGINE_PROMPT_BUCKETS; k++) {
        sum += st_on.decode_step_prompt_hist[k];
        if (engine_prompt_bucket_le(k) < 0 || engine_prompt_bucket_le(k) > CAP)
            ck_assert_int_eq(st_on.decode_step_prompt_hist[k], 0);
    }
    ck_assert_int_eq(sum, st_on.decode_steps);
    engine_destroy(on);
    engine_destroy(off);
}
END_TEST

/* Under the cap a prompt still goes on while another sequence decodes: a
 * 69-token prompt submitted after a long generation started gets its first
 * token while that generation runs (69 / CAP steps, not its 200). */
START_TEST(test_prefill_cap_keeps_prompts_going) {
    engine *on = small_step_engine(CAP);
    int32_t ids[80];
    engine_request *a = NULL, *b = NULL;
    engine_request_params pa = greedy(PROMPT, NP, 200), pb = greedy(ids, cap_prompt(CAP_REQS - 1, ids), 1);
    ck_assert_int_eq(engine_submit(on, &pa, &a), ENGINE_OK);
    for (int tries = 0; tries < 200000; tries++) { /* a decodes */
        engine_output o;
        if (engine_request_read(a, &o, NULL, NULL)) free(o.text);
        if (o.n_generated > 0) break;
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    ck_assert_int_eq(engine_submit(on, &pb, &b), ENGINE_OK);
    result rb = run_to_end(b);
    ck_assert_int_eq(rb.fin.finish, ENGINE_FINISH_LENGTH);
    engine_output oa;
    if (engine_request_read(a, &oa, NULL, NULL)) free(oa.text);
    ck_assert_msg(oa.finish == ENGINE_FINISH_NONE && oa.n_generated < 200, "the prompt waited for the decode to end");
    engine_cancel(a);
    result ra = run_to_end(a);
    free(ra.text);
    free(rb.text);
    engine_request_release(a);
    engine_request_release(b);
    engine_stats st = idle_stats(on);
    ck_assert_int_le(st.decode_step_prompt_max, CAP);
    engine_destroy(on);
}
END_TEST

/* A host store's rows are made on its fetcher's thread from what planning
 * kept of the step (each sequence's history before it, the compressed ids),
 * a table in backend memory's while planning: the same bits either way. The
 * cap tests' eight requests in steps of several sequences, chunked prefill,
 * and a KV cache small enough that sequences are preempted and recomputed
 * (resumed from their cached prefix blocks, the hash history rebuilt from the
 * ids), through the DRAM tier and through NVMe behind a hot-row cache,
 * against the checkpoint's tensors with room for all. */
START_TEST(test_store_rows_made_on_fetch_threads) {
    char dir[] = "/tmp/engram-test-fill-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    static engine_logprob ref[CAP_REQS][CAP_OUT], got[CAP_REQS][CAP_OUT];
    for (int k = 0; k < 3; k++) {
        engine_params ep = engine_default_params();
        ep.model_dir = model_dir;
        ep.threads = 1;
        ep.max_num_seqs = CAP_REQS;
        ep.prefill_chunk = 16;
        ep.max_num_batched_tokens = 32;
        if (k > 0) {
            ep.engram_tables = dir;
            ep.kv_cache_tokens = 96; /* one request's 85 positions fit, not eight */
        }
        if (k == 2) {
            ep.engram_store.tier = ENGRAM_STORE_NVME;
            ep.engram_store.dram_budget = 16 * 1024;
            ep.engram_store.hbm_cache = 4096;
        }
        engine *x = NULL;
        char err[512];
        ck_assert_msg(engine_create(&ep, &x, err, sizeof(err)) == ENGINE_OK, "engine_create: %s", err);
        memset(got, 0xAB, sizeof(got));
        cap_run(x, true, k ? got : ref);
        engine_stats st = idle_stats(x);
        engram_fetch_stats fs;
        engine_fetch_stats(x, -1, &fs);
        if (k == 0) {
            ck_assert_uint_eq(fs.lookups, 0); /* the tensors: no fetcher, hashed while planning */
        } else {
            ck_assert_int_gt(st.preemptions, 0);
            ck_assert(fs.lookups > 0 && fs.hash_seconds > 0);
            for (int i = 0; i < CAP_REQS; i++)
                for (int t = 0; t < CAP_OUT; t++)
                    ck_assert_msg(got[i][t].id == ref[i][t].id &&
                                      !memcmp(&got[i][t].logprob, &ref[i][t].logprob, sizeof(float)),
                                  "%s tier, request %d token %d: %d against %d", k == 1 ? "dram" : "nvme", i, t,
                                  got[i][t].id, ref[i][t].id);
        }
        engine_destroy(x);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* The bytes of path, or with data: path rewritten in place to them (the
 * store's open descriptor keeps reading it). */
static char *file_bytes(const char *path, char *data, long *n) {
    FILE *f = fopen(path, data ? "wb" : "rb");
    ck_assert_ptr_nonnull(f);
    if (!data) {
        fseek(f, 0, SEEK_END);
        *n = ftell(f);
        rewind(f);
        data = malloc((size_t)*n);
        ck_assert_int_eq(fread(data, 1, (size_t)*n, f), (size_t)*n);
    } else {
        ck_assert_int_eq(fwrite(data, 1, (size_t)*n, f), (size_t)*n);
    }
    fclose(f);
    return data;
}

/* A step whose fetch fails (the NVMe tier's tables cut to their headers
 * under the engine: the misses cannot be read) fails its request, and the
 * steps after it, with the tables whole again, make the same rows as before:
 * the fetchers and the hash histories start each step clean. */
START_TEST(test_failed_fetch_then_same_rows) {
    char dir[] = "/tmp/engram-test-fail-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    engine_params ep = engine_default_params();
    ep.model_dir = model_dir;
    ep.threads = 1;
    ep.engram_tables = dir;
    ep.engram_store.tier = ENGRAM_STORE_NVME;
    ep.engram_store.dram_budget = 16 * 1024;
    ep.engram_lookahead = 0; /* no prefetch reads: only the step's gathers meet the cut tables */
    ep.enable_prefix_caching = 0;
    engine *x = NULL;
    char err[512];
    ck_assert_msg(engine_create(&ep, &x, err, sizeof(err)) == ENGINE_OK, "engine_create: %s", err);
    static const int32_t A[20] = {5, 17, 300, 42, 9, 1000, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    static const int32_t B[12] = {900, 800, 700, 600, 500, 400, 300, 200, 100, 50, 40, 30};
    engine_logprob ref[2][6];
    for (int pass = 0; pass < 3; pass++) {
        char path[2][300];
        char *saved[2] = {0};
        long n[2];
        for (int li = 0; li < 2 && pass == 1; li++) { /* cut both tables to their 4 KiB headers */
            snprintf(path[li], sizeof(path[li]), "%s/engram_layer_%d.tbl", dir, li + 1);
            saved[li] = file_bytes(path[li], NULL, &n[li]);
            ck_assert_int_eq(truncate(path[li], 4096), 0);
        }
        for (int q = 0; q < 2; q++) {
            engine_request_params p = q ? greedy(B, 12, 6) : greedy(A, 20, 6);
            p.logprobs = true;
            engine_request *r = NULL;
            ck_assert_int_eq(engine_submit(x, &p, &r), ENGINE_OK);
            result res = run_to_end(r);
            if (pass == 1) {
                ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_ERROR);
                ck_assert_int_eq(res.fin.error, ENGINE_ERR_FORWARD);
            } else {
                ck_assert_int_eq(res.fin.finish, ENGINE_FINISH_LENGTH);
                const engine_logprob *lp = engine_request_logprobs(r);
                if (pass == 0) memcpy(ref[q], lp, sizeof(ref[q]));
                else
                    for (int t = 0; t < 6; t++)
                        ck_assert_msg(lp[t].id == ref[q][t].id && !memcmp(&lp[t].logprob, &ref[q][t].logprob, sizeof(float)),
                                      "request %d token %d: %d (%.9g) against %d (%.9g)", q, t, lp[t].id,
                                      (double)lp[t].logprob, ref[q][t].id, (double)ref[q][t].logprob);
            }
            free(res.text);
            engine_request_release(r);
        }
        for (int li = 0; li < 2 && pass == 1; li++) { /* whole again */
            file_bytes(path[li], saved[li], &n[li]);
            free(saved[li]);
        }
    }
    engine_destroy(x);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_bad_create) {
    engine_params p = engine_default_params();
    p.model_dir = "/nonexistent";
    engine *e = (engine *)1;
    char err[512];
    ck_assert_int_eq(engine_create(&p, &e, err, sizeof(err)), ENGINE_ERR_LOAD);
    ck_assert_ptr_null(e);
    p.model_dir = model_dir;
    p.device = "cuda";
    ck_assert_int_eq(engine_create(&p, &e, err, sizeof(err)), ENGINE_ERR_DEVICE);
    engine_destroy(NULL);
    engine_request_release(NULL);
    ck_assert_str_eq(engine_status_str(ENGINE_ERR_QUEUE_FULL), "the request queue is full");
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("engine");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_greedy_matches_direct_run);
    tcase_add_test(tc, test_sampled_on_backend_matches_host);
    tcase_add_test(tc, test_stop_strings);
    tcase_add_test(tc, test_eos_stops);
    tcase_add_test(tc, test_invalid_params);
    tcase_add_test(tc, test_forced_tokens);
    tcase_add_test(tc, test_notify_and_cancel);
    tcase_add_test(tc, test_stop_aborts_queued);
    tcase_add_test(tc, test_detach);
    tcase_add_test(tc, test_queue_counts_only_waiting);
    tcase_add_test(tc, test_host_gap_counts_back_to_back_steps);
    tcase_add_test(tc, test_warmup_leaves_no_trace);
    tcase_add_test(tc, test_lookahead_hands_prompts_ahead);
    tcase_add_test(tc, test_lookahead_skips_cached_rows);
    tcase_add_test(tc, test_prefill_cap_while_decoding);
    tcase_add_test(tc, test_prefill_cap_keeps_prompts_going);
    tcase_add_test(tc, test_store_rows_made_on_fetch_threads);
    tcase_add_test(tc, test_failed_fetch_then_same_rows);
    tcase_add_test(tc, test_bad_create);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
