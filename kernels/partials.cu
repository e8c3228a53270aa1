// Second pass of the deterministic reductions of partials.cuh. CPU counterpart: none (the CPU
// reference sums directly in f64); launched by src/ops/partials.rs.
#include "common.cuh"

// Mirrors ops::partials::FinishParams: `partial` is [count, cols] doubles (one row per first-pass
// block); out[c] = (float)(scale * sum over k of partial[k, c]), summed in increasing k.
struct FinishParams {
    int count;
    int cols;
    double scale;
};

extern "C" __global__ void sum_partials_f64(const double* partial, float* out, FinishParams p) {
    GRID_STRIDE(c, p.cols) {
        double acc = 0.0;
        for (int k = 0; k < p.count; k++) acc += partial[(long long)k * p.cols + c];
        out[c] = (float)(acc * p.scale);
    }
}
