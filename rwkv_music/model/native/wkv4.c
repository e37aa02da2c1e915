/* RWKV-4 WKV for one token, fused (rwkv_music/model/v4.py, _wkv_step and the receptance gate;
 * docs/formats.md A7 v4 steps 3-4).  Everything float32, [B, A] vectors, one pass:
 *
 *   ww = first + k;  p = max(pp, ww);  e1 = exp(pp - p);  e2 = exp(ww - p)
 *   out = σ(r) · (e1 aa + e2 v) / (e1 bb + e2)
 *   ww = decay + pp;  p' = max(ww, k);  e1 = exp(ww - p');  e2 = exp(k - p')
 *   aa' = e1 aa + e2 v;  bb' = e1 bb + e2;  pp' = p'
 *
 * ``decay`` is -exp(time_decay) and ``first`` is time_first, per channel [A].  Each channel's
 * inputs are read before its outputs are written, so aa_out, bb_out, pp_out may be aa, bb, pp
 * (v45_decode.c's in-place step); out may not alias r, k or v.
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

/* RWKV-4 WKV over T tokens (prefill), the same steps as above without the gate, in one call
 * (rwkv_music/model/v4.py _wkv_scan).  k, v, out: [B, T, A]; aa/bb/pp in and *_out: [B, A].  Blocks of
 * WKV4_BLOCK channels of one row run on one thread each; inside a block the loop over channels is
 * contiguous (vectorisable) and the loop over time is sequential.  The outputs may not alias the inputs.
 */
#define WKV4_BLOCK 64

void rwkv4_wkv_prefill(int64_t B, int64_t T, int64_t A, const float* k, const float* v, const float* aa,
                       const float* bb, const float* pp, const float* decay, const float* first, float* out,
                       float* aa_out, float* bb_out, float* pp_out, int threads) {
    const int64_t nblk = (A + WKV4_BLOCK - 1) / WKV4_BLOCK;
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static) if (threads > 1)
    for (int64_t job = 0; job < B * nblk; job++) {
        const int64_t b = job / nblk, c0 = (job % nblk) * WKV4_BLOCK;
        const int64_t n = (A - c0) < WKV4_BLOCK ? (A - c0) : WKV4_BLOCK;
        float sa[WKV4_BLOCK], sb[WKV4_BLOCK], sp[WKV4_BLOCK];
        for (int64_t i = 0; i < n; i++) {
            sa[i] = aa[b * A + c0 + i];
            sb[i] = bb[b * A + c0 + i];
            sp[i] = pp[b * A + c0 + i];
        }
        for (int64_t t = 0; t < T; t++) {
            const int64_t row = (b * T + t) * A + c0;
            for (int64_t i = 0; i < n; i++) {
                /* of exp(x - max(x, y)) and exp(y - max(x, y)) one is exactly 1: one expf per pair */
                const float kn = k[row + i], vn = v[row + i], p0 = sp[i];
                const float ww = first[c0 + i] + kn;
                float ed = expf(-fabsf(p0 - ww));
                float e1 = p0 > ww ? 1.f : ed, e2 = p0 > ww ? ed : 1.f;
                out[row + i] = (e1 * sa[i] + e2 * vn) / (e1 * sb[i] + e2);
                const float wd = decay[c0 + i] + p0;
                ed = expf(-fabsf(wd - kn));
                e1 = wd > kn ? 1.f : ed;
                e2 = wd > kn ? ed : 1.f;
                sa[i] = e1 * sa[i] + e2 * vn;
                sb[i] = e1 * sb[i] + e2;
                sp[i] = wd > kn ? wd : kn;
            }
        }
        for (int64_t i = 0; i < n; i++) {
            aa_out[b * A + c0 + i] = sa[i];
            bb_out[b * A + c0 + i] = sb[i];
            pp_out[b * A + c0 + i] = sp[i];
        }
    }
}
