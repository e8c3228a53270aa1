// Global gradient-norm clipping (PyTorch 0.3.1 clip_grad_norm), with no host read: partial sums of
// squares per tensor, one thread turning them into the norm and the coefficient, and an in-place
// scale that reads the coefficient on the device. CPU reference: src/optim/clip.rs.
#include "common.cuh"
#include "multi_tensor.cuh"
#include "partials.cuh"

// Most tensors per launch of grad_sq_partials_f32 / clip_scale_f32 (mirrors
// crate::optim::clip::CLIP_MAX_TENSORS; keeps GradMultiParams within 4 KiB).
#define CLIP_MAX_TENSORS 128

// Mirrors crate::optim::clip::GradTensor: elements [start, start + n) of the launch's concatenation;
// `slot` is the tensor's row of partial sums.
struct GradTensor {
    float* grad;
    int start;
    int n;
    int slot;
    int pad;
};

// Mirrors crate::optim::clip::GradMultiParams (shared by the two multi-tensor kernels below).
struct GradMultiParams {
    int total;   // elements of the `count` tensors (clip_scale_f32)
    int count;
    int blocks;  // partial sums per tensor (grad_sq_partials_f32)
    int pad;
    const float* coef;  // [norm, coef] written by clip_coef_f32 (clip_scale_f32)
    GradTensor tensors[CLIP_MAX_TENSORS];
};

// Block (x, y): tensor y's elements x*blockDim + tid, strided by blocks*blockDim; squares summed in
// double, the block's total in partials[slot * blocks + x]. Fixed shape: deterministic.
extern "C" __global__ void grad_sq_partials_f32(GradMultiParams p, double* partials) {
    __shared__ double scratch[PARTIAL_THREADS];
    const GradTensor& t = p.tensors[blockIdx.y];
    double acc = 0.0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < t.n; i += p.blocks * blockDim.x) {
        const double g = (double)t.grad[i];
        acc += g * g;
    }
    const double total = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) partials[(long long)t.slot * p.blocks + blockIdx.x] = total;
}

// Mirrors crate::optim::clip::ClipCoefParams.
struct ClipCoefParams {
    int tensors;
    int blocks;
    double max_norm;
};

// One thread, tensors in order as 0.3.1's Python loop: param_norm = float(sqrt(sum of squares));
// total += param_norm^2 (double); norm = sqrt(total); coef = max_norm / (norm + 1e-6).
// out = [norm, coef] as floats (mul_ converts the Python scalar to float).
extern "C" __global__ void clip_coef_f32(const double* partials, float* out, ClipCoefParams p) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double total = 0.0;
    for (int t = 0; t < p.tensors; ++t) {
        double s = 0.0;
        for (int b = 0; b < p.blocks; ++b) s += partials[(long long)t * p.blocks + b];
        const double param_norm = (double)(float)sqrt(s);
        total += param_norm * param_norm;
    }
    const double norm = sqrt(total);
    out[0] = (float)norm;
    out[1] = (float)(p.max_norm / (norm + 1e-6));
}

// grad *= coef where coef < 1 (p.grad.data.mul_(clip_coef) only when clip_coef < 1).
extern "C" __global__ void clip_scale_f32(GradMultiParams p) {
    const float coef = p.coef[1];
    if (!(coef < 1.0f)) return;
    GRID_STRIDE(i, p.total) {
        const int lo = multi_tensor_owner(p.tensors, p.count, i);
        float* g = p.tensors[lo].grad + (i - p.tensors[lo].start);
        *g = __fmul_rn(*g, coef);
    }
}
