// Adam as PyTorch 1.0.1 executed it, many parameters in one launch. CPU reference:
// src/optim/adam.rs (adam_step_cpu); the formulas and why each operation rounds on its own are there.
#include "common.cuh"
#include "multi_tensor.cuh"

// Most tensors per launch: keeps AdamMultiParams within 4 KiB of kernel parameters (mirrors
// crate::optim::adam::ADAM_MULTI_MAX_TENSORS).
#define ADAM_MULTI_MAX_TENSORS 64

// Mirrors crate::optim::adam::AdamTensor: elements [start, start + n) of the concatenation.
struct AdamTensor {
    float* w;
    const float* grad;
    float* exp_avg;
    float* exp_avg_sq;
    int start;
    int n;
    float step_size;  // lr*sqrt(1-beta2^t)/(1-beta1^t) of this parameter's step t
    int pad;
};

// Mirrors crate::optim::adam::AdamScalars (the Python scalars, rounded to float).
struct AdamScalars {
    float beta1;
    float beta2;
    float one_minus_beta1;
    float one_minus_beta2;
    float eps;
    float weight_decay;
};

// Mirrors crate::optim::adam::AdamMultiParams. Passed by value: no device table to upload.
struct AdamMultiParams {
    int total;
    int count;
    AdamScalars s;
    AdamTensor tensors[ADAM_MULTI_MAX_TENSORS];
};

// One element of torch 1.0.1's step, each THC pointwise kernel rounding on its own (explicit _rn
// intrinsics: no contraction into FMAs, so cuda rounds as the reference):
// exp_avg.mul_(b1).add_(1-b1, g); exp_avg_sq.mul_(b2).addcmul_(1-b2, g, g);
// denom = exp_avg_sq.sqrt().add_(eps); w.addcdiv_(-step_size, exp_avg, denom).
__device__ __forceinline__ void adam_update(const AdamTensor& t, int i, const AdamScalars& s) {
    float g = t.grad[i];
    if (s.weight_decay != 0.0f) g = __fadd_rn(g, __fmul_rn(s.weight_decay, t.w[i]));
    const float m = __fadd_rn(__fmul_rn(t.exp_avg[i], s.beta1), __fmul_rn(s.one_minus_beta1, g));
    const float v = __fadd_rn(__fmul_rn(t.exp_avg_sq[i], s.beta2),
                              __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
    t.exp_avg[i] = m;
    t.exp_avg_sq[i] = v;
    const float denom = __fadd_rn(__fsqrt_rn(v), s.eps);
    t.w[i] = __fsub_rn(t.w[i], __fmul_rn(t.step_size, __fdiv_rn(m, denom)));
}

// Element i of the concatenation belongs to the last tensor whose start is <= i (binary search).
extern "C" __global__ void adam_multi_step_f32(AdamMultiParams p) {
    GRID_STRIDE(i, p.total) {
        const int lo = multi_tensor_owner(p.tensors, p.count, i);
        adam_update(p.tensors[lo], i - p.tensors[lo].start, p.s);
    }
}
