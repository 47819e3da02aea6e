/* libFuzzer target: safetensors_parse on arbitrary bytes. Any input must give
 * ST_OK or an error status, never a crash, leak or sanitizer report; a parsed
 * file's tensors must lie inside the input. */
#include <stdint.h>
#include <stdlib.h>

#include "engine/model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    safetensors *st = NULL;
    char err[512];
    if (safetensors_parse(data, size, "fuzz", &st, err, sizeof(err)) == ST_OK) {
        for (int i = 0; i < safetensors_count(st); i++) {
            const st_tensor *t = safetensors_get(st, i);
            const uint8_t *p = t->data;
            if (p < data || p + t->nbytes > data + size) abort();
            if (safetensors_find(st, t->name) != t) abort();
        }
    }
    safetensors_destroy(st);
    return 0;
}
