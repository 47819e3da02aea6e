/* The engine's answers about its model and backend for callers that may not
 * see engine internals (the server includes engine/engine.h only): Engram
 * layer ids, the stores' counters, the backend a --device value picks. Kept
 * beside engine.c so that no struct of model.h or backend.h leaks into
 * engine.h. */
#include "engine/engine.h"

#include <assert.h>

#include "engine/backend/backend.h"
#include "engine/model/model.h"

bool engine_has_engram(const engine *e) { return engine_model(e)->engram != NULL; }

int engine_engram_layer_id(const engine *e, int li) {
    const model *m = engine_model(e);
    assert(m->engram && li >= 0 && li < m->engram->n_layers);
    return m->engram->layers[li].layer_id;
}

void engine_engram_store_stats(const engine *e, engram_store_stats *out) {
    model_engram_store_stats(engine_model(e), out);
}

const char *engine_device_name(const char *device, char *err, size_t errlen) {
    backend *be = backend_select(device, NULL, err, errlen);
    const char *name = be ? backend_name(be) : NULL; /* a static string: outlives be */
    backend_destroy(be);
    return name;
}
