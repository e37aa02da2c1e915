/* Every RWKV-7 layer of a one-token step in one call, fp32 (rwkv_music/model/v7.py, _forward with
 * T == 1 for plain float32 weights; the maths is docs/formats.md A7).
 *
 * A small model (the shipped ones are L4 D128) spends most of a torch decode step in ~25 op
 * dispatches a layer, each a few microseconds on vectors of 128 floats: the arithmetic is a
 * fraction of that.  Here a step is one call for all layers; the time mix's recurrence is
 * rwkv7_time_mix_decode (wkv7.c), the rest is written out below.  Rows are independent and each
 * is computed with the same operation order at any batch size.
 *
 * With int8/int4 matrices (rwkv_music.model.quant, native kernels) the products go through
 * rwkv_int8_gemm / rwkv_int4_gemm, the calls the per-layer torch path makes; only the steps around
 * them move here (at L12 D768, B = 1: ~1 ms of a 4-5 ms step in torch dispatch).
 *
 * Per layer (weights as v7.V7Layer stores them: x @ W with W [in, out]; ffn_value transposed to [F, C]
 * by the caller, v7._layer_plan):
 *   xx = LN1(x);  m_j = lerp(xx, prev_att, mix_j), j = r k v a w g;  att_x' = xx
 *   r, k, v = m_r R, m_k K, m_v V;  h_j = m_j L_j (j = v a w g), tanh on h_w, h_g
 *   lv, la, lw, g = bias_j + h_j U_j;  y = time_mix(r, k, v, lv, la, lw)  (wkv7.c)
 *   x += (y * g) O;  xx = LN2(x);  kx = lerp(xx, prev_ffn, ffn_mix);  ffn_x' = xx
 *   x += relu(kx Key)^2 Value
 */
#include "decode_common.h"

int rwkv7_time_mix_decode(int64_t B, int64_t H, int64_t N, const float* S, float* S_out, const float* r,
                          const float* k, const float* v, const float* lv, const float* la, const float* lw,
                          const float* v_first, const float* k_k, const float* k_a, const float* one_minus_k_a,
                          const float* r_k, const float* ln_w, const float* ln_b, float gn_eps, float decay_scale,
                          float* y, float* v_out, int nthreads);

/* Quantized matrices: per layer M_COUNT descriptors (decode_common.h), stacks one per slice. */
enum { M_RKV = 0, M_LORA_IN = 3, M_LORA_OUT = 7, M_OUTPUT = 11, M_FFN_KEY = 12, M_FFN_VALUE = 13, M_COUNT = 14 };

/* the weight pointers of one layer, in this order (v7.py's _LAYER_FIELDS) */
enum {
    W_LN1_W, W_LN1_B, W_MIX, W_RKV, W_LORA_IN, W_LORA_OUT, W_LORA_BIAS, W_K_K, W_K_A, W_ONE_MINUS_K_A, W_R_K,
    W_LN_X_W, W_LN_X_B, W_OUTPUT, W_LN2_W, W_LN2_B, W_FFN_MIX, W_FFN_KEY, W_FFN_VALUE, W_COUNT
};

/* Returns 0; -1 when scratch memory cannot be allocated or N exceeds wkv7.c's buffers.
 *   x [B, C]: the embedded token on entry, the residual after the last layer on return;
 *   att_in / att_out, ffn_in / ffn_out [L, B, C] and kv_in / kv_out [L, B, H, N, N]: the state before
 *   and after (each pair may be one buffer: a layer reads its rows before writing them);
 *   weights: L * W_COUNT pointers;  mats: NULL, or L * M_COUNT * MD matrix descriptors (above), whose
 *   quantized products run on nthreads threads; a quantized kernel's error code is returned as is. */
int rwkv7_decode_layers(int64_t L, int64_t B, int64_t C, int64_t H, int64_t N, int64_t D, int64_t F,
                        const int64_t* weights, float* x, const float* att_in, float* att_out, const float* ffn_in,
                        float* ffn_out, const float* kv_in, float* kv_out, float ln_eps, float gn_eps,
                        float decay_scale, const int64_t* mats, int nthreads) {
    if (N > 256 || H * N != C) return -1;
    /* scratch: mixes [6, B, C], r k v [3, B, C], h [4, B, D], lora outputs [4, B, C], y, v_first, v_out,
     * xx [B, C], ffn hidden [B, F] */
    const size_t BC = (size_t)(B * C);
    float* buf = (float*)malloc(sizeof(float) * (6 * BC + 3 * BC + 4 * (size_t)(B * D) + 4 * BC + 5 * BC +
                                                 (size_t)(B * F)));
    if (!buf) return -1;
    float* mixed = buf;
    float* rkv = mixed + 6 * BC;
    float* h = rkv + 3 * BC;
    float* lo = h + 4 * (size_t)(B * D);
    float* y = lo + 4 * BC;
    float* v_first = y + BC;
    float* v_out = v_first + BC;
    float* xx = v_out + BC;
    float* hidden = xx + BC;
    float* tmp = hidden + (size_t)(B * F); /* [B, C]: a quantized product before it is added */
    int rc = 0;
    for (int64_t l = 0; l < L && rc == 0; l++) {
        const float* const* w = layer_weights(weights, l, W_COUNT);
        const int64_t* mq = layer_mats(mats, l, M_COUNT);
        const size_t so = (size_t)l * BC, sk = (size_t)l * (size_t)(B * H * N * N);
        /* time mix: LN1, the six token-shift mixes (prev is read before att_out, possibly the same row, is written) */
        for (int64_t b = 0; b < B; b++) {
            float* xb = xx + b * C;
            layer_norm(x + b * C, w[W_LN1_W], w[W_LN1_B], xb, C, ln_eps);
            const float* prev = att_in + so + b * C;
            for (int j = 0; j < 6; j++) {
                const float* mj = w[W_MIX] + j * C;
                float* dst = mixed + j * BC + b * C;
                lerp_rows(xb, prev, mj, dst, C);
            }
            memcpy(att_out + so + b * C, xb, (size_t)C * sizeof(float));
        }
        for (int j = 0; j < 3 && rc == 0; j++) /* r k v */
            rc = mat_rows(mat_at(mq, M_RKV + j), w[W_RKV] + (size_t)j * C * C, mixed + j * BC, rkv + j * BC, B, C,
                          C, 0, tmp, nthreads);
        for (int j = 0; j < 4 && rc == 0; j++) { /* LoRAs v a w g: in, tanh for w and g, out plus bias */
            float* hj = h + (size_t)j * B * D;
            rc = mat_rows(mat_at(mq, M_LORA_IN + j), w[W_LORA_IN] + (size_t)j * C * D, mixed + (2 + j) * BC, hj,
                          B, C, D, 0, tmp, nthreads);
            if (j >= 2)
                for (int64_t i = 0; i < B * D; i++) hj[i] = tanhf(hj[i]);
            float* oj = lo + j * BC;
            for (int64_t b = 0; b < B; b++) memcpy(oj + b * C, w[W_LORA_BIAS] + j * C, (size_t)C * sizeof(float));
            if (rc == 0)
                rc = mat_rows(mat_at(mq, M_LORA_OUT + j), w[W_LORA_OUT] + (size_t)j * D * C, hj, oj, B, D, C, 1,
                              tmp, nthreads);
        }
        if (rc != 0) break;
        rc = rwkv7_time_mix_decode(B, H, N, kv_in + sk, kv_out + sk, rkv, rkv + BC, rkv + 2 * BC, lo, lo + BC,
                                   lo + 2 * BC, l == 0 ? NULL : v_first, w[W_K_K], w[W_K_A], w[W_ONE_MINUS_K_A],
                                   w[W_R_K], w[W_LN_X_W], w[W_LN_X_B], gn_eps, decay_scale, y,
                                   l == 0 ? v_first : v_out, 1);
        if (rc != 0) break;
        for (size_t i = 0; i < BC; i++) y[i] *= lo[3 * BC + i];                     /* the gate g */
        rc = mat_rows(mat_at(mq, M_OUTPUT), w[W_OUTPUT], y, x, B, C, C, 1, tmp, nthreads); /* x += (y * g) O */
        if (rc != 0) break;
        /* channel mix */
        for (int64_t b = 0; b < B; b++) {
            float* xb = xx + b * C;
            layer_norm(x + b * C, w[W_LN2_W], w[W_LN2_B], xb, C, ln_eps);
            const float* prev = ffn_in + so + b * C;
            float* kx = mixed + b * C; /* (the mixes are spent) */
            lerp_rows(xb, prev, w[W_FFN_MIX], kx, C);
            memcpy(ffn_out + so + b * C, xb, (size_t)C * sizeof(float));
        }
        rc = mat_rows(mat_at(mq, M_FFN_KEY), w[W_FFN_KEY], mixed, hidden, B, C, F, 0, tmp, nthreads);
        if (rc != 0) break;
        relu_square(hidden, B * F);
        /* (an fp32 ffn_value transposed to [F, C] by the caller) */
        rc = mat_rows(mat_at(mq, M_FFN_VALUE), w[W_FFN_VALUE], hidden, x, B, F, C, 1, tmp, nthreads);
    }
    free(buf);
    return rc;
}

/* T tokens one after another through rwkv7_decode_layers (a short prompt's prefill: below a few dozen
 * tokens the chunked torch form costs more in op dispatch than these steps in compute).
 * xs [T, B, C]: the embedded tokens, position-major; xs[T - 1] holds the last residual on return.
 * The state is read from the *_in buffers for the first token and carried in the *_out ones. */
int rwkv7_prefill_layers(int64_t T, int64_t L, int64_t B, int64_t C, int64_t H, int64_t N, int64_t D, int64_t F,
                         const int64_t* weights, float* xs, const float* att_in, float* att_out,
                         const float* ffn_in, float* ffn_out, const float* kv_in, float* kv_out, float ln_eps,
                         float gn_eps, float decay_scale, const int64_t* mats, int nthreads) {
    for (int64_t t = 0; t < T; t++) {
        const int rc = rwkv7_decode_layers(L, B, C, H, N, D, F, weights, xs + t * B * C, t ? att_out : att_in,
                                           att_out, t ? ffn_out : ffn_in, ffn_out, t ? kv_out : kv_in, kv_out, ln_eps,
                                           gn_eps, decay_scale, mats, nthreads);
        if (rc != 0) return rc;
    }
    return 0;
}
