// A kernel's dynamic shared memory limit raised past the 48 KiB a launch gets
// unasked, once per device, on that device's first call (a plain one: a step
// is recorded from its second run on, and cudaFuncSetAttribute is not a
// stream op). *done (one per kernel instantiation, zero at start) keeps a bit
// per device, so ranks of one process on several devices each set their own.
// Returns 0, or -1 when the attribute cannot be set.
#pragma once
#include <cuda_runtime.h>

template <typename Kernel>
static int smem_raise_once(Kernel kernel, size_t bytes, unsigned *done) {
    int dev = 0;
    cudaGetDevice(&dev);
    unsigned bit = 1u << (dev & 31);
    if (__atomic_load_n(done, __ATOMIC_ACQUIRE) & bit) return 0;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) != cudaSuccess)
        return -1;
    __atomic_fetch_or(done, bit, __ATOMIC_RELEASE);
    return 0;
}
