// Polino et al.'s uniform quantizer with buckets (SPEC-NOTES §8). CPU reference:
// src/distill/quantize.rs. Bit-reproducible: every step is one f32 operation in the spec's order
// (the __f*_rn intrinsics keep NVRTC from contracting q*alpha + beta into an FMA), and rintf rounds
// half to even. min/max are exact in any order.
#include "common.cuh"

// Mirrors distill::quantize::QuantParams. The flat input is `rows` buckets of `bucket` elements (the
// last one shorter: its padding would repeat the last element, which changes neither min nor max).
// steps = 2^bits - 1.
struct QuantParams {
    int n;
    int bucket;
    int rows;
    float steps;
};

#define QUANT_THREADS 256

// One block per bucket: beta = min, alpha = max - min (1 if < 1e-10); then per element
// u = (v - beta)/alpha; r = u*steps; level = rint(r); q = level/steps; out = q*alpha + beta.
extern "C" __global__ void quantize_uniform_f32(const float* v, float* out, float* alpha_out, float* beta_out,
                                                int* level_out, QuantParams p) {
    __shared__ float lo[QUANT_THREADS];
    __shared__ float hi[QUANT_THREADS];
    for (int r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const int start = r * p.bucket;
        const int end = min(start + p.bucket, p.n);
        float mn = LIT_POS_INF, mx = LIT_NEG_INF;
        for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
            mn = fminf(mn, v[i]);
            mx = fmaxf(mx, v[i]);
        }
        lo[threadIdx.x] = mn;
        hi[threadIdx.x] = mx;
        __syncthreads();
        for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
            if ((int)threadIdx.x < stride) {
                lo[threadIdx.x] = fminf(lo[threadIdx.x], lo[threadIdx.x + stride]);
                hi[threadIdx.x] = fmaxf(hi[threadIdx.x], hi[threadIdx.x + stride]);
            }
            __syncthreads();
        }
        const float beta = lo[0];
        float alpha = __fsub_rn(hi[0], beta);
        if (alpha < 1e-10f) alpha = 1.0f;
        __syncthreads();  // lo/hi are rewritten by the next bucket
        if (threadIdx.x == 0) {
            alpha_out[r] = alpha;
            beta_out[r] = beta;
        }
        for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
            const float u = __fdiv_rn(__fsub_rn(v[i], beta), alpha);
            const float level = rintf(__fmul_rn(u, p.steps));
            const float q = __fdiv_rn(level, p.steps);
            out[i] = __fadd_rn(__fmul_rn(q, alpha), beta);
            level_out[i] = (int)level;
        }
    }
}
