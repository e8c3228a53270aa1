// Block-wide reductions for the "one block per row" kernels of softmax.cu and loss.cu.
// Block size must be a multiple of 32 (whole warps); `scratch` is a __shared__ float[32] of the caller.
// Include "common.cuh" before this file (NVRTC sources have their project headers inlined one level deep).
#pragma once

#define LIT_FULL_MASK 0xffffffffu

// Every thread of the block gets the sum. The xor butterfly gives every lane bit-identical results
// (a + b == b + a), so the value is the same in every thread and deterministic.
static __device__ inline float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(LIT_FULL_MASK, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();  // scratch may still be read by the previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(LIT_FULL_MASK, v, o);
    return v;
}

static __device__ inline float block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(LIT_FULL_MASK, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : LIT_NEG_INF;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(LIT_FULL_MASK, v, o));
    return v;
}

// max_j(x_j / t) and sum_j exp(x_j / t - max) of one row, in every thread of the block.
static __device__ inline void row_softmax_stats(const float* xr, int cols, float t, float* scratch,
                                                float* row_max, float* row_sum) {
    float m = LIT_NEG_INF;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, xr[j] / t);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += expf(xr[j] / t - m);
    *row_max = m;
    *row_sum = block_sum(s, scratch);
}
