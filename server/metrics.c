/* Prometheus metrics, names prefixed engram_ and shaped after vLLM's: HTTP
 * responses by route and status, requests by finish reason, prompt and
 * generated token counters, running/waiting gauges, latency histograms (end
 * to end, time to first token, queue time), process start time, the prefix
 * cache (tokens queried and hit, cached blocks, evictions); and the
 * Engram table store's counters (engram_store_*), and the backend's (engram_fetch_*, engram_hbm_*,
 * engram_pcie_bytes_total, engram_prefetch_stall_seconds: how long the GPU waited for rows)
 * kept by the stores themselves; the HTTP connections (open, refused and
 * closed by reason). One mutex; rendered as the text exposition format. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server.h"

#define N_BUCKETS 14
static const double bucket_le[N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                            1, 2.5, 5, 10, 30, 60, 120};

typedef struct {
    unsigned long long counts[N_BUCKETS + 1]; /* last: +Inf only */
    unsigned long long n;
    double sum;
} histogram;

static const char *routes[] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                               "/metrics", "/tokenize", "/detokenize", "other"};
#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))
static const int statuses[] = {200, 400, 401, 404, 405, 413, 500, 503};
#define N_STATUSES (sizeof(statuses) / sizeof(statuses[0]))
static const char *reasons[] = {"stop", "length", "abort", "error"};
#define N_REASONS (sizeof(reasons) / sizeof(reasons[0]))

struct metrics {
    pthread_mutex_t mu;
    double start_time; /* unix seconds */
    unsigned long long http[N_ROUTES][N_STATUSES + 1]; /* last column: other statuses */
    unsigned long long finished[N_REASONS];
    unsigned long long prompt_tokens, generation_tokens;
    histogram e2e, ttft, queue, itl;
    histogram grammar_compile;          /* structured outputs: compile seconds per new grammar */
    unsigned long long grammar_cache_hits; /* requests whose grammar was compiled before */
    unsigned long long conn[METRICS_CONN_N];
    int conn_open;
};

metrics *metrics_create(void) {
    metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_time = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    return m;
}

void metrics_destroy(metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void metrics_http(metrics *m, const char *route, int status) {
    size_t r = N_ROUTES - 1, s = N_STATUSES;
    for (size_t i = 0; i < N_ROUTES; i++)
        if (!strcmp(routes[i], route)) r = i;
    for (size_t i = 0; i < N_STATUSES; i++)
        if (statuses[i] == status) s = i;
    pthread_mutex_lock(&m->mu);
    m->http[r][s]++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_connection(metrics *m, metrics_conn_event ev) {
    pthread_mutex_lock(&m->mu);
    m->conn[ev]++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_connections_open(metrics *m, int open) {
    pthread_mutex_lock(&m->mu);
    m->conn_open = open;
    pthread_mutex_unlock(&m->mu);
}

static void observe(histogram *h, double v) {
    if (v < 0) v = 0;
    size_t b = 0;
    while (b < N_BUCKETS && v > bucket_le[b]) b++;
    h->counts[b]++;
    h->n++;
    h->sum += v;
}

void metrics_request_done(metrics *m, const char *reason, const engine_output *o, double t_end) {
    size_t r = N_REASONS - 1;
    for (size_t i = 0; i < N_REASONS; i++)
        if (!strcmp(reasons[i], reason)) r = i;
    pthread_mutex_lock(&m->mu);
    m->finished[r]++;
    m->prompt_tokens += (unsigned long long)o->n_prompt;
    m->generation_tokens += (unsigned long long)o->n_generated;
    if (o->t_submit > 0) {
        observe(&m->e2e, t_end - o->t_submit);
        if (o->t_start > 0) observe(&m->queue, o->t_start - o->t_submit);
        if (o->t_first_token > 0) observe(&m->ttft, o->t_first_token - o->t_submit);
        double end = o->t_end > 0 ? o->t_end : t_end;
        if (o->t_first_token > 0 && o->n_generated > 1) /* mean gap of this request */
            observe(&m->itl, (end - o->t_first_token) / (o->n_generated - 1));
    }
    pthread_mutex_unlock(&m->mu);
}

void metrics_grammar_compile(metrics *m, double seconds, bool cached) {
    pthread_mutex_lock(&m->mu);
    if (cached) m->grammar_cache_hits++;
    else observe(&m->grammar_compile, seconds);
    pthread_mutex_unlock(&m->mu);
}

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} strbuf;

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *q = realloc(b->buf, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->buf = q;
        b->cap = cap;
    }
}

static void render_histogram(strbuf *b, const char *name, const char *help, const histogram *h) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long long cum = 0;
    for (size_t i = 0; i < N_BUCKETS; i++) {
        cum += h->counts[i];
        sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_le[i], cum);
    }
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, h->n, name, h->sum, name, h->n);
}

/* A histogram of token counts from per-bucket counts over
 * engine_prompt_bucket_le (the last bucket unbounded). */
static void render_tokens_histogram(strbuf *b, const char *name, const char *help, const long long *counts,
                                    long long sum) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    long long cum = 0;
    for (int k = 0; k < ENGINE_PROMPT_BUCKETS - 1; k++) {
        cum += counts[k];
        sb_printf(b, "%s_bucket{le=\"%d\"} %lld\n", name, engine_prompt_bucket_le(k), cum);
    }
    cum += counts[ENGINE_PROMPT_BUCKETS - 1];
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %lld\n%s_sum %lld\n%s_count %lld\n", name, cum, name, sum, name, cum);
}

/* A histogram from per-bucket counts over engram_store_hist_le (+Inf last). */
static void render_store_histogram(strbuf *b, const char *name, const char *help, const uint64_t *counts,
                                   double sum) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long long cum = 0;
    for (size_t i = 0; i < ENGRAM_STORE_HIST_BUCKETS; i++) {
        cum += counts[i];
        sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, engram_store_hist_le[i], cum);
    }
    cum += counts[ENGRAM_STORE_HIST_BUCKETS];
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9f\n%s_count %llu\n", name, cum, name, sum, name, cum);
}

static void render_store(strbuf *b, const engram_store_stats *es) {
    typedef unsigned long long ull;
    sb_printf(b,
              "# HELP engram_store_lookups_total Engram table rows asked for by gathers (all Engram layers).\n"
              "# TYPE engram_store_lookups_total counter\n"
              "engram_store_lookups_total %llu\n"
              "# HELP engram_store_hits_total Engram rows by the tier that served them: dram (the mapped table or the "
              "row cache), nvme (read from the table file, or waited for while in flight).\n"
              "# TYPE engram_store_hits_total counter\n"
              "engram_store_hits_total{tier=\"dram\"} %llu\n"
              "engram_store_hits_total{tier=\"nvme\"} %llu\n"
              "# HELP engram_store_prefetch_rows_total Row ids of upcoming prompt tokens handed to the prefetch threads (lookahead).\n"
              "# TYPE engram_store_prefetch_rows_total counter\n"
              "engram_store_prefetch_rows_total %llu\n"
              "# HELP engram_store_prefetch_reads_total Rows the prefetch threads read from NVMe into the row caches.\n"
              "# TYPE engram_store_prefetch_reads_total counter\n"
              "engram_store_prefetch_reads_total %llu\n"
              "# HELP engram_store_prefetch_dropped_total Prefetch row ids dropped because a prefetch queue was full.\n"
              "# TYPE engram_store_prefetch_dropped_total counter\n"
              "engram_store_prefetch_dropped_total %llu\n"
              "# HELP engram_store_cache_evictions_total Rows evicted from the DRAM row caches.\n"
              "# TYPE engram_store_cache_evictions_total counter\n"
              "engram_store_cache_evictions_total %llu\n",
              (ull)es->lookups, (ull)es->dram_hits, (ull)es->nvme_hits, (ull)es->prefetch_rows,
              (ull)es->prefetch_reads, (ull)es->prefetch_dropped, (ull)es->evictions);
    sb_printf(b,
              "# HELP engram_store_cache_rows Rows held by the DRAM row caches over NVMe.\n"
              "# TYPE engram_store_cache_rows gauge\n"
              "engram_store_cache_rows %llu\n"
              "# HELP engram_store_cache_capacity_rows Row slots of the DRAM row caches over NVMe.\n"
              "# TYPE engram_store_cache_capacity_rows gauge\n"
              "engram_store_cache_capacity_rows %llu\n"
              "# HELP engram_store_cache_bytes DRAM held by the row caches over NVMe.\n"
              "# TYPE engram_store_cache_bytes gauge\n"
              "engram_store_cache_bytes %llu\n"
              "# HELP engram_store_tables_bad Engram table files that shrank under their DRAM mapping: their gathers "
              "fail (500) until a restart.\n"
              "# TYPE engram_store_tables_bad gauge\n"
              "engram_store_tables_bad %llu\n"
              "# HELP engram_store_nvme_reads_total Reads from the Engram table files (runs of whole 4 KiB blocks).\n"
              "# TYPE engram_store_nvme_reads_total counter\n"
              "engram_store_nvme_reads_total %llu\n"
              "# HELP engram_store_nvme_read_bytes_total Bytes read from the Engram table files.\n"
              "# TYPE engram_store_nvme_read_bytes_total counter\n"
              "engram_store_nvme_read_bytes_total %llu\n",
              (ull)es->cache_rows, (ull)es->cache_capacity, (ull)es->cache_bytes, (ull)es->tables_bad, (ull)es->nvme_reads,
              (ull)es->nvme_bytes);
    sb_printf(b,
              "# HELP engram_store_cache_admissions_total Rows taken into the DRAM row caches (gathers' misses, "
              "prefetches, warm starts, demotions).\n"
              "# TYPE engram_store_cache_admissions_total counter\n"
              "engram_store_cache_admissions_total %llu\n"
              "# HELP engram_store_cache_rejections_total Gathers' misses the admission policy (TinyLFU) kept out of "
              "the DRAM row caches: read, not cached.\n"
              "# TYPE engram_store_cache_rejections_total counter\n"
              "engram_store_cache_rejections_total %llu\n"
              "# HELP engram_store_cache_promotions_total Exclusive tiers: rows that left the DRAM row caches, or "
              "passed them, for the backend's hot-row cache.\n"
              "# TYPE engram_store_cache_promotions_total counter\n"
              "engram_store_cache_promotions_total %llu\n"
              "# HELP engram_store_cache_demotions_total Exclusive tiers: rows the backend's hot-row cache evicted, "
              "taken into the DRAM row caches.\n"
              "# TYPE engram_store_cache_demotions_total counter\n"
              "engram_store_cache_demotions_total %llu\n"
              "# HELP engram_store_warm_rows_total Rows of the hot-row files read back into the DRAM row caches.\n"
              "# TYPE engram_store_warm_rows_total counter\n"
              "engram_store_warm_rows_total %llu\n"
              "# HELP engram_store_warm_target_rows Rows the warm starts read back in all.\n"
              "# TYPE engram_store_warm_target_rows gauge\n"
              "engram_store_warm_target_rows %llu\n"
              "# HELP engram_store_warm_ignored_total Hot-row files ignored at start: stale, foreign or damaged.\n"
              "# TYPE engram_store_warm_ignored_total counter\n"
              "engram_store_warm_ignored_total %llu\n"
              "# HELP engram_store_warming Stores still reading their hot rows back.\n"
              "# TYPE engram_store_warming gauge\n"
              "engram_store_warming %llu\n"
              "# HELP engram_store_warm_seconds Seconds the longest warm start took (0 until done).\n"
              "# TYPE engram_store_warm_seconds gauge\n"
              "engram_store_warm_seconds %.6f\n",
              (ull)es->admissions, (ull)es->rejections, (ull)es->promotions, (ull)es->demotions, (ull)es->warm_rows, (ull)es->warm_target,
              (ull)es->warm_ignored, (ull)es->warming, es->warm_seconds);
    render_store_histogram(b, "engram_store_nvme_read_latency_seconds",
                           "Latency of reads from the Engram table files, submission to completion.",
                           es->nvme_read_hist, es->nvme_read_seconds);
    render_store_histogram(b, "engram_store_gather_stall_seconds",
                           "Time each NVMe-tier gather waited for rows not in DRAM (its own reads, reads in flight).",
                           es->stall_hist, es->stall_seconds);
}

/* The backend side of the store: what engram_fetch moved to the backend per
 * step, the hot-row cache, and how long the compute waited for rows. */
static void render_fetch(strbuf *b, const engram_fetch_stats *fs) {
    typedef unsigned long long ull;
    sb_printf(b,
              "# HELP engram_fetch_lookups_total Engram rows the forward pass asked for from host tables, repeats "
              "included.\n"
              "# TYPE engram_fetch_lookups_total counter\n"
              "engram_fetch_lookups_total %llu\n"
              "# HELP engram_fetch_unique_rows_total Distinct rows per step, summed (repeats within a step are fetched "
              "once).\n"
              "# TYPE engram_fetch_unique_rows_total counter\n"
              "engram_fetch_unique_rows_total %llu\n"
              "# HELP engram_hbm_hits_total Distinct rows found in the backend's hot-row cache (--engram-hbm-cache).\n"
              "# TYPE engram_hbm_hits_total counter\n"
              "engram_hbm_hits_total %llu\n"
              "# HELP engram_fetch_copied_rows_total Rows copied from host memory to the backend.\n"
              "# TYPE engram_fetch_copied_rows_total counter\n"
              "engram_fetch_copied_rows_total %llu\n"
              "# HELP engram_fetch_copied_back_rows_total Exclusive tiers: rows the backend's hot-row cache evicted, "
              "copied back to host memory for the DRAM row caches.\n"
              "# TYPE engram_fetch_copied_back_rows_total counter\n"
              "engram_fetch_copied_back_rows_total %llu\n"
              "# HELP engram_pcie_bytes_total Bytes copied from host memory to the backend for Engram rows (rows as "
              "stored, plus slot indices).\n"
              "# TYPE engram_pcie_bytes_total counter\n"
              "engram_pcie_bytes_total %llu\n"
              "# HELP engram_hbm_cache_rows Rows held by the backend's hot-row cache.\n"
              "# TYPE engram_hbm_cache_rows gauge\n"
              "engram_hbm_cache_rows %llu\n"
              "# HELP engram_hbm_cache_capacity_rows Row slots of the backend's hot-row cache.\n"
              "# TYPE engram_hbm_cache_capacity_rows gauge\n"
              "engram_hbm_cache_capacity_rows %llu\n",
              (ull)fs->lookups, (ull)fs->unique, (ull)fs->cache_hits, (ull)fs->copied_rows, (ull)fs->copied_back_rows, (ull)fs->copied_bytes,
              (ull)fs->cache_rows, (ull)fs->cache_capacity);
    render_store_histogram(b, "engram_prefetch_stall_seconds",
                           "Per step and Engram layer, how long the compute waited for its rows: from reaching the "
                           "layer to the rows' arrival (0 when they came first; on the CPU backend, the wait for the host gather).",
                           fs->stall_hist, fs->stall_seconds);
}

char *metrics_render(metrics *m, const engine_stats *st, const engram_store_stats *es, const engram_fetch_stats *fs) {
    strbuf b = {0};
    b.cap = 8192;
    if (!(b.buf = malloc(b.cap))) return NULL;
    b.buf[0] = 0;
    pthread_mutex_lock(&m->mu);
    sb_printf(&b, "# HELP engram_http_requests_total HTTP responses by route and status code.\n"
                  "# TYPE engram_http_requests_total counter\n");
    for (size_t r = 0; r < N_ROUTES; r++)
        for (size_t s = 0; s <= N_STATUSES; s++)
            if (m->http[r][s] && s < N_STATUSES)
                sb_printf(&b, "engram_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n", routes[r],
                          statuses[s], m->http[r][s]);
            else if (m->http[r][s])
                sb_printf(&b, "engram_http_requests_total{route=\"%s\",status=\"other\"} %llu\n", routes[r],
                          m->http[r][s]);
    sb_printf(&b, "# HELP engram_request_success_total Finished generation requests by finish reason.\n"
                  "# TYPE engram_request_success_total counter\n");
    for (size_t i = 0; i < N_REASONS; i++)
        sb_printf(&b, "engram_request_success_total{finished_reason=\"%s\"} %llu\n", reasons[i], m->finished[i]);
    sb_printf(&b,
              "# HELP engram_prompt_tokens_total Prompt tokens of finished requests.\n"
              "# TYPE engram_prompt_tokens_total counter\n"
              "engram_prompt_tokens_total %llu\n"
              "# HELP engram_generation_tokens_total Generated tokens of finished requests.\n"
              "# TYPE engram_generation_tokens_total counter\n"
              "engram_generation_tokens_total %llu\n"
              "# HELP engram_num_requests_running Requests being generated.\n"
              "# TYPE engram_num_requests_running gauge\n"
              "engram_num_requests_running %d\n"
              "# HELP engram_num_requests_waiting Requests waiting in the queue.\n"
              "# TYPE engram_num_requests_waiting gauge\n"
              "engram_num_requests_waiting %d\n"
              "# HELP engram_kv_cache_usage_perc Fraction of the KV cache in use (1 = full).\n"
              "# TYPE engram_kv_cache_usage_perc gauge\n"
              "engram_kv_cache_usage_perc %.6f\n"
              "# HELP engram_process_start_time_seconds Start time of the process since the Unix epoch.\n"
              "# TYPE engram_process_start_time_seconds gauge\n"
              "engram_process_start_time_seconds %.3f\n",
              m->prompt_tokens, m->generation_tokens, st->running, st->queued,
              st->kv_capacity > 0 ? (double)st->kv_tokens / st->kv_capacity : 0.0, m->start_time);
    sb_printf(&b,
              "# HELP engram_num_preemptions_total Sequences preempted (KV cache full), to be recomputed.\n"
              "# TYPE engram_num_preemptions_total counter\n"
              "engram_num_preemptions_total %lld\n"
              "# HELP engram_scheduler_steps_total Scheduler steps that ran tokens.\n"
              "# TYPE engram_scheduler_steps_total counter\n"
              "engram_scheduler_steps_total %lld\n"
              "# HELP engram_scheduler_step_tokens_total Tokens run over all scheduler steps.\n"
              "# TYPE engram_scheduler_step_tokens_total counter\n"
              "engram_scheduler_step_tokens_total %lld\n",
              st->preemptions, st->steps, st->step_tokens_total);
    render_tokens_histogram(&b, "engram_scheduler_decode_step_prompt_tokens",
                            "Prompt tokens in each scheduler step that ran decode tokens (the prefill those decodes "
                            "waited for; --max-prefill-tokens-decoding bounds it).",
                            st->decode_step_prompt_hist, st->decode_step_prompt_tokens);
    sb_printf(&b,
              "# HELP engram_prefix_cache_queries_tokens_total Tokens looked up in the prefix cache (admissions).\n"
              "# TYPE engram_prefix_cache_queries_tokens_total counter\n"
              "engram_prefix_cache_queries_tokens_total %lld\n"
              "# HELP engram_prefix_cache_hits_tokens_total Of those, tokens whose KV came from the cache.\n"
              "# TYPE engram_prefix_cache_hits_tokens_total counter\n"
              "engram_prefix_cache_hits_tokens_total %lld\n"
              "# HELP engram_prefix_cache_blocks KV blocks registered in the prefix cache (in use or idle).\n"
              "# TYPE engram_prefix_cache_blocks gauge\n"
              "engram_prefix_cache_blocks %d\n"
              "# HELP engram_prefix_cache_evictions_total Cached KV blocks evicted (reused for other tokens).\n"
              "# TYPE engram_prefix_cache_evictions_total counter\n"
              "engram_prefix_cache_evictions_total %lld\n",
              st->prefix_queries_tokens, st->prefix_hits_tokens, st->prefix_cached_blocks, st->prefix_evictions);
    sb_printf(&b,
              "# HELP engram_http_connections Open HTTP connections (waiting for a head, in a request, kept alive).\n"
              "# TYPE engram_http_connections gauge\n"
              "engram_http_connections %d\n"
              "# HELP engram_http_connections_refused_total Connections refused at accept by a cap, none idle to "
              "close for them.\n"
              "# TYPE engram_http_connections_refused_total counter\n"
              "engram_http_connections_refused_total{reason=\"max_connections\"} %llu\n"
              "engram_http_connections_refused_total{reason=\"max_connections_per_ip\"} %llu\n"
              "# HELP engram_http_connections_closed_total Connections the server closed: idle ones to make room "
              "(evicted), heads or bodies late (request_timeout), kept-alive ones with no next request (idle_timeout).\n"
              "# TYPE engram_http_connections_closed_total counter\n"
              "engram_http_connections_closed_total{reason=\"evicted\"} %llu\n"
              "engram_http_connections_closed_total{reason=\"request_timeout\"} %llu\n"
              "engram_http_connections_closed_total{reason=\"idle_timeout\"} %llu\n",
              m->conn_open, m->conn[METRICS_CONN_REFUSED_TOTAL], m->conn[METRICS_CONN_REFUSED_PER_IP],
              m->conn[METRICS_CONN_EVICTED], m->conn[METRICS_CONN_REQUEST_TIMEOUT], m->conn[METRICS_CONN_IDLE_TIMEOUT]);
    render_histogram(&b, "engram_e2e_request_latency_seconds", "End-to-end request latency.", &m->e2e);
    render_histogram(&b, "engram_time_to_first_token_seconds", "Time from submission to the first token.", &m->ttft);
    render_histogram(&b, "engram_request_queue_time_seconds", "Time requests waited in the queue.", &m->queue);
    render_histogram(&b, "engram_inter_token_latency_seconds",
                     "Mean time between generated tokens, one observation per request.", &m->itl);
    render_histogram(&b, "engram_grammar_compile_seconds",
                     "Structured outputs: time to compile a schema, regex, choice list or grammar not in the cache.",
                     &m->grammar_compile);
    sb_printf(&b,
              "# HELP engram_grammar_cache_hits_total Structured-output requests whose grammar was already compiled.\n"
              "# TYPE engram_grammar_cache_hits_total counter\n"
              "engram_grammar_cache_hits_total %llu\n"
              "# HELP engram_grammar_masks_total Token masks computed for constrained sequences.\n"
              "# TYPE engram_grammar_masks_total counter\n"
              "engram_grammar_masks_total %lld\n"
              "# HELP engram_grammar_mask_seconds_total Time the engine spent computing token masks.\n"
              "# TYPE engram_grammar_mask_seconds_total counter\n"
              "engram_grammar_mask_seconds_total %.6f\n",
              m->grammar_cache_hits, st->grammar_masks, st->grammar_mask_seconds);
    pthread_mutex_unlock(&m->mu);
    if (es) render_store(&b, es);
    if (fs) render_fetch(&b, fs);
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    return b.buf;
}
