/* The host (numpy) state of OccurrencePenalty (rwkv_music/sampling/penalties.py), in C: the two steps
 * that touch every column some row has seen, which the numpy path does with gathers and scatters of
 * [B, columns] blocks (or, once the columns are many, a pass over the whole [B, cap] float64 map).
 *
 * Only the columns in `cols` (ascending ids some row has seen, every id below the row length) hold
 * counts: the others are 0 in every row, and 0 * decay is 0, so skipping them changes nothing.  The
 * arithmetic is the numpy path's, operation for operation, in the same types: float64 counts, a
 * float64 penalty subtracted from the float32 score in float64 and rounded back to float32.
 */
#include <stdint.h>

/* scores [B, V] float32 (row stride V), occ [B, occ_stride] float64, seen [B, occ_stride] bool:
 * scores[r, c] -= frequency * occ[r, c] (+ presence * seen[r, c] when presence != 0) for c in cols. */
void rwkv_occ_penalize(float* scores, int64_t B, int64_t V, const double* occ, const uint8_t* seen,
                       int64_t occ_stride, const int64_t* cols, int64_t n_cols, double frequency,
                       double presence) {
    for (int64_t r = 0; r < B; r++) {
        float* s = scores + r * V;
        const double* o = occ + r * occ_stride;
        const uint8_t* z = seen + r * occ_stride;
        if (presence != 0.0) {
            for (int64_t j = 0; j < n_cols; j++) {
                const int64_t c = cols[j];
                const double penalty = frequency * o[c] + presence * (double)(z[c] != 0);
                s[c] = (float)((double)s[c] - penalty);
            }
        } else {
            for (int64_t j = 0; j < n_cols; j++) {
                const int64_t c = cols[j];
                s[c] = (float)((double)s[c] - frequency * o[c]);
            }
        }
    }
}

/* One step of the map: every count in cols times decay (skipped when decay is 1), then
 * occ[r, tokens[r]] += weights[tokens[r]] and seen[r, tokens[r]] = 1.  tokens[r] < occ_stride. */
void rwkv_occ_update(double* occ, uint8_t* seen, int64_t B, int64_t occ_stride, const int64_t* cols,
                     int64_t n_cols, double decay, const int64_t* tokens, const double* weights) {
    for (int64_t r = 0; r < B; r++) {
        double* o = occ + r * occ_stride;
        if (decay != 1.0)
            for (int64_t j = 0; j < n_cols; j++) o[cols[j]] *= decay;
        o[tokens[r]] += weights[tokens[r]];
        seen[r * occ_stride + tokens[r]] = 1;
    }
}
