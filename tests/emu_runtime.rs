//! The emulator itself: barriers, shared memory, warp operations, atomics, launch geometry, thread
//! orders, and the bugs it must report (deadlocks, bad launches). Kernels: `kernels/emu/selftest.cu`.
//! Buffers are plain host vectors: emu memory is host memory.

use lit_engine::device::{emu, kernels, Device, EmuOrder, Gpu, KernelArgs, LaunchCfg};
use lit_engine::ops::elementwise;
use lit_engine::testing::{assert_close, assert_devices_agree, random_f32};
use lit_engine::{Error, Tensor};

mod emu_support;
use emu_support::{addr, emu, launch, ORDERS};

fn launch_err(g: &Gpu, kernel: &str, cfg: LaunchCfg, args: &mut KernelArgs) -> String {
    match g.launch(kernel, cfg, args) {
        Ok(()) => panic!("{kernel} on {} should have failed", g.name()),
        Err(e @ Error::Launch { .. }) => e.to_string(),
        Err(e) => panic!("{kernel}: expected a launch error, got {e}"),
    }
}

fn block_sums(g: &Gpu, x: &[f32], blocks: u32, threads: u32) -> Vec<f32> {
    let mut x = x.to_vec();
    let mut out = vec![0.0f32; blocks as usize];
    let mut args = KernelArgs::new();
    args.ptr(addr(&mut x))
        .ptr(addr(&mut out))
        .value(&(x.len() as i32));
    launch(
        g,
        "emu_block_sum_f32",
        LaunchCfg::new((blocks, 1, 1), (threads, 1, 1)),
        &mut args,
    );
    out
}

#[test]
fn block_reduction_with_static_shared_memory() {
    let n = 10_007;
    let x = random_f32(1, n);
    for order in ORDERS {
        let g = emu(order);
        // 200 threads: not a power of two, so the fold before the tree is exercised too.
        for (blocks, threads) in [(7u32, 256u32), (3, 200), (1, 1024), (5, 33)] {
            let sums = block_sums(&g, &x, blocks, threads);
            let got: f64 = sums.iter().map(|&s| s as f64).sum();
            let want: f64 = x.iter().map(|&v| v as f64).sum();
            assert!(
                (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                "{order:?} {blocks}x{threads}: {got} vs {want}"
            );
            // Each block's own share, computed on the host.
            let stride = (blocks * threads) as usize;
            for (b, &s) in sums.iter().enumerate() {
                let mut want_b = 0.0f64;
                for t in 0..threads as usize {
                    let mut i = b * threads as usize + t;
                    while i < n {
                        want_b += x[i] as f64;
                        i += stride;
                    }
                }
                assert!(
                    (s as f64 - want_b).abs() < 1e-3 * (1.0 + want_b.abs()),
                    "{order:?} block {b}: {s} vs {want_b}"
                );
            }
        }
    }
}

#[test]
fn dynamic_shared_memory_with_partial_block() {
    let n = 1000; // 4 blocks of 300, the last one holding 100
    let x = random_f32(2, n);
    for order in ORDERS {
        let g = emu(order);
        let (mut xs, mut y) = (x.clone(), vec![0.0f32; n]);
        let mut args = KernelArgs::new();
        args.ptr(addr(&mut xs)).ptr(addr(&mut y)).value(&(n as i32));
        let cfg = LaunchCfg::new((4, 1, 1), (300, 1, 1)).with_shared(300 * 4);
        launch(&g, "emu_reverse_chunks_f32", cfg, &mut args);
        for (i, &got) in y.iter().enumerate() {
            let (base, len) = (i / 300 * 300, (n - i / 300 * 300).min(300));
            assert_eq!(got, x[base + len - 1 - (i - base)], "{order:?} element {i}");
        }
    }
}

#[test]
fn warp_shuffle_reductions() {
    let n = 200; // 2 blocks of 128: the last warp is partly past n
    let x = random_f32(3, n);
    let warps = 8;
    for order in ORDERS {
        let g = emu(order);
        let (mut xs, mut out) = (x.clone(), vec![0.0f32; 2 * warps]);
        let mut args = KernelArgs::new();
        args.ptr(addr(&mut xs))
            .ptr(addr(&mut out))
            .value(&(n as i32));
        launch(
            &g,
            "emu_warp_sum_f32",
            LaunchCfg::new((2, 1, 1), (128, 1, 1)),
            &mut args,
        );
        for w in 0..warps {
            let want: f32 = x.iter().skip(32 * w).take(32).sum();
            assert!(
                (out[w] - want).abs() < 1e-4,
                "{order:?} warp {w} shfl_down: {} vs {want}",
                out[w]
            );
            assert!(
                (out[warps + w] - want).abs() < 1e-4,
                "{order:?} warp {w} shfl_xor: {} vs {want}",
                out[warps + w]
            );
        }
    }
}

#[test]
fn warp_scan_broadcast_ballot_and_votes() {
    let x: Vec<i32> = (0..32)
        .map(|i| if i % 3 == 0 { -i } else { i * 2 })
        .collect();
    for order in ORDERS {
        let g = emu(order);
        let (mut xs, mut out) = (x.clone(), vec![0i32; 160]);
        let mut args = KernelArgs::new();
        args.ptr(addr(&mut xs)).ptr(addr(&mut out));
        launch(
            &g,
            "emu_warp_ops_i32",
            LaunchCfg::new((1, 1, 1), (32, 1, 1)),
            &mut args,
        );
        let mut scan = 0;
        let ballot = x
            .iter()
            .enumerate()
            .fold(0u32, |b, (i, &v)| if v > 0 { b | 1 << i } else { b });
        for lane in 0..32 {
            scan += x[lane];
            assert_eq!(out[lane], scan, "{order:?} scan lane {lane}");
            assert_eq!(out[32 + lane], x[5], "{order:?} broadcast lane {lane}");
            assert_eq!(
                out[64 + lane] as u32,
                ballot,
                "{order:?} ballot lane {lane}"
            );
            assert_eq!(
                out[96 + lane],
                1,
                "{order:?} any(>100)=0, all(>-100)=1 lane {lane}"
            );
            assert_eq!(
                out[128 + lane],
                x[lane / 8 * 8 + (lane + 1) % 8],
                "{order:?} width-8 shfl lane {lane}"
            );
        }
    }
}

#[test]
fn atomics_from_many_blocks() {
    let n = 5000;
    let bins: Vec<i32> = (0..n).map(|i| ((i * 7919) % 13 + 3) as i32).collect();
    let x = random_f32(4, n);
    for order in ORDERS {
        let g = emu(order);
        let (mut bins_d, mut xs) = (bins.clone(), x.clone());
        let (mut hist, mut sum, mut max_bin) = (vec![0i32; 16], vec![0.0f32], vec![i32::MIN]);
        let (mut min_bin, mut sum64) = (vec![u32::MAX], vec![0.0f64]);
        let mut args = KernelArgs::new();
        args.ptr(addr(&mut bins_d))
            .ptr(addr(&mut xs))
            .value(&(n as i32));
        args.ptr(addr(&mut hist))
            .ptr(addr(&mut sum))
            .ptr(addr(&mut max_bin));
        args.ptr(addr(&mut min_bin)).ptr(addr(&mut sum64));
        // 37 blocks of 64 threads: fewer threads than elements, so every thread loops.
        launch(
            &g,
            "emu_atomics",
            LaunchCfg::new((37, 1, 1), (64, 1, 1)),
            &mut args,
        );
        let mut want_hist = vec![0i32; 16];
        for &b in &bins {
            want_hist[b as usize] += 1;
        }
        assert_eq!(hist, want_hist, "{order:?} histogram");
        let want_sum: f64 = x.iter().map(|&v| v as f64).sum();
        assert!(
            (sum[0] as f64 - want_sum).abs() < 1e-2,
            "{order:?} float sum {} vs {want_sum}",
            sum[0]
        );
        assert!(
            (sum64[0] - want_sum).abs() < 1e-9,
            "{order:?} double sum {} vs {want_sum}",
            sum64[0]
        );
        assert_eq!(max_bin[0], 15, "{order:?} atomicMax");
        assert_eq!(min_bin[0], 3, "{order:?} atomicMin");
    }
}

#[test]
fn two_and_three_dimensional_grids_with_partial_blocks() {
    for (nx, ny, nz, block) in [
        (37usize, 11usize, 1usize, (8u32, 4u32, 1u32)),
        (13, 9, 7, (4, 4, 2)),
        (5, 3, 65, (2, 2, 64)),
    ] {
        let grid = (
            nx.div_ceil(block.0 as usize) as u32,
            ny.div_ceil(block.1 as usize) as u32,
            nz.div_ceil(block.2 as usize) as u32,
        );
        for order in ORDERS {
            let g = emu(order);
            let (mut coords, mut hits) = (vec![-1i32; nx * ny * nz], vec![0i32; nx * ny * nz]);
            let mut args = KernelArgs::new();
            args.ptr(addr(&mut coords)).ptr(addr(&mut hits));
            args.value(&(nx as i32))
                .value(&(ny as i32))
                .value(&(nz as i32));
            launch(&g, "emu_index_3d", LaunchCfg::new(grid, block), &mut args);
            for z in 0..nz {
                for y in 0..ny {
                    for x in 0..nx {
                        let i = (z * ny + y) * nx + x;
                        assert_eq!(
                            hits[i], 1,
                            "{order:?} {nx}x{ny}x{nz} ({x},{y},{z}) written {} times",
                            hits[i]
                        );
                        assert_eq!(
                            coords[i],
                            (x + 1000 * y + 1_000_000 * z) as i32,
                            "{order:?} ({x},{y},{z})"
                        );
                    }
                }
            }
        }
    }
}

fn rotate(g: &Gpu, kernel: &str, x: &[f32], blocks: u32, threads: u32) -> Vec<f32> {
    let (mut xs, mut y) = (x.to_vec(), vec![0.0f32; x.len()]);
    let mut args = KernelArgs::new();
    args.ptr(addr(&mut xs)).ptr(addr(&mut y));
    launch(
        g,
        kernel,
        LaunchCfg::new((blocks, 1, 1), (threads, 1, 1)),
        &mut args,
    );
    y
}

#[test]
fn thread_orders_agree_on_a_correct_kernel_and_expose_a_missing_barrier() {
    let (blocks, threads) = (3u32, 96u32);
    let want: Vec<f32> = (0..blocks * threads)
        .map(|i| {
            let (b, t) = (i / threads, i % threads);
            (b * threads + (t + 1) % threads) as f32
        })
        .collect();
    let mut wrong_orders = Vec::new();
    for (k, order) in ORDERS.into_iter().enumerate() {
        // Values that no earlier launch left in shared memory: stale data must not look right.
        let x: Vec<f32> = (0..blocks * threads).map(|i| i as f32).collect();
        let g = emu(order);
        assert_eq!(
            rotate(&g, "emu_rotate_synced_f32", &x, blocks, threads),
            want,
            "{order:?} synced"
        );
        let offset = 1e6 * (k + 1) as f32;
        let shifted: Vec<f32> = x.iter().map(|v| v + offset).collect();
        let got = rotate(&g, "emu_rotate_racy_f32", &shifted, blocks, threads);
        if got.iter().zip(&want).any(|(g, w)| *g != w + offset) {
            wrong_orders.push(order);
        }
    }
    // Forward order runs thread t to its end before t+1 writes its value: the race must show there.
    assert!(
        wrong_orders.contains(&EmuOrder::Forward),
        "the missing __syncthreads went unnoticed: {wrong_orders:?}"
    );
}

#[test]
fn half_warps_shuffle_side_by_side_with_disjoint_masks() {
    let x: Vec<i32> = (0..64).map(|i| i * i % 17).collect();
    for order in ORDERS {
        let g = emu(order);
        let (mut xs, mut out) = (x.clone(), vec![0i32; 64]);
        let mut args = KernelArgs::new();
        args.ptr(addr(&mut xs)).ptr(addr(&mut out));
        launch(
            &g,
            "emu_half_warp_shuffles",
            LaunchCfg::new((1, 1, 1), (64, 1, 1)),
            &mut args,
        );
        for t in 0..64 {
            let want = if t % 32 < 16 {
                (t & !3..(t & !3) + 4).map(|j| x[j]).sum::<i32>() // xor 1 then xor 2: groups of 4
            } else {
                x[t] + x[t ^ 4]
            };
            assert_eq!(out[t], want, "{order:?} thread {t}");
        }
    }
}

#[test]
fn barrier_votes() {
    let x: Vec<f32> = (0..64)
        .map(|i| if i % 5 == 0 { -1.0 } else { 1.0 })
        .collect();
    for order in ORDERS {
        let g = emu(order);
        for (xs_all, want) in [
            (x.clone(), [51, 0, 1]),
            (vec![1.0f32; 64], [64, 1, 1]),
            (vec![-1.0f32; 64], [0, 0, 0]),
        ] {
            let (mut xs, mut out) = (xs_all, vec![-7i32; 3]);
            let mut args = KernelArgs::new();
            args.ptr(addr(&mut xs)).ptr(addr(&mut out));
            launch(
                &g,
                "emu_barrier_votes",
                LaunchCfg::new((1, 1, 1), (64, 1, 1)),
                &mut args,
            );
            assert_eq!(out, want, "{order:?} count/and/or");
        }
    }
}

#[test]
fn deadlocks_and_divergent_barriers_are_errors() {
    for order in ORDERS {
        let g = emu(order);
        let mut y = vec![0.0f32; 64];
        let mut args = KernelArgs::new();
        args.ptr(addr(&mut y));
        let e = launch_err(
            &g,
            "emu_divergent_barrier",
            LaunchCfg::new((2, 1, 1), (64, 1, 1)),
            &mut args,
        );
        assert!(
            e.contains("deadlock")
                && e.contains("32 wait at __syncthreads")
                && e.contains("32 have exited"),
            "{e}"
        );
        let e = launch_err(
            &g,
            "emu_split_barriers",
            LaunchCfg::new((1, 1, 1), (64, 1, 1)),
            &mut args,
        );
        assert!(e.contains("different __syncthreads"), "{e}");
        let e = launch_err(
            &g,
            "emu_divergent_shuffle",
            LaunchCfg::new((1, 1, 1), (64, 1, 1)),
            &mut args,
        );
        assert!(
            e.contains("deadlock") && e.contains("__shfl_xor_sync"),
            "{e}"
        );
    }
    // The emulator stays usable after a failed launch.
    let x = random_f32(5, 300);
    let sums = block_sums(&emu(EmuOrder::Forward), &x, 2, 128);
    assert_close(
        "after a deadlock",
        &[sums.iter().sum::<f32>()],
        &[x.iter().sum::<f32>()],
        1e-5,
        1e-4,
    );
}

#[test]
fn bad_launches_are_errors() {
    let g = emu(EmuOrder::Forward);
    let mut y = vec![0.0f32; 2048];
    let mut args = KernelArgs::new();
    args.ptr(addr(&mut y)).value(&1i32);
    let cases = [
        (
            "no_such_kernel",
            LaunchCfg::new((1, 1, 1), (32, 1, 1)),
            "no kernel named `no_such_kernel`",
        ),
        (
            "emu_barrier_loop",
            LaunchCfg::new((1, 1, 1), (2048, 1, 1)),
            "exceeds CUDA's limits",
        ),
        (
            "emu_barrier_loop",
            LaunchCfg::new((1, 1, 1), (32, 32, 2)),
            "exceeds CUDA's limits",
        ),
        (
            "emu_barrier_loop",
            LaunchCfg::new((0, 1, 1), (32, 1, 1)),
            "zero launch dimension",
        ),
        (
            "emu_barrier_loop",
            LaunchCfg::new((1, 1, 1), (32, 0, 1)),
            "zero launch dimension",
        ),
        (
            "emu_barrier_loop",
            LaunchCfg::new((1, 1, 1), (32, 1, 1)).with_shared(64 * 1024),
            "dynamic shared memory",
        ),
        (
            "emu_block_sum_f32",
            LaunchCfg::new((1, 1, 1), (32, 1, 1)),
            "takes 3 arguments, the launch passed 2",
        ),
    ];
    for (kernel, cfg, want) in cases {
        let e = launch_err(&g, kernel, cfg, &mut args);
        assert!(
            e.contains(want),
            "{kernel} {cfg:?}: `{e}` should mention `{want}`"
        );
    }
}

#[test]
fn every_nvrtc_kernel_is_compiled_into_the_emulator() {
    let compiled = emu::kernel_names();
    let all = kernels::all_kernels();
    assert!(
        all.iter().any(|(_, k)| k == "relu_forward_f32"),
        "the registry lists kernels/*.cu"
    );
    for (file, name) in all {
        assert!(
            compiled.contains(&name),
            "{name} of {file} is missing from the emulator"
        );
    }
    assert!(
        compiled.iter().any(|k| k == "emu_block_sum_f32"),
        "self-test kernels are compiled in"
    );
}

#[test]
fn elementwise_kernels_agree_with_cpu() {
    let n = 1000 + 37; // not a multiple of the block size
    assert_devices_agree("relu_forward", 0.0, 0.0, |dev| {
        let x = Tensor::from_vec(&[n], random_f32(6, n), dev)?;
        Ok(vec![elementwise::relu_forward(&x)?])
    });
    assert_devices_agree("relu_backward", 0.0, 0.0, |dev| {
        let x = Tensor::from_vec(&[n], random_f32(7, n), dev)?;
        let dy = Tensor::from_vec(&[n], random_f32(8, n), dev)?;
        Ok(vec![elementwise::relu_backward(&x, &dy)?])
    });
    assert_devices_agree("axpy", 1e-6, 1e-6, |dev| {
        let x = Tensor::from_vec(&[n], random_f32(9, n), dev)?;
        let mut y = Tensor::from_vec(&[n], random_f32(10, n), dev)?;
        elementwise::axpy_inplace(&mut y, -0.75, &x)?;
        Ok(vec![y])
    });
}

/// Runs the named crash scenario in a child process (this test binary) and returns its stderr.
fn crash_in_child(test: &str, scenario: &str) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("LIT_EMU_CRASH_SCENARIO", scenario)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the {scenario} child should have crashed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_fault_inside_a_kernel_names_kernel_block_and_thread() {
    let g = emu(EmuOrder::Forward);
    match std::env::var("LIT_EMU_CRASH_SCENARIO").as_deref() {
        Ok("null") => {
            let mut args = KernelArgs::new();
            args.ptr(0);
            let _ = g.launch(
                "emu_wild_write",
                LaunchCfg::new((2, 1, 1), (32, 1, 1)),
                &mut args,
            );
            unreachable!("the null write should have killed this process");
        }
        Ok("recursion") => {
            let mut y = vec![0i32; 32];
            let mut args = KernelArgs::new();
            args.ptr(addr(&mut y)).value(&100_000i32);
            let _ = g.launch(
                "emu_stack_overflow",
                LaunchCfg::new((1, 1, 1), (32, 1, 1)),
                &mut args,
            );
            unreachable!("the recursion should have overflowed its fiber stack");
        }
        _ => {}
    }
    let test = "a_fault_inside_a_kernel_names_kernel_block_and_thread";
    let e = crash_in_child(test, "null");
    assert!(e.contains("kernel `emu_wild_write` got SIGSEGV"), "{e}");
    assert!(
        e.contains("block (1,0,0) thread (3,0,0): an out-of-bounds"),
        "{e}"
    );
    let e = crash_in_child(test, "recursion");
    assert!(e.contains("kernel `emu_stack_overflow` got SIGSEGV"), "{e}");
    assert!(e.contains("fiber stack overflow"), "{e}");
    // A shallow recursion runs fine.
    let mut y = vec![-1i32; 32];
    let mut args = KernelArgs::new();
    args.ptr(addr(&mut y)).value(&10i32);
    launch(
        &g,
        "emu_stack_overflow",
        LaunchCfg::new((1, 1, 1), (32, 1, 1)),
        &mut args,
    );
    assert_eq!(y, vec![55; 32]);
}

/// Emulator costs, printed (never asserted), on one OS thread so that on-CPU time is meaningful:
/// `cargo test --release --test emu_runtime -- --ignored --nocapture`.
#[test]
#[ignore = "a timing report, not a check: run with --ignored --nocapture"]
fn emulator_timings() {
    use std::time::Instant;
    let thread_cpu_seconds = emu::thread_cpu_seconds;
    // Read when the worker pool starts, i.e. at this process's first launch.
    std::env::set_var("LIT_EMU_THREADS", "1");
    let g = emu(EmuOrder::Forward);
    // Best of 5 runs: (wall seconds, on-CPU seconds).
    let best = |f: &mut dyn FnMut()| {
        let mut out = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            let (t, c) = (Instant::now(), thread_cpu_seconds());
            f();
            let cpu = thread_cpu_seconds()
                .zip(c)
                .map(|(b, a)| b - a)
                .unwrap_or(f64::NAN);
            out = (out.0.min(t.elapsed().as_secs_f64()), out.1.min(cpu));
        }
        out
    };
    let mut args = KernelArgs::new();
    args.value(&0i32);
    let reps = 2000;
    let (wall, cpu) = best(&mut || {
        for _ in 0..reps {
            g.launch("emu_noop", LaunchCfg::new((1, 1, 1), (32, 1, 1)), &mut args)
                .unwrap();
        }
    });
    let per = |t: f64| t / reps as f64 * 1e6;
    println!(
        "launch of a 1x32-thread no-op kernel: {:.2} us on cpu ({:.2} us wall)",
        per(cpu),
        per(wall)
    );

    let (blocks, threads, iters) = (8u32, 256u32, 200i32);
    let mut y = vec![0.0f32; (blocks * threads) as usize];
    let mut args = KernelArgs::new();
    args.ptr(addr(&mut y)).value(&iters);
    let cfg = LaunchCfg::new((blocks, 1, 1), (threads, 1, 1));
    let (wall, cpu) = best(&mut || g.launch("emu_barrier_loop", cfg, &mut args).unwrap());
    let per = |t: f64| t / (blocks * threads) as f64 / iters as f64 * 1e9;
    println!(
        "__syncthreads: {:.1} ns per thread per barrier on cpu ({:.1} wall; {blocks}x{threads} threads, {iters} barriers)",
        per(cpu),
        per(wall)
    );

    let x = random_f32(11, 64 * 256);
    let (wall, cpu) = best(&mut || {
        block_sums(&g, &x, 64, 256);
    });
    println!(
        "64x256 block reduction (9 barriers per thread): {:.2} ms on cpu ({:.2} wall)",
        cpu * 1e3,
        wall * 1e3
    );

    let n = 1 << 20;
    let xt = Tensor::from_vec(&[n], random_f32(12, n), &Device::Gpu(g.clone())).unwrap();
    let (wall, cpu) = best(&mut || {
        elementwise::relu_forward(&xt).unwrap();
    });
    println!(
        "relu over 2^20 floats (1024x256 threads, 4 elements each): {:.2} ms on cpu ({:.2} wall)",
        cpu * 1e3,
        wall * 1e3
    );
}
