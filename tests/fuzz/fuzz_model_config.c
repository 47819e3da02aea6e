/* libFuzzer target: model_config_parse on arbitrary bytes. Accepted configs
 * must satisfy the invariants the forward pass relies on. */
#include <stdint.h>
#include <stdlib.h>

#include "engine/model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    model_config c;
    char err[512];
    if (model_config_parse((const char *)data, size, "fuzz", &c, err, sizeof(err)) == MODEL_OK) {
        if (c.vocab_size < 1 || c.hidden_size < 1 || c.n_layers < 1 || c.n_heads < 1 ||
            c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads || c.head_dim < 2 || c.head_dim % 2 ||
            c.n_eos > MODEL_MAX_EOS)
            abort();
    }
    return 0;
}
