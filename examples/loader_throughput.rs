//! Loader throughput: batches per second of 128 augmented CIFAR-10 training images (gather +
//! pad-4 crop + flip + normalise), on the caller's thread and through the prefetch thread.
//!
//! `cargo run --release --example loader_throughput -- [data root]` (default: LIT_DATA_DIR, else
//! ./data; the root needs `cifar-10-batches-bin/`, e.g. from `lit-engine data import`).

use lit_engine::data::{self, DatasetKind, Loader, Split};
use lit_engine::rng::Rng;
use lit_engine::{Device, Result};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let root = data::data_root(std::env::args().nth(1).map(PathBuf::from).as_deref());
    let started = Instant::now();
    let train = data::load(&root, DatasetKind::from_name("cifar10")?, Split::Train)?;
    println!(
        "loaded {} training images in {:.2} s",
        train.len(),
        started.elapsed().as_secs_f64()
    );
    let mut rng = Rng::new(0);
    for prefetch in [false, true] {
        for augment in [false, true] {
            let mut loader =
                Loader::shuffled(&train, 128, &mut rng, &Device::Cpu)?.prefetch(prefetch);
            if augment {
                loader = loader.augment(&mut rng)?;
            }
            let started = Instant::now();
            let mut batches = 0usize;
            for batch in loader {
                let (x, _) = batch?;
                std::hint::black_box(&x);
                batches += 1;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "prefetch {prefetch:5}  augment {augment:5}: {batches} batches of 128 in {secs:.2} s \
                 = {:.0} batches/s ({:.0} images/s)",
                batches as f64 / secs,
                train.len() as f64 / secs
            );
        }
    }
    Ok(())
}
