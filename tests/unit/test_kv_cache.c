/* Unit tests of engine/kv_cache: block allocation and accounting, the CPU
 * attention reading through a block table (bit-identical to the same rows
 * laid out in order), sequences sharing one cache giving the same logits as
 * a sequence alone (fixture model), and prefix caching: reference counts,
 * LRU eviction, the bound on idle blocks, salts, hash collisions verified
 * away, and a sequence resumed from cached blocks (KV and Engram histories)
 * giving the logits of one computed whole. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"

static kv_cache *make(int bs, int n_blocks) {
    kv_cache_params p = kv_cache_default_params();
    p.n_layers = 2;
    p.kv_width = 8;
    p.block_size = bs;
    p.n_blocks = n_blocks;
    kv_cache *c = NULL;
    ck_assert_int_eq(kv_cache_create(&p, &c), KV_CACHE_OK);
    return c;
}

START_TEST(kv_alloc_and_accounting) {
    ck_assert_int_eq(kv_cache_default_params().block_size, 16);
    kv_cache *c = make(16, 10);
    ck_assert_int_eq(kv_cache_n_blocks(c), 10);
    ck_assert_int_eq(kv_cache_used_blocks(c), 0);
    ck_assert_int_eq(kv_cache_blocks_for(c, 0), 0);
    ck_assert_int_eq(kv_cache_blocks_for(c, 1), 1);
    ck_assert_int_eq(kv_cache_blocks_for(c, 16), 1);
    ck_assert_int_eq(kv_cache_blocks_for(c, 17), 2);

    kv_seq a = {0}, b = {0};
    ck_assert_int_eq(kv_cache_seq_reserve(c, &a, 17), KV_CACHE_OK);
    ck_assert_int_eq(a.n_blocks, 2);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &a, 32), KV_CACHE_OK); /* still fits */
    ck_assert_int_eq(a.n_blocks, 2);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &b, 16 * 7), KV_CACHE_OK);
    ck_assert_int_eq(kv_cache_used_blocks(c), 9);
    ck_assert_int_eq(kv_cache_free_blocks(c), 1);
    /* too many: nothing taken */
    ck_assert_int_eq(kv_cache_seq_reserve(c, &a, 16 * 4), KV_CACHE_ERR_FULL);
    ck_assert_int_eq(a.n_blocks, 2);
    ck_assert_int_eq(kv_cache_used_blocks(c), 9);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &a, 33), KV_CACHE_OK);
    ck_assert_int_eq(kv_cache_free_blocks(c), 0);

    /* every block held once */
    int seen[10] = {0};
    for (int i = 0; i < a.n_blocks; i++) seen[a.blocks[i]]++;
    for (int i = 0; i < b.n_blocks; i++) seen[b.blocks[i]]++;
    for (int i = 0; i < 10; i++) ck_assert_int_eq(seen[i], 1);

    kv_cache_seq_free(c, &b);
    ck_assert_int_eq(b.n_blocks, 0);
    ck_assert_int_eq(kv_cache_used_blocks(c), 3);
    kv_cache_seq_destroy(c, &a);
    kv_cache_seq_destroy(c, &b);
    ck_assert_ptr_null(a.blocks);
    ck_assert_int_eq(kv_cache_used_blocks(c), 0);

    /* blocks of one layer do not overlap, K and V are apart */
    float *k0 = kv_cache_k(c, 1, 0), *k1 = kv_cache_k(c, 1, 1); /* f32 by default */
    ck_assert_ptr_eq(k1, k0 + 16 * 8);
    ck_assert_ptr_eq(k0, kv_cache_k_layer(c, 1));
    ck_assert_ptr_ne(kv_cache_v(c, 1, 0), k0);
    kv_cache_destroy(c);
    kv_cache_destroy(NULL);
    ck_assert_str_eq(kv_cache_status_str(KV_CACHE_ERR_FULL), "no free KV cache blocks");
}
END_TEST

/* Attention over rows scattered across blocks equals attention over the same
 * rows in order, bit for bit. */
START_TEST(kv_paged_attention_bit_identical) {
    enum { BS = 4, NB = 8, NKV = 2, HD = 8, NH = 4, POS0 = 13, T = 3 };
    int kvw = NKV * HD, n = POS0 + T;
    float *kc = malloc(sizeof(float) * NB * BS * kvw), *vc = malloc(sizeof(float) * NB * BS * kvw);
    float *kp = malloc(sizeof(float) * NB * BS * kvw), *vp = malloc(sizeof(float) * NB * BS * kvw);
    float q[T * NH * HD], o1[T * NH * HD], o2[T * NH * HD];
    unsigned x = 12345;
    for (int i = 0; i < NB * BS * kvw; i++) {
        x = x * 1103515245u + 12345u;
        kc[i] = (float)((x >> 8) % 2001) / 1000.0f - 1.0f;
        x = x * 1103515245u + 12345u;
        vc[i] = (float)((x >> 8) % 2001) / 1000.0f - 1.0f;
    }
    for (int i = 0; i < T * NH * HD; i++) q[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    int ident[NB], perm[NB] = {5, 2, 7, 0, 1, 6, 3, 4};
    for (int i = 0; i < NB; i++) ident[i] = i;
    for (int j = 0; j < n; j++) { /* position j: row j of the contiguous layout */
        int b = perm[j / BS], r = j % BS;
        memcpy(kp + ((size_t)b * BS + r) * kvw, kc + (size_t)j * kvw, sizeof(float) * kvw);
        memcpy(vp + ((size_t)b * BS + r) * kvw, vc + (size_t)j * kvw, sizeof(float) * kvw);
    }
    backend *be = backend_cpu_create();
    int32_t pos[T], tok_seq[T] = {0}, start[2] = {0, T}, pos0[1] = {POS0};
    for (int t = 0; t < T; t++) pos[t] = POS0 + t;
    batch_desc b = {.n_seqs = 1, .n_tokens = T, .block_size = BS, .max_blocks = NB, .max_q = T, .max_ctx = n,
                    .pos = pos, .tok_seq = tok_seq, .seq_start = start, .seq_pos0 = pos0,
                    .h_seq_start = start, .h_seq_pos0 = pos0};
    for (int window = 0; window <= 5; window += 5) {
        b.block_tables = ident;
        backend_attention(be, o1, q, kc, vc, &b, NH, NKV, HD, window);
        b.block_tables = perm;
        backend_attention(be, o2, q, kp, vp, &b, NH, NKV, HD, window);
        ck_assert_int_eq(memcmp(o1, o2, sizeof(o1)), 0);
    }
    free(kc);
    free(vc);
    free(kp);
    free(vp);
    backend_destroy(be);
}
END_TEST

static model *load_fixture(void) {
    char dir[1024], err[512];
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/qwen3_engram", src ? src : ".");
    model *m = NULL;
    ck_assert_msg(model_load(dir, &m, err, sizeof(err)) == MODEL_OK, "%s", err);
    return m;
}

/* Two sequences interleaved chunk by chunk in one small shared cache give the
 * logits each gives alone in a private cache; the shared cache refuses a
 * sequence it cannot hold and is empty after both are reset. */
START_TEST(kv_shared_states_match_private) {
    backend *be = backend_cpu_create();
    model *m = load_fixture();
    char err[256];
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 8, 2, &fc, err, sizeof(err)), FORWARD_OK);
    int V = m->cfg.vocab_size;
    enum { NA = 37, NB2 = 21 };
    int32_t a[NA], b[NB2];
    for (int i = 0; i < NA; i++) a[i] = (i * 31 + 7) % 200 + 10;
    for (int i = 0; i < NB2; i++) b[i] = (i * 17 + 3) % 200 + 10;
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    float *ra = malloc(sizeof(float) * V), *rb = malloc(sizeof(float) * V);

    kv_cache *kv = NULL;
    ck_assert_int_eq(forward_kv_cache_create(fc, 4 * 16, 16, &kv), KV_CACHE_OK); /* 4 blocks */
    forward_state *sa = NULL, *sb = NULL;
    ck_assert_int_eq(forward_state_create(fc, kv, 64, &sa), FORWARD_OK);
    ck_assert_int_eq(forward_state_create(fc, kv, 64, &sb), FORWARD_OK);
    /* interleave: a in chunks of 10, b in chunks of 7; each runs in steps of 8 */
    ck_assert_int_eq(forward_run(fc, sa, a, 10, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(fc, sb, b, 7, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(fc, sa, a + 10, 20, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(fc, sb, b + 7, 14, lb, NULL), FORWARD_OK);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 4); /* 2 for a's 30, 2 for b's 21 */
    /* a's last 7 need a third block: none left, nothing appended */
    ck_assert_int_eq(forward_run(fc, sa, a + 30, 7, la, NULL), FORWARD_ERR_KV_FULL);
    ck_assert_int_eq(forward_state_pos(sa), 30);
    forward_state_reset(sb);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 2);
    ck_assert_int_eq(forward_run(fc, sa, a + 30, 7, la, NULL), FORWARD_OK);

    /* private runs, the prompt whole: bit-identical logits */
    forward_ctx *big = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 64, 1, &big, err, sizeof(err)), FORWARD_OK);
    forward_state *pa = NULL, *pb = NULL;
    ck_assert_int_eq(forward_state_create(big, NULL, 64, &pa), FORWARD_OK);
    ck_assert_int_eq(forward_run(big, pa, a, NA, ra, NULL), FORWARD_OK);
    ck_assert_int_eq(memcmp(la, ra, sizeof(float) * V), 0);
    ck_assert_int_eq(forward_state_create(big, NULL, 64, &pb), FORWARD_OK);
    ck_assert_int_eq(forward_run(big, pb, b, NB2, rb, NULL), FORWARD_OK);
    ck_assert_int_eq(memcmp(lb, rb, sizeof(float) * V), 0);

    forward_state_destroy(sa);
    forward_state_destroy(sb);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 0);
    kv_cache_destroy(kv);
    forward_state_destroy(pa);
    forward_state_destroy(pb);
    forward_ctx_destroy(fc);
    forward_ctx_destroy(big);
    free(la);
    free(lb);
    free(ra);
    free(rb);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST

/* Batch invariance: three sequences in one step (a prompt chunk, a decode
 * token, a longer prompt), with gates and greedy argmax, give bit for bit the
 * logits and gates of each sequence run alone, whole and token by token. */
START_TEST(forward_batch_bit_identical_to_alone) {
    backend *be = backend_cpu_create();
    model *m = load_fixture();
    char err[256];
    int V = m->cfg.vocab_size, nl = m->engram->n_layers;
    enum { N0 = 19, N1 = 33, N2 = 45, S = 3 };
    int n[S] = {N0, N1, N2};
    int32_t ids[S][N2];
    for (int i = 0; i < S; i++)
        for (int k = 0; k < n[i]; k++) ids[i][k] = (k * (7 + 6 * i) + 11 * i + 5) % 240 + 10;

    /* alone, whole prompt, then alone token by token */
    float *ref = malloc(sizeof(float) * V * S), *refg = calloc((size_t)N2 * nl * S, sizeof(float));
    float *tok = malloc(sizeof(float) * V);
    forward_ctx *one = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 64, 1, &one, err, sizeof(err)), FORWARD_OK);
    for (int i = 0; i < S; i++) {
        forward_state *st = NULL;
        ck_assert_int_eq(forward_state_create(one, NULL, 64, &st), FORWARD_OK);
        ck_assert_int_eq(forward_run(one, st, ids[i], n[i], ref + (size_t)i * V, refg + (size_t)i * N2 * nl), FORWARD_OK);
        forward_state_reset(st);
        for (int k = 0; k < n[i]; k++)
            ck_assert_int_eq(forward_run(one, st, &ids[i][k], 1, tok, NULL), FORWARD_OK);
        ck_assert_int_eq(memcmp(tok, ref + (size_t)i * V, sizeof(float) * V), 0);
        forward_state_destroy(st);
    }

    /* together: seq 0 as one chunk, seq 1 first as 32 tokens then its last one
     * beside seq 2's chunks; the steps mix prefill and decode */
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 64, S, &fc, err, sizeof(err)), FORWARD_OK);
    kv_cache *kv = NULL;
    ck_assert_int_eq(forward_kv_cache_create(fc, 256, 16, &kv), KV_CACHE_OK);
    forward_state *st[S];
    for (int i = 0; i < S; i++) ck_assert_int_eq(forward_state_create(fc, kv, 64, &st[i]), FORWARD_OK);
    float *got = malloc(sizeof(float) * V * S), *gg = calloc((size_t)N2 * nl * S, sizeof(float));
    int32_t am[S] = {-1, -1, -1};
    forward_item step1[2] = {
        {.st = st[1], .ids = ids[1], .n = N1 - 1, .gates = gg + (size_t)N2 * nl},
        {.st = st[2], .ids = ids[2], .n = 30, .gates = gg + (size_t)2 * N2 * nl},
    };
    ck_assert_int_eq(forward_batch(fc, step1, 2), FORWARD_OK);
    forward_item step2[3] = {
        {.st = st[2], .ids = ids[2] + 30, .n = N2 - 30, .logits = got + (size_t)2 * V, .argmax = &am[2],
         .gates = gg + (size_t)(2 * N2 + 30) * nl},
        {.st = st[0], .ids = ids[0], .n = N0, .logits = got, .argmax = &am[0], .gates = gg},
        {.st = st[1], .ids = ids[1] + N1 - 1, .n = 1, .logits = got + V, .argmax = &am[1],
         .gates = gg + (size_t)(N2 + N1 - 1) * nl},
    };
    ck_assert_int_eq(forward_batch(fc, step2, 3), FORWARD_OK);
    ck_assert_int_eq(memcmp(got, ref, sizeof(float) * V * S), 0);
    ck_assert_int_eq(memcmp(gg, refg, sizeof(float) * N2 * nl * S), 0);
    for (int i = 0; i < S; i++) { /* argmax: the lowest id of the largest logit */
        int32_t best = 0;
        for (int v = 1; v < V; v++)
            if (ref[(size_t)i * V + v] > ref[(size_t)i * V + best]) best = v;
        ck_assert_int_eq(am[i], best);
    }
    /* a step over the context's budget is refused with nothing appended */
    forward_item big[2] = {{.st = st[0], .ids = ids[2], .n = 40}, {.st = st[1], .ids = ids[2], .n = 30}};
    ck_assert_int_eq(forward_batch(fc, big, 2), FORWARD_ERR_BATCH);
    ck_assert_int_eq(forward_state_pos(st[0]), N0);
    /* so is a state twice, or a state of another cache */
    forward_item twice[2] = {{.st = st[0], .ids = ids[2], .n = 1}, {.st = st[0], .ids = ids[2], .n = 1}};
    ck_assert_int_eq(forward_batch(fc, twice, 2), FORWARD_ERR_BATCH);
    forward_state *own = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 64, &own), FORWARD_OK);
    forward_item mixed[2] = {{.st = st[0], .ids = ids[2], .n = 1}, {.st = own, .ids = ids[2], .n = 1}};
    ck_assert_int_eq(forward_batch(fc, mixed, 2), FORWARD_ERR_BATCH);
    forward_state_destroy(own);
    ck_assert_int_eq(forward_state_pos(st[0]), N0);
    for (int i = 0; i < S; i++) forward_state_destroy(st[i]);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 0);
    kv_cache_destroy(kv);
    forward_ctx_destroy(fc);
    forward_ctx_destroy(one);
    free(ref), free(refg), free(tok), free(got), free(gg);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST


/* ---- prefix caching ---- */

static kv_cache *make_cached(int bs, int n_blocks, int max_idle, int hash_bits) {
    kv_cache_params p = kv_cache_default_params();
    p.n_layers = 1;
    p.kv_width = 2;
    p.block_size = bs;
    p.n_blocks = n_blocks;
    p.prefix_caching = true;
    p.max_idle = max_idle;
    p.hash_bits = hash_bits;
    kv_cache *c = NULL;
    ck_assert_int_eq(kv_cache_create(&p, &c), KV_CACHE_OK);
    return c;
}

/* A sequence that computes ids[0..n) (reserve, ids, commit), after
 * attaching what the cache has. Returns the positions attached. */
static int compute(kv_cache *c, kv_seq *s, const int32_t *ids, int n, const char *salt) {
    kv_cache_seq_begin(c, s, salt);
    int bs = kv_cache_block_size(c), hit = kv_cache_seq_attach(c, s, ids, n, (n - 1) / bs) * bs;
    ck_assert_int_eq(kv_cache_seq_reserve(c, s, n), KV_CACHE_OK);
    kv_cache_seq_write_ids(c, s, hit, ids + hit, n - hit);
    kv_cache_seq_commit(c, s, n);
    return hit;
}

START_TEST(kv_prefix_refcounts) {
    kv_cache *c = make_cached(4, 8, 0, 0);
    int32_t a[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, b[10] = {1, 2, 3, 4, 5, 6, 7, 9, 9, 10};
    kv_seq sa = {0}, sb = {0}, sc = {0};
    ck_assert_int_eq(compute(c, &sa, a, 10, NULL), 0);
    ck_assert_int_eq(kv_cache_cached_blocks(c), 2); /* the third block is not full */
    int idle = -1;
    ck_assert_int_eq(kv_cache_prefix_probe(c, a, 10, NULL, 9, &idle, NULL), 2);
    ck_assert_int_eq(idle, 0); /* held by sa */
    ck_assert_int_eq(kv_cache_prefix_probe(c, a, 10, NULL, 1, NULL, NULL), 1);
    ck_assert_int_eq(kv_cache_prefix_probe(c, a, 7, NULL, 9, NULL, NULL), 1); /* the second block not whole */
    ck_assert_int_eq(kv_cache_prefix_probe(c, b, 10, NULL, 9, NULL, NULL), 1); /* differs in the second */
    ck_assert_int_eq(kv_cache_prefix_probe(c, a, 10, "tenant", 9, NULL, NULL), 0);
    /* b shares the first block: held twice, counted once */
    ck_assert_int_eq(compute(c, &sb, b, 10, NULL), 4);
    ck_assert_int_eq(sb.blocks[0], sa.blocks[0]);
    ck_assert_int_eq(kv_cache_used_blocks(c), 5);
    ck_assert_int_eq(kv_cache_cached_blocks(c), 3);
    kv_cache_seq_free(c, &sa); /* a's first block stays held by b; its second is idle, its third free */
    ck_assert_int_eq(kv_cache_used_blocks(c), 3);
    ck_assert_int_eq(kv_cache_idle_blocks(c), 1);
    ck_assert_int_eq(kv_cache_free_blocks(c), 5);
    ck_assert_int_eq(kv_cache_prefix_probe(c, a, 10, NULL, 9, &idle, NULL), 2);
    ck_assert_int_eq(idle, 1);
    /* a again: both blocks from the cache, the idle one taken back */
    ck_assert_int_eq(compute(c, &sc, a, 10, NULL), 8);
    ck_assert_int_eq(kv_cache_idle_blocks(c), 0);
    ck_assert_int_eq(kv_cache_used_blocks(c), 5);
    kv_cache_seq_destroy(c, &sb);
    kv_cache_seq_destroy(c, &sc);
    kv_cache_seq_destroy(c, &sa);
    ck_assert_int_eq(kv_cache_used_blocks(c), 0);
    ck_assert_int_eq(kv_cache_idle_blocks(c), 3);
    ck_assert_int_eq(kv_cache_free_blocks(c), 8);
    ck_assert_int_eq(kv_cache_evictions(c), 0);
    /* a table never begun registers nothing */
    kv_seq plain = {0};
    ck_assert_int_eq(kv_cache_seq_reserve(c, &plain, 8), KV_CACHE_OK);
    kv_cache_seq_commit(c, &plain, 8);
    ck_assert_int_eq(kv_cache_cached_blocks(c), 3);
    kv_cache_seq_destroy(c, &plain);
    kv_cache_destroy(c);
}
END_TEST

START_TEST(kv_prefix_lru_eviction) {
    kv_cache *c = make_cached(2, 6, 0, 0);
    int32_t a[6] = {1, 2, 3, 4, 5, 6}, b[5] = {7, 8, 9, 10, 11};
    kv_seq sa = {0}, sb = {0}, sx = {0};
    compute(c, &sa, a, 6, NULL); /* 3 blocks */
    compute(c, &sb, b, 5, NULL); /* 2 registered, 1 partial */
    kv_cache_seq_free(c, &sa);   /* a idle: older than b */
    kv_cache_seq_destroy(c, &sb);
    ck_assert_int_eq(kv_cache_idle_blocks(c), 5);
    ck_assert_int_eq(kv_cache_free_blocks(c), 6);
    /* two blocks: the free one, then a's last (its chain's tail goes first) */
    ck_assert_int_eq(kv_cache_seq_reserve(c, &sx, 4), KV_CACHE_OK);
    ck_assert_int_eq(kv_cache_evictions(c), 1);
    ck_assert_int_eq(kv_cache_prefix_probe(c, a, 6, NULL, 3, NULL, NULL), 2);
    ck_assert_int_eq(kv_cache_prefix_probe(c, b, 5, NULL, 2, NULL, NULL), 2);
    /* a block in use is never evicted: b's first two held, the rest taken */
    kv_seq sb2 = {0};
    ck_assert_int_eq(compute(c, &sb2, b, 5, NULL), 4);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &sx, 12), KV_CACHE_ERR_FULL);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &sx, 6), KV_CACHE_OK); /* evicts a's two */
    ck_assert_int_eq(kv_cache_evictions(c), 3);
    ck_assert_int_eq(kv_cache_prefix_probe(c, a, 6, NULL, 3, NULL, NULL), 0);
    ck_assert_int_eq(kv_cache_prefix_probe(c, b, 5, NULL, 2, NULL, NULL), 2);
    ck_assert_int_eq(kv_cache_free_blocks(c), 0);
    kv_cache_seq_destroy(c, &sx);
    kv_cache_seq_destroy(c, &sb2);
    kv_cache_destroy(c);

    /* at most max_idle idle blocks: the least recently used go first */
    c = make_cached(2, 8, 2, 0);
    compute(c, &sa, a, 6, NULL);
    kv_cache_seq_free(c, &sa);
    ck_assert_int_eq(kv_cache_idle_blocks(c), 2);
    ck_assert_int_eq(kv_cache_evictions(c), 1);
    ck_assert_int_eq(kv_cache_prefix_probe(c, a, 6, NULL, 3, NULL, NULL), 2);
    kv_cache_seq_destroy(c, &sa);
    kv_cache_destroy(c);
}
END_TEST

/* Hashes of 1 bit collide all the time: lookups still find only blocks of
 * the same ids after the same parent, under the same salt. */
START_TEST(kv_prefix_collisions_verified) {
    kv_cache *c = make_cached(3, 40, 0, 1);
    enum { N = 6 };
    int32_t ids[N][9];
    for (int i = 0; i < N; i++)
        for (int k = 0; k < 9; k++) ids[i][k] = k < 3 ? 100 + (i % 2) : 10 * i + k; /* two first blocks */
    kv_seq s[N] = {{0}};
    for (int i = 0; i < N; i++) ck_assert_int_eq(compute(c, &s[i], ids[i], 9, i == 5 ? "salt" : NULL), i == 2 || i == 3 || i == 4 ? 3 : 0);
    ck_assert_int_eq(kv_cache_cached_blocks(c), 3 + 3 + 3 * 2 + 3); /* 2..4 share a first block */
    for (int i = 0; i < N; i++) {
        kv_seq t = {0};
        kv_cache_seq_begin(c, &t, i == 5 ? "salt" : NULL);
        ck_assert_int_eq(kv_cache_seq_attach(c, &t, ids[i], 9, 3), 3);
        for (int k = 0; k < 3; k++) ck_assert_int_eq(t.blocks[k], k == 0 && i >= 2 && i < 5 ? s[i % 2].blocks[0] : s[i].blocks[k]);
        kv_cache_seq_destroy(c, &t);
    }
    int32_t other[9] = {100, 100, 100, 20, 21, 22, 23, 24, 25}, swapped[9] = {101, 101, 101, 3, 4, 5, 6, 7, 8};
    ck_assert_int_eq(kv_cache_prefix_probe(c, other, 9, NULL, 3, NULL, NULL), 1);
    ck_assert_int_eq(kv_cache_prefix_probe(c, swapped, 9, NULL, 3, NULL, NULL), 1); /* block 1 of seq 0 after seq 1's */
    ck_assert_int_eq(kv_cache_prefix_probe(c, ids[5], 9, "salt2", 3, NULL, NULL), 0);
    ck_assert_int_eq(kv_cache_prefix_probe(c, ids[5], 9, NULL, 3, NULL, NULL), 1); /* the unsalted first block */
    for (int i = 0; i < N; i++) kv_cache_seq_destroy(c, &s[i]);
    kv_cache_destroy(c);
}
END_TEST

/* Two sequences computing the same blocks at once: the second to commit
 * chains on the first's blocks, its own stay unregistered (free at its end). */
START_TEST(kv_prefix_duplicate_commit) {
    kv_cache *c = make_cached(2, 8, 0, 0);
    int32_t a[5] = {1, 2, 3, 4, 5};
    kv_seq s1 = {0}, s2 = {0};
    kv_cache_seq_begin(c, &s1, NULL);
    kv_cache_seq_begin(c, &s2, NULL);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &s1, 5), KV_CACHE_OK);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &s2, 5), KV_CACHE_OK);
    kv_cache_seq_write_ids(c, &s1, 0, a, 5);
    kv_cache_seq_write_ids(c, &s2, 0, a, 5);
    kv_cache_seq_commit(c, &s1, 5);
    kv_cache_seq_commit(c, &s2, 5);
    ck_assert_int_eq(kv_cache_cached_blocks(c), 2);
    ck_assert_uint_eq(s1.serial, s2.serial);
    kv_cache_seq_destroy(c, &s2);
    ck_assert_int_eq(kv_cache_idle_blocks(c), 0);
    kv_cache_seq_destroy(c, &s1);
    ck_assert_int_eq(kv_cache_idle_blocks(c), 2);
    kv_cache_destroy(c);
}
END_TEST

/* Resuming from cached blocks: a sequence of prompt a (computed in uneven
 * chunks, so block ends fall inside steps and the Engram conv history (9
 * rows) spans several blocks of 4) leaves its blocks cached; a longer prompt
 * starting with a takes them and computes the rest: bit-identical logits to
 * the longer prompt computed whole. Also with blocks of 16 and a salt. */
START_TEST(kv_prefix_resume_bit_identical) {
    backend *be = backend_cpu_create();
    model *m = load_fixture();
    char err[256];
    int V = m->cfg.vocab_size;
    enum { NA = 37, NL = 51 };
    int32_t ids[NL];
    for (int i = 0; i < NL; i++) ids[i] = (i * 29 + 13) % 230 + 10;
    float *ref = malloc(sizeof(float) * V), *got = malloc(sizeof(float) * V);
    forward_ctx *one = NULL, *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 64, 1, &one, err, sizeof(err)), FORWARD_OK);
    forward_state *ps = NULL;
    ck_assert_int_eq(forward_state_create(one, NULL, 64, &ps), FORWARD_OK);
    ck_assert_int_eq(forward_run(one, ps, ids, NL, ref, NULL), FORWARD_OK);
    forward_state_destroy(ps);
    ck_assert_int_eq(forward_ctx_create(m, be, 8, 2, &fc, err, sizeof(err)), FORWARD_OK);
    ck_assert(forward_ctx_prefix_cacheable(fc));
    ck_assert_uint_gt(forward_ctx_prefix_aux_bytes(fc), 0);
    const int chunks[] = {3, 5, 7, 1, 8, 2, 6, 5};
    for (int bs = 4; bs <= 16; bs += 12) {
        for (int salted = 0; salted < 2; salted++) {
            const char *salt = salted ? "s" : NULL;
            kv_cache *kv = NULL;
            ck_assert_int_eq(forward_kv_cache_create_cached(fc, 256, bs, 0, &kv), KV_CACHE_OK);
            forward_state *sa = NULL, *sb = NULL;
            ck_assert_int_eq(forward_state_create(fc, kv, 64, &sa), FORWARD_OK);
            ck_assert_int_eq(forward_state_begin(sa, salt, ids, NA, 0), 0);
            for (int p = 0, k = 0; p < NA; p += chunks[k % 8], k++) {
                int n = NA - p < chunks[k % 8] ? NA - p : chunks[k % 8];
                ck_assert_int_eq(forward_run(fc, sa, ids + p, n, NULL, NULL), FORWARD_OK);
            }
            ck_assert_int_eq(kv_cache_cached_blocks(kv), NA / bs);
            forward_state_reset(sa); /* its blocks idle in the cache */
            ck_assert_int_eq(forward_state_create(fc, kv, 64, &sb), FORWARD_OK);
            /* resumed at every block end of a (each snapshot), or only at the last */
            for (int most = salted ? NA / bs : 1; most <= NA / bs; most++) {
                int hit = forward_state_begin(sb, salt, ids, NL, most);
                ck_assert_int_eq(hit, most * bs);
                ck_assert_int_eq(forward_state_pos(sb), hit);
                ck_assert_int_eq(forward_run(fc, sb, ids + hit, NL - hit, got, NULL), FORWARD_OK);
                ck_assert_msg(!memcmp(got, ref, sizeof(float) * V), "block size %d, resumed at %d", bs, hit);
                forward_state_reset(sb);
            }
            /* the other salt finds nothing */
            forward_state_reset(sa);
            ck_assert_int_eq(forward_state_begin(sa, salted ? NULL : "s", ids, NL, NL), 0);
            forward_state_destroy(sa);
            forward_state_destroy(sb);
            kv_cache_destroy(kv);
        }
    }
    forward_ctx_destroy(fc);
    forward_ctx_destroy(one);
    free(ref), free(got);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kv_cache");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, kv_alloc_and_accounting);
    tcase_add_test(tc, kv_paged_attention_bit_identical);
    tcase_add_test(tc, kv_shared_states_match_private);
    tcase_add_test(tc, forward_batch_bit_identical_to_alone);
    tcase_add_test(tc, kv_prefix_refcounts);
    tcase_add_test(tc, kv_prefix_lru_eviction);
    tcase_add_test(tc, kv_prefix_collisions_verified);
    tcase_add_test(tc, kv_prefix_duplicate_commit);
    tcase_add_test(tc, kv_prefix_resume_bit_identical);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
