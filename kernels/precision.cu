// Operand rounding for the precision modes (config key `precision`): conv and GEMM operands are
// rounded to what a tensor core multiplies, then the fp32 kernels run on the rounded copies.
// CPU reference: src/precision.rs (`Precision::round`, the `half` crate for bf16 / fp16).
// Bit manipulation only, so NVRTC needs neither cuda_bf16.h nor cuda_fp16.h.
#include "common.cuh"

// Mirrors ops::autocast::RoundOperandsParams. `mode`: 1 tf32, 2 bf16, 3 fp16 (0 copies).
struct RoundOperandsParams {
    int n;
    int mode;
};

// TF32: 10 mantissa bits, round to nearest with ties away from zero (cvt.rna.tf32.f32);
// infinities and NaN pass through.
__device__ __forceinline__ float round_tf32(float v) {
    const unsigned u = __float_as_uint(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;
    return __uint_as_float((u + 0x1000u) & 0xffffe000u);
}

// bfloat16: the upper 16 bits, round to nearest even; overflow carries into the exponent and
// gives infinity; NaN stays NaN with its quiet bit set (as half::bf16::from_f32).
__device__ __forceinline__ float round_bf16(float v) {
    const unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float((u | 0x00400000u) & 0xffff0000u);
    const unsigned round_bit = 0x8000u;
    const bool up = (u & round_bit) != 0u && (u & (3u * round_bit - 1u)) != 0u;
    return __uint_as_float(((u >> 16) + (up ? 1u : 0u)) << 16);
}

// IEEE half: 10 mantissa bits, round to nearest even, |v| >= 65520 to infinity, subnormals in
// steps of 2^-24 and below 2^-25 to signed zero; NaN keeps its top mantissa bits, quiet
// (as half::f16::from_f32 then back to f32).
__device__ __forceinline__ float round_fp16(float v) {
    const unsigned u = __float_as_uint(v);
    const unsigned sign = u & 0x80000000u;
    const unsigned exp = u & 0x7f800000u;
    const unsigned man = u & 0x007fffffu;
    if (exp == 0x7f800000u) return man == 0u ? v : __uint_as_float((u & 0xffffe000u) | 0x00400000u);
    const int half_exp = int(exp >> 23) - 127 + 15;
    if (half_exp >= 31) return __uint_as_float(sign | 0x7f800000u);
    if (half_exp <= 0) {
        if (14 - half_exp > 24) return __uint_as_float(sign);
        const unsigned full = man | 0x00800000u;
        const int shift = 14 - half_exp;
        unsigned half_man = full >> shift;
        const unsigned round_bit = 1u << (shift - 1);
        if ((full & round_bit) != 0u && (full & (3u * round_bit - 1u)) != 0u) half_man += 1u;
        // half_man <= 1024 steps of 2^-24: exact in f32.
        const float magnitude = float(half_man) * 5.9604644775390625e-8f;
        return __uint_as_float(__float_as_uint(magnitude) | sign);
    }
    const unsigned round_bit = 0x1000u;
    const bool up = (u & round_bit) != 0u && (u & (3u * round_bit - 1u)) != 0u;
    const unsigned r = ((u & 0xffffe000u) + (up ? 0x2000u : 0u));
    // A carry out of the largest half (65504) is infinity.
    if ((r & 0x7fffffffu) >= 0x47800000u) return __uint_as_float(sign | 0x7f800000u);
    return __uint_as_float(r);
}

// y = x rounded as `p.mode` says.
extern "C" __global__ void round_operands_f32(const float* x, float* y, RoundOperandsParams p) {
    GRID_STRIDE(i, p.n) {
        const float v = x[i];
        y[i] = p.mode == 1 ? round_tf32(v) : p.mode == 2 ? round_bf16(v) : p.mode == 3 ? round_fp16(v) : v;
    }
}
