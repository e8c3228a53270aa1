//! Loader throughput: batches per second of 128 augmented CIFAR-10 training images (gather +
//! pad-4 crop + flip + normalise), on the caller's thread and through the prefetch thread; and,
//! when `LIT_DEVICE` names a kernel device (cuda, emu), the host path (prepare + upload) against
//! the device path (the split resident in device memory, batches made by `kernels/augment.cu`).
//!
//! `cargo run --release --example loader_throughput -- [data root] [max batches]` (default root:
//! LIT_DATA_DIR, else ./data; the root needs `cifar-10-batches-bin/`, e.g. from `lit-engine data
//! import`; max batches caps each timed pass, e.g. 20 on the slow emulator).

use lit_engine::data::{self, Dataset, DatasetKind, Loader, Split};
use lit_engine::rng::Rng;
use lit_engine::{Device, Result};
use std::path::PathBuf;
use std::time::Instant;

/// Time one augmented epoch (at most `max` batches): (batches, seconds).
fn time_epoch(
    train: &Dataset,
    device: &Device,
    prefetch: bool,
    augment: bool,
    host_only: bool,
    max: Option<usize>,
) -> Result<(usize, f64)> {
    let mut rng = Rng::new(0);
    let mut loader = Loader::shuffled(train, 128, &mut rng, device)?
        .prefetch(prefetch)
        .limit(max);
    if augment {
        loader = loader.augment(&mut rng)?;
    }
    if host_only {
        loader = loader.host_only();
    }
    let started = Instant::now();
    let mut batches = 0usize;
    for batch in loader {
        let (x, _) = batch?;
        std::hint::black_box(&x);
        batches += 1;
    }
    device.synchronize()?;
    Ok((batches, started.elapsed().as_secs_f64()))
}

fn report(what: &str, (batches, secs): (usize, f64)) {
    println!(
        "{what}: {batches} batches of 128 in {secs:.2} s = {:.0} batches/s ({:.0} images/s)",
        batches as f64 / secs,
        (batches * 128) as f64 / secs
    );
}

fn main() -> Result<()> {
    let root = data::data_root(std::env::args().nth(1).map(PathBuf::from).as_deref());
    let max = std::env::args().nth(2).and_then(|s| s.parse().ok());
    let started = Instant::now();
    let train = data::load(&root, DatasetKind::from_name("cifar10")?, Split::Train)?;
    println!(
        "loaded {} training images in {:.2} s",
        train.len(),
        started.elapsed().as_secs_f64()
    );
    for prefetch in [false, true] {
        for augment in [false, true] {
            let t = time_epoch(&train, &Device::Cpu, prefetch, augment, true, max)?;
            report(
                &format!("cpu prefetch {prefetch:5}  augment {augment:5}"),
                t,
            );
        }
    }
    if std::env::var_os("LIT_DEVICE").is_none() {
        return Ok(());
    }
    let device = Device::select(None)?;
    if device.is_cpu() {
        return Ok(());
    }
    let started = Instant::now();
    let placed = train.place_on(&device)?;
    let resident = placed.resident.is_some();
    println!(
        "{}: {} in {:.2} s",
        device.name(),
        if resident {
            "uploaded the split once"
        } else {
            "the split stays on the host"
        },
        started.elapsed().as_secs_f64()
    );
    let host = time_epoch(&placed, &device, true, true, true, max)?;
    report(
        &format!("{} host path (prefetch, upload)", device.name()),
        host,
    );
    if resident {
        let dev = time_epoch(&placed, &device, true, true, false, max)?;
        report(&format!("{} device path (resident)", device.name()), dev);
        println!(
            "device path / host path throughput: {:.2}x",
            (dev.0 as f64 / dev.1) / (host.0 as f64 / host.1)
        );
    }
    Ok(())
}
