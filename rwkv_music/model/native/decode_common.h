/* Helpers shared by the all-layers decode steps (v7_decode.c, v45_decode.c): LayerNorm, the fp32
 * row products and the dispatch of a product to the int8 / int4 kernels.  Included, not compiled on
 * its own; rwkv_music.model.native hashes it with the sources for the build cache. */
#ifndef RWKV_DECODE_COMMON_H
#define RWKV_DECODE_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int rwkv_int8_gemm(const float* x, const int8_t* q, const float* scale, float* y, int64_t nb, int64_t n_in,
                   int64_t n_out, int nthreads);
int rwkv_int4_gemm(const float* x, const uint8_t* q, const float* scale, const float* zmin, float* y, int64_t nb,
                   int64_t n_in, int64_t n_out, int64_t group, int nthreads);
int rwkv5_wkv_decode(int64_t B, int64_t H, int64_t N, int64_t decay_ld, const float* S, float* S_out,
                     const float* r, const float* k, const float* v, const float* decay, const float* bonus,
                     const float* ln_w, const float* ln_b, float gn_eps, float* y, int nthreads);

/* A quantized matrix descriptor (rwkv_music.model.quant, through the version modules' plans): MD int64
 * {kind, q, scale, zmin, group}, kind 0 (the fp32 matrix of the weight pointers), 1 (int8: q [out, in]
 * int8, a scale per output) or 2 (int4: int4_gemm.c's layout). */
#define MD 5

/* layer l's weight pointers (count a layer) and matrix descriptors (count a layer; NULL without any) */
static inline const float* const* layer_weights(const int64_t* weights, int64_t l, int64_t count) {
    return (const float* const*)(weights + l * count);
}
static inline const int64_t* layer_mats(const int64_t* mats, int64_t l, int64_t count) {
    return mats ? mats + l * count * MD : NULL;
}
/* descriptor i of a layer's (NULL: none, an fp32 product) */
static inline const int64_t* mat_at(const int64_t* layer, int64_t i) { return layer ? layer + i * MD : NULL; }

/* dst = torch.lerp(start, end, weight) over n floats, torch's formula (start + w (end - start) below
 * w = 0.5, end - (end - start)(1 - w) from it on).  Both sides are computed and one is picked by a bit
 * mask: GCC vectorizes that, where a select on the comparison stayed a branch per channel (mispredicted
 * for mixes near 0.5; with relu_square below about half of v7_decode.c's own time at D768, 2026-12-08). */
static inline void lerp_rows(const float* start, const float* end, const float* weight, float* dst, int64_t n) {
    for (int64_t c = 0; c < n; c++) {
        const float w = weight[c], d = end[c] - start[c], lo = start[c] + w * d, hi = end[c] - d * (1.f - w);
        uint32_t lb, hb;
        memcpy(&lb, &lo, 4);
        memcpy(&hb, &hi, 4);
        const uint32_t m = 0u - (uint32_t)(w < 0.5f), r = (lb & m) | (hb & ~m);
        memcpy(dst + c, &r, 4);
    }
}

/* h = relu(h)^2 in place (the channel mix's activation); negative, zero and NaN inputs give +0, as
 * (h > 0 ? h : 0)^2.  The mask form vectorizes (see lerp_rows). */
static inline void relu_square(float* h, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float x = h[i];
        uint32_t b;
        memcpy(&b, &x, 4);
        b &= 0u - (uint32_t)(x > 0.f);
        float t;
        memcpy(&t, &b, 4);
        h[i] = t * t;
    }
}

/* y = LayerNorm(x) over n (biased variance, as torch), one row */
static inline void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t n, float eps) {
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.f / sqrtf(var / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mean) * inv * w[i] + b[i];
}

/* Matrices of at least this many weights are split over the threads (by blocks of outputs): a one-row
 * product of a D768 model streams megabytes, which one core reads at well below the machine's bandwidth;
 * the shipped models' matrices (at most 128 x 512) stay on one thread, where waking others costs more. */
#define ROWS_PARALLEL_MIN (1 << 18)

/* out[b, j0 .. j0 + 64) (+)= x[b, :] @ W[:, j0 .. j0 + 64) for rows b < nb: every output summed over i in
 * order with one FMA per input, in vector registers (a running sum kept in memory was a load-add-store
 * chain per input, bound by store forwarding; a dot product per output one long dependency chain).  The
 * rows reuse the block's weights from cache.  Vectors are loaded and stored unaligned (GCC/Clang vector
 * extension); a + x * w contracts to FMA as the scalar code does, and each lane is one output, so the
 * numbers are the same at either vector width. */
#if defined(__AVX512F__)
/* four 16-float registers */
typedef float vrow __attribute__((vector_size(64), aligned(4)));
#define VROW_LANES 16
#else
/* eight 8-float registers: with 64-byte vectors on an AVX2-only CPU GCC spilled every accumulator to
 * the stack at each input (measured on a Zen 3: 5-8x slower decode than this form) */
typedef float vrow __attribute__((vector_size(32), aligned(4)));
#define VROW_LANES 8
#endif
#define VROW_REGS (64 / VROW_LANES)

static inline void rows_block(const float* x, int64_t ldx, const float* W, float* out, int64_t ldo, int64_t nb,
                              int64_t n_in, int64_t n_out, int64_t j0, int accumulate) {
    for (int64_t b = 0; b < nb; b++) {
        const float* xb = x + b * ldx;
        float* ob = out + b * ldo + j0;
        vrow a[VROW_REGS];
        for (int r = 0; r < VROW_REGS; r++) {
            if (accumulate)
                a[r] = *(const vrow*)(ob + r * VROW_LANES);
            else
                a[r] = (vrow){0};
        }
        const float* wi = W + j0;
        for (int64_t i = 0; i < n_in; i++, wi += n_out) {
            const float xi = xb[i];
            for (int r = 0; r < VROW_REGS; r++) a[r] += xi * *(const vrow*)(wi + r * VROW_LANES);
        }
        for (int r = 0; r < VROW_REGS; r++) *(vrow*)(ob + r * VROW_LANES) = a[r];
    }
}

/* out[b, :] (+)= x[b, :] @ W for rows b < nb; W [n_in, n_out] row-major.  64 outputs at a time
 * (rows_block), on nthreads threads for a big W; each output is computed the same way whatever the
 * rows and threads, so the numbers do not depend on either. */
static inline void rows_matmul(const float* x, int64_t ldx, const float* W, float* out, int64_t ldo, int64_t nb,
                               int64_t n_in, int64_t n_out, int accumulate, int nthreads) {
    const int64_t blocks = n_out / 64;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) \
    if (nthreads > 1 && blocks > 1 && n_in * n_out >= ROWS_PARALLEL_MIN)
    for (int64_t k = 0; k < blocks; k++) rows_block(x, ldx, W, out, ldo, nb, n_in, n_out, k * 64, accumulate);
    for (int64_t b = 0; b < nb; b++) { /* a tail narrower than 64, one output at a time */
        const float* xb = x + b * ldx;
        float* ob = out + b * ldo;
        for (int64_t j = blocks * 64; j < n_out; j++) {
            float acc = accumulate ? ob[j] : 0.f;
            for (int64_t i = 0; i < n_in; i++) acc += xb[i] * W[i * n_out + j];
            ob[j] = acc;
        }
    }
}

/* out (+)= x @ W for nb rows (x [nb, n_in] and out [nb, n_out] contiguous): through rows_matmul for an
 * fp32 W [n_in, n_out] (mat NULL or of kind 0), else through the int8 or int4 kernel, the very call the
 * per-layer torch path makes (accumulating through tmp [nb, n_out]). */
static inline int mat_rows(const int64_t* mat, const float* W, const float* x, float* out, int64_t nb, int64_t n_in,
                    int64_t n_out, int accumulate, float* tmp, int nthreads) {
    if (mat == NULL || mat[0] == 0) {
        rows_matmul(x, n_in, W, out, n_out, nb, n_in, n_out, accumulate, nthreads);
        return 0;
    }
    float* y = accumulate ? tmp : out;
    const int rc = mat[0] == 1 ? rwkv_int8_gemm(x, (const int8_t*)mat[1], (const float*)mat[2], y, nb, n_in, n_out,
                                                nthreads)
                               : rwkv_int4_gemm(x, (const uint8_t*)mat[1], (const float*)mat[2], (const float*)mat[3],
                                                y, nb, n_in, n_out, mat[4], nthreads);
    if (rc != 0) return rc;
    if (accumulate)
        for (int64_t i = 0; i < nb * n_out; i++) out[i] += y[i];
    return 0;
}

static inline float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

/* The v4 / v5 / v6 channel mix after its token shift: x += σ(rx R) ⊙ (relu(kx K)^2 V), for kx and rx the
 * [B, C] rows at mixed and mixed + B·C (mixed is then reused for the value product); matrices as mat_rows
 * takes them (V as [F, C]); hidden [B, F], gate [B, C] and tmp [B, max(C, F)] scratch. */
static inline int channel_mix_rows(const int64_t* mat_key, const float* K, const int64_t* mat_receptance,
                                   const float* R, const int64_t* mat_value, const float* V, float* x, float* mixed,
                                   float* hidden, float* gate, float* tmp, int64_t B, int64_t C, int64_t F,
                                   int nthreads) {
    const size_t BC = (size_t)(B * C);
    int rc = mat_rows(mat_key, K, mixed, hidden, B, C, F, 0, tmp, nthreads);
    if (rc == 0) rc = mat_rows(mat_receptance, R, mixed + BC, gate, B, C, C, 0, tmp, nthreads);
    if (rc != 0) return rc;
    relu_square(hidden, B * F);
    rc = mat_rows(mat_value, V, hidden, mixed, B, F, C, 0, tmp, nthreads);
    if (rc != 0) return rc;
    for (size_t i = 0; i < BC; i++) x[i] += sigmoid_f(gate[i]) * mixed[i];
    return 0;
}

#endif
