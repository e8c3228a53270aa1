// Shared by every kernel file. Compiled by NVRTC (cuda) and by g++ against kernels/emu (emu):
// keep to what both understand — no libc headers, no INFINITY (undefined under NVRTC).
#pragma once

#define LIT_NEG_INF (-__int_as_float(0x7f800000))
#define LIT_POS_INF (__int_as_float(0x7f800000))

// Grid-stride loop over [0, n).
#define GRID_STRIDE(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

// Parameters of simple elementwise kernels (mirrors ops::elementwise::ElementwiseParams).
struct ElementwiseParams {
    int n;
    float alpha;
};

// Dynamic shared memory (the launch's `shared_bytes`), as a `T*` named `name`, inside a kernel body.
// CUDA: one untyped `extern __shared__` array per file, so kernels may view it as different types.
// emu: the per-block buffer of kernels/emu (`extern __shared__` has no C++ equivalent).
#ifdef LIT_EMU
#define DYN_SMEM(T, name) LIT_EMU_DYN_SMEM(T, name)
#else
#define DYN_SMEM(T, name)                                              \
    extern __shared__ __align__(16) unsigned char lit_dynamic_smem[]; \
    T* name = reinterpret_cast<T*>(lit_dynamic_smem)
#endif
