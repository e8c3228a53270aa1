//! Training steps that never wait for the device (issue 13): on emu, steps with a
//! `NonFiniteGuard` read nothing back until their outcomes are resolved, and give bit for bit
//! what the synchronous step (no guard, today's path) gives; a non-finite loss changes no weight
//! or momentum, in that step and every later one. Plus the kernels this needs, against their CPU
//! references in both thread orders: the correct-prediction count, the non-finite flag, the
//! skip flag of both SGD kernels and the fill behind `Tensor::full`.

use lit_engine::device::{Device, EmuOrder};
use lit_engine::distill::kd::{kd_step, Teacher};
use lit_engine::distill::step::{finish_step, NonFiniteGuard, PendingStep, StepEnv};
use lit_engine::distill::{model_input, Batch, Compute, StepOutcome};
use lit_engine::models::{self, Model};
use lit_engine::nn::{EntryKind, ParamStore};
use lit_engine::ops::kd::KdLoss;
use lit_engine::ops::loss::{count_correct, count_correct_cpu, cross_entropy, Reduction};
use lit_engine::optim::Sgd;
use lit_engine::rng::Rng;
use lit_engine::testing::random_f32;
use lit_engine::{IndexTensor, Tensor};

fn emu_devices() -> Vec<Device> {
    [EmuOrder::Forward, EmuOrder::Reverse]
        .into_iter()
        .map(|o| Device::emu_with_order(o).unwrap())
        .collect()
}

/// Logits with ties, NaNs and infinities, and labels with a negative one.
fn awkward_logits(rows: usize, cols: usize) -> (Vec<f32>, Vec<i32>) {
    let mut x: Vec<f32> = random_f32(rows as u64 * 31 + cols as u64, rows * cols)
        .iter()
        .map(|v| (v * 4.0).round() / 4.0) // coarse values: many ties
        .collect();
    for r in (0..rows).step_by(5) {
        x[r * cols + (r % cols)] = f32::NAN;
    }
    for r in (3..rows).step_by(7) {
        x[r * cols + cols - 1] = f32::INFINITY;
    }
    let y: Vec<i32> = (0..rows)
        .map(|r| {
            if r % 11 == 4 {
                -1
            } else {
                ((r * 7) % cols) as i32
            }
        })
        .collect();
    (x, y)
}

#[test]
fn the_correct_count_kernel_matches_the_cpu_reference() {
    for (rows, cols) in [(1, 1), (37, 13), (300, 3), (257, 10), (5, 1000)] {
        let (x, y) = awkward_logits(rows, cols);
        let want = count_correct_cpu(&x, cols, &y);
        // The reference is the host-side accuracy of evaluation.
        let cpu = Device::Cpu;
        let logits = Tensor::from_vec(&[rows, cols], x.clone(), &cpu).unwrap();
        let labels = IndexTensor::from_vec(&[rows], y.clone(), &cpu).unwrap();
        let acc = lit_engine::ops::loss::accuracy(&logits, &labels).unwrap();
        assert_eq!(acc, want, "{rows}x{cols}: reference vs accuracy");
        assert!(want > 0 || rows < 5, "{rows}x{cols}: a vacuous case");
        for dev in emu_devices() {
            let logits = Tensor::from_vec(&[rows, cols], x.clone(), &dev).unwrap();
            let labels = IndexTensor::from_vec(&[rows], y.clone(), &dev).unwrap();
            let before = dev.gpu().unwrap().host_reads();
            let count = count_correct(&logits, &labels).unwrap();
            assert_eq!(
                dev.gpu().unwrap().host_reads(),
                before,
                "counting reads nothing"
            );
            let got = count.to_vec().unwrap();
            assert_eq!(got, vec![want as i32], "{rows}x{cols} on {}", dev.name());
        }
    }
}

#[test]
fn the_non_finite_flag_is_set_by_inf_or_nan_and_stays_set() {
    for dev in emu_devices() {
        let mut guard = NonFiniteGuard::new(&dev).unwrap().unwrap();
        let scalar = |v: f32| Tensor::from_vec(&[], vec![v], &dev).unwrap();
        guard.observe(&scalar(3.5)).unwrap();
        guard.observe(&scalar(-f32::MAX)).unwrap();
        assert!(!guard.is_set().unwrap(), "finite values leave it clear");
        guard.observe(&scalar(f32::NEG_INFINITY)).unwrap();
        assert!(guard.is_set().unwrap());
        guard.observe(&scalar(1.0)).unwrap();
        assert!(guard.is_set().unwrap(), "sticky");
        let mut nan = NonFiniteGuard::new(&dev).unwrap().unwrap();
        // Odd length, the NaN last: every element is looked at.
        let mut v = vec![0.5f32; 301];
        v[300] = f32::NAN;
        nan.observe(&Tensor::from_vec(&[301], v, &dev).unwrap())
            .unwrap();
        assert!(nan.is_set().unwrap());
    }
    assert!(NonFiniteGuard::new(&Device::Cpu).unwrap().is_none());
}

#[test]
fn full_fills_on_the_device_without_uploading() {
    for dev in emu_devices() {
        let g = dev.gpu().unwrap();
        let before = g.uploads();
        let t = Tensor::full(&[3, 37], -2.5, &dev).unwrap();
        assert_eq!(g.uploads(), before);
        assert_eq!(t.to_vec().unwrap(), vec![-2.5f32; 111]);
        assert_eq!(Tensor::full(&[0], 1.0, &dev).unwrap().numel(), 0);
    }
}

/// A store of a few odd-sized parameters with gradients, on `dev`.
fn store_with_grads(dev: &Device, sizes: &[usize], seed: u64) -> ParamStore {
    let mut store = ParamStore::new();
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("p{i}");
        let w = Tensor::from_vec(&[n], random_f32(seed + i as u64, n), dev).unwrap();
        store.add_param(&name, w).unwrap();
        let grad = Tensor::from_vec(&[n], random_f32(seed + 100 + i as u64, n), dev).unwrap();
        store.accumulate_grad(&name, grad).unwrap();
    }
    store
}

fn values(store: &ParamStore) -> Vec<Vec<f32>> {
    store
        .iter()
        .map(|(_, p)| p.value.to_vec().unwrap())
        .collect()
}

fn buffers(opt: &Sgd) -> Vec<Vec<f32>> {
    opt.momentum_buffers()
        .map(|(_, b)| b.to_vec().unwrap())
        .collect()
}

#[test]
fn a_set_skip_flag_leaves_weights_and_momentum_as_they_were() {
    let sizes = [1usize, 37, 300, 5];
    let mut devices = emu_devices();
    devices.push(Device::Cpu);
    for dev in devices {
        for per_tensor in [false, true] {
            let step = |opt: &mut Sgd, store: &mut ParamStore, skip: Option<&Tensor>| {
                if per_tensor {
                    opt.step_per_tensor_unless(store, skip).unwrap()
                } else {
                    opt.step_unless(store, skip).unwrap()
                }
            };
            // Reference: two plain steps.
            let mut ref_store = store_with_grads(&dev, &sizes, 1);
            let mut ref_opt = Sgd::new(0.1, 0.9, 1e-4, true).unwrap();
            step(&mut ref_opt, &mut ref_store, None);
            let after_one = (values(&ref_store), buffers(&ref_opt));
            step(&mut ref_opt, &mut ref_store, None);
            // The same with a clear flag, then a set one, then a clear one again.
            let mut store = store_with_grads(&dev, &sizes, 1);
            let mut opt = Sgd::new(0.1, 0.9, 1e-4, true).unwrap();
            let clear = Tensor::zeros(&[1], &dev).unwrap();
            let set = Tensor::full(&[1], 1.0, &dev).unwrap();
            step(&mut opt, &mut store, Some(&clear));
            assert_eq!((values(&store), buffers(&opt)), after_one, "clear flag");
            step(&mut opt, &mut store, Some(&set));
            assert_eq!(
                (values(&store), buffers(&opt)),
                after_one,
                "set flag on {} (per tensor {per_tensor}): nothing changes",
                dev.name()
            );
            step(&mut opt, &mut store, Some(&clear));
            assert_eq!(values(&store), values(&ref_store), "then steps as before");
            assert_eq!(buffers(&opt), buffers(&ref_opt));
        }
    }
}

// ---------- whole steps ----------

const CLASSES: usize = 10;

/// A batch of random 32×32 images and labels on `dev` (the same values on every device).
fn image_batch(dev: &Device, size: usize, seed: u64) -> Batch {
    let x = random_f32(seed, size * 3 * 32 * 32);
    let y: Vec<i32> = (0..size)
        .map(|i| ((i as u64 * 7 + seed) % CLASSES as u64) as i32)
        .collect();
    Batch {
        x: lit_engine::data::Batch::Float(Tensor::from_vec(&[size, 3, 32, 32], x, dev).unwrap()),
        y: IndexTensor::from_vec(&[size], y, dev).unwrap(),
        indices: None,
    }
}

/// A model and its store, with the same weights on every device.
fn model_on(arch: &str, dev: &Device, seed: u64) -> (Box<dyn Model>, ParamStore) {
    let mut store = ParamStore::new();
    let model = models::build(arch, CLASSES, &mut store, dev, &mut Rng::new(seed)).unwrap();
    (model, store)
}

/// Every entry of the store (weights and BatchNorm statistics), in order.
fn state(store: &ParamStore) -> Vec<(String, Vec<f32>)> {
    store
        .iter()
        .map(|(n, p)| (n.to_string(), p.value.to_vec().unwrap()))
        .collect()
}

/// One training-from-scratch step (the trainer's `train` method: cross-entropy, SGD).
fn scratch_step(
    model: &dyn Model,
    store: &mut ParamStore,
    opt: &mut Sgd,
    batch: &Batch,
    env: &mut StepEnv,
) -> PendingStep {
    let mut g = env.at.graph();
    let x = model_input(&mut g, batch);
    let logits = model.forward(&mut g, store, x, true).unwrap();
    let loss = cross_entropy(&mut g, logits, &batch.y, Reduction::Mean).unwrap();
    finish_step(
        &mut g,
        loss,
        logits,
        batch,
        store,
        Vec::new(),
        env,
        |store, skip| opt.step_unless(store, skip),
    )
    .unwrap()
}

/// What `steps` steps of `method` (`scratch` or `kd`) give on `dev`, with the guard (queued)
/// or without (synchronous): the outcomes, the state after, and the host reads and uploads the
/// steps made before their outcomes were resolved.
struct Run {
    outcomes: Vec<(u32, usize, usize)>,
    state: Vec<(String, Vec<f32>)>,
    momentum: Vec<Vec<f32>>,
    reads_before_resolving: u64,
    uploads_in_steps: u64,
    /// Weights whose buffer the steps replaced instead of updating it in place.
    moved_weights: Vec<String>,
}

/// The buffer address of every weight (BatchNorm statistics, which each step replaces, left
/// out).
fn weight_addresses(gpu: &lit_engine::device::Gpu, store: &ParamStore) -> Vec<(String, u64)> {
    store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::Param)
        .map(|(n, p)| (n.to_string(), gpu.addr(p.value.buffer())))
        .collect()
}

fn run(arch: &str, method: &str, dev: &Device, queued: bool, steps: usize, lr: f32) -> Run {
    let (model, mut store) = model_on(arch, dev, 7);
    let mut teacher = (method == "kd").then(|| {
        let (model, store) = model_on("takd-resnet8", dev, 8);
        Teacher::new(model, store)
    });
    let batches: Vec<Batch> = (0..steps)
        .map(|i| image_batch(dev, 3, 40 + i as u64))
        .collect();
    let teacher_logits: Vec<Option<Tensor>> = batches
        .iter()
        .map(|b| {
            teacher
                .as_mut()
                .map(|t| t.logits(b, Compute::fp32(dev)).unwrap())
        })
        .collect();
    let mut opt = Sgd::new(lr, 0.9, 5e-4, false).unwrap();
    let mut guard = if queued {
        NonFiniteGuard::new(dev).unwrap()
    } else {
        None
    };
    let gpu = dev.gpu().unwrap().clone();
    let (reads0, uploads0) = (gpu.host_reads(), gpu.uploads());
    let addresses = weight_addresses(&gpu, &store);
    let mut pending = Vec::new();
    for (batch, t) in batches.iter().zip(&teacher_logits) {
        let mut env = StepEnv {
            at: Compute::fp32(dev),
            scaler: None,
            guard: guard.as_mut(),
        };
        pending.push(match t {
            None => scratch_step(model.as_ref(), &mut store, &mut opt, batch, &mut env),
            Some(t) => {
                let loss = KdLoss::from_name("qd", 4.0, 0.7).unwrap();
                kd_step(
                    model.as_ref(),
                    &mut store,
                    &mut opt,
                    batch,
                    t,
                    loss,
                    &mut env,
                )
                .unwrap()
            }
        });
    }
    let reads = gpu.host_reads() - reads0;
    let uploads = gpu.uploads() - uploads0;
    let moved_weights = weight_addresses(&gpu, &store)
        .into_iter()
        .zip(addresses)
        .filter(|(after, before)| after != before)
        .map(|(after, _)| after.0)
        .collect();
    let outcomes = pending
        .into_iter()
        .map(|p| {
            assert_eq!(p.is_resolved(), !queued);
            let StepOutcome {
                loss,
                correct,
                examples,
                skipped,
            } = p.resolve().unwrap();
            assert!(!skipped);
            (loss.to_bits(), correct, examples)
        })
        .collect();
    Run {
        outcomes,
        state: state(&store),
        momentum: buffers(&opt),
        reads_before_resolving: reads,
        uploads_in_steps: uploads,
        moved_weights,
    }
}

fn assert_same_run(queued: &Run, sync: &Run, what: &str) {
    assert_eq!(
        queued.outcomes, sync.outcomes,
        "{what}: losses and correct counts"
    );
    assert_eq!(
        queued.state, sync.state,
        "{what}: weights and BatchNorm statistics"
    );
    assert_eq!(queued.momentum, sync.momentum, "{what}: momentum buffers");
}

#[test]
fn queued_steps_read_nothing_and_match_synchronous_steps_bit_for_bit() {
    for dev in emu_devices() {
        for method in ["scratch", "kd"] {
            let sync = run("takd-resnet8", method, &dev, false, 3, 0.05);
            let queued = run("takd-resnet8", method, &dev, true, 3, 0.05);
            let what = format!("{method} on {}", dev.name());
            assert_eq!(queued.reads_before_resolving, 0, "{what}: host reads");
            assert_eq!(
                queued.uploads_in_steps, 0,
                "{what}: uploads inside the steps"
            );
            assert!(sync
                .outcomes
                .iter()
                .all(|o| f32::from_bits(o.0).is_finite()));
            assert_same_run(&queued, &sync, &what);
            // The tape is dropped before the update: no weight is copied before it is written.
            for r in [&queued, &sync] {
                assert_eq!(
                    r.moved_weights,
                    Vec::<String>::new(),
                    "{what}: copied weights"
                );
            }
        }
    }
}

/// Host reads and uploads per step of ResNet-20, synchronous and queued (printed for the
/// record; the queued step reads nothing back and uploads nothing: device labels are not
/// range-checked on the host, see `ops::loss::check_labels`).
#[test]
fn resnet20_steps_read_nothing_when_queued() {
    let dev = Device::emu_with_order(EmuOrder::Forward).unwrap();
    for method in ["scratch", "kd"] {
        let sync = run("resnet20", method, &dev, false, 1, 0.05);
        let queued = run("resnet20", method, &dev, true, 1, 0.05);
        eprintln!(
            "resnet20 {method} on emu, per step: synchronous {} host reads and {} uploads, \
             queued {} host reads and {} uploads",
            sync.reads_before_resolving,
            sync.uploads_in_steps,
            queued.reads_before_resolving,
            queued.uploads_in_steps
        );
        assert_eq!(queued.reads_before_resolving, 0, "{method}: host reads");
        assert_eq!(queued.uploads_in_steps, 0, "{method}");
        assert_same_run(&queued, &sync, method);
    }
}

/// Every entry's bits (NaN-safe equality).
fn bits(store: &ParamStore) -> Vec<(String, Vec<u32>)> {
    state(store)
        .into_iter()
        .map(|(n, v)| (n, v.iter().map(|x| x.to_bits()).collect()))
        .filter(|(n, _)| !n.contains("running") && !n.contains("num_batches"))
        .collect()
}

/// Set one element of the classifier's bias (an infinite one makes the loss non-finite).
fn set_bias(store: &mut ParamStore, v: f32) -> f32 {
    let name = store
        .iter()
        .map(|(n, _)| n.to_string())
        .find(|n| n.ends_with(".bias") && (n.starts_with("fc") || n.starts_with("linear")))
        .expect("a classifier bias");
    let p = store.get_mut(&name).unwrap();
    let mut b = p.value.to_vec().unwrap();
    let old = b[2];
    b[2] = v;
    p.value = Tensor::from_vec(p.value.shape(), b, p.value.device()).unwrap();
    old
}

#[test]
fn a_non_finite_loss_changes_nothing_then_or_later() {
    for dev in emu_devices() {
        for queued in [true, false] {
            let (model, mut store) = model_on("takd-resnet8", &dev, 7);
            let mut opt = Sgd::new(0.05, 0.9, 5e-4, false).unwrap();
            let mut guard = NonFiniteGuard::new(&dev).unwrap();
            let batches: Vec<Batch> = (0..4).map(|i| image_batch(&dev, 3, 40 + i)).collect();
            let mut step = |store: &mut ParamStore, opt: &mut Sgd, i: usize| {
                let mut env = StepEnv {
                    at: Compute::fp32(&dev),
                    scaler: None,
                    guard: if queued { guard.as_mut() } else { None },
                };
                scratch_step(model.as_ref(), store, opt, &batches[i], &mut env)
            };
            let what = format!("{} queued {queued}", dev.name());
            let first = step(&mut store, &mut opt, 0);
            // An infinite logit for one class: a non-finite loss.
            let finite_bias = set_bias(&mut store, f32::INFINITY);
            let kept = (bits(&store), buffers(&opt));
            let bad = step(&mut store, &mut opt, 1);
            assert_eq!(
                (bits(&store), buffers(&opt)),
                kept,
                "{what}: weights and momentum"
            );
            // Back to finite weights: later steps have finite losses but, queued before the host
            // looked, change nothing either (the flag is sticky).
            set_bias(&mut store, finite_bias);
            let kept = (bits(&store), buffers(&opt));
            let later: Vec<PendingStep> = (2..4).map(|i| step(&mut store, &mut opt, i)).collect();
            assert!(first.resolve().unwrap().loss.is_finite());
            let bad = bad.resolve().unwrap().loss;
            assert!(!bad.is_finite(), "{what}: {bad}");
            for p in later {
                assert!(p.resolve().unwrap().loss.is_finite());
            }
            let after = (bits(&store), buffers(&opt));
            // The synchronous path (today's) has no flag and goes on training.
            assert_eq!(after == kept, queued, "{what}: later steps");
            drop(step);
            assert_eq!(guard.unwrap().is_set().unwrap(), queued, "{what}: the flag");
        }
    }
}
