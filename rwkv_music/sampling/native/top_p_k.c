/* Top-p then top-k candidates of each row of a float32 score matrix, for the host decode loop
 * (rwkv_music.sampling.native, behind TopP(top_k_after=k).candidates).
 *
 * The rule is the numpy path's (rwkv_music/sampling/processors.py, TopP._score_cut): per row, the
 * k largest scores top[0..k-1] (descending, ties kept as values), smax = top[0], the softmax total
 * T = sum exp(s - smax) over the whole row in float64, then the first j with
 * sum_{i<=j} exp(top[i] - smax) / T >= top_p gives the cut top[j] (top[k-1] when none does); the
 * survivors are every score >= cut, in column order.  Summing 20,096 exponentials per row is the
 * cost, so the exponential here is a polynomial in AVX2 lanes (Cephes' expf coefficients, within
 * 2 ulp of float32 exp) and rows run on OpenMP threads; each row is computed alone, so a row's
 * result does not depend on the batch or the thread count.  The total differs from numpy's
 * float32 exp + pairwise float64 sum only in the last bits, which moves a cut only where a
 * cumulative probability lies within ~1e-7 of top_p.
 *
 * Three passes over a row: (1) the top k (values and columns) against a running threshold, and
 * a check for NaN / +inf (such rows are the caller's: it cleans them and takes the numpy path);
 * (2) the total; (3) only when the cut is the k-th value, the columns tied with it past the
 * first k (otherwise every survivor is already among the top k).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TOPPK_SIMD 1
#else
#define TOPPK_SIMD 0
#endif

#define TOPPK_MAX_K 256
#define EXP_FLOOR -87.0f /* below this exp(x) is under float32's normal range: counted as 0 */

int rwkv_top_p_k_simd(void) { return TOPPK_SIMD; }

/* exp(x) for x <= 0: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by Cephes' degree-6 polynomial. */
static inline float exp_nonpos(float x) {
    if (!(x >= EXP_FLOOR)) return 0.0f; /* also -inf */
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return ldexpf(p, (int)n);
}

#if TOPPK_SIMD
/* exp_nonpos on 8 lanes, inputs clamped to EXP_FLOOR (so -inf gives ~1.6e-38, not 0: 20,096 of them
 * add 3e-34 to a total of at least 1). */
static inline __m256 exp_nonpos8(__m256 x) {
    __m256 xc = _mm256_max_ps(x, _mm256_set1_ps(EXP_FLOOR));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

/* Insert (v, col) into the descending top list of k entries (v > top[k-1]); returns the new k-th. */
static inline float insert_top(float* top, int64_t* cols, int64_t k, float v, int64_t col) {
    int64_t j = k - 1;
    while (j > 0 && top[j - 1] < v) {
        top[j] = top[j - 1];
        cols[j] = cols[j - 1];
        j--;
    }
    top[j] = v;
    cols[j] = col;
    return top[k - 1];
}

static int cmp_i64(const void* a, const void* b) {
    int64_t x = *(const int64_t*)a, y = *(const int64_t*)b;
    return (x > y) - (x < y);
}

/* One row; returns 0, -1 (NaN or +inf in the row) or -2 (more than cap survivors). */
static int one_row(const float* x, int64_t V, int64_t k, double top_p, int64_t cap, int64_t* ids, float* vals,
                   int64_t* count) {
    float top[TOPPK_MAX_K];
    int64_t cols[TOPPK_MAX_K];
    for (int64_t j = 0; j < k; j++) {
        top[j] = -INFINITY;
        cols[j] = -1;
    }
    float thr = -INFINITY;
    int64_t i = 0;
    int bad = 0;
#if TOPPK_SIMD
    {
        __m256 badv = _mm256_setzero_ps();
        const __m256 inf = _mm256_set1_ps(INFINITY);
        for (; i + 8 <= V; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            badv = _mm256_or_ps(badv, _mm256_or_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), _mm256_cmp_ps(v, inf, _CMP_EQ_OQ)));
            int mask = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(thr), _CMP_GT_OQ));
            while (mask) {
                int l = __builtin_ctz(mask);
                mask &= mask - 1;
                if (x[i + l] > thr) thr = insert_top(top, cols, k, x[i + l], i + l);
            }
        }
        bad = _mm256_movemask_ps(badv) != 0;
    }
#endif
    for (; i < V; i++) {
        float v = x[i];
        bad |= (v != v) || v == INFINITY;
        if (v > thr) thr = insert_top(top, cols, k, v, i);
    }
    if (bad) return -1;

    float smax = top[0] > -INFINITY ? top[0] : 0.0f;
    double total = 0.0;
    i = 0;
#if TOPPK_SIMD
    { /* float lanes over blocks of 256 scores (error ~1e-7 of the total), the blocks added in double */
        const __m256 m = _mm256_set1_ps(smax), floor_v = _mm256_set1_ps(EXP_FLOOR);
        for (; i + 256 <= V; i += 256) {
            __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
            for (int64_t j = i; j < i + 256; j += 16) {
                __m256 u = _mm256_sub_ps(_mm256_loadu_ps(x + j), m), w = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), m);
                /* 16 scores under the floor (masked: -inf) add nothing: skip their exponentials */
                if (_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(u, floor_v, _CMP_GE_OQ), _mm256_cmp_ps(w, floor_v, _CMP_GE_OQ))) == 0)
                    continue;
                a = _mm256_add_ps(a, exp_nonpos8(u));
                b = _mm256_add_ps(b, exp_nonpos8(w));
            }
            float lanes[8];
            _mm256_storeu_ps(lanes, _mm256_add_ps(a, b));
            total += (double)(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])));
        }
        for (; i + 8 <= V; i += 8) {
            float lanes[8];
            _mm256_storeu_ps(lanes, exp_nonpos8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m)));
            for (int l = 0; l < 8; l++) total += (double)lanes[l];
        }
    }
#endif
    for (; i < V; i++) total += (double)exp_nonpos(x[i] - smax);
    if (!(total > 0.0)) total = 1.0;

    int64_t first = k - 1;
    double cum = 0.0;
    for (int64_t j = 0; j < k; j++) {
        cum += exp((double)top[j] - (double)smax) / total;
        if (cum >= top_p) {
            first = j;
            break;
        }
    }
    float cut = top[first];
    int64_t n = 0;
    if (cut > top[k - 1]) { /* (then cut is finite and first < k - 1) */
        /* every score >= cut is among the first k (a score left out is <= top[k-1] < cut) */
        for (int64_t j = 0; j < k && top[j] >= cut; j++) {
            if (n == cap) return -2;
            ids[n++] = cols[j];
        }
        qsort(ids, (size_t)n, sizeof(int64_t), cmp_i64);
    } else {
        /* (cut -inf: a row of fewer than k finite scores keeps them all) */
        i = 0;
#if TOPPK_SIMD
        const __m256 c = _mm256_set1_ps(cut), ninf = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= V; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            int mask = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(v, c, _CMP_GE_OQ), _mm256_cmp_ps(v, ninf, _CMP_GT_OQ)));
            while (mask) {
                if (n == cap) return -2;
                ids[n++] = i + __builtin_ctz(mask);
                mask &= mask - 1;
            }
        }
#endif
        for (; i < V; i++) {
            if (x[i] >= cut && x[i] > -INFINITY) {
                if (n == cap) return -2;
                ids[n++] = i;
            }
        }
    }
    for (int64_t j = 0; j < n; j++) vals[j] = x[ids[j]];
    for (int64_t j = n; j < cap; j++) {
        ids[j] = 0;
        vals[j] = -INFINITY;
    }
    *count = n;
    return 0;
}

/* x [B, V] float32 row-major; ids [B, cap] int64, vals [B, cap] float32, counts [B] int64 out.
 * Returns 0, -1 (some row has NaN or +inf), -2 (some row has more than cap survivors) or -3 (k out
 * of range); on a nonzero return the outputs are not to be used. */
int rwkv_top_p_k(const float* x, int64_t B, int64_t V, int64_t k, double top_p, int64_t cap, int64_t* ids,
                 float* vals, int64_t* counts, int nthreads) {
    if (k < 1 || k > TOPPK_MAX_K || k > V) return -3;
    int status = 0;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(min : status)
#endif
    for (int64_t b = 0; b < B; b++) {
        int s = one_row(x + b * V, V, k, top_p, cap, ids + b * cap, vals + b * cap, counts + b);
        status = s < status ? s : status;
    }
    (void)nthreads;
    return status;
}

/* One row's draw from its survivors ids/vals [n] (column order): drop those below log_min_p + the row's
 * maximum (MinP; -inf: off), then the inverse CDF over exp(v - max) in float64 with the uniform u:
 * the first position whose cumulative sum exceeds u * total (the last with p > 0 when u * total rounds
 * up to the total).  The same operations in the same order as the numpy draw
 * (rwkv_music/sampling/sampler.py, _draw_candidates, after MinP.apply on the candidates). */
static int64_t draw_row(const int64_t* ids, const float* vals, int64_t n, double log_min_p, double u) {
    if (n == 0) return -1;
    float vmax = vals[0];
    for (int64_t j = 1; j < n; j++) vmax = vals[j] > vmax ? vals[j] : vmax;
    const double keep_from = (double)vmax + log_min_p;
    double cdf[2 * TOPPK_MAX_K];
    double total = 0.0;
    int64_t last = -1;
    for (int64_t j = 0; j < n; j++) {
        double p = (double)vals[j] >= keep_from ? exp((double)vals[j] - (double)vmax) : 0.0;
        if (p > 0.0) last = j;
        total += p;
        cdf[j] = total;
    }
    if (last < 0) return -1;
    const double x = u * total;
    int64_t j = 0;
    for (int64_t i = 0; i < n; i++) j += cdf[i] <= x;
    return ids[j >= n ? last : j];
}

/* rwkv_top_p_k's survivors of each row, drawn from at once: out [B] int64 the drawn ids (-1 for a row
 * left empty), u [B] float64 the rows' uniforms, log_min_p as draw_row.  Same return codes as
 * rwkv_top_p_k (on a nonzero return out is not to be used). */
int rwkv_top_p_k_draw(const float* x, int64_t B, int64_t V, int64_t k, double top_p, double log_min_p,
                      const double* u, int64_t* out, int nthreads) {
    if (k < 1 || k > TOPPK_MAX_K || k > V) return -3;
    const int64_t cap = 2 * TOPPK_MAX_K < V ? 2 * TOPPK_MAX_K : V;
    int status = 0;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(min : status)
#endif
    for (int64_t b = 0; b < B; b++) {
        int64_t ids[2 * TOPPK_MAX_K], count = 0;
        float vals[2 * TOPPK_MAX_K];
        int s = one_row(x + b * V, V, k, top_p, cap, ids, vals, &count);
        if (s == 0) out[b] = draw_row(ids, vals, count, log_min_p, u[b]);
        status = s < status ? s : status;
    }
    (void)nthreads;
    return status;
}
