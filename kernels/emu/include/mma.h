// nvcuda::wmma for the emu device, at the API level. A fragment's element layout is opaque in CUDA,
// so here every lane holds the whole tile (row-major in `x`): loads, stores and mma_sync need no
// lane-to-lane exchange, and each is a __syncwarp so that divergent use is reported as in CUDA.
// Inputs are rounded as the tensor cores see them (tf32: 10-bit mantissa, the low bits dropped as the
// hardware does when a kernel forgets __float_to_tf32; __half / __nv_bfloat16 are exact in float),
// products are exact in f32 and accumulate in f32, k in order. Fragment types, shapes, pointer
// alignment (16 bytes of the 32 CUDA asks, see check_memory) and leading dimensions (16-byte multiples) are checked as CUDA requires.
#pragma once
#include "../cuda_emu.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class Use, int M, int N, int K>
struct shape;
template <int M, int N, int K>
struct shape<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct shape<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct shape<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};
template <class T>
struct storage {
    using type = T;
};
template <>
struct storage<precision::tf32> {
    using type = float;
};
// The value a tensor core multiplies: tf32 keeps the top 19 bits of a float.
template <class T>
inline float operand(float v) {
    return std::is_same<T, precision::tf32>::value ? __uint_as_float(__float_as_uint(v) & 0xffffe000u) : v;
}
// The shapes CUDA offers per multiplicand type (a program that compiles here compiles there):
// __half and __nv_bfloat16 m16n16k16 / m32n8k16 / m8n32k16, tf32 m16n16k8 only.
template <int M, int N, int K, class T>
struct valid_shape {
    static constexpr bool k16 = K == 16 && ((M == 16 && N == 16) || (M == 32 && N == 8) || (M == 8 && N == 32));
    static constexpr bool value = std::is_same<T, precision::tf32>::value ? (M == 16 && N == 16 && K == 8)
                                  : (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value) ? k16
                                                                                                               : false;
};
// WMMA's memory rules: a 256-bit aligned pointer and a leading dimension of whole 16-byte units.
// Only 16-byte alignment is checked: emu device buffers are host allocations aligned to 16 bytes
// (cudaMalloc's are to 256), so a stricter check would fail correct kernels.
template <class P>
inline void check_memory(const P* p, unsigned ldm, const char* what) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) lit_emu_trap(what);
    if ((ldm * sizeof(P)) % 16 != 0) lit_emu_trap(what);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(std::is_same<Use, accumulator>::value || detail::valid_shape<M, N, K, T>::value,
                  "no such WMMA multiplicand fragment (type and m/n/k)");
    static_assert(!std::is_same<Use, accumulator>::value || std::is_same<T, float>::value ||
                      std::is_same<T, __half>::value,
                  "WMMA accumulators are float or __half");
    using element_type = typename detail::storage<T>::type;
    static constexpr int rows = detail::shape<Use, M, N, K>::rows;
    static constexpr int cols = detail::shape<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    element_type x[num_elements];
};

// Round to nearest (ties away from zero), like cvt.rna.tf32.f32.
static inline float __float_to_tf32(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;  // inf, nan
    return __uint_as_float((u + 0x1000u) & 0xffffe000u);
}

template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
    using E = typename fragment<Use, M, N, K, T, L>::element_type;
    for (int i = 0; i < f.num_elements; i++) f.x[i] = E(float(v));
}

// matrix_a / matrix_b: the layout is part of the fragment type.
template <class Use, int M, int N, int K, class T, class L, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
    static_assert(!std::is_same<L, void>::value, "matrix_a/matrix_b fragments need a row_major/col_major layout");
    using F = fragment<Use, M, N, K, T, L>;
    detail::check_memory(p, ldm, "wmma::load_matrix_sync: pointer not 16-byte aligned or ldm not a multiple of 16 bytes");
    __syncwarp();
    for (int r = 0; r < F::rows; r++)
        for (int c = 0; c < F::cols; c++)
            f.x[r * F::cols + c] = typename F::element_type(std::is_same<L, row_major>::value ? p[r * ldm + c] : p[c * ldm + r]);
}

// accumulator: the layout is given at run time.
template <int M, int N, int K, class T, class P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P* p, unsigned ldm, layout_t layout) {
    detail::check_memory(p, ldm, "wmma::load_matrix_sync: pointer not 16-byte aligned or ldm not a multiple of 16 bytes");
    __syncwarp();
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) f.x[r * N + c] = T(float(layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]));
}

template <int M, int N, int K, class T, class P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
    detail::check_memory(p, ldm, "wmma::store_matrix_sync: pointer not 16-byte aligned or ldm not a multiple of 16 bytes");
    __syncwarp();
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = P(float(f.x[r * N + c]));
}

// d = a * b + c (d may be c).
template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
    static_assert(std::is_same<TA, TB>::value, "wmma::mma_sync: matrix_a and matrix_b of different types");
    static_assert(std::is_same<TA, precision::tf32>::value ? std::is_same<TC, float>::value : true,
                  "wmma::mma_sync: tf32 accumulates in float");
    __syncwarp();
    float out[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = float(c.x[i * N + j]);
            for (int k = 0; k < K; k++)
                acc += detail::operand<TA>(float(a.x[i * K + k])) * detail::operand<TB>(float(b.x[k * N + j]));
            out[i * N + j] = acc;
        }
    for (int i = 0; i < M * N; i++) d.x[i] = TC(out[i]);
}

}  // namespace wmma
}  // namespace nvcuda
