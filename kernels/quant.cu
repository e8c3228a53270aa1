// Polino et al.'s uniform quantizer with buckets (SPEC-NOTES §8) and the non-uniform (learned
// points) quantizer of differentiable quantization with its point gradients. CPU reference:
// src/distill/quantize.rs. Bit-reproducible: every step is one f32 operation in the spec's order
// (the __f*_rn intrinsics keep NVRTC from contracting q*alpha + beta into an FMA), and rintf rounds
// half to even. min/max are exact in any order.
#include "common.cuh"

// Mirrors distill::quantize::QuantParams. The flat input is `rows` buckets of `bucket` elements (the
// last one shorter: its padding would repeat the last element, which changes neither min nor max).
// steps = 2^bits - 1.
struct QuantParams {
    int n;
    int bucket;
    int rows;
    float steps;
};

#define QUANT_THREADS 256

// beta = min and alpha = max - min (1 if < 1e-10) of v[start, end), reduced by the whole block
// through lo/hi (__shared__ float[QUANT_THREADS]). Every thread must call it (it synchronises) and
// gets the results; lo/hi are free again when it returns.
static __device__ inline void bucket_scale(const float* v, int start, int end, float* lo, float* hi,
                                           float* beta_out, float* alpha_out) {
    float mn = LIT_POS_INF, mx = LIT_NEG_INF;
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
        mn = fminf(mn, v[i]);
        mx = fmaxf(mx, v[i]);
    }
    lo[threadIdx.x] = mn;
    hi[threadIdx.x] = mx;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) {
            lo[threadIdx.x] = fminf(lo[threadIdx.x], lo[threadIdx.x + stride]);
            hi[threadIdx.x] = fmaxf(hi[threadIdx.x], hi[threadIdx.x + stride]);
        }
        __syncthreads();
    }
    const float beta = lo[0];
    float alpha = __fsub_rn(hi[0], beta);
    if (alpha < 1e-10f) alpha = 1.0f;
    __syncthreads();  // lo/hi are rewritten by the caller's next bucket
    *beta_out = beta;
    *alpha_out = alpha;
}

// One block per bucket: beta = min, alpha = max - min (1 if < 1e-10); then per element
// u = (v - beta)/alpha; r = u*steps; level = rint(r); q = level/steps; out = q*alpha + beta.
extern "C" __global__ void quantize_uniform_f32(const float* v, float* out, float* alpha_out, float* beta_out,
                                                int* level_out, QuantParams p) {
    __shared__ float lo[QUANT_THREADS];
    __shared__ float hi[QUANT_THREADS];
    for (int r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const int start = r * p.bucket;
        const int end = min(start + p.bucket, p.n);
        float beta, alpha;
        bucket_scale(v, start, end, lo, hi, &beta, &alpha);
        if (threadIdx.x == 0) {
            alpha_out[r] = alpha;
            beta_out[r] = beta;
        }
        for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
            const float u = __fdiv_rn(__fsub_rn(v[i], beta), alpha);
            const float level = rintf(__fmul_rn(u, p.steps));
            const float q = __fdiv_rn(level, p.steps);
            out[i] = __fadd_rn(__fmul_rn(q, alpha), beta);
            level_out[i] = (int)level;
        }
    }
}

// ---------- non-uniform points (differentiable quantization) ----------

// Mirrors distill::quantize::PointsParams: `rows` buckets of `bucket` elements as above, and a
// sorted table of `num_points` points in [0, 1].
struct PointsParams {
    int n;
    int bucket;
    int rows;
    int num_points;
};

// Index of the point nearest to u (ties to the lower point): the first point >= u by binary
// search, then the closer of it and its predecessor. A NaN u compares false everywhere: point 0.
static __device__ inline int nearest_point(const float* points, int count, float u) {
    int lo = 0, hi = count;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (points[mid] < u) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return 0;
    if (lo == count) return count - 1;
    return __fsub_rn(u, points[lo - 1]) <= __fsub_rn(points[lo], u) ? lo - 1 : lo;
}

// One block per bucket: beta, alpha as in quantize_uniform_f32; per element
// u = (v - beta)/alpha; j = nearest point; out = points[j]*alpha + beta.
extern "C" __global__ void quantize_points_f32(const float* v, const float* points, float* out, float* alpha_out,
                                               float* beta_out, int* index_out, PointsParams p) {
    __shared__ float lo[QUANT_THREADS];
    __shared__ float hi[QUANT_THREADS];
    for (int r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const int start = r * p.bucket;
        const int end = min(start + p.bucket, p.n);
        float beta, alpha;
        bucket_scale(v, start, end, lo, hi, &beta, &alpha);
        if (threadIdx.x == 0) {
            alpha_out[r] = alpha;
            beta_out[r] = beta;
        }
        for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
            const float u = __fdiv_rn(__fsub_rn(v[i], beta), alpha);
            const int j = nearest_point(points, p.num_points, u);
            out[i] = __fadd_rn(__fmul_rn(points[j], alpha), beta);
            index_out[i] = j;
        }
    }
}

// Mirrors distill::quantize::PointGradParams. Chunk c of the elements is [c*chunk, (c+1)*chunk).
struct PointGradParams {
    int n;
    int bucket;
    int num_points;
    int chunk;
    int chunks;
};

// First pass of dL/dp_j = sum over i with index[i] = j of alpha[i / bucket] * grad[i]: for each
// chunk, thread t sums points t, t + blockDim.x, ... over the chunk in element order, in double,
// into partial[chunk, j]. No atomics: sum_partials_f64 (partials.cu) then adds the chunks in order.
// Every thread reads the whole chunk (the same address across a warp, a broadcast): the cost is
// chunk x points per block, fine for the 2-8-bit tables of differentiable quantization.
extern "C" __global__ void point_gradients_partial_f32(const float* grad, const int* index, const float* alpha,
                                                       double* partial, PointGradParams p) {
    for (int c = blockIdx.x; c < p.chunks; c += gridDim.x) {
        const int start = c * p.chunk;
        const int end = min(start + p.chunk, p.n);
        for (int j = threadIdx.x; j < p.num_points; j += blockDim.x) {
            double acc = 0.0;
            for (int i = start; i < end; i++) {
                if (index[i] == j) acc += (double)alpha[i / p.bucket] * (double)grad[i];
            }
            partial[(long long)c * p.num_points + j] = acc;
        }
    }
}
