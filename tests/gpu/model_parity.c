/* Whole-model parity of the CUDA backend with the CPU reference: for each
 * checkpoint directory given (default: every fixture model and the default
 * model), from the repository root on the GPU machine.
 *
 * Every fixture runs but those whose ops or formats the CUDA backend lacks
 * (skipped, reported); the DeepSeek-V4.1 fixtures (ratio-1/2 layers, the
 * two-level top-k, FP8 Engram tables) must run.
 *
 * single:  a 37-token prompt through forward_run on both backends, then 16
 *          greedy steps: the CPU picks the tokens and the GPU is fed the same
 *          ones (teacher forcing), so every step compares logits of the same
 *          context. Pass: the prompt's last-position logits within
 *          ||gpu - cpu|| / ||cpu|| <= 2e-2, and the argmax equal at every
 *          step, unless the CPU's logits of the two tokens differ by less
 *          than twice the step's largest |gpu - cpu| (a near tie that
 *          rounding may flip; reported). The worst relative error over the
 *          decode steps is reported, with the steps past 2e-2.
 * batched: three sequences sharing one KV cache, prompts of 37, 5 and 12
 *          tokens in one step, then 16 steps of one token each (teacher
 *          forced), same checks per sequence.
 *          (single's decode steps, one token, take the matrix-vector kernels
 *          with the RMSNorms folded into the qkv and gate/up products; the
 *          prompts and the batched steps of 3 tokens norm before cuBLAS; the
 *          fixtures hold f32, bf16 and f16 weights.)
 * free:    the GPU's own greedy continuation of the single prompt, reported
 *          as the number of leading tokens equal to the CPU's (information).
 * store:   Engram models again on the GPU with their tables read through a
 *          host store (exported to a temporary directory: DRAM tier, then
 *          NVMe under a tiny DRAM budget), with no hot-row cache, one of 4 KiB
 *          (evicting all the time) and one holding every row: the batched
 *          run's logits must equal the device-table run's bit for bit.
 * acts:    the batched run again with the bf16 products' activations taken
 *          through f32 (ENGRAM_ACT_FUSE=0: the norm into h, SwiGLU's h in
 *          f32, each rounded to bf16 by its own pass): the logits must be
 *          bit-equal to the default run's (the norm and SwiGLU writing the
 *          bf16 operands themselves); then with gate and up as one stacked
 *          product (ENGRAM_GLU_STACK=1), the single and batched checks above.
 * fp4:     models with FP4 routed experts (DeepSeek-V4's release format),
 *          which the device keeps packed, again with them expanded to bf16
 *          on upload (ENGRAM_FP4_EXPERTS=bf16): the batched run's logits must
 *          be bit-equal; such a model must run.
 * graphs:  a greedy schedule of 5 sequences (prompts of 37, 5, 12, 23 and 9
 *          tokens) joining and leaving over SCHED_STEPS steps, up to 4 at a
 *          time, on the GPU with recorded steps (CUDA graphs) and without:
 *          every step's logits bit-equal, and some steps replayed (counted at
 *          step_begin), so that replays meet other sequences than the ones
 *          recorded and compression windows closing (DeepSeek-V4: ratios 1
 *          to 8 in the fixtures). Engram models also with their tables in a
 *          DRAM store (steps recorded in segments around the live rows). */
#include <glob.h>
#include <math.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/forward.h"
#include "engine/model/model.h"

#define N_GEN 16
#define N_SEQ 3
#define LOGIT_BOUND 2e-2

static int failures;

/* the CUDA plugin (cuda_ops.c): ENGRAM_ACT_FUSE=0 and ENGRAM_GLU_STACK=1 for one handle */
void backend_cuda_set_act_unfused(backend *be, int on);
void backend_cuda_set_glu_stack(backend *be, int on);

typedef struct {
    double prompt_rel, worst_rel;
    int argmax_diff, ties, nan, n_over;
    char over[160]; /* decode steps past the bound: "step:err ..." */
} stats;

/* Step g's logits of both backends (g = 0: the prompt's last position). */
static void compare_step(stats *st, int g, const float *gpu, const float *cpu, int V) {
    double num = 0, den = 0, maxabs = 0;
    int ag = 0, ac = 0;
    for (int i = 0; i < V; i++) {
        if (isnan(gpu[i]) || isnan(cpu[i])) st->nan = 1;
        double e = (double)gpu[i] - cpu[i];
        num += e * e;
        den += (double)cpu[i] * cpu[i];
        if (fabs(e) > maxabs) maxabs = fabs(e);
        if (gpu[i] > gpu[ag]) ag = i;
        if (cpu[i] > cpu[ac]) ac = i;
    }
    double rel = sqrt(num / (den > 0 ? den : 1));
    if (g == 0) st->prompt_rel = rel;
    if (rel > st->worst_rel) st->worst_rel = rel;
    if (g > 0 && rel > LOGIT_BOUND) {
        size_t n = strlen(st->over);
        if (n + 16 < sizeof(st->over)) snprintf(st->over + n, sizeof(st->over) - n, " %d:%.2e", g, rel);
        st->n_over++;
    }
    if (ag != ac) {
        if (fabs((double)cpu[ac] - cpu[ag]) <= 2 * maxabs)
            st->ties++;
        else
            st->argmax_diff++;
    }
}

static int stats_report(const char *what, const stats *st, int steps) {
    int ok = !st->nan && st->prompt_rel <= LOGIT_BOUND && st->argmax_diff == 0;
    printf("  %-22s prompt logits rel_err %.3e (bound %.0e); %2d steps: worst %.3e, argmax differs %d, near ties "
           "%d%s %s\n", what, st->prompt_rel, LOGIT_BOUND, steps, st->worst_rel, st->argmax_diff, st->ties,
           st->nan ? ", NaN" : "", ok ? "ok" : "FAIL");
    if (st->n_over) printf("    decode steps past %.0e (step:rel_err):%s\n", LOGIT_BOUND, st->over);
    return !ok;
}

static int argmax_of(const float *l, int V) {
    int b = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

/* ---- graphs: the join-and-leave schedule ---- */

#define SCHED_SEQS 5
#define SCHED_STEPS 48
static const int sched_join[SCHED_SEQS] = {0, 0, 6, 14, 30}; /* the step a sequence's prompt runs in */
static const int sched_gen[SCHED_SEQS] = {40, 20, 30, 12, 16}; /* then its decode steps, one token each */
static const int sched_len[SCHED_SEQS] = {37, 5, 12, 23, 9};

static const backend_ops *real_ops;
static int replays;
static int counting_step_begin(backend *be, const void *key, size_t key_bytes) {
    int r = real_ops->step_begin(be, key, key_bytes);
    replays += r;
    return r;
}

/* Runs the schedule on be, each sequence greedy on its own logits: a sequence's prompt step is its join
 * step, then one token per step until it has sched_gen; it leaves after its last, its state reset (its
 * blocks back to the cache) and put back in the pool of 4 the next one to join takes from, as the
 * engine does (freeing backend memory would drop the recordings). logits (SCHED_STEPS * SCHED_SEQS, V):
 * row step * SCHED_SEQS + seq, zeros where the sequence is not in the step. *n_replays: the steps
 * (segments) the backend replayed. */
static int run_schedule(model *m, backend *be, float *logits, int *n_replays) {
    char err[256];
    int V = m->cfg.vocab_size, vs = model_sampling_vocab(m), rc;
    forward_ctx *fc = NULL;
    kv_cache *kv = NULL;
    forward_state *st[SCHED_SEQS] = {0}, *pool[4] = {0};
    int32_t prompt[SCHED_SEQS][37], tok[SCHED_SEQS];
    int done[SCHED_SEQS] = {0}, n_pool = 0;
    backend_ops counted = *be->ops;
    real_ops = be->ops;
    replays = 0;
    if (counted.step_begin) counted.step_begin = counting_step_begin, be->ops = &counted;
    if ((rc = forward_ctx_create(m, be, 64, 4, &fc, err, sizeof(err)))) {
        fprintf(stderr, "%s: forward_ctx_create: %s\n", backend_name(be), err);
        goto done;
    }
    if (forward_kv_cache_create(fc, 4 * 128, 16, &kv)) {
        rc = FORWARD_ERR_NOMEM;
        goto done;
    }
    for (; n_pool < 4 && !rc; n_pool++) rc = forward_state_create(fc, kv, 128, &pool[n_pool]);
    for (int i = 0; i < SCHED_SEQS; i++)
        for (int k = 0; k < sched_len[i]; k++) prompt[i][k] = (int32_t)((7 * k + 11 * i + 3) % vs);
    for (int g = 0; g < SCHED_STEPS && !rc; g++) {
        forward_item it[SCHED_SEQS];
        int n = 0, who[SCHED_SEQS];
        for (int i = 0; i < SCHED_SEQS && !rc; i++) {
            float *l = logits + ((size_t)g * SCHED_SEQS + i) * V;
            if (g == sched_join[i]) {
                st[i] = pool[--n_pool];
                it[n] = (forward_item){.st = st[i], .ids = prompt[i], .n = sched_len[i], .logits = l};
            } else if (st[i]) {
                tok[i] = argmax_of(l - (size_t)SCHED_SEQS * V, V); /* its row of the step before */
                it[n] = (forward_item){.st = st[i], .ids = &tok[i], .n = 1, .logits = l};
                done[i]++;
            } else {
                continue;
            }
            who[n++] = i;
        }
        if (!rc && n) rc = forward_batch(fc, it, n);
        for (int j = 0; j < n && !rc; j++)
            if (done[who[j]] == sched_gen[who[j]]) { /* it leaves: a later sequence takes its state and blocks */
                forward_state_reset(st[who[j]]);
                pool[n_pool++] = st[who[j]];
                st[who[j]] = NULL;
            }
    }
done:
    if (rc) fprintf(stderr, "%s: schedule: %s\n", backend_name(be), forward_status_str(rc));
    for (int i = 0; i < SCHED_SEQS; i++)
        if (st[i]) pool[n_pool++] = st[i];
    for (int i = 0; i < n_pool; i++) forward_state_destroy(pool[i]);
    kv_cache_destroy(kv);
    forward_ctx_destroy(fc);
    be->ops = real_ops;
    *n_replays = replays;
    return rc;
}

/* The schedule's logits with graphs (got) against without (want): bit-equal, and some step replayed. */
static int graphs_report(const char *what, const float *got, const float *want, int V, int n_replays) {
    int first = -1;
    for (int g = 0; g < SCHED_STEPS && first < 0; g++)
        if (memcmp(got + (size_t)g * SCHED_SEQS * V, want + (size_t)g * SCHED_SEQS * V,
                   (size_t)SCHED_SEQS * V * sizeof(float)))
            first = g;
    int ok = first < 0 && n_replays > 0;
    printf("  graphs, %-30s %d steps replayed; logits %s graphs off's", what, n_replays,
           first < 0 ? "bit-equal to" : "DIFFER from");
    if (first >= 0) printf(" (first at step %d)", first);
    printf(" %s\n", ok ? "ok" : "FAIL");
    return !ok;
}

/* Runs N_SEQ (or 1) sequences on be: step 0 the prompts, then N_GEN steps of
 * one token each. With tokens == NULL each sequence continues greedily and
 * its tokens are written to gen; else it is fed tokens (teacher forcing).
 * logits: (n_seq, N_GEN + 1, V), the last token's logits after each step. */
static int run_steps(model *m, backend *be, int n_seq, int32_t *const *prompts, const int *lens,
                     const int32_t *tokens, int32_t *gen, float *logits) {
    char err[256];
    int V = m->cfg.vocab_size, rc;
    forward_ctx *fc = NULL;
    kv_cache *kv = NULL;
    forward_state *st[N_SEQ] = {0};
    if ((rc = forward_ctx_create(m, be, 64, 4, &fc, err, sizeof(err)))) {
        fprintf(stderr, "%s: forward_ctx_create: %s\n", backend_name(be), err);
        return rc;
    }
    if (forward_kv_cache_create(fc, n_seq * 128, 16, &kv)) {
        rc = FORWARD_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < n_seq && !rc; i++) rc = forward_state_create(fc, kv, 128, &st[i]);
    forward_item it[N_SEQ];
    int32_t tok[N_SEQ];
    for (int g = 0; g <= N_GEN && !rc; g++) {
        for (int i = 0; i < n_seq; i++) {
            float *l = logits + ((size_t)i * (N_GEN + 1) + g) * V;
            if (g == 0) {
                it[i] = (forward_item){.st = st[i], .ids = prompts[i], .n = lens[i], .logits = l};
            } else {
                const float *prev = l - V;
                tok[i] = tokens ? tokens[i * N_GEN + g - 1] : argmax_of(prev, V);
                if (gen) gen[i * N_GEN + g - 1] = tok[i];
                it[i] = (forward_item){.st = st[i], .ids = &tok[i], .n = 1, .logits = l};
            }
        }
        rc = forward_batch(fc, it, n_seq);
    }
done:
    if (rc) fprintf(stderr, "%s: forward: %s\n", backend_name(be), forward_status_str(rc));
    for (int i = 0; i < n_seq; i++) forward_state_destroy(st[i]);
    kv_cache_destroy(kv);
    forward_ctx_destroy(fc);
    return rc;
}

/* The GPU's logits of the first n sequences, fed tokens, with the environment variable var set to
 * val while the view is made (forward_ctx_create reads it), against want bit for bit: a weight
 * format packed against its bf16 expansion. Prints the verdict as "  what: ..."; 1 on a
 * difference or a failed run. */
static int env_bits_equal(model *m, backend *gpu, const char *var, const char *val, int n, int32_t *const *prompts,
                          const int *lens, const int32_t *tokens, const float *want, const char *what) {
    size_t bytes = (size_t)n * (N_GEN + 1) * m->cfg.vocab_size * sizeof(float);
    float *got = calloc(1, bytes);
    setenv(var, val, 1);
    int rc = !got || run_steps(m, gpu, n, prompts, lens, tokens, NULL, got);
    unsetenv(var);
    int same = !rc && memcmp(got, want, bytes) == 0;
    if (!rc) printf("  %s: logits %s those of the bf16 expansion\n", what, same ? "bit-equal to" : "DIFFER from");
    free(got);
    return !same;
}

/* Whether m has FP4 routed experts (kept packed on the device, cuda_view.c). */
static int has_fp4_experts(const model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        if (m->layers[l].moe && m->layers[l].moe->gate[0].fmt == WEIGHT_FP4) return 1;
    return 0;
}

/* Whether m has FP8 attention matrices (DeepSeek-V4's; kept packed by default, ENGRAM_FP8_PACKED=0 expands them). */
static int has_fp8_matrices(const model *m) {
    return m->dsv4 && m->cfg.n_layers > 0 && m->dsv4->layers[0].wq_a.fmt == WEIGHT_FP8;
}

static void check_model(const char *dir) {
    char err[512];
    model *m = NULL;
    if (model_load(dir, &m, err, sizeof(err))) {
        if (strstr(err, "unsupported architecture")) { /* a fixture for work not landed yet (README) */
            printf("%s: skipped: %s\n", dir, err);
            return;
        }
        printf("%s: load failed: %s FAIL\n", dir, err);
        failures++;
        return;
    }
    backend *cpu = backend_cpu_create(), *gpu = backend_cuda_create(NULL, err, sizeof(err));
    int V = m->cfg.vocab_size, vs = model_sampling_vocab(m);
    printf("%s (%d layers, d %d, %d:%d heads, hd %d%s, window %d)\n", dir, m->cfg.n_layers, m->cfg.hidden_size,
           m->cfg.n_heads, m->cfg.n_kv_heads, m->cfg.head_dim, m->engram ? ", Engram" : "", m->cfg.sliding_window);
    const int lens[N_SEQ] = {37, 5, 12};
    int32_t pbuf[N_SEQ][37], *prompts[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        prompts[i] = pbuf[i];
        for (int k = 0; k < lens[i]; k++) pbuf[i][k] = (int32_t)((13 * k + 5 * i + 1) % vs);
    }
    size_t per = (size_t)N_SEQ * (N_GEN + 1) * V;
    float *lc = calloc(per, sizeof(float)), *lg = calloc(per, sizeof(float));
    int32_t gen_c[N_SEQ * N_GEN], gen_g[N_SEQ * N_GEN];
    int fail = 0;
    /* gate|up as two products: the bit-for-bit comparisons below hold the paths that differ in one thing
     * each; the stacked product (the default up to 2048 tokens) has its own case against the CPU */
    if (gpu) backend_cuda_set_glu_stack(gpu, 0);
    forward_ctx *probe = NULL;
    int prc = forward_ctx_create(m, gpu, 1, 1, &probe, err, sizeof(err));
    /* an op or a weight format the backend lacks (FP8/FP4 weights: the view refuses them by name); the
     * DeepSeek-V4.1 fixtures have every op and format on CUDA, so there a skip is a failure */
    if (prc == FORWARD_ERR_UNSUPPORTED || (prc != FORWARD_OK && strstr(err, "not supported on CUDA"))) {
        int must_run = strstr(dir, "deepseek_v41") != NULL || has_fp4_experts(m);
        printf("  %s on this backend: %s\n", must_run ? "refused (FAIL)" : "skipped", err);
        fail = must_run ? 1 : -1;
    }
    forward_ctx_destroy(probe);
    for (int batched = 0; batched < 2 && !fail; batched++) {
        int n = batched ? N_SEQ : 1;
        if (run_steps(m, cpu, n, prompts, lens, NULL, gen_c, lc) ||
            run_steps(m, gpu, n, prompts, lens, gen_c, NULL, lg)) {
            fail = 1;
            break;
        }
        for (int i = 0; i < n; i++) {
            stats st = {0};
            for (int g = 0; g <= N_GEN; g++) {
                size_t o = ((size_t)i * (N_GEN + 1) + g) * V;
                compare_step(&st, g, lg + o, lc + o, V);
            }
            char what[48];
            snprintf(what, sizeof(what), batched ? "batched seq %d (%d+%d)" : "single (%d+%d)", batched ? i : lens[i],
                     batched ? lens[i] : N_GEN, N_GEN);
            fail |= stats_report(what, &st, N_GEN + 1);
        }
        if (!batched && !fail) { /* the GPU's own greedy tokens, for information */
            if (run_steps(m, gpu, 1, prompts, lens, NULL, gen_g, lg)) {
                fail = 1;
                break;
            }
            int same = 0;
            while (same < N_GEN && gen_g[same] == gen_c[same]) same++;
            printf("  free-running greedy: %d of %d leading tokens equal\n", same, N_GEN);
        }
    }
    if (!fail) { /* lg: the batched GPU run, fed gen_c; lc the CPU's */
        float *la = calloc(per, sizeof(float));
        backend_cuda_set_act_unfused(gpu, 1);
        int rc = !la || run_steps(m, gpu, N_SEQ, prompts, lens, gen_c, NULL, la);
        backend_cuda_set_act_unfused(gpu, 0);
        if (rc) {
            fail = 1;
        } else {
            int same = memcmp(la, lg, per * sizeof(float)) == 0;
            printf("  activations through f32: logits %s the bf16 operands'\n", same ? "bit-equal to" : "DIFFER from");
            fail |= !same;
            backend_cuda_set_glu_stack(gpu, 1); /* gate|up as one product where the view stacked them */
            rc = run_steps(m, gpu, N_SEQ, prompts, lens, gen_c, NULL, la);
            backend_cuda_set_glu_stack(gpu, 0);
            fail |= rc != 0;
            for (int i = 0; i < N_SEQ && !rc; i++) {
                stats st = {0};
                for (int g = 0; g <= N_GEN; g++) {
                    size_t o = ((size_t)i * (N_GEN + 1) + g) * V;
                    compare_step(&st, g, la + o, lc + o, V);
                }
                char what[48];
                snprintf(what, sizeof(what), "glu stack seq %d (%d+%d)", i, lens[i], N_GEN);
                fail |= stats_report(what, &st, N_GEN + 1);
            }
        }
        free(la);
    }
    if (!fail && has_fp4_experts(m)) /* lg: the batched GPU run, fed gen_c, packed experts */
        fail |= env_bits_equal(m, gpu, "ENGRAM_FP4_EXPERTS", "bf16", N_SEQ, prompts, lens, gen_c, lg,
                               "FP4 experts packed");
    if (!fail && has_fp8_matrices(m)) { /* lg: the batched GPU run, fed gen_c, FP8 packed */
        /* expanded (ENGRAM_FP8_PACKED=0) against packed: the batched run (its steps of 3 and more
         * tokens: the expansion and cuBLAS), then one sequence (decode steps of 1: the FP8
         * matrix-vector kernel) */
        fail |= env_bits_equal(m, gpu, "ENGRAM_FP8_PACKED", "0", N_SEQ, prompts, lens, gen_c, lg,
                               "FP8 matrices packed, batched");
        float *l1 = calloc(per, sizeof(float));
        if (!fail && (!l1 || run_steps(m, gpu, 1, prompts, lens, gen_c, NULL, l1))) fail = 1;
        if (!fail)
            fail |= env_bits_equal(m, gpu, "ENGRAM_FP8_PACKED", "0", 1, prompts, lens, gen_c, l1,
                                   "FP8 matrices packed, one sequence");
        free(l1);
    }
    size_t sched = (size_t)SCHED_STEPS * SCHED_SEQS * V;
    float *lg_off = calloc(sched, sizeof(float)), *lg_on = calloc(sched, sizeof(float));
    if (!fail) { /* graphs: the same GPU with recorded steps off (lg_off) and on */
        backend_params bp = backend_default_params();
        bp.cuda_graphs = 0;
        backend *plain = backend_cuda_create(&bp, err, sizeof(err));
        if (plain) backend_cuda_set_glu_stack(plain, 0); /* as gpu */
        int n_off = 0, n_on = 0;
        if (!plain || !lg_off || !lg_on || run_schedule(m, plain, lg_off, &n_off) || run_schedule(m, gpu, lg_on, &n_on))
            fail = 1;
        else
            fail |= graphs_report(m->engram ? "device tables:" : "", lg_on, lg_off, V, n_on) | (n_off != 0);
        backend_destroy(plain);
    }
    if (!fail && m->engram) { /* lg: the batched GPU run, fed gen_c */
        char tdir[] = "/tmp/gpu_model_parity.XXXXXX";
        float *ls = calloc(per, sizeof(float));
        if (!mkdtemp(tdir) || !ls) fail = 1;
        struct { engram_store_tier tier; uint64_t budget, cache; engram_store_tiers tiers; const char *what; } runs[] = {
            {ENGRAM_STORE_DRAM, 0, 0, ENGRAM_STORE_EXCLUSIVE, "store dram, no HBM cache"},
            {ENGRAM_STORE_DRAM, 0, 4096, ENGRAM_STORE_EXCLUSIVE, "store dram, 4 KiB HBM cache"},
            {ENGRAM_STORE_DRAM, 0, 1ull << 30, ENGRAM_STORE_EXCLUSIVE, "store dram, HBM cache of every row"},
            {ENGRAM_STORE_NVME, 4096, 65536, ENGRAM_STORE_EXCLUSIVE, "store nvme (4 KiB DRAM budget), 64 KiB HBM cache, exclusive"},
            {ENGRAM_STORE_NVME, 4096, 65536, ENGRAM_STORE_INCLUSIVE, "store nvme (4 KiB DRAM budget), 64 KiB HBM cache, inclusive"},
        };
        for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]) && !fail; r++) {
            model *ms = NULL;
            engram_store_params sp = engram_store_default_params();
            sp.tier = runs[r].tier;
            sp.dram_budget = runs[r].budget;
            sp.hbm_cache = runs[r].cache;
            sp.tiers = runs[r].tiers;
            sp.quiet = true;
            if (model_load(dir, &ms, err, sizeof(err)) || model_engram_use_tables(ms, tdir, &sp, err, sizeof(err))) {
                printf("  %s: %s FAIL\n", runs[r].what, err);
                fail = 1;
            } else if (run_steps(ms, gpu, N_SEQ, prompts, lens, gen_c, NULL, ls)) {
                fail = 1;
            } else {
                int same = memcmp(ls, lg, per * sizeof(float)) == 0;
                printf("  %s: logits %s the device table's\n", runs[r].what, same ? "bit-equal to" : "DIFFER from");
                fail |= !same;
                int n_on = 0;
                if (r == 0 && run_schedule(ms, gpu, lg_on, &n_on)) /* segments around the live rows */
                    fail = 1;
                else if (r == 0)
                    fail |= graphs_report("store dram:", lg_on, lg_off, V, n_on);
            }
            model_destroy(ms);
        }
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tdir);
        if (system(cmd)) fprintf(stderr, "could not remove %s\n", tdir);
        free(ls);
    }
    printf("  %s\n", fail < 0 ? "skipped" : fail ? "FAIL" : "ok");
    failures += fail > 0;
    free(lc);
    free(lg);
    free(lg_off);
    free(lg_on);
    backend_destroy(gpu);
    backend_destroy(cpu);
    model_destroy(m);
}

int main(int argc, char **argv) {
    char err[256];
    setvbuf(stdout, NULL, _IOLBF, 0); /* whole lines between the exporters' progress on stderr */
    backend *probe = backend_cuda_create(NULL, err, sizeof(err));
    if (!probe) {
        fprintf(stderr, "backend_cuda: %s\n", err);
        return 2;
    }
    backend_destroy(probe);
    if (argc > 1) {
        for (int i = 1; i < argc; i++) check_model(argv[i]);
    } else {
        glob_t gl;
        if (glob("tests/fixtures/models/*", GLOB_ONLYDIR, NULL, &gl) == 0) {
            for (size_t i = 0; i < gl.gl_pathc; i++) check_model(gl.gl_pathv[i]);
            globfree(&gl);
        }
        check_model("models/engram-lexicon");
    }
    printf("%s: %d model(s) failed\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
