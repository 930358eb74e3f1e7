/* Selective scan CPU kernels, one instantiation per scalar type (included by selective_scan_cpu.c).
 *
 * Expects before inclusion: SCALAR (float|double), SFX(name) (adds a type suffix), EXPV(x) (exp),
 * SOFTPLUS(x).
 * Layout (all contiguous): u, delta, y, du, ddelta [Bt, D, L]; A, dA [D, N]; Bm, Cm, dB, dC [Bt, G, L, N]
 * (time-major so one step's N values are adjacent); Dv, dD [D]; state, dstate [Bt, D, N].
 * The forward takes raw `delta` plus `bias` [D] and a softplus flag; the backward takes the final step
 * size and the caller chains the gradient through bias and softplus. Optional pointers (Dv, bias, dD,
 * state, dstate) may be NULL.
 */

/* Forward for the channel blocks k in [block_begin, block_end). A block is up to PRVR_W consecutive
 * channels of one (batch, group): they share B_l and C_l, so the inner loops run across channels
 * (vector lanes) with no horizontal sums. Blocks are numbered per (batch, group) row; `scratch` holds
 * 3*L*PRVR_W scalars for the block's time-major copies of u, delta and y. */
void SFX(prvr_scan_fwd)(const SCALAR *restrict u, const SCALAR *restrict delta, const SCALAR *restrict A,
                        const SCALAR *restrict Bm, const SCALAR *restrict Cm, const SCALAR *restrict Dv,
                        const SCALAR *restrict bias, SCALAR *restrict y, SCALAR *restrict state,
                        SCALAR *restrict scratch, int64_t Bt, int64_t D, int64_t L, int64_t N, int64_t G,
                        int64_t softplus, int64_t block_begin, int64_t block_end) {
    (void)Bt;
    const int64_t per_group = D / G, blocks_per_group = (per_group + PRVR_W - 1) / PRVR_W;
    SCALAR *restrict ub = scratch, *restrict db = scratch + L * PRVR_W, *restrict yb = scratch + 2 * L * PRVR_W;
    SCALAR h[PRVR_MAX_N][PRVR_W], a[PRVR_MAX_N][PRVR_W], skip[PRVR_W];
    for (int64_t k = block_begin; k < block_end; ++k) {
        const int64_t bg = k / blocks_per_group;               /* b * G + g */
        const int64_t b = bg / G, g = bg % G;
        const int64_t d0 = g * per_group + (k % blocks_per_group) * PRVR_W;
        const int64_t w = per_group - (d0 - g * per_group) < PRVR_W ? per_group - (d0 - g * per_group) : PRVR_W;
        const SCALAR *Br = Bm + bg * L * N, *Cr = Cm + bg * L * N;
        /* Idle lanes (w < PRVR_W) get u = delta = 0: their state stays 0 and their output is dropped. */
        for (int64_t j = 0; j < PRVR_W; ++j) {
            const SCALAR *ur = u + (b * D + d0 + j) * L, *dr = delta + (b * D + d0 + j) * L;
            const SCALAR bd = (j < w && bias) ? bias[d0 + j] : 0;
            if (j < w) {
                /* Step size for this channel, computed contiguously (vectorises) into yb, free until later. */
                if (softplus) {
#pragma omp simd
                    for (int64_t l = 0; l < L; ++l) yb[l] = SOFTPLUS(dr[l] + bd);
                } else {
#pragma omp simd
                    for (int64_t l = 0; l < L; ++l) yb[l] = dr[l] + bd;
                }
            }
            for (int64_t l = 0; l < L; ++l) {
                ub[l * PRVR_W + j] = j < w ? ur[l] : 0;
                db[l * PRVR_W + j] = j < w ? yb[l] : 0;
            }
            skip[j] = (j < w && Dv) ? Dv[d0 + j] : 0;
            for (int64_t n = 0; n < N; ++n) {
                a[n][j] = j < w ? A[(d0 + j) * N + n] : 0;
                h[n][j] = 0;
            }
        }
        for (int64_t l = 0; l < L; ++l) {
            const SCALAR *Bl = Br + l * N, *Cl = Cr + l * N;
            const SCALAR *dtl = db + l * PRVR_W, *ul = ub + l * PRVR_W;
            SCALAR acc[PRVR_W], dtu[PRVR_W];
#pragma omp simd
            for (int64_t j = 0; j < PRVR_W; ++j) {
                dtu[j] = dtl[j] * ul[j];
                acc[j] = skip[j] * ul[j];
            }
            for (int64_t n = 0; n < N; ++n) {
                const SCALAR bn = Bl[n], cn = Cl[n];
#pragma omp simd
                for (int64_t j = 0; j < PRVR_W; ++j) {
                    h[n][j] = EXPV(dtl[j] * a[n][j]) * h[n][j] + dtu[j] * bn;
                    acc[j] += h[n][j] * cn;
                }
            }
#pragma omp simd
            for (int64_t j = 0; j < PRVR_W; ++j) yb[l * PRVR_W + j] = acc[j];
        }
        for (int64_t j = 0; j < w; ++j) {
            SCALAR *yr = y + (b * D + d0 + j) * L;
            for (int64_t l = 0; l < L; ++l) yr[l] = yb[l * PRVR_W + j];
            if (state)
                for (int64_t n = 0; n < N; ++n) state[(b * D + d0 + j) * N + n] = h[n][j];
        }
    }
}

/* Backward for channels d in [d_begin, d_end), all batch rows. The caller gives each concurrent task
 * its own dB/dC buffers (channels of one group share B/C) and sums them; dA, dD, du, ddelta are
 * owned by channel and need no reduction. ddelta is the gradient of the final step size. `hist` is scratch of L*N scalars. */
void SFX(prvr_scan_bwd)(const SCALAR *restrict u, const SCALAR *restrict delta, const SCALAR *restrict A,
                        const SCALAR *restrict Bm, const SCALAR *restrict Cm, const SCALAR *restrict Dv,
                        const SCALAR *restrict dy,
                        const SCALAR *restrict dstate, SCALAR *restrict du, SCALAR *restrict ddelta,
                        SCALAR *restrict dA, SCALAR *restrict dB, SCALAR *restrict dC,
                        SCALAR *restrict dD, SCALAR *restrict hist,
                        int64_t Bt, int64_t D, int64_t L, int64_t N, int64_t G,
                        int64_t d_begin, int64_t d_end) {
    const int64_t per_group = D / G;
    SCALAR h[PRVR_MAX_N], a[PRVR_MAX_N], dh[PRVR_MAX_N], dA_acc[PRVR_MAX_N];
    for (int64_t d = d_begin; d < d_end; ++d) {
        const int64_t g = d / per_group;
        const SCALAR skip = Dv ? Dv[d] : 0;
        SCALAR dD_acc = 0;
        for (int64_t n = 0; n < N; ++n) {
            a[n] = A[d * N + n];
            dA_acc[n] = 0;
        }
        for (int64_t b = 0; b < Bt; ++b) {
            const int64_t r = b * D + d;
            const SCALAR *ur = u + r * L, *dr = delta + r * L, *gy = dy + r * L;
            const SCALAR *Br = Bm + (b * G + g) * L * N, *Cr = Cm + (b * G + g) * L * N;
            SCALAR *dBr = dB + (b * G + g) * L * N, *dCr = dC + (b * G + g) * L * N;
            /* Recompute the forward states h_l (cheaper than storing Bt*D*L*N of them). */
            for (int64_t n = 0; n < N; ++n) h[n] = 0;
            for (int64_t l = 0; l < L; ++l) {
                const SCALAR dt = dr[l], dtu = dt * ur[l];
                const SCALAR *Bl = Br + l * N;
                SCALAR *hl = hist + l * N;
#pragma omp simd
                for (int64_t n = 0; n < N; ++n) {
                    h[n] = EXPV(dt * a[n]) * h[n] + dtu * Bl[n];
                    hl[n] = h[n];
                }
            }
            for (int64_t n = 0; n < N; ++n) dh[n] = dstate ? dstate[r * N + n] : 0;
            for (int64_t l = L - 1; l >= 0; --l) {
                const SCALAR dt = dr[l];
                const SCALAR ul = ur[l], gl = gy[l];
                const SCALAR *Bl = Br + l * N, *Cl = Cr + l * N, *hl = hist + l * N;
                const SCALAR *hp = l > 0 ? hist + (l - 1) * N : NULL;
                SCALAR *dBl = dBr + l * N, *dCl = dCr + l * N;
                SCALAR ddt = 0, du_l = gl * skip;
                dD_acc += gl * ul;
#pragma omp simd reduction(+ : ddt, du_l)
                for (int64_t n = 0; n < N; ++n) {
                    const SCALAR decay = EXPV(dt * a[n]);
                    const SCALAR hprev = hp ? hp[n] : 0;
                    const SCALAR g_h = dh[n] + gl * Cl[n];      /* dL/dh_l */
                    const SCALAR g_decay = g_h * hprev;         /* dL/d exp(dt*a) */
                    dCl[n] += gl * hl[n];
                    dBl[n] += g_h * dt * ul;
                    ddt += g_decay * decay * a[n] + g_h * ul * Bl[n];
                    dA_acc[n] += g_decay * decay * dt;
                    du_l += g_h * dt * Bl[n];
                    dh[n] = g_h * decay;                        /* dL/dh_{l-1} through this step */
                }
                ddelta[r * L + l] = ddt;
                du[r * L + l] = du_l;
            }
        }
        for (int64_t n = 0; n < N; ++n) dA[d * N + n] = dA_acc[n];
        if (dD) dD[d] = dD_acc;
    }
}
