//! Step graphs (`src/device/graph.rs`): a captured sequence of device work replays to the same
//! values as running it eagerly, buffers the capture allocates are the graph's, host copies and
//! waits are refused inside a capture, and another thread's device work waits for the capture.
//! Run on the emulator in both thread orders, and on cuda when present.

use lit_engine::device::{Device, EmuOrder, Gpu};
use lit_engine::ops::elementwise::{add_forward, add_inplace, mul_forward, relu_forward};
use lit_engine::tensor::Tensor;
use lit_engine::testing::kernel_devices;
use std::sync::Arc;

fn gpus() -> Vec<(Device, Arc<Gpu>)> {
    kernel_devices()
        .into_iter()
        .filter_map(|d| d.gpu().cloned().map(|g| (d, g)))
        .collect()
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 250.0 - 2.0
        })
        .collect()
}

/// One "step": `acc += relu(x * w) + w`, with temporaries the step allocates and drops.
fn step(acc: &mut Tensor, x: &Tensor, w: &Tensor) -> lit_engine::error::Result<()> {
    let h = relu_forward(&mul_forward(x, w)?)?;
    let y = add_forward(&h, w)?;
    let copied = Tensor::from_buffer(y.shape(), y.device().copy(y.buffer())?, y.device())?;
    add_inplace(acc, &copied)
}

fn upload(t: &mut Tensor, gpu: &Gpu, data: &[f32]) {
    gpu.upload_into(t.try_buffer_mut().unwrap(), data).unwrap();
}

#[test]
fn replays_equal_eager_steps_with_new_inputs_each_time() {
    let n = 1000;
    for (device, gpu) in gpus() {
        let w = Tensor::from_vec(&[n], values(n, 7), &device).unwrap();
        let mut x_graph = Tensor::zeros(&[n], &device).unwrap();
        let mut acc_graph = Tensor::zeros(&[n], &device).unwrap();
        let mut acc_eager = Tensor::zeros(&[n], &device).unwrap();

        // Warm-up (kernels loaded), then capture: nothing runs until the graph is launched.
        step(&mut acc_eager.clone(), &w, &w).unwrap();
        gpu.begin_capture().unwrap();
        let captured = step(&mut acc_graph, &x_graph, &w);
        let graph = gpu.end_capture().unwrap();
        captured.unwrap();
        assert!(
            graph.kernels() >= 4,
            "{}: {} kernels",
            device.name(),
            graph.kernels()
        );
        assert!(acc_graph.to_vec().unwrap().iter().all(|&v| v == 0.0));

        // Memory the capture's temporaries had is free again and now taken by other buffers:
        // replays must not write there (they use the graph's own buffers).
        let sentinel = vec![-7.5f32; n];
        let occupiers: Vec<Tensor> = (0..16)
            .map(|_| Tensor::from_vec(&[n], sentinel.clone(), &device).unwrap())
            .collect();
        let before = gpu.launches();
        for s in 0..3 {
            let x = values(n, 100 + s);
            upload(&mut x_graph, &gpu, &x);
            graph.launch(&gpu).unwrap();
            let x_eager = Tensor::from_vec(&[n], x, &device).unwrap();
            step(&mut acc_eager, &x_eager, &w).unwrap();
            assert_eq!(
                acc_graph.to_vec().unwrap(),
                acc_eager.to_vec().unwrap(),
                "{}: replay {s}",
                device.name()
            );
        }
        for o in &occupiers {
            assert_eq!(
                o.to_vec().unwrap(),
                sentinel,
                "{}: a replay wrote foreign memory",
                device.name()
            );
        }
        // Each replay is one launch; the eager steps launched their kernels one by one.
        let eager_launches = 3 * graph.kernels() as u64;
        assert_eq!(
            gpu.launches() - before,
            3 + eager_launches,
            "{}",
            device.name()
        );
    }
}

#[test]
fn host_copies_and_waits_are_refused_inside_a_capture() {
    for (device, gpu) in gpus() {
        let t = Tensor::from_vec(&[4], vec![1.0, 2.0, 3.0, 4.0], &device).unwrap();
        type Attempt = fn(&Device, &Tensor) -> lit_engine::error::Result<()>;
        let attempts: [(&str, Attempt); 3] = [
            ("download", |_, t| t.to_vec().map(drop)),
            ("upload", |d, _| {
                Tensor::from_vec(&[2], vec![1.0, 2.0], d).map(drop)
            }),
            ("synchronize", |d, _| d.synchronize()),
        ];
        for (what, attempt) in attempts {
            gpu.begin_capture().unwrap();
            let err = attempt(&device, &t).expect_err(what).to_string();
            gpu.abort_capture();
            assert!(err.contains("inside a captured step"), "{what}: {err}");
            // The device works as before after the abort.
            assert_eq!(t.to_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        }
    }
}

#[test]
fn a_buffer_allocated_by_the_capture_belongs_to_the_graph() {
    // On the emulator the twin buffers make it visible: an output the step allocates is not
    // the one later replays write (on cuda it is freed at the next replay), so results must go
    // to buffers allocated before the capture.
    let device = Device::emu_with_order(EmuOrder::Forward).unwrap();
    let gpu = device.gpu().unwrap().clone();
    let w = Tensor::from_vec(&[8], values(8, 3), &device).unwrap();
    let _warm = add_forward(&w, &w).unwrap();
    gpu.begin_capture().unwrap();
    let out = add_forward(&w, &w).unwrap();
    let graph = gpu.end_capture().unwrap();
    graph.launch(&gpu).unwrap();
    assert!(out.to_vec().unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn another_thread_waits_for_the_capture_to_end() {
    for order in [EmuOrder::Forward, EmuOrder::Reverse] {
        let device = Device::emu_with_order(order).unwrap();
        let gpu = device.gpu().unwrap().clone();
        let w = Tensor::from_vec(&[16], values(16, 1), &device).unwrap();
        let mut acc = Tensor::zeros(&[16], &device).unwrap();
        step(&mut acc.clone(), &w, &w).unwrap();
        gpu.begin_capture().unwrap();
        let (d2, w2) = (device.clone(), w.clone());
        let other = std::thread::spawn(move || {
            // Its own work: must run after the capture, not inside it.
            let y = add_forward(&w2, &w2).unwrap();
            (y.to_vec().unwrap(), d2.launches().unwrap())
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        step(&mut acc, &w, &w).unwrap();
        let graph = gpu.end_capture().unwrap();
        let (y, _) = other.join().unwrap();
        let expected: Vec<f32> = values(16, 1).iter().map(|v| v + v).collect();
        assert_eq!(y, expected);
        assert_eq!(
            graph.kernels(),
            4,
            "the other thread's kernel is not in the graph"
        );
    }
}
