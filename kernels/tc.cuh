// Device helpers shared by the tensor-core kernels (attention.cu, moe.cu):
// asynchronous 16-byte copies into shared memory, ldmatrix, and the bf16
// mma.sync m16n8k16 with f32 accumulation. Fragment layouts (PTX ISA,
// "Matrix Fragments for mma.m16n8k16"): lane = 4 * gq + tq; A (16 x 16,
// row-major) a0 = A[gq][2tq..+1], a1 = A[gq+8][2tq..], a2 = A[gq][2tq+8..],
// a3 = A[gq+8][2tq+8..]; B (16 x 8) b0 = B[2tq..+1][gq], b1 = B[2tq+8..][gq];
// C (16 x 8) c0,c1 = C[gq][2tq..+1], c2,c3 = C[gq+8][2tq..+1].
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

// 16 bytes global -> shared, asynchronously; !valid: the 16 are zero-filled (nothing read).
__device__ __forceinline__ void tc_cp16(void *smem, const void *gmem, bool valid) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void tc_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N committed groups are still in flight.
template <int N> __device__ __forceinline__ void tc_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Four 8x8 bf16 matrices from shared memory; lane i gives the address of row
// i % 8 of matrix i / 8. Plain: r[m] holds M[gq][2tq..+1] of matrix m (a B
// fragment of K rows for Q K^T); trans: M[2tq..+1][gq] (of V rows for P V).
__device__ __forceinline__ void tc_ldsm4(uint32_t r[4], const void *row) {
    unsigned s = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ void tc_ldsm4_t(uint32_t r[4], const void *row) {
    unsigned s = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}

// c += a b: m16n8k16, bf16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 rounded to bf16 (nearest even), lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}
