/* RWKV-7 time mix for one token, from the projections to the GroupNorm'd output, fused
 * (rwkv_music/model/v7.py, _time_mix with T == 1; the recurrence is docs/formats.md A7 steps 4-9).
 *
 * In torch this stretch is ~25 small ops per layer, each a few microseconds of dispatch on
 * [B, C] vectors; here it is one pass per (batch row, head) that reads the state S once and
 * writes S' once.  Everything is float32.  S may be S_out (in-place decode): row i of S' only
 * needs row i of S, which is read before it is written.
 *
 * Per head (N channels; i indexes values, j keys; S is [N(value), N(key)]):
 *   a = σ(la),  kk = normalize(k ⊙ k_k),  k' = k ⊙ ((1 - k_a) + a ⊙ k_a)
 *   v' = lerp(v, v_first, σ(lv))  (layer 0: v' = v, and v_first is set from it)
 *   w = exp(-decay_scale · σ(lw)),  b = kk ⊙ a
 *   S'[i, j] = S[i, j] w[j] - (S kk)[i] b[j] + v'[i] k'[j],   y[i] = Σ_j S'[i, j] r[j]
 *   y = GroupNorm_head(y) ⊙ ln_w + ln_b  +  (Σ_j r[j] k'[j] r_k[j]) v'
 */
#include <math.h>
#include <stdint.h>


/* exp over an array, 16 lanes at a time (GCC/Clang vector extensions), for the recurrence's four
 * exponentials a channel: scalar expf took a quarter of this kernel's time at head size 64.  Range
 * reduction x = n ln2 + r (ln2 split in two parts) and Cephes' degree-6 polynomial for e^r on
 * |r| <= ln2/2 (coefficients from Cephes' expf), 2^n built in the exponent bits: relative error at most
 * 8.2e-8 (measured over [-87, 88.3], against exp in double).  Inputs are clamped to [-87.33, 88.37]
 * (outputs ~1.2e-38 .. 2.4e38; NaN stays NaN). */
typedef float vexp16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t viexp16 __attribute__((vector_size(64), aligned(4)));

static inline vexp16 exp16(vexp16 x) { /* x within [-87.33, 88.37] */
    const vexp16 magic = x - x + 12582912.f; /* 1.5 * 2^23: adding it rounds to an integer */
    const vexp16 n = (x * 1.44269504f + magic) - magic;
    const vexp16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    const vexp16 z = r * r;
    vexp16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * z + r + 1.f;
    const viexp16 e = (__builtin_convertvector(n, viexp16) + 127) << 23;
    vexp16 scale;
    __builtin_memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

/* out[j] = exp(s * in[j]) for j < n */
static void exp_scaled(const float* in, float s, float* out, int64_t n) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        float t[16];
        for (int i = 0; i < 16; i++) {
            const float x = s * in[j + i];
            t[i] = x < -87.33f ? -87.33f : (x > 88.37f ? 88.37f : x);
        }
        vexp16 v;
        __builtin_memcpy(&v, t, sizeof v);
        v = exp16(v);
        __builtin_memcpy(out + j, &v, sizeof v);
    }
    for (; j < n; j++) out[j] = expf(s * in[j]);
}

/* torch.lerp's formula (exact at both ends) */
static inline float lerpf(float start, float end, float weight) {
    return weight < 0.5f ? start + weight * (end - start) : end - (end - start) * (1.f - weight);
}

/* Returns 0; -1 for N beyond the stack buffers. */
int rwkv7_time_mix_decode(int64_t B, int64_t H, int64_t N, const float* S, float* S_out,
                          const float* r, const float* k, const float* v, const float* lv, const float* la,
                          const float* lw, const float* v_first, const float* k_k, const float* k_a,
                          const float* one_minus_k_a, const float* r_k, const float* ln_w, const float* ln_b,
                          float gn_eps, float decay_scale, float* y, float* v_out, int nthreads) {
    if (N > 256) return -1;
    const int64_t C = H * N;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && B * H > 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t b = bh / H, h = bh % H, o = b * C + h * N; /* offset of this head's vectors */
        const float* Sh = S + bh * N * N;
        float* Oh = S_out + bh * N * N;
        float kk[256], kp[256], vp[256], w[256], bb[256], rr[256], yy[256];
        float ea[256], ew[256], ev[256]; /* exp(-la), exp(-lw), exp(-lv): the sigmoids' exponentials */
        exp_scaled(la + o, -1.f, ea, N);
        exp_scaled(lw + o, -1.f, ew, N);
        if (v_first) exp_scaled(lv + o, -1.f, ev, N);
        for (int64_t j = 0; j < N; j++) w[j] = -decay_scale / (1.f + ew[j]);
        exp_scaled(w, 1.f, w, N); /* w = exp(-decay_scale σ(lw)) */
        float nrm = 0.f;
        for (int64_t j = 0; j < N; j++) {
            float kj = k[o + j], a = 1.f / (1.f + ea[j]);
            kk[j] = kj * k_k[h * N + j];
            nrm += kk[j] * kk[j];
            kp[j] = kj * (one_minus_k_a[h * N + j] + a * k_a[h * N + j]);
            bb[j] = a; /* times kk below, once kk is normalized */
            rr[j] = r[o + j];
            float vj = v[o + j];
            vp[j] = v_first ? lerpf(vj, v_first[o + j], 1.f / (1.f + ev[j])) : vj;
            v_out[o + j] = vp[j];
        }
        nrm = sqrtf(nrm);
        nrm = nrm > 1e-12f ? nrm : 1e-12f;
        for (int64_t j = 0; j < N; j++) {
            kk[j] /= nrm;
            bb[j] *= kk[j];
        }
        for (int64_t i = 0; i < N; i++) {
            const float* Si = Sh + i * N;
            float* Oi = Oh + i * N;
            float sk = 0.f, acc = 0.f;
#pragma omp simd reduction(+ : sk)
            for (int64_t j = 0; j < N; j++) sk += Si[j] * kk[j];
            const float vi = vp[i];
#pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < N; j++) {
                float s = Si[j] * w[j] - sk * bb[j] + vi * kp[j];
                Oi[j] = s;
                acc += s * rr[j];
            }
            yy[i] = acc;
        }
        float mean = 0.f, var = 0.f, rk = 0.f;
        for (int64_t i = 0; i < N; i++) mean += yy[i];
        mean /= (float)N;
        for (int64_t i = 0; i < N; i++) var += (yy[i] - mean) * (yy[i] - mean);
        const float inv = 1.f / sqrtf(var / (float)N + gn_eps);
        for (int64_t j = 0; j < N; j++) rk += rr[j] * kp[j] * r_k[h * N + j];
        for (int64_t i = 0; i < N; i++)
            y[o + i] = (yy[i] - mean) * inv * ln_w[h * N + i] + ln_b[h * N + i] + rk * vp[i];
    }
    return 0;
}
