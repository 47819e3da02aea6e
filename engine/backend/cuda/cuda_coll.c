/* The collectives of a group of ranks on GPUs (backend_ops coll_*,
 * all_reduce_sum, all_gather; engine/parallel.h): NCCL, one communicator per
 * rank made from one ncclUniqueId that the ranks' threads share
 * (ncclCommInitRank), each collective issued on the handle's stream.
 *
 * libnccl is opened at the first coll_id or coll_init (dlopen), not linked:
 * a single GPU never needs it, a machine without it still runs one, and
 * scripts/gpu-pack does not copy its 218 MB into every pack (ldd would find a
 * linked one). Types and signatures come from nccl.h. */
#include <dlfcn.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "engine/backend/cuda/cuda_internal.h"

_Static_assert(BACKEND_COLL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "a group's id is an ncclUniqueId");

/* The NCCL calls used, resolved once from libnccl.so.2. */
static struct {
    ncclResult_t (*get_unique_id)(ncclUniqueId *);
    ncclResult_t (*comm_init_rank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*comm_destroy)(ncclComm_t);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*all_gather)(const void *, void *, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
    const char *(*error_string)(ncclResult_t);
    char err[200]; /* why it could not be opened, or "" */
} nccl;
static pthread_once_t nccl_once = PTHREAD_ONCE_INIT;

/* dlsym into a function pointer (ISO C has no object-to-function cast). */
#define NCCL_SYM(lib, field, name)                                                                          \
    do {                                                                                                    \
        void *s_ = dlsym(lib, name);                                                                        \
        memcpy(&nccl.field, &s_, sizeof(s_));                                                               \
        if (!s_) snprintf(nccl.err, sizeof(nccl.err), "libnccl.so.2 has no %s", name);                      \
    } while (0)

static void nccl_open(void) {
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(nccl.err, sizeof(nccl.err), "NCCL is not available (%s): multi-GPU ranks need libnccl.so.2 on the "
                                             "library path", dlerror());
        return;
    }
    NCCL_SYM(lib, get_unique_id, "ncclGetUniqueId");
    NCCL_SYM(lib, comm_init_rank, "ncclCommInitRank");
    NCCL_SYM(lib, comm_destroy, "ncclCommDestroy");
    NCCL_SYM(lib, all_reduce, "ncclAllReduce");
    NCCL_SYM(lib, all_gather, "ncclAllGather");
    NCCL_SYM(lib, error_string, "ncclGetErrorString");
}

/* Whether NCCL is usable; err says why not. */
static bool nccl_ready(char *err, size_t errlen) {
    pthread_once(&nccl_once, nccl_open);
    if (nccl.err[0]) snprintf(err, errlen, "%s", nccl.err);
    return !nccl.err[0];
}

/* A failed NCCL call inside a collective: as cuda__fail, the op cannot report it. */
#define CHECK_NCCL(x)                                                                                       \
    do {                                                                                                    \
        ncclResult_t r_ = (x);                                                                              \
        if (r_ != ncclSuccess) cuda__fail(__func__, nccl.error_string(r_));                                 \
    } while (0)

int cu_coll_id(backend *be, void *id, char *err, size_t errlen) {
    (void)be;
    if (!nccl_ready(err, errlen)) return -1;
    ncclResult_t r = nccl.get_unique_id((ncclUniqueId *)id);
    if (r != ncclSuccess) return snprintf(err, errlen, "ncclGetUniqueId: %s", nccl.error_string(r)), -1;
    return 0;
}

void *cu_coll_init(backend *be, const void *id, int n_ranks, int rank, char *err, size_t errlen) {
    (void)be; /* its device is this thread's current one: NCCL binds the communicator to it */
    if (!nccl_ready(err, errlen)) return NULL;
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof(uid));
    ncclComm_t comm = NULL;
    ncclResult_t r = nccl.comm_init_rank(&comm, n_ranks, uid, rank);
    if (r != ncclSuccess) {
        snprintf(err, errlen, "ncclCommInitRank (rank %d of %d): %s", rank, n_ranks, nccl.error_string(r));
        return NULL;
    }
    return comm;
}

void cu_coll_free(backend *be, void *comm) {
    cuda_backend *g = cuda__of(be);
    if (!comm) return;
    cudaStreamSynchronize(g->stream); /* no collective of it still queued */
    nccl.comm_destroy((ncclComm_t)comm);
}

void cu_all_reduce_sum(backend *be, void *comm, float *buf, size_t n) {
    cuda_backend *g = cuda__of(be);
    if (n) CUDA_TIMED(g, CHECK_NCCL(nccl.all_reduce(buf, buf, n, ncclFloat32, ncclSum, (ncclComm_t)comm, g->stream)),
                      "all_reduce_sum");
}

void cu_all_gather(backend *be, void *comm, float *dst, const float *src, size_t n) {
    cuda_backend *g = cuda__of(be);
    if (n) CUDA_TIMED(g, CHECK_NCCL(nccl.all_gather(src, dst, n, ncclFloat32, (ncclComm_t)comm, g->stream)),
                      "all_gather");
}
