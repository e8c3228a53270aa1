// fp16 dynamic loss scaling on the device (PyTorch GradScaler semantics), so that a training step
// never reads the scaler on the host. CPU reference and spec: src/distill/loss_scale/.
//
// The scaler's state is a 3-float device buffer: [scale, good steps, overflow]. `overflow` is the
// current step's outcome: 1 when its update was skipped for non-finite gradients. `skip` is the
// one-float flag the optimizer reads (update_skipped in optim.cu): the guard's sticky non-finite-
// loss flag or this step's overflow. `guard` is NonFiniteGuard's flag (flag_non_finite_f32).
#include "common.cuh"
#include "multi_tensor.cuh"

#define SCALE_AT 0
#define GOOD_STEPS_AT 1
#define OVERFLOW_AT 2

// Mirrors crate::distill::loss_scale::device::BeginParams.
struct LossScaleBeginParams {
    int n;  // elements of the loss (and of its backward seed)
};

// A step starts: the backward seed is the scale (d(scale * loss) / d loss), the step's overflow is
// cleared and the optimizer's skip flag starts as the guard's flag.
extern "C" __global__ void loss_scale_begin_f32(float* state, const float* guard, float* seed,
                                                float* skip, LossScaleBeginParams p) {
    const float scale = state[SCALE_AT];
    GRID_STRIDE(i, p.n) {
        seed[i] = scale;
        if (i == 0) {
            state[OVERFLOW_AT] = 0.0f;
            *skip = *guard;
        }
    }
}

// Most gradients one unscale launch covers: keeps LossScaleUnscaleParams within 4 KiB of kernel
// parameters. Mirrors crate::distill::loss_scale::device::UNSCALE_MAX_TENSORS.
#define LOSS_SCALE_MAX_TENSORS 128

// One gradient of an unscale launch: elements [start, start + n) of the launch's index space.
struct LossScaleTensor {
    float* grad;
    int start;
    int n;
};

// Mirrors crate::distill::loss_scale::device::UnscaleParams: `count` gradients by ascending
// `start`, `total` elements in all.
struct LossScaleUnscaleParams {
    int total;
    int count;
    float* state;
    float* skip;
    LossScaleTensor tensors[LOSS_SCALE_MAX_TENSORS];
};

// grad *= 1 / scale, the reciprocal taken in double and applied in float (as PyTorch); a
// non-finite gradient (checked before unscaling) sets the step's overflow and the skip flag.
extern "C" __global__ void loss_scale_unscale_f32(LossScaleUnscaleParams p) {
    const float inv = (float)(1.0 / (double)p.state[SCALE_AT]);
    GRID_STRIDE(i, p.total) {
        const LossScaleTensor& t = p.tensors[multi_tensor_owner(p.tensors, p.count, i)];
        float* g = t.grad + (i - t.start);
        const float v = *g;
        if ((__float_as_int(v) & 0x7f800000) == 0x7f800000) {
            p.state[OVERFLOW_AT] = 1.0f;
            *p.skip = 1.0f;
        }
        *g = v * inv;
    }
}

// Mirrors crate::distill::loss_scale::device::UpdateParams.
struct LossScaleUpdateParams {
    float growth_interval;  // good steps before the scale grows (an integer below 2^24)
    float growth_factor;
    float backoff_factor;
    int pad;
};

// After the step's update (one thread): back off on overflow, else count the step and grow the
// scale after growth_interval good steps unless the grown scale overflows. Nothing changes once
// the guard has seen a non-finite loss, and such a step is not an overflow (the run stops on it).
extern "C" __global__ void loss_scale_update_f32(float* state, const float* guard,
                                                 LossScaleUpdateParams p) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    if (*guard != 0.0f) {
        state[OVERFLOW_AT] = 0.0f;
        return;
    }
    if (state[OVERFLOW_AT] != 0.0f) {
        state[SCALE_AT] *= p.backoff_factor;
        state[GOOD_STEPS_AT] = 0.0f;
        return;
    }
    const float good = state[GOOD_STEPS_AT] + 1.0f;
    if (good == p.growth_interval) {
        const float grown = state[SCALE_AT] * p.growth_factor;
        if ((__float_as_int(grown) & 0x7f800000) != 0x7f800000) state[SCALE_AT] = grown;
        state[GOOD_STEPS_AT] = 0.0f;
    } else {
        state[GOOD_STEPS_AT] = good;
    }
}
