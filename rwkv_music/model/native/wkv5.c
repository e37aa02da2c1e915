/* RWKV-5.x (and RWKV-6) WKV for one token and the per-head GroupNorm, fused (rwkv_music/model/v5.py,
 * wkv_one and the ln_x GroupNorm of time_mix; docs/formats.md A7 v5).  Everything float32.
 * v5's decay w is one vector [H·N] for every row (decay_ld 0); v6's is computed per token, a row of
 * [B, H·N] each (decay_ld = H·N, v6_decode.c).
 *
 * Per head (N channels; S is [N(key j), N(value i)]):
 *   y[i] = Σ_j r[j] S[j, i] + (Σ_j r[j] u[j] k[j]) v[i]
 *   S'[j, i] = w[j] S[j, i] + k[j] v[i]
 *   y = GroupNorm_head(y) ⊙ ln_w + ln_b
 * S may be S_out (in-place decode): row j of S' only needs row j of S, read before it is written.
 */
#include <math.h>
#include <stdint.h>

/* Returns 0; -1 for N beyond the stack buffer. */
int rwkv5_wkv_decode(int64_t B, int64_t H, int64_t N, int64_t decay_ld, const float* S, float* S_out,
                     const float* r, const float* k, const float* v, const float* decay, const float* bonus,
                     const float* ln_w, const float* ln_b, float gn_eps, float* y, int nthreads) {
    if (N > 256) return -1;
    const int64_t C = H * N;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && B * H > 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t b = bh / H, h = bh % H, o = b * C + h * N;
        const float* Sh = S + bh * N * N;
        float* Oh = S_out + bh * N * N;
        const float *rh = r + o, *kh = k + o, *vh = v + o;
        float yy[256], ruk = 0.f;
        for (int64_t i = 0; i < N; i++) yy[i] = 0.f;
        for (int64_t j = 0; j < N; j++) {
            const float* Sj = Sh + j * N;
            float* Oj = Oh + j * N;
            const float rj = rh[j], kj = kh[j], wj = decay[b * decay_ld + h * N + j];
            ruk += rj * bonus[h * N + j] * kj;
#pragma omp simd
            for (int64_t i = 0; i < N; i++) {
                const float s = Sj[i];
                yy[i] += rj * s;
                Oj[i] = s * wj + kj * vh[i];
            }
        }
        float mean = 0.f, var = 0.f;
        for (int64_t i = 0; i < N; i++) {
            yy[i] += ruk * vh[i];
            mean += yy[i];
        }
        mean /= (float)N;
        for (int64_t i = 0; i < N; i++) var += (yy[i] - mean) * (yy[i] - mean);
        const float inv = 1.f / sqrtf(var / (float)N + gn_eps);
        for (int64_t i = 0; i < N; i++) y[o + i] = (yy[i] - mean) * inv * ln_w[h * N + i] + ln_b[h * N + i];
    }
    return 0;
}
