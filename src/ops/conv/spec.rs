//! The specification: a convolution and its gradients as plain loops, in any [`Real`]. Every
//! other path (the CPU lowerings, the kernels) is tested against these.

use super::ConvGeometry;
use crate::ops::Real;

/// `y[n,o,oh,ow] = b[o] + Σ_{c,i,j} x[n,c,oh·sh-ph+i, ow·sw-pw+j] · w[o,c,i,j]` (zero outside).
pub fn conv2d_forward_direct<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    for n in 0..g.n {
        for o in 0..g.o {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let mut acc = b.map_or(T::ZERO, |b| b[o]);
                    for c in 0..g.c {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let (ih, iw) = ((oh * g.sh + i) as isize, (ow * g.sw + j) as isize);
                                let (ih, iw) = (ih - g.ph as isize, iw - g.pw as isize);
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((n * g.c + c) * g.h + ih as usize) * g.w + iw as usize];
                                acc += xv * w[((o * g.c + c) * g.kh + i) * g.kw + j];
                            }
                        }
                    }
                    y[((n * g.o + o) * g.oh + oh) * g.ow + ow] = acc;
                }
            }
        }
    }
}

/// Gradients of [`conv2d_forward_direct`]: `dx` and `dw` (overwritten), each only when asked for.
pub fn conv2d_backward_direct<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    mut dx: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
) {
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(T::ZERO);
    }
    if let Some(dw) = dw.as_deref_mut() {
        dw.fill(T::ZERO);
    }
    for n in 0..g.n {
        for o in 0..g.o {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let gy = dy[((n * g.o + o) * g.oh + oh) * g.ow + ow];
                    for c in 0..g.c {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let (ih, iw) = ((oh * g.sh + i) as isize, (ow * g.sw + j) as isize);
                                let (ih, iw) = (ih - g.ph as isize, iw - g.pw as isize);
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c + c) * g.h + ih as usize) * g.w + iw as usize;
                                let wi = ((o * g.c + c) * g.kh + i) * g.kw + j;
                                if let Some(dx) = dx.as_deref_mut() {
                                    dx[xi] += gy * w[wi];
                                }
                                if let Some(dw) = dw.as_deref_mut() {
                                    dw[wi] += gy * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
