// Dropout with a host-generated mask. CPU reference: src/ops/dropout.rs.
#include "common.cuh"

// Mirrors ops::dropout::DropoutParams: n elements, `inner` consecutive ones share a mask entry
// (1 for Dropout, H*W for Dropout2d).
struct DropoutParams {
    int n;
    int inner;
};

// y = x * mask[i / inner] (mask entries are 0 or 1/(1-p)); also the backward, with dy for x.
extern "C" __global__ void dropout_apply_f32(const float* x, const float* mask, float* y,
                                             DropoutParams p) {
    GRID_STRIDE(i, p.n) { y[i] = x[i] * mask[i / p.inner]; }
}
