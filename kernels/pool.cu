// Pooling: max and average over 2-D windows (1-D pooling is the H = 1 case), global average,
// k-max along the last axis. CPU reference: src/ops/pool.rs.
// Backward kernels gather (one thread per input element sums the windows that cover it): no
// atomics, so results are deterministic.
#include "common.cuh"

// Mirrors ops::pool::Pool2dParams. Planes = N*C, each in_h x in_w -> out_h x out_w.
struct Pool2dParams {
    int planes;
    int in_h, in_w, out_h, out_w;
    int kh, kw, sh, sw, ph, pw;
    int count_include_pad;
};

// Output windows [lo, hi] along one axis that cover input position i (hi < lo when none).
__device__ __forceinline__ void covering_windows(int i, int k, int s, int pad, int out, int* lo,
                                                 int* hi) {
    *lo = (i + pad < k) ? 0 : (i + pad - k) / s + 1;
    const int h = (i + pad) / s;
    *hi = h < out - 1 ? h : out - 1;
}

// y = max over each window (padding counts as -inf); argmax = the winner's index in its plane
// (h*in_w + w), the first one in row-major window order on ties, like PyTorch; NaN wins.
extern "C" __global__ void max_pool2d_forward_f32(const float* x, float* y, int* argmax,
                                                  Pool2dParams p) {
    GRID_STRIDE(k, p.planes * p.out_h * p.out_w) {
        const int ow = k % p.out_w;
        const int oh = (k / p.out_w) % p.out_h;
        const int plane = k / (p.out_w * p.out_h);
        const float* xp = x + (long long)plane * p.in_h * p.in_w;
        const int h0 = oh * p.sh - p.ph, w0 = ow * p.sw - p.pw;
        float best = LIT_NEG_INF;
        int arg = -1;
        for (int i = 0; i < p.kh; ++i) {
            const int h = h0 + i;
            if (h < 0 || h >= p.in_h) continue;
            for (int j = 0; j < p.kw; ++j) {
                const int w = w0 + j;
                if (w < 0 || w >= p.in_w) continue;
                const float v = xp[h * p.in_w + w];
                if (arg < 0 || v > best || v != v) {
                    best = v;
                    arg = h * p.in_w + w;
                    if (v != v) break;
                }
            }
            if (best != best) break;
        }
        y[k] = best;
        argmax[k] = arg;
    }
}

// dx[plane, h, w] = sum of dy over the windows whose argmax is (h, w).
extern "C" __global__ void max_pool2d_backward_f32(const float* dy, const int* argmax, float* dx,
                                                   Pool2dParams p) {
    GRID_STRIDE(k, p.planes * p.in_h * p.in_w) {
        const int w = k % p.in_w;
        const int h = (k / p.in_w) % p.in_h;
        const int plane = k / (p.in_w * p.in_h);
        int oh_lo, oh_hi, ow_lo, ow_hi;
        covering_windows(h, p.kh, p.sh, p.ph, p.out_h, &oh_lo, &oh_hi);
        covering_windows(w, p.kw, p.sw, p.pw, p.out_w, &ow_lo, &ow_hi);
        const int me = h * p.in_w + w;
        float acc = 0.0f;
        for (int oh = oh_lo; oh <= oh_hi; ++oh) {
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
                const long long o = ((long long)plane * p.out_h + oh) * p.out_w + ow;
                if (argmax[o] == me) acc += dy[o];
            }
        }
        dx[k] = acc;
    }
}

// PyTorch's divisor of window (oh, ow): the window clipped to the padded input, or to the input
// itself when padding is not counted.
__device__ __forceinline__ int avg_divisor(int oh, int ow, const Pool2dParams& p) {
    int h0 = oh * p.sh - p.ph, w0 = ow * p.sw - p.pw;
    int h1 = h0 + p.kh < p.in_h + p.ph ? h0 + p.kh : p.in_h + p.ph;
    int w1 = w0 + p.kw < p.in_w + p.pw ? w0 + p.kw : p.in_w + p.pw;
    if (p.count_include_pad) return (h1 - h0) * (w1 - w0);
    h0 = h0 > 0 ? h0 : 0;
    w0 = w0 > 0 ? w0 : 0;
    h1 = h1 < p.in_h ? h1 : p.in_h;
    w1 = w1 < p.in_w ? w1 : p.in_w;
    return (h1 - h0) * (w1 - w0);
}

// y = sum over the window (zero padding) / divisor.
extern "C" __global__ void avg_pool2d_forward_f32(const float* x, float* y, Pool2dParams p) {
    GRID_STRIDE(k, p.planes * p.out_h * p.out_w) {
        const int ow = k % p.out_w;
        const int oh = (k / p.out_w) % p.out_h;
        const int plane = k / (p.out_w * p.out_h);
        const float* xp = x + (long long)plane * p.in_h * p.in_w;
        const int h0 = oh * p.sh - p.ph, w0 = ow * p.sw - p.pw;
        double sum = 0.0;
        for (int i = 0; i < p.kh; ++i) {
            const int h = h0 + i;
            if (h < 0 || h >= p.in_h) continue;
            for (int j = 0; j < p.kw; ++j) {
                const int w = w0 + j;
                if (w >= 0 && w < p.in_w) sum += xp[h * p.in_w + w];
            }
        }
        y[k] = (float)(sum / avg_divisor(oh, ow, p));
    }
}

// dx[plane, h, w] = sum over the covering windows of dy / divisor.
extern "C" __global__ void avg_pool2d_backward_f32(const float* dy, float* dx, Pool2dParams p) {
    GRID_STRIDE(k, p.planes * p.in_h * p.in_w) {
        const int w = k % p.in_w;
        const int h = (k / p.in_w) % p.in_h;
        const int plane = k / (p.in_w * p.in_h);
        int oh_lo, oh_hi, ow_lo, ow_hi;
        covering_windows(h, p.kh, p.sh, p.ph, p.out_h, &oh_lo, &oh_hi);
        covering_windows(w, p.kw, p.sw, p.pw, p.out_w, &ow_lo, &ow_hi);
        double acc = 0.0;
        for (int oh = oh_lo; oh <= oh_hi; ++oh) {
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
                const long long o = ((long long)plane * p.out_h + oh) * p.out_w + ow;
                acc += (double)dy[o] / avg_divisor(oh, ow, p);
            }
        }
        dx[k] = (float)acc;
    }
}

// Mirrors ops::pool::PlaneParams: `planes` rows of `inner` contiguous elements.
struct PlaneParams {
    int planes;
    int inner;
};

// y[plane] = mean of the plane (one thread per plane, double accumulation).
extern "C" __global__ void global_avg_pool_forward_f32(const float* x, float* y, PlaneParams p) {
    GRID_STRIDE(r, p.planes) {
        const float* xp = x + (long long)r * p.inner;
        double sum = 0.0;
        for (int i = 0; i < p.inner; ++i) sum += xp[i];
        y[r] = (float)(sum / p.inner);
    }
}

// dx[plane, i] = dy[plane] / inner
extern "C" __global__ void global_avg_pool_backward_f32(const float* dy, float* dx, PlaneParams p) {
    GRID_STRIDE(k, p.planes * p.inner) { dx[k] = dy[k / p.inner] / (float)p.inner; }
}

// Mirrors ops::pool::KmaxParams: `rows` rows of `len`, keep `k`.
struct KmaxParams {
    int rows;
    int len;
    int k;
};

// The k largest of each row, in their original order (ties: the lower index ranks first).
// One thread per row: walk the ranking k steps down to find the k-th element (value, index), then
// keep, in index order, every element ranked at or above it. O(k*len), no scratch memory.
extern "C" __global__ void kmax_pool_forward_f32(const float* x, float* y, int* idx, KmaxParams p) {
    GRID_STRIDE(r, p.rows) {
        const float* xr = x + (long long)r * p.len;
        int last = -1;
        float last_v = 0.0f;
        for (int t = 0; t < p.k; ++t) {
            int best = -1;
            float best_v = 0.0f;
            for (int i = 0; i < p.len; ++i) {
                const float v = xr[i];
                // Only elements ranked below the previous pick.
                if (last >= 0 && !(v < last_v || (v == last_v && i > last))) continue;
                if (best < 0 || v > best_v) {
                    best = i;
                    best_v = v;
                }
            }
            last = best;
            last_v = best_v;
        }
        int out = 0;
        for (int i = 0; i < p.len && out < p.k; ++i) {
            const float v = xr[i];
            if (v > last_v || (v == last_v && i <= last)) {
                y[(long long)r * p.k + out] = v;
                idx[(long long)r * p.k + out] = i;
                ++out;
            }
        }
    }
}

// dx (zeroed by the caller) gets dy at the selected positions; they are distinct within a row.
extern "C" __global__ void kmax_pool_backward_f32(const float* dy, const int* idx, float* dx,
                                                  KmaxParams p) {
    GRID_STRIDE(t, p.rows * p.k) {
        const int r = t / p.k;
        dx[(long long)r * p.len + idx[t]] = dy[t];
    }
}
