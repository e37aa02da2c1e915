/* Every RWKV-6 layer of a one-token step in one call, fp32 activations (rwkv_music/model/v6.py, _forward with
 * T == 1; the maths is docs/formats.md A7).  As v45_decode.c: the products are the per-layer path's calls
 * (rwkv_int8_gemm / rwkv_int4_gemm for quantized matrices, rows_matmul for fp32 ones, the token-shift and
 * decay LoRAs always fp32), the steps around them move here from ~30 torch ops a layer.
 *
 * Per layer (weights as V6Layer stores them: x @ W with W [in, out]; ffn_value transposed to [F, C] by the
 * caller, v6._layer_plan):
 *   xx = LN1(x);  d = prev_att - xx;  m = tanh((xx + d maa_x) W1)  [5 blocks of Dm]
 *   mixed_j = xx + d (maa_j + m_j W2_j), j = r k v g w;  att_x' = xx
 *   r, k, v, g = mixed_j Rkvg_j;  log w = -exp(time_decay + tanh(mixed_w D1) D2)
 *   per head (S [key j, value i]): y_i = Σ_j r_j S[j, i] + (Σ_j r_j u_j k_j) v_i,  S'[j, i] = w_j S[j, i] + k_j v_i
 *   y = GroupNorm_head(y) ln_x;  x += (y silu(g)) Out
 *   xx = LN2(x);  d = prev_ffn - xx;  kx, rx = xx + d ffn_maa_j;  ffn_x' = xx
 *   x += σ(rx R) ⊙ (relu(kx K)^2 V)
 * Rows are independent and each is computed in the same order at any batch size.
 */
#include "decode_common.h"

/* the weight pointers of one layer, in this order (v6.py's _LAYER_FIELDS) */
enum {
    W_LN1_W, W_LN1_B, W_MAA_X, W_MAA_W1, W_MAA_W2, W_MAA, W_RKVG, W_DECAY_W1, W_DECAY_W2, W_TIME_DECAY, W_U,
    W_LN_X_W, W_LN_X_B, W_OUTPUT, W_LN2_W, W_LN2_B, W_FFN_MAA, W_FFN_KEY, W_FFN_RECEPTANCE, W_FFN_VALUE, W_COUNT
};
/* quantized matrices: per layer M_COUNT descriptors (decode_common.h), the rkvg stack one per slice */
enum { M_RKVG = 0, M_OUTPUT = 4, M_FFN_KEY = 5, M_FFN_RECEPTANCE = 6, M_FFN_VALUE = 7, M_COUNT = 8 };

/* Returns 0; -1 when scratch memory cannot be allocated or N exceeds 256; a quantized kernel's error code.
 *   x [B, C]: the embedded token on entry, the residual after the last layer on return;
 *   att_in / att_out, ffn_in / ffn_out [L, B, C] and kv_in / kv_out [L, B, H, N, N]: the state before and
 *   after (each pair may be one buffer);  Dm, Dd: the token-shift and decay LoRA widths;
 *   weights: L * W_COUNT pointers;  mats: NULL, or L * M_COUNT * MD matrix descriptors. */
int rwkv6_decode_layers(int64_t L, int64_t B, int64_t C, int64_t H, int64_t N, int64_t F, int64_t Dm, int64_t Dd,
                        const int64_t* weights, float* x, const float* att_in, float* att_out, const float* ffn_in,
                        float* ffn_out, const float* kv_in, float* kv_out, float ln_eps, float gn_eps,
                        const int64_t* mats, int nthreads) {
    if (N > 256) return -1;
    const int64_t A = H * N;
    const size_t BC = (size_t)(B * C), BA = (size_t)(B * A);
    /* scratch: xx, d, xxx [B, C]; m [B, 5 Dm]; mixed [5, B, C]; r k v g w [5, B, A]; decay hidden [B, Dd];
     * y [B, A]; tmp [B, max(A, C, F)]; ffn hidden [B, F]; gate [B, C] */
    const int64_t widest = A > C ? (A > F ? A : F) : (C > F ? C : F);
    float* buf = (float*)malloc(sizeof(float) * (3 * BC + (size_t)(B * 5 * Dm) + 5 * BC + 5 * BA +
                                                 (size_t)(B * Dd) + BA + (size_t)(B * widest) + (size_t)(B * F) + BC));
    if (!buf) return -1;
    float* xx = buf;
    float* d = xx + BC;
    float* xxx = d + BC;
    float* m = xxx + BC;
    float* mixed = m + (size_t)(B * 5 * Dm);
    float* proj = mixed + 5 * BC;
    float* hd = proj + 5 * BA;
    float* y = hd + (size_t)(B * Dd);
    float* tmp = y + BA;
    float* hidden = tmp + (size_t)(B * widest);
    float* gate = hidden + (size_t)(B * F);
    int rc = 0;
    for (int64_t l = 0; l < L && rc == 0; l++) {
        const float* const* w = layer_weights(weights, l, W_COUNT);
        const int64_t* mq = layer_mats(mats, l, M_COUNT);
        const size_t so = (size_t)l * BC, sk = (size_t)l * (size_t)(B * H * N * N);
        /* time mix: the data-dependent token shift */
        for (int64_t b = 0; b < B; b++) layer_norm(x + b * C, w[W_LN1_W], w[W_LN1_B], xx + b * C, C, ln_eps);
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++) {
                const size_t i = (size_t)(b * C + c);
                d[i] = att_in[so + i] - xx[i];
                xxx[i] = xx[i] + d[i] * w[W_MAA_X][c];
            }
        memcpy(att_out + so, xx, BC * sizeof(float));
        rows_matmul(xxx, C, w[W_MAA_W1], m, 5 * Dm, B, C, 5 * Dm, 0, nthreads);
        for (int64_t i = 0; i < B * 5 * Dm; i++) m[i] = tanhf(m[i]);
        for (int j = 0; j < 5; j++) { /* mixed_j = xx + d (maa_j + m_j W2_j) */
            float* mj = mixed + j * BC;
            for (int64_t b = 0; b < B; b++) memcpy(mj + b * C, w[W_MAA] + j * C, (size_t)C * sizeof(float));
            rows_matmul(m + j * Dm, 5 * Dm, w[W_MAA_W2] + (size_t)j * Dm * C, mj, C, B, Dm, C, 1, nthreads);
            for (size_t i = 0; i < BC; i++) mj[i] = xx[i] + d[i] * mj[i];
        }
        for (int j = 0; j < 4 && rc == 0; j++) /* r k v g */
            rc = mat_rows(mat_at(mq, M_RKVG + j), w[W_RKVG] + (size_t)j * C * A, mixed + j * BC, proj + j * BA,
                          B, C, A, 0, tmp, nthreads);
        if (rc != 0) break;
        float* wd = proj + 4 * BA; /* the decay: w = exp(-exp(time_decay + tanh(mixed_w D1) D2)) */
        rows_matmul(mixed + 4 * BC, C, w[W_DECAY_W1], hd, Dd, B, C, Dd, 0, nthreads);
        for (int64_t i = 0; i < B * Dd; i++) hd[i] = tanhf(hd[i]);
        for (int64_t b = 0; b < B; b++) memcpy(wd + b * A, w[W_TIME_DECAY], (size_t)A * sizeof(float));
        rows_matmul(hd, Dd, w[W_DECAY_W2], wd, A, B, Dd, A, 1, nthreads);
        for (size_t i = 0; i < BA; i++) wd[i] = expf(-expf(wd[i]));
        /* the recurrence and GroupNorm of v5 (wkv5.c), with this token's decay per row */
        rc = rwkv5_wkv_decode(B, H, N, A, kv_in + sk, kv_out + sk, proj, proj + BA, proj + 2 * BA, wd, w[W_U],
                              w[W_LN_X_W], w[W_LN_X_B], gn_eps, y, 1);
        if (rc != 0) break;
        for (size_t i = 0; i < BA; i++) { /* y silu(g) */
            const float g = proj[3 * BA + i];
            y[i] *= g * sigmoid_f(g);
        }
        rc = mat_rows(mat_at(mq, M_OUTPUT), w[W_OUTPUT], y, x, B, A, C, 1, tmp, nthreads);
        if (rc != 0) break;
        /* channel mix */
        for (int64_t b = 0; b < B; b++) layer_norm(x + b * C, w[W_LN2_W], w[W_LN2_B], xx + b * C, C, ln_eps);
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++) {
                const size_t i = (size_t)(b * C + c);
                const float dd = ffn_in[so + i] - xx[i];
                mixed[i] = xx[i] + dd * w[W_FFN_MAA][c];          /* kx */
                mixed[BC + i] = xx[i] + dd * w[W_FFN_MAA][C + c]; /* rx */
            }
        memcpy(ffn_out + so, xx, BC * sizeof(float));
        /* (an fp32 ffn_value transposed to [F, C] by the caller) */
        rc = channel_mix_rows(mat_at(mq, M_FFN_KEY), w[W_FFN_KEY], mat_at(mq, M_FFN_RECEPTANCE),
                              w[W_FFN_RECEPTANCE], mat_at(mq, M_FFN_VALUE), w[W_FFN_VALUE], x, mixed, hidden, gate,
                              tmp, B, C, F, nthreads);
    }
    free(buf);
    return rc;
}
