// The pointwise half of an LSTM cell (cuDNN / PyTorch gate order i, f, g, o). The two GEMMs that make
// the gate pre-activations run through the GEMM kernels; these kernels fuse everything after them.
// CPU reference: src/ops/lstm/cpu.rs.
#include "common.cuh"

// Mirrors ops::lstm::LstmCellParams. gates / acts are [batch, 4*hidden]; c, h are [batch, hidden].
struct LstmCellParams {
    int batch;
    int hidden;
};

static __device__ inline float lstm_sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

// One thread per (row, unit): acts = [σ(i), σ(f), tanh(g), σ(o)], c' = σ(f)·c + σ(i)·tanh(g),
// h' = σ(o)·tanh(c').
extern "C" __global__ void lstm_cell_forward_f32(const float* gates, const float* c, float* acts, float* c_new,
                                                 float* h_new, LstmCellParams p) {
    GRID_STRIDE(e, p.batch * p.hidden) {
        const int b = e / p.hidden, j = e - b * p.hidden;
        const long long row = (long long)b * 4 * p.hidden;
        const float i = lstm_sigmoid(gates[row + j]);
        const float f = lstm_sigmoid(gates[row + p.hidden + j]);
        const float g = tanhf(gates[row + 2 * p.hidden + j]);
        const float o = lstm_sigmoid(gates[row + 3 * p.hidden + j]);
        const float cn = f * c[e] + i * g;
        acts[row + j] = i;
        acts[row + p.hidden + j] = f;
        acts[row + 2 * p.hidden + j] = g;
        acts[row + 3 * p.hidden + j] = o;
        c_new[e] = cn;
        h_new[e] = o * tanhf(cn);
    }
}

// One thread per (row, unit): from dh', dc' the gradients of the four gate pre-activations and of c.
// dc_total = dc' + dh'·o·(1 − tanh²(c')); d i = dc_total·g·i(1−i); d f = dc_total·c·f(1−f);
// d g = dc_total·i·(1−g²); d o = dh'·tanh(c')·o(1−o); dc = dc_total·f.
extern "C" __global__ void lstm_cell_backward_f32(const float* acts, const float* c, const float* c_new,
                                                  const float* dh, const float* dc, float* dgates, float* dc_prev,
                                                  LstmCellParams p) {
    GRID_STRIDE(e, p.batch * p.hidden) {
        const int b = e / p.hidden, j = e - b * p.hidden;
        const long long row = (long long)b * 4 * p.hidden;
        const float i = acts[row + j];
        const float f = acts[row + p.hidden + j];
        const float g = acts[row + 2 * p.hidden + j];
        const float o = acts[row + 3 * p.hidden + j];
        const float tc = tanhf(c_new[e]);
        const float dhe = dh[e];
        const float dct = dc[e] + dhe * o * (1.0f - tc * tc);
        dgates[row + j] = dct * g * i * (1.0f - i);
        dgates[row + p.hidden + j] = dct * c[e] * f * (1.0f - f);
        dgates[row + 2 * p.hidden + j] = dct * i * (1.0f - g * g);
        dgates[row + 3 * p.hidden + j] = dhe * tc * o * (1.0f - o);
        dc_prev[e] = dct * f;
    }
}
