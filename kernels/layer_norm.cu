// The early-OpenNMT LayerNorm (onmt UtilClass.LayerNorm) over the last dimension of [rows, cols]:
// out = a_2 * (z - mean) / (std + eps) + b_2 with the UNBIASED std and eps on the std.
// CPU reference: src/ops/layer_norm.rs. Row statistics: one block per row, f64 tree sums
// (partials.cuh). Parameter gradients: per-chunk column sums in double, then sum_partials_f64
// (partials.cu) in a fixed order — no float atomics.
#include "common.cuh"
#include "partials.cuh"

// Mirrors ops::layer_norm::LayerNormParams. chunk_rows: rows per block row of the parameter
// gradient grid (blockIdx.y = chunk).
struct LayerNormParams {
    int rows;
    int cols;
    float eps;
    int chunk_rows;
};

// Block size: a power of two <= PARTIAL_THREADS. Saves the row mean and unbiased std for the backward.
extern "C" __global__ void layer_norm_onmt_forward_f32(const float* z, const float* a, const float* b, float* out,
                                                       float* save_mean, float* save_std, LayerNormParams p) {
    __shared__ double scratch[PARTIAL_THREADS];
    for (int row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const long long off = (long long)row * p.cols;
        double s = 0.0;
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x) s += (double)z[off + j];
        const float m = (float)(block_sum_f64(s, scratch) / (double)p.cols);
        double q = 0.0;
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x) {
            const double c = (double)(z[off + j] - m);
            q += c * c;
        }
        const float sd = (float)sqrt(block_sum_f64(q, scratch) / (double)(p.cols - 1));
        const float denom = sd + p.eps;
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x)
            out[off + j] = a[j] * (z[off + j] - m) / denom + b[j];
        if (threadIdx.x == 0) {
            save_mean[row] = m;
            save_std[row] = sd;
        }
    }
}

// dz_j = (g_j - mean(g) - c_j * sum(g*c) / (s' * (cols-1) * std)) / s',  g = dy * a_2, c = z - mean,
// s' = std + eps. Block size as the forward.
extern "C" __global__ void layer_norm_onmt_backward_x_f32(const float* z, const float* a, const float* dy,
                                                          const float* save_mean, const float* save_std, float* dz,
                                                          LayerNormParams p) {
    __shared__ double scratch[PARTIAL_THREADS];
    for (int row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const long long off = (long long)row * p.cols;
        const float m = save_mean[row], sd = save_std[row];
        const float denom = sd + p.eps;
        double sg = 0.0, sgc = 0.0;
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x) {
            const double g = (double)(dy[off + j] * a[j]);
            sg += g;
            sgc += g * (double)(z[off + j] - m);
        }
        const double g_mean = block_sum_f64(sg, scratch) / (double)p.cols;
        const double k = block_sum_f64(sgc, scratch) / ((double)denom * (double)(p.cols - 1) * (double)sd);
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x) {
            const double g = (double)(dy[off + j] * a[j]);
            const double c = (double)(z[off + j] - m);
            dz[off + j] = (float)((g - g_mean - c * k) / (double)denom);
        }
    }
}

// da_partial[chunk, j] = sum over the chunk's rows of dy * xhat, db_partial[chunk, j] = sum of dy,
// xhat = (z - mean) / (std + eps) as in the forward. One thread per column, rows in order.
extern "C" __global__ void layer_norm_onmt_params_partial_f32(const float* z, const float* dy,
                                                              const float* save_mean, const float* save_std,
                                                              double* da_partial, double* db_partial,
                                                              LayerNormParams p) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= p.cols) return;
    const int r0 = blockIdx.y * p.chunk_rows;
    const int r1 = min(r0 + p.chunk_rows, p.rows);
    double da = 0.0, db = 0.0;
    for (int r = r0; r < r1; r++) {
        const long long i = (long long)r * p.cols + j;
        const float xhat = (z[i] - save_mean[r]) / (save_std[r] + p.eps);
        da += (double)dy[i] * (double)xhat;
        db += (double)dy[i];
    }
    da_partial[(long long)blockIdx.y * p.cols + j] = da;
    db_partial[(long long)blockIdx.y * p.cols + j] = db;
}
