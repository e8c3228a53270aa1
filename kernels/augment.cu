// Batches made on the device from a data set resident in device memory: images gathered by
// example index, cropped + flipped with Philox-keyed draws and normalised through per-channel
// lookup tables; token ids and labels gathered. CPU reference and specification:
// src/data/augment.rs (CropFlip::keyed, the Normalizer LUTs); launch side: src/data/resident.rs.
#include "common.cuh"
#include "philox.cuh"

// Fourth Philox counter word of the crop/flip draws (augment::CROP_FLIP_STREAM).
#define LIT_CROP_FLIP_STREAM 1u

// Mirrors data::resident::AugmentImagesParams.
struct AugmentImagesParams {
    int batch;         // examples in the batch
    int channels;      // C
    int height;        // H
    int width;         // W
    int padding;       // zero padding of the random crop
    int augment;       // 0: normalise only; 1: crop + flip first
    int num_examples;  // examples in the resident data set (bound of every index)
    unsigned int epoch;
    unsigned int seed_lo;
    unsigned int seed_hi;
};

// out[b, c, y, x] = lut[c][pixel] of example indices[b], the pixel taken through the example's
// crop/flip: with [w0, w1, w2, _] = philox(counter = [example, 0, epoch, stream],
// key = [seed_lo, seed_hi]), flip = w0 & 1, dy = w1 % (2 padding + 1), dx = w2 % (2 padding + 1);
// output (y, x) reads row y + dy - padding, column x + dx - padding of the left-right mirrored
// image, raw 0 outside it. data: N x C x H x W bytes; lut: C x 256 floats.
extern "C" __global__ void augment_images_u8_f32(const unsigned char* data, const int* indices,
                                                 const float* lut, float* out,
                                                 AugmentImagesParams p) {
    const int plane = p.height * p.width;
    const int per = p.channels * plane;
    const unsigned int span = 2u * (unsigned int)p.padding + 1u;
    GRID_STRIDE(i, p.batch * per) {
        const int b = i / per;
        const int ch = (i - b * per) / plane;
        const int yx = i - b * per - ch * plane;
        const int y = yx / p.width;
        const int x = yx - y * p.width;
        const int example = indices[b];
        if (example < 0 || example >= p.num_examples) {  // the host checks; never read outside
            out[i] = 0.0f;
            continue;
        }
        int sy = y, sx = x;
        bool flip = false;
        if (p.augment) {
            const LitPhilox4 r = lit_philox4x32_10((unsigned int)example, 0u, p.epoch,
                                                   LIT_CROP_FLIP_STREAM, p.seed_lo, p.seed_hi);
            flip = (r.w[0] & 1u) != 0u;
            sy = y + (int)(r.w[1] % span) - p.padding;
            sx = x + (int)(r.w[2] % span) - p.padding;
        }
        unsigned int v = 0;  // padding: a raw 0, normalised like any pixel
        if (sy >= 0 && sy < p.height && sx >= 0 && sx < p.width) {
            const int col = flip ? p.width - 1 - sx : sx;
            v = data[(long long)example * per + ch * plane + sy * p.width + col];
        }
        out[i] = lut[ch * 256 + (int)v];
    }
}

// Mirrors data::resident::GatherParams.
struct GatherParams {
    int batch;         // examples in the batch
    int length;        // values per example
    int num_examples;  // examples in the resident data set
};

// out[b, j] = data[indices[b], j], token ids widened from u8 to i32.
extern "C" __global__ void gather_tokens_u8_i32(const unsigned char* data, const int* indices,
                                                int* out, GatherParams p) {
    GRID_STRIDE(i, p.batch * p.length) {
        const int b = i / p.length;
        const int example = indices[b];
        out[i] = (example < 0 || example >= p.num_examples)
                     ? 0
                     : (int)data[(long long)example * p.length + (i - b * p.length)];
    }
}

// out[b] = labels[indices[b]] (length is 1).
extern "C" __global__ void gather_labels_i32(const int* labels, const int* indices, int* out,
                                             GatherParams p) {
    GRID_STRIDE(b, p.batch) {
        const int example = indices[b];
        out[b] = (example < 0 || example >= p.num_examples) ? 0 : labels[example];
    }
}

// Mirrors data::resident::PhiloxParams.
struct PhiloxParams {
    int draws;
};

// out[4d..4d+4] = philox4x32_10(counter = in[6d..6d+4], key = in[6d+4..6d+6]): checks the device
// Philox against the host one and the known answers.
extern "C" __global__ void philox4x32_10_words(const unsigned int* in, unsigned int* out,
                                               PhiloxParams p) {
    GRID_STRIDE(d, p.draws) {
        const unsigned int* a = in + 6 * d;
        const LitPhilox4 r = lit_philox4x32_10(a[0], a[1], a[2], a[3], a[4], a[5]);
        for (int k = 0; k < 4; ++k) out[4 * d + k] = r.w[k];
    }
}
