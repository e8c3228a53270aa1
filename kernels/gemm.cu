// Tiled SGEMM: C = alpha * op(A) * op(B) + beta * C, row-major. CPU reference: src/ops/matmul.rs.
//
// Each block computes a 64x64 tile of C with 256 threads; each thread owns a 4x4 micro-tile held in
// registers. A and B are staged through shared memory 16 columns of k at a time, stored k-major
// (As[k][m], Bs[k][n]) so the inner loop reads 4 consecutive floats of each. Loads are bounds-checked
// and zero-filled, so m, n, k need not be multiples of the tile. Batch z = blockIdx.z.
#include "common.cuh"

// Mirrors ops::matmul::GemmParams. op(A) is m x k: A stored [m, k] (row stride lda), or [k, m] when
// trans_a. op(B) is k x n: B stored [k, n] (ldb), or [n, k] when trans_b. C is [m, n] (ldc).
struct GemmParams {
    int m, n, k;
    int lda, ldb, ldc;
    int trans_a, trans_b;
    float alpha, beta;
    long long stride_a, stride_b, stride_c;  // batch strides (elements)
};

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 16
#define GEMM_TM 4
#define GEMM_TN 4
#define GEMM_THREADS 256  // (GEMM_BM / GEMM_TM) * (GEMM_BN / GEMM_TN)
// +4 keeps rows 16-byte aligned and spreads the transposing stores of A over banks.
#define GEMM_PAD 4

extern "C" __global__ void gemm_f32(const float* A, const float* B, float* C, GemmParams p) {
    __shared__ float As[GEMM_BK][GEMM_BM + GEMM_PAD];
    __shared__ float Bs[GEMM_BK][GEMM_BN + GEMM_PAD];

    const int tid = threadIdx.x;
    const int tx = tid % (GEMM_BN / GEMM_TN);  // micro-tile column
    const int ty = tid / (GEMM_BN / GEMM_TN);  // micro-tile row
    const int row0 = blockIdx.y * GEMM_BM;
    const int col0 = blockIdx.x * GEMM_BN;
    A += blockIdx.z * p.stride_a;
    B += blockIdx.z * p.stride_b;
    C += blockIdx.z * p.stride_c;

    float acc[GEMM_TM][GEMM_TN];
    for (int i = 0; i < GEMM_TM; ++i)
        for (int j = 0; j < GEMM_TN; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < p.k; k0 += GEMM_BK) {
        // Stage op(A)[row0 .. +BM, k0 .. +BK]. Consecutive threads walk the stored row (coalesced):
        // along k when A is [m, k], along m when A is [k, m].
        for (int l = tid; l < GEMM_BM * GEMM_BK; l += GEMM_THREADS) {
            const int r = p.trans_a ? l % GEMM_BM : l / GEMM_BK;
            const int c = p.trans_a ? l / GEMM_BM : l % GEMM_BK;
            const int gi = row0 + r, gk = k0 + c;
            float v = 0.0f;
            if (gi < p.m && gk < p.k)
                v = p.trans_a ? A[(long long)gk * p.lda + gi] : A[(long long)gi * p.lda + gk];
            As[c][r] = v;
        }
        // Stage op(B)[k0 .. +BK, col0 .. +BN]: along n when B is [k, n], along k when B is [n, k].
        for (int l = tid; l < GEMM_BK * GEMM_BN; l += GEMM_THREADS) {
            const int r = p.trans_b ? l % GEMM_BK : l / GEMM_BN;
            const int c = p.trans_b ? l / GEMM_BK : l % GEMM_BN;
            const int gk = k0 + r, gj = col0 + c;
            float v = 0.0f;
            if (gk < p.k && gj < p.n)
                v = p.trans_b ? B[(long long)gj * p.ldb + gk] : B[(long long)gk * p.ldb + gj];
            Bs[r][c] = v;
        }
        __syncthreads();

        for (int kk = 0; kk < GEMM_BK; ++kk) {
            float a[GEMM_TM], b[GEMM_TN];
            for (int i = 0; i < GEMM_TM; ++i) a[i] = As[kk][ty * GEMM_TM + i];
            for (int j = 0; j < GEMM_TN; ++j) b[j] = Bs[kk][tx * GEMM_TN + j];
            for (int i = 0; i < GEMM_TM; ++i)
                for (int j = 0; j < GEMM_TN; ++j) acc[i][j] += a[i] * b[j];
        }
        // The next iteration overwrites the tiles others may still be reading.
        __syncthreads();
    }

    for (int i = 0; i < GEMM_TM; ++i) {
        const int gi = row0 + ty * GEMM_TM + i;
        if (gi >= p.m) continue;
        for (int j = 0; j < GEMM_TN; ++j) {
            const int gj = col0 + tx * GEMM_TN + j;
            if (gj >= p.n) continue;
            float* dst = &C[(long long)gi * p.ldc + gj];
            // beta == 0 must not read C: it may hold garbage (NaN * 0 is NaN).
            *dst = p.beta == 0.0f ? p.alpha * acc[i][j] : p.alpha * acc[i][j] + p.beta * *dst;
        }
    }
}
