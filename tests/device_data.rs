//! Data on the device (`data::resident`, `kernels/augment.cu`, `kernels/philox.cuh`): the device
//! Philox equals the host one and Random123's known answers, and batches made on the device from
//! a resident data set equal the host loader's bit for bit — images (plain and augmented, odd
//! shapes, partial batches), token ids and labels, over several epochs and from a resumed
//! mid-epoch start — on the emulator in both thread orders, and with fewer blocks than elements.

use lit_engine::data::augment::AugmentKey;
use lit_engine::data::resident::{philox_on_device, resident_bytes, DeviceDataset, Placement};
use lit_engine::data::{Batch, Dataset, Loader, Split};
use lit_engine::device::emu::EmuBackend;
use lit_engine::device::{EmuOrder, Gpu, GpuBackend};
use lit_engine::rng::philox::philox4x32_10;
use lit_engine::rng::Rng;
use lit_engine::Device;
use std::sync::Arc;

/// Every kernel device (emulators in both thread orders; cuda when present, required with
/// `LIT_REQUIRE_GPU=1`), and an emulator that runs grid-stride kernels on 2 blocks.
fn kernel_devices() -> Vec<Device> {
    let mut devices = lit_engine::testing::kernel_devices();
    devices.push(Device::emu_with_grid_stride_cap(EmuOrder::Reverse, 2).unwrap());
    devices
}

/// Images whose pixels differ within and across images (0 and 255 included), 3 classes.
fn images(n: usize, chw: [usize; 3]) -> Dataset {
    let per: usize = chw.iter().product();
    let pixels = (0..n)
        .flat_map(|i| (0..per).map(move |p| ((p * 37 + i * 101) % 256) as u8))
        .collect();
    let labels = (0..n as i32).map(|i| (i * 7) % 3).collect();
    Dataset::images("toy", Split::Train, 3, chw, pixels, labels)
        .unwrap()
        .with_normalization(&vec![0.4914; chw[0]], &vec![0.247; chw[0]])
        .unwrap()
}

fn resident(data: &Dataset, dev: &Device) -> Dataset {
    let placed = data.clone().place_on(dev).unwrap();
    assert!(placed.resident.is_some(), "a small set must go resident");
    placed
}

/// (input bits or ids, labels) of every batch.
type Batches = Vec<(Vec<u32>, Vec<i32>)>;

struct Epoch<'a> {
    data: &'a Dataset,
    device: &'a Device,
    seed: u64,
    epoch: u32,
    augment: bool,
    batch: usize,
    first: usize,
}

impl Epoch<'_> {
    /// The epoch's batches through the loader: on the device when `host` is false and the data
    /// set is resident, else on the host.
    fn run(&self, host: bool) -> Batches {
        let mut rng = Rng::new(self.seed);
        let mut loader = Loader::shuffled(self.data, self.batch, &mut rng, self.device).unwrap();
        if self.augment {
            loader = loader
                .augment_keyed(AugmentKey::draw(&mut rng, self.epoch))
                .unwrap();
        }
        if host {
            loader = loader.host_only();
        }
        assert_eq!(loader.on_device(), !host && self.data.resident.is_some());
        loader
            .starting_at(self.first)
            .map(|b| {
                let (x, y) = b.unwrap();
                let x = match x {
                    Batch::Float(t) => t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect(),
                    Batch::Ids(t) => t.to_vec().unwrap().iter().map(|&v| v as u32).collect(),
                };
                (x, y.to_vec().unwrap())
            })
            .collect()
    }
}

#[test]
fn device_philox_matches_the_host_and_random123_known_answers() {
    let mut inputs = vec![
        ([0, 0, 0, 0], [0, 0]),
        ([u32::MAX; 4], [u32::MAX; 2]),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
        ),
    ];
    let mut rng = Rng::new(9);
    for _ in 0..300 {
        let w: [u32; 6] = std::array::from_fn(|_| rng.next_u32());
        inputs.push(([w[0], w[1], w[2], w[3]], [w[4], w[5]]));
    }
    let host: Vec<[u32; 4]> = inputs.iter().map(|&(c, k)| philox4x32_10(c, k)).collect();
    assert_eq!(
        host[0],
        [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
    );
    assert_eq!(
        host[1],
        [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
    );
    assert_eq!(
        host[2],
        [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
    );
    for dev in kernel_devices() {
        assert_eq!(philox_on_device(&dev, &inputs).unwrap(), host, "{dev:?}");
    }
}

#[test]
fn device_batches_equal_host_batches_bit_for_bit_with_and_without_augmentation() {
    // Odd shapes: 3 × 5 × 7 (smaller than the crop window's travel), 1 × 9 × 4; partial last batch.
    for (chw, n, batch) in [([3, 5, 7], 23, 6), ([1, 9, 4], 10, 4), ([3, 32, 32], 9, 8)] {
        let host_data = images(n, chw);
        for dev in kernel_devices() {
            let data = resident(&host_data, &dev);
            for augment in [false, true] {
                for epoch in [0u32, 3] {
                    let e = Epoch {
                        data: &data,
                        device: &dev,
                        seed: 5,
                        epoch,
                        augment,
                        batch,
                        first: 0,
                    };
                    let on_device = e.run(false);
                    assert_eq!(on_device.len(), n.div_ceil(batch));
                    assert_eq!(on_device, e.run(true), "{chw:?} augment {augment} {dev:?}");
                    // The host path of the never-uploaded data set on cpu: the same batches.
                    let cpu = Epoch {
                        data: &host_data,
                        device: &Device::Cpu,
                        ..e
                    };
                    assert_eq!(on_device, cpu.run(true), "{chw:?} vs cpu");
                }
            }
        }
    }
}

#[test]
fn a_few_epochs_and_a_resumed_epoch_repeat_the_host_batches() {
    let host_data = images(37, [3, 8, 8]);
    let dev = Device::emu_with_order(EmuOrder::Reverse).unwrap();
    let data = resident(&host_data, &dev);
    // A run's generator: shuffle, then the key, epoch after epoch (as the trainer draws them).
    let mut run_rng = Rng::new(42);
    let mut seen_epochs = Vec::new();
    for epoch in 0..3u32 {
        let epoch_rng = run_rng.clone();
        let batches = |data: &Dataset, device: &Device, first: usize| -> Batches {
            let mut rng = epoch_rng.clone();
            Loader::shuffled(data, 5, &mut rng, device)
                .unwrap()
                .augment_keyed(AugmentKey::draw(&mut rng, epoch))
                .unwrap()
                .starting_at(first)
                .map(|b| {
                    let (x, y) = b.unwrap();
                    let x = x.float().unwrap().to_vec().unwrap();
                    (x.iter().map(|v| v.to_bits()).collect(), y.to_vec().unwrap())
                })
                .collect()
        };
        let full = batches(&data, &dev, 0);
        assert_eq!(full, batches(&host_data, &Device::Cpu, 0), "epoch {epoch}");
        // Resumed at batch 3 of 8: exactly the tail of the full pass.
        assert_eq!(batches(&data, &dev, 3), full[3..].to_vec(), "epoch {epoch}");
        seen_epochs.push(full);
        // Advance the run's generator as the epoch did.
        let mut rng = epoch_rng;
        let mut order: Vec<usize> = (0..data.len()).collect();
        rng.shuffle(&mut order);
        AugmentKey::draw(&mut rng, epoch);
        run_rng = rng;
    }
    assert_ne!(seen_epochs[0], seen_epochs[1], "epochs differ");
}

#[test]
fn token_ids_and_labels_are_gathered_on_the_device() {
    let ids = Dataset::tokens(
        "t",
        Split::Test,
        4,
        7,
        (0..13 * 7).map(|i| (i * 11 % 70) as u8).collect(),
        (0..13).map(|i| i % 4).collect(),
    )
    .unwrap();
    for dev in kernel_devices() {
        let data = resident(&ids, &dev);
        let e = Epoch {
            data: &data,
            device: &dev,
            seed: 3,
            epoch: 0,
            augment: false,
            batch: 5,
            first: 1,
        };
        let on_device = e.run(false);
        assert_eq!(on_device.len(), 2, "resumed at batch 1 of 3");
        assert_eq!(on_device, e.run(true), "{dev:?}");
    }
}

#[test]
fn a_data_set_over_the_budget_or_out_of_device_memory_stays_on_the_host() {
    let data = images(10, [1, 4, 4]);
    // 160 bytes + 40 of labels + 1 KiB of normalisation table.
    let need = resident_bytes(&data).unwrap();
    assert_eq!(need, 160 + 40 + 1024);
    let dev = Device::emu_with_order(EmuOrder::Forward).unwrap();
    assert!(matches!(
        DeviceDataset::place(&data, &dev, need).unwrap(),
        Placement::Resident(_)
    ));
    match DeviceDataset::place(&data, &dev, need - 1).unwrap() {
        Placement::Host(why) => assert!(why.contains("budget"), "{why}"),
        Placement::Resident(_) => panic!("over the budget"),
    }
    // Within the budget, but the device runs out of memory: host, not an error.
    let tiny = Device::Gpu(Arc::new(Gpu::new(GpuBackend::Emu(
        EmuBackend::new(EmuOrder::Forward)
            .unwrap()
            .with_alloc_budget(64),
    ))));
    match DeviceDataset::place(&data, &tiny, u64::MAX).unwrap() {
        Placement::Host(why) => assert!(why.contains("upload failed"), "{why}"),
        Placement::Resident(_) => panic!("the emulator has 64 bytes"),
    }
    // cpu: nothing to place, batches on the host.
    let on_cpu = data.clone().place_on(&Device::Cpu).unwrap();
    assert!(on_cpu.resident.is_none());
    assert!(matches!(
        DeviceDataset::place(&data, &Device::Cpu, u64::MAX).unwrap(),
        Placement::Host(_)
    ));
    // A loader on another device, or on a subset, does not use the copy.
    let placed = resident(&data, &dev);
    let other = Device::emu_with_order(EmuOrder::Forward).unwrap();
    assert!(!Loader::sequential(&placed, 4, &other).unwrap().on_device());
    assert!(Loader::sequential(&placed, 4, &dev).unwrap().on_device());
    assert!(placed.first(5).resident.is_none());
}
