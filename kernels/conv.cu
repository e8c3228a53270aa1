// Convolution helpers around the tiled GEMM (kernels/gemm.cu). CPU reference: src/ops/conv.rs.
//
// The GPU path is im2col + gemm_f32: `col[n][k][p]` with k = (c, i, j) the weight's own order and
// p = (oh, ow), so that per image `y[O, P] = W[O, K] · col[K, P]` (forward),
// `dcol[K, P] = Wᵀ · dy[O, P]` (input gradient, folded back by col2im) and
// `dW[O, K] = Σ_n dy_n[O, P] · col_nᵀ` (weight gradient: one batched GEMM into per-image partials,
// summed in image order by conv_sum_partials_f32, so results are deterministic).
#include "common.cuh"

// Mirrors ops::conv::ConvParams. `n` counts the images of this launch (a chunk of the batch).
struct ConvParams {
    int n, c, h, w;   // input [n, c, h, w]
    int kh, kw;       // kernel
    int sh, sw;       // stride
    int ph, pw;       // zero padding
    int oh, ow;       // output size
};

// col[n][(c*kh + i)*kw + j][oh*ow_n + ow] = x[n][c][oh*sh - ph + i][ow*sw - pw + j] (0 outside).
// Consecutive threads write consecutive output pixels (coalesced stores).
extern "C" __global__ void im2col_f32(const float* x, float* col, ConvParams p) {
    const int pixels = p.oh * p.ow;
    const int k = p.c * p.kh * p.kw;
    const int total = p.n * k * pixels;
    GRID_STRIDE(idx, total) {
        const int pix = idx % pixels;
        const int row = idx / pixels;  // n * k + kk
        const int kk = row % k;
        const int n = row / k;
        const int j = kk % p.kw;
        const int i = (kk / p.kw) % p.kh;
        const int c = kk / (p.kw * p.kh);
        const int ih = (pix / p.ow) * p.sh - p.ph + i;
        const int iw = (pix % p.ow) * p.sw - p.pw + j;
        float v = 0.0f;
        if (ih >= 0 && ih < p.h && iw >= 0 && iw < p.w)
            v = x[((long long)(n * p.c + c) * p.h + ih) * p.w + iw];
        col[idx] = v;
    }
}

// dx[n][c][ih][iw] = Σ over the (i, j) whose window covers (ih, iw) of dcol[n][(c, i, j)][(oh, ow)].
// A gather (one thread per input element, fixed summation order): no atomics, deterministic.
extern "C" __global__ void col2im_f32(const float* dcol, float* dx, ConvParams p) {
    const int pixels = p.oh * p.ow;
    const int k = p.c * p.kh * p.kw;
    const int total = p.n * p.c * p.h * p.w;
    GRID_STRIDE(idx, total) {
        const int iw = idx % p.w;
        const int ih = (idx / p.w) % p.h;
        const int c = (idx / (p.w * p.h)) % p.c;
        const int n = idx / (p.w * p.h * p.c);
        const float* base = dcol + (long long)n * k * pixels;
        float acc = 0.0f;
        for (int i = 0; i < p.kh; ++i) {
            const int th = ih + p.ph - i;  // = oh * sh when this kernel row covers ih
            if (th < 0 || th % p.sh != 0) continue;
            const int oh = th / p.sh;
            if (oh >= p.oh) continue;
            for (int j = 0; j < p.kw; ++j) {
                const int tw = iw + p.pw - j;
                if (tw < 0 || tw % p.sw != 0) continue;
                const int ow = tw / p.sw;
                if (ow >= p.ow) continue;
                acc += base[(long long)((c * p.kh + i) * p.kw + j) * pixels + oh * p.ow + ow];
            }
        }
        dx[idx] = acc;
    }
}

// Mirrors ops::conv::PartialSumParams.
struct PartialSumParams {
    int parts;       // number of partial results
    int len;         // elements of each
    int accumulate;  // 1: out += sum, 0: out = sum
};

// out[e] (+)= Σ_{q < parts} partials[q * len + e], summed in q order.
extern "C" __global__ void conv_sum_partials_f32(const float* partials, float* out, PartialSumParams p) {
    GRID_STRIDE(e, p.len) {
        float acc = p.accumulate ? out[e] : 0.0f;
        for (int q = 0; q < p.parts; ++q) acc += partials[(long long)q * p.len + e];
        out[e] = acc;
    }
}
