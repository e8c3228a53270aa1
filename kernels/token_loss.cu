// Token-level translation losses over log-probabilities [rows = T*B, cols = V]: masked NLL sum and
// KL(teacher || student) sum over ALL rows, combined and divided by the sentences B.
// CPU reference: src/ops/token_loss.rs.
#include "common.cuh"
#include "partials.cuh"

// Mirrors ops::token_loss::TokenLossParams.
struct TokenLossParams {
    int rows;
    int cols;
    int pad_index;    // targets equal to it add nothing to the NLL
    int has_teacher;  // 0: no KL term (teacher_logp is null)
    float nll_weight;
    float kl_weight;
    float sentences;  // B: the combined loss is divided by it
    int pad;
};

// One block (PARTIAL_THREADS threads) per row, grid-strided over rows:
// row_nll = -x[y] (0 at the pad index, NaN for a target out of range: never an out-of-bounds read);
// row_kl = sum_v where(p > 0, p*(log p - x), 0) with p = exp(teacher_logp), each term in float as
// torch's kl_div, the row summed in double.
extern "C" __global__ void token_loss_rows_f32(const float* logp, const int* targets, const float* teacher_logp,
                                               double* row_nll, double* row_kl, TokenLossParams p) {
    __shared__ double scratch[PARTIAL_THREADS];
    for (int row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const float* x = logp + (long long)row * p.cols;
        double kl = 0.0;
        if (p.has_teacher) {
            const float* t = teacher_logp + (long long)row * p.cols;
            for (int v = threadIdx.x; v < p.cols; v += blockDim.x) {
                const float pt = expf(t[v]);
                if (pt > 0.0f) kl += (double)__fmul_rn(pt, __fsub_rn(logf(pt), x[v]));
            }
        }
        kl = block_sum_f64(kl, scratch);
        if (threadIdx.x == 0) {
            const int y = targets[row];
            double nll = 0.0;
            if (y != p.pad_index) nll = (y >= 0 && y < p.cols) ? -(double)x[y] : (double)__int_as_float(0x7fc00000);
            row_nll[row] = nll;
            row_kl[row] = kl;
        }
    }
}

// One block of PARTIAL_THREADS threads: the row sums added in double in a fixed order.
// sums = [nll_sum, kl_sum, loss], loss[0] = (nll_weight*nll_sum + kl_weight*kl_sum) / sentences.
extern "C" __global__ void token_loss_reduce_f32(const double* row_nll, const double* row_kl, float* sums,
                                                 float* loss, TokenLossParams p) {
    __shared__ double scratch[PARTIAL_THREADS];
    double nll = 0.0, kl = 0.0;
    for (int i = threadIdx.x; i < p.rows; i += blockDim.x) {
        nll += row_nll[i];
        kl += row_kl[i];
    }
    nll = block_sum_f64(nll, scratch);
    kl = block_sum_f64(kl, scratch);
    if (threadIdx.x == 0) {
        const double l = ((double)p.nll_weight * nll + (double)p.kl_weight * kl) / (double)p.sentences;
        sums[0] = (float)nll;
        sums[1] = (float)kl;
        sums[2] = (float)l;
        loss[0] = (float)l;
    }
}

// d loss / d logp = dloss/B * (-nll_weight*[col == y != pad] - kl_weight*exp(teacher_logp)).
extern "C" __global__ void token_loss_backward_f32(const int* targets, const float* teacher_logp,
                                                   const float* dloss, float* dx, TokenLossParams p) {
    const float g = dloss[0] / p.sentences;
    GRID_STRIDE(i, p.rows * p.cols) {
        const int row = i / p.cols, col = i - row * p.cols;
        const int y = targets[row];
        float d = (y != p.pad_index && y == col) ? -p.nll_weight : 0.0f;
        if (p.has_teacher) d -= p.kl_weight * expf(teacher_logp[i]);
        dx[i] = g * d;
    }
}
