// Multi-tensor launches (optim.cu, adam.cu, clip.cu, loss_scale.cu): many tensors' elements as one concatenated
// index space, each tensor's descriptor holding the `start` of its elements. Include "common.cuh" first.
#pragma once

// Index of the descriptor that owns element i: the last of `count` descriptors (by ascending
// `start`) whose start is <= i (binary search; neighbouring threads mostly land in the same one).
template <class Tensor>
__device__ __forceinline__ int multi_tensor_owner(const Tensor* tensors, int count, int i) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (tensors[mid].start <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}
