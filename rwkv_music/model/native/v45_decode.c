/* Every RWKV-4 or RWKV-5.x layer of a one-token step in one call, fp32 activations (rwkv_music/model/v4.py
 * and v5.py, forward with T == 1; the maths is docs/formats.md A7).
 *
 * The per-layer torch path spends about 1.4 ms a step at L12 D768 (B = 1, one thread) in element-wise
 * ops and their dispatch around the matrix products, the same for int8 and int4, which holds int4's
 * gain over int8 down.  Here the steps around the products run in C; the products are the calls the
 * per-layer path makes (rwkv_int8_gemm / rwkv_int4_gemm for quantized matrices, decode_common.h's
 * rows_matmul for fp32 ones) and the recurrences are wkv4.c / wkv5.c's one-token kernels.
 *
 * Per layer (weights as V4Layer / V5Layer store them: x @ W with W [in, out]; mixes with 1 = this token):
 *   xx = LN1(x);  m_j = xx mix_j + prev_att (1 - mix_j);  att_x' = xx
 *   v4:  k, v, r = m_j W_j;  y = σ(r) wkv4(k, v; aa, bb, pp)
 *   v5:  r, k, v[, g] = m_j W_j;  y = GroupNorm_head(wkv5(r, k, v; S))  [⊙ silu(g) for 5.1 / 5.2]
 *   x += y Out;  xx = LN2(x);  km, rm = xx mix_j + prev_ffn (1 - mix_j);  ffn_x' = xx
 *   x += σ(rm R) ⊙ (relu(km K)^2 V)
 * Rows are independent and each is computed in the same order at any batch size.
 */
#include "decode_common.h"

void rwkv4_wkv_decode(int64_t B, int64_t A, const float* r, const float* k, const float* v, const float* aa,
                      const float* bb, const float* pp, const float* decay, const float* first, float* out,
                      float* aa_out, float* bb_out, float* pp_out);

/* the weight pointers of one layer, in this order (v4.py / v5.py _LAYER_FIELDS); v4 has no ln_x (NULL) and
 * its projections are (k, v, r); v5's are (r, k, v[, g]); DECAY / BONUS are v4's decay and first, v5's
 * decay [H, N] and bonus */
enum {
    W_LN1_W, W_LN1_B, W_MIX, W_MIX_C, W_PROJ, W_DECAY, W_BONUS, W_LN_X_W, W_LN_X_B, W_OUT, W_LN2_W, W_LN2_B,
    W_FFN_MIX, W_FFN_MIX_C, W_FFN_KEY, W_FFN_RECEPTANCE, W_FFN_VALUE, W_COUNT
};
/* quantized matrices: per layer M + 4 descriptors (decode_common.h): the M projection slices, then these */
enum { M_OUT, M_FFN_KEY, M_FFN_RECEPTANCE, M_FFN_VALUE, M_AFTER_PROJ };

/* dst[j] = xx mix_j + prev (1 - mix_j) for j < M, over [B, C] rows (torch.addcmul(xx * mix, prev, mix_c)) */
static void token_mixes(const float* xx, const float* prev, const float* mix, const float* mix_c, float* dst,
                        int M, int64_t B, int64_t C) {
    for (int j = 0; j < M; j++)
        for (int64_t b = 0; b < B; b++) {
            const float *xb = xx + b * C, *pb = prev + b * C, *mj = mix + j * C, *cj = mix_c + j * C;
            float* out = dst + ((size_t)j * B + b) * C;
            for (int64_t c = 0; c < C; c++) out[c] = xb[c] * mj[c] + pb[c] * cj[c];
        }
}

/* Both versions: the layer loop around a version's time mix (v5: kv_in non-NULL).  See the exported
 * functions below for the arguments. */
static int decode_layers(int version5, int M, int64_t L, int64_t B, int64_t C, int64_t A, int64_t H, int64_t N,
                         int64_t F, const int64_t* weights, float* x, const float* att_in, float* att_out,
                         const float* const* rec_in, float* const* rec_out, const float* ffn_in, float* ffn_out,
                         float ln_eps, float gn_eps, const int64_t* mats, int nthreads) {
    const size_t BC = (size_t)(B * C), BA = (size_t)(B * A);
    /* scratch: xx [B, C], mixes [M, B, C], projections [M, B, A], y [B, A], tmp [B, max(A, C)],
     * ffn hidden [B, F], receptance [B, C] */
    const size_t wide = (size_t)B * (size_t)(A > C ? A : C);
    float* buf = (float*)malloc(sizeof(float) * (BC + M * BC + M * BA + BA + wide + (size_t)(B * F) + BC));
    if (!buf) return -1;
    float* xx = buf;
    float* mixed = xx + BC;
    float* proj = mixed + M * BC;
    float* y = proj + M * BA;
    float* tmp = y + BA;
    float* hidden = tmp + wide;
    float* gate = hidden + (size_t)(B * F);
    int rc = 0;
    for (int64_t l = 0; l < L && rc == 0; l++) {
        const float* const* w = layer_weights(weights, l, W_COUNT);
        const int64_t* mq = layer_mats(mats, l, M + M_AFTER_PROJ);
        const size_t so = (size_t)l * BC;
        /* time mix (prev is read before att_out, possibly the same row, is written) */
        for (int64_t b = 0; b < B; b++) layer_norm(x + b * C, w[W_LN1_W], w[W_LN1_B], xx + b * C, C, ln_eps);
        token_mixes(xx, att_in + so, w[W_MIX], w[W_MIX_C], mixed, M, B, C);
        memcpy(att_out + so, xx, BC * sizeof(float));
        for (int j = 0; j < M && rc == 0; j++)
            rc = mat_rows(mat_at(mq, j), w[W_PROJ] + (size_t)j * C * A, mixed + j * BC, proj + j * BA, B, C, A,
                          0, tmp, nthreads);
        if (rc != 0) break;
        if (!version5) { /* (k, v, r): wkv4.c reads each channel's state before writing it */
            const size_t sa = (size_t)l * BA;
            rwkv4_wkv_decode(B, A, proj + 2 * BA, proj, proj + BA, rec_in[0] + sa, rec_in[1] + sa, rec_in[2] + sa,
                             w[W_DECAY], w[W_BONUS], y, rec_out[0] + sa, rec_out[1] + sa, rec_out[2] + sa);
        } else { /* (r, k, v[, g]) */
            const size_t sk = (size_t)l * (size_t)(B * H * N * N);
            rc = rwkv5_wkv_decode(B, H, N, 0, rec_in[0] + sk, rec_out[0] + sk, proj, proj + BA, proj + 2 * BA,
                                  w[W_DECAY], w[W_BONUS], w[W_LN_X_W], w[W_LN_X_B], gn_eps, y, 1);
            if (rc != 0) break;
            if (M == 4) /* 5.1 / 5.2: y ⊙ silu(g) */
                for (size_t i = 0; i < BA; i++) y[i] *= proj[3 * BA + i] * sigmoid_f(proj[3 * BA + i]);
        }
        rc = mat_rows(mat_at(mq, M + M_OUT), w[W_OUT], y, x, B, A, C, 1, tmp, nthreads); /* x += y Out */
        if (rc != 0) break;
        /* channel mix */
        for (int64_t b = 0; b < B; b++) layer_norm(x + b * C, w[W_LN2_W], w[W_LN2_B], xx + b * C, C, ln_eps);
        token_mixes(xx, ffn_in + so, w[W_FFN_MIX], w[W_FFN_MIX_C], mixed, 2, B, C); /* (k, r) */
        memcpy(ffn_out + so, xx, BC * sizeof(float));
        rc = channel_mix_rows(mat_at(mq, M + M_FFN_KEY), w[W_FFN_KEY], mat_at(mq, M + M_FFN_RECEPTANCE),
                              w[W_FFN_RECEPTANCE], mat_at(mq, M + M_FFN_VALUE), w[W_FFN_VALUE], x, mixed, hidden, gate,
                              tmp, B, C, F, nthreads);
    }
    free(buf);
    return rc;
}

/* RWKV-4.  Returns 0; -1 when scratch memory cannot be allocated; a quantized kernel's error code as is.
 *   x [B, C]: the embedded token on entry, the residual after the last layer on return;
 *   att_in / att_out, ffn_in / ffn_out [L, B, C]; aa, bb, pp (in and out) [L, B, A]: the state before
 *   and after (each pair may be one buffer);  weights: L * W_COUNT pointers;  mats: NULL, or
 *   L * (M + 4) * MD matrix descriptors (M = 3 here), whose quantized products run on nthreads threads. */
int rwkv4_decode_layers(int64_t L, int64_t B, int64_t C, int64_t A, int64_t F, const int64_t* weights, float* x,
                        const float* att_in, float* att_out, const float* aa_in, float* aa_out, const float* bb_in,
                        float* bb_out, const float* pp_in, float* pp_out, const float* ffn_in, float* ffn_out,
                        float ln_eps, const int64_t* mats, int nthreads) {
    const float* rec_in[3] = {aa_in, bb_in, pp_in};
    float* rec_out[3] = {aa_out, bb_out, pp_out};
    return decode_layers(0, 3, L, B, C, A, 0, 0, F, weights, x, att_in, att_out, rec_in, rec_out, ffn_in, ffn_out,
                         ln_eps, 0.f, mats, nthreads);
}

/* RWKV-5.0 (M = 3 projections) and 5.1 / 5.2 (M = 4, gated).  As rwkv4_decode_layers, with the state's
 * kv_in / kv_out [L, B, H, N, N] (may be one buffer) instead of aa, bb, pp; -1 also for N beyond wkv5.c's
 * buffers or M not 3 or 4. */
int rwkv5_decode_layers(int64_t L, int64_t B, int64_t C, int64_t H, int64_t N, int64_t F, int64_t M,
                        const int64_t* weights, float* x, const float* att_in, float* att_out, const float* ffn_in,
                        float* ffn_out, const float* kv_in, float* kv_out, float ln_eps, float gn_eps,
                        const int64_t* mats, int nthreads) {
    if (N > 256 || (M != 3 && M != 4)) return -1;
    const float* rec_in[1] = {kv_in};
    float* rec_out[1] = {kv_out};
    return decode_layers(1, (int)M, L, B, C, H * N, H, N, F, weights, x, att_in, att_out, rec_in, rec_out, ffn_in,
                         ffn_out, ln_eps, gn_eps, mats, nthreads);
}
