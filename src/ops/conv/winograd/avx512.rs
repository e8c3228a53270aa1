//! The AVX-512 transforms of [`super::Winograd`]: whole tile rows in 16-lane registers, the
//! zero frame as masked loads. Callers check `fast_f32_available` (avx512f) first.

use std::arch::x86_64::*;

/// The first `n` lanes (n ≤ 16).
#[inline(always)]
fn mask(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// The across transform of the inner rows `1..=h` of one channel `plane [h, w]` with its
/// zero frame, into `rows` (see `input_transform`; the frame's top and bottom rows are the
/// caller's).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn across_plane(plane: &[f32], (h, w): (usize, usize), rows: &mut [f32]) {
    let tw = w / 2;
    let half = (h / 2 + 1) * tw;
    assert!(plane.len() == h * w);
    for r in 0..h {
        let pr = r + 1;
        let at = (pr % 2) * half + (pr / 2) * tw;
        across_row(&plane[r * w..][..w], rows, 2 * half, at);
    }
}

/// The lanes `l` of a 16-float load at `xr[start..]` with `0 <= start + l < w`: the rest
/// are the zero frame (or a later tile's lanes, which the stores drop).
#[inline(always)]
fn inside(start: isize, w: usize) -> __mmask16 {
    let lo = (-start).clamp(0, 16) as u32;
    let hi = (w as isize - start).clamp(0, 16) as u32;
    (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
}

/// One output channel's transform: `Aᵀ·M·A` of its tiles `m[ξ·ms + src + t]` into the
/// phases in `rows`, interleaved into `plane [h, w]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_channel(
    m: &[f32],
    ms: usize,
    src: usize,
    rows: &mut [f32],
    plane: &mut [f32],
    (h, w): (usize, usize),
) {
    let (th, tw) = (h / 2, w / 2);
    assert!(plane.len() == h * w);
    if tw % 8 == 0 || 8 % tw == 0 {
        return output_direct(m, ms, src, plane, (h, w));
    }
    output_tiles(m, ms, src, th * tw, rows);
    for ty in 0..th {
        interleave_rows(rows, th * tw, ty * tw, &mut plane[2 * ty * w..], w, tw);
    }
}

/// [`output_channel`] for tile rows of 1, 2, 4 or a multiple of 8 tiles, straight from
/// registers: each half-vector of 8 tiles, interleaved, is one piece of a pixel row or
/// whole pixel rows. (Through the phase buffer, the interleave's loads waited on the
/// masked stores just before them: 13 % of a two-thread step on 8x8 and 16x16 maps.)
#[target_feature(enable = "avx512f")]
unsafe fn output_direct(
    m: &[f32],
    ms: usize,
    src: usize,
    plane: &mut [f32],
    (h, w): (usize, usize),
) {
    let (th, tw) = (h / 2, w / 2);
    let tiles = th * tw;
    assert!(m.len() >= 15 * ms + src + tiles && plane.len() == h * w);
    assert!(tw % 8 == 0 || 8 % tw == 0);
    let (mp, yp) = (m.as_ptr().add(src), plane.as_mut_ptr());
    // Lanes 0..8 (lo) and 8..16 (hi) of two vectors a, b interleaved: a0 b0 a1 b1 ...
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let mut t = 0;
    while t < tiles {
        let k = mask(tiles - t);
        let wv: [[__m512; 2]; 4] = std::array::from_fn(|a| {
            let r: [__m512; 4] =
                std::array::from_fn(|s| _mm512_maskz_loadu_ps(k, mp.add((a * 4 + s) * ms + t)));
            [
                _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]),
                _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]),
            ]
        });
        for i in 0..2 {
            let pair: [__m512; 2] = std::array::from_fn(|j| {
                if i == 0 {
                    _mm512_add_ps(_mm512_add_ps(wv[0][j], wv[1][j]), wv[2][j])
                } else {
                    _mm512_sub_ps(_mm512_sub_ps(wv[1][j], wv[2][j]), wv[3][j])
                }
            });
            let halves = [
                _mm512_permutex2var_ps(pair[0], lo, pair[1]),
                _mm512_permutex2var_ps(pair[0], hi, pair[1]),
            ];
            for (half, &v) in halves.iter().enumerate() {
                let t0 = t + 8 * half;
                if t0 >= tiles {
                    break;
                }
                if tw % 8 == 0 {
                    // 8 tiles of one tile row: 2·8 pixels of row 2ty + i.
                    let (ty, tx) = (t0 / tw, t0 % tw);
                    let n = (tiles - t0).min(8);
                    _mm512_mask_storeu_ps(yp.add((2 * ty + i) * w + 2 * tx), mask(2 * n), v);
                } else {
                    // 8 / tw whole tile rows, 2·tw = w pixels each: lanes r·w..(r+1)·w of
                    // `v` are row 2(ty0 + r) + i.
                    for r in 0..8 / tw {
                        let tr = t0 + r * tw;
                        if tr >= tiles {
                            break;
                        }
                        let lanes = ((1u32 << w) - 1) << (r * w);
                        let row = yp.add((2 * (tr / tw) + i) * w);
                        _mm512_mask_storeu_ps(row.wrapping_sub(r * w), lanes as __mmask16, v);
                    }
                }
            }
        }
        t += 16;
    }
}

/// One input row `xr` (`w = 2·tw` values, read with the zero frame around it) transformed
/// across: `u_s[tx]` = `(d·B)[s]` of the tile's 4 values `d_k = xr[2tx + k - 1]`, written
/// to `rows[s·stride + dst + tx]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn across_row(xr: &[f32], rows: &mut [f32], stride: usize, dst: usize) {
    let (w, tw) = (xr.len(), xr.len() / 2);
    assert!(rows.len() >= 3 * stride + dst + tw);
    let out = rows.as_mut_ptr().add(dst);
    // Masked lanes are never read, so the pointer may sit outside the row.
    let at = |i: isize| xr.as_ptr().wrapping_offset(i);
    let load = |i: isize| _mm512_maskz_loadu_ps(inside(i, w), at(i));
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut tx = 0;
    while tx < tw {
        let k = mask(tw - tx);
        let p = 2 * tx as isize - 1;
        let (a, b) = (load(p), load(p + 16));
        let (c, d) = (load(p + 2), load(p + 18));
        let d0 = _mm512_permutex2var_ps(a, even, b);
        let d1 = _mm512_permutex2var_ps(a, odd, b);
        let d2 = _mm512_permutex2var_ps(c, even, d);
        let d3 = _mm512_permutex2var_ps(c, odd, d);
        let u = [
            _mm512_sub_ps(d0, d2),
            _mm512_add_ps(d1, d2),
            _mm512_sub_ps(d2, d1),
            _mm512_sub_ps(d1, d3),
        ];
        for (s, &us) in u.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(s * stride + tx), k, us);
        }
        tx += 16;
    }
}

/// The down transform `Bᵀ·u` of every tile, 16 tiles a vector: padded rows 2ty..2ty+3 of
/// `u_s` are the even/odd parity blocks (`half` apart) at tiles `t` and `t + tw`. Writes
/// `v[ξ·vs + dst + t]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn down_tiles(
    rows: &[f32],
    half: usize,
    tw: usize,
    tiles: usize,
    v: &mut [f32],
    vs: usize,
    dst: usize,
) {
    assert!(rows.len() >= 8 * half && tiles + tw <= half);
    assert!(v.len() >= 15 * vs + dst + tiles);
    let (rp, vp) = (rows.as_ptr(), v.as_mut_ptr().add(dst));
    let mut t = 0;
    while t < tiles {
        let k = mask(tiles - t);
        for s in 0..4 {
            let (ev, od) = (rp.add(2 * s * half + t), rp.add((2 * s + 1) * half + t));
            let (e0, o0) = (_mm512_maskz_loadu_ps(k, ev), _mm512_maskz_loadu_ps(k, od));
            let e1 = _mm512_maskz_loadu_ps(k, ev.add(tw));
            let o1 = _mm512_maskz_loadu_ps(k, od.add(tw));
            let out = [
                _mm512_sub_ps(e0, e1),
                _mm512_add_ps(o0, e1),
                _mm512_sub_ps(e1, o0),
                _mm512_sub_ps(o0, o1),
            ];
            for (a, &va) in out.iter().enumerate() {
                _mm512_mask_storeu_ps(vp.add((a * 4 + s) * vs + t), k, va);
            }
        }
        t += 16;
    }
}

/// `Aᵀ·M·A` of every tile of one output channel, 16 tiles a vector: `m[ξ·ms + src + t]` in,
/// the four phases `Y[i, j]` out to `rows[(2i + j)·tiles + t]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_tiles(
    m: &[f32],
    ms: usize,
    src: usize,
    tiles: usize,
    rows: &mut [f32],
) {
    assert!(m.len() >= 15 * ms + src + tiles && rows.len() >= 4 * tiles);
    let (mp, yp) = (m.as_ptr().add(src), rows.as_mut_ptr());
    let mut t = 0;
    while t < tiles {
        let k = mask(tiles - t);
        let wv: [[__m512; 2]; 4] = std::array::from_fn(|a| {
            let r: [__m512; 4] =
                std::array::from_fn(|s| _mm512_maskz_loadu_ps(k, mp.add((a * 4 + s) * ms + t)));
            [
                _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]),
                _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]),
            ]
        });
        for j in 0..2 {
            let y0 = _mm512_add_ps(_mm512_add_ps(wv[0][j], wv[1][j]), wv[2][j]);
            let y1 = _mm512_sub_ps(_mm512_sub_ps(wv[1][j], wv[2][j]), wv[3][j]);
            _mm512_mask_storeu_ps(yp.add(j * tiles + t), k, y0);
            _mm512_mask_storeu_ps(yp.add((2 + j) * tiles + t), k, y1);
        }
        t += 16;
    }
}

/// `A·dY·Aᵀ` of every tile of one channels-last gradient image `dy [h·w, o]`, vectors
/// along the channels: `m[ξ·ms + t·o + oi]` for tile `t`, `A = [1 0; 1 1; 1 -1; 0 -1]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn adjoint_tiles(
    dy: &[f32],
    w: usize,
    o: usize,
    m: &mut [f32],
    ms: usize,
    tiles: usize,
) {
    let tw = w / 2;
    assert!(dy.len() >= 4 * tiles * o && m.len() >= 15 * ms + tiles * o);
    let (yp, mp) = (dy.as_ptr(), m.as_mut_ptr());
    let zero = _mm512_setzero_ps();
    for t in 0..tiles {
        let p00 = (2 * (t / tw) * w + 2 * (t % tw)) * o;
        let p10 = p00 + w * o;
        let mut oi = 0;
        while oi < o {
            let k = mask(o - oi);
            let ld = |at: usize| _mm512_maskz_loadu_ps(k, yp.add(at + oi));
            // r_i[s] = Σ_j dY[i, j]·A[s, j] for the two rows i of the tile.
            let r: [[__m512; 4]; 2] = std::array::from_fn(|i| {
                let at = if i == 0 { p00 } else { p10 };
                let (y0, y1) = (ld(at), ld(at + o));
                [
                    y0,
                    _mm512_add_ps(y0, y1),
                    _mm512_sub_ps(y0, y1),
                    _mm512_sub_ps(zero, y1),
                ]
            });
            let dst = mp.add(t * o + oi);
            for s in 0..4 {
                let out = [
                    r[0][s],
                    _mm512_add_ps(r[0][s], r[1][s]),
                    _mm512_sub_ps(r[0][s], r[1][s]),
                    _mm512_sub_ps(zero, r[1][s]),
                ];
                for (a, &va) in out.iter().enumerate() {
                    _mm512_mask_storeu_ps(dst.add((a * 4 + s) * ms), k, va);
                }
            }
            oi += 16;
        }
    }
}

/// Output rows `2ty` and `2ty + 1` of one channel from the phases of its tile row (tiles
/// `first..first + tw`): `y[i·w + 2tx + j] = Y[i, j][first + tx]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn interleave_rows(
    rows: &[f32],
    tiles: usize,
    first: usize,
    y: &mut [f32],
    w: usize,
    tw: usize,
) {
    assert!(rows.len() >= 4 * tiles && first + tw <= tiles && y.len() >= w + 2 * tw);
    let (rp, yp) = (rows.as_ptr().add(first), y.as_mut_ptr());
    // Lanes 0..8 (lo) and 8..16 (hi) of two vectors a, b interleaved: a0 b0 a1 b1 ...
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let mut tx = 0;
    while tx < tw {
        let n = (tw - tx).min(16);
        let k = mask(n);
        for i in 0..2 {
            let p0 = _mm512_maskz_loadu_ps(k, rp.add(2 * i * tiles + tx));
            let p1 = _mm512_maskz_loadu_ps(k, rp.add((2 * i + 1) * tiles + tx));
            let row = yp.add(i * w + 2 * tx);
            _mm512_mask_storeu_ps(row, mask(2 * n), _mm512_permutex2var_ps(p0, lo, p1));
            if n > 8 {
                let second = _mm512_permutex2var_ps(p0, hi, p1);
                _mm512_mask_storeu_ps(row.add(16), mask(2 * n - 16), second);
            }
        }
        tx += 16;
    }
}
