// softmax(x / T) and log_softmax(x / T) over the last dimension, one block per row (grid-stride
// over rows). CPU reference: src/ops/softmax.rs.
#include "common.cuh"
#include "softmax_rows.cuh"

// Mirrors ops::softmax::SoftmaxParams.
struct SoftmaxParams {
    int rows;
    int cols;
    float temperature;
};

extern "C" __global__ void softmax_forward_f32(const float* x, float* y, SoftmaxParams p) {
    __shared__ float scratch[32];
    for (int row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const float* xr = x + (long long)row * p.cols;
        float* yr = y + (long long)row * p.cols;
        float m, s;
        row_softmax_stats(xr, p.cols, p.temperature, scratch, &m, &s);
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x) yr[j] = expf(xr[j] / p.temperature - m) / s;
    }
}

extern "C" __global__ void log_softmax_forward_f32(const float* x, float* y, SoftmaxParams p) {
    __shared__ float scratch[32];
    for (int row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const float* xr = x + (long long)row * p.cols;
        float* yr = y + (long long)row * p.cols;
        float m, s;
        row_softmax_stats(xr, p.cols, p.temperature, scratch, &m, &s);
        const float log_s = logf(s);
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x) yr[j] = (xr[j] / p.temperature - m) - log_s;
    }
}

// y = softmax output: dx = y * (dy - sum(dy * y)) / T
extern "C" __global__ void softmax_backward_f32(const float* y, const float* dy, float* dx, SoftmaxParams p) {
    __shared__ float scratch[32];
    for (int row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const long long off = (long long)row * p.cols;
        float d = 0.0f;
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x) d += dy[off + j] * y[off + j];
        d = block_sum(d, scratch);
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x)
            dx[off + j] = y[off + j] * (dy[off + j] - d) / p.temperature;
    }
}

// y = log_softmax output: dx = (dy - exp(y) * sum(dy)) / T
extern "C" __global__ void log_softmax_backward_f32(const float* y, const float* dy, float* dx, SoftmaxParams p) {
    __shared__ float scratch[32];
    for (int row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const long long off = (long long)row * p.cols;
        float s = 0.0f;
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x) s += dy[off + j];
        s = block_sum(s, scratch);
        for (int j = threadIdx.x; j < p.cols; j += blockDim.x)
            dx[off + j] = (dy[off + j] - expf(y[off + j]) * s) / p.temperature;
    }
}
