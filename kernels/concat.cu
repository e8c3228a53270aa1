// Column blocks of row-major matrices: `place` copies src [rows, cols] into the columns
// [offset, offset + cols) of dst [rows, wide_cols]; `take` copies them out. Concatenation along the
// last dimension is one `place` per part, its backward one `take` per part (and the reverse for
// slicing). CPU reference: src/ops/concat.rs.
#include "common.cuh"

// Mirrors ops::concat::ColumnBlockParams.
struct ColumnBlockParams {
    int rows;
    int cols;
    int wide_cols;
    int offset;
};

// dst[r, offset + c] = src[r, c]; one thread per element of src.
extern "C" __global__ void column_block_place_f32(const float* src, float* dst, ColumnBlockParams p) {
    GRID_STRIDE(e, p.rows * p.cols) {
        const int r = e / p.cols, c = e - r * p.cols;
        dst[(long long)r * p.wide_cols + p.offset + c] = src[e];
    }
}

// dst[r, c] = src[r, offset + c] (src has wide_cols columns); one thread per element of dst.
extern "C" __global__ void column_block_take_f32(const float* src, float* dst, ColumnBlockParams p) {
    GRID_STRIDE(e, p.rows * p.cols) {
        const int r = e / p.cols, c = e - r * p.cols;
        dst[e] = src[(long long)r * p.wide_cols + p.offset + c];
    }
}
