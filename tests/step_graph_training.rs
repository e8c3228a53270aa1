//! A real training step as one graph (`src/train/step_graph.rs`): a ResNet (convolutions,
//! BatchNorm with running statistics, SGD with momentum) and an MLP trained by replaying one
//! captured step give, step for step, bit for bit, the weights, buffers and losses of the same
//! steps run eagerly. Emulator in both thread orders, and cuda when present.

use lit_engine::autograd::Graph;
use lit_engine::device::Device;
use lit_engine::models::{self, Input, Model};
use lit_engine::nn::ParamStore;
use lit_engine::ops::loss::{cross_entropy, Reduction};
use lit_engine::optim::Sgd;
use lit_engine::rng::Rng;
use lit_engine::tensor::{IndexTensor, Tensor};
use lit_engine::testing::kernel_devices;
use lit_engine::train::step_graph::{
    capture_store_step, store_addresses, store_unchanged, StepOutputs,
};

/// One SGD step with no host read: forward, cross-entropy, backward, update. The tape is dropped
/// before the update, so the optimizer writes the weights in place.
fn train_step(
    model: &dyn Model,
    store: &mut ParamStore,
    opt: &mut Sgd,
    x: &Tensor,
    y: &IndexTensor,
) -> lit_engine::error::Result<StepOutputs> {
    let mut g = Graph::new(x.device());
    let input = Input::Float(g.constant(x.clone()));
    let logits = model.forward(&mut g, store, input, true)?;
    let loss = cross_entropy(&mut g, logits, y, Reduction::Mean)?;
    let loss_value = g.value(loss).clone();
    g.backward(loss)?;
    g.accumulate_param_grads(store)?;
    drop(g);
    opt.step(store)?;
    store.zero_grads();
    Ok(StepOutputs::values(vec![loss_value]))
}

fn batch(shape: &[usize], step: u64) -> (Vec<f32>, Vec<i32>) {
    let mut rng = Rng::new(1000 + step);
    let n: usize = shape.iter().product();
    let x = (0..n).map(|_| rng.normal() as f32).collect();
    let y = (0..shape[0]).map(|_| (rng.below(10)) as i32).collect();
    (x, y)
}

fn snapshot(store: &ParamStore) -> Vec<(String, Vec<f32>)> {
    store
        .iter()
        .map(|(n, p)| (n.to_string(), p.value.to_vec().unwrap()))
        .collect()
}

fn replays_match_eager(arch: &str, input: &[usize]) {
    for device in kernel_devices().into_iter().filter(|d| d.gpu().is_some()) {
        let gpu = device.gpu().unwrap().clone();
        let name = format!("{arch} on {}", device.name());
        let build = || {
            let mut store = ParamStore::new();
            let model = models::build(arch, 10, &mut store, &device, &mut Rng::new(5)).unwrap();
            let opt = Sgd::new(0.05, 0.9, 5e-4, false).unwrap();
            (model, store, opt)
        };
        let (model, mut eager, mut eager_opt) = build();
        let (_, mut graphed, mut graphed_opt) = build();
        let upload = |step: u64| {
            let (x, y) = batch(input, step);
            (
                Tensor::from_vec(input, x, &device).unwrap(),
                IndexTensor::from_vec(&[input[0]], y, &device).unwrap(),
            )
        };

        // Step 0 eagerly on both (kernels loaded, momentum buffers created).
        let (x0, y0) = upload(0);
        let l0 = train_step(&*model, &mut eager, &mut eager_opt, &x0, &y0).unwrap();
        let l0g = train_step(&*model, &mut graphed, &mut graphed_opt, &x0, &y0).unwrap();
        assert_eq!(
            l0.values[0].to_vec().unwrap(),
            l0g.values[0].to_vec().unwrap(),
            "{name}"
        );
        drop((l0, l0g));

        // The graph's inputs and output live across replays.
        let (mut x_in, mut y_in) = upload(1);
        let outputs = StepOutputs::values(vec![Tensor::zeros(&[], &device).unwrap()]);
        let graph = capture_store_step(&gpu, &mut graphed, outputs, |store| {
            train_step(&*model, store, &mut graphed_opt, &x_in, &y_in)
        })
        .unwrap();
        let addresses = store_addresses(&gpu, &graphed);

        for step in 1..4u64 {
            let (x, y) = batch(input, step);
            gpu.upload_into(x_in.try_buffer_mut().unwrap(), &x).unwrap();
            gpu.upload_into(y_in.try_buffer_mut().unwrap(), &y).unwrap();
            assert!(store_unchanged(&gpu, &graphed, &addresses), "{name}");
            graph.launch(&gpu).unwrap();
            let (xe, ye) = upload(step);
            let loss = train_step(&*model, &mut eager, &mut eager_opt, &xe, &ye).unwrap();
            assert_eq!(
                graph.outputs().values[0].to_vec().unwrap(),
                loss.values[0].to_vec().unwrap(),
                "{name}: loss of step {step}"
            );
            assert_eq!(
                snapshot(&graphed),
                snapshot(&eager),
                "{name}: store after step {step}"
            );
        }
        assert!(graph.kernels() >= 8, "{name}: {} kernels", graph.kernels());
    }
}

#[test]
fn resnet_step_graph_replays_equal_eager_steps() {
    replays_match_eager("takd-resnet8", &[4, 3, 32, 32]);
}

#[test]
fn mlp_step_graph_replays_equal_eager_steps() {
    replays_match_eager("mlp-784-32-10", &[6, 784]);
}

#[test]
fn a_store_entry_held_elsewhere_is_refused() {
    let device = Device::emu().unwrap();
    let gpu = device.gpu().unwrap().clone();
    let mut store = ParamStore::new();
    let model = models::build("mlp-784-32-10", 10, &mut store, &device, &mut Rng::new(1)).unwrap();
    let mut opt = Sgd::new(0.1, 0.0, 0.0, false).unwrap();
    let (x, y) = batch(&[2, 784], 0);
    let x = Tensor::from_vec(&[2, 784], x, &device).unwrap();
    let y = IndexTensor::from_vec(&[2], y, &device).unwrap();
    train_step(&*model, &mut store, &mut opt, &x, &y).unwrap();
    let snapshot = store.iter().next().unwrap().1.value.clone();
    let outputs = StepOutputs::values(vec![Tensor::zeros(&[], &device).unwrap()]);
    let err = capture_store_step(&gpu, &mut store, outputs, |s| {
        train_step(&*model, s, &mut opt, &x, &y)
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("shared with another tensor"), "{err}");
    drop(snapshot);
    // Nothing was captured and the device works eagerly.
    train_step(&*model, &mut store, &mut opt, &x, &y).unwrap();
}

#[test]
fn bench_graph_replays_the_whole_kd_step_as_one_launch() {
    // The KD step (teacher forward, student step) as `bench --graph` captures it: one launch
    // per step standing for every kernel the eager step launches.
    let device = Device::emu().unwrap();
    let spec = |graph| lit_engine::bench::BenchSpec {
        student: "takd-resnet8".into(),
        teacher: Some("resnet20".into()),
        batch: 1,
        num_classes: 10,
        warmup: 1,
        steps: 2,
        forward_only: false,
        precision: lit_engine::Precision::Fp32,
        graph,
    };
    let eager = lit_engine::bench::run(&spec(false), &device).unwrap();
    let graphed = lit_engine::bench::run(&spec(true), &device).unwrap();
    assert_eq!(graphed.launches_per_step, Some(1.0));
    assert_eq!(
        graphed.graph_kernels.map(|k| k as f64),
        eager.launches_per_step,
        "the graph holds exactly the eager step's kernels"
    );
}
