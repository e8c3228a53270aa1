// Tensor-core convolutions (NCHW x, OIHW weight, stride, zero padding, dilation 1, groups 1) as
// implicit GEMMs on kernels/wmma_tile.cuh: operands read in place from x / w / dy (never an im2col
// buffer), rounded to tf32 / bf16 / fp16 as they are staged, fp32 accumulation. Launch and CPU
// reference: src/ops/tensor_core/. With P = OH·OW output pixels and K = C·kh·kw (k = (c, i, j), the
// weight's own order):
// * forward          y[n][o][p]     = Σ_k w[o][k] · x[n][c][oh·sh - ph + i][ow·sw - pw + j]
//                    (GEMM O x (N·P), depth K; + bias[o])
// * input gradient   dx[n][c][ih][iw] = Σ_(o,i,j) w[o][c][i][j] · dy[n][o][oh][ow] over the taps with
//                    oh·sh = ih + ph - i, ow·sw = iw + pw - j (GEMM C x (N·H·W), depth O·kh·kw; taps
//                    off the stride grid read 0: any stride, 1/sh·sw of the depth useful)
// * weight gradient  dw[o][k] = Σ_(n,p) dy[n][o][p] · col[k][(n,p)] (GEMM O x K, depth N·P),
//                    the depth split into slices of p.slice columns (grid z); slice z writes the
//                    partial dw at out + z·O·K (summed by conv_sum_partials_f32 when z > 1).
// Every index is decoded per element with divisions: simple and general; hoisting the column
// decode out of the k loop (as conv.cu's implicit kernels do) is the next speed step.
#include "common.cuh"
#include "wmma_tile.cuh"

#include "conv_params.cuh"

// x[n][c][oh·sh - ph + i][ow·sw - pw + j] for window tap k = (c, i, j) of output column q = (n, oh, ow); 0 in the padding.
__device__ __forceinline__ float window(const float* x, const ConvParams& p, int k, int q) {
    const int area = p.kh * p.kw, pixels = p.oh * p.ow;
    const int c = k / area, i = k % area / p.kw, j = k % p.kw;
    const int n = q / pixels, oh = q % pixels / p.ow, ow = q % p.ow;
    const int ih = oh * p.sh - p.ph + i, iw = ow * p.sw - p.pw + j;
    if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) return 0.0f;
    return x[(((long long)n * p.c + c) * p.h + ih) * p.w + iw];
}

struct ForwardProblem {
    const float* x;
    const float* wt;
    const float* bias;
    float* y;
    ConvParams p;
    int m, n;  // O, N·P
    bool a_rows_fastest, b_k_fastest;
    __device__ float a(int o, int k) const { return wt[(long long)o * (p.c * p.kh * p.kw) + k]; }
    __device__ float b(int k, int q) const { return window(x, p, k, q); }
    __device__ void store(int o, int q, float v) const {
        const int pixels = p.oh * p.ow;
        const int img = q / pixels, pix = q % pixels;
        // The separate bias add's arithmetic: (Σ) + bias.
        y[((long long)img * p.o + o) * pixels + pix] = bias ? v + bias[o] : v;
    }
};

struct DataGradProblem {
    const float* wt;
    const float* dy;
    float* dx;
    ConvParams p;
    int m, n;  // C, N·H·W
    bool a_rows_fastest, b_k_fastest;
    // w[o][c][i][j] for k = (o, i, j).
    __device__ float a(int c, int k) const {
        const int area = p.kh * p.kw;
        return wt[((long long)(k / area) * p.c + c) * area + k % area];
    }
    // dy[n][o][oh][ow] for the tap k = (o, i, j) that reads input pixel q = (n, ih, iw), if any.
    __device__ float b(int k, int q) const {
        const int area = p.kh * p.kw, plane = p.h * p.w;
        const int o = k / area, i = k % area / p.kw, j = k % p.kw;
        const int img = q / plane, ih = q % plane / p.w, iw = q % p.w;
        const int th = ih + p.ph - i, tw = iw + p.pw - j;
        if (th < 0 || tw < 0 || th % p.sh != 0 || tw % p.sw != 0) return 0.0f;
        const int oh = th / p.sh, ow = tw / p.sw;
        if (oh >= p.oh || ow >= p.ow) return 0.0f;
        return dy[(((long long)img * p.o + o) * p.oh + oh) * p.ow + ow];
    }
    __device__ void store(int c, int q, float v) const {
        const int plane = p.h * p.w;
        dx[((long long)(q / plane) * p.c + c) * plane + q % plane] = v;
    }
};

struct WeightGradProblem {
    const float* x;
    const float* dy;
    float* out;  // this slice's [O][K]
    ConvParams p;
    int m, n;  // O, K
    bool a_rows_fastest, b_k_fastest;
    __device__ float a(int o, int q) const {
        const int pixels = p.oh * p.ow;
        return dy[((long long)(q / pixels) * p.o + o) * pixels + q % pixels];
    }
    __device__ float b(int q, int k) const { return window(x, p, k, q); }
    __device__ void store(int o, int k, float v) const { out[(long long)o * n + k] = v; }
};

// Grid (ceil(N·P / 64), ceil(O / 64)), 128 threads. bias may be null.
template <class P>
__device__ __forceinline__ void conv_tc_forward(const float* x, const float* wt, const float* bias, float* y, const ConvParams& p) {
    ForwardProblem pr = {x, wt, bias, y, p, p.o, p.n * p.oh * p.ow, false, false};
    tc::block_gemm<P>(pr, blockIdx.y * TC_BM, blockIdx.x * TC_BN, 0, p.c * p.kh * p.kw);
}
// Grid (ceil(N·H·W / 64), ceil(C / 64)), 128 threads.
template <class P>
__device__ __forceinline__ void conv_tc_data_grad(const float* wt, const float* dy, float* dx, const ConvParams& p) {
    DataGradProblem pr = {wt, dy, dx, p, p.c, p.n * p.h * p.w, false, false};
    tc::block_gemm<P>(pr, blockIdx.y * TC_BM, blockIdx.x * TC_BN, 0, p.o * p.kh * p.kw);
}
// Grid (ceil(K / 64), ceil(O / 64), slices), 128 threads; out holds `slices` partial [O][K].
template <class P>
__device__ __forceinline__ void conv_tc_weight_grad(const float* x, const float* dy, float* out, const ConvParams& p) {
    const int k = p.c * p.kh * p.kw, cols = p.n * p.oh * p.ow;
    const int begin = blockIdx.z * p.slice, end = min(begin + p.slice, cols);
    WeightGradProblem pr = {x, dy, out + (long long)blockIdx.z * p.o * k, p, p.o, k, false, true};
    tc::block_gemm<P>(pr, blockIdx.y * TC_BM, blockIdx.x * TC_BN, begin, end);
}

// The nine kernels: pass x precision (names spelled out: the kernel registry reads them).
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_forward_tf32(const float* x, const float* wt, const float* bias,
                                                                           float* y, ConvParams p) {
    conv_tc_forward<tc::Tf32>(x, wt, bias, y, p);
}
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_data_grad_tf32(const float* wt, const float* dy, float* dx,
                                                                             ConvParams p) {
    conv_tc_data_grad<tc::Tf32>(wt, dy, dx, p);
}
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_weight_grad_tf32(const float* x, const float* dy, float* out,
                                                                               ConvParams p) {
    conv_tc_weight_grad<tc::Tf32>(x, dy, out, p);
}

extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_forward_bf16(const float* x, const float* wt, const float* bias,
                                                                           float* y, ConvParams p) {
    conv_tc_forward<tc::Bf16>(x, wt, bias, y, p);
}
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_data_grad_bf16(const float* wt, const float* dy, float* dx,
                                                                             ConvParams p) {
    conv_tc_data_grad<tc::Bf16>(wt, dy, dx, p);
}
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_weight_grad_bf16(const float* x, const float* dy, float* out,
                                                                               ConvParams p) {
    conv_tc_weight_grad<tc::Bf16>(x, dy, out, p);
}

extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_forward_f16(const float* x, const float* wt, const float* bias,
                                                                           float* y, ConvParams p) {
    conv_tc_forward<tc::Fp16>(x, wt, bias, y, p);
}
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_data_grad_f16(const float* wt, const float* dy, float* dx,
                                                                             ConvParams p) {
    conv_tc_data_grad<tc::Fp16>(wt, dy, dx, p);
}
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void conv2d_tc_weight_grad_f16(const float* x, const float* dy, float* out,
                                                                               ConvParams p) {
    conv_tc_weight_grad<tc::Fp16>(x, dy, out, p);
}
