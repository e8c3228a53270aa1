// Learned activations of the LMA repo's baselines: PReLU with one scalar alpha, Swish(dim), APLU(dim,
// num_bins). CPU reference: src/ops/activation.rs. Parameter gradients are reductions: per-block
// partial sums in double (partials.cuh), then sum_partials_f64 (partials.cu) in a fixed order.
#include "common.cuh"
#include "partials.cuh"

// Mirrors ops::activation::ActParams. n elements; parameter index d = (flat index) mod dim; hinges =
// S of APLU. rows/chunk_rows: the [rows = n/dim, dim] view split into chunks of chunk_rows rows
// (one block row of the parameter-gradient grid per chunk).
struct ActParams {
    int n;
    int dim;
    int hinges;
    int rows;
    int chunk_rows;
};

// ---------- PReLU (scalar alpha): y = relu(x) - alpha*relu(-x) ----------

extern "C" __global__ void prelu_forward_f32(const float* x, const float* alpha, float* y, ActParams p) {
    const float a = alpha[0];
    GRID_STRIDE(i, p.n) {
        const float v = x[i];
        y[i] = (v > 0.0f ? v : 0.0f) - a * (v < 0.0f ? -v : 0.0f);
    }
}

// dx = dy for x > 0, alpha*dy for x < 0, 0 at x == 0 (relu'(0) = 0 on both sides).
extern "C" __global__ void prelu_backward_x_f32(const float* x, const float* alpha, const float* dy, float* dx,
                                                ActParams p) {
    const float a = alpha[0];
    GRID_STRIDE(i, p.n) {
        const float v = x[i];
        dx[i] = v > 0.0f ? dy[i] : (v < 0.0f ? a * dy[i] : 0.0f);
    }
}

// partial[block] = sum over this block's slice of dy*x where x < 0   (dalpha = sum dy * -relu(-x))
extern "C" __global__ void prelu_alpha_partial_f32(const float* x, const float* dy, double* partial, ActParams p) {
    __shared__ double scratch[PARTIAL_THREADS];
    double mine = 0.0;
    GRID_STRIDE(i, p.n) {
        if (x[i] < 0.0f) mine += (double)dy[i] * (double)x[i];
    }
    const double total = block_sum_f64(mine, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// ---------- column partial sums over the [rows, dim] view ----------
// Block (32, 8): threadIdx.x picks a column, threadIdx.y one of 8 row lanes; blockIdx.y the chunk of
// rows. Returns the block's column total to the threadIdx.y == 0 row (fixed-order tree).
static __device__ inline double column_tree(double mine, double (*scratch)[32]) {
    scratch[threadIdx.y][threadIdx.x] = mine;
    __syncthreads();
    for (int stride = 4; stride > 0; stride >>= 1) {
        if ((int)threadIdx.y < stride) scratch[threadIdx.y][threadIdx.x] += scratch[threadIdx.y + stride][threadIdx.x];
        __syncthreads();
    }
    const double total = scratch[0][threadIdx.x];
    __syncthreads();
    return total;
}

// ---------- Swish: y = x * sigmoid(betas[d] * x) ----------

static __device__ inline float sigmoid_f32(float z) { return 1.0f / (1.0f + expf(-z)); }

extern "C" __global__ void swish_forward_f32(const float* x, const float* betas, float* y, ActParams p) {
    GRID_STRIDE(i, p.n) {
        const float v = x[i];
        y[i] = v * sigmoid_f32(betas[i % p.dim] * v);
    }
}

// dx = dy * (s + x*s*(1-s)*beta), s = sigmoid(beta*x)
extern "C" __global__ void swish_backward_x_f32(const float* x, const float* betas, const float* dy, float* dx,
                                                ActParams p) {
    GRID_STRIDE(i, p.n) {
        const float v = x[i], b = betas[i % p.dim];
        const float s = sigmoid_f32(b * v);
        dx[i] = dy[i] * (s + v * s * (1.0f - s) * b);
    }
}

// partial[chunk, d] = sum over the chunk's rows of dy * x^2 * s*(1-s)   (dbetas)
extern "C" __global__ void swish_betas_partial_f32(const float* x, const float* betas, const float* dy,
                                                   double* partial, ActParams p) {
    __shared__ double scratch[8][32];
    const int d = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * p.chunk_rows;
    const int r1 = min(r0 + p.chunk_rows, p.rows);
    double mine = 0.0;
    if (d < p.dim) {
        const float b = betas[d];
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            const long long i = (long long)r * p.dim + d;
            const float v = x[i];
            const float s = sigmoid_f32(b * v);
            mine += (double)dy[i] * (double)(v * v * s * (1.0f - s));
        }
    }
    const double total = column_tree(mine, scratch);
    if (threadIdx.y == 0 && d < p.dim) partial[(long long)blockIdx.y * p.dim + d] = total;
}

// ---------- APLU: y = relu(x) + sum_s alphas[d,s] * relu(-x + betas[d,s]) ----------

extern "C" __global__ void aplu_forward_f32(const float* x, const float* alphas, const float* betas, float* y,
                                            ActParams p) {
    GRID_STRIDE(i, p.n) {
        const float v = x[i];
        const int base = (i % p.dim) * p.hinges;
        float acc = v > 0.0f ? v : 0.0f;
        for (int s = 0; s < p.hinges; s++) {
            const float h = -v + betas[base + s];
            acc += alphas[base + s] * (h > 0.0f ? h : 0.0f);
        }
        y[i] = acc;
    }
}

// dx = dy * ([x > 0] - sum_s alphas[d,s] * [betas[d,s] - x > 0])
extern "C" __global__ void aplu_backward_x_f32(const float* x, const float* alphas, const float* betas,
                                               const float* dy, float* dx, ActParams p) {
    GRID_STRIDE(i, p.n) {
        const float v = x[i];
        const int base = (i % p.dim) * p.hinges;
        float slope = v > 0.0f ? 1.0f : 0.0f;
        for (int s = 0; s < p.hinges; s++) {
            if (-v + betas[base + s] > 0.0f) slope -= alphas[base + s];
        }
        dx[i] = dy[i] * slope;
    }
}

// Over columns c = d*hinges + s of the [rows, dim*hinges] view:
// pa[chunk, c] = sum dy * relu(-x + betas[c]),  pb[chunk, c] = sum dy * alphas[c] * [-x + betas[c] > 0].
extern "C" __global__ void aplu_params_partial_f32(const float* x, const float* alphas, const float* betas,
                                                   const float* dy, double* pa, double* pb, ActParams p) {
    __shared__ double scratch[8][32];
    const int cols = p.dim * p.hinges;
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * p.chunk_rows;
    const int r1 = min(r0 + p.chunk_rows, p.rows);
    double ma = 0.0, mb = 0.0;
    if (c < cols) {
        const int d = c / p.hinges;
        const float a = alphas[c], b = betas[c];
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            const long long i = (long long)r * p.dim + d;
            const float h = -x[i] + b;
            if (h > 0.0f) {
                ma += (double)dy[i] * (double)h;
                mb += (double)dy[i] * (double)a;
            }
        }
    }
    const double ta = column_tree(ma, scratch);
    const double tb = column_tree(mb, scratch);
    if (threadIdx.y == 0 && c < cols) {
        pa[(long long)blockIdx.y * cols + c] = ta;
        pb[(long long)blockIdx.y * cols + c] = tb;
    }
}
