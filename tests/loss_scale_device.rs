//! fp16 dynamic loss scaling on the device (`kernels/loss_scale.cu`,
//! `src/distill/loss_scale/device.rs`) against the host `LossScaler`, its specification:
//! the kernels step for step (gradients, scale, good steps, skip flag; growth, backoff, a grown
//! scale that would overflow, a non-finite loss); fp16 training steps through `finish_step` with
//! the scaler on the device equal, bit for bit, the same steps scaled on the host (forced
//! overflow, growth at PyTorch's interval), continue the same sequence from a read-back state, and
//! capture as one step graph whose replays equal eager steps. Emulator in both thread orders, and
//! cuda when present.

use lit_engine::autograd::Graph;
use lit_engine::device::Device;
use lit_engine::distill::loss_scale::device::{step_overflowed, DeviceLossScaler};
use lit_engine::distill::loss_scale::LossScaler;
use lit_engine::distill::step::{finish_step, sync_loss_scaler, NonFiniteGuard, StepEnv};
use lit_engine::distill::{Batch, Compute, StepOutcome};
use lit_engine::models::{self, Input, Model};
use lit_engine::nn::ParamStore;
use lit_engine::ops::elementwise::mul;
use lit_engine::ops::loss::{cross_entropy, Reduction};
use lit_engine::optim::Sgd;
use lit_engine::rng::Rng;
use lit_engine::tensor::{IndexTensor, Tensor};
use lit_engine::testing::{kernel_devices, random_f32};
use lit_engine::train::step_graph::{
    capture_store_step, store_addresses, store_unchanged, StepOutputs,
};
use lit_engine::Precision;

/// Bits of a float vector, so that NaNs compare and -0 differs from 0.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Gradient `i` of step `step`: odd sizes (130 gradients: two unscale launches), values around
/// the scale, an infinity or a NaN where `poison` says.
fn grads(step: u64, poison: Option<(usize, f32)>) -> Vec<Vec<f32>> {
    (0..130usize)
        .map(|i| {
            let n = (i * 37) % 301 + 1;
            let mut g: Vec<f32> = random_f32(step * 1000 + i as u64, n)
                .iter()
                .map(|v| v * 3000.0)
                .collect();
            if let Some((at, value)) = poison {
                if at == i {
                    g[n / 2] = value;
                }
            }
            g
        })
        .collect()
}

/// A store whose parameter `p{i}` has gradient `grads[i]`, plus an empty one and one without
/// a gradient (both skipped by the host and the device).
fn store_with(grads: &[Vec<f32>], dev: &Device) -> ParamStore {
    let mut store = ParamStore::new();
    for (i, g) in grads.iter().enumerate() {
        let name = format!("p{i}");
        store
            .add_param(&name, Tensor::zeros(&[g.len()], dev).unwrap())
            .unwrap();
        store
            .accumulate_grad(&name, Tensor::from_vec(&[g.len()], g.clone(), dev).unwrap())
            .unwrap();
    }
    store
        .add_param("empty", Tensor::zeros(&[0], dev).unwrap())
        .unwrap();
    store
        .accumulate_grad("empty", Tensor::zeros(&[0], dev).unwrap())
        .unwrap();
    store
        .add_param("no_grad", Tensor::zeros(&[3], dev).unwrap())
        .unwrap();
    store
}

/// Fails naming the first entry where two (name, bits) lists differ (the lists are too long to
/// print).
#[track_caller]
fn assert_same(got: &[(String, Vec<u32>)], want: &[(String, Vec<u32>)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: entries");
    if let Some((g, _)) = got.iter().zip(want).find(|(g, w)| g != w) {
        panic!("{what}: `{}` differs", g.0);
    }
}

fn grad_bits(store: &ParamStore) -> Vec<(String, Vec<u32>)> {
    store
        .iter()
        .filter_map(|(n, p)| Some((n.to_string(), bits(&p.grad.as_ref()?.to_vec().unwrap()))))
        .collect()
}

/// Steps of the kernels against the host scaler from `start`, growing every `interval` good
/// steps; `poisons[s]` puts a non-finite value into a gradient of step `s`.
fn kernels_follow_the_host(start: LossScaler, interval: u32, poisons: &[Option<(usize, f32)>]) {
    for dev in kernel_devices() {
        let name = dev.name();
        let mut host = start;
        let mut scaler = DeviceLossScaler::with_growth_interval(&start, interval, &dev).unwrap();
        let guard = Tensor::zeros(&[1], &dev).unwrap();
        // A loss of 5 elements: the seed kernel covers more than one element.
        let loss = Tensor::zeros(&[5], &dev).unwrap();
        for (s, poison) in poisons.iter().enumerate() {
            let g = grads(s as u64, *poison);
            let seed = scaler.begin(&loss, &guard).unwrap();
            assert_eq!(
                bits(&seed.to_vec().unwrap()),
                bits(&[host.scale; 5]),
                "{name}"
            );
            let mut want = store_with(&g, &Device::Cpu);
            let finite = host.unscale(&mut want).unwrap();
            host.update_with(finite, interval);
            let mut got = store_with(&g, &dev);
            scaler.unscale(&mut got).unwrap();
            assert_eq!(
                scaler.skip_flag().to_vec().unwrap(),
                vec![f32::from(!finite)],
                "{name} step {s}: skip flag"
            );
            scaler.update(&guard).unwrap();
            let what = format!("{name} step {s} (from {start:?}): gradients");
            assert_same(&grad_bits(&got), &grad_bits(&want), &what);
            assert_eq!(scaler.read().unwrap(), host, "{name} step {s}: state");
            let snapshot = scaler.snapshot().unwrap().to_vec().unwrap();
            assert_eq!(step_overflowed(&snapshot), !finite, "{name} step {s}");
        }
    }
}

#[test]
fn kernels_back_off_count_and_grow_as_the_host_scaler() {
    let inf = Some((129, f32::INFINITY));
    let nan = Some((0, f32::NAN));
    let neg_inf = Some((64, f32::NEG_INFINITY));
    // Interval 2: grows at steps 1 and 3, backs off at 4 and 6, grows again at 8.
    let poisons = [None, None, None, None, inf, None, nan, None, None, neg_inf];
    kernels_follow_the_host(LossScaler::default(), 2, &poisons);
    // PyTorch's interval, one good step before it.
    let near = LossScaler {
        scale: 1024.0,
        good_steps: 1998,
    };
    kernels_follow_the_host(near, 2000, &[None, None, inf, None]);
    // A scale that is not a power of two: unscaling rounds, by the reciprocal.
    let odd = LossScaler {
        scale: 1000.0,
        good_steps: 0,
    };
    kernels_follow_the_host(odd, 3, &[None, None, None, inf, None]);
}

#[test]
fn a_grown_scale_that_would_overflow_stays_on_the_device_too() {
    let top = LossScaler {
        scale: f32::MAX,
        good_steps: 0,
    };
    kernels_follow_the_host(top, 1, &[None, None]);
    let mut host = top;
    host.update_with(true, 1);
    assert_eq!(
        host,
        LossScaler {
            scale: f32::MAX,
            good_steps: 0
        }
    );
}

#[test]
fn a_set_guard_skips_the_update_and_freezes_the_scaler() {
    for dev in kernel_devices() {
        let start = LossScaler {
            scale: 512.0,
            good_steps: 3,
        };
        let mut scaler = DeviceLossScaler::with_growth_interval(&start, 4, &dev).unwrap();
        let guard = Tensor::from_vec(&[1], vec![1.0], &dev).unwrap();
        let loss = Tensor::zeros(&[], &dev).unwrap();
        scaler.begin(&loss, &guard).unwrap();
        assert_eq!(scaler.skip_flag().to_vec().unwrap(), vec![1.0]);
        let mut store = store_with(&grads(0, Some((7, f32::NAN))), &dev);
        scaler.unscale(&mut store).unwrap();
        scaler.update(&guard).unwrap();
        // Neither a growth (the 4th good step) nor a backoff, and not an overflow step.
        assert_eq!(scaler.read().unwrap(), start, "{}", dev.name());
        assert!(!step_overflowed(&scaler.state().to_vec().unwrap()));
    }
}

#[test]
fn bad_states_and_devices_are_errors() {
    let dev = Device::emu().unwrap();
    let s = LossScaler::default();
    assert!(DeviceLossScaler::new(&s, &Device::Cpu).is_err());
    assert!(DeviceLossScaler::with_growth_interval(&s, 0, &dev).is_err());
    assert!(DeviceLossScaler::with_growth_interval(&s, (1 << 24) + 1, &dev).is_err());
    let counted = LossScaler {
        scale: 8.0,
        good_steps: 10,
    };
    let err = DeviceLossScaler::with_growth_interval(&counted, 10, &dev)
        .err()
        .unwrap();
    assert!(err.to_string().contains("10 good steps"), "{err}");
    let mut scaler = DeviceLossScaler::new(&s, &dev).unwrap();
    let cpu_loss = Tensor::zeros(&[], &Device::Cpu).unwrap();
    let guard = Tensor::zeros(&[1], &dev).unwrap();
    assert!(scaler.begin(&cpu_loss, &guard).is_err());
    let mut cpu_store = store_with(&grads(0, None), &Device::Cpu);
    assert!(scaler.unscale(&mut cpu_store).is_err());
}

// ---------- training steps through finish_step ----------

const INPUT: [usize; 2] = [6, 784];
/// Multiplies the loss of the step that must overflow: the loss (about 2e35) stays finite, its
/// scaled gradients do not.
const HUGE: f32 = 1e35;

fn batch(step: u64, dev: &Device) -> (Tensor, IndexTensor) {
    let mut rng = Rng::new(500 + step);
    let x = (0..INPUT[0] * INPUT[1])
        .map(|_| rng.normal() as f32)
        .collect();
    let y = (0..INPUT[0]).map(|_| rng.below(10) as i32).collect();
    (
        Tensor::from_vec(&INPUT, x, dev).unwrap(),
        IndexTensor::from_vec(&[INPUT[0]], y, dev).unwrap(),
    )
}

/// One fp16 step of `factor · cross_entropy(model(x), y)` through `finish_step` with SGD: the
/// step's outcome (still on the device with a guard) and its loss tensor.
fn fp16_step(
    model: &dyn Model,
    store: &mut ParamStore,
    opt: &mut Sgd,
    env: &mut StepEnv,
    (x, y, factor): (&Tensor, &IndexTensor, &Tensor),
) -> lit_engine::error::Result<(lit_engine::distill::step::PendingStep, Tensor)> {
    let mut g: Graph = env.at.graph();
    let xv = g.constant(x.clone());
    let logits = model.forward(&mut g, store, Input::Float(xv), true)?;
    let ce = cross_entropy(&mut g, logits, y, Reduction::Mean)?;
    let f = g.constant(factor.clone());
    let loss = mul(&mut g, ce, f)?;
    let value = g.value(loss).clone();
    let batch = Batch {
        x: lit_engine::data::Batch::Float(x.clone()),
        y: y.clone(),
        indices: None,
    };
    let pending = finish_step(
        &mut g,
        loss,
        logits,
        &batch,
        store,
        Vec::new(),
        env,
        |s, skip| opt.step_unless(s, skip),
    )?;
    Ok((pending, value))
}

fn snapshot(store: &ParamStore) -> Vec<(String, Vec<u32>)> {
    store
        .iter()
        .map(|(n, p)| (n.to_string(), bits(&p.value.to_vec().unwrap())))
        .collect()
}

/// A model, its store and optimizer, built the same way every time.
fn build(dev: &Device) -> (Box<dyn Model>, ParamStore, Sgd) {
    let mut store = ParamStore::new();
    let model = models::build("mlp-784-32-10", 10, &mut store, dev, &mut Rng::new(9)).unwrap();
    (model, store, Sgd::new(0.05, 0.9, 5e-4, false).unwrap())
}

/// The loss factors of the compared steps: step 2 grows the scale (PyTorch's interval, from
/// [`START`]), step 3 overflows, and the rest count.
const FACTORS: [f32; 6] = [1.0, 1.0, 1.0, HUGE, 1.0, 1.0];
const START: LossScaler = LossScaler {
    scale: 65536.0,
    good_steps: 1997,
};

/// Per step: outcome, scaler after it, weights after it.
type Trace = Vec<(StepOutcome, LossScaler, Vec<(String, Vec<u32>)>)>;

/// [`FACTORS`] steps scaled on the host (`device_scaler` false) or on the device; with
/// `stop_after`, the device state is read back after that step and the rest runs with a new
/// guard built from it (a resume).
fn train(dev: &Device, device_scaler: bool, stop_after: Option<usize>) -> Trace {
    let (model, mut store, mut opt) = build(dev);
    let mut host = Some(START);
    let mut guard = match device_scaler {
        true => NonFiniteGuard::with_loss_scaler(dev, host.as_ref()).unwrap(),
        false => None,
    };
    let mut trace = Vec::new();
    for (s, &factor) in FACTORS.iter().enumerate() {
        let (x, y) = batch(s as u64, dev);
        let f = Tensor::full(&[], factor, dev).unwrap();
        let mut ignored = START;
        let mut env = StepEnv {
            at: Compute {
                device: dev,
                precision: Precision::Fp16,
            },
            // The device path leaves the host scaler alone: give it one to check that.
            scaler: Some(match device_scaler {
                true => &mut ignored,
                false => host.as_mut().unwrap(),
            }),
            guard: guard.as_mut(),
        };
        let (pending, _) =
            fp16_step(&*model, &mut store, &mut opt, &mut env, (&x, &y, &f)).unwrap();
        assert_eq!(pending.is_resolved(), !device_scaler || dev.is_cpu());
        let out = pending.resolve().unwrap();
        assert_eq!(ignored, START, "the host scaler is not the device path's");
        if device_scaler {
            // A test's read, not the trainer's: it reads back only when it commits.
            sync_loss_scaler(guard.as_ref(), &mut host).unwrap();
        }
        trace.push((out, host.unwrap(), snapshot(&store)));
        if stop_after == Some(s) {
            guard = NonFiniteGuard::with_loss_scaler(dev, host.as_ref()).unwrap();
        }
    }
    trace
}

#[test]
fn fp16_steps_with_the_scaler_on_the_device_equal_the_host_scaler_bit_for_bit() {
    let cpu = train(&Device::Cpu, false, None);
    let scales: Vec<(f32, u32, bool)> = cpu
        .iter()
        .map(|(o, s, _)| (s.scale, s.good_steps, o.skipped))
        .collect();
    assert_eq!(
        scales,
        vec![
            (65536.0, 1998, false),
            (65536.0, 1999, false),
            (131072.0, 0, false),
            (65536.0, 0, true),
            (65536.0, 1, false),
            (65536.0, 2, false),
        ]
    );
    assert_same(
        &cpu[3].2,
        &cpu[2].2,
        "the overflowing step changed no weight",
    );
    for dev in kernel_devices() {
        let host = train(&dev, false, None);
        let device = train(&dev, true, None);
        for (s, (h, d)) in host.iter().zip(&device).enumerate() {
            let name = format!("{} step {s}", dev.name());
            assert_eq!(h.0.loss.to_bits(), d.0.loss.to_bits(), "{name}: loss");
            assert_eq!(
                (h.0.correct, h.0.skipped),
                (d.0.correct, d.0.skipped),
                "{name}"
            );
            assert_eq!(h.1, d.1, "{name}: scaler");
            assert_same(&d.2, &h.2, &format!("{name}: weights"));
            assert_eq!(
                (h.1, h.0.skipped),
                (cpu[s].1, cpu[s].0.skipped),
                "{name} vs cpu"
            );
        }
        // A resume from the state read back after the growth continues the same sequence.
        let resumed = train(&dev, true, Some(2));
        for (s, (d, r)) in device.iter().zip(&resumed).enumerate() {
            let name = format!("{} resumed, step {s}", dev.name());
            assert_eq!((d.1, d.0.skipped), (r.1, r.0.skipped), "{name}");
            assert_same(&r.2, &d.2, &format!("{name}: weights"));
        }
    }
}

#[test]
fn a_non_finite_loss_on_the_device_path_changes_nothing() {
    for dev in kernel_devices() {
        let (model, mut store, mut opt) = build(&dev);
        let mut guard = NonFiniteGuard::with_loss_scaler(&dev, Some(&START)).unwrap();
        let before = snapshot(&store);
        for (s, factor) in [f32::INFINITY, 1.0].into_iter().enumerate() {
            let (x, y) = batch(s as u64, &dev);
            let f = Tensor::full(&[], factor, &dev).unwrap();
            let mut env = StepEnv {
                at: Compute {
                    device: &dev,
                    precision: Precision::Fp16,
                },
                scaler: None,
                guard: guard.as_mut(),
            };
            let (pending, _) =
                fp16_step(&*model, &mut store, &mut opt, &mut env, (&x, &y, &f)).unwrap();
            // Not a skipped step: the trainer stops on the loss.
            assert!(!pending.resolve().unwrap().skipped);
        }
        // The guard is sticky: the finite step after it changed nothing either.
        assert_same(&snapshot(&store), &before, &dev.name());
        let mut host = None;
        sync_loss_scaler(guard.as_ref(), &mut host).unwrap();
        assert_eq!(host, Some(START));
    }
}

#[test]
fn a_captured_fp16_step_replays_the_eager_steps_bit_for_bit() {
    for dev in kernel_devices() {
        let gpu = dev.gpu().unwrap().clone();
        let name = dev.name();
        let at = Compute {
            device: &dev,
            precision: Precision::Fp16,
        };
        let (model, mut eager, mut eager_opt) = build(&dev);
        let (_, mut graphed, mut graphed_opt) = build(&dev);
        let mut eager_guard = NonFiniteGuard::with_loss_scaler(&dev, Some(&START)).unwrap();
        let mut graphed_guard = NonFiniteGuard::with_loss_scaler(&dev, Some(&START)).unwrap();
        let inputs = |s: usize| {
            let (x, y) = batch(s as u64, &dev);
            (x, y, Tensor::full(&[], FACTORS[s], &dev).unwrap())
        };
        // The step the graph holds: its loss and the scaler's state are its outputs.
        let step = |store: &mut ParamStore,
                    opt: &mut Sgd,
                    guard: &mut Option<NonFiniteGuard>,
                    (x, y, f): (&Tensor, &IndexTensor, &Tensor)| {
            let mut env = StepEnv {
                at,
                scaler: None,
                guard: guard.as_mut(),
            };
            let (_, loss) = fp16_step(&*model, store, opt, &mut env, (x, y, f))?;
            let state = guard
                .as_ref()
                .unwrap()
                .loss_scaler()
                .unwrap()
                .state()
                .clone();
            Ok(vec![loss, state])
        };

        // Step 0 eagerly on both (kernels loaded, momentum buffers created).
        let (x0, y0, f0) = inputs(0);
        step(
            &mut eager,
            &mut eager_opt,
            &mut eager_guard,
            (&x0, &y0, &f0),
        )
        .unwrap();
        step(
            &mut graphed,
            &mut graphed_opt,
            &mut graphed_guard,
            (&x0, &y0, &f0),
        )
        .unwrap();

        let (mut x_in, mut y_in, mut f_in) = inputs(1);
        let outputs = StepOutputs::values(vec![
            Tensor::zeros(&[], &dev).unwrap(),
            Tensor::zeros(&[3], &dev).unwrap(),
        ]);
        let graph = capture_store_step(&gpu, &mut graphed, outputs, |store| {
            step(
                store,
                &mut graphed_opt,
                &mut graphed_guard,
                (&x_in, &y_in, &f_in),
            )
            .map(StepOutputs::values)
        })
        .unwrap();
        let addresses = store_addresses(&gpu, &graphed);
        for s in 1..FACTORS.len() {
            let (x, y, f) = inputs(s);
            gpu.upload_into(x_in.try_buffer_mut().unwrap(), &x.to_vec().unwrap())
                .unwrap();
            gpu.upload_into(y_in.try_buffer_mut().unwrap(), &y.to_vec().unwrap())
                .unwrap();
            gpu.upload_into(f_in.try_buffer_mut().unwrap(), &f.to_vec().unwrap())
                .unwrap();
            assert!(store_unchanged(&gpu, &graphed, &addresses), "{name}");
            graph.launch(&gpu).unwrap();
            let want = step(&mut eager, &mut eager_opt, &mut eager_guard, (&x, &y, &f)).unwrap();
            for (i, what) in ["loss", "scaler state"].iter().enumerate() {
                assert_eq!(
                    bits(&graph.outputs().values[i].to_vec().unwrap()),
                    bits(&want[i].to_vec().unwrap()),
                    "{name}: {what} of step {s}"
                );
            }
            assert_eq!(
                snapshot(&graphed),
                snapshot(&eager),
                "{name}: store after step {s}"
            );
        }
        // The replays moved the scaler as the eager steps did: grown at step 2, backed off at 3.
        let state = graphed_guard
            .as_ref()
            .unwrap()
            .loss_scaler()
            .unwrap()
            .read()
            .unwrap();
        assert_eq!(
            state,
            LossScaler {
                scale: 65536.0,
                good_steps: 2
            },
            "{name}"
        );
    }
}
