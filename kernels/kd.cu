// MSE and the knowledge-distillation losses of the four seeds (SPEC-NOTES §7). CPU reference:
// src/ops/kd.rs. Every KD variant is L = a_soft * sum_i S_i + a_hard * sum_i CE_i with S_i the soft
// cross-entropy H(p_i, q_i) or KL(p_i || q_i) at temperature T (p = softmax(t/T), q = softmax(s/T)) and
// CE_i = -log_softmax(s_i)[y_i]. Rows are computed in double (KL of close distributions cancels
// heavily) and summed in a fixed order.
#include "common.cuh"
#include "partials.cuh"

// ---------- MSE ----------

// Mirrors ops::kd::MseParams: n elements; scale = 2/n for the backward.
struct MseParams {
    int n;
    float scale;
};

// partial[block] = sum of (a - b)^2 over this block's slice
extern "C" __global__ void mse_partial_f32(const float* a, const float* b, double* partial, MseParams p) {
    __shared__ double scratch[PARTIAL_THREADS];
    double mine = 0.0;
    GRID_STRIDE(i, p.n) {
        const double d = (double)a[i] - (double)b[i];
        mine += d * d;
    }
    const double total = block_sum_f64(mine, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// da = dloss * (2/n) * (a - b)
extern "C" __global__ void mse_backward_f32(const float* a, const float* b, const float* dloss, float* da,
                                            MseParams p) {
    const float g = dloss[0] * p.scale;
    GRID_STRIDE(i, p.n) { da[i] = g * (a[i] - b[i]); }
}

// ---------- KD ----------

// Mirrors ops::kd::KdParams. soft_kl: S_i is KL (1) or the soft cross-entropy H (0).
// Loss = a_soft*sum S + a_hard*sum CE; components c_soft*sum S and c_hard*sum CE.
struct KdParams {
    int rows;
    int cols;
    int soft_kl;
    int pad;
    double temperature;
    double a_soft;
    double a_hard;
    double c_soft;
    double c_hard;
};

// Threads per row block of kd_rows_f64 and of kd_reduce_f64.
#define KD_THREADS 128

static __device__ inline double block_max_f64(double mine, double* scratch) {
    scratch[threadIdx.x] = mine;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) scratch[threadIdx.x] = fmax(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
        __syncthreads();
    }
    const double m = scratch[0];
    __syncthreads();
    return m;
}

// One block per row: row_soft[r] = S_r, row_ce[r] = CE_r, row_lse[r] = {lse(s/T), lse(t/T), lse(s)}.
extern "C" __global__ void kd_rows_f64(const float* s, const float* t, const int* labels, double* row_soft,
                                       double* row_ce, double* row_lse, KdParams p) {
    __shared__ double scratch[KD_THREADS];
    const double T = p.temperature;
    for (int r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const float* sr = s + (long long)r * p.cols;
        const float* tr = t + (long long)r * p.cols;
        double ms = LIT_NEG_INF, mt = LIT_NEG_INF, m1 = LIT_NEG_INF;
        for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
            ms = fmax(ms, (double)sr[c] / T);
            mt = fmax(mt, (double)tr[c] / T);
            m1 = fmax(m1, (double)sr[c]);
        }
        ms = block_max_f64(ms, scratch);
        mt = block_max_f64(mt, scratch);
        m1 = block_max_f64(m1, scratch);
        double es = 0.0, et = 0.0, e1 = 0.0;
        for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
            es += exp((double)sr[c] / T - ms);
            et += exp((double)tr[c] / T - mt);
            e1 += exp((double)sr[c] - m1);
        }
        const double lse_s = ms + log(block_sum_f64(es, scratch));
        const double lse_t = mt + log(block_sum_f64(et, scratch));
        const double lse_1 = m1 + log(block_sum_f64(e1, scratch));
        double soft = 0.0;
        for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
            const double logp = (double)tr[c] / T - lse_t;
            const double logq = (double)sr[c] / T - lse_s;
            const double pc = exp(logp);
            if (pc > 0.0) soft += p.soft_kl ? pc * (logp - logq) : -pc * logq;
        }
        soft = block_sum_f64(soft, scratch);
        if (threadIdx.x == 0) {
            const int y = labels[r];
            row_soft[r] = soft;
            // The host checks labels; one out of range still never indexes memory and yields NaN.
            row_ce[r] = (y >= 0 && y < p.cols) ? lse_1 - (double)sr[y] : __longlong_as_double(0x7ff8000000000000LL);
            row_lse[3 * r + 0] = lse_s;
            row_lse[3 * r + 1] = lse_t;
            row_lse[3 * r + 2] = lse_1;
        }
    }
}

// One block of KD_THREADS: out = {loss, component soft, component hard} from the row values.
extern "C" __global__ void kd_reduce_f64(const double* row_soft, const double* row_ce, float* loss, float* comp_soft,
                                         float* comp_hard, KdParams p) {
    __shared__ double scratch[KD_THREADS];
    double ms = 0.0, mc = 0.0;
    for (int r = threadIdx.x; r < p.rows; r += blockDim.x) {
        ms += row_soft[r];
        mc += row_ce[r];
    }
    const double soft = block_sum_f64(ms, scratch);
    const double ce = block_sum_f64(mc, scratch);
    if (threadIdx.x == 0) {
        *loss = (float)(p.a_soft * soft + p.a_hard * ce);
        *comp_soft = (float)(p.c_soft * soft);
        *comp_hard = (float)(p.c_hard * ce);
    }
}

// ds = dloss * (a_soft * (q - p) / T + a_hard * (softmax(s) - onehot(y)))   (KL and H share it)
extern "C" __global__ void kd_backward_f32(const float* s, const float* t, const int* labels, const double* row_lse,
                                           const float* dloss, float* ds, KdParams p) {
    const double g = (double)dloss[0];
    const double T = p.temperature;
    GRID_STRIDE(i, p.rows * p.cols) {
        const int r = i / p.cols, c = i - r * p.cols;
        const double q = exp((double)s[i] / T - row_lse[3 * r + 0]);
        const double pt = exp((double)t[i] / T - row_lse[3 * r + 1]);
        const double sm = exp((double)s[i] - row_lse[3 * r + 2]);
        const double hard = sm - (labels[r] == c ? 1.0 : 0.0);
        ds[i] = (float)(g * (p.a_soft * (q - pt) / T + p.a_hard * hard));
    }
}
