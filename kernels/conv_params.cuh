// The geometry every conv kernel reads (kernels/conv.cu and kernels/conv_tc.cu), one struct for
// both. Mirrors ops::conv::ConvParams; `n` counts the images of this launch (a chunk of the batch).
#pragma once

struct ConvParams {
    int n, c, h, w;   // input [n, c, h, w]
    int kh, kw;       // kernel
    int sh, sw;       // stride
    int ph, pw;       // zero padding
    int oh, ow;       // output size
    int o;            // output channels (conv2d_implicit_f32)
    int relu;         // conv2d_implicit_f32 epilogue: clamp at 0 last
    float eps;        // conv2d_implicit_f32 epilogue: BatchNorm epsilon
    int slice;        // weight gradients: reduction columns (image, pixel) per block (conv_tc: a multiple of 32)
};
static_assert(sizeof(ConvParams) == 64, "mirrors ops::conv::ConvParams");
