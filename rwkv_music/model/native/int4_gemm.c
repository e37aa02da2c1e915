/* Group-wise int4 weight-only matrix products on the CPU (rwkv_music.model.quant, Int4Matrix).
 *
 *   y[b, o] = sum_g ( scale[o, g] * sum_{i in g} x[b, i] * code[o, i]  +  zmin[g, o] * sum_{i in g} x[b, i] )
 *
 * q: [n_out, n_pad / 2] bytes, n_pad = n_in rounded up to 32, two 4-bit codes (0..15) a byte.  Within
 * each block of 32 inputs, byte j holds input j in its low nibble and input j + 16 in its high nibble,
 * so one 16-byte load widened to 16 int16 lanes gives inputs 0..15 (& 0xF) and 16..31 (>> 4) in
 * order, with no shuffles.  Groups of `group` inputs (a multiple of 32; the last may be shorter) have
 * an fp32 scale and an fp32 minimum: w = zmin + scale * code.  scale is [n_out, ng] (read along with
 * the codes of a row); zmin is stored transposed, [ng, n_out], so its term is a vectorised pass over
 * the output rows of a block rather than a short scalar chain per row.  Padding codes are 0 and
 * meet zero activations, so they add nothing.
 *
 * As in int8_gemm.c, each activation row is rounded to int16 with its own scale (relative error
 * ~1.5e-5): the code x activation products run in AVX2 integer lanes (vpmaddwd, or AVX512-VNNI's
 * vpdpwssd), each group's int32 sums are turned to float once and scaled, accumulating in fp32.
 * Decode at batch 1 reads every weight once per token, so 4-bit codes halve the bytes of int8.
 * At batch 1 two rows go together (shared activation loads, independent chains), and even and odd
 * groups use separate fp32 accumulators so the per-group fma latency is not the bound.
 * Measured on the shared 2-core AMD Zen 4 this was written on (one thread, [20096, 768] matrices):
 * ~31 G weights/s from cache, ~22 G weights/s streamed from memory, where int8_gemm.c streams ~18 G
 * weights/s and is bound by memory: this kernel is bound by its arithmetic, not yet by the bytes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef I4_PREFETCH_AHEAD
#define I4_PREFETCH_AHEAD 2048 /* bytes of each row's code stream requested ahead of use (tuned: 1-4 KB) */
#endif
#define I4_BTILE 4             /* rows of x per pass over a weight row (batch > 1) */
#define I4_RBLOCK 16           /* output rows per thread block */

/* int8_gemm.c: x [nb, n_in] -> x16 [nb, ld] int16 with one scale per row */
void rwkv_quantize_rows16(const float* x, int16_t* x16, float* xs, int64_t nb, int64_t n_in, int64_t ld);

/* x [nb, n_in] float -> x16 [nb, n_pad] (zero padded), row scales xs [nb], group sums xg [nb, ng]
 * of the rounded activations (xs * sum x16), so the zmin term matches the integer products. */
static void i4_prepare_rows(const float* x, int16_t* x16, float* xs, float* xg, int64_t nb, int64_t n_in,
                            int64_t n_pad, int64_t group, int64_t ng) {
    rwkv_quantize_rows16(x, x16, xs, nb, n_in, n_pad); /* the same rounding as int8_gemm.c */
    for (int64_t b = 0; b < nb; b++) {
        const int16_t* ob = x16 + b * n_pad;
        const float s = xs[b];
        for (int64_t g = 0; g < ng; g++) {
            int64_t i0 = g * group, i1 = i0 + group < n_pad ? i0 + group : n_pad, t = 0;
            for (int64_t i = i0; i < i1; i++) t += ob[i];
            xg[b * ng + g] = (float)t * s;
        }
    }
}

/* y[b, o] = sum_g zmin[g, o] * xg[b, g] for the rows [o0, o1) (contiguous in o: vectorises) */
static void i4_zmin_term(const float* zmin, const float* xg, float* y, int64_t nb, int64_t ng, int64_t n_out,
                         int64_t o0, int64_t o1) {
    for (int64_t b = 0; b < nb; b++) {
        float* yb = y + b * n_out;
        for (int64_t o = o0; o < o1; o++) yb[o] = 0.f;
        for (int64_t g = 0; g < ng; g++) {
            const float xv = xg[b * ng + g];
            const float* zg = zmin + g * n_out;
            for (int64_t o = o0; o < o1; o++) yb[o] += zg[o] * xv;
        }
    }
}

#if defined(__AVX2__)
static inline float i4_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 i4_madd_ps(__m256 a, __m256 b, __m256 c) {
#if defined(__FMA__)
    return _mm256_fmadd_ps(a, b, c);
#else
    return _mm256_add_ps(_mm256_mul_ps(a, b), c);
#endif
}

/* acc + the pairwise products of 16 int16 lanes (exact: each lane of one group sums at most
 * group / 8 products <= 32767 * 15, so group <= 4096 stays below 2^31) */
static inline __m256i i4_dot16(__m256i acc, __m256i w, __m256i x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, w, x);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x));
#endif
}

/* int32 lane sums of one group (nblk blocks of 32 inputs) of rows a and b against one x row */
static inline __attribute__((always_inline)) void i4_group2(const uint8_t* qa, const uint8_t* qb, const int16_t* x,
                                                            int nblk, __m256i* da, __m256i* db) {
    const __m256i mask = _mm256_set1_epi16(15);
    __m256i a = _mm256_setzero_si256(), a2 = a, b = a, b2 = a; /* two chains a row: low and high nibbles */
    for (int k = 0; k < nblk; k++) {
        __m256i x0 = _mm256_loadu_si256((const __m256i*)(x + 32 * k));
        __m256i x1 = _mm256_loadu_si256((const __m256i*)(x + 32 * k + 16));
        __m256i wa = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(qa + 16 * k)));
        __m256i wb = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(qb + 16 * k)));
        a = i4_dot16(a, _mm256_and_si256(wa, mask), x0);
        a2 = i4_dot16(a2, _mm256_srli_epi16(wa, 4), x1);
        b = i4_dot16(b, _mm256_and_si256(wb, mask), x0);
        b2 = i4_dot16(b2, _mm256_srli_epi16(wb, 4), x1);
    }
    *da = _mm256_add_epi32(a, a2);
    *db = _mm256_add_epi32(b, b2);
}

/* Groups [g0, g1) of rows a and b, every group nblk blocks (inlined with nblk a constant); even and
 * odd groups go to separate fp32 accumulators (one chained fma a group would bound the loop by
 * its latency). */
static inline __attribute__((always_inline)) void i4_pair_groups(const int16_t* x16, int64_t group, int64_t ng,
                                                                 int64_t g0, int64_t g1, int nblk, const uint8_t* qa,
                                                                 const uint8_t* qb, const float* sa, __m256* f) {
    const float* sb = sa + ng;
    __m256i da, db;
    for (int64_t g = g0; g < g1; g++) {
        const int64_t i0 = g * group;
        if (((i0 / 2) & 63) < (group / 2)) { /* once per 64-byte line of each row */
            _mm_prefetch((const char*)(qa + i0 / 2 + I4_PREFETCH_AHEAD), _MM_HINT_T0);
            _mm_prefetch((const char*)(qb + i0 / 2 + I4_PREFETCH_AHEAD), _MM_HINT_T0);
        }
        i4_group2(qa + i0 / 2, qb + i0 / 2, x16 + i0, nblk, &da, &db);
        const int odd = (int)(g & 1);
        f[odd] = i4_madd_ps(_mm256_cvtepi32_ps(da), _mm256_set1_ps(sa[g]), f[odd]);
        f[2 + odd] = i4_madd_ps(_mm256_cvtepi32_ps(db), _mm256_set1_ps(sb[g]), f[2 + odd]);
    }
}

/* The decode case: one x row against rows o and o + 1 (q and q + row_bytes; scales s = scale + o * ng);
 * adds into y[0], y[1].  The x loads and the per-row costs are shared by the two rows. */
static void i4_rows_decode(const int16_t* x16, float xs, int64_t n_pad, int64_t group, int64_t ng, const uint8_t* q,
                           int64_t row_bytes, const float* s, float* y) {
    __m256 f[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const uint8_t* qb = q + row_bytes;
    const int64_t full = n_pad / group; /* groups of `group` inputs; a shorter last one after them */
    if (group == 64)
        i4_pair_groups(x16, group, ng, 0, full, 2, q, qb, s, f);
    else if (group == 128)
        i4_pair_groups(x16, group, ng, 0, full, 4, q, qb, s, f);
    else
        i4_pair_groups(x16, group, ng, 0, full, (int)(group / 32), q, qb, s, f);
    if (full < ng)
        i4_pair_groups(x16, group, ng, full, ng, (int)((n_pad - full * group) / 32), q, qb, s, f);
    y[0] += i4_hsum_ps(_mm256_add_ps(f[0], f[1])) * xs;
    y[1] += i4_hsum_ps(_mm256_add_ps(f[2], f[3])) * xs;
}
#endif

/* the codes of a 32-input block times x16, exactly (portable path) */
static inline int32_t i4_block_scalar(const uint8_t* qb, const int16_t* xb) {
    int32_t t = 0;
    for (int j = 0; j < 16; j++) t += (int32_t)(qb[j] & 15) * xb[j] + (int32_t)(qb[j] >> 4) * xb[j + 16];
    return t;
}

/* rows [0, nt) of x (nt <= I4_BTILE, stride n_pad) against weight row qr; adds into y[t * n_out] */
static void i4_row(const int16_t* x16, const float* xs, int64_t nt, int64_t n_pad, int64_t group, int64_t ng,
                   const uint8_t* qr, const float* sr, float* y, int64_t n_out) {
#if defined(__AVX2__)
    const __m256i mask = _mm256_set1_epi16(15);
    __m256 facc[2][I4_BTILE]; /* even and odd groups, summed as in i4_rows_decode: same numbers at any batch */
    for (int t = 0; t < I4_BTILE; t++) facc[0][t] = facc[1][t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const int64_t i0 = g * group, i1 = i0 + group < n_pad ? i0 + group : n_pad;
        const __m256 sg = _mm256_set1_ps(sr[g]);
        __m256i d[I4_BTILE];
        for (int t = 0; t < I4_BTILE; t++) d[t] = _mm256_setzero_si256();
        for (int64_t i = i0; i < i1; i += 32) {
            __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(qr + i / 2)));
            __m256i lo = _mm256_and_si256(w, mask), hi = _mm256_srli_epi16(w, 4);
            for (int64_t t = 0; t < nt; t++) {
                const int16_t* xb = x16 + t * n_pad + i;
                d[t] = i4_dot16(i4_dot16(d[t], lo, _mm256_loadu_si256((const __m256i*)xb)), hi,
                                _mm256_loadu_si256((const __m256i*)(xb + 16)));
            }
        }
        for (int64_t t = 0; t < nt; t++) facc[g & 1][t] = i4_madd_ps(_mm256_cvtepi32_ps(d[t]), sg, facc[g & 1][t]);
    }
    for (int64_t t = 0; t < nt; t++) y[t * n_out] += i4_hsum_ps(_mm256_add_ps(facc[0][t], facc[1][t])) * xs[t];
#else
    for (int64_t t = 0; t < nt; t++) {
        float acc = 0.f;
        for (int64_t g = 0; g < ng; g++) {
            const int64_t i0 = g * group, i1 = i0 + group < n_pad ? i0 + group : n_pad;
            int32_t d = 0;
            for (int64_t i = i0; i < i1; i += 32) d += i4_block_scalar(qr + i / 2, x16 + t * n_pad + i);
            acc += sr[g] * (float)d;
        }
        y[t * n_out] += acc * xs[t];
    }
#endif
}

/* Returns 0; -1 when a scratch buffer cannot be allocated, -2 for a group size that is not a
 * multiple of 32 in [32, 4096] (y is then left unwritten).
 * scale: [n_out, ng]; zmin: [ng, n_out]; ng = ceil(n_pad / group). */
int rwkv_int4_gemm(const float* x, const uint8_t* q, const float* scale, const float* zmin, float* y,
                   int64_t nb, int64_t n_in, int64_t n_out, int64_t group, int nthreads) {
    if (group <= 0 || group % 32 != 0 || group > 4096) return -2;
    const int64_t n_pad = (n_in + 31) / 32 * 32, ng = (n_pad + group - 1) / group, row_bytes = n_pad / 2;
    int16_t* x16 = (int16_t*)malloc((size_t)(nb * n_pad) * sizeof(int16_t) + 64);
    float* xs = (float*)malloc((size_t)nb * sizeof(float) + 16);
    float* xg = (float*)malloc((size_t)(nb * ng) * sizeof(float) + 16);
    if (!x16 || !xs || !xg) {
        free(x16);
        free(xs);
        free(xg);
        return -1;
    }
    i4_prepare_rows(x, x16, xs, xg, nb, n_in, n_pad, group, ng);
    const int64_t nblocks = (n_out + I4_RBLOCK - 1) / I4_RBLOCK;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t o0 = blk * I4_RBLOCK, o1 = o0 + I4_RBLOCK < n_out ? o0 + I4_RBLOCK : n_out;
        i4_zmin_term(zmin, xg, y, nb, ng, n_out, o0, o1);
        int64_t o = o0;
#if defined(__AVX2__)
        if (nb == 1) /* decode: rows in pairs */
            for (; o + 2 <= o1; o += 2)
                i4_rows_decode(x16, xs[0], n_pad, group, ng, q + o * row_bytes, row_bytes, scale + o * ng, y + o);
#endif
        for (int64_t b = 0; b < nb; b += I4_BTILE) {
            const int64_t nt = nb - b < I4_BTILE ? nb - b : I4_BTILE;
            for (int64_t r = o; r < o1; r++)
                i4_row(x16 + b * n_pad, xs + b, nt, n_pad, group, ng, q + r * row_bytes, scale + r * ng,
                       y + b * n_out + r, n_out);
        }
    }
    free(x16);
    free(xs);
    free(xg);
    return 0;
}
