/* RWKV-4 WKV for one token, fused (rwkv_music/model/v4.py, _wkv_step and the receptance gate;
 * docs/formats.md A7 v4 steps 3-4).  Everything float32, [B, A] vectors, one pass:
 *
 *   ww = first + k;  p = max(pp, ww);  e1 = exp(pp - p);  e2 = exp(ww - p)
 *   out = σ(r) · (e1 aa + e2 v) / (e1 bb + e2)
 *   ww = decay + pp;  p' = max(ww, k);  e1 = exp(ww - p');  e2 = exp(k - p')
 *   aa' = e1 aa + e2 v;  bb' = e1 bb + e2;  pp' = p'
 *
 * ``decay`` is -exp(time_decay) and ``first`` is time_first, per channel [A].  The outputs may
 * not alias the inputs.
 */
#include <math.h>
#include <stdint.h>

void rwkv4_wkv_decode(int64_t B, int64_t A, const float* r, const float* k, const float* v, const float* aa,
                      const float* bb, const float* pp, const float* decay, const float* first, float* out,
                      float* aa_out, float* bb_out, float* pp_out) {
    for (int64_t b = 0; b < B; b++) {
        for (int64_t c = 0; c < A; c++) {
            const int64_t n = b * A + c;
            const float kn = k[n], vn = v[n], a = aa[n], bden = bb[n], p0 = pp[n];
            float ww = first[c] + kn;
            float p = p0 > ww ? p0 : ww;
            float e1 = expf(p0 - p), e2 = expf(ww - p);
            out[n] = (e1 * a + e2 * vn) / (e1 * bden + e2) / (1.f + expf(-r[n]));
            ww = decay[c] + p0;
            p = ww > kn ? ww : kn;
            e1 = expf(ww - p);
            e2 = expf(kn - p);
            aa_out[n] = e1 * a + e2 * vn;
            bb_out[n] = e1 * bden + e2;
            pp_out[n] = p;
        }
    }
}
