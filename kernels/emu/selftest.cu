// Self-test kernels of the emulator (tests/emu_runtime.rs). Compiled for emu only: the NVRTC registry
// embeds top-level kernels/*.cu, not this file. Written in the same CUDA dialect as the real kernels.
#include "common.cuh"

// out[block] = sum of x over the block's grid-stride share: static shared memory + __syncthreads.
extern "C" __global__ void emu_block_sum_f32(const float* x, float* out, int n) {
    __shared__ float partial[1024];
    float acc = 0.0f;
    GRID_STRIDE(i, n) { acc += x[i]; }
    unsigned t = threadIdx.x;
    partial[t] = acc;
    __syncthreads();
    // Tree over the largest power of two <= blockDim.x, after folding the rest into it.
    unsigned pow2 = 1;
    while (pow2 * 2 <= blockDim.x) pow2 *= 2;
    if (t >= pow2) partial[t - pow2] += partial[t];
    __syncthreads();
    for (unsigned stride = pow2 / 2; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

// Reverses each block's chunk of x through dynamic shared memory (the last block may be partial).
extern "C" __global__ void emu_reverse_chunks_f32(const float* x, float* y, int n) {
    DYN_SMEM(float, chunk);
    int base = blockIdx.x * blockDim.x;
    int len = min(int(blockDim.x), n - base);
    int t = threadIdx.x;
    if (t < len) chunk[t] = x[base + t];
    __syncthreads();
    if (t < len) y[base + t] = chunk[len - 1 - t];
}

// out[warp] = sum of the warp's 32 values of x (zero past n), by a __shfl_down_sync tree;
// out[n_warps + warp] = the same by a __shfl_xor_sync butterfly (every lane holds the total).
extern "C" __global__ void emu_warp_sum_f32(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int warp = i / 32, lane = threadIdx.x % 32;
    int n_warps = gridDim.x * blockDim.x / 32;
    float v = i < n ? x[i] : 0.0f;
    float down = v, butterfly = v;
    for (int offset = 16; offset > 0; offset /= 2) {
        down += __shfl_down_sync(0xffffffffu, down, offset);
        butterfly += __shfl_xor_sync(0xffffffffu, butterfly, offset);
    }
    if (lane == 0) out[warp] = down;
    if (lane == 31) out[n_warps + warp] = butterfly;
}

// One warp, 32 lanes: inclusive scan (shfl_up), broadcast of lane 5 (shfl), ballot of x > 0,
// any/all, and a width-8 sub-group rotation.
extern "C" __global__ void emu_warp_ops_i32(const int* x, int* out) {
    int lane = threadIdx.x;
    int v = x[lane];
    int scan = v;
    for (int d = 1; d < 32; d *= 2) {
        int up = __shfl_up_sync(0xffffffffu, scan, d);
        if (lane >= d) scan += up;
    }
    out[lane] = scan;
    out[32 + lane] = __shfl_sync(0xffffffffu, v, 5);
    out[64 + lane] = int(__ballot_sync(0xffffffffu, v > 0));
    out[96 + lane] = __any_sync(0xffffffffu, v > 100) * 10 + __all_sync(0xffffffffu, v > -100);
    out[128 + lane] = __shfl_sync(0xffffffffu, v, lane + 1, 8);
}

// hist[bin[i]] += 1, *sum += x[i], *max_bin = max(bin), *min_bin = min(bin), with atomics from
// many blocks.
extern "C" __global__ void emu_atomics(const int* bin, const float* x, int n, int* hist, float* sum,
                                       int* max_bin, unsigned* min_bin, double* sum64) {
    GRID_STRIDE(i, n) {
        atomicAdd(&hist[bin[i]], 1);
        atomicAdd(sum, x[i]);
        atomicMax(max_bin, bin[i]);
        atomicMin(min_bin, unsigned(bin[i]));
        atomicAdd(sum64, double(x[i]));
    }
}

// Every (x, y, z) of an nx*ny*nz volume written once with its coordinates; hits counts writes.
extern "C" __global__ void emu_index_3d(int* coords, int* hits, int nx, int ny, int nz) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int z = blockIdx.z * blockDim.z + threadIdx.z;
    if (x >= nx || y >= ny || z >= nz) return;
    int i = (z * ny + y) * nx + x;
    coords[i] = x + 1000 * y + 1000000 * z;
    atomicAdd(&hits[i], 1);
}

// y[i] = x at the next position of the block (cyclic): needs the barrier between write and read.
extern "C" __global__ void emu_rotate_synced_f32(const float* x, float* y) {
    __shared__ float s[1024];
    int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    __syncthreads();
    y[base + t] = s[(t + 1) % blockDim.x];
}

// The same with the barrier forgotten: the bug the thread orders exist to expose.
extern "C" __global__ void emu_rotate_racy_f32(const float* x, float* y) {
    __shared__ float s[1024];
    int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    y[base + t] = s[(t + 1) % blockDim.x];
}

// Deadlock: half of the block waits at a barrier the other half never reaches.
extern "C" __global__ void emu_divergent_barrier(float* y) {
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// Both halves reach "a" barrier, but different ones (undefined behaviour in CUDA).
extern "C" __global__ void emu_split_barriers(float* y) {
    if (threadIdx.x % 2 == 0) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 1.0f;
}

// Deadlock: a full-mask shuffle executed by half of a warp.
extern "C" __global__ void emu_divergent_shuffle(float* y) {
    float v = 1.0f;
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    y[threadIdx.x] = v;
}

// __syncthreads_count / _and / _or of (x[t] > 0).
extern "C" __global__ void emu_barrier_votes(const float* x, int* out) {
    int positive = x[threadIdx.x] > 0.0f;
    int count = __syncthreads_count(positive);
    int all = __syncthreads_and(positive);
    int any = __syncthreads_or(positive);
    if (threadIdx.x == 0) {
        out[0] = count;
        out[1] = all;
        out[2] = any;
    }
}

// Timing: `iters` barriers per thread.
extern "C" __global__ void emu_barrier_loop(float* y, int iters) {
    float acc = 0.0f;
    for (int k = 0; k < iters; k++) {
        acc += 1.0f;
        __syncthreads();
    }
    y[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

// Timing: the cheapest launch.
extern "C" __global__ void emu_noop(int unused) {}

// Lanes 0-15 and 16-31 shuffle within their own half, with disjoint masks, side by side.
extern "C" __global__ void emu_half_warp_shuffles(const int* x, int* out) {
    int lane = threadIdx.x % 32;
    int v = x[threadIdx.x];
    if (lane < 16) {
        v += __shfl_xor_sync(0x0000ffffu, v, 1);
        v += __shfl_xor_sync(0x0000ffffu, v, 2);
    } else {
        v += __shfl_xor_sync(0xffff0000u, v, 4);
    }
    out[threadIdx.x] = v;
}

// Crash tests (run in a child process): a write through a null pointer by one thread, and
// recursion deeper than a fiber stack.
extern "C" __global__ void emu_wild_write(float* y) {
    if (blockIdx.x == 1 && threadIdx.x == 3) y[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

static __device__ int deep_recursion(int depth) {
    volatile char frame[1024];
    frame[0] = char(depth);
    return depth == 0 ? frame[0] : deep_recursion(depth - 1) + frame[0];
}

extern "C" __global__ void emu_stack_overflow(int* y, int depth) { y[threadIdx.x] = deep_recursion(depth); }

#include <mma.h>

// c = a (16x8, row-major) * b (8x16, col-major) + 1 on tf32 tensor cores, one warp.
extern "C" __global__ void emu_wmma_tf32(const float* a, const float* b, float* c) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
    wmma::load_matrix_sync(fa, a, 8);
    wmma::load_matrix_sync(fb, b, 8);
    for (int i = 0; i < fa.num_elements; i++) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
    for (int i = 0; i < fb.num_elements; i++) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    wmma::fill_fragment(fc, 1.0f);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

// c (col-major, ld 16) = a (16x16 col-major, f16) * b (16x16 row-major, f16) + c, f32 accumulation.
extern "C" __global__ void emu_wmma_f16(const __half* a, const __half* b, float* c) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::col_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::load_matrix_sync(fc, c, 16, wmma::mem_col_major);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_col_major);
}

// Conversions, one thread per element: f32 x[i] to f16 and bf16 bits (to_half, to_bf16), and the
// 16-bit pattern bits[i] back to f32 as f16 (from_half) and as bf16 (from_bf16).
extern "C" __global__ void emu_half_conversions(const float* x, const unsigned short* bits, unsigned short* to_half,
                                                unsigned short* to_bf16, float* from_half, float* from_bf16, int n) {
    GRID_STRIDE(i, n) {
        to_half[i] = __half_as_ushort(__float2half(x[i]));
        to_bf16[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
        from_half[i] = __half2float(__ushort_as_half(bits[i]));
        from_bf16[i] = __bfloat162float(__ushort_as_bfloat16(bits[i]));
    }
}

// c (row-major, ld 16) = a (16x16 row-major, bf16) * b (16x16 col-major, bf16), f32 accumulation.
extern "C" __global__ void emu_wmma_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::fill_fragment(fc, 0.0f);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}
