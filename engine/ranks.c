/* The engine's ranks: their setup, the threads of ranks 1..W-1 and how they
 * are woken, the log of state calls they replay, and the step over all of
 * them. See ranks.h. */
#include "engine/ranks.h"

#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "engine/parallel.h"

/* One logged call on a sequence's state (ranks.h: replayed by ranks 1..). */
enum { LOG_RESET, LOG_RESERVE, LOG_BEGIN };
typedef struct {
    int op, slot;
    int n;            /* RESERVE: tokens; BEGIN: ids (at ids_at in the log's ids) */
    size_t ids_at;
    int max_blocks;   /* BEGIN: as given */
    int got;          /* BEGIN: what rank 0's call returned (every replica must return it too) */
    char *salt;       /* BEGIN: a copy (freed with the log; each replaying rank keeps its own), or NULL */
} log_entry;

/* What one rank does, made and run on its own thread (rank 0: the engine's). */
enum { JOB_SETUP, JOB_KV, JOB_STEP, JOB_QUIT };

typedef struct {
    engine_ranks *rk;
    int k;
    model *slice;          /* owned: its tensor-parallel slice, or NULL (the whole model) */
    backend *be;           /* rank 0: borrowed; the others': owned */
    forward_ctx *fc;
    kv_cache *kv;
    forward_state **st;    /* (max_seqs) by slot, made at first use */
    char **salt;           /* (max_seqs) ranks 1..: each state's salt (owned copy) */
    forward_item *items;   /* (max_seqs) ranks 1..: its share of the step */
    par_rank tp, ep;       /* its place in its groups (group NULL: none) */
    pthread_t thread;
    bool started;
    int rc;                /* its latest job's status */
    char err[256];
} rank;

struct engine_ranks {
    model *m;
    ranks_params p;
    int n;                  /* W ranks */
    rank *r;                /* (n) */
    par_group **groups;     /* (n_groups) the tensor- and expert-parallel groups, each once */
    int n_groups;
    pthread_barrier_t bar;  /* the n ranks, inside a step */
    bool bar_made;
    /* waking the threads (ranks 1..) */
    pthread_mutex_t mu;
    pthread_cond_t cv, done_cv;
    int job;
    unsigned long gen;      /* bumped per job */
    int done;               /* threads done with job gen */
    /* the job's arguments */
    int kv_tokens, kv_block, kv_idle, seq_tokens;
    const forward_item *items; /* rank 0's step */
    const int *slots;
    int n_items;
    int *ready;              /* (n) each rank's replay status in a step */
    /* the state log since the last step */
    log_entry *log;
    int n_log, cap_log;
    int32_t *ids;
    size_t n_ids, cap_ids;
    bool broken;             /* a rank could not replay: its states no longer mirror rank 0's */
    /* rank 0's pool of states: slots not in use */
    int *free_slots;
    int n_free, n_slots;
};

/* ---- the layout ---- */

int ranks_cpu_threads(int threads, int tp, int ep) {
    int W = tp > ep ? tp : ep;
    if (W <= 1) return threads;
    int all = threads > 0 ? threads : omp_get_max_threads();
    return all / W > 0 ? all / W : 1;
}

int ranks_check(const model *m, const ranks_params *p, char *err, size_t errlen) {
    int T = p->tp, E = p->ep, W = T > E ? T : E;
    const model_config *c = &m->cfg;
    if (T < 1 || E < 1)
        return snprintf(err, errlen, "tensor-parallel size %d and expert-parallel size %d: each must be at least 1", T,
                        E), -1;
    if (W % T || W % E)
        return snprintf(err, errlen, "tensor-parallel size %d and expert-parallel size %d: the smaller must divide the "
                                     "larger (the ranks are the larger of the two)", T, E), -1;
    if (T > 1 && model_tp_check(c, T, MODEL_TP_GATHER, err, errlen) != MODEL_OK) return -1;
    if (E > 1 && !c->moe.n_experts) return snprintf(err, errlen, "expert parallelism: the model has no experts"), -1;
    if (E > 1 && E > c->moe.n_experts)
        return snprintf(err, errlen, "expert parallelism: %d ranks for %d experts", E, c->moe.n_experts), -1;
    bool store = p->engram_store;
    for (int i = 0; m->engram && i < m->engram->n_layers; i++) store |= m->engram->layers[i].store != NULL;
    if (W > 1 && store)
        return snprintf(err, errlen, "%d ranks: Engram tables read through a store (a table directory, or a synthetic "
                                     "+engram:ROWS table) do not run on more than one rank yet; use the checkpoint's "
                                     "tables", W), -1;
    return 0;
}

/* The group of `size` ranks holding rank k when the groups are runs of
 * `size` consecutive ranks (stride 1) or every stride-th rank. */
static int group_of(int k, int size, int stride, int W) {
    return stride == 1 ? k / size : k % (W / size);
}

/* The groups and every rank's place in them. Returns 0, or -1 out of memory. */
static int make_groups(engine_ranks *rk) {
    int T = rk->p.tp, E = rk->p.ep, W = rk->n, nt = W / T, ne = W / E;
    if (!(rk->groups = calloc((size_t)(nt + ne), sizeof(par_group *)))) return -1;
    par_group **tg = rk->groups, **eg = rk->groups + nt;
    bool shared = T == W && E == W; /* the experts over the tensor-parallel group itself */
    for (int g = 0; T > 1 && g < nt; g++)
        if (!(tg[g] = par_group_create(T))) return -1;
    for (int g = 0; E > 1 && !shared && g < ne; g++)
        if (!(eg[g] = par_group_create(E))) return -1;
    rk->n_groups = nt + ne;
    for (int k = 0; k < W; k++) {
        rank *r = &rk->r[k];
        if (T > 1) r->tp = (par_rank){.group = tg[k / T], .rank = k % T, .n_ranks = T};
        if (E > 1 && shared) r->ep = r->tp;
        else if (E > 1) r->ep = (par_rank){.group = eg[group_of(k, E, W / E, W)], .rank = k / (W / E), .n_ranks = E};
    }
    return 0;
}

/* The most floats an all-gather of a step of max_tokens tokens fills
 * (rows x R width): the widest gathered activation of the whole model. */
static size_t stage_floats(const engine_ranks *rk) {
    const model_config *c = &rk->m->cfg;
    size_t w = (size_t)c->hidden_size, q = (size_t)c->n_heads * c->head_dim, ff = (size_t)c->intermediate_size;
    size_t o = (size_t)c->dsv4.o_groups * c->dsv4.o_lora_rank;
    w = w > q ? w : q;
    w = w > ff ? w : ff;
    w = w > o ? w : o;
    return (size_t)rk->p.max_tokens * w;
}

/* ---- what each rank does ---- */

/* Ranks 1..: a rank's backend, of rank 0's kind, on its own device. */
static int rank_backend(rank *r) {
    backend_params bp = r->rk->p.bp;
    bp.cuda_device = r->k;
    r->be = backend_select(backend_name(r->rk->r[0].be), &bp, r->err, sizeof(r->err));
    return r->be ? 0 : -1;
}

/* Waits for the other ranks, each with its status in ready[]: 0 when every
 * one is 0, else -1 (the same answer on every rank). */
static int all_ready(rank *r, int rc) {
    engine_ranks *rk = r->rk;
    rk->ready[r->k] = rc;
    pthread_barrier_wait(&rk->bar);
    int all = 0;
    for (int q = 0; q < rk->n; q++) all |= rk->ready[q];
    pthread_barrier_wait(&rk->bar); /* ready[] read by all before a later call writes it */
    return all ? -1 : 0;
}

/* The rank's backend, slice and context; then, once every rank has them,
 * its groups (joined together: NCCL's setup waits for all of a group). */
static int rank_setup(rank *r) {
    engine_ranks *rk = r->rk;
    int T = rk->p.tp, rc = r->k ? rank_backend(r) : 0;
    if (!rc && T > 1 && model_tp_slice(rk->m, r->k % T, T, MODEL_TP_GATHER, &r->slice, r->err, sizeof(r->err)))
        rc = -1;
    if (!rc && forward_ctx_create(r->slice ? r->slice : rk->m, r->be, rk->p.max_tokens, rk->p.max_seqs, &r->fc, r->err,
                                  sizeof(r->err)) != FORWARD_OK)
        rc = -1;
    size_t S = (size_t)rk->p.max_seqs;
    if (!rc && (!(r->st = calloc(S, sizeof(*r->st))) || !(r->salt = calloc(S, sizeof(*r->salt))) ||
                !(r->items = calloc(S, sizeof(*r->items))))) {
        snprintf(r->err, sizeof(r->err), "out of memory");
        rc = -1;
    }
    if (all_ready(r, rc)) return -1; /* (the failing rank has its message) */
    if (r->tp.group && par_rank_join(&r->tp, r->be, stage_floats(rk), r->err, sizeof(r->err))) rc = -1;
    if (!rc && r->ep.group && r->ep.group != r->tp.group &&
        par_rank_join(&r->ep, r->be, 0, r->err, sizeof(r->err))) /* all-reduces only: no staging */
        rc = -1;
    if (!rc && r->tp.group && forward_ctx_set_tensor_rank(r->fc, &r->tp, r->err, sizeof(r->err))) rc = -1;
    if (!rc && r->ep.group && forward_ctx_set_expert_rank(r->fc, &r->ep, r->err, sizeof(r->err))) rc = -1;
    return rc;
}

static int rank_kv(rank *r) {
    engine_ranks *rk = r->rk;
    int rc = rk->kv_idle >= 0
                 ? forward_kv_cache_create_cached(r->fc, rk->kv_tokens, rk->kv_block, rk->kv_idle, &r->kv)
                 : forward_kv_cache_create(r->fc, rk->kv_tokens, rk->kv_block, &r->kv);
    if (rc != KV_CACHE_OK)
        snprintf(r->err, sizeof(r->err), "out of %s memory for a KV cache of %d tokens", backend_name(r->be),
                 rk->kv_tokens);
    return rc;
}

/* Ranks 1..: the state of slot k, made at its first use. */
static forward_state *rank_state(rank *r, int k) {
    if (!r->st[k] && forward_state_create(r->fc, r->kv, r->rk->seq_tokens, &r->st[k]) != FORWARD_OK) {
        snprintf(r->err, sizeof(r->err), "out of memory for a sequence's state");
        return NULL;
    }
    return r->st[k];
}

/* Ranks 1..: the log's calls, in order, on this rank's states. A call that
 * does not do on a replica what it did on rank 0 is a divergence (a bug,
 * or memory that ran out here): -1 with a message. */
static int rank_replay(rank *r) {
    engine_ranks *rk = r->rk;
    for (int i = 0; i < rk->n_log; i++) {
        const log_entry *l = &rk->log[i];
        forward_state *st = rank_state(r, l->slot);
        if (!st) return -1;
        if (l->op == LOG_RESET) {
            forward_state_reset(st);
            free(r->salt[l->slot]);
            r->salt[l->slot] = NULL;
        } else if (l->op == LOG_RESERVE) {
            int rc = forward_state_reserve(st, l->n);
            if (rc != FORWARD_OK)
                return snprintf(r->err, sizeof(r->err), "replaying a reserve of %d tokens: %s", l->n,
                                forward_status_str(rc)), -1;
        } else {
            char *salt = l->salt ? strdup(l->salt) : NULL;
            if (l->salt && !salt) return snprintf(r->err, sizeof(r->err), "out of memory"), -1;
            free(r->salt[l->slot]);
            r->salt[l->slot] = salt;
            int got = forward_state_begin(st, salt, rk->ids + l->ids_at, l->n, l->max_blocks);
            if (got != l->got)
                return snprintf(r->err, sizeof(r->err), "a prefix-cache hit of %d positions where rank 0 had %d", got,
                                l->got), -1;
        }
    }
    return 0;
}

/* A step: ranks 1.. replay the log; if every rank could, each runs the
 * step (rank 0 the engine's items, the others theirs, without outputs). */
static int rank_step(rank *r) {
    engine_ranks *rk = r->rk;
    int rc = r->k ? rank_replay(r) : 0;
    if (all_ready(r, rc)) return r->k && rc ? -1 : FORWARD_ERR_NOMEM; /* no rank runs the step */
    if (!r->k) return forward_batch(r->fc, rk->items, rk->n_items);
    for (int j = 0; j < rk->n_items; j++) {
        forward_state *st = rank_state(r, rk->slots[j]); /* made by its reserve: never NULL here */
        r->items[j] = (forward_item){.st = st, .ids = rk->items[j].ids, .n = rk->items[j].n};
    }
    return forward_batch(r->fc, r->items, rk->n_items);
}

static void rank_quit(rank *r) {
    engine_ranks *rk = r->rk;
    for (int k = 0; r->st && k < rk->p.max_seqs; k++) forward_state_destroy(r->st[k]), free(r->salt ? r->salt[k] : NULL);
    kv_cache_destroy(r->kv);
    forward_ctx_destroy(r->fc);
    par_rank_leave(&r->ep);
    par_rank_leave(&r->tp);
    if (r->k) backend_destroy(r->be);
    model_destroy(r->slice);
    free(r->st), free(r->salt), free(r->items);
    r->st = NULL, r->salt = NULL, r->items = NULL, r->kv = NULL, r->fc = NULL, r->slice = NULL;
}

static int rank_do(rank *r, int job) {
    switch (job) {
    case JOB_SETUP: return rank_setup(r);
    case JOB_KV: return rank_kv(r);
    case JOB_STEP: return rank_step(r);
    default: rank_quit(r); return 0;
    }
}

/* Ranks 1..: sleep until the next job, run it, say so. */
static void *rank_main(void *arg) {
    rank *r = arg;
    engine_ranks *rk = r->rk;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&rk->mu);
        while (rk->gen == seen) pthread_cond_wait(&rk->cv, &rk->mu);
        seen = rk->gen;
        int job = rk->job;
        pthread_mutex_unlock(&rk->mu);
        r->rc = rank_do(r, job);
        pthread_mutex_lock(&rk->mu);
        rk->done++;
        pthread_cond_signal(&rk->done_cv);
        pthread_mutex_unlock(&rk->mu);
        if (job == JOB_QUIT) return NULL;
    }
}

/* Runs job on every rank: rank 0 here, the others on their threads, and
 * waits for all. Returns 0 when every rank returned 0, else the first
 * failing rank's status, and its message (naming the rank when there are
 * several) in err. */
static int ranks_run(engine_ranks *rk, int job, char *err, size_t errlen) {
    for (int k = 0; k < rk->n; k++) rk->r[k].err[0] = 0;
    if (rk->n > 1) {
        pthread_mutex_lock(&rk->mu);
        rk->job = job;
        rk->done = 0;
        rk->gen++;
        pthread_cond_broadcast(&rk->cv);
        pthread_mutex_unlock(&rk->mu);
    }
    rk->r[0].rc = rank_do(&rk->r[0], job);
    if (rk->n > 1) {
        pthread_mutex_lock(&rk->mu);
        while (rk->done < rk->n - 1) pthread_cond_wait(&rk->done_cv, &rk->mu);
        pthread_mutex_unlock(&rk->mu);
    }
    int rc = 0;
    for (int k = 0; k < rk->n; k++) {
        const rank *r = &rk->r[k];
        if (!rc) rc = r->rc;
        if (!r->rc || !r->err[0] || !err) continue;
        if (rk->n > 1) snprintf(err, errlen, "rank %d: %s", k, r->err);
        else snprintf(err, errlen, "%s", r->err);
        break;
    }
    return rc;
}

/* ---- making and freeing ---- */

int ranks_create(model *m, backend *be0, const ranks_params *p, engine_ranks **out, char *err, size_t errlen) {
    *out = NULL;
    if (ranks_check(m, p, err, errlen)) return -1;
    engine_ranks *rk = calloc(1, sizeof(*rk));
    if (!rk) return snprintf(err, errlen, "out of memory"), -1;
    int W = p->tp > p->ep ? p->tp : p->ep;
    rk->m = m;
    rk->p = *p;
    rk->n = W;
    pthread_mutex_init(&rk->mu, NULL);
    pthread_cond_init(&rk->cv, NULL);
    pthread_cond_init(&rk->done_cv, NULL);
    rk->r = calloc((size_t)W, sizeof(rank));
    for (int k = 0; rk->r && k < W; k++) rk->r[k] = (rank){.rk = rk, .k = k};
    if (rk->r) rk->r[0].be = be0;
    rk->ready = calloc((size_t)W, sizeof(int));
    rk->free_slots = malloc((size_t)p->max_seqs * sizeof(int));
    rk->bar_made = rk->r && !pthread_barrier_init(&rk->bar, NULL, (unsigned)W);
    if (!rk->ready || !rk->free_slots || !rk->bar_made || make_groups(rk)) {
        ranks_destroy(rk);
        return snprintf(err, errlen, "out of memory"), -1;
    }
    for (int k = 1; k < W; k++) {
        if (pthread_create(&rk->r[k].thread, NULL, rank_main, &rk->r[k])) {
            ranks_destroy(rk);
            return snprintf(err, errlen, "cannot start the thread of rank %d", k), -1;
        }
        rk->r[k].started = true;
    }
    if (ranks_run(rk, JOB_SETUP, err, errlen)) {
        ranks_destroy(rk);
        return -1;
    }
    *out = rk;
    return 0;
}

/* Every rank quits: the threads that run (all of them once made) through
 * the job, rank 0 here; then the threads are joined. */
void ranks_destroy(engine_ranks *rk) {
    if (!rk) return;
    if (rk->r) {
        int running = 0;
        for (int k = 1; k < rk->n; k++) running += rk->r[k].started;
        if (running == rk->n - 1) {
            ranks_run(rk, JOB_QUIT, NULL, 0);
        } else { /* some thread never started: no job can wait for all; each started one quits */
            pthread_mutex_lock(&rk->mu);
            rk->job = JOB_QUIT;
            rk->gen++;
            pthread_cond_broadcast(&rk->cv);
            pthread_mutex_unlock(&rk->mu);
            rank_quit(&rk->r[0]);
        }
        for (int k = 1; k < rk->n; k++)
            if (rk->r[k].started) pthread_join(rk->r[k].thread, NULL);
    }
    for (int g = 0; g < rk->n_groups; g++) par_group_destroy(rk->groups[g]);
    for (int i = 0; i < rk->n_log; i++) free(rk->log[i].salt);
    if (rk->bar_made) pthread_barrier_destroy(&rk->bar);
    pthread_cond_destroy(&rk->done_cv);
    pthread_cond_destroy(&rk->cv);
    pthread_mutex_destroy(&rk->mu);
    free(rk->groups), free(rk->r), free(rk->ready), free(rk->free_slots), free(rk->log), free(rk->ids);
    free(rk);
}

int ranks_count(const engine_ranks *rk) { return rk->n; }
forward_ctx *ranks_ctx(const engine_ranks *rk) { return rk->r[0].fc; }

const model *ranks_model(const engine_ranks *rk) { return rk->r[0].slice ? rk->r[0].slice : rk->m; }

void ranks_describe(const engine_ranks *rk, char *buf, size_t n) {
    const rank *r = &rk->r[0];
    const char *dev = backend_name(r->be);
    if (rk->n == 1) {
        snprintf(buf, n, "1 rank on %s", dev);
        return;
    }
    const par_rank *any = r->tp.group ? &r->tp : &r->ep;
    bool host = !strcmp(par_rank_kind(any), "host");
    snprintf(buf, n, "%d ranks, one thread each (tensor parallel %d, expert parallel %d%s) on %s%s; collectives: %s%s",
             rk->n, rk->p.tp, rk->p.ep, rk->p.ep > 1 && r->ep.group == r->tp.group ? " over the same group" : "", dev,
             strcmp(dev, "cuda") ? "" : ", rank k on device k", par_rank_kind(any),
             host ? " (the CPU fake: exact, not faster)" : "");
}

int ranks_kv_create(engine_ranks *rk, int n_tokens, int block_size, int max_idle, int max_seq_tokens, kv_cache **kv0,
                    char *err, size_t errlen) {
    rk->kv_tokens = n_tokens, rk->kv_block = block_size, rk->kv_idle = max_idle, rk->seq_tokens = max_seq_tokens;
    int rc = ranks_run(rk, JOB_KV, err, errlen);
    *kv0 = rk->r[0].kv;
    return rc;
}

/* ---- the states ---- */

/* Appends a call to the log (ranks 1.. replay it). Returns the entry, or
 * NULL out of memory: the ranks are then broken (a later step fails). */
static log_entry *log_add(engine_ranks *rk, int op, int slot) {
    if (rk->n == 1) return NULL;
    if (rk->n_log == rk->cap_log) {
        int cap = rk->cap_log ? 2 * rk->cap_log : 64;
        log_entry *l = realloc(rk->log, (size_t)cap * sizeof(*l));
        if (!l) {
            rk->broken = true;
            log_error("ranks: out of memory for the state log; every later step fails");
            return NULL;
        }
        rk->log = l, rk->cap_log = cap;
    }
    log_entry *l = &rk->log[rk->n_log++];
    *l = (log_entry){.op = op, .slot = slot};
    return l;
}

int ranks_state_take(engine_ranks *rk, forward_state **st0) {
    rank *r0 = &rk->r[0];
    int k = rk->n_free ? rk->free_slots[--rk->n_free] : rk->n_slots;
    if (k == rk->n_slots) { /* every made state is in use */
        if (k >= rk->p.max_seqs || forward_state_create(r0->fc, r0->kv, rk->seq_tokens, &r0->st[k]) != FORWARD_OK)
            return -1;
        rk->n_slots++;
    }
    *st0 = r0->st[k];
    return k;
}

void ranks_state_release(engine_ranks *rk, int slot) {
    forward_state_reset(rk->r[0].st[slot]);
    log_add(rk, LOG_RESET, slot);
    rk->free_slots[rk->n_free++] = slot;
}

int ranks_state_reserve(engine_ranks *rk, int slot, int n) {
    int rc = forward_state_reserve(rk->r[0].st[slot], n);
    log_entry *l = rc == FORWARD_OK ? log_add(rk, LOG_RESERVE, slot) : NULL; /* a failed reserve changed nothing */
    if (l) l->n = n;
    return rc;
}

int ranks_state_begin(engine_ranks *rk, int slot, const char *salt, const int32_t *ids, int n_ids, int max_blocks) {
    int got = forward_state_begin(rk->r[0].st[slot], salt, ids, n_ids, max_blocks);
    if (rk->n == 1) return got;
    if (rk->n_ids + (size_t)n_ids > rk->cap_ids) {
        size_t cap = rk->cap_ids ? 2 * rk->cap_ids : 4096;
        while (cap < rk->n_ids + (size_t)n_ids) cap *= 2;
        int32_t *p = realloc(rk->ids, cap * sizeof(int32_t));
        if (!p) {
            rk->broken = true;
            log_error("ranks: out of memory for the state log; every later step fails");
            return got;
        }
        rk->ids = p, rk->cap_ids = cap;
    }
    char *copy = salt && *salt ? strdup(salt) : NULL;
    log_entry *l = (salt && *salt && !copy) ? NULL : log_add(rk, LOG_BEGIN, slot);
    if (!l) {
        free(copy);
        rk->broken = true;
        return got;
    }
    memcpy(rk->ids + rk->n_ids, ids, (size_t)n_ids * sizeof(int32_t));
    *l = (log_entry){.op = LOG_BEGIN, .slot = slot, .n = n_ids, .ids_at = rk->n_ids, .max_blocks = max_blocks,
                     .got = got, .salt = copy};
    rk->n_ids += (size_t)n_ids;
    return got;
}

int ranks_step(engine_ranks *rk, const forward_item *items, const int *slots, int n_items) {
    if (rk->n == 1) return forward_batch(rk->r[0].fc, items, n_items);
    if (rk->broken) return FORWARD_ERR_NOMEM;
    rk->items = items, rk->slots = slots, rk->n_items = n_items;
    int rc = ranks_run(rk, JOB_STEP, NULL, 0);
    for (int i = 0; i < rk->n_log; i++) free(rk->log[i].salt);
    rk->n_log = 0, rk->n_ids = 0;
    for (int k = 1; k < rk->n && rc; k++)
        if (rk->ready[k]) { /* its states no longer mirror rank 0's: nothing more can run */
            rk->broken = true;
            log_error("rank %d: %s; every later step fails (restart the engine)", k, rk->r[k].err);
            return FORWARD_ERR_NOMEM;
        }
    return rc;
}

int ranks_forward_run(engine_ranks *rk, int slot, const int32_t *ids, int n, float *logits, float *gates) {
    rank *r0 = &rk->r[0];
    forward_state *st = r0->st[slot];
    if (rk->n == 1) return forward_run(r0->fc, st, ids, n, logits, gates);
    if (n <= 0) return FORWARD_OK;
    int rc = ranks_state_reserve(rk, slot, n), T = forward_ctx_max_tokens(r0->fc);
    int nl = rk->m->engram ? rk->m->engram->n_layers : 0;
    for (int i = 0; i < n && rc == FORWARD_OK; i += T) {
        int m = n - i < T ? n - i : T;
        forward_item it = {.st = st, .ids = ids + i, .n = m, .logits = i + m == n ? logits : NULL,
                           .gates = gates ? gates + (size_t)i * nl : NULL};
        rc = ranks_step(rk, &it, &slot, 1);
    }
    return rc;
}
