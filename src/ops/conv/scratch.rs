//! Per-thread scratch for the CPU lowerings: one buffer per thread, grown on demand and reused by
//! every conv call on that thread, carved into the slices a lowering asks for.

use std::cell::RefCell;

thread_local! {
    /// Per-thread scratch, grown on demand and reused by every conv call on this thread.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with `K` scratch slices of the given lengths (contents unspecified: callers overwrite).
pub(super) fn with_scratch<T: bytemuck::Pod, R, const K: usize>(
    lens: [usize; K],
    f: impl FnOnce([&mut [T]; K]) -> R,
) -> R {
    let elems: usize = lens.iter().sum();
    let words = (elems * std::mem::size_of::<T>()).div_ceil(8);
    let run = |buf: &mut Vec<u64>| {
        if buf.len() < words {
            buf.resize(words, 0);
        }
        f(carve(bytemuck::cast_slice_mut(&mut buf[..words]), lens))
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        // Re-entered on this thread (a conv inside a conv's closure): use a private buffer.
        Err(_) => run(&mut Vec::new()),
    })
}

/// `buf` cut into `K` consecutive slices of the given lengths (which must fit in it).
pub(super) fn carve<T, const K: usize>(buf: &mut [T], lens: [usize; K]) -> [&mut [T]; K] {
    let mut rest = buf;
    std::array::from_fn(|i| {
        let (part, tail) = std::mem::take(&mut rest).split_at_mut(lens[i]);
        rest = tail;
        part
    })
}
