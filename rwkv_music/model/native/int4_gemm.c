/* Group-wise int4 weight-only matrix products on the CPU (rwkv_music.model.quant, Int4Matrix).
 *
 *   y[b, o] = sum_g ( scale[o, g] * sum_{i in g} x[b, i] * code[o, i]  +  zmin[o, g] * sum_{i in g} x[b, i] )
 *
 * q: [n_out, n_pad / 2] bytes, n_pad = n_in rounded up to 32, two 4-bit codes (0..15) a byte.  Within
 * each block of 32 inputs, byte j holds input j in its low nibble and input j + 16 in its high nibble.
 * Groups of `group` inputs (a multiple of 32; the last may be shorter) have an fp32 scale and an fp32
 * minimum: w = zmin + scale * code.  scale and zmin are both [n_out, ng], so a row's codes, scales
 * and minimums are three forward streams (a transposed zmin, read 16 rows at a time, cost 10 % of the
 * time in cache and more from memory).  Padding codes are 0 and meet zero activations.
 *
 * As in int8_gemm.c, each activation row is rounded to int16 with its own scale (relative error
 * ~1.5e-5); every group's code x activation sum is an exact int32, turned to float once and scaled,
 * accumulating in fp32; the zmin term uses the group sums of the same int16 activations.  Where the
 * compiler targets AVX512-VNNI or AVX-VNNI, decode (batch 1) runs on vpdpbusd over byte planes of the
 * activations (i4v_group2; with AVX512, groups of 64 in pairs: i4z_group_pair); else on AVX2's
 * vpmaddwd over zero-extended codes (i4_group2); else a plain C loop.  All of them give the same
 * integer sums.  At batch 1 two rows go together (shared activation loads, independent chains), and
 * even and odd groups use separate fp32 accumulators.
 *
 * Measured on the shared 2-core AMD EPYC (Zen 4, AVX512-VNNI) this was tuned on, one thread, B = 1,
 * process CPU time, against int8_gemm.c in the same run: ~32-38 G weights/s from cache (int8: ~30-34),
 * 27-32 G weights/s streamed from memory (int8: 18-22).  What it took, from ~30 / ~15: the running
 * fp32 sums indexed by a constant (f[g & 1] kept them in memory), zmin stored like scale (a
 * transposed zmin read 16 rows at a time was 10 % of the time), and prefetching whole row pairs
 * ahead (per-row prefetches left the first KB of each pair of 3072-input rows unrequested).
 * The VNNI decode is bound by issuing instructions, not by memory: one accumulator per row and
 * byte plane instead of one per block (2026-12-06, two adds fewer a row and group) took it to
 * 43-59 G weights/s from cache and 39-49 streamed (int8 in the same run: 36-46 and 27-30); groups
 * of 64 two at a time in 512-bit registers where the build has AVX512 (i4z_group_pair, the same
 * numbers) to 44-65 and 45-53 (int8: 33-43 and 27-28).  Tried and slower: the zmin terms as one
 * vectorized dot product after the groups (the scalar FMAs in the group loop overlap with the
 * integer work; the dot product after it does not).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef I4_PREFETCH_AHEAD
#define I4_PREFETCH_AHEAD 4096 /* code bytes requested ahead of use, in whole row pairs (2-16 KB tried: 2-4 best) */
#endif
#define I4_BTILE 4             /* rows of x per pass over a weight row (batch > 1) */
#define I4_RBLOCK 16           /* output rows per thread block */
#if defined(__FMA__) /* one rounding of the zmin terms on every path, whatever the compiler contracts */
#define I4_FMAF(a, b, c) fmaf(a, b, c)
#else
#define I4_FMAF(a, b, c) ((a) * (b) + (c))
#endif

/* int8_gemm.c: x [nb, n_in] -> x16 [nb, ld] int16 with one scale per row */
void rwkv_quantize_rows16(const float* x, int16_t* x16, float* xs, int64_t nb, int64_t n_in, int64_t ld);

/* x [nb, n_in] float -> x16 [nb, n_pad] (zero padded), row scales xs [nb], and the group sums of the
 * int16 values xg [nb, ng] (in float: exact for groups of up to 512 inputs, rounded by 6e-8 beyond). */
static void i4_prepare_rows(const float* x, int16_t* x16, float* xs, float* xg, int64_t nb, int64_t n_in,
                            int64_t n_pad, int64_t group, int64_t ng) {
    rwkv_quantize_rows16(x, x16, xs, nb, n_in, n_pad); /* the same rounding as int8_gemm.c */
    for (int64_t b = 0; b < nb; b++) {
        const int16_t* ob = x16 + b * n_pad;
        for (int64_t g = 0; g < ng; g++) {
            int64_t i0 = g * group, i1 = i0 + group < n_pad ? i0 + group : n_pad, t = 0;
            for (int64_t i = i0; i < i1; i++) t += ob[i];
            xg[b * ng + g] = (float)t;
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

#endif

#if defined(__AVX2__) && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
#define I4_VNNI 1
/* Decode with VNNI's vpdpbusd (32 u8 x s8 products a call, 4 summed into each int32 lane): the int16
 * activation v splits exactly into a signed high byte and an unsigned low byte, v = 256 * hi + lo, so
 * sum code * v = 256 * sum code * hi + sum lo * code, each a vpdpbusd with the codes (0..15) as the
 * unsigned operand of the first and the signed one of the second.  The integer sums are the very
 * ones of i4_group2 (same numbers as the AVX2 and portable paths) with no widening of the codes:
 * a 32-byte load of two blocks, masked and shifted, feeds four vpdpbusd a row, where i4_group2
 * needs two zero-extensions, four mask/shift steps and four vpdpwssd.  The activation bytes are laid
 * out per pair of blocks in the order the nibbles come (i4_split_planes). */
static inline __m256i i4_dpbusd(__m256i acc, __m256i u8, __m256i s8) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u8, s8);
#else
    return _mm256_dpbusd_avx_epi32(acc, u8, s8);
#endif
}

/* x16 [n_pad] -> lo (u8) and hi (s8) byte planes, permuted within each group: for blocks k, k + 1
 * (inputs 32k..32k+63 of the group) the order is inputs 0-15, 32-47 (the low nibbles of a 32-byte
 * code load) then 16-31, 48-63 (the high nibbles); an odd last block of a group stays in order. */
static void i4_split_planes(const int16_t* x16, uint8_t* lo, int8_t* hi, int64_t n_pad, int64_t group) {
    for (int64_t i0 = 0; i0 < n_pad; i0 += group) {
        const int64_t nblk = ((i0 + group < n_pad ? i0 + group : n_pad) - i0) / 32;
        for (int64_t k = 0; k < nblk; k += 2) {
            const int64_t b = i0 + 32 * k;
            for (int j = 0; j < (k + 1 < nblk ? 64 : 32); j++) {
                const int src = k + 1 < nblk ? (j < 16 ? j : j < 32 ? j + 16 : j < 48 ? j - 16 : j) : j;
                const int16_t v = x16[b + src];
                lo[b + j] = (uint8_t)(v & 0xff);
                hi[b + j] = (int8_t)(v >> 8); /* arithmetic shift: v = 256 * hi + lo */
            }
        }
    }
}

/* int32 lane sums of one group (nblk blocks) of rows a and b against the byte planes of one x row */
static inline __attribute__((always_inline)) void i4v_group2(const uint8_t* qa, const uint8_t* qb, const uint8_t* xl,
                                                             const int8_t* xh, int nblk, __m256i* da, __m256i* db) {
    const __m256i m = _mm256_set1_epi8(15);
    /* one accumulator per row and byte plane: the two blocks of a code load chain into it (the
     * other row and plane give four independent chains; an accumulator per block cost two more adds
     * a row and group, in a kernel bound by vector ALU operations) */
    __m256i ha = _mm256_setzero_si256(), la = ha, hb = ha, lb = ha;
    int k = 0;
    for (; k + 2 <= nblk; k += 2) {
        const __m256i xl0 = _mm256_loadu_si256((const __m256i*)(xl + 32 * k));
        const __m256i xl1 = _mm256_loadu_si256((const __m256i*)(xl + 32 * k + 32));
        const __m256i xh0 = _mm256_loadu_si256((const __m256i*)(xh + 32 * k));
        const __m256i xh1 = _mm256_loadu_si256((const __m256i*)(xh + 32 * k + 32));
        const __m256i wa = _mm256_loadu_si256((const __m256i*)(qa + 16 * k));
        const __m256i wb = _mm256_loadu_si256((const __m256i*)(qb + 16 * k));
        const __m256i a0 = _mm256_and_si256(wa, m), a1 = _mm256_and_si256(_mm256_srli_epi16(wa, 4), m);
        const __m256i b0 = _mm256_and_si256(wb, m), b1 = _mm256_and_si256(_mm256_srli_epi16(wb, 4), m);
        ha = i4_dpbusd(i4_dpbusd(ha, a0, xh0), a1, xh1);
        la = i4_dpbusd(i4_dpbusd(la, xl0, a0), xl1, a1);
        hb = i4_dpbusd(i4_dpbusd(hb, b0, xh0), b1, xh1);
        lb = i4_dpbusd(i4_dpbusd(lb, xl0, b0), xl1, b1);
    }
    if (k < nblk) { /* one block of 16 bytes: low nibbles then high nibbles, inputs in order */
        const __m128i m16 = _mm_set1_epi8(15);
        const __m128i wa = _mm_loadu_si128((const __m128i*)(qa + 16 * k));
        const __m128i wb = _mm_loadu_si128((const __m128i*)(qb + 16 * k));
        const __m256i a = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(wa, 4), m16), _mm_and_si128(wa, m16));
        const __m256i b = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(wb, 4), m16), _mm_and_si128(wb, m16));
        const __m256i x0 = _mm256_loadu_si256((const __m256i*)(xl + 32 * k));
        const __m256i x1 = _mm256_loadu_si256((const __m256i*)(xh + 32 * k));
        ha = i4_dpbusd(ha, a, x1);
        la = i4_dpbusd(la, x0, a);
        hb = i4_dpbusd(hb, b, x1);
        lb = i4_dpbusd(lb, x0, b);
    }
    /* exact in int32: per group a lane holds at most group / 4 products (<= 1024 * 15 * 255) */
    *da = _mm256_add_epi32(_mm256_slli_epi32(ha, 8), la);
    *db = _mm256_add_epi32(_mm256_slli_epi32(hb, 8), lb);
}


#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__)
#define I4_ZMM 1
/* Groups of 64 two at a time in 512-bit registers: lanes 0-7 hold group g's int32 sums as i4v_group2
 * makes them, lanes 8-15 group g + 1's, so the fp32 updates of each half are those of the even and
 * odd accumulators of the 256-bit path, in the same order (the same numbers).  Half the instructions
 * per weight; the 256-bit path was bound by issuing them.  The activation planes of each pair of
 * groups are laid out for it by i4_pair_planes. */
static inline __attribute__((always_inline)) void i4z_group_pair(const uint8_t* qa, const uint8_t* qb,
                                                                 const uint8_t* xl, const int8_t* xh, __m512i* da,
                                                                 __m512i* db) {
    const __m512i m = _mm512_set1_epi8(15);
    const __m512i xl0 = _mm512_loadu_si512((const void*)xl), xl1 = _mm512_loadu_si512((const void*)(xl + 64));
    const __m512i xh0 = _mm512_loadu_si512((const void*)xh), xh1 = _mm512_loadu_si512((const void*)(xh + 64));
    const __m512i wa = _mm512_loadu_si512((const void*)qa), wb = _mm512_loadu_si512((const void*)qb);
    const __m512i a0 = _mm512_and_si512(wa, m), a1 = _mm512_and_si512(_mm512_srli_epi16(wa, 4), m);
    const __m512i b0 = _mm512_and_si512(wb, m), b1 = _mm512_and_si512(_mm512_srli_epi16(wb, 4), m);
    const __m512i z = _mm512_setzero_si512();
    const __m512i ha = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, a0, xh0), a1, xh1);
    const __m512i la = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, xl0, a0), xl1, a1);
    const __m512i hb = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, b0, xh0), b1, xh1);
    const __m512i lb = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, xl0, b0), xl1, b1);
    *da = _mm512_add_epi32(_mm512_slli_epi32(ha, 8), la);
    *db = _mm512_add_epi32(_mm512_slli_epi32(hb, 8), lb);
}

/* For groups of 64: within each pair of whole groups, the planes' 32-byte quarters [g.0 g.1 g'.0 g'.1]
 * (as i4_split_planes writes them: the low-nibble half then the high-nibble half of a group) become
 * [g.0 g'.0 g.1 g'.1], so one 64-byte load gives both groups' halves; a last odd group stays put. */
static void i4_pair_planes(uint8_t* plane, int64_t n_pad) {
    for (int64_t i0 = 0; i0 + 128 <= n_pad; i0 += 128) {
        uint8_t t[32];
        memcpy(t, plane + i0 + 32, 32);
        memcpy(plane + i0 + 32, plane + i0 + 64, 32);
        memcpy(plane + i0 + 64, t, 32);
    }
}
#endif
#endif

/* the activations of one row as the decode kernels read them */
typedef struct {
    const int16_t* x16; /* int16 values [n_pad] */
    const uint8_t* lo;  /* VNNI builds: their low bytes [n_pad] (i4_split_planes) */
    const int8_t* hi;   /* and their high bytes */
    const float* xg;    /* group sums [ng] */
} i4_xrow;

#if defined(__AVX2__)
/* Groups [g0, g1) of rows a and b (codes qa, qa + row_bytes; scales sa, sa + ng; minimums za, za + ng),
 * every group nblk blocks (inlined with nblk a constant); even and odd groups go to separate fp32
 * accumulators, with fixed indices so they stay in registers. */
static inline __attribute__((always_inline)) void i4_pair_groups(const i4_xrow* x, int64_t group, int64_t ng,
                                                                 int64_t g0, int64_t g1, int nblk, const uint8_t* qa,
                                                                 const uint8_t* qb, const float* sa, const float* za,
                                                                 const uint8_t* pf, __m256* f, float* z) {
    const float *sb = sa + ng, *zb = za + ng, *xg = x->xg;
    __m256i da, db;
    for (int64_t g = g0; g < g1; g++) {
        const int64_t i0 = g * group;
        /* the pair reads 2 * row_bytes contiguous bytes while i0 / 2 runs over row_bytes: request a row pair
         * some pairs ahead at twice the pace, so every line of it is asked for once and in time */
        for (int64_t c = 0; c < group; c += 64) _mm_prefetch((const char*)(pf + i0 + c), _MM_HINT_T0);
#if defined(I4_VNNI)
        i4v_group2(qa + i0 / 2, qb + i0 / 2, x->lo + i0, x->hi + i0, nblk, &da, &db);
#else
        i4_group2(qa + i0 / 2, qb + i0 / 2, x->x16 + i0, nblk, &da, &db);
#endif
        const float xv = xg[g];
        if (g & 1) { /* by the group's own parity, as i4_row: a row gives the same numbers at any batch */
            f[1] = i4_madd_ps(_mm256_cvtepi32_ps(da), _mm256_set1_ps(sa[g]), f[1]);
            f[3] = i4_madd_ps(_mm256_cvtepi32_ps(db), _mm256_set1_ps(sb[g]), f[3]);
            z[1] = I4_FMAF(za[g], xv, z[1]);
            z[3] = I4_FMAF(zb[g], xv, z[3]);
        } else {
            f[0] = i4_madd_ps(_mm256_cvtepi32_ps(da), _mm256_set1_ps(sa[g]), f[0]);
            f[2] = i4_madd_ps(_mm256_cvtepi32_ps(db), _mm256_set1_ps(sb[g]), f[2]);
            z[0] = I4_FMAF(za[g], xv, z[0]);
            z[2] = I4_FMAF(zb[g], xv, z[2]);
        }
    }
}

/* The decode case: one x row against rows o and o + 1 (q and q + row_bytes; scales s and minimums z of
 * row o); writes y[0], y[1]. */
static void i4_rows_decode(const i4_xrow* x, float xs, int64_t n_pad, int64_t group, int64_t ng, const uint8_t* q,
                           int64_t row_bytes, const float* s, const float* z, float* y) {
    __m256 f[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float zs[4] = {0.f, 0.f, 0.f, 0.f};
    const uint8_t* qb = q + row_bytes;
    const int64_t full = n_pad / group; /* groups of `group` inputs; a shorter last one after them */
    const int64_t pairs_ahead = (I4_PREFETCH_AHEAD + 2 * row_bytes - 1) / (2 * row_bytes);
    const uint8_t* pf = q + pairs_ahead * 2 * row_bytes; /* may pass the end: prefetches do not fault */
    if (group == 64) {
        int64_t g0 = 0;
#if defined(I4_ZMM)
        __m512 fz = _mm512_setzero_ps(), fzb = _mm512_setzero_ps();
        const float* sb = s + ng;
        const float* zb = z + ng;
        for (; g0 + 2 <= full; g0 += 2) {
            const int64_t i0 = g0 * 64;
            _mm_prefetch((const char*)(pf + i0), _MM_HINT_T0);
            _mm_prefetch((const char*)(pf + i0 + 64), _MM_HINT_T0);
            __m512i da, db;
            i4z_group_pair(q + i0 / 2, qb + i0 / 2, x->lo + i0, x->hi + i0, &da, &db);
            const __m512 sa2 = _mm512_insertf32x8(_mm512_set1_ps(s[g0]), _mm256_set1_ps(s[g0 + 1]), 1);
            const __m512 sb2 = _mm512_insertf32x8(_mm512_set1_ps(sb[g0]), _mm256_set1_ps(sb[g0 + 1]), 1);
            fz = _mm512_fmadd_ps(_mm512_cvtepi32_ps(da), sa2, fz);
            fzb = _mm512_fmadd_ps(_mm512_cvtepi32_ps(db), sb2, fzb);
            const float x0 = x->xg[g0], x1 = x->xg[g0 + 1];
            zs[0] = I4_FMAF(z[g0], x0, zs[0]);
            zs[2] = I4_FMAF(zb[g0], x0, zs[2]);
            zs[1] = I4_FMAF(z[g0 + 1], x1, zs[1]);
            zs[3] = I4_FMAF(zb[g0 + 1], x1, zs[3]);
        }
        f[0] = _mm512_castps512_ps256(fz);
        f[1] = _mm512_extractf32x8_ps(fz, 1);
        f[2] = _mm512_castps512_ps256(fzb);
        f[3] = _mm512_extractf32x8_ps(fzb, 1);
#endif
        i4_pair_groups(x, group, ng, g0, full, 2, q, qb, s, z, pf, f, zs);
    }
    else if (group == 32)
        i4_pair_groups(x, group, ng, 0, full, 1, q, qb, s, z, pf, f, zs);
    else if (group == 128)
        i4_pair_groups(x, group, ng, 0, full, 4, q, qb, s, z, pf, f, zs);
    else
        i4_pair_groups(x, group, ng, 0, full, (int)(group / 32), q, qb, s, z, pf, f, zs);
    if (full < ng)
        i4_pair_groups(x, group, ng, full, ng, (int)((n_pad - full * group) / 32), q, qb, s, z, pf, f, zs);
    y[0] = (i4_hsum_ps(_mm256_add_ps(f[0], f[1])) + (zs[0] + zs[1])) * xs;
    y[1] = (i4_hsum_ps(_mm256_add_ps(f[2], f[3])) + (zs[2] + zs[3])) * xs;
}
#endif

/* the codes of a 32-input block times x16, exactly (portable path) */
static inline int32_t i4_block_scalar(const uint8_t* qb, const int16_t* xb) {
    int32_t t = 0;
    for (int j = 0; j < 16; j++) t += (int32_t)(qb[j] & 15) * xb[j] + (int32_t)(qb[j] >> 4) * xb[j + 16];
    return t;
}

/* rows [0, nt) of x (nt <= I4_BTILE, stride n_pad; group sums xg, stride ng) against weight row qr
 * (scales sr, minimums zr); writes y[t * n_out] */
static void i4_row(const int16_t* x16, const float* xs, const float* xg, int64_t nt, int64_t n_pad, int64_t group,
                   int64_t ng, const uint8_t* qr, const float* sr, const float* zr, float* y, int64_t n_out) {
    float zacc[I4_BTILE] = {0.f};
    for (int64_t t = 0; t < nt; t++) { /* even and odd groups apart, summed as in i4_rows_decode */
        float ze = 0.f, zo = 0.f;
        for (int64_t g = 0; g < ng; g++) {
            if (g & 1)
                zo = I4_FMAF(zr[g], xg[t * ng + g], zo);
            else
                ze = I4_FMAF(zr[g], xg[t * ng + g], ze);
        }
        zacc[t] = ze + zo;
    }
#if defined(__AVX2__)
    const __m256i mask = _mm256_set1_epi16(15);
    __m256 facc[2][I4_BTILE]; /* even and odd groups, as in i4_rows_decode */
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
    for (int64_t t = 0; t < nt; t++)
        y[t * n_out] = (i4_hsum_ps(_mm256_add_ps(facc[0][t], facc[1][t])) + zacc[t]) * xs[t];
#else
    for (int64_t t = 0; t < nt; t++) {
        float acc = 0.f;
        for (int64_t g = 0; g < ng; g++) {
            const int64_t i0 = g * group, i1 = i0 + group < n_pad ? i0 + group : n_pad;
            int32_t d = 0;
            for (int64_t i = i0; i < i1; i += 32) d += i4_block_scalar(qr + i / 2, x16 + t * n_pad + i);
            acc += sr[g] * (float)d;
        }
        y[t * n_out] = (acc + zacc[t]) * xs[t];
    }
#endif
}

/* Returns 0; -1 when a scratch buffer cannot be allocated, -2 for a group size that is not a
 * multiple of 32 in [32, 4096] (y is then left unwritten).
 * scale, zmin: [n_out, ng]; ng = ceil(n_pad / group). */
int rwkv_int4_gemm(const float* x, const uint8_t* q, const float* scale, const float* zmin, float* y,
                   int64_t nb, int64_t n_in, int64_t n_out, int64_t group, int nthreads) {
    if (group <= 0 || group % 32 != 0 || group > 4096) return -2;
    const int64_t n_pad = (n_in + 31) / 32 * 32, ng = (n_pad + group - 1) / group, row_bytes = n_pad / 2;
    int16_t* x16 = (int16_t*)malloc((size_t)(nb * n_pad) * sizeof(int16_t) + 64);
    float* xs = (float*)malloc((size_t)nb * sizeof(float) + 16);
    float* xg = (float*)malloc((size_t)(nb * ng) * sizeof(float) + 16);
#if defined(I4_VNNI)
    /* VNNI: every row of x as byte planes, and every batch row through the decode kernel: its int32 lanes
     * hold other partial sums than i4_row's, so one kernel for all rows keeps a row's numbers the same
     * at any batch size (the weights of a row pair are re-read from L1 per batch row) */
    const int64_t n_vec = nb;
#else
    const int64_t n_vec = 1;
#endif
    uint8_t* planes = (uint8_t*)malloc((size_t)(2 * n_pad * n_vec) + 64); /* per row: low bytes, high bytes */
    i4_xrow* xr = (i4_xrow*)malloc((size_t)n_vec * sizeof(i4_xrow));
    if (!x16 || !xs || !xg || !planes || !xr) {
        free(x16);
        free(xs);
        free(xg);
        free(planes);
        free(xr);
        return -1;
    }
    i4_prepare_rows(x, x16, xs, xg, nb, n_in, n_pad, group, ng);
    for (int64_t b = 0; b < n_vec; b++) {
        uint8_t* pb = planes + 2 * n_pad * b;
#if defined(I4_VNNI)
        i4_split_planes(x16 + b * n_pad, pb, (int8_t*)(pb + n_pad), n_pad, group);
#if defined(I4_ZMM)
        if (group == 64) {
            i4_pair_planes(pb, n_pad);
            i4_pair_planes(pb + n_pad, n_pad);
        }
#endif
#endif
        xr[b] = (i4_xrow){x16 + b * n_pad, pb, (const int8_t*)(pb + n_pad), xg + b * ng};
    }
    const int64_t nblocks = (n_out + I4_RBLOCK - 1) / I4_RBLOCK;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t o0 = blk * I4_RBLOCK, o1 = o0 + I4_RBLOCK < n_out ? o0 + I4_RBLOCK : n_out;
        int64_t o = o0;
#if defined(__AVX2__)
        if (nb == n_vec) /* rows in pairs: decode, or any batch on VNNI */
            for (; o + 2 <= o1; o += 2)
                for (int64_t b = 0; b < nb; b++)
                    i4_rows_decode(&xr[b], xs[b], n_pad, group, ng, q + o * row_bytes, row_bytes, scale + o * ng,
                                   zmin + o * ng, y + b * n_out + o);
#endif
        for (int64_t b = 0; b < nb; b += I4_BTILE) {
            const int64_t nt = nb - b < I4_BTILE ? nb - b : I4_BTILE;
            for (int64_t r = o; r < o1; r++)
                i4_row(x16 + b * n_pad, xs + b, xg + b * ng, nt, n_pad, group, ng, q + r * row_bytes, scale + r * ng,
                       zmin + r * ng, y + b * n_out + r, n_out);
        }
    }
    free(x16);
    free(xs);
    free(xg);
    free(planes);
    free(xr);
    return 0;
}

/* A stack of m matrices of one shape (torch.bmm): x [m, nb, n_in] -> y [m, nb, n_out], slice i through
 * q[i], scale[i], zmin[i] (as rwkv_int8_gemm_stack: one call from Python for the whole stack). */
int rwkv_int4_gemm_stack(const float* x, const uint8_t* const* q, const float* const* scale,
                         const float* const* zmin, float* y, int64_t m, int64_t nb, int64_t n_in, int64_t n_out,
                         int64_t group, int nthreads) {
    for (int64_t i = 0; i < m; i++) {
        const int rc = rwkv_int4_gemm(x + i * nb * n_in, q[i], scale[i], zmin[i], y + i * nb * n_out, nb, n_in,
                                      n_out, group, nthreads);
        if (rc != 0) return rc;
    }
    return 0;
}
