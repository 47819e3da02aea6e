/* Making a backend by name (see backend.h). The CUDA backend is a plugin,
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

backend_params backend_default_params(void) {
    backend_params p = {0};
    p.cuda_graphs = 1;
    return p;
}

/* The loaded plugin is process-wide (dlopen hands out one copy of a library
 * per process), so its handle is the one static here; the backends made
 * from it are not. */
static pthread_mutex_t plugin_mu = PTHREAD_MUTEX_INITIALIZER;

backend *backend_cuda_create(const backend_params *p, char *err, size_t errlen) {
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
    backend *(*entry)(const backend_params *, char *, size_t);
    void *sym = dlsym(lib, "engram_cuda_backend_create");
    memcpy(&entry, &sym, sizeof(entry)); /* ISO C has no object-to-function cast */
    if (!entry) {
        snprintf(err, errlen, "device cuda: %s has no engram_cuda_backend_create", CUDA_PLUGIN);
        return NULL;
    }
    backend_params d = backend_default_params();
    return entry(p ? p : &d, err, errlen);
}

int backend_cpu_isa_parse(const char *s) {
    static const char *names[] = {"auto", "generic", "avx2", "avx512", "avx512bf16"};
    for (int i = 0; i < 5; i++)
        if (s && strcmp(s, names[i]) == 0) return i;
    return -1;
}

const char *backend_cpu_isa_str(int isa) {
    static const char *names[] = {"auto", "generic", "avx2", "avx512", "avx512bf16"};
    return isa >= 0 && isa < 5 ? names[isa] : "?";
}

backend *backend_select(const char *device, const backend_params *p, char *err, size_t errlen) {
    if (!device || strcmp(device, "auto") == 0) {
        /* No NVIDIA driver node: no GPU, and no reason to load CUDA at all. */
        if (access("/dev/nvidiactl", F_OK) != 0) return backend_cpu_create_with(p, err, errlen);
        char e2[256];
        backend *be = backend_cuda_create(p, e2, sizeof(e2));
        return be ? be : backend_cpu_create_with(p, err, errlen);
    }
    if (strcmp(device, "cpu") == 0) return backend_cpu_create_with(p, err, errlen);
    if (strcmp(device, "cuda") == 0) return backend_cuda_create(p, err, errlen);
    snprintf(err, errlen, "unknown device '%s' (expected cpu, cuda or auto)", device);
    return NULL;
}

void backend_destroy(backend *be) {
    if (be) be->ops->destroy(be);
}
