/* MidiConstraint's mask (rwkv_music/formats/midi/constraint.py) in one pass over the scores.
 *
 * The numpy path builds a [B, V] template of NaN (legal) and -inf (illegal), keeps it between steps and
 * applies it with fmin after copying the scores.  At B=32 on the 20,096-id vocabulary rewriting the rows whose
 * flags changed and the two passes cost ~0.4 ms a step, a tenth of the step.  Here each row's rules are
 * worked out from its counters, the row is copied where the output is another array, and its illegal cells
 * are set to -inf: out[r, c] = legal(r, c) ? in[r, c] : -inf, the numpy result exactly (fmin with NaN keeps
 * the score).
 *
 * Vocabulary layout (docs/formats.md): ids below first_wait are the specials (<pad>, <start>, <end>),
 * then n_waits waits t1..tN, then per key (instrument bin x pitch) n_vel cells: the note-off, then the
 * note-ons of the velocity bins.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t vocab, first_wait, n_waits, first_note, n_keys, n_vel;
    int64_t max_note_ticks;  /* -1: no limit on a note's length */
    int64_t max_polyphony;   /* -1: none */
    int64_t target_ticks, min_end, max_end;  /* target_ticks -1: no target length */
    int64_t end_mask;        /* bit i set: id i (< first_wait) ends a piece */
    int64_t use_scale;       /* note-ons of pitched keys only on the row's scale */
    int64_t key_notes;       /* pitched note-ons an "auto" key hears before it settles */
} midi_rules;

/* A row's rules from its counters, as MidiConstraint._row_rules and _limits give them: whether an overdue
 * note forces the row to end it, the longest legal wait (below 1: none), whether notes may start, and
 * whether the piece may end. */
static inline void row_rules(const midi_rules* q, int64_t now, int64_t on, int64_t earliest, int* forced,
                             int64_t* wait, int* can_on, int* end_ok) {
    *forced = 0;
    *wait = q->n_waits;
    if (q->max_note_ticks >= 0 && on > 0) {
        const int64_t longest = now - earliest;
        *forced = longest >= q->max_note_ticks;
        if (q->max_note_ticks - longest < *wait) *wait = q->max_note_ticks - longest;
    }
    *can_on = !*forced;
    *end_ok = on == 0;
    if (q->max_polyphony >= 0) *can_on = *can_on && on < q->max_polyphony;
    if (q->target_ticks >= 0) {
        if (q->max_end - now < *wait) *wait = q->max_end - now;
        *can_on = *can_on && now < q->target_ticks;
        *end_ok = *end_ok && now >= q->min_end;
    }
    if (*forced) *wait = 0;
}

/* Key k of a row: bit 0 set if its note-off is legal (a forced row ends only its overdue notes), bit 1 if
 * its note-ons are. */
static inline int key_flags(const midi_rules* q, int64_t k, int64_t started, int64_t now, int forced, int can_on,
                            const uint8_t* can_start, const uint8_t* pitched, const int64_t* key_pc,
                            const uint8_t* scale) {
    const int sounding = started >= 0;
    const int off_ok = sounding && (!forced || now - started >= q->max_note_ticks);
    const int on_ok = !sounding && can_on && can_start[k] && (!q->use_scale || !pitched[k] || scale[key_pc[k]]);
    return off_ok | (on_ok << 1);
}

/* One row masked in place: legal scores stay as they are, so only the illegal cells are written and no score
 * is read.  Most keys of a row are silent keys whose note-ons are legal, one store (the note-off) each.  (A
 * pass that read every cell and wrote a score or -inf took 0.85 ms for 32 rows, against 0.15 ms.) */
static void mask_row(float* y, const midi_rules* q, int64_t now, int forced, int64_t wait, int can_on, int end_ok,
                     const int64_t* st, const uint8_t* can_start, const uint8_t* pitched, const int64_t* key_pc,
                     const uint8_t* sc) {
    const float no = -INFINITY;
    for (int64_t c = 0; c < q->first_wait; c++)
        if (!(end_ok && c < 63 && ((q->end_mask >> c) & 1))) y[c] = no;
    for (int64_t w = wait < 0 ? 1 : wait + 1; w <= q->n_waits; w++) y[q->first_wait + w - 1] = no;
    const int64_t n_vel = q->n_vel;
    float* yn = y + q->first_note;
    for (int64_t k = 0; k < q->n_keys; k++) {
        const int f = key_flags(q, k, st[k], now, forced, can_on, can_start, pitched, key_pc, sc);
        float* yk = yn + k * n_vel;
        if (!(f & 1)) yk[0] = no;
        if (!(f & 2)) {
            if (n_vel == 12)  /* the real layout: a fixed width */
                for (int v = 1; v < 12; v++) yk[v] = no;
            else
                for (int64_t v = 1; v < n_vel; v++) yk[v] = no;
        }
    }
}

/* in, out [B, vocab] float32 (may be the same array); start [B, n_keys] (tick a sounding note began, -1
 * silent); time, n_sounding, earliest [B]; can_start, pitched, key_pc [n_keys]; scale [B, 12].
 * Returns 0. */
int rwkv_midi_mask(const float* in, float* out, int64_t B, const midi_rules* q, const int64_t* start,
                   const int64_t* time, const int64_t* n_sounding, const int64_t* earliest,
                   const uint8_t* can_start, const uint8_t* pitched, const int64_t* key_pc, const uint8_t* scale) {
    const int64_t n_keys = q->n_keys;
    for (int64_t r = 0; r < B; r++) {
        const float* x = in + r * q->vocab;
        float* y = out + r * q->vocab;
        const int64_t now = time[r];
        int forced, can_on, end_ok;
        int64_t wait;
        row_rules(q, now, n_sounding[r], earliest[r], &forced, &wait, &can_on, &end_ok);
        const int64_t* st = start + r * n_keys;
        const uint8_t* sc = scale + r * 12;
        if (x != y) memcpy(y, x, (size_t)q->vocab * sizeof(float));  /* then as in place */
        mask_row(y, q, now, forced, wait, can_on, end_ok, st, can_start, pitched, key_pc, sc);
    }
    return 0;
}

/* rwkv_midi_mask's rules as flags, for a mask built where the scores are (a GPU): heads [B, first_wait]
 * uint8 (1: the special id is legal), wait [B] (waits t1..t<wait> are legal), keys [B, n_keys] uint8
 * (key_flags).  A byte per key and row instead of the scores both ways.  Returns 0. */
int rwkv_midi_flags(int64_t B, const midi_rules* q, const int64_t* start, const int64_t* time,
                    const int64_t* n_sounding, const int64_t* earliest, const uint8_t* can_start,
                    const uint8_t* pitched, const int64_t* key_pc, const uint8_t* scale, uint8_t* heads,
                    int64_t* wait, uint8_t* keys) {
    for (int64_t r = 0; r < B; r++) {
        const int64_t now = time[r];
        int forced, can_on, end_ok;
        row_rules(q, now, n_sounding[r], earliest[r], &forced, &wait[r], &can_on, &end_ok);
        for (int64_t c = 0; c < q->first_wait; c++)
            heads[r * q->first_wait + c] = (uint8_t)(end_ok && c < 63 && ((q->end_mask >> c) & 1));
        const int64_t* st = start + r * q->n_keys;
        uint8_t* kr = keys + r * q->n_keys;
        for (int64_t k = 0; k < q->n_keys; k++)
            kr[k] = (uint8_t)key_flags(q, k, st[k], now, forced, can_on, can_start, pitched, key_pc, scale + r * 12);
    }
    return 0;
}

/* One constraint's rules and one-row state: a piece of a render's pool, where every piece has its own
 * MidiConstraint (rwkv_music.sampling.decode, _host_rows). */
typedef struct {
    const midi_rules* q;
    const int64_t *start, *time, *n_sounding, *earliest, *key_pc;
    const uint8_t *can_start, *pitched, *scale;
    const int64_t* pc_counts; /* [12] pitched note-ons heard per pitch class while an "auto" key settles */
} midi_piece;

/* in, out [P, vocab]: row r masked by pieces[r], as rwkv_midi_mask does it for a one-row batch; one
 * call a step instead of one a piece.  Returns 0. */
int rwkv_midi_mask_pieces(const float* in, float* out, int64_t P, const midi_piece* const* pieces) {
    for (int64_t r = 0; r < P; r++) {
        const midi_piece* p = pieces[r];
        const int64_t v = p->q->vocab;
        rwkv_midi_mask(in + r * v, out + r * v, 1, p->q, p->start, p->time, p->n_sounding, p->earliest,
                       p->can_start, p->pitched, p->key_pc, p->scale);
    }
    return 0;
}

/* rwkv_midi_flags of a render's pool: row r by pieces[r] (heads [P, first_wait], wait [P], keys [P, n_keys]).
 * Returns 0. */
int rwkv_midi_flags_pieces(int64_t P, const midi_piece* const* pieces, uint8_t* heads, int64_t* wait,
                           uint8_t* keys) {
    for (int64_t r = 0; r < P; r++) {
        const midi_piece* p = pieces[r];
        rwkv_midi_flags(1, p->q, p->start, p->time, p->n_sounding, p->earliest, p->can_start, p->pitched,
                        p->key_pc, p->scale, heads + r * p->q->first_wait, wait + r, keys + r * p->q->n_keys);
    }
    return 0;
}

/* MidiConstraint._advance of an update token for each piece of a render's pool (tokens [P]): waits and
 * notes, and the pitch class of a pitched note-on while the piece's "auto" key is being heard (counting [P]
 * nonzero).  left [P] is set to 1 where the piece is left to the Python code, untouched: an id outside the
 * vocabulary or below the waits (an error, or a new piece), or the note-on that completes the notes an
 * "auto" key hears (the key is chosen in Python); else 0.  Returns 0. */
int rwkv_midi_update_pieces(int64_t P, const midi_piece* const* pieces, const int64_t* tokens,
                            const uint8_t* counting, uint8_t* left) {
    for (int64_t r = 0; r < P; r++) {
        const midi_piece* p = pieces[r];
        const midi_rules* q = p->q;
        const int64_t t = tokens[r];
        left[r] = 1;
        if (t < q->first_wait || t >= q->vocab) continue;
        int64_t* time = (int64_t*)p->time;  /* (the piece's own arrays, writable: see piece_args) */
        if (t < q->first_note) {
            time[0] += t - q->first_wait + 1;
            left[r] = 0;
            continue;
        }
        const int64_t key = (t - q->first_note) / q->n_vel, vel = (t - q->first_note) % q->n_vel;
        if (key >= q->n_keys) continue;
        if (vel && counting[r] && p->pitched[key]) {
            int64_t* heard = (int64_t*)p->pc_counts;
            int64_t total = 0;
            for (int c = 0; c < 12; c++) total += heard[c];
            if (total + 1 >= q->key_notes) continue;  /* it settles the key */
            heard[p->key_pc[key]] += 1;
        }
        int64_t* starts = (int64_t*)p->start;
        int64_t* n_sounding = (int64_t*)p->n_sounding;
        int64_t* earliest = (int64_t*)p->earliest;
        const int64_t was = starts[key], now = vel ? time[0] : -1;
        starts[key] = now;
        if (was < 0) {
            if (now >= 0) {
                n_sounding[0] += 1;
                if (earliest[0] < 0) earliest[0] = now;
            }
        } else {
            if (now < 0) n_sounding[0] -= 1;
            if (was == earliest[0]) {  /* the longest-held note ended or restarted */
                int64_t least = -1;
                if (n_sounding[0])
                    for (int64_t k = 0; k < q->n_keys; k++)
                        if (starts[k] >= 0 && (least < 0 || starts[k] < least)) least = starts[k];
                earliest[0] = least;
            }
        }
        left[r] = 0;
    }
    return 0;
}
