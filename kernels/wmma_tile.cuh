// The tensor-core block GEMM that kernels/gemm_tc.cu and kernels/conv_tc.cu instantiate: one
// 64x64 tile of D = op(A)·op(B) per block, WMMA fragments, fp32 accumulation. A "problem" struct
// says where op(A)[row][k] and op(B)[k][col] live in global memory (a plain or transposed matrix,
// or a convolution's window read in place) and what to do with each finished D[row][col]; this
// file owns the tiling, the operand rounding and the synchronisation.
//
// Design (per block: 128 threads = 4 warps in a 2x2 grid, each warp a 32x32 quarter of the tile as
// 2x2 accumulator fragments of 16x16):
// * Per k step of BK (tf32: 16 = two m16n16k8 steps; bf16/fp16: 32 = two m16n16k16 steps) every
//   thread reads BM·BK / 128 elements of op(A) and BK·BN / 128 of op(B) from global memory, walking
//   the stored matrix's contiguous direction (coalesced), zero outside the problem (partial tiles
//   need no special case), rounds them to the tensor-core operand type (tf32: __float_to_tf32,
//   round to nearest ties away; bf16/fp16: round to nearest even) and stores them in shared
//   memory. The rounding happens exactly once per staged element: no separate conversion pass,
//   no fp32 copy of the operands anywhere.
// * One stage, no register prefetch: the per-element index math of the conv problems already
//   costs ~130-170 registers; holding a second step in registers made ptxas spill. Latency is
//   hidden by the several blocks per SM that 17 KiB of shared memory and 128 threads allow.
// * The finished accumulators go through shared memory (aliasing the operand tiles), so the
//   problem's store sees (row, col) in row-major order: coalesced stores and any epilogue.
// Shared memory: 17 KiB (the fp32 output tile), so several blocks fit per SM.
// Arithmetic intensity per k step: 64·64·BK MACs for (64 + 64)·BK loads, 32 MACs per element.
// Theoretical limits (H100): tf32 ~495 TFLOP/s dense, bf16/fp16 ~990; at 64x64 tiles and a
// single register stage, this kernel stays well below them (a 128x128 tile with cp.async /
// ldmatrix / wgmma would be the next step); what it fixes first is numerics and generality.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#define TC_BM 64
#define TC_BN 64
#define TC_THREADS 128
// Blocks per SM that __launch_bounds__ asks registers for (<= 128 registers per thread).
#define TC_MIN_BLOCKS 4

namespace tc {

// Operand precisions: the shared-memory element, the WMMA fragment type, the k step of the block
// (BK) and of one mma_sync (WK), the row padding (keeps ldm a 16-byte multiple and every fragment
// pointer 32-byte aligned: rows of 80 or 144/272 bytes, fragment offsets multiples of 32 bytes).
struct Tf32 {
    typedef float Stored;
    typedef nvcuda::wmma::precision::tf32 Operand;
    static const int BK = 16, WK = 8, PAD_A = 4, PAD_B = 4;
    static __device__ __forceinline__ Stored convert(float v) { return nvcuda::wmma::__float_to_tf32(v); }
};
struct Bf16 {
    typedef __nv_bfloat16 Stored;
    typedef __nv_bfloat16 Operand;
    static const int BK = 32, WK = 16, PAD_A = 8, PAD_B = 8;
    static __device__ __forceinline__ Stored convert(float v) { return __float2bfloat16(v); }
};
struct Fp16 {
    typedef __half Stored;
    typedef __half Operand;
    static const int BK = 32, WK = 16, PAD_A = 8, PAD_B = 8;
    static __device__ __forceinline__ Stored convert(float v) { return __float2half(v); }
};

template <class P>
struct Operands {
    typename P::Stored a[TC_BM][P::BK + P::PAD_A];  // op(A) tile, row-major [row][k]
    typename P::Stored b[P::BK][TC_BN + P::PAD_B];  // op(B) tile, row-major [k][col]
};
// +4: rows of 272 bytes (ldm a 16-byte multiple; 16-row offsets 32-byte aligned).
#define TC_LDC (TC_BN + 4)
template <class P>
union Smem {
    Operands<P> in;
    float out[TC_BM][TC_LDC];
};

// Element l (0 <= l < rows·cols) of a tile as (r, c), walking r fastest when `r_fastest`.
__device__ __forceinline__ void tile_pos(int l, int rows, int cols, bool r_fastest, int& r, int& c) {
    r = r_fastest ? l % rows : l / cols;
    c = r_fastest ? l / rows : l % cols;
}

// D[row0 .. +64][col0 .. +64] over k in [k_begin, k_end), handed to pr.store(row, col, value) for
// the rows < pr.m and cols < pr.n. Problem: m, n; a(row, k) and b(k, col) (called in range only);
// a_rows_fastest / b_k_fastest (which index is contiguous in memory); store(row, col, v).
template <class P, class Problem>
__device__ __forceinline__ void block_gemm(const Problem& pr, int row0, int col0, int k_begin, int k_end) {
    using namespace nvcuda;
    const int BK = P::BK;
    typedef typename P::Stored S;
    // WMMA needs every fragment pointer 256-bit aligned (the emulator checks 16 bytes only): the
    // tiles' starts and their 16-row, k-step and 16-column offsets are 32-byte multiples.
    static_assert((TC_BM * (BK + P::PAD_A) * sizeof(S)) % 32 == 0, "op(B) tile start");
    static_assert((16 * (BK + P::PAD_A) * sizeof(S)) % 32 == 0 && (P::WK * sizeof(S)) % 32 == 0, "op(A) fragments");
    static_assert((P::WK * (TC_BN + P::PAD_B) * sizeof(S)) % 32 == 0 && (16 * sizeof(S)) % 32 == 0, "op(B) fragments");
    static_assert((16 * TC_LDC * sizeof(float)) % 32 == 0 && (16 * sizeof(float)) % 32 == 0, "output fragments");
    __shared__ __align__(32) Smem<P> smem;
    const int tid = threadIdx.x, warp = tid / 32;
    const int wr = warp / 2, wc = warp % 2;  // the warp's 32x32 quarter

    wmma::fragment<wmma::accumulator, 16, 16, P::WK, float> acc[2][2];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);

    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        // Stage op(A)[row0 .. +BM][k0 .. +BK] and op(B)[k0 .. +BK][col0 .. +BN], rounded, zero
        // outside the problem.
        for (int l = tid; l < TC_BM * BK; l += TC_THREADS) {
            int r, c;
            tile_pos(l, TC_BM, BK, pr.a_rows_fastest, r, c);
            const int row = row0 + r, k = k0 + c;
            smem.in.a[r][c] = P::convert(row < pr.m && k < k_end ? pr.a(row, k) : 0.0f);
        }
        for (int l = tid; l < BK * TC_BN; l += TC_THREADS) {
            int r, c;
            tile_pos(l, BK, TC_BN, pr.b_k_fastest, r, c);
            const int k = k0 + r, col = col0 + c;
            smem.in.b[r][c] = P::convert(k < k_end && col < pr.n ? pr.b(k, col) : 0.0f);
        }
        __syncthreads();
        for (int kk = 0; kk < BK; kk += P::WK) {
            wmma::fragment<wmma::matrix_a, 16, 16, P::WK, typename P::Operand, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, P::WK, typename P::Operand, wmma::row_major> fb[2];
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(fa[i], &smem.in.a[wr * 32 + i * 16][kk], BK + P::PAD_A);
            for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], &smem.in.b[kk][wc * 32 + j * 16], TC_BN + P::PAD_B);
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        // The next step overwrites the tiles other warps may still be reading.
        __syncthreads();
    }

    // (The last step's barrier, or none when there was no step: the operand tiles are free.)
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(&smem.out[wr * 32 + i * 16][wc * 32 + j * 16], acc[i][j], TC_LDC, wmma::mem_row_major);
    __syncthreads();
    for (int l = tid; l < TC_BM * TC_BN; l += TC_THREADS) {
        const int r = l / TC_BN, c = l % TC_BN;
        if (row0 + r < pr.m && col0 + c < pr.n) pr.store(row0 + r, col0 + c, smem.out[r][c]);
    }
}

}  // namespace tc
