// Embedding lookup and its weight gradient. CPU reference: src/ops/embedding.rs.
#include "common.cuh"

// Mirrors ops::embedding::EmbeddingParams: `n` ids, table [num, dim].
struct EmbeddingParams {
    int n;
    int num;
    int dim;
};

// y[i, d] = weight[ids[i], d]. An id outside [0, num) writes zeros and records the smallest such
// position i in *bad (initialised to n by the caller; integer atomicMin is order-independent).
extern "C" __global__ void embedding_forward_f32(const int* ids, const float* weight, float* y,
                                                 int* bad, EmbeddingParams p) {
    GRID_STRIDE(k, p.n * p.dim) {
        const int i = k / p.dim, d = k - i * p.dim;
        const int id = ids[i];
        if (id >= 0 && id < p.num) {
            y[k] = weight[(long long)id * p.dim + d];
        } else {
            y[k] = 0.0f;
            if (d == 0) atomicMin(bad, i);
        }
    }
}

// dweight[v, d] = sum over positions i with ids[i] == v of dy[i, d], in position order per lane.
// Gather formulation (no float atomics, deterministic): grid (num, ceil(dim/32)), block (32, 8);
// threadIdx.x picks the column d, threadIdx.y one of 8 position lanes, then a fixed tree over lanes.
// Every block scans all ids: O(num * n) id reads, meant for small vocabularies (characters).
extern "C" __global__ void embedding_backward_f32(const int* ids, const float* dy, float* dweight,
                                                  EmbeddingParams p) {
    __shared__ double partial[8][32];
    const int v = blockIdx.x;
    const int d = blockIdx.y * 32 + threadIdx.x;
    double acc = 0.0;
    if (d < p.dim) {
        for (int i = threadIdx.y; i < p.n; i += 8) {
            if (ids[i] == v) acc += dy[(long long)i * p.dim + d];
        }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (unsigned stride = 4; stride > 0; stride >>= 1) {
        if (threadIdx.y < stride)
            partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + stride][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && d < p.dim)
        dweight[(long long)v * p.dim + d] = (float)partial[0][threadIdx.x];
}
