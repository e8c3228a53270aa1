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
