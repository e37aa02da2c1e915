/* int8 weight-only matrix products for single-token decode on the CPU (rwkv_music.model.quant).
 *
 *   y[b, o] = scale[o] * sum_i x[b, i] * q[o, i]        q: [n_out, n_in] int8, row-major
 *
 * Each row of x is rounded to int16 with its own scale (relative error ~1.5e-5, so rows of a
 * batch stay independent and the result is close to fp32), then the products run in integers:
 * AVX2's vpmaddwd multiplies 16 int16 pairs and adds neighbours into 8 int32 lanes.  Decode at
 * batch 1 reads every weight once per token, so reading int8 instead of fp32 is the whole gain;
 * the integer path keeps the arithmetic from becoming the bottleneck instead.  One output row at a
 * time, with a software prefetch a few KB ahead, streamed fastest on the 2-core AVX2 machine this
 * was tuned on (a 400 MB stream of decode-shaped matrices: 4- and 8-row blocks were 20-40 % slower).
 *
 * Built on first use by rwkv_music/model/native/__init__.py with the system C compiler
 * (-O3 -march=native -fopenmp); the portable loop below is used where AVX2 is not available.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* Products are |x16 * q| <= 32767 * 127 (~4.2e6).  Within a CHUNK each int32 lane sums at most
 * CHUNK / 8 of them (~1.1e9 < 2^31); lanes and chunks add up in int64. */
#define CHUNK 2048
#define PREFETCH_AHEAD 2048 /* bytes of the weight stream requested ahead of use */

/* x [nb, n_in] float -> x16 [nb, ld] int16 (zero padded past n_in), one scale per row in xs [nb].
 * Shared with int4_gemm.c, so both kernels round activations the same way. */
void rwkv_quantize_rows16(const float* x, int16_t* x16, float* xs, int64_t nb, int64_t n_in, int64_t ld) {
    for (int64_t b = 0; b < nb; b++) {
        const float* xb = x + b * n_in;
        int16_t* ob = x16 + b * ld;
        float amax = 0.f;
        for (int64_t i = 0; i < n_in; i++) {
            float a = fabsf(xb[i]);
            amax = a > amax ? a : amax;
        }
        float s = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / s;
        int64_t i = 0;
#if defined(__AVX2__)
        __m256 vinv = _mm256_set1_ps(inv);
        for (; i + 16 <= n_in; i += 16) { /* round to nearest even, as lrintf below */
            __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i), vinv));
            __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i + 8), vinv));
            _mm256_storeu_si256((__m256i*)(ob + i), _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8));
        }
#endif
        for (; i < n_in; i++) ob[i] = (int16_t)lrintf(xb[i] * inv);
        for (i = n_in; i < ld; i++) ob[i] = 0;
        xs[b] = s;
    }
}

#if defined(__AVX2__)
/* the sum of the 8 int32 lanes, in int64 (the lanes together can exceed 2^31) */
static inline int64_t hsum_i32(__m256i v) {
    __m256i wide = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                    _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(wide), _mm256_extracti128_si256(wide, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}
#endif

/* dot(x16[c0:c1], qr[c0:c1]) exactly, for c1 - c0 <= CHUNK */
static int64_t dot_chunk(const int16_t* xb, const int8_t* qr, int64_t c0, int64_t c1) {
    int64_t i = c0, total = 0;
#if defined(__AVX2__)
    __m256i a = _mm256_setzero_si256(), b = a;
    for (; i + 32 <= c1; i += 32) {
        if ((i & 63) == 0) _mm_prefetch((const char*)(qr + i + PREFETCH_AHEAD), _MM_HINT_T0);
        __m256i w = _mm256_loadu_si256((const __m256i*)(qr + i));
        a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(w)),
                                                  _mm256_loadu_si256((const __m256i*)(xb + i))));
        b = _mm256_add_epi32(b, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1)),
                                                  _mm256_loadu_si256((const __m256i*)(xb + i + 16))));
    }
    total = hsum_i32(a) + hsum_i32(b);
#endif
    for (; i < c1; i++) total += (int32_t)xb[i] * (int32_t)qr[i];
    return total;
}

#define BTILE 4   /* rows of x per pass over a weight row: each widened weight vector is used 4 times */
#define RBLOCK 16 /* output rows per block (16 x 3072 int8 = 48 KB, within L2) */

/* y[b, o] for b in [b0, b0 + BTILE): sums[t] = dot(x16[b0 + t], qr) exactly, n_in <= CHUNK */
static void dot_chunk_tile(const int16_t* x16, int64_t n_in, const int8_t* qr, int64_t c0, int64_t c1, int64_t* sums) {
    int64_t i = c0;
#if defined(__AVX2__)
    __m256i acc[BTILE];
    for (int t = 0; t < BTILE; t++) acc[t] = _mm256_setzero_si256();
    for (; i + 32 <= c1; i += 32) {
        if ((i & 63) == 0) _mm_prefetch((const char*)(qr + i + PREFETCH_AHEAD), _MM_HINT_T0);
        __m256i w = _mm256_loadu_si256((const __m256i*)(qr + i));
        __m256i lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w)), hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1));
        for (int t = 0; t < BTILE; t++) {
            const int16_t* xb = x16 + t * n_in + i;
            acc[t] = _mm256_add_epi32(acc[t], _mm256_add_epi32(
                _mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i*)xb)),
                _mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i*)(xb + 16)))));
        }
    }
    for (int t = 0; t < BTILE; t++) sums[t] += hsum_i32(acc[t]);
#endif
    for (int t = 0; t < BTILE; t++) {
        int64_t total = 0;
        for (int64_t k = i; k < c1; k++) total += (int32_t)x16[t * n_in + k] * (int32_t)qr[k];
        sums[t] += total;
    }
}

/* Returns 0, or -1 when the scratch buffer cannot be allocated (y is then left unwritten). */
int rwkv_int8_gemm(const float* x, const int8_t* q, const float* scale, float* y,
                   int64_t nb, int64_t n_in, int64_t n_out, int nthreads) {
    int16_t* x16 = (int16_t*)malloc((size_t)(nb * n_in) * sizeof(int16_t) + 64);
    float* xs = (float*)malloc((size_t)nb * sizeof(float) + 16);
    if (!x16 || !xs) {
        free(x16);
        free(xs);
        return -1;
    }
    rwkv_quantize_rows16(x, x16, xs, nb, n_in, n_in);
    /* Blocks of RBLOCK output rows: each block's weights come from memory once and stay in cache
     * while every tile of x passes over them, and a tile of x stays in L1 across the block. */
    const int64_t nblocks = (n_out + RBLOCK - 1) / RBLOCK;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t o0 = blk * RBLOCK, o1 = o0 + RBLOCK < n_out ? o0 + RBLOCK : n_out;
        int64_t b = 0;
        for (; b + BTILE <= nb; b += BTILE) {
            for (int64_t o = o0; o < o1; o++) {
                int64_t sums[BTILE] = {0};
                for (int64_t c0 = 0; c0 < n_in; c0 += CHUNK)
                    dot_chunk_tile(x16 + b * n_in, n_in, q + o * n_in, c0, c0 + CHUNK < n_in ? c0 + CHUNK : n_in,
                                   sums);
                for (int t = 0; t < BTILE; t++) y[(b + t) * n_out + o] = (float)sums[t] * xs[b + t] * scale[o];
            }
        }
        for (; b < nb; b++) {
            for (int64_t o = o0; o < o1; o++) {
                int64_t total = 0;
                for (int64_t c0 = 0; c0 < n_in; c0 += CHUNK)
                    total += dot_chunk(x16 + b * n_in, q + o * n_in, c0, c0 + CHUNK < n_in ? c0 + CHUNK : n_in);
                y[b * n_out + o] = (float)total * xs[b] * scale[o];
            }
        }
    }
    free(x16);
    free(xs);
    return 0;
}

/* A stack of m matrices of one shape (torch.bmm): x [m, nb, n_in] -> y [m, nb, n_out], slice i through
 * q[i], scale[i].  One call instead of m from Python: a RWKV-7 layer has three such stacks (r k v, and
 * the LoRAs in and out), eleven small products that each paid a ctypes call, views and checks. */
int rwkv_int8_gemm_stack(const float* x, const int8_t* const* q, const float* const* scale, float* y, int64_t m,
                         int64_t nb, int64_t n_in, int64_t n_out, int nthreads) {
    for (int64_t i = 0; i < m; i++) {
        const int rc = rwkv_int8_gemm(x + i * nb * n_in, q[i], scale[i], y + i * nb * n_out, nb, n_in, n_out, nthreads);
        if (rc != 0) return rc;
    }
    return 0;
}

/* 1 when this build used the AVX2 path (reported in logs and benchmarks). */
int rwkv_int8_gemm_simd(void) {
#if defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}
