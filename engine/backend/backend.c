/* Choosing a backend by name (see backend.h). The CUDA backend is a plugin,
 * libengram-cuda.so, loaded from the program's own directory (or the library
 * path) the first time it is asked for, so CPU-only runs never load cuBLAS
 * and a CUDA build starts where CUDA is missing. */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine/backend/backend.h"

#define CUDA_PLUGIN "libengram-cuda.so"

static pthread_mutex_t plugin_mu = PTHREAD_MUTEX_INITIALIZER;

const backend_ops *backend_cuda(char *err, size_t errlen) {
    pthread_mutex_lock(&plugin_mu);
    static void *lib;
    if (!lib) {
        char path[PATH_MAX + sizeof(CUDA_PLUGIN)];
        ssize_t n = readlink("/proc/self/exe", path, PATH_MAX - 1);
        char *slash = n > 0 ? (path[n] = 0, strrchr(path, '/')) : NULL;
        if (slash) {
            strcpy(slash + 1, CUDA_PLUGIN);
            lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        }
        if (!lib) lib = dlopen(CUDA_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    }
    pthread_mutex_unlock(&plugin_mu);
    if (!lib) {
        snprintf(err, errlen, "device cuda is not available: %s (this build has no CUDA backend, or its "
                 "libraries are missing; configure with -DENGRAM_CUDA=ON where nvcc exists)", CUDA_PLUGIN);
        return NULL;
    }
    const backend_ops *(*entry)(char *, size_t);
    void *sym = dlsym(lib, "engram_cuda_backend");
    memcpy(&entry, &sym, sizeof(entry)); /* ISO C has no object-to-function cast */
    if (!entry) {
        snprintf(err, errlen, "device cuda: %s has no engram_cuda_backend", CUDA_PLUGIN);
        return NULL;
    }
    return entry(err, errlen);
}

const backend_ops *backend_select(const char *device, char *err, size_t errlen) {
    if (!device || strcmp(device, "auto") == 0) {
        /* No NVIDIA driver node: no GPU, and no reason to load CUDA at all. */
        if (access("/dev/nvidiactl", F_OK) != 0) return backend_cpu();
        char e2[256];
        const backend_ops *o = backend_cuda(e2, sizeof(e2));
        return o ? o : backend_cpu();
    }
    if (strcmp(device, "cpu") == 0) return backend_cpu();
    if (strcmp(device, "cuda") == 0) return backend_cuda(err, errlen);
    snprintf(err, errlen, "unknown device '%s' (expected cpu, cuda or auto)", device);
    return NULL;
}
