// Elementwise ops. CPU reference: src/ops/elementwise.rs.
#include "common.cuh"

// y = max(x, 0)
extern "C" __global__ void relu_forward_f32(const float* x, float* y, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }
}

// dx = dy where x > 0 (the derivative at exactly 0 is 0)
extern "C" __global__ void relu_backward_f32(const float* x, const float* dy, float* dx, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { dx[i] = x[i] > 0.0f ? dy[i] : 0.0f; }
}

extern "C" __global__ void tanh_forward_f32(const float* x, float* y, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { y[i] = tanhf(x[i]); }
}

// dx = dy * (1 - y^2), from the forward's output y
extern "C" __global__ void tanh_backward_f32(const float* y, const float* dy, float* dx, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { dx[i] = dy[i] * (1.0f - y[i] * y[i]); }
}

// y += alpha * x   (gradient accumulation, axpy)
extern "C" __global__ void axpy_f32(const float* x, float* y, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { y[i] += p.alpha * x[i]; }
}

// y = a + b
extern "C" __global__ void add_forward_f32(const float* a, const float* b, float* y, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { y[i] = a[i] + b[i]; }
}

// y = a - b
extern "C" __global__ void sub_forward_f32(const float* a, const float* b, float* y, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { y[i] = a[i] - b[i]; }
}

// y = a * b   (also both halves of mul's backward: da = dy * b, db = dy * a)
extern "C" __global__ void mul_forward_f32(const float* a, const float* b, float* y, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { y[i] = a[i] * b[i]; }
}

// y = alpha * x   (also scale's backward, and sub's backward for b with alpha = -1)
extern "C" __global__ void scale_forward_f32(const float* x, float* y, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { y[i] = p.alpha * x[i]; }
}

// y[i] = alpha (Tensor::full on a kernel device: no host upload).
extern "C" __global__ void fill_f32(float* y, ElementwiseParams p) {
    GRID_STRIDE(i, p.n) { y[i] = p.alpha; }
}
