// Data movement: 3-D permutation and the option-A shortcut. CPU reference: src/ops/shape.rs.
// One thread per output element (writes coalesced); backward kernels gather, no atomics.
#include "common.cuh"

// Mirrors ops::shape::PermuteParams: output dims, and the input stride of each output axis.
struct PermuteParams {
    int d0, d1, d2;
    int s0, s1, s2;
};

// y[i0, i1, i2] = x[i0*s0 + i1*s1 + i2*s2]
extern "C" __global__ void permute3_f32(const float* x, float* y, PermuteParams p) {
    GRID_STRIDE(k, p.d0 * p.d1 * p.d2) {
        const int i2 = k % p.d2;
        const int i1 = (k / p.d2) % p.d1;
        const int i0 = k / (p.d2 * p.d1);
        y[k] = x[(long long)i0 * p.s0 + (long long)i1 * p.s1 + (long long)i2 * p.s2];
    }
}

// Mirrors ops::shape::ShortcutParams: x [n, c, h, w] -> y [n, c + 2*pad, out_h, out_w].
struct ShortcutParams {
    int n, c, h, w;
    int pad, out_h, out_w;
};

// y = x[:, :, ::2, ::2] with `pad` zero channels before and after (ResNet option A).
extern "C" __global__ void option_a_shortcut_forward_f32(const float* x, float* y,
                                                         ShortcutParams p) {
    const int oc = p.c + 2 * p.pad;
    GRID_STRIDE(k, p.n * oc * p.out_h * p.out_w) {
        const int ow = k % p.out_w;
        const int oh = (k / p.out_w) % p.out_h;
        const int ch = (k / (p.out_w * p.out_h)) % oc;
        const int b = k / (p.out_w * p.out_h * oc);
        const int c = ch - p.pad;
        y[k] = (c >= 0 && c < p.c)
                   ? x[(((long long)b * p.c + c) * p.h + 2 * oh) * p.w + 2 * ow]
                   : 0.0f;
    }
}

// dx[b, c, h, w] = dy[b, c + pad, h/2, w/2] at even (h, w), else 0.
extern "C" __global__ void option_a_shortcut_backward_f32(const float* dy, float* dx,
                                                          ShortcutParams p) {
    const int oc = p.c + 2 * p.pad;
    GRID_STRIDE(k, p.n * p.c * p.h * p.w) {
        const int w = k % p.w;
        const int h = (k / p.w) % p.h;
        const int c = (k / (p.w * p.h)) % p.c;
        const int b = k / (p.w * p.h * p.c);
        dx[k] = (h % 2 == 0 && w % 2 == 0)
                    ? dy[(((long long)b * oc + c + p.pad) * p.out_h + h / 2) * p.out_w + w / 2]
                    : 0.0f;
    }
}
