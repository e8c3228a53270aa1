// Philox4x32-10 (Salmon et al., SC 2011; the constants of Random123 and cuRAND): a counter-based
// generator, a pure function (counter, key) -> 4 random words. The host twin is
// src/rng/philox.rs; both pass Random123's known-answer vectors, so keyed draws are the same bits
// on cpu, emu and cuda. Self-contained (no includes): kernels/*.cu include it after common.cuh.
#pragma once

struct LitPhilox4 {
    unsigned int w[4];
};

// 64-bit product (mul.wide.u32 on the GPU): high and low words.
__device__ __forceinline__ void lit_philox_mulhilo(unsigned int a, unsigned int b, unsigned int* hi,
                                                   unsigned int* lo) {
    unsigned long long p = (unsigned long long)a * (unsigned long long)b;
    *hi = (unsigned int)(p >> 32);
    *lo = (unsigned int)p;
}

// Four random words of counter (c0..c3) under key (k0, k1).
__device__ __forceinline__ LitPhilox4 lit_philox4x32_10(unsigned int c0, unsigned int c1,
                                                        unsigned int c2, unsigned int c3,
                                                        unsigned int k0, unsigned int k1) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const unsigned int W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += W0;
            k1 += W1;
        }
        unsigned int hi0, lo0, hi1, lo1;
        lit_philox_mulhilo(M0, c0, &hi0, &lo0);
        lit_philox_mulhilo(M1, c2, &hi1, &lo1);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    LitPhilox4 out;
    out.w[0] = c0;
    out.w[1] = c1;
    out.w[2] = c2;
    out.w[3] = c3;
    return out;
}
