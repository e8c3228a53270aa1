// Deterministic block reductions in double, for kernels that reduce many elements to a few numbers
// (parameter gradients, batch statistics, losses). Each block writes its partial sums; a second
// launch (`sum_partials_f64` in partials.cu) adds them in a fixed order. No float atomics: a result
// depends only on the shape. Include "common.cuh" first.
#pragma once

// Threads per block of every partial-sum kernel (a power of two; `partial` below holds this many).
#define PARTIAL_THREADS 256

// Tree sum of one double per thread; every thread must call it (it synchronises). The block's total
// is returned to every thread. `partial` is __shared__ double[blockDim.x].
static __device__ inline double block_sum_f64(double mine, double* partial) {
    partial[threadIdx.x] = mine;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    const double total = partial[0];
    __syncthreads();  // partial may be reused by the caller's next reduction
    return total;
}
