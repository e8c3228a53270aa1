// BatchNorm over every axis but 1 of x viewed as [outer, channels, inner]. CPU reference:
// src/ops/batchnorm.rs. Statistics kernels run one block per channel (grid.x = channels, blockDim.x
// a power of two <= 256) and accumulate in double through a fixed shared-memory tree: no atomics,
// results depend only on the shape. Variance is two-pass (mean first, then squared deviations).
#include "common.cuh"

// Mirrors ops::batchnorm::BatchNormParams.
struct BatchNormParams {
    int outer;
    int channels;
    int inner;
    float eps;
    float momentum;
    int affine;          // gamma/beta given (else gamma = 1, beta = 0)
    int update_running;  // train forward: write the updated running statistics
};

// Element j of channel c (j in [0, outer*inner)).
__device__ __forceinline__ long long bn_index(const BatchNormParams& p, int c, int j) {
    const int o = j / p.inner, i = j - o * p.inner;
    return ((long long)o * p.channels + c) * p.inner + i;
}

// Block-wide sums of two per-thread values; every thread gets both totals. Every thread must call
// it (it synchronises), and the trailing barrier lets the buffers be reused right away.
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

// Train forward for channel blockIdx.x: batch mean and biased variance, y = (x-mean)*gamma*invstd
// + beta, saved mean/invstd for the backward, and (update_running) the running statistics
// new = (1-m)*old + m*batch with the unbiased variance; block 0 also adds 1 to the batch counter
// when one is given (count_in/count_out non-null).
extern "C" __global__ void batchnorm_forward_train_f32(
    const float* x, const float* gamma, const float* beta, float* y, float* save_mean,
    float* save_invstd, const float* running_mean, const float* running_var, const float* count_in,
    float* new_running_mean, float* new_running_var, float* count_out, BatchNormParams p) {
    __shared__ double sa[256];
    __shared__ double sb[256];
    const int c = blockIdx.x;
    const int n = p.outer * p.inner;
    double sum = 0.0, unused = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) sum += x[bn_index(p, c, j)];
    double total, dummy;
    bn_block_sum2(sa, sb, sum, unused, &total, &dummy);
    const double mean = total / n;
    double sq = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const double d = x[bn_index(p, c, j)] - mean;
        sq += d * d;
    }
    double sq_total;
    bn_block_sum2(sa, sb, sq, unused, &sq_total, &dummy);
    const double var = sq_total / n;
    const float mean_f = (float)mean;
    const float invstd = (float)(1.0 / sqrt(var + (double)p.eps));
    const float scale = p.affine ? gamma[c] * invstd : invstd;
    const float shift = p.affine ? beta[c] : 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const long long k = bn_index(p, c, j);
        y[k] = (x[k] - mean_f) * scale + shift;
    }
    if (threadIdx.x == 0) {
        save_mean[c] = mean_f;
        save_invstd[c] = invstd;
        if (p.update_running) {
            const double m = p.momentum;
            const double unbiased = n > 1 ? var * n / (n - 1) : var;
            new_running_mean[c] = (float)((1.0 - m) * running_mean[c] + m * mean);
            new_running_var[c] = (float)((1.0 - m) * running_var[c] + m * unbiased);
            if (c == 0 && count_in != 0) count_out[0] = count_in[0] + 1.0f;
        }
    }
}

// Eval forward: y = (x - running_mean)*gamma/sqrt(running_var + eps) + beta, elementwise.
extern "C" __global__ void batchnorm_forward_eval_f32(const float* x, const float* gamma,
                                                      const float* beta, const float* running_mean,
                                                      const float* running_var, float* y,
                                                      BatchNormParams p) {
    GRID_STRIDE(k, p.outer * p.channels * p.inner) {
        const int c = (k / p.inner) % p.channels;
        const float invstd = 1.0f / sqrtf(running_var[c] + p.eps);
        const float scale = p.affine ? gamma[c] * invstd : invstd;
        const float shift = p.affine ? beta[c] : 0.0f;
        y[k] = (x[k] - running_mean[c]) * scale + shift;
    }
}

// Backward for channel blockIdx.x, with xhat = (x - mean)*invstd:
// dbeta = sum(g), dgamma = sum(g*xhat), and
//   train (batch statistics): dx = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat));
//   eval (running statistics, constants): dx = gamma*invstd*g.
// `mean`/`invstd` are the saved batch statistics (train) or derived from the running ones (eval).
__device__ void batchnorm_backward(const float* x, const float* dy, const float* gamma,
                                   const float* mean, const float* invstd, float* dx,
                                   float* dgamma, float* dbeta, BatchNormParams p, bool train) {
    __shared__ double sa[256];
    __shared__ double sb[256];
    const int c = blockIdx.x;
    const int n = p.outer * p.inner;
    const float mu = mean[c], is = invstd[c];
    double sg = 0.0, sgx = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const long long k = bn_index(p, c, j);
        const double g = dy[k];
        sg += g;
        sgx += g * (double)((x[k] - mu) * is);
    }
    double sum_g, sum_gx;
    bn_block_sum2(sa, sb, sg, sgx, &sum_g, &sum_gx);
    const float scale = p.affine ? gamma[c] * is : is;
    const float mean_g = train ? (float)(sum_g / n) : 0.0f;
    const float mean_gx = train ? (float)(sum_gx / n) : 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const long long k = bn_index(p, c, j);
        const float xhat = (x[k] - mu) * is;
        dx[k] = scale * (dy[k] - mean_g - xhat * mean_gx);
    }
    if (threadIdx.x == 0) {
        dgamma[c] = (float)sum_gx;
        dbeta[c] = (float)sum_g;
    }
}

extern "C" __global__ void batchnorm_backward_train_f32(const float* x, const float* dy,
                                                        const float* gamma, const float* save_mean,
                                                        const float* save_invstd, float* dx,
                                                        float* dgamma, float* dbeta,
                                                        BatchNormParams p) {
    batchnorm_backward(x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, p, true);
}

extern "C" __global__ void batchnorm_backward_eval_f32(const float* x, const float* dy,
                                                       const float* gamma, const float* mean,
                                                       const float* invstd, float* dx,
                                                       float* dgamma, float* dbeta,
                                                       BatchNormParams p) {
    batchnorm_backward(x, dy, gamma, mean, invstd, dx, dgamma, dbeta, p, false);
}

// invstd[c] = 1/sqrt(var[c] + eps) (the eval backward's per-channel constants).
extern "C" __global__ void batchnorm_invstd_f32(const float* var, float* invstd, BatchNormParams p) {
    GRID_STRIDE(c, p.channels) { invstd[c] = 1.0f / sqrtf(var[c] + p.eps); }
}
