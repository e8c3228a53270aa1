// Multi-tensor launches (sgd_multi_step_f32, loss_scale_unscale_f32): one index space over the
// concatenation of `count` tensors, each descriptor holding its first index `start`, ascending.
#pragma once

// The descriptor that owns element i: the last one whose start is <= i (binary search; neighbouring
// threads mostly land in the same tensor).
template <typename Descriptor>
__device__ __forceinline__ int multi_tensor_owner(const Descriptor* tensors, int count, int i) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (tensors[mid].start <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}
