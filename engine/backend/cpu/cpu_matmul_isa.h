/* One SIMD family's matrix-product tiles, included once per family by
 * cpu_matmul.c with these defined (the body is the same, so the families
 * cannot drift apart):
 *   ISA(name)        the family's suffix on every function name
 *   ISA_TARGET       its target attribute string
 *   VL               f32 lanes per vector; vf the vector type, vi its integer twin
 *   TILE_R           rows of a bf16 tile of 4 tokens (as many as the registers hold)
 *   vzero(), vloadx(p), vloadw(p), vfma(a, b, c) (a * b + c, one rounding),
 *   vhsum(v) (a fixed tree); vsums4x4(out, ostride, acc) and vsums8x1(out, acc)
 *   (vhsum of a 4 x 4 or 8 x 1 tile's accumulators acc[4 r + t] into
 *   out[t * ostride + r], bit for bit, all at once where the family can);
 *   vloadi(p) (VL 32-bit words), vlo(u) and vhi(u)
 *   (the low and high bf16 halves of each word as f32, exactly); vpin(v)
 *   (v held in a register here: see ISA(tile)); vstorex(p, v);
 *   vdeinterleave(p, e, o) (2 VL floats at p: the even ones to e, the odd to o)
 * f32 rows: every output element is one chain acc = fma(x[k..k+VL),
 * w[k..k+VL), acc) over k in steps of VL, the tail zero-padded to a whole
 * vector, then vhsum.
 * bf16 rows: a 32-bit word holds the pair (w[k+2i], w[k+2i+1]), so VL words
 * widen to two vectors by one shift (even elements) and one mask (odd
 * elements) instead of a widening shuffle per VL elements; x comes in the
 * same pair order (ISA(pair_x): per 2 VL elements, the VL even ones then the
 * VL odd ones). Every output element is one chain acc = fma(x_even, w_even,
 * acc), acc = fma(x_odd, w_odd, acc) over k in steps of 2 VL, the tail
 * zero-padded, then vhsum.
 * A tile computes NR rows x NT tokens of such chains side by side (sharing
 * the loads), which changes nothing in any one chain: so the result of a
 * token's row never depends on the tile, hence on the batch. */

/* A whole vector of a row's tail (n < VL elements), zero-padded. */
__attribute__((target(ISA_TARGET))) static inline vf ISA(tailx)(const float *p, int n) {
    float b[VL] = {0};
    memcpy(b, p, (size_t)n * sizeof(float));
    return vloadx(b);
}

/* out[t * ostride + r] = vhsum(acc[4 r + t]), r < NR, t < NT: a tile's sums. */
__attribute__((target(ISA_TARGET), always_inline)) static inline void ISA(sums)(float *out, size_t ostride,
                                                                                const vf *acc, int NR, int NT) {
    if (NR == 4 && NT == 4) vsums4x4(out, ostride, acc);
    else if (NR == 8 && NT == 1) vsums8x1(out, acc);
    else
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) out[(size_t)t * ostride + r] = vhsum(acc[4 * r + t]);
}

/* out[t * ostride + r] = sum_k x[t * xstride + k] * w[r * d + k], r < NR, t < NT,
 * f32 rows of d elements. always_inline with constant NR, NT: the loops
 * unroll and the accumulators stay in registers. */
__attribute__((target(ISA_TARGET), always_inline)) static inline void
ISA(tile)(float *out, size_t ostride, const float *x, size_t xstride, const float *w, int d, int NR, int NT) {
    vf acc[4][4];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = vzero();
    int k = 0;
    for (; k + VL <= d; k += VL) {
        vf wv[4], xv[4];
        for (int r = 0; r < NR; r++) wv[r] = vloadw(w + (size_t)r * d + k);
        /* Pinned: left to itself the compiler folds each x load into the
         * FMAs, loading every x vector NR times, and the loads, not the FMAs,
         * bound the tile (a third of the FMA peak, measured). */
        for (int t = 0; t < NT; t++) {
            xv[t] = vloadx(x + (size_t)t * xstride + k);
            vpin(xv[t]);
        }
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) acc[r][t] = vfma(xv[t], wv[r], acc[r][t]);
    }
    if (k < d) {
        vf wv[4], xv[4];
        for (int r = 0; r < NR; r++) wv[r] = ISA(tailx)(w + (size_t)r * d + k, d - k);
        for (int t = 0; t < NT; t++) xv[t] = ISA(tailx)(x + (size_t)t * xstride + k, d - k);
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) acc[r][t] = vfma(xv[t], wv[r], acc[r][t]);
    }
    ISA(sums)(out, ostride, &acc[0][0], NR, NT);
}

/* The same for bf16 rows and x in pair order (xstride: the paired row's
 * length, d rounded up to 2 VL, its tail zeros). NR up to 8. */
__attribute__((target(ISA_TARGET), always_inline)) static inline void
ISA(tile_bf16)(float *out, size_t ostride, const float *xp, size_t xstride, const uint16_t *w, int d, int NR,
               int NT) {
    vf acc[8][4];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = vzero();
    int k = 0;
    for (; k + 2 * VL <= d; k += 2 * VL) {
        vf lo[8], hi[8];
        for (int r = 0; r < NR; r++) {
            vi u = vloadi(w + (size_t)r * d + k);
            lo[r] = vlo(u), hi[r] = vhi(u);
        }
        vf xe[4], xo[4]; /* pinned, as in ISA(tile) */
        for (int t = 0; t < NT; t++) {
            xe[t] = vloadx(xp + (size_t)t * xstride + k), xo[t] = vloadx(xp + (size_t)t * xstride + k + VL);
            vpin(xe[t]);
            vpin(xo[t]);
        }
        for (int t = 0; t < NT; t++)
            for (int r = 0; r < NR; r++) acc[r][t] = vfma(xo[t], hi[r], vfma(xe[t], lo[r], acc[r][t]));
    }
    if (k < d) {
        vf lo[8], hi[8];
        for (int r = 0; r < NR; r++) {
            uint16_t b[2 * VL] = {0};
            memcpy(b, w + (size_t)r * d + k, (size_t)(d - k) * sizeof(uint16_t));
            vi u = vloadi(b);
            lo[r] = vlo(u), hi[r] = vhi(u);
        }
        for (int t = 0; t < NT; t++) {
            vf xe = vloadx(xp + (size_t)t * xstride + k), xo = vloadx(xp + (size_t)t * xstride + k + VL);
            for (int r = 0; r < NR; r++) acc[r][t] = vfma(xo, hi[r], vfma(xe, lo[r], acc[r][t]));
        }
    }
    ISA(sums)(out, ostride, &acc[0][0], NR, NT);
}

/* T rows of x (d of each row of xs) into pair order for the bf16 tiles: per
 * 2 VL elements the VL even ones, then the VL odd ones; rows of dp (d rounded
 * up to 2 VL, the tail zeros) os apart. */
__attribute__((target(ISA_TARGET))) static void ISA(pair_x)(float *xp, size_t os, const float *x, size_t xs, int T,
                                                           int d, int dp) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * xs;
        float *o = xp + (size_t)t * os;
        int k = 0;
        for (; k + 2 * VL <= d; k += 2 * VL) { /* by shuffles */
            vf e, od;
            vdeinterleave(xt + k, e, od);
            vstorex(o + k, e);
            vstorex(o + k + VL, od);
        }
        for (; k < dp; k += 2 * VL)
            for (int i = 0; i < VL; i++) {
                o[k + i] = k + 2 * i < d ? xt[k + 2 * i] : 0.0f;
                o[k + VL + i] = k + 2 * i + 1 < d ? xt[k + 2 * i + 1] : 0.0f;
            }
    }
}

/* Rows [0, nr) of a block (w: its first row) for all T tokens: f32 rows in
 * tiles of 4 rows x 4 tokens; bf16 rows (x in pair order, rows of xs) by
 * token groups of 4, each over the block's rows TILE_R at a time (the group's x
 * and the block's rows stay in L1), then the leftover tokens one at a time
 * over 8 rows (decode's tile: eight chains in flight), then leftover rows. */
__attribute__((target(ISA_TARGET))) static void ISA(block)(float *out, size_t n, const float *x, size_t xs,
                                                          const void *w, int wbf16, int nr, int d, int T) {
    int r = 0;
    if (wbf16) {
        const uint16_t *wh = w;
        int t = 0, rt = nr / TILE_R * TILE_R;
        for (; t + 4 <= T; t += 4) {
            for (r = 0; r < rt; r += TILE_R)
                ISA(tile_bf16)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wh + (size_t)r * d, d, TILE_R, 4);
            for (; r < nr; r++)
                ISA(tile_bf16)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wh + (size_t)r * d, d, 1, 4);
        }
        for (; t < T; t++) {
            for (r = 0; r + 8 <= nr; r += 8)
                ISA(tile_bf16)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wh + (size_t)r * d, d, 8, 1);
            for (; r + 4 <= nr; r += 4)
                ISA(tile_bf16)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wh + (size_t)r * d, d, 4, 1);
            for (; r < nr; r++)
                ISA(tile_bf16)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wh + (size_t)r * d, d, 1, 1);
        }
        return;
    }
    const float *wf = w;
    for (; r + 4 <= nr; r += 4) {
        const float *wr = wf + (size_t)r * d;
        int t = 0;
        for (; t + 4 <= T; t += 4) ISA(tile)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wr, d, 4, 4);
        for (; t < T; t++) ISA(tile)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wr, d, 4, 1);
    }
    for (; r < nr; r++) {
        const float *wr = wf + (size_t)r * d;
        int t = 0;
        for (; t + 4 <= T; t += 4) ISA(tile)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wr, d, 1, 4);
        for (; t < T; t++) ISA(tile)(out + (size_t)t * n + r, n, x + (size_t)t * xs, xs, wr, d, 1, 1);
    }
}
