//! Train a 784-64-10 MLP on the MNIST subset in `data/mnist/` with the library's parts: the idx
//! reader, a model from its architecture name, the tape, cross-entropy and SGD. Fails (non-zero
//! exit) unless test accuracy ends well above chance, so `cargo test --release` catches a broken
//! engine. `LIT_DEVICE=cpu|cuda|emu` picks the device (default cpu).
//!
//! `cargo run --release --example train_mlp`

use lit_engine::data::{self, DatasetKind, Loader, Split};
use lit_engine::ops::loss::{accuracy, cross_entropy, Reduction};
use lit_engine::optim::Sgd;
use lit_engine::{models, nn::ParamStore, rng::Rng, Device, Graph, Result};
use std::path::Path;

fn main() -> Result<()> {
    let device = example_device()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mnist = DatasetKind::from_name("mnist")?;
    let train = data::load(&root, mnist, Split::Train)?;
    let test = data::load(&root, mnist, Split::Test)?.first(1000);

    let (mut store, mut rng) = (ParamStore::new(), Rng::new(0));
    let model = models::build("mlp-784-64-10", 10, &mut store, &device, &mut rng)?;
    let mut sgd = Sgd::new(0.05, 0.9, 0.0, false)?;
    for epoch in 0..2 {
        let batches = Loader::shuffled(&train, 64, &mut rng, &device)?.input_shape(&[784])?;
        for batch in batches {
            let (x, y) = batch?;
            let mut g = Graph::new(&device);
            let input = models::Input::from_batch(&mut g, &x);
            let logits = model.forward(&mut g, &mut store, input, true)?;
            let loss = cross_entropy(&mut g, logits, &y, Reduction::Mean)?;
            g.backward(loss)?;
            g.accumulate_param_grads(&mut store)?;
            sgd.step(&mut store)?;
            store.zero_grads();
        }
        println!("epoch {epoch}: {} steps", train.len().div_ceil(64));
    }

    let (x, y) = Loader::sequential(&test, test.len(), &device)?
        .input_shape(&[784])?
        .next()
        .expect("a non-empty test split")?;
    let mut g = Graph::no_grad(&device);
    let input = models::Input::from_batch(&mut g, &x);
    let logits = model.forward(&mut g, &mut store, input, false)?;
    let acc = accuracy(g.value(logits), &y)? as f64 / test.len() as f64;
    println!(
        "test accuracy on {device}: {:.1}%",
        100.0 * acc,
        device = device.name()
    );
    // Chance is 10 %; this MLP reaches about 90 % here. Anything under 70 % means a broken engine.
    assert!(
        acc > 0.7,
        "accuracy {acc:.3} is not above chance: the engine is broken"
    );
    Ok(())
}

/// `LIT_DEVICE` when set (cpu | cuda | emu | auto), else cpu: examples never wait on a GPU probe.
fn example_device() -> Result<Device> {
    match std::env::var("LIT_DEVICE") {
        Ok(_) => Device::select(None),
        Err(_) => Ok(Device::cpu()),
    }
}
