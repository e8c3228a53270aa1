//! A multiply-add counter for `lit-engine info`: the convolution, linear and GEMM autograd
//! wrappers call [`add_macs`] with the multiply-adds of their forward pass. It counts only inside
//! [`count_macs`] on the calling thread; elsewhere `add_macs` is one thread-local read.
//!
//! Convention: one multiply-add (MAC) per weight use, `y += w·x`; bias adds, normalisation,
//! activations and pooling are not counted. FLOPs are reported as 2 × MACs.

use std::cell::Cell;

thread_local! {
    /// `None`: not counting (the usual case).
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Add `n` multiply-adds to the running count, if one is running on this thread.
#[inline]
pub fn add_macs(n: usize) {
    MACS.with(|c| {
        if let Some(total) = c.get() {
            c.set(Some(total + n as u64));
        }
    });
}

/// Multiply-adds of an op whose output has `out_numel` elements, each a dot product of length
/// `depth` (conv: `C·kh·kw`, linear: `in_features`, GEMM: `k`).
#[inline]
pub fn add_dot_products(out_numel: usize, depth: usize) {
    add_macs(out_numel * depth);
}

/// FLOPs (2 × multiply-adds, the convention above) of an op whose output has `out_numel`
/// elements, each a dot product of length `depth`: what a benchmark divides by its time.
pub fn dot_product_flops(out_numel: usize, depth: usize) -> u64 {
    2 * out_numel as u64 * depth as u64
}

/// The count so far, when counting.
pub fn macs_so_far() -> Option<u64> {
    MACS.with(Cell::get)
}

/// Run `f` with counting on and return its result with the multiply-adds it performed. Nests: an
/// enclosing count also sees the inner one's work.
pub fn count_macs<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let outer = MACS.with(|c| c.replace(Some(0)));
    // Restore the outer state even if `f` panics, so a later count on this thread starts clean.
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let inner = MACS.with(Cell::get).unwrap_or(0);
            MACS.with(|c| c.set(self.0.map(|o| o + inner)));
        }
    }
    let restore = Restore(outer);
    let result = f();
    let inner = MACS.with(Cell::get).unwrap_or(0);
    drop(restore);
    (result, inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_inside_and_nests() {
        add_macs(5);
        assert_eq!(macs_so_far(), None);
        let ((), outer) = count_macs(|| {
            add_macs(3);
            let ((), inner) = count_macs(|| add_dot_products(4, 10));
            assert_eq!(inner, 40);
            assert_eq!(macs_so_far(), Some(43));
        });
        assert_eq!(outer, 43);
        assert_eq!(macs_so_far(), None);
    }
}
