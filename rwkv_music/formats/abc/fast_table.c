/* AbcConstraint's batch step over its grammar table (rwkv_music/formats/abc/constraint.py), in C.
 *
 * The table is data: legal[i, b] (uint8 [n_states, 128]) says byte b may follow state i, trans[i, b] (int32)
 * is the successor's index (-1 illegal, -2 not computed yet), body[i] whether state i is in the tune body.
 * The numpy path gathers these for the "free" rows (not ended, not forced along a completion, not watched
 * near the token cap) in some twenty array calls a step, ~1.5 us each at B=32, as much as the rest of the
 * constraint.  These two functions do the free rows' part in one call each; the rows they flag are the
 * caller's (its per-row Python, as before), so the results are the numpy path's exactly.
 */
#include <math.h>
#include <stdint.h>

#define ABC_VOCAB 128
#define ABC_UNKNOWN (-2)

/* Whether a row is "planned" (its mask is not its state's table row): ended, forced, or, with a token cap
 * (max_new >= 0), outside the body, with no zone yet, or within its zone of the cap. */
static inline int planned_row(int64_t r, const int64_t* ids, const uint8_t* is_forced, const int64_t* zones,
                              const int64_t* counts, int64_t max_new, const uint8_t* body) {
    if (ids[r] < 0 || is_forced[r]) return 1;
    if (max_new < 0) return 0;
    return !body[ids[r]] || zones[r] < 0 || max_new - counts[r] <= zones[r];
}

/* scores [B, V] float32.  Writes planned[r] and active[r] (some finite score) for every row, and masks the
 * active free rows: -inf where the state's table row says illegal, and at every id >= 128. */
void rwkv_abc_mask(float* scores, int64_t B, int64_t V, const int64_t* ids, const uint8_t* is_forced,
                   const int64_t* zones, const int64_t* counts, int64_t max_new, const uint8_t* body,
                   const uint8_t* legal, uint8_t* planned, uint8_t* active) {
    const int64_t width = V < ABC_VOCAB ? V : ABC_VOCAB;
    for (int64_t r = 0; r < B; r++) {
        float* s = scores + r * V;
        int any = 0;
        for (int64_t c = 0; c < V; c++) any |= isfinite(s[c]) != 0;
        active[r] = (uint8_t)any;
        planned[r] = (uint8_t)planned_row(r, ids, is_forced, zones, counts, max_new, body);
        if (!any || planned[r]) continue;
        const uint8_t* ok = legal + ids[r] * ABC_VOCAB;
        for (int64_t c = 0; c < width; c++)
            if (!ok[c]) s[c] = -INFINITY;
        for (int64_t c = width; c < V; c++) s[c] = -INFINITY;
    }
}

/* The free rows' move: rows with ids >= 0, a token that is not the pad id and not planned[r].  First every
 * free row's token is checked against the table (returns -(r + 1) for the first illegal one, nothing moved);
 * then each moves to trans[ids, t] (eos: ids -1), its count goes up, and with a cap near[r] is set where the
 * cap is within its zone or the successor is outside the body.  slow[r] is set for the rows the caller moves
 * itself: planned live rows, and free rows whose transition is not computed yet.  Returns the moves made
 * into a state (not eos). */
int64_t rwkv_abc_move(int64_t B, const int64_t* toks, int64_t* ids, int64_t* counts, const uint8_t* planned,
                      const int32_t* trans, const uint8_t* legal, const uint8_t* body, const int64_t* zones,
                      int64_t max_new, int64_t eos, int64_t pad, uint8_t* slow, uint8_t* near) {
    for (int64_t r = 0; r < B; r++) {
        if (ids[r] < 0 || toks[r] == pad || planned[r]) continue;
        const int64_t t = toks[r];
        if (t < 0 || t >= ABC_VOCAB || !legal[ids[r] * ABC_VOCAB + t]) return -(r + 1);
    }
    int64_t hits = 0;
    for (int64_t r = 0; r < B; r++) {
        slow[r] = near[r] = 0;
        if (ids[r] < 0 || toks[r] == pad) continue;
        if (planned[r]) {
            slow[r] = 1;
            continue;
        }
        const int64_t t = toks[r];
        const int ends = t == eos;
        const int64_t nxt = ends ? -1 : (int64_t)trans[ids[r] * ABC_VOCAB + t];
        if (!ends && nxt == ABC_UNKNOWN) {
            slow[r] = 1;
            continue;
        }
        counts[r] += 1;
        ids[r] = nxt;
        if (ends) continue;
        hits++;
        if (max_new >= 0 && (max_new - counts[r] <= zones[r] || !body[nxt])) near[r] = 1;
    }
    return hits;
}
