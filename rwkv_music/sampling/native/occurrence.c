/* The host (numpy) state of OccurrencePenalty (rwkv_music/sampling/penalties.py), in C: the two steps
 * that touch the ids a row has seen.
 *
 * Each row keeps the list of ids it has seen (lists[r, :counts[r]], in the order they came): only those
 * hold counts (0 * decay is 0), so each step works on a row's own ids, not on the union over the batch
 * that the numpy path gathers and scatters (at B=32 on the 20,096-id MIDI vocabulary the union is ~20
 * times a row's ids after a few hundred steps).  The arithmetic is the numpy path's, operation for
 * operation, in the same types: float64 counts, a float64 penalty subtracted from the float32 score in
 * float64 and rounded back to float32; the order of a row's ids changes nothing (each id is alone).
 */
#include <stdint.h>

/* scores [B, V] float32 (row stride V), occ and seen [B, occ_stride]: for each row r and id c of its list
 * (c < V), scores[r, c] -= frequency * occ[r, c] (+ presence when presence != 0: every listed id is seen). */
void rwkv_occ_penalize_rows(float* scores, int64_t B, int64_t V, const double* occ, int64_t occ_stride,
                            const int64_t* lists, int64_t L, const int64_t* counts, double frequency,
                            double presence) {
    for (int64_t r = 0; r < B; r++) {
        float* s = scores + r * V;
        const double* o = occ + r * occ_stride;
        const int64_t* ids = lists + r * L;
        for (int64_t j = 0; j < counts[r]; j++) {
            const int64_t c = ids[j];
            if (c >= V) continue;
            const double penalty = presence != 0.0 ? frequency * o[c] + presence * 1.0 : frequency * o[c];
            s[c] = (float)((double)s[c] - penalty);
        }
    }
}

/* One step: every count of a row's ids times decay (skipped when decay is 1), then
 * occ[r, tokens[r]] += weights[tokens[r]]; an id seen for the first time is flagged in seen and joins the
 * row's list.  Returns 1, changing nothing, when a row's list is full (the caller grows L and calls again). */
int rwkv_occ_update_rows(double* occ, uint8_t* seen, int64_t B, int64_t occ_stride, int64_t* lists, int64_t L,
                         int64_t* counts, double decay, const int64_t* tokens, const double* weights) {
    for (int64_t r = 0; r < B; r++)
        if (!seen[r * occ_stride + tokens[r]] && counts[r] >= L) return 1;
    for (int64_t r = 0; r < B; r++) {
        double* o = occ + r * occ_stride;
        const int64_t* ids = lists + r * L;
        const int64_t t = tokens[r];
        if (decay != 1.0)
            for (int64_t j = 0; j < counts[r]; j++) o[ids[j]] *= decay;
        o[t] += weights[t];
        if (!seen[r * occ_stride + t]) {
            seen[r * occ_stride + t] = 1;
            lists[r * L + counts[r]++] = t;
        }
    }
    return 0;
}
