/* The rows' counter-based uniforms (rwkv_music/sampling/sampler.py, counter_uniforms), in C: at B=32 the
 * numpy version's fifteen array calls on 32 values cost ~25 us a step, as much as a 128-id model's draw.
 * The same 32-bit hash, operation for operation: out[r] = the uniform of row key keys[r] at draw counters[r]. */
#include <stdint.h>

static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

void rwkv_row_uniforms(const uint64_t* keys, const int64_t* counters, int64_t B, double* out) {
    for (int64_t r = 0; r < B; r++) {
        const uint64_t c = (uint64_t)counters[r];
        const uint32_t inner = mix32((uint32_t)c ^ mix32((uint32_t)(c >> 32) ^ 0x85EBCA6Bu));
        const uint32_t h1 = mix32((uint32_t)keys[r] ^ inner);
        const uint32_t h2 = mix32(h1 ^ 0x27D4EB2Fu);
        const uint64_t bits = (uint64_t)(h1 >> 5) * 67108864u + (h2 >> 6);
        out[r] = (double)bits / 9007199254740992.0;
    }
}
