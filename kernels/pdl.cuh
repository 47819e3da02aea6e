// Programmatic dependent launch (Hopper): a kernel launched by pdl_launch may
// start while the kernel before it on the stream is still running, so the
// next product's weights stream in during the previous op's last wave instead
// of after it (the gap between two kernels of a decode step is a few us of an
// idle memory system; a decode layer has about nine of them). Rules for a
// kernel launched this way:
//   - pdl_wait() before touching any memory an earlier op writes or reads
//     (activations, caches, outputs); before it only constant data (weights)
//     may be read. It returns once every earlier kernel has finished and its
//     writes are visible.
//   - pdl_trigger() lets the next kernel begin launching. Anywhere is safe
//     (the next kernel's pdl_wait() still waits for this one to finish); the
//     matrix-vector kernels call it at the start or, with PDL_LATE, after
//     their main loop.
// A kernel launched without the attribute (the default, or a plain <<<>>>)
// runs as usual: pdl_wait() returns at once, pdl_trigger() does nothing.
// Off by default, by measurement (H100, bench/RESULTS.md, single-stream
// decode, variants interleaved in one call): the early trigger costs llama3-8b
// and qwen3-8b 8-10% with or without the L2 prefetch (each kernel that
// triggers at its start lets the next one launch too, so a chain of waiting
// kernels is resident at once); the late trigger is within -2.6..+2.7% of off
// (llama3-1b and qwen3-30b-a3b gain 1.5-2.7%, the 8B models lose 1-2.6%).
#pragma once

#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

// 128 bytes at p into L2 (no register, no wait): weights before pdl_wait().
__device__ __forceinline__ void pdl_prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

// How the matrix-vector kernels use it (bits of pdl_flags()): PDL_PREFETCH,
// the rows' first 2 KB into L2 before the wait; PDL_LATE, the trigger after
// the main loop instead of at the start, so the next kernel launches as this
// one drains rather than a chain of them launching at once.
enum { PDL_PREFETCH = 1, PDL_LATE = 2, PDL_ON = 4 };

// ENGRAM_PDL turns the attribute on (benchmarks: the variants in one run):
// 1 (early trigger, prefetch), late (late trigger, prefetch), late-nopf,
// nopf; unset or 0: off.
static inline int pdl_flags() {
    static int flags = -1;
    if (flags < 0) {
        const char *v = getenv("ENGRAM_PDL");
        flags = !v || !*v || !strcmp(v, "0") ? 0
                : !strcmp(v, "late")           ? PDL_ON | PDL_PREFETCH | PDL_LATE
                : !strcmp(v, "late-nopf")      ? PDL_ON | PDL_LATE
                : !strcmp(v, "nopf")           ? PDL_ON
                                               : PDL_ON | PDL_PREFETCH;
    }
    return flags;
}
static inline bool pdl_on() { return pdl_flags() != 0; }

template <typename... P, typename... A>
static inline cudaError_t pdl_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                                     A... args) {
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = st;
    cfg.attrs = at, cfg.numAttrs = pdl_on() ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, ((P)args)...);
}
