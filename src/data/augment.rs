//! Image augmentation and normalisation on the host, fused into one pass per image.
//!
//! CIFAR training augmentation as in the LIT / TAKD repositories (`RandomCrop(32, padding=4)` +
//! `RandomHorizontalFlip()`): the image is flipped with probability 1/2, zero-padded by 4 pixels
//! on every side and a window of the original size is cut at a uniformly random offset. Padding
//! is a raw pixel value of 0, normalised like any other pixel (as torchvision pads before
//! `ToTensor`/`Normalize`).
//!
//! The draws are keyed, not sequential: the crop and flip of an example are a pure function of
//! ([`AugmentKey`], example index) through Philox4x32-10 ([`CropFlip::keyed`] is the
//! specification), so the host, the emulator and the `augment_images_u8_f32` kernel
//! (`kernels/augment.cu`) produce the same batches bit for bit, whatever the batch size, order or
//! thread schedule.

use crate::rng::philox::philox4x32_10;
use crate::rng::Rng;

/// Zero padding of the random crop, in pixels.
pub const CROP_PADDING: usize = 4;

/// u8 pixel → normalised f32, one lookup table per channel.
#[derive(Clone, Debug)]
pub struct Normalizer {
    luts: Vec<[f32; 256]>,
}

impl Normalizer {
    /// `(v / 255 - mean[c]) / std[c]`; with no mean/std given, just `v / 255` for `channels`.
    pub fn new(channels: usize, mean: &[f32], std: &[f32]) -> Self {
        let luts = (0..channels)
            .map(|c| {
                let (m, s) = match (mean.get(c), std.get(c)) {
                    (Some(&m), Some(&s)) => (m, s),
                    _ => (0.0, 1.0),
                };
                std::array::from_fn(|v| (v as f32 / 255.0 - m) / s)
            })
            .collect();
        Normalizer { luts }
    }

    /// The 256-entry table of `channel`: normalised value of each byte.
    pub fn lut(&self, channel: usize) -> &[f32; 256] {
        &self.luts[channel]
    }
}

/// Fourth Philox counter word of the crop/flip draws: a stream of its own, so that other keyed
/// draws (with another stream word) never reuse these bits.
pub const CROP_FLIP_STREAM: u32 = 1;

/// What one epoch's augmentation is keyed by: a 64-bit seed and the epoch number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugmentKey {
    /// The seed (Philox key: low word first).
    pub seed: u64,
    /// The epoch (third Philox counter word).
    pub epoch: u32,
}

impl AugmentKey {
    /// A key for `epoch` whose seed is two draws from `rng` (high word first), so a run's
    /// generator keeps consuming exactly what it did when augmentation drew from it directly.
    pub fn draw(rng: &mut Rng, epoch: u32) -> Self {
        let seed = u64::from(rng.next_u32()) << 32 | u64::from(rng.next_u32());
        AugmentKey { seed, epoch }
    }

    /// The four Philox words of `example`: counter `[example low, example high, epoch,
    /// CROP_FLIP_STREAM]`, key `[seed low, seed high]`.
    pub fn words(self, example: u64) -> [u32; 4] {
        philox4x32_10(
            [
                example as u32,
                (example >> 32) as u32,
                self.epoch,
                CROP_FLIP_STREAM,
            ],
            [self.seed as u32, (self.seed >> 32) as u32],
        )
    }
}

/// One random crop + flip: the crop's top-left corner in the padded image (0..=2·padding on
/// each axis) and whether the image is mirrored left–right first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropFlip {
    /// Top edge of the crop in the padded image.
    pub dy: usize,
    /// Left edge of the crop in the padded image.
    pub dx: usize,
    /// Mirror the image left–right before cropping.
    pub flip: bool,
    /// Zero padding on each side before the crop.
    pub padding: usize,
}

impl CropFlip {
    /// The identity transform (centre crop of the padded image, no flip).
    pub fn identity(padding: usize) -> Self {
        CropFlip {
            dy: padding,
            dx: padding,
            flip: false,
            padding,
        }
    }

    /// The crop and flip of data set example `example` under `key` — the specification that
    /// `kernels/augment.cu` implements. With `[w0, w1, w2, w3] = key.words(example)`:
    /// `flip = w0 & 1`, `dy = w1 % (2·padding + 1)`, `dx = w2 % (2·padding + 1)` (`w3` unused).
    /// The modulo's bias is below 2⁻²⁸ for padding 4 (2³² mod 9 = 4).
    pub fn keyed(key: AugmentKey, example: u64, padding: usize) -> Self {
        let [w0, w1, w2, _] = key.words(example);
        let span = 2 * padding as u64 + 1;
        CropFlip {
            dy: (u64::from(w1) % span) as usize,
            dx: (u64::from(w2) % span) as usize,
            flip: w0 & 1 == 1,
            padding,
        }
    }

    /// Apply to one `[C, H, W]` image, mapping every output pixel through `map(channel, value)`;
    /// pixels that fall in the padding are `map(channel, 0)`.
    pub fn apply<T: Copy>(
        self,
        src: &[u8],
        chw: [usize; 3],
        out: &mut [T],
        map: impl Fn(usize, u8) -> T,
    ) {
        let [c, h, w] = chw;
        debug_assert_eq!(src.len(), c * h * w);
        debug_assert_eq!(out.len(), c * h * w);
        for ch in 0..c {
            let pad = map(ch, 0);
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let row_out = &mut out[(ch * h + y) * w..(ch * h + y + 1) * w];
                // Row y of the output is row y + dy - padding of the (flipped) image.
                let sy = (y + self.dy).wrapping_sub(self.padding);
                if sy >= h {
                    row_out.fill(pad);
                    continue;
                }
                let row_in = &plane[sy * w..(sy + 1) * w];
                for (x, o) in row_out.iter_mut().enumerate() {
                    let sx = (x + self.dx).wrapping_sub(self.padding);
                    *o = if sx >= w {
                        pad
                    } else if self.flip {
                        map(ch, row_in[w - 1 - sx])
                    } else {
                        map(ch, row_in[sx])
                    };
                }
            }
        }
    }
}

/// Normalise one `[C, H, W]` image into `out` without augmentation.
pub fn normalize_into(src: &[u8], chw: [usize; 3], norm: &Normalizer, out: &mut [f32]) {
    let plane = chw[1] * chw[2];
    for (ch, (s, o)) in src.chunks(plane).zip(out.chunks_mut(plane)).enumerate() {
        let lut = norm.lut(ch);
        for (o, &v) in o.iter_mut().zip(s) {
            *o = lut[v as usize];
        }
    }
}

/// Crop, flip and normalise one `[C, H, W]` image into `out` in a single pass.
pub fn crop_flip_normalize_into(
    src: &[u8],
    chw: [usize; 3],
    t: CropFlip,
    norm: &Normalizer,
    out: &mut [f32],
) {
    t.apply(src, chw, out, |ch, v| norm.lut(ch)[v as usize]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(c: usize, h: usize, w: usize) -> Vec<u8> {
        (0..c * h * w).map(|i| (i % 251) as u8 + 1).collect()
    }

    fn apply_u8(src: &[u8], chw: [usize; 3], t: CropFlip) -> Vec<u8> {
        let mut out = vec![0u8; src.len()];
        t.apply(src, chw, &mut out, |_, v| v);
        out
    }

    #[test]
    fn identity_keeps_the_image_and_flip_mirrors_each_row() {
        let chw = [3, 5, 7];
        let src = image(3, 5, 7);
        assert_eq!(apply_u8(&src, chw, CropFlip::identity(4)), src);
        let flipped = apply_u8(
            &src,
            chw,
            CropFlip {
                flip: true,
                ..CropFlip::identity(4)
            },
        );
        for (a, b) in src.chunks(7).zip(flipped.chunks(7)) {
            let mut rev = a.to_vec();
            rev.reverse();
            assert_eq!(b, &rev[..]);
        }
    }

    #[test]
    fn crop_shifts_and_pads_with_zero() {
        let chw = [1, 4, 4];
        let src = image(1, 4, 4);
        // dy = dx = 0: the window starts 4 pixels up-left of the image: all padding.
        let t = CropFlip {
            dy: 0,
            dx: 0,
            flip: false,
            padding: 4,
        };
        assert_eq!(apply_u8(&src, chw, t), vec![0; 16]);
        // dy = 5, dx = 3: output (y, x) = input (y + 1, x - 1).
        let t = CropFlip {
            dy: 5,
            dx: 3,
            flip: false,
            padding: 4,
        };
        let out = apply_u8(&src, chw, t);
        for y in 0..4 {
            for x in 0..4 {
                let want = if y + 1 < 4 && x >= 1 {
                    src[(y + 1) * 4 + x - 1]
                } else {
                    0
                };
                assert_eq!(out[y * 4 + x], want, "({y},{x})");
            }
        }
    }

    #[test]
    fn keyed_offsets_cover_the_range_and_normalisation_uses_the_channel_lut() {
        let key = AugmentKey::draw(&mut Rng::new(3), 0);
        let draws: Vec<CropFlip> = (0..2000).map(|i| CropFlip::keyed(key, i, 4)).collect();
        assert!(draws.iter().all(|t| t.dy <= 8 && t.dx <= 8));
        assert_eq!(draws.iter().map(|t| t.dy).max(), Some(8));
        assert_eq!(draws.iter().map(|t| t.dx).min(), Some(0));
        let flips = draws.iter().filter(|t| t.flip).count();
        assert!((800..1200).contains(&flips), "{flips}");
        // Every offset pair is drawn about equally often (81 cells, ~25 each).
        let mut cells = [0usize; 81];
        for t in &draws {
            cells[t.dy * 9 + t.dx] += 1;
        }
        assert!(cells.iter().all(|&n| (5..60).contains(&n)), "{cells:?}");

        let norm = Normalizer::new(2, &[0.5, 0.25], &[0.5, 0.25]);
        let src = [0u8, 255, 0, 255];
        let mut out = [0f32; 4];
        normalize_into(&src, [2, 1, 2], &norm, &mut out);
        assert_eq!(out, [-1.0, 1.0, -1.0, 3.0]);
        let mut fused = [0f32; 4];
        crop_flip_normalize_into(&src, [2, 1, 2], CropFlip::identity(4), &norm, &mut fused);
        assert_eq!(fused, out);
    }

    #[test]
    fn keyed_draws_are_the_documented_function_of_the_philox_words() {
        let key = AugmentKey {
            seed: 0x0123_4567_89ab_cdef,
            epoch: 7,
        };
        for example in [0u64, 1, 49_999, 1 << 33] {
            let words = philox4x32_10(
                [example as u32, (example >> 32) as u32, 7, CROP_FLIP_STREAM],
                [0x89ab_cdef, 0x0123_4567],
            );
            assert_eq!(key.words(example), words);
            let t = CropFlip::keyed(key, example, 4);
            assert_eq!(
                (t.flip, t.dy, t.dx),
                (
                    words[0] & 1 == 1,
                    (words[1] % 9) as usize,
                    (words[2] % 9) as usize
                )
            );
        }
        // Seed, epoch and example each change the draws.
        let all = |k: AugmentKey| {
            (0..64)
                .map(|i| CropFlip::keyed(k, i, 4))
                .collect::<Vec<_>>()
        };
        assert_ne!(all(key), all(AugmentKey { epoch: 8, ..key }));
        assert_ne!(all(key), all(AugmentKey { seed: 1, ..key }));
        assert!(all(key).windows(2).any(|w| w[0] != w[1]));
    }
}
