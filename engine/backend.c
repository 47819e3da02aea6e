/* Choosing a backend by name (see backend.h). */
#include <stdio.h>
#include <string.h>

#include "backend.h"

#ifndef ENGRAM_HAVE_CUDA_BACKEND
const backend_ops *backend_cuda(char *err, size_t errlen) {
    snprintf(err, errlen, "device cuda is not available: this build has no CUDA backend (configure with -DENGRAM_CUDA=ON where nvcc exists)");
    return NULL;
}
#endif

const backend_ops *backend_select(const char *device, char *err, size_t errlen) {
    if (!device || strcmp(device, "auto") == 0) {
        char e2[256];
        const backend_ops *o = backend_cuda(e2, sizeof(e2));
        return o ? o : backend_cpu();
    }
    if (strcmp(device, "cpu") == 0) return backend_cpu();
    if (strcmp(device, "cuda") == 0) return backend_cuda(err, errlen);
    snprintf(err, errlen, "unknown device '%s' (expected cpu, cuda or auto)", device);
    return NULL;
}
