// Optimizer steps: one fused kernel per parameter, and one launch for many parameters.
// CPU reference: src/optim.rs.
#include "common.cuh"
#include "multi_tensor.cuh"

// Mirrors crate::optim::SgdParams. Flags are ints (0/1) to keep the layout plain.
struct SgdParams {
    int n;
    float lr;
    float momentum;
    float weight_decay;
    int nesterov;
    int first_step;
};

// PyTorch SGD (dampening 0) on element i: g = grad + wd*w; b = first ? g : mu*b + g;
// w -= lr * (nesterov ? g + mu*b : b); with momentum 0 there is no buffer (buf may be null) and
// w -= lr*g. Both kernels below call this one body, so they round identically (p.n is not read).
__device__ __forceinline__ void sgd_update(float* w, const float* grad, float* buf, int i,
                                           const SgdParams& p) {
    const float g = grad[i] + p.weight_decay * w[i];
    float step = g;
    if (p.momentum != 0.0f) {
        const float b = p.first_step ? g : p.momentum * buf[i] + g;
        buf[i] = b;
        step = p.nesterov ? g + p.momentum * b : b;
    }
    w[i] -= p.lr * step;
}

// True when the step's update must not run: `skip` (a device flag, null for none) is set, e.g. by
// flag_non_finite_f32 for a non-finite loss. Read on the device, so the host never waits for it.
__device__ __forceinline__ bool update_skipped(const float* skip) {
    return skip != nullptr && *skip != 0.0f;
}

extern "C" __global__ void sgd_step_f32(float* w, const float* grad, float* buf, const float* skip, SgdParams p) {
    if (update_skipped(skip)) return;
    GRID_STRIDE(i, p.n) { sgd_update(w, grad, buf, i, p); }
}

// Mirrors crate::distill::step::FlagParams.
struct FlagParams {
    int n;
};

// flag = 1 when any of x[0..n) is an infinity or NaN; never cleared here (sticky: once a loss was
// non-finite, every later update that reads the flag is skipped until the host has seen it).
extern "C" __global__ void flag_non_finite_f32(const float* x, float* flag, FlagParams p) {
    GRID_STRIDE(i, p.n) {
        if ((__float_as_int(x[i]) & 0x7f800000) == 0x7f800000) *flag = 1.0f;
    }
}

// ---------- multi-tensor: every parameter in one launch ----------

// Most tensors per launch: keeps SgdMultiParams within the classic 4 KiB of kernel parameters
// (mirrors crate::optim::SGD_MULTI_MAX_TENSORS).
#define SGD_MULTI_MAX_TENSORS 96

// One parameter of a multi-tensor step: its elements are [start, start + n) of the launch's
// concatenated index space. Mirrors crate::optim::SgdTensor.
struct SgdTensor {
    float* w;
    const float* grad;
    float* buf;  // null when momentum is 0
    int start;
    int n;
    int first_step;
    int pad;  // keeps the size a multiple of 8
};

// Mirrors crate::optim::SgdMultiParams: the hyperparameters, then `count` tensors by ascending
// `start` (empty ones left out), `total` elements in all. Passed by value: the descriptors travel
// in the launch itself, no device table to upload.
struct SgdMultiParams {
    int total;
    int count;
    float lr;
    float momentum;
    float weight_decay;
    int nesterov;
    int pad0;
    int pad1;
    const float* skip;  // null, or the flag that skips the whole update (update_skipped)
    SgdTensor tensors[SGD_MULTI_MAX_TENSORS];
};

// Element i of the concatenation belongs to the last tensor whose start is <= i (binary search;
// neighbouring threads mostly land in the same tensor), and gets exactly sgd_step_f32's update.
extern "C" __global__ void sgd_multi_step_f32(SgdMultiParams p) {
    if (update_skipped(p.skip)) return;
    GRID_STRIDE(i, p.total) {
        const SgdTensor& t = p.tensors[multi_tensor_owner(p.tensors, p.count, i)];
        SgdParams one;
        one.n = t.n;
        one.lr = p.lr;
        one.momentum = p.momentum;
        one.weight_decay = p.weight_decay;
        one.nesterov = p.nesterov;
        one.first_step = t.first_step;
        sgd_update(t.w, t.grad, t.buf, i - t.start, one);
    }
}
