// The CUDA dialect of kernels/*.cu as plain C++17, for the emu device (g++ on the host CPU).
//
// Every CUDA thread runs as a user-mode fiber (kernels/emu/runtime.cpp); one OS thread runs a whole
// block, so `__shared__` becomes `thread_local` (one copy per block in flight) and `threadIdx` is a
// thread-local that the scheduler rewrites before it resumes a fiber. Barriers and warp operations
// are calls into the runtime that switch fibers; everything else is ordinary host code.
//
// Deliberately strict where CUDA says "undefined": a `__syncthreads` that not every thread of the
// block reaches (early `return` included), or reached at different call sites, is an error; a
// shuffle that reads a lane that does not take part returns all-ones bits (NaN for floats).
//
// For kernel writers:
// * dynamic shared memory: `DYN_SMEM(float, buf);` (kernels/common.cuh), not `extern __shared__`;
//   it starts filled with 0xff bytes (NaN) in every block, so a read before a write shows.
// * static `__shared__` keeps whatever the previous block on that OS thread left in it.
// * a fault in a kernel prints the kernel, block and thread on stderr before the process dies;
//   fiber stacks are 64 KiB (LIT_EMU_STACK_KIB); LIT_EMU_THREADS sets the worker count.
// * nvcuda::wmma works at the API level (kernels/emu/include/mma.h); not emulated: inline PTX,
//   mma.sync/wgmma/TMA, spin-waits between blocks, memory-ordering bugs.
#pragma once
#define LIT_EMU 1

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

// ---------- qualifiers ----------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static const
// One copy per block in flight: a worker OS thread runs one block at a time, all its fibers included.
#define __shared__ thread_local
// Dynamic shared memory; see DYN_SMEM in kernels/common.cuh.
#define LIT_EMU_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(lit_emu_dynamic_shared())

// ---------- built-in vector types and indices ----------
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define LIT_EMU_VEC2(T, N) \
    struct __attribute__((aligned(2 * sizeof(T)))) N##2 { T x, y; }; \
    static inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define LIT_EMU_VEC4(T, N) \
    struct __attribute__((aligned(4 * sizeof(T)))) N##4 { T x, y, z, w; }; \
    static inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
LIT_EMU_VEC2(float, float)
LIT_EMU_VEC4(float, float)
LIT_EMU_VEC2(int, int)
LIT_EMU_VEC4(int, int)
LIT_EMU_VEC2(unsigned, uint)
LIT_EMU_VEC4(unsigned, uint)
LIT_EMU_VEC2(double, double)
struct float3 {
    float x, y, z;
};
static inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
static inline dim3 make_dim3(unsigned x, unsigned y, unsigned z) { return dim3(x, y, z); }

// Set by the runtime: per fiber (threadIdx) and per block (the rest). `__thread` and uint3 (not
// `thread_local`, not dim3): g++ reads an `extern thread_local` through a TLS wrapper call on every
// access; these are plain %fs-relative loads.
extern __thread uint3 threadIdx;
extern __thread uint3 blockIdx;
extern __thread uint3 blockDim;
extern __thread uint3 gridDim;
#define warpSize 32

// ---------- runtime entry points (kernels/emu/runtime.cpp) ----------
// The values every lane of a warp published at one warp operation; `valid` marks the lanes that
// took part. Readable until the calling lane's next warp operation.
struct LitEmuWarpView {
    const uint64_t* value;
    unsigned valid;
    unsigned lane;
};
void lit_emu_syncthreads(const char* site);
int lit_emu_syncthreads_reduce(const char* site, int predicate, int op);
LitEmuWarpView lit_emu_warp_exchange(unsigned mask, uint64_t value, const char* what);
unsigned lit_emu_active_mask();
void* lit_emu_dynamic_shared();
[[noreturn]] void lit_emu_trap(const char* why);

#define LIT_EMU_STR2(x) #x
#define LIT_EMU_STR(x) LIT_EMU_STR2(x)
#define LIT_EMU_SITE __FILE__ ":" LIT_EMU_STR(__LINE__)

// ---------- block synchronization ----------
#define __syncthreads() lit_emu_syncthreads(LIT_EMU_SITE)
#define __syncthreads_count(p) lit_emu_syncthreads_reduce(LIT_EMU_SITE, (p) ? 1 : 0, 0)
#define __syncthreads_and(p) lit_emu_syncthreads_reduce(LIT_EMU_SITE, (p) ? 1 : 0, 1)
#define __syncthreads_or(p) lit_emu_syncthreads_reduce(LIT_EMU_SITE, (p) ? 1 : 0, 2)
// Memory fences order nothing among fibers of one OS thread; across blocks they are real fences.
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __trap() { lit_emu_trap("__trap() called"); }

// ---------- warp operations (sync points among the lanes named in the mask) ----------
static inline void __syncwarp(unsigned mask = 0xffffffffu) { lit_emu_warp_exchange(mask, 0, "__syncwarp"); }
static inline unsigned __activemask() { return lit_emu_active_mask(); }

template <class T>
static inline uint64_t lit_emu_to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <class T>
static inline T lit_emu_from_bits(uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}
// Lane `src` of the exchange, or all-ones bits when that lane did not take part (undefined in CUDA).
template <class T>
static inline T lit_emu_lane_value(const LitEmuWarpView& w, int src) {
    if (src < 0 || src > 31 || !((w.valid >> src) & 1u)) return lit_emu_from_bits<T>(~uint64_t(0));
    return lit_emu_from_bits<T>(w.value[src]);
}

template <class T>
static inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    LitEmuWarpView w = lit_emu_warp_exchange(mask, lit_emu_to_bits(var), "__shfl_sync");
    int base = int(w.lane) / width * width;
    return lit_emu_lane_value<T>(w, base + ((src_lane % width) + width) % width);
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    LitEmuWarpView w = lit_emu_warp_exchange(mask, lit_emu_to_bits(var), "__shfl_up_sync");
    int in_group = int(w.lane) % width;
    if (in_group < int(delta)) return var;
    return lit_emu_lane_value<T>(w, int(w.lane) - int(delta));
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    LitEmuWarpView w = lit_emu_warp_exchange(mask, lit_emu_to_bits(var), "__shfl_down_sync");
    int in_group = int(w.lane) % width;
    if (in_group + int(delta) >= width) return var;
    return lit_emu_lane_value<T>(w, int(w.lane) + int(delta));
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    LitEmuWarpView w = lit_emu_warp_exchange(mask, lit_emu_to_bits(var), "__shfl_xor_sync");
    int src = int(w.lane) ^ lane_mask;
    // A lane may read from earlier groups of `width` lanes, never from later ones.
    if (src >= (int(w.lane) / width + 1) * width) return var;
    return lit_emu_lane_value<T>(w, src);
}
static inline unsigned __ballot_sync(unsigned mask, int predicate) {
    LitEmuWarpView w = lit_emu_warp_exchange(mask, predicate ? 1 : 0, "__ballot_sync");
    unsigned ballot = 0;
    for (int i = 0; i < 32; i++)
        if (((w.valid >> i) & 1u) && w.value[i]) ballot |= 1u << i;
    return ballot;
}
static inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
static inline int __all_sync(unsigned mask, int predicate) {
    LitEmuWarpView w = lit_emu_warp_exchange(mask, predicate ? 1 : 0, "__all_sync");
    for (int i = 0; i < 32; i++)
        if (((w.valid >> i) & 1u) && !w.value[i]) return 0;
    return 1;
}
#define LIT_EMU_WARP_REDUCE(NAME, T, INIT, COMBINE)                              \
    static inline T NAME(unsigned mask, T value) {                               \
        LitEmuWarpView w = lit_emu_warp_exchange(mask, lit_emu_to_bits(value), #NAME); \
        T acc = INIT;                                                            \
        for (int i = 0; i < 32; i++)                                             \
            if ((w.valid >> i) & 1u) {                                           \
                T v = lit_emu_from_bits<T>(w.value[i]);                          \
                acc = COMBINE;                                                   \
            }                                                                    \
        return acc;                                                              \
    }
LIT_EMU_WARP_REDUCE(__reduce_add_sync, int, 0, acc + v)
LIT_EMU_WARP_REDUCE(__reduce_add_sync, unsigned, 0u, acc + v)
LIT_EMU_WARP_REDUCE(__reduce_min_sync, int, 0x7fffffff, (v < acc ? v : acc))
LIT_EMU_WARP_REDUCE(__reduce_min_sync, unsigned, 0xffffffffu, (v < acc ? v : acc))
LIT_EMU_WARP_REDUCE(__reduce_max_sync, int, int(0x80000000u), (v > acc ? v : acc))
LIT_EMU_WARP_REDUCE(__reduce_max_sync, unsigned, 0u, (v > acc ? v : acc))
LIT_EMU_WARP_REDUCE(__reduce_and_sync, unsigned, 0xffffffffu, acc & v)
LIT_EMU_WARP_REDUCE(__reduce_or_sync, unsigned, 0u, acc | v)
LIT_EMU_WARP_REDUCE(__reduce_xor_sync, unsigned, 0u, acc ^ v)

// ---------- atomics (relaxed, like device-scope CUDA atomics; return the old value) ----------
#define LIT_EMU_ATOMIC_INT(T)                                                                              \
    static inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }            \
    static inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }            \
    static inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }            \
    static inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }              \
    static inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }            \
    static inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }          \
    static inline T atomicCAS(T* a, T expected, T desired) {                                               \
        __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);     \
        return expected;                                                                                   \
    }                                                                                                      \
    static inline T atomicMax(T* a, T v) {                                                                 \
        T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                                      \
        while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
        }                                                                                                  \
        return old;                                                                                        \
    }                                                                                                      \
    static inline T atomicMin(T* a, T v) {                                                                 \
        T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                                      \
        while (old > v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
        }                                                                                                  \
        return old;                                                                                        \
    }
LIT_EMU_ATOMIC_INT(int)
LIT_EMU_ATOMIC_INT(unsigned)
LIT_EMU_ATOMIC_INT(long long)
LIT_EMU_ATOMIC_INT(unsigned long long)

// Floating point: compare-and-swap on the bit pattern, as CUDA did before native float atomics.
template <class F, class B, class Op>
static inline F lit_emu_atomic_float(F* a, Op op) {
    B* bits = reinterpret_cast<B*>(a);
    B old = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        F now;
        std::memcpy(&now, &old, sizeof(F));
        F next = op(now);
        B next_bits;
        std::memcpy(&next_bits, &next, sizeof(F));
        if (__atomic_compare_exchange_n(bits, &old, next_bits, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return now;
    }
}
static inline float atomicAdd(float* a, float v) {
    return lit_emu_atomic_float<float, uint32_t>(a, [v](float x) { return x + v; });
}
static inline double atomicAdd(double* a, double v) {
    return lit_emu_atomic_float<double, uint64_t>(a, [v](double x) { return x + v; });
}
static inline float atomicExch(float* a, float v) {
    return lit_emu_atomic_float<float, uint32_t>(a, [v](float) { return v; });
}
static inline float atomicMax(float* a, float v) {
    return lit_emu_atomic_float<float, uint32_t>(a, [v](float x) { return std::fmax(x, v); });
}
static inline float atomicMin(float* a, float v) {
    return lit_emu_atomic_float<float, uint32_t>(a, [v](float x) { return std::fmin(x, v); });
}
#define atomicAdd_block atomicAdd
#define atomicMax_block atomicMax
#define atomicMin_block atomicMin

// ---------- math ----------
// libm's float functions (expf, logf, sqrtf, tanhf, fmaxf, ...) come from <cmath>; rintf and
// nearbyintf round half to even in the default rounding mode, like CUDA.
static inline float __int_as_float(int i) { return lit_emu_from_bits<float>(uint32_t(i)); }
static inline int __float_as_int(float f) { return int(uint32_t(lit_emu_to_bits(f))); }
static inline float __uint_as_float(unsigned i) { return lit_emu_from_bits<float>(i); }
static inline unsigned __float_as_uint(float f) { return uint32_t(lit_emu_to_bits(f)); }
static inline double __longlong_as_double(long long i) { return lit_emu_from_bits<double>(uint64_t(i)); }
static inline long long __double_as_longlong(double d) { return (long long)lit_emu_to_bits(d); }
// CUDA has these unqualified, as C99 does; <cmath> puts them in std only.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

// glibc already declares these names (as its own aliases), so they are macros here.
#define __expf(x) expf(x)
#define __exp10f(x) powf(10.0f, (x))
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __powf(x, y) powf((x), (y))
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __tanhf(x) tanhf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline int __float2int_rn(float x) { return int(nearbyintf(x)); }
static inline int __float2int_rz(float x) { return int(x); }
static inline int __float2int_rd(float x) { return int(floorf(x)); }
static inline int __float2int_ru(float x) { return int(ceilf(x)); }
static inline float __int2float_rn(int x) { return float(x); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <class T>
static inline T __ldg(const T* p) { return *p; }

// CUDA's integer/float min and max overloads (mixed signedness converts to unsigned, as in CUDA).
#define LIT_EMU_MINMAX(R, A, B)                              \
    static inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
    static inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
LIT_EMU_MINMAX(int, int, int)
LIT_EMU_MINMAX(unsigned, unsigned, unsigned)
LIT_EMU_MINMAX(unsigned, int, unsigned)
LIT_EMU_MINMAX(unsigned, unsigned, int)
LIT_EMU_MINMAX(long long, long long, long long)
LIT_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
LIT_EMU_MINMAX(long, long, long)
LIT_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(float a, double b) { return fmin(a, b); }
static inline double max(float a, double b) { return fmax(a, b); }
static inline double min(double a, float b) { return fmin(a, b); }
static inline double max(double a, float b) { return fmax(a, b); }

// ---------- half precision (storage and conversions; arithmetic goes through float) ----------
// Conversions by explicit bit arithmetic, round to nearest even with subnormals, infinities and
// NaN handled exactly as the Rust `half` crate does (tests/emu_runtime.rs compares every class bit
// for bit), so emu kernels and the cpu path's `Precision::round` cannot disagree. (CUDA's own
// __float2bfloat16 returns the canonical NaN 0x7fff; a NaN operand gives NaN either way.)
static inline uint16_t lit_emu_f32_to_f16_bits(float f) {
    uint32_t x = __float_as_uint(f);
    uint32_t sign = (x >> 16) & 0x8000u, exp = x & 0x7f800000u, man = x & 0x007fffffu;
    if (exp == 0x7f800000u) return uint16_t(sign | 0x7c00u | (man ? 0x0200u : 0u) | (man >> 13));
    int half_exp = int(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1f) return uint16_t(sign | 0x7c00u);  // overflow: infinity
    if (half_exp <= 0) {                                     // subnormal or zero
        if (14 - half_exp > 24) return uint16_t(sign);
        man |= 0x00800000u;
        uint32_t half_man = man >> (14 - half_exp);
        uint32_t round_bit = 1u << (13 - half_exp);
        if ((man & round_bit) && (man & (3u * round_bit - 1u))) half_man++;
        return uint16_t(sign | half_man);
    }
    uint32_t bits = sign | (uint32_t(half_exp) << 10) | (man >> 13);
    // Round up past the half-way point, or at it when the kept mantissa is odd (a carry into the
    // exponent is right, up to infinity).
    if ((man & 0x1000u) && (man & (3u * 0x1000u - 1u))) bits++;
    return uint16_t(bits);
}
static inline float lit_emu_f16_bits_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = h & 0x7c00u, man = h & 0x03ffu;
    if (exp == 0x7c00u) return __uint_as_float(sign | 0x7f800000u | (man ? 0x00400000u | (man << 13) : 0u));
    if (exp == 0) {
        if (man == 0) return __uint_as_float(sign);
        int e = __builtin_clz(man) - 22;  // normalising shift (the half crate's leading_zeros_u16 - 6)
        return __uint_as_float(sign | (uint32_t(127 - 15 - e) << 23) | ((man << (14 + e)) & 0x007fffffu));
    }
    return __uint_as_float(sign | ((exp >> 10) + 127 - 15) << 23 | (man << 13));
}
static inline uint16_t lit_emu_f32_to_bf16_bits(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // NaN stays (quiet) NaN
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                  // to nearest even
}
static inline float lit_emu_bf16_bits_to_f32(uint16_t b) {
    uint32_t u = uint32_t(b) << 16;
    return __uint_as_float((b & 0x7fffu) > 0x7f80u ? u | 0x00400000u : u);
}

struct __half {
    uint16_t __x;
    __half() = default;
    __half(float f) : __x(lit_emu_f32_to_f16_bits(f)) {}
    operator float() const { return lit_emu_f16_bits_to_f32(__x); }
};
static inline __half __float2half(float f) { return __half(f); }
static inline __half __float2half_rn(float f) { return __half(f); }
static inline float __half2float(__half h) { return float(h); }

struct __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(lit_emu_f32_to_bf16_bits(f)) {}
    operator float() const { return lit_emu_bf16_bits_to_f32(__x); }
};
static inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
static inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline __half __ushort_as_half(unsigned short bits) {
    __half h;
    h.__x = bits;
    return h;
}
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) {
    __nv_bfloat16 h;
    h.__x = bits;
    return h;
}
