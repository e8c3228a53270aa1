// Convolution kernels. CPU reference: src/ops/conv.rs.
//
// With `col[n][k][p]`, k = (c, i, j) the weight's own order and p = (oh, ow), per image
// `y[O, P] = W[O, K] · col[K, P]` (forward: conv2d_implicit_*, an implicit GEMM that never
// writes col; also the input gradient of stride-1 convs, a conv of dy with the flipped weight:
// conv2d_implicit_*flip_f32, which read w flipped in place),
// and with gemm_f32 (kernels/gemm.cu) for the input gradient of strided convs:
// `dcol[K, P] = Wᵀ · dy[O, P]`, folded back by col2im_f32. The weight gradient
// `dW[O, K] = Σ_n dy_n[O, P] · col_nᵀ` is conv2d_weight_grad_f32 (an implicit GEMM over the
// reduction (image, pixel), split into slices, one partial dW per slice) followed by
// conv_sum_partials_f32 (slices summed in order, so results are deterministic).
#include "common.cuh"

// Every kernel takes one struct by value, its pointers then its parameters (ConvParams, the
// geometry shared by all but conv_sum_partials_f32, or PartialSumParams). Each struct mirrors the
// Rust struct of the same name in src/ops/conv/gpu.rs; the static_asserts pin the sizes its
// layout test checks (tests.rs: launch_structs_match_the_kernels_layout).

#include "conv_params.cuh"

// dx[n][c][ih][iw] = Σ over the (i, j) whose window covers (ih, iw) of dcol[n][(c, i, j)][(oh, ow)].
// A gather (one thread per input element, fixed summation order): no atomics, deterministic.
// Mirrors ops::conv::gpu's Col2imArgs.
struct Col2imArgs {
    const float* dcol;
    float* dx;
    ConvParams p;
};
static_assert(sizeof(Col2imArgs) == 80, "mirrors ops::conv::gpu's Col2imArgs");

extern "C" __global__ void col2im_f32(Col2imArgs a) {
    const float* dcol = a.dcol;
    float* dx = a.dx;
    const ConvParams& p = a.p;
    const int pixels = p.oh * p.ow;
    const int k = p.c * p.kh * p.kw;
    const int total = p.n * p.c * p.h * p.w;
    GRID_STRIDE(idx, total) {
        const int iw = idx % p.w;
        const int ih = (idx / p.w) % p.h;
        const int c = (idx / (p.w * p.h)) % p.c;
        const int n = idx / (p.w * p.h * p.c);
        const float* base = dcol + (long long)n * k * pixels;
        float acc = 0.0f;
        for (int i = 0; i < p.kh; ++i) {
            const int th = ih + p.ph - i;  // = oh * sh when this kernel row covers ih
            if (th < 0 || th % p.sh != 0) continue;
            const int oh = th / p.sh;
            if (oh >= p.oh) continue;
            for (int j = 0; j < p.kw; ++j) {
                const int tw = iw + p.pw - j;
                if (tw < 0 || tw % p.sw != 0) continue;
                const int ow = tw / p.sw;
                if (ow >= p.ow) continue;
                acc += base[(long long)((c * p.kh + i) * p.kw + j) * pixels + oh * p.ow + ow];
            }
        }
        dx[idx] = acc;
    }
}

// Mirrors ops::conv::PartialSumParams.
struct PartialSumParams {
    int parts;       // number of partial results
    int len;         // elements of each
    int accumulate;  // 1: out += sum, 0: out = sum
    int pad;         // keeps the size a multiple of 8: no padding after it in SumPartialsArgs
};
static_assert(sizeof(PartialSumParams) == 16, "mirrors ops::conv::PartialSumParams");

// Mirrors ops::conv::gpu's SumPartialsArgs.
struct SumPartialsArgs {
    const float* partials;
    float* out;
    PartialSumParams p;
};
static_assert(sizeof(SumPartialsArgs) == 32, "mirrors ops::conv::gpu's SumPartialsArgs");

// out[e] (+)= Σ_{q < parts} partials[q * len + e], summed in q order.
extern "C" __global__ void conv_sum_partials_f32(SumPartialsArgs a) {
    const float* partials = a.partials;
    float* out = a.out;
    const PartialSumParams& p = a.p;
    GRID_STRIDE(e, p.len) {
        float acc = p.accumulate ? out[e] : 0.0f;
        for (int q = 0; q < p.parts; ++q) acc += partials[(long long)q * p.len + e];
        out[e] = acc;
    }
}

// ---------- forward: implicit GEMM ----------
//
// y[n][o][p] = epilogue(Σ_k W[o][k] · col_n[k][p]) with the batch folded into the GEMM's N
// dimension: column q = n * P + p. The tiling is gemm_f32's (256 threads, a 4x4 micro-tile per
// thread, k-major shared tiles, BK = 16), so the FMA loop is the same; only the B tile differs:
// its elements are read from x where im2col would have put them, zero outside the image, and col
// is never written. The block tile is BM x BN with BM * BN = 4096: BM = 64 (conv2d_implicit_f32),
// 32 (conv2d_implicit_o32_f32) or 16 (conv2d_implicit_o16_f32), so that O = 16 or 32 output
// channels fill their tile instead of leaving 3/4 or 1/2 of a 64-row tile empty.
//
// B-tile addressing: thread t stages row r = t / 16 of each 16-deep k step and the BN / 16
// columns t % 16 + 16 q (16 consecutive threads read 16 consecutive output pixels). The column
// decode (image, oh, ow) is hoisted out of the k loop into, per column, the offset of x[n][0][ih0][iw0]
// (ih0 = oh*sh - ph, iw0 = ow*sw - pw) and (ih0, iw0) themselves. The thread's row k = k0 + r is
// carried as (c, i, j), advanced by 16 per step as a mixed-radix addition (no divisions in the
// loop); element (k, q) is x[off_q + (c*h + i)*w + j] when 0 <= ih0_q + i < h and
// 0 <= iw0_q + j < w, else 0.
//
// Epilogue, per output channel o (each optional, in this order — the separate ops' arithmetic:
// gemm_f32 with beta = 1 over the broadcast bias, then batchnorm_forward_eval_f32's bn_apply):
// + bias[o]; BatchNorm-eval (v - mean[o]) * scale + shift with invstd = 1/sqrt(var[o] + eps),
// scale = gamma[o]*invstd, shift = beta[o] (invstd and 0 without gamma/beta); + residual (shaped like
// y); ReLU (p.relu). Null pointers switch the steps off (mean: the BatchNorm; gamma: its affine part).
#define CONV_BK 16
#define CONV_TM 4
#define CONV_TN 4
#define CONV_THREADS 256  // (BM / CONV_TM) * (BN / CONV_TN)
#define CONV_APAD 4       // As rows 16-byte aligned, transposing stores spread over banks
#define CONV_BPAD 16      // Bs row stride = 16 mod 32: a warp's two rows of stores hit 32 banks

// Mirrors ops::conv::gpu's ImplicitArgs: the arguments of every conv2d_implicit_* kernel. x is
// dy and wt the weight being flipped in the *flip* kernels.
struct ImplicitArgs {
    const float* x;
    const float* wt;
    const float* bias;
    const float* bn_mean;
    const float* bn_var;
    const float* bn_gamma;
    const float* bn_beta;
    const float* residual;
    float* y;
    ConvParams p;
};
static_assert(sizeof(ImplicitArgs) == 136, "mirrors ops::conv::gpu's ImplicitArgs");

template <int BM, bool FLIP>
__device__ __forceinline__ void conv_implicit_tile(const ImplicitArgs& a) {
    const float *x = a.x, *wt = a.wt, *bias = a.bias, *residual = a.residual;
    const float *bn_mean = a.bn_mean, *bn_var = a.bn_var, *bn_gamma = a.bn_gamma,
                *bn_beta = a.bn_beta;
    float* y = a.y;
    const ConvParams& p = a.p;
    constexpr int BN = CONV_THREADS * CONV_TM * CONV_TN / BM;
    constexpr int B_COLS = CONV_BK * BN / CONV_THREADS;  // B columns staged per thread
    constexpr int A_LOADS = BM * CONV_BK / CONV_THREADS;  // W elements staged per thread
    // Two of each tile: step k0 + BK is read from memory into registers while step k0's tiles
    // are multiplied, then stored to the other pair (one barrier a step).
    __shared__ float As[2][CONV_BK][BM + CONV_APAD];
    __shared__ float Bs[2][CONV_BK][BN + CONV_BPAD];

    const int tid = threadIdx.x;
    const int tx = tid % (BN / CONV_TN);  // micro-tile column
    const int ty = tid / (BN / CONV_TN);  // micro-tile row
    const int row0 = blockIdx.y * BM;     // output channels
    const int col0 = blockIdx.x * BN;     // (image, pixel) columns
    const int pixels = p.oh * p.ow;
    const int ncols = p.n * pixels;
    const int kk_area = p.kh * p.kw;
    const int k = p.c * kk_area;
    const int plane = p.h * p.w;

    // The thread's B columns, decoded once. A column past the end gets ih0 far below 0, so every
    // bounds test fails and it stages zeros.
    const int b_row = tid / 16;
    long long b_off[B_COLS];
    int b_ih0[B_COLS], b_iw0[B_COLS];
    for (int q = 0; q < B_COLS; ++q) {
        const int gj = col0 + tid % 16 + 16 * q;
        if (gj < ncols) {
            const int img = gj / pixels, pix = gj - img * pixels;
            const int oh = pix / p.ow, ow = pix - oh * p.ow;
            b_ih0[q] = oh * p.sh - p.ph;
            b_iw0[q] = ow * p.sw - p.pw;
            b_off[q] = (long long)img * p.c * plane + (long long)b_ih0[q] * p.w + b_iw0[q];
        } else {
            b_ih0[q] = -0x40000000;
            b_iw0[q] = 0;
            b_off[q] = 0;
        }
    }
    // Row k = k0 + b_row of the next step to load as (c, i, j), and the step of 16 rows in the
    // same radices.
    int kc = b_row / kk_area, ki = (b_row % kk_area) / p.kw, kj = b_row % p.kw;
    const int step_c = CONV_BK / kk_area, step_i = (CONV_BK % kk_area) / p.kw,
              step_j = CONV_BK % p.kw;

    float acc[CONV_TM][CONV_TN];
    for (int i = 0; i < CONV_TM; ++i)
        for (int j = 0; j < CONV_TN; ++j) acc[i][j] = 0.0f;

    float a_next[A_LOADS], b_next[B_COLS];
    // FLIP: the thread's A columns gk = k0 + l % BK as (o, r) of the weight being flipped, carried
    // like (c, i, j) above (no division in the loop).
    int a_ko[A_LOADS], a_kr[A_LOADS];
    for (int t = 0; t < A_LOADS; ++t) {
        const int c = (tid + t * CONV_THREADS) % CONV_BK;
        a_ko[t] = c / kk_area;
        a_kr[t] = c % kk_area;
    }
    const int a_step_o = CONV_BK / kk_area, a_step_r = CONV_BK % kk_area;
// Step k0's W[row0 .. +BM, k0 .. +BK] (row-major [o, k]: consecutive threads walk k) and
// col[k0 + b_row][the thread's columns] (straight from x) into registers.
#define CONV_LOAD_STEP(k0)                                                                      \
    {                                                                                           \
        for (int t = 0; t < A_LOADS; ++t) {                                                     \
            const int l = tid + t * CONV_THREADS, r = l / CONV_BK, c = l % CONV_BK;             \
            const int gi = row0 + r, gk = (k0) + c;                                             \
            float v = 0.0f;                                                                     \
            if (gi < p.o && gk < k) {                                                           \
                if (FLIP) {                                                                     \
                    const long long at = ((long long)a_ko[t] * p.o + gi) * kk_area;             \
                    v = wt[at + (kk_area - 1 - a_kr[t])];                                       \
                } else {                                                                        \
                    v = wt[(long long)gi * k + gk];                                             \
                }                                                                               \
            }                                                                                   \
            a_next[t] = v;                                                                      \
            if (FLIP) {                                                                         \
                a_ko[t] += a_step_o;                                                            \
                a_kr[t] += a_step_r;                                                            \
                if (a_kr[t] >= kk_area) {                                                       \
                    a_kr[t] -= kk_area;                                                         \
                    ++a_ko[t];                                                                  \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        const bool row_ok = kc < p.c;                                                           \
        const long long koff = ((long long)kc * p.h + ki) * p.w + kj;                           \
        for (int q = 0; q < B_COLS; ++q) {                                                      \
            const int ih = b_ih0[q] + ki, iw = b_iw0[q] + kj;                                   \
            float v = 0.0f;                                                                     \
            if (row_ok && ih >= 0 && ih < p.h && iw >= 0 && iw < p.w) v = x[b_off[q] + koff];   \
            b_next[q] = v;                                                                      \
        }                                                                                       \
        kj += step_j;                                                                           \
        if (kj >= p.kw) {                                                                       \
            kj -= p.kw;                                                                         \
            ++ki;                                                                               \
        }                                                                                       \
        ki += step_i;                                                                           \
        if (ki >= p.kh) {                                                                       \
            ki -= p.kh;                                                                         \
            ++kc;                                                                               \
        }                                                                                       \
        kc += step_c;                                                                           \
    }
#define CONV_STORE_STEP(buf)                                                                    \
    {                                                                                           \
        for (int t = 0; t < A_LOADS; ++t) {                                                     \
            const int l = tid + t * CONV_THREADS;                                               \
            As[buf][l % CONV_BK][l / CONV_BK] = a_next[t];                                      \
        }                                                                                       \
        for (int q = 0; q < B_COLS; ++q) Bs[buf][b_row][tid % 16 + 16 * q] = b_next[q];         \
    }
    CONV_LOAD_STEP(0)
    CONV_STORE_STEP(0)
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < k; k0 += CONV_BK) {
        const bool more = k0 + CONV_BK < k;
        if (more) CONV_LOAD_STEP(k0 + CONV_BK)
        for (int kk = 0; kk < CONV_BK; ++kk) {
            float a[CONV_TM], b[CONV_TN];
            for (int i = 0; i < CONV_TM; ++i) a[i] = As[buf][kk][ty * CONV_TM + i];
            for (int j = 0; j < CONV_TN; ++j) b[j] = Bs[buf][kk][tx * CONV_TN + j];
            for (int i = 0; i < CONV_TM; ++i)
                for (int j = 0; j < CONV_TN; ++j) acc[i][j] += a[i] * b[j];
        }
        // The other pair was last read in the previous step, before the barrier that ended it.
        if (more) CONV_STORE_STEP(buf ^ 1)
        __syncthreads();
        buf ^= 1;
    }
#undef CONV_LOAD_STEP
#undef CONV_STORE_STEP

    long long y_col[CONV_TN];  // offset of y[img][0][pix] per micro-tile column, -1 past the end
    for (int j = 0; j < CONV_TN; ++j) {
        const int gj = col0 + tx * CONV_TN + j;
        const int img = gj / pixels, pix = gj - img * pixels;
        y_col[j] = gj < ncols ? (long long)img * p.o * pixels + pix : -1;
    }
    for (int i = 0; i < CONV_TM; ++i) {
        const int o = row0 + ty * CONV_TM + i;
        if (o >= p.o) continue;
        const float b = bias != 0 ? bias[o] : 0.0f;
        float mean = 0.0f, scale = 1.0f, shift = 0.0f;
        if (bn_mean != 0) {
            const float invstd = 1.0f / sqrtf(bn_var[o] + p.eps);
            mean = bn_mean[o];
            scale = bn_gamma != 0 ? bn_gamma[o] * invstd : invstd;
            shift = bn_gamma != 0 ? bn_beta[o] : 0.0f;
        }
        for (int j = 0; j < CONV_TN; ++j) {
            if (y_col[j] < 0) continue;
            const long long at = y_col[j] + (long long)o * pixels;
            float v = acc[i][j];
            if (bias != 0) v += b;
            if (bn_mean != 0) v = (v - mean) * scale + shift;
            if (residual != 0) v += residual[at];
            if (p.relu) v = v > 0.0f ? v : 0.0f;
            y[at] = v;
        }
    }
}

extern "C" __global__ void conv2d_implicit_f32(ImplicitArgs a) {
    conv_implicit_tile<64, false>(a);
}

extern "C" __global__ void conv2d_implicit_o32_f32(ImplicitArgs a) {
    conv_implicit_tile<32, false>(a);
}

extern "C" __global__ void conv2d_implicit_o16_f32(ImplicitArgs a) {
    conv_implicit_tile<16, false>(a);
}

// The input gradient of a stride-1 conv with weight w [O][C][kh][kw]: the same GEMM over dy with
// the weight read flipped and transposed, wf[c][o][i][j] = w[o][c][kh-1-i][kw-1-j] (p.o = C
// output channels, p.c = O input channels). Flipping both i and j reverses (i, j)'s flat index r
// within the window, so wf[c][(o, r)] = w[o][c][area - 1 - r].
extern "C" __global__ void conv2d_implicit_flip_f32(ImplicitArgs a) {
    conv_implicit_tile<64, true>(a);
}

extern "C" __global__ void conv2d_implicit_o32_flip_f32(ImplicitArgs a) {
    conv_implicit_tile<32, true>(a);
}

extern "C" __global__ void conv2d_implicit_o16_flip_f32(ImplicitArgs a) {
    conv_implicit_tile<16, true>(a);
}

// ---------- weight gradient: implicit GEMM with a split reduction ----------
//
// dW[o][k] = Σ_q dy[q's image][o][q's pixel] · col[k][q] over the reduction columns q = n * P + p
// of the launch's images, k = (c, i, j) and col[k][q] = x[n][c][oh*sh - ph + i][ow*sw - pw + j]
// (0 outside the image: conv_implicit_tile's index math; col is never written). Block
// (blockIdx.x, blockIdx.y) owns the dW tile of 64 k columns x BM = ROWS*TM output channels, and
// blockIdx.z the reduction slice q in [z * p.slice, min((z + 1) * p.slice, n * P)); it writes its
// partial tile to partials[z][o][k] (each element by exactly one block, no atomics), summed over
// the slices in order by conv_sum_partials_f32. conv2d_weight_grad_o16_f32 (TM 4, 4 rows of
// threads: 64 threads), conv2d_weight_grad_o32_f32 (TM 2, 16 rows) and conv2d_weight_grad_f32
// (TM 4, 16 rows), so O = 16 or 32 fills its tile.
//
// 16 * ROWS threads, a TM x 4 micro-tile each, 16-deep reduction steps. Staging: thread t handles
// the reduction column q0 + t % 16 (16 consecutive threads: 16 consecutive output pixels,
// coalesced reads of dy and mostly of x) for the A rows o = row0 + t / 16 + ROWS m (m < TM) and
// the B columns k = col0 + t / 16 + ROWS m (m < 64 / ROWS). Its k columns are decoded once into
// (i, j) and the offset of x[0][c][i][j]; its column q is carried as (image, oh, ow), advanced by
// 16 per step.
#define WG_BN 64
#define WG_BK 16
#define WG_TN 4
#define WG_PAD 4  // rows 16-byte aligned

// Mirrors ops::conv::gpu's WeightGradArgs: the arguments of every conv2d_weight_grad_* kernel.
struct WeightGradArgs {
    const float* x;
    const float* dy;
    float* partials;
    ConvParams p;
};
static_assert(sizeof(WeightGradArgs) == 88, "mirrors ops::conv::gpu's WeightGradArgs");

template <int TM, int ROWS>
__device__ __forceinline__ void conv_weight_grad_tile(const WeightGradArgs& a) {
    const float *x = a.x, *dy = a.dy;
    float* partials = a.partials;
    const ConvParams& p = a.p;
    constexpr int BM = ROWS * TM;
    constexpr int WG_K_COLS = WG_BN / ROWS;  // B columns staged per thread
    // Two of each tile, as in conv_implicit_tile: the next step is read into registers while
    // this one is multiplied.
    __shared__ float As[2][WG_BK][BM + WG_PAD];
    __shared__ float Bs[2][WG_BK][WG_BN + WG_PAD];

    const int tid = threadIdx.x;
    const int tx = tid % 16;  // micro-tile column; staged reduction column
    const int ty = tid / 16;  // micro-tile row; staged A row / B column
    const int row0 = blockIdx.y * BM;
    const int col0 = blockIdx.x * WG_BN;
    const int pixels = p.oh * p.ow;
    const int total = p.n * pixels;
    const int kk_area = p.kh * p.kw;
    const int k = p.c * kk_area;
    const int plane = p.h * p.w;
    const int q_begin = blockIdx.z * p.slice;
    const int q_end = min(q_begin + p.slice, total);

    // The thread's B columns. A column past K gets ki far below 0: every bounds test fails.
    int b_ki[WG_K_COLS], b_kj[WG_K_COLS];
    long long b_koff[WG_K_COLS];
    for (int m = 0; m < WG_K_COLS; ++m) {
        const int kc = col0 + ty + ROWS * m;
        if (kc < k) {
            const int c = kc / kk_area, r = kc - c * kk_area;
            b_ki[m] = r / p.kw;
            b_kj[m] = r - b_ki[m] * p.kw;
            b_koff[m] = ((long long)c * p.h + b_ki[m]) * p.w + b_kj[m];
        } else {
            b_ki[m] = -0x40000000;
            b_kj[m] = 0;
            b_koff[m] = 0;
        }
    }
    // The thread's reduction column q = q0 + tx as (image, oh, ow).
    int q = q_begin + tx;
    int img = q / pixels;
    int oh = (q - img * pixels) / p.ow;
    int ow = q - img * pixels - oh * p.ow;

    float acc[TM][WG_TN];
    for (int i = 0; i < TM; ++i)
        for (int j = 0; j < WG_TN; ++j) acc[i][j] = 0.0f;

    float a_next[TM], b_next[WG_K_COLS];
// The step at the thread's column q: dy[img][o][oh, ow] for its A rows and col[k][q] (straight
// from x) for its B columns into registers; then q advances by 16.
#define WG_LOAD_STEP()                                                                          \
    {                                                                                           \
        const bool q_ok = q < q_end;                                                            \
        const long long dy_at = (long long)img * p.o * pixels + oh * p.ow + ow;                 \
        for (int m = 0; m < TM; ++m) {                                                          \
            const int o = row0 + ty + ROWS * m;                                                 \
            a_next[m] = q_ok && o < p.o ? dy[dy_at + (long long)o * pixels] : 0.0f;             \
        }                                                                                       \
        const int ih0 = oh * p.sh - p.ph, iw0 = ow * p.sw - p.pw;                               \
        const long long x_at = (long long)img * p.c * plane + (long long)ih0 * p.w + iw0;       \
        for (int m = 0; m < WG_K_COLS; ++m) {                                                   \
            const int ih = ih0 + b_ki[m], iw = iw0 + b_kj[m];                                   \
            float v = 0.0f;                                                                     \
            if (q_ok && ih >= 0 && ih < p.h && iw >= 0 && iw < p.w) v = x[x_at + b_koff[m]];    \
            b_next[m] = v;                                                                      \
        }                                                                                       \
        q += WG_BK;                                                                             \
        ow += WG_BK;                                                                            \
        while (ow >= p.ow) {                                                                    \
            ow -= p.ow;                                                                         \
            if (++oh == p.oh) {                                                                 \
                oh = 0;                                                                         \
                ++img;                                                                          \
            }                                                                                   \
        }                                                                                       \
    }
#define WG_STORE_STEP(buf)                                                                      \
    {                                                                                           \
        for (int m = 0; m < TM; ++m) As[buf][tx][ty + ROWS * m] = a_next[m];                   \
        for (int m = 0; m < WG_K_COLS; ++m) Bs[buf][tx][ty + ROWS * m] = b_next[m];             \
    }
    int buf = 0;
    if (q_begin < q_end) {
        WG_LOAD_STEP()
        WG_STORE_STEP(0)
    }
    __syncthreads();
    for (int q0 = q_begin; q0 < q_end; q0 += WG_BK) {
        const bool more = q0 + WG_BK < q_end;
        if (more) WG_LOAD_STEP()
        for (int kk = 0; kk < WG_BK; ++kk) {
            float a[TM], b[WG_TN];
            for (int i = 0; i < TM; ++i) a[i] = As[buf][kk][ty * TM + i];
            for (int j = 0; j < WG_TN; ++j) b[j] = Bs[buf][kk][tx * WG_TN + j];
            for (int i = 0; i < TM; ++i)
                for (int j = 0; j < WG_TN; ++j) acc[i][j] += a[i] * b[j];
        }
        // The other pair was last read in the previous step, before the barrier that ended it.
        if (more) WG_STORE_STEP(buf ^ 1)
        __syncthreads();
        buf ^= 1;
    }
#undef WG_LOAD_STEP
#undef WG_STORE_STEP

    float* out = partials + (long long)blockIdx.z * p.o * k;
    for (int i = 0; i < TM; ++i) {
        const int o = row0 + ty * TM + i;
        if (o >= p.o) continue;
        for (int j = 0; j < WG_TN; ++j) {
            const int kc = col0 + tx * WG_TN + j;
            if (kc < k) out[(long long)o * k + kc] = acc[i][j];
        }
    }
}

extern "C" __global__ void conv2d_weight_grad_f32(WeightGradArgs a) {
    conv_weight_grad_tile<4, 16>(a);
}

extern "C" __global__ void conv2d_weight_grad_o32_f32(WeightGradArgs a) {
    conv_weight_grad_tile<2, 16>(a);
}

extern "C" __global__ void conv2d_weight_grad_o16_f32(WeightGradArgs a) {
    conv_weight_grad_tile<4, 4>(a);
}
