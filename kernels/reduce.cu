// Channel bias add and reductions. CPU reference: src/ops/reduce.rs.
// Sums use a double accumulator per thread and a fixed shared-memory tree: no float atomics, so a
// result depends only on the shape (reproducible), and f32 rounding does not pile up over long rows.
#include "common.cuh"

// A tensor viewed as [outer, channels, inner] (x [N, C, *rest]: outer = N, inner = prod(rest)).
struct ChannelParams {
    int outer;
    int channels;
    int inner;
};

// n elements; the result is multiplied by scale (1 for a sum, 1/n for a mean).
struct SumParams {
    int n;
    float scale;
};

// y[o, c, i] = x[o, c, i] + b[c]
extern "C" __global__ void add_bias_f32(const float* x, const float* b, float* y, ChannelParams p) {
    GRID_STRIDE(i, p.outer * p.channels * p.inner) { y[i] = x[i] + b[(i / p.inner) % p.channels]; }
}

// y[o, c, i] = b[c]
extern "C" __global__ void broadcast_channels_f32(const float* b, float* y, ChannelParams p) {
    GRID_STRIDE(i, p.outer * p.channels * p.inner) { y[i] = b[(i / p.inner) % p.channels]; }
}

// Sum the per-thread values of a block in shared memory; blockDim.x must be a power of two <= 256.
// Every thread must call it (it synchronises). The total lands in partial[0].
__device__ void block_tree_sum(double* partial, double mine) {
    partial[threadIdx.x] = mine;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
}

// y[c] = sum over o, i of x[o, c, i]. One block per channel (grid.x = channels), blockDim.x a power of two.
extern "C" __global__ void channel_sum_f32(const float* x, float* y, ChannelParams p) {
    __shared__ double partial[256];
    const int c = blockIdx.x;
    const int per_channel = p.outer * p.inner;
    double mine = 0.0;
    for (int j = threadIdx.x; j < per_channel; j += blockDim.x) {
        const int o = j / p.inner, i = j - o * p.inner;
        mine += x[((long long)o * p.channels + c) * p.inner + i];
    }
    block_tree_sum(partial, mine);
    if (threadIdx.x == 0) y[c] = (float)partial[0];
}

// Column sums of x [outer, channels] (inner == 1). Block (32, 8): threadIdx.x picks the column,
// threadIdx.y one of 8 row lanes, so each warp reads 32 consecutive floats of a row.
extern "C" __global__ void column_sum_f32(const float* x, float* y, ChannelParams p) {
    __shared__ double partial[8][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    double mine = 0.0;
    if (c < p.channels) {
        for (int r = threadIdx.y; r < p.outer; r += 8) mine += x[(long long)r * p.channels + c];
    }
    partial[threadIdx.y][threadIdx.x] = mine;
    __syncthreads();
    for (int stride = 4; stride > 0; stride >>= 1) {
        if (threadIdx.y < stride) partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + stride][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && c < p.channels) y[c] = (float)partial[0][threadIdx.x];
}

// out[blockIdx.x] = scale * (sum of x over this block's grid-stride slice). 256 threads per block.
// With one block it is the whole sum; with several, a second launch (one block) sums the partials.
extern "C" __global__ void sum_blocks_f32(const float* x, float* out, SumParams p) {
    __shared__ double partial[256];
    double mine = 0.0;
    GRID_STRIDE(i, p.n) { mine += x[i]; }
    block_tree_sum(partial, mine);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)(partial[0] * (double)p.scale);
}

// y[i] = scale * s[0]   (backward of sum / mean)
extern "C" __global__ void fill_scaled_f32(const float* s, float* y, SumParams p) {
    const float v = s[0] * p.scale;
    GRID_STRIDE(i, p.n) { y[i] = v; }
}
