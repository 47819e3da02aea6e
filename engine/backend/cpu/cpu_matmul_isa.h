/* One SIMD family's matrix-product tiles, included once per family by
 * cpu_matmul.c with these defined (the body is the same, so the families
 * cannot drift apart):
 *   ISA(name)        the family's suffix on every function name
 *   ISA_TARGET       its target attribute string
 *   VL               f32 lanes per vector; vf the vector type
 *   vzero(), vloadx(p), vloadw_bf16(p) (VL bf16 widened exactly), vloadw(p),
 *   vfma(a, b, c) (a * b + c, one rounding), vhsum(v) (a fixed tree)
 * Every output element is one chain: acc = fma(x[k..k+VL), w[k..k+VL), acc)
 * over k in steps of VL, the tail zero-padded to a whole vector, then vhsum.
 * A tile computes NR rows x NT tokens of such chains side by side (sharing
 * the loads), which changes nothing in any one chain: so the result of a
 * token's row never depends on the tile, hence on the batch. */

/* A whole vector of a row's tail (n < VL elements), zero-padded. */
__attribute__((target(ISA_TARGET))) static inline vf ISA(tailx)(const float *p, int n) {
    float b[VL] = {0};
    memcpy(b, p, (size_t)n * sizeof(float));
    return vloadx(b);
}
__attribute__((target(ISA_TARGET))) static inline vf ISA(tailw)(const void *p, int wbf16, int n) {
    if (!wbf16) return ISA(tailx)(p, n);
    uint16_t b[VL] = {0};
    memcpy(b, p, (size_t)n * sizeof(uint16_t));
    return vloadw_bf16(b);
}

/* out[t * ostride + r] = sum_k x[t * xstride + k] * w[r * d + k], r < NR, t < NT;
 * w bf16 (wbf16) or f32 rows of d elements. always_inline with constant NR,
 * NT: the loops unroll and the accumulators stay in registers. */
__attribute__((target(ISA_TARGET), always_inline)) static inline void
ISA(tile)(float *out, size_t ostride, const float *x, size_t xstride, const void *w, int wbf16, int d, int NR,
          int NT) {
    vf acc[4][4];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = vzero();
    const uint16_t *wh = w;
    const float *wf = w;
    int k = 0;
    for (; k + VL <= d; k += VL) {
        vf wv[4], xv[4];
        for (int r = 0; r < NR; r++) wv[r] = wbf16 ? vloadw_bf16(wh + (size_t)r * d + k) : vloadw(wf + (size_t)r * d + k);
        for (int t = 0; t < NT; t++) xv[t] = vloadx(x + (size_t)t * xstride + k);
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) acc[r][t] = vfma(xv[t], wv[r], acc[r][t]);
    }
    if (k < d) {
        vf wv[4], xv[4];
        size_t esz = wbf16 ? 2 : 4;
        for (int r = 0; r < NR; r++) wv[r] = ISA(tailw)((const char *)w + ((size_t)r * d + k) * esz, wbf16, d - k);
        for (int t = 0; t < NT; t++) xv[t] = ISA(tailx)(x + (size_t)t * xstride + k, d - k);
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) acc[r][t] = vfma(xv[t], wv[r], acc[r][t]);
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) out[(size_t)t * ostride + r] = vhsum(acc[r][t]);
}

/* Rows [0, nr) of a block (w: its first row) for all T tokens: tiles of 4
 * rows x 4 tokens, then the leftover tokens and rows one at a time. */
__attribute__((target(ISA_TARGET))) static void ISA(block)(float *out, size_t n, const float *x, const void *w,
                                                          int wbf16, int nr, int d, int T) {
    size_t rstride = (size_t)d * (wbf16 ? 2 : 4);
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
        const void *wr = (const char *)w + r * rstride;
        int t = 0;
        for (; t + 4 <= T; t += 4) ISA(tile)(out + (size_t)t * n + r, n, x + (size_t)t * d, (size_t)d, wr, wbf16, d, 4, 4);
        for (; t < T; t++) ISA(tile)(out + (size_t)t * n + r, n, x + (size_t)t * d, (size_t)d, wr, wbf16, d, 4, 1);
    }
    for (; r < nr; r++) {
        const void *wr = (const char *)w + r * rstride;
        int t = 0;
        for (; t + 4 <= T; t += 4) ISA(tile)(out + (size_t)t * n + r, n, x + (size_t)t * d, (size_t)d, wr, wbf16, d, 1, 4);
        for (; t < T; t++) ISA(tile)(out + (size_t)t * n + r, n, x + (size_t)t * d, (size_t)d, wr, wbf16, d, 1, 1);
    }
}
