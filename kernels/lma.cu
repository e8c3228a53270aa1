// LMA, Light Multi-segment Activation (SPEC-NOTES §6). CPU reference: src/ops/lma.rs.
// Batch mean and unbiased std over ALL elements in double (two passes, deterministic partial sums),
// running statistics updated on every call, then a piecewise-linear map whose K segments follow the
// statistics. Parameter gradients are per-segment sums: per-block partials in double (each thread
// owns a column of shared memory, so no atomics), added in a fixed order by sum_partials_f64.
#include "common.cuh"
#include "partials.cuh"

// Mirrors ops::lma::LmaParams. blocks: first-pass blocks of the statistics kernels.
struct LmaParams {
    int n;
    int bins;
    int train;
    int blocks;
    double mu;
};

// Double arithmetic that must not be contracted into FMAs (the segment index depends on it).
#ifdef LIT_EMU
#define LMA_DADD(a, b) ((a) + (b))
#define LMA_DMUL(a, b) ((a) * (b))
#else
#define LMA_DADD(a, b) __dadd_rn((a), (b))
#define LMA_DMUL(a, b) __dmul_rn((a), (b))
#endif

// stats layout (doubles): [0] batch mean, [1] batch std, [2] m, [3] 3*s, [4] step = 6*s/K.
#define LMA_STATS 5

// partial[block] = sum of x over this block's grid-stride slice
extern "C" __global__ void lma_sum_partial_f32(const float* x, double* partial, LmaParams p) {
    __shared__ double scratch[PARTIAL_THREADS];
    double mine = 0.0;
    GRID_STRIDE(i, p.n) { mine += (double)x[i]; }
    const double total = block_sum_f64(mine, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// One thread: stats[0] = mean (partials added in block order).
extern "C" __global__ void lma_mean_finish(const double* partial, double* stats, LmaParams p) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double acc = 0.0;
        for (int k = 0; k < p.blocks; k++) acc += partial[k];
        stats[0] = acc / (double)p.n;
    }
}

// partial[block] = sum of (x - mean)^2 over this block's slice (second pass of a two-pass variance)
extern "C" __global__ void lma_sqdev_partial_f32(const float* x, const double* stats, double* partial, LmaParams p) {
    __shared__ double scratch[PARTIAL_THREADS];
    const double mean = stats[0];
    double mine = 0.0;
    GRID_STRIDE(i, p.n) {
        const double d = (double)x[i] - mean;
        mine += d * d;
    }
    const double total = block_sum_f64(mine, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// One thread: unbiased std, running statistics (mv <- mv*mu + batch*(1-mu)), the (m, s) the map uses
// (batch statistics in train mode, the UPDATED running ones in eval mode), and the f32 outputs.
extern "C" __global__ void lma_stats_finish(const double* partial, double* stats, const float* mv_mean,
                                            const float* mv_std, float* batch_mean_out, float* batch_std_out,
                                            float* mv_mean_out, float* mv_std_out, LmaParams p) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double acc = 0.0;
    for (int k = 0; k < p.blocks; k++) acc += partial[k];
    const double mean = stats[0];
    const double sd = sqrt(acc / (double)(p.n - 1));
    const double keep = 1.0 - p.mu;
    const double new_mean = LMA_DADD(LMA_DMUL((double)mv_mean[0], p.mu), LMA_DMUL(mean, keep));
    const double new_std = LMA_DADD(LMA_DMUL((double)mv_std[0], p.mu), LMA_DMUL(sd, keep));
    const double m = p.train ? mean : new_mean;
    const double s = p.train ? sd : new_std;
    stats[1] = sd;
    stats[2] = m;
    stats[3] = LMA_DMUL(3.0, s);
    stats[4] = LMA_DMUL(6.0, s) / (double)p.bins;
    *batch_mean_out = (float)mean;
    *batch_std_out = (float)sd;
    *mv_mean_out = (float)new_mean;
    *mv_std_out = (float)new_std;
}

// Initial slope of segment k: 0 for the lower half of the segments, 1 for the upper half.
static __device__ inline float lma_init_alpha(int k, int bins) { return k < bins / 2 ? 0.0f : 1.0f; }

// t = ((x - m) + 3*s) / step in double, idx = clamp(trunc(t), 0, K-1) (NaN -> 0);
// y = (alphas[idx] + init_alpha[idx]) * x + betas[idx].
extern "C" __global__ void lma_forward_f32(const float* x, const float* alphas, const float* betas,
                                           const double* stats, float* y, int* idx, LmaParams p) {
    const double m = stats[2], three_s = stats[3], step = stats[4];
    GRID_STRIDE(i, p.n) {
        const float v = x[i];
        const double t = LMA_DADD((double)v - m, three_s) / step;
        int k;
        if (!(t > 0.0)) k = 0;
        else if (t >= (double)(p.bins - 1)) k = p.bins - 1;
        else k = (int)t;
        idx[i] = k;
        y[i] = (alphas[k] + lma_init_alpha(k, p.bins)) * v + betas[k];
    }
}

// dx = dy * (alphas[idx] + init_alpha[idx])
extern "C" __global__ void lma_backward_x_f32(const float* alphas, const int* idx, const float* dy, float* dx,
                                              LmaParams p) {
    GRID_STRIDE(i, p.n) {
        const int k = idx[i];
        dx[i] = dy[i] * (alphas[k] + lma_init_alpha(k, p.bins));
    }
}

// pa[block, k] = sum over this block's slice with idx == k of dy*x; pb[block, k] the same of dy.
// Dynamic shared memory: 2 * bins * blockDim.x doubles; thread t owns column t of each [bins, blockDim]
// table, then each segment's row is tree-summed. blockDim.x a power of two.
extern "C" __global__ void lma_params_partial_f32(const float* x, const int* idx, const float* dy, double* pa,
                                                  double* pb, LmaParams p) {
    DYN_SMEM(double, table);
    double* ta = table;
    double* tb = table + p.bins * blockDim.x;
    for (int k = 0; k < p.bins; k++) {
        ta[k * blockDim.x + threadIdx.x] = 0.0;
        tb[k * blockDim.x + threadIdx.x] = 0.0;
    }
    GRID_STRIDE(i, p.n) {
        const int k = idx[i];
        const double g = (double)dy[i];
        ta[k * blockDim.x + threadIdx.x] += g * (double)x[i];
        tb[k * blockDim.x + threadIdx.x] += g;
    }
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) {
            for (int k = 0; k < p.bins; k++) {
                ta[k * blockDim.x + threadIdx.x] += ta[k * blockDim.x + threadIdx.x + stride];
                tb[k * blockDim.x + threadIdx.x] += tb[k * blockDim.x + threadIdx.x + stride];
            }
        }
        __syncthreads();
    }
    for (int k = threadIdx.x; k < p.bins; k += blockDim.x) {
        pa[(long long)blockIdx.x * p.bins + k] = ta[k * blockDim.x];
        pb[(long long)blockIdx.x * p.bins + k] = tb[k * blockDim.x];
    }
}
