// Cross-entropy over rows of logits [N, C] with integer labels. CPU reference: src/ops/loss.rs.
#include "common.cuh"
#include "softmax_rows.cuh"

// Mirrors ops::loss::CrossEntropyParams. divisor = N for the mean, 1 for the sum.
struct CrossEntropyParams {
    int rows;
    int cols;
    float divisor;
};

// One block per row: row_lse = log(sum(exp(s))), row_loss = row_lse - s[y]. The host checks labels
// before launching; a label out of range still never indexes memory and yields NaN.
extern "C" __global__ void cross_entropy_rows_f32(const float* logits, const int* labels, float* row_loss,
                                                  float* row_lse, CrossEntropyParams p) {
    __shared__ float scratch[32];
    for (int row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const float* xr = logits + (long long)row * p.cols;
        float m, s;
        row_softmax_stats(xr, p.cols, 1.0f, scratch, &m, &s);
        if (threadIdx.x == 0) {
            const float lse = m + logf(s);
            const int y = labels[row];
            row_lse[row] = lse;
            row_loss[row] = (y >= 0 && y < p.cols) ? lse - xr[y] : __int_as_float(0x7fc00000);
        }
    }
}

// One block of CE_REDUCE_THREADS threads: loss = sum(row_loss) / divisor, summed in f64 in a fixed
// order (deterministic, no atomics).
#define CE_REDUCE_THREADS 256
extern "C" __global__ void cross_entropy_reduce_f32(const float* row_loss, float* loss, CrossEntropyParams p) {
    __shared__ double partial[CE_REDUCE_THREADS];
    const int t = threadIdx.x;
    double acc = 0.0;
    for (int i = t; i < p.rows; i += CE_REDUCE_THREADS) acc += (double)row_loss[i];
    partial[t] = acc;
    __syncthreads();
    for (int half = CE_REDUCE_THREADS / 2; half > 0; half >>= 1) {
        if (t < half) partial[t] += partial[t + half];
        __syncthreads();
    }
    if (t == 0) loss[0] = (float)(partial[0] / (double)p.divisor);
}

// dx = (softmax(s) - onehot(y)) * dloss / divisor, with softmax = exp(s - row_lse).
extern "C" __global__ void cross_entropy_backward_f32(const float* logits, const int* labels, const float* row_lse,
                                                      const float* dloss, float* dx, CrossEntropyParams p) {
    const float g = dloss[0] / p.divisor;
    GRID_STRIDE(i, p.rows * p.cols) {
        const int row = i / p.cols, col = i - row * p.cols;
        const float target = labels[row] == col ? 1.0f : 0.0f;
        dx[i] = (expf(logits[i] - row_lse[row]) - target) * g;
    }
}

// Mirrors ops::loss::CorrectParams.
struct CorrectParams {
    int rows;
    int cols;
};

// count += rows whose argmax equals their label (count zeroed by the host side). One thread per
// row; the argmax is the first maximum and a NaN never wins over a number, exactly as
// ops::loss::argmax_rows. Integer atomics: the total does not depend on the order.
extern "C" __global__ void count_correct_rows_f32(const float* logits, const int* labels, int* count,
                                                  CorrectParams p) {
    GRID_STRIDE(row, p.rows) {
        const float* xr = logits + (long long)row * p.cols;
        int best = 0;
        for (int j = 1; j < p.cols; ++j) {
            if (xr[j] > xr[best]) best = j;
        }
        const int y = labels[row];
        if (y >= 0 && y == best) atomicAdd(count, 1);
    }
}
