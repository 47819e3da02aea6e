/* engram-server: the OpenAI-compatible HTTP server. Reads its options from
 * flags, ENGRAM_<NAME> environment variables and a JSON config file (flags
 * win over env over file), loads the model into the engine, serves until
 * SIGINT or SIGTERM, then drains (new requests 503, accepted ones finish, up
 * to --shutdown-timeout seconds; a second signal cuts it short) and stops
 * cleanly. The only place that exits.
 *
 *   engram-server --model DIR [--host 127.0.0.1] [--port 8080] [options]
 *   engram-server --synthetic SPEC [options]   random weights of a real shape, token-id prompts
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>

#include "base/fault.h"
#include "base/util.h"
#include "server/server.h"

/* The warm-up's request (engine_warmup): a few dozen prompt tokens in one
 * step, and two decode steps: on CUDA a decode step's shape runs plain the
 * first time and is captured as a graph the second (cuda_graphs.c), so the
 * first request's decode steps replay it. */
#define WARMUP_PROMPT_TOKENS 32
#define WARMUP_DECODE_STEPS 2

/* Waits for SIGINT or SIGTERM, then drains: new requests get 503 while those
 * accepted finish, for up to shutdown_timeout seconds (0: none); a second
 * signal cuts it short. */
static void wait_and_drain(engine *e, server *srv, const sigset_t *sigs, long shutdown_timeout) {
    int sig = 0;
    sigwait(sigs, &sig);
    server_log("%s, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    server_drain(srv);
    if (shutdown_timeout <= 0) return;
    server_log("draining for up to %lds", shutdown_timeout);
    double deadline = util_now() + (double)shutdown_timeout;
    for (;;) {
        /* wait first: a request that passed the draining check is submitted within this tick */
        struct timespec ts = {0, 20 * 1000 * 1000};
        if (sigtimedwait(sigs, NULL, &ts) >= 0) {
            server_log("second signal, aborting the drain");
            break;
        }
        engine_stats st;
        engine_get_stats(e, &st);
        if (st.running + st.queued == 0 && server_active(srv) == 0) break;
        if (util_now() >= deadline) {
            server_log("--shutdown-timeout reached, aborting %d request(s)",
                    st.running + st.queued);
            break;
        }
    }
}

/* Listens, loads the model, serves until a signal, drains and stops.
 * Returns the exit status: 0, 1 (a failure), 2 (the device is unavailable). */
static int serve(const server_options *o, const sigset_t *sigs) {
    char err[1024];
    engine *e = NULL;
    metrics *mx = NULL;
    server *srv = NULL;
    int rc = 1;
    double t0 = util_now();
    if (!(mx = metrics_create())) {
        server_log_at(SERVER_LOG_ERROR, "out of memory");
        goto done;
    }
    /* Listen first: while the model loads, /health answers 503 "loading". */
    if (server_start(&o->server, mx, &srv, err, sizeof(err)) != 0) {
        server_log_at(SERVER_LOG_ERROR, "%s", err);
        goto done;
    }
    int erc = engine_create(&o->engine, &e, err, sizeof(err));
    if (erc != ENGINE_OK) {
        server_log_at(SERVER_LOG_ERROR, "%s", err);
        rc = erc == ENGINE_ERR_DEVICE ? 2 : 1;
        goto done;
    }
    if (!engine_tokenizer(e) && !o->synthetic) {
        server_log_at(SERVER_LOG_ERROR, "%s has no usable tokenizer.json: the server needs one", o->source);
        goto done;
    }
    /* The warm-up before ready: the first client would pay a first pass's one-time costs otherwise. */
    if (o->warmup) {
        engine_warmup_info wi;
        int wrc = engine_warmup(e, WARMUP_PROMPT_TOKENS, WARMUP_DECODE_STEPS, &wi);
        if (wrc == ENGINE_OK)
            server_log("warm-up: %d prompt tokens + %d decode steps in %.2f s", wi.n_prompt, wi.n_decode, wi.seconds);
        else /* requests may well fail the same way: they report it then */
            server_log_at(SERVER_LOG_WARN, "warm-up failed (%s); serving without it", engine_status_str(wrc));
    }
    server_set_engine(srv, e);
    fault_phase("serving"); /* ENGRAM_FAULT_PHASE=serving: faults on requests' paths, not on the load */
    engine_stats kv_now;
    engine_get_stats(e, &kv_now);
    server_log("serving %s%s as \"%s\" on http://%s:%d (loaded in %.2fs; KV cache %d tokens)",
            o->synthetic ? "synthetic " : "", o->source, o->server.served_model_name, o->server.host, o->server.port,
            util_now() - t0, kv_now.kv_capacity);
    wait_and_drain(e, srv, sigs, o->shutdown_timeout);
    engine_stop(e); /* running and queued requests end; their connections resume */
    rc = 0;
done:
    server_stop(srv);
    engine_destroy(e);
    metrics_destroy(mx);
    return rc;
}

int main(int argc, char **argv) {
    /* Signals are taken by sigwait in this thread only: block them before any
     * thread starts (choosing the backend for an option's note may start
     * CUDA's). */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    server_options o;
    server_options_status st = server_options_parse(argc, argv, &o);
    server_log_set_level(o.log_level);
    api_json_init(); /* before any thread: cJSON's hooks are process-wide */
    int rc = st == SERVER_OPTIONS_HELP ? 0 : st != SERVER_OPTIONS_OK ? 2 : serve(&o, &sigs);
    server_options_free(&o);
    return rc;
}
