//! Conv throughput on ResNet-20's layer shapes (batch 128, 3x3, padding 1), CPU: forward, input
//! gradient, weight gradient, and both gradients as a training step computes them. Throughput is
//! reported in elements = floating-point operations (2 per multiply-add), so criterion's
//! `Gelem/s` reads as GFLOP/s. Compare with `python3 benches/pytorch_conv.py` (same shapes).
//!
//!     cargo bench --bench conv                        # both cores
//!     RAYON_NUM_THREADS=1 cargo bench --bench conv    # per core (robust on a busy machine)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lit_engine::device::Device;
use lit_engine::ops::conv::{conv2d_backward, conv2d_forward, ConvGeometry};
use lit_engine::tensor::Tensor;
use lit_engine::testing::random_f32;
use std::time::Duration;

/// (name, x shape, weight shape, stride)
const SHAPES: [(&str, [usize; 4], [usize; 4], usize); 6] = [
    ("16ch_32x32", [128, 16, 32, 32], [16, 16, 3, 3], 1),
    ("32ch_16x16", [128, 32, 16, 16], [32, 32, 3, 3], 1),
    ("64ch_8x8", [128, 64, 8, 8], [64, 64, 3, 3], 1),
    ("16to32_s2", [128, 16, 32, 32], [32, 16, 3, 3], 2),
    ("32to64_s2", [128, 32, 16, 16], [64, 32, 3, 3], 2),
    ("stem_3to16", [128, 3, 32, 32], [16, 3, 3, 3], 1),
];

fn conv(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("conv2d_cpu");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, xs, ws, s) in SHAPES {
        let g = ConvGeometry::new(&xs, &ws, (s, s), (1, 1)).expect("bench shapes are valid");
        let x = Tensor::from_vec(&xs, random_f32(1, xs.iter().product()), &dev).unwrap();
        let w = Tensor::from_vec(&ws, random_f32(2, ws.iter().product()), &dev).unwrap();
        let dy = random_f32(3, g.out_shape().iter().product());
        let dy = Tensor::from_vec(&g.out_shape(), dy, &dev).unwrap();
        let flops = 2 * g.macs() as u64;
        // (pass, flops, gradients wanted: None for the forward)
        type Pass = (&'static str, u64, Option<(bool, bool)>);
        let passes: [Pass; 4] = [
            ("forward", flops, None),
            ("backward_data", flops, Some((true, false))),
            ("backward_weight", flops, Some((false, true))),
            ("backward_both", 2 * flops, Some((true, true))),
        ];
        for (pass, work, need) in passes {
            group.throughput(Throughput::Elements(work));
            group.bench_with_input(BenchmarkId::new(pass, name), &need, |b, need| {
                b.iter(|| match need {
                    None => drop(conv2d_forward(&x, &w, None, (s, s), (1, 1)).unwrap()),
                    Some((dx, dw)) => {
                        let need = (*dx, *dw, false);
                        drop(conv2d_backward(&x, &w, &dy, (s, s), (1, 1), need).unwrap())
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, conv);
criterion_main!(benches);
