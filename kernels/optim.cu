// Optimizer steps, one fused kernel per parameter. CPU reference: src/optim.rs.
#include "common.cuh"

// Mirrors crate::optim::SgdParams. Flags are ints (0/1) to keep the layout plain.
struct SgdParams {
    int n;
    float lr;
    float momentum;
    float weight_decay;
    int nesterov;
    int first_step;
};

// PyTorch SGD (dampening 0): g = grad + wd*w; b = first ? g : mu*b + g;
// w -= lr * (nesterov ? g + mu*b : b); with momentum 0 there is no buffer (buf may be null) and w -= lr*g.
extern "C" __global__ void sgd_step_f32(float* w, const float* grad, float* buf, SgdParams p) {
    GRID_STRIDE(i, p.n) {
        const float g = grad[i] + p.weight_decay * w[i];
        float step = g;
        if (p.momentum != 0.0f) {
            const float b = p.first_step ? g : p.momentum * buf[i] + g;
            buf[i] = b;
            step = p.nesterov ? g + p.momentum * b : b;
        }
        w[i] -= p.lr * step;
    }
}
