// Tensor-core GEMM: C = alpha * op(A) * op(B) + beta * C, row-major, optional transposes and batch,
// the contract of gemm_f32 (kernels/gemm.cu) with the operands rounded as the precision says
// (tf32 / bf16 / fp16) and fp32 accumulation. Tiling: kernels/wmma_tile.cuh (64x64 block tile,
// 4 warps, operands rounded while staged into shared memory). Launch and CPU reference:
// src/ops/tensor_core/.
#include "common.cuh"
#include "wmma_tile.cuh"

// Mirrors ops::matmul::GemmParams (the same struct gemm_f32 takes).
struct GemmParams {
    int m, n, k;
    int lda, ldb, ldc;
    int trans_a, trans_b;
    float alpha, beta;
    long long stride_a, stride_b, stride_c;  // batch strides (elements)
};

// op(A) is m x k: A stored [m, k] (row stride lda) or [k, m] when trans_a; op(B) is k x n: B stored
// [k, n] (ldb) or [n, k] when trans_b; C is [m, n] (ldc).
struct GemmProblem {
    const float* A;
    const float* B;
    float* C;
    GemmParams p;
    int m, n;
    bool a_rows_fastest, b_k_fastest;
    __device__ float a(int row, int k) const {
        return p.trans_a ? A[(long long)k * p.lda + row] : A[(long long)row * p.lda + k];
    }
    __device__ float b(int k, int col) const {
        return p.trans_b ? B[(long long)col * p.ldb + k] : B[(long long)k * p.ldb + col];
    }
    __device__ void store(int row, int col, float v) const {
        float* dst = &C[(long long)row * p.ldc + col];
        // beta == 0 must not read C: it may hold garbage (NaN * 0 is NaN). gemm_f32's arithmetic.
        *dst = p.beta == 0.0f ? p.alpha * v : p.alpha * v + p.beta * *dst;
    }
};

template <class P>
__device__ __forceinline__ void gemm_tc(const float* A, const float* B, float* C, const GemmParams& p) {
    const long long z = blockIdx.z;
    GemmProblem pr = {A + z * p.stride_a, B + z * p.stride_b, C + z * p.stride_c, p, p.m, p.n, p.trans_a != 0, p.trans_b != 0};
    tc::block_gemm<P>(pr, blockIdx.y * TC_BM, blockIdx.x * TC_BN, 0, p.k);
}

// Grid (ceil(n / 64), ceil(m / 64), batch), 128 threads.
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void gemm_tc_tf32(const float* A, const float* B, float* C, GemmParams p) {
    gemm_tc<tc::Tf32>(A, B, C, p);
}
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void gemm_tc_bf16(const float* A, const float* B, float* C, GemmParams p) {
    gemm_tc<tc::Bf16>(A, B, C, p);
}
extern "C" __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) __global__ void gemm_tc_f16(const float* A, const float* B, float* C, GemmParams p) {
    gemm_tc<tc::Fp16>(A, B, C, p);
}
