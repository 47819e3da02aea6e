/* Kernels of bench-gpu_engram_fetch (bench/gpu_engram_fetch.c): a row gather
 * from a table the GPU reads through UVA (host memory registered with
 * cudaHostRegister), and the expansion of deduplicated rows in device memory.
 * Bench-only: the server's kernels live in kernels/. */
#include <cuda_runtime.h>
#include <stdint.h>

/* dst[k] = row ids[k / vpr], vector k % vpr, for k < n * vpr: V-wide loads
 * (16 bytes when the row size allows, else 8 or 4), four independent loads in
 * flight per thread before their stores. */
template <typename V>
__global__ void gather_rows(V *__restrict__ dst, const V *__restrict__ tab, int vpr, const uint32_t *__restrict__ ids,
                            long total) {
    long stride = (long)gridDim.x * blockDim.x;
    long k = (long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; k + 3 * stride < total; k += 4 * stride) {
        V a[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            long q = k + j * stride, r = q / vpr;
            a[j] = tab[(size_t)ids[r] * vpr + (q - r * vpr)];
        }
#pragma unroll
        for (int j = 0; j < 4; j++) dst[k + j * stride] = a[j];
    }
    for (; k < total; k += stride) {
        long r = k / vpr;
        dst[k] = tab[(size_t)ids[r] * vpr + (k - r * vpr)];
    }
}

/* dst row i = urows row offs[inv[i] >> 26] + (inv[i] & (2^26 - 1)): the
 * unique rows of the host's hash shards back to one row per (token, head). */
template <typename V>
__global__ void expand_rows(V *__restrict__ dst, const V *__restrict__ urows, int vpr, const int32_t *__restrict__ inv,
                            const int32_t *__restrict__ offs, long total) {
    long stride = (long)gridDim.x * blockDim.x;
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += stride) {
        long r = k / vpr;
        int32_t v = inv[r];
        size_t u = (size_t)offs[v >> 26] + (size_t)(v & ((1 << 26) - 1));
        dst[k] = urows[u * vpr + (k - r * vpr)];
    }
}

static int blocks_for(long total) {
    long b = (total + 255) / 256;
    return (int)(b < 1 ? 1 : b > 8192 ? 8192 : b);
}

extern "C" int fetch_gather_uva(void *dst, const void *table, int row_bytes, const uint32_t *ids, long n,
                                cudaStream_t s) {
    if (row_bytes % 16 == 0) {
        long total = n * (row_bytes / 16);
        gather_rows<uint4><<<blocks_for(total), 256, 0, s>>>((uint4 *)dst, (const uint4 *)table, row_bytes / 16, ids,
                                                            total);
    } else if (row_bytes % 8 == 0) {
        long total = n * (row_bytes / 8);
        gather_rows<uint2><<<blocks_for(total), 256, 0, s>>>((uint2 *)dst, (const uint2 *)table, row_bytes / 8, ids,
                                                            total);
    } else if (row_bytes % 4 == 0) {
        long total = n * (row_bytes / 4);
        gather_rows<uint32_t><<<blocks_for(total), 256, 0, s>>>((uint32_t *)dst, (const uint32_t *)table,
                                                               row_bytes / 4, ids, total);
    } else {
        return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

extern "C" int fetch_expand(void *dst, const void *urows, int row_bytes, const int32_t *inv, const int32_t *offs,
                            long n, cudaStream_t s) {
    if (row_bytes % 16 == 0) {
        long total = n * (row_bytes / 16);
        expand_rows<uint4><<<blocks_for(total), 256, 0, s>>>((uint4 *)dst, (const uint4 *)urows, row_bytes / 16, inv,
                                                            offs, total);
    } else if (row_bytes % 8 == 0) {
        long total = n * (row_bytes / 8);
        expand_rows<uint2><<<blocks_for(total), 256, 0, s>>>((uint2 *)dst, (const uint2 *)urows, row_bytes / 8, inv,
                                                            offs, total);
    } else if (row_bytes % 4 == 0) {
        long total = n * (row_bytes / 4);
        expand_rows<uint32_t><<<blocks_for(total), 256, 0, s>>>((uint32_t *)dst, (const uint32_t *)urows,
                                                               row_bytes / 4, inv, offs, total);
    } else {
        return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}
