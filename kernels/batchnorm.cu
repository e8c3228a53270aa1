// BatchNorm over every axis but 1 of x viewed as [outer, channels, inner]. CPU reference:
// src/ops/batchnorm.rs (launches: the "kernel devices" section there).
//
// Train statistics are multi-block: each channel's outer*inner values are split into `chunks`
// contiguous chunks of `chunk_len` values (the last one shorter); a statistics kernel on a 2-D
// grid (blockIdx.x = channel, blockIdx.y = chunk) reduces one chunk per block in double through a
// fixed shared-memory tree, and the channel's last block to finish (a per-channel counter) combines
// the channel's partials in chunk order; an elementwise kernel over all elements then applies the
// result — two launches a pass. The counter only decides which block combines, never the order of
// the arithmetic: results depend only on the shape and the split. Forward chunks hold (mean, M2) —
// two passes over the chunk, mean then squared deviations from it — combined with Chan's formula;
// backward chunks hold plain sums.
#include "common.cuh"

// Mirrors ops::batchnorm's BatchNormParams. Every kernel takes one struct by value: its pointers
// then these parameters (each struct mirrors the `*Args` struct of the same name there).
struct BatchNormParams {
    int outer;
    int channels;
    int inner;
    float eps;
    float momentum;
    int affine;          // gamma/beta given (else gamma = 1, beta = 0)
    int update_running;  // train forward: write the updated running statistics
    int chunks;          // statistics kernels: chunks per channel (each non-empty)
    int chunk_len;       // values per chunk (the last chunk may be shorter)
    int relu;            // forward: clamp the output at 0 (after the residual, when one is given)
    int train;           // backward: batch statistics (else running statistics, constants)
    int pad;             // keeps the size a multiple of 8: no padding after it in the structs below
};

// Element j of channel c (j in [0, outer*inner)).
__device__ __forceinline__ long long bn_index(const BatchNormParams& p, int c, int j) {
    const int o = j / p.inner, i = j - o * p.inner;
    return ((long long)o * p.channels + c) * p.inner + i;
}

// Channel of element k of x (NCHW-contiguous).
__device__ __forceinline__ int bn_channel(const BatchNormParams& p, int k) {
    return (k / p.inner) % p.channels;
}

// Chunk k of a channel is [bn_chunk_start(k), bn_chunk_end(k)) (written to avoid int overflow).
__device__ __forceinline__ int bn_chunk_start(const BatchNormParams& p, int k) {
    return k * p.chunk_len;
}
__device__ __forceinline__ int bn_chunk_end(const BatchNormParams& p, int k) {
    const int n = p.outer * p.inner, start = k * p.chunk_len;
    return n - start < p.chunk_len ? n : start + p.chunk_len;
}

// Block-wide sums of two per-thread values; every thread gets both totals. Every thread must call
// it (it synchronises), and the trailing barrier lets the buffers be reused right away. blockDim.x
// is a power of two <= 256.
__device__ void bn_block_sum2(double* sa, double* sb, double a, double b, double* ta, double* tb) {
    sa[threadIdx.x] = a;
    sb[threadIdx.x] = b;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            sa[threadIdx.x] += sa[threadIdx.x + stride];
            sb[threadIdx.x] += sb[threadIdx.x + stride];
        }
        __syncthreads();
    }
    *ta = sa[0];
    *tb = sb[0];
    __syncthreads();
}

// The normalising map of element k: (x - mean)*gamma*invstd + beta, then + residual[k] (when
// given), then the clamp at 0 (p.relu) — the CPU's normalize_act_cpu.
__device__ __forceinline__ float bn_apply(const float* x, const float* gamma, const float* beta,
                                          float mean, float invstd, const float* residual,
                                          const BatchNormParams& p, int c, int k) {
    const float scale = p.affine ? gamma[c] * invstd : invstd;
    const float shift = p.affine ? beta[c] : 0.0f;
    float v = (x[k] - mean) * scale + shift;
    if (residual != 0) v += residual[k];
    if (p.relu) v = v > 0.0f ? v : 0.0f;
    return v;
}

// Called by thread 0 of block (c, k) after it wrote its chunk's partial: whether every other
// chunk of channel c is in too, i.e. this block is the channel's last and combines. The fence
// makes this block's partial visible device-wide before the counter says it is there; `done[c]`
// starts at 0 (a zeroed buffer) and ends at `chunks`.
__device__ __forceinline__ bool bn_last_chunk_in(int* done, const BatchNormParams& p, int c) {
    __threadfence();
    const bool last = atomicAdd(&done[c], 1) == p.chunks - 1;
    if (last) __threadfence();  // and the others' partials are read after their counts
    return last;
}

// ---------- train forward: statistics (partial + finalize), apply ----------

// The combination of channel c's chunk partials (mean, M2), in chunk order (Chan et al.: merging
// (na, ma, Ma) with (nb, mb, Mb) gives n = na + nb, m = ma + d*nb/n, M = Ma + Mb + d²*na*nb/n with
// d = mb - ma), into the batch mean and biased variance; writes save_mean, save_invstd and
// (update_running) the running statistics new = (1-m)*old + m*batch with the unbiased variance;
// channel 0 also adds 1 to the batch counter when one is given (count_in/count_out non-null).
// The partials are read through a volatile pointer: other blocks wrote them (no stale L1 copy).
struct StatsArgs {
    const float* x;
    double* partial;
    int* done;
    float* save_mean;
    float* save_invstd;
    const float* running_mean;
    const float* running_var;
    const float* count_in;
    float* new_running_mean;
    float* new_running_var;
    float* count_out;
    BatchNormParams p;
};
__device__ void bn_stats_finalize(const StatsArgs& a, int c) {
    const BatchNormParams p = a.p;
    const int n = p.outer * p.inner;
    const volatile double* part = a.partial + (long long)c * p.chunks * 2;
    double count = 0.0, mean = 0.0, m2 = 0.0;
    for (int k = 0; k < p.chunks; k++) {
        const double nb = (double)(bn_chunk_end(p, k) - bn_chunk_start(p, k));
        const double total = count + nb;
        const double d = part[2 * k] - mean;
        mean += d * (nb / total);
        m2 += part[2 * k + 1] + d * d * (count * nb / total);
        count = total;
    }
    const double var = m2 / n;
    const float mean_f = (float)mean;
    a.save_mean[c] = mean_f;
    a.save_invstd[c] = (float)(1.0 / sqrt(var + (double)p.eps));
    if (p.update_running) {
        const double m = p.momentum;
        const double bessel = n > 1 ? (double)n / (double)(n - 1) : 1.0;
        a.new_running_mean[c] = (float)((1.0 - m) * a.running_mean[c] + m * mean);
        a.new_running_var[c] = (float)((1.0 - m) * a.running_var[c] + m * var * bessel);
        if (c == 0 && a.count_in != 0) a.count_out[0] = a.count_in[0] + 1.0f;
    }
}

// Block (c, k) = (blockIdx.x, blockIdx.y): the mean of chunk k of channel c and M2, the sum of
// squared deviations from that mean, into partial[(c*chunks + k)*2 + {0, 1}]; the channel's last
// block then finalizes it (bn_stats_finalize).
extern "C" __global__ void batchnorm_stats_f32(StatsArgs a) {
    const float* x = a.x;
    const BatchNormParams p = a.p;
    __shared__ double sa[256];
    __shared__ double sb[256];
    const int c = blockIdx.x, k = blockIdx.y;
    const int start = bn_chunk_start(p, k), end = bn_chunk_end(p, k);
    double sum = 0.0, total, unused;
    for (int j = start + threadIdx.x; j < end; j += blockDim.x) sum += x[bn_index(p, c, j)];
    bn_block_sum2(sa, sb, sum, 0.0, &total, &unused);
    const double mean = total / (end - start);
    double sq = 0.0, m2;
    for (int j = start + threadIdx.x; j < end; j += blockDim.x) {
        const double d = x[bn_index(p, c, j)] - mean;
        sq += d * d;
    }
    bn_block_sum2(sa, sb, sq, 0.0, &m2, &unused);
    if (threadIdx.x == 0) {
        double* out = a.partial + ((long long)c * p.chunks + k) * 2;
        out[0] = mean;
        out[1] = m2;
        if (bn_last_chunk_in(a.done, p, c)) bn_stats_finalize(a, c);
    }
}

// y = relu?((x - mean)*gamma*invstd + beta + residual?) elementwise with the saved statistics.
struct ApplyArgs {
    const float* x;
    const float* gamma;
    const float* beta;
    const float* mean;
    const float* invstd;
    const float* residual;
    float* y;
    BatchNormParams p;
};
extern "C" __global__ void batchnorm_apply_f32(ApplyArgs a) {
    const BatchNormParams p = a.p;
    GRID_STRIDE(k, p.outer * p.channels * p.inner) {
        const int c = bn_channel(p, k);
        a.y[k] = bn_apply(a.x, a.gamma, a.beta, a.mean[c], a.invstd[c], a.residual, p, c, k);
    }
}

// Eval forward: bn_apply with invstd = 1/sqrt(running_var + eps), elementwise.
struct EvalArgs {
    const float* x;
    const float* gamma;
    const float* beta;
    const float* running_mean;
    const float* running_var;
    const float* residual;
    float* y;
    BatchNormParams p;
};
extern "C" __global__ void batchnorm_forward_eval_f32(EvalArgs a) {
    const BatchNormParams p = a.p;
    GRID_STRIDE(k, p.outer * p.channels * p.inner) {
        const int c = bn_channel(p, k);
        const float invstd = 1.0f / sqrtf(a.running_var[c] + p.eps);
        a.y[k] = bn_apply(a.x, a.gamma, a.beta, a.running_mean[c], invstd, a.residual, p, c, k);
    }
}

// ---------- backward: sums (partial + finalize), dx ----------
// With xhat = (x - mean)*invstd and g = dy, masked to 0 where relu_out (the output of a fused
// ReLU, when given) is not > 0: dbeta = sum(g), dgamma = sum(g*xhat), and
//   train (batch statistics): dx = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat));
//   eval (running statistics, constants): dx = gamma*invstd*g.
// `mean`/`invstd` are the saved batch statistics (train) or derived from the running ones (eval).

// The gradient a fused ReLU with output relu_out passes on at k (dy itself when there is none).
__device__ __forceinline__ float bn_grad(const float* dy, const float* relu_out, long long k) {
    return relu_out == 0 || relu_out[k] > 0.0f ? dy[k] : 0.0f;
}

// Channel c's chunk sums added in chunk order into dbeta and dgamma, and coef[c] = mean(g),
// coef[channels + c] = mean(g*xhat) for the dx kernel (0 in eval mode). Partials read as in
// bn_stats_finalize.
struct BackwardStatsArgs {
    const float* x;
    const float* dy;
    const float* relu_out;
    const float* mean;
    const float* invstd;
    double* partial;
    int* done;
    float* dgamma;
    float* dbeta;
    float* coef;
    BatchNormParams p;
};
__device__ void bn_backward_finalize(const BackwardStatsArgs& a, int c) {
    const BatchNormParams p = a.p;
    const double n = (double)p.outer * p.inner;
    const volatile double* part = a.partial + (long long)c * p.chunks * 2;
    double sum_g = 0.0, sum_gx = 0.0;
    for (int k = 0; k < p.chunks; k++) {
        sum_g += part[2 * k];
        sum_gx += part[2 * k + 1];
    }
    a.dgamma[c] = (float)sum_gx;
    a.dbeta[c] = (float)sum_g;
    a.coef[c] = p.train ? (float)(sum_g / n) : 0.0f;
    a.coef[p.channels + c] = p.train ? (float)(sum_gx / n) : 0.0f;
}

// Block (c, k) = (blockIdx.x, blockIdx.y): sum(g) and sum(g*xhat) over chunk k of channel c into
// partial[(c*chunks + k)*2 + {0, 1}]; the channel's last block then finalizes it.
extern "C" __global__ void batchnorm_backward_stats_f32(BackwardStatsArgs a) {
    __shared__ double sa[256];
    __shared__ double sb[256];
    const BatchNormParams p = a.p;
    const int c = blockIdx.x, k = blockIdx.y;
    const int start = bn_chunk_start(p, k), end = bn_chunk_end(p, k);
    const float mu = a.mean[c], is = a.invstd[c];
    double sg = 0.0, sgx = 0.0;
    for (int j = start + threadIdx.x; j < end; j += blockDim.x) {
        const long long i = bn_index(p, c, j);
        const double g = bn_grad(a.dy, a.relu_out, i);
        sg += g;
        sgx += g * (double)((a.x[i] - mu) * is);
    }
    double sum_g, sum_gx;
    bn_block_sum2(sa, sb, sg, sgx, &sum_g, &sum_gx);
    if (threadIdx.x == 0) {
        double* out = a.partial + ((long long)c * p.chunks + k) * 2;
        out[0] = sum_g;
        out[1] = sum_gx;
        if (bn_last_chunk_in(a.done, p, c)) bn_backward_finalize(a, c);
    }
}

// dx elementwise (formula above), and dres = g (the gradient of a fused residual) when given.
struct BackwardDxArgs {
    const float* x;
    const float* dy;
    const float* relu_out;
    const float* gamma;
    const float* mean;
    const float* invstd;
    const float* coef;
    float* dx;
    float* dres;
    BatchNormParams p;
};
extern "C" __global__ void batchnorm_backward_dx_f32(BackwardDxArgs a) {
    const BatchNormParams p = a.p;
    GRID_STRIDE(k, p.outer * p.channels * p.inner) {
        const int c = bn_channel(p, k);
        const float g = bn_grad(a.dy, a.relu_out, k);
        if (a.dres != 0) a.dres[k] = g;
        const float is = a.invstd[c];
        const float scale = p.affine ? a.gamma[c] * is : is;
        const float xhat = (a.x[k] - a.mean[c]) * is;
        a.dx[k] = scale * (g - a.coef[c] - xhat * a.coef[p.channels + c]);
    }
}

// invstd[c] = 1/sqrt(var[c] + eps) (the eval backward's per-channel constants).
struct InvstdArgs {
    const float* var;
    float* invstd;
    BatchNormParams p;
};
extern "C" __global__ void batchnorm_invstd_f32(InvstdArgs a) {
    GRID_STRIDE(c, a.p.channels) { a.invstd[c] = 1.0f / sqrtf(a.var[c] + a.p.eps); }
}
